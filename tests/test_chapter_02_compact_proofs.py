"""Smoke checks on chapter 2's FAST runs, in both worlds: the compact-proof bounds through a crosscoder
(book/notation.md: the interaction term, compact proofs, the invariants). The findings on full runs are
tests/test_science_02_compact_proofs.py."""

import math

import pytest

WORLDS = ["embedded", "smollm2"]


def _metrics(chapter_results, world):
    return chapter_results("02_compact_proofs", world)["metrics"]


def _values(m, name):
    """Every seed's value of a number recorded over seeds."""
    return m[name]["values"]


@pytest.mark.parametrize("world", WORLDS)
def test_spec8_invariants_hold_on_the_model(chapter_results, world):
    """The MLP on ln2.hook_normalized equals hook_mlp_out (either kind), Σ_v p + β equals n̂2 W + b for
    every input matrix, and the three-part error decomposition (propagated + interaction + single-feature)
    equals e_post: all at float round-off, which a wrong W_in (the norm folded twice) or a dropped term
    would break by far."""
    m = _metrics(chapter_results, world)
    assert m["mlp_kind"] == ("standard" if world == "embedded" else "gated")
    assert m["mlp_invariant_rel_error"] < 1e-4
    assert m["p_sum_invariant_rel_error"] < 1e-6
    assert m["decomposition_rel_error"] < 1e-4


@pytest.mark.parametrize("world", WORLDS)
def test_mlp_interaction_bound_is_sound_and_never_below_the_error(chapter_results, world):
    """The per-token MLP bound holds on every (block, token) pair (a theorem: soundness exactly 1, every
    form, every block, every seed), bound/actual is ≥ 1, mid ≤ box ≤ lip on every token, and the lip
    form is looser than the mid form."""
    m = _metrics(chapter_results, world)
    assert m["mlp_bound_sound_fraction"] == 1.0
    assert all(f == 1.0 for f in m["mlp_bound_sound_fraction_per_block"])
    for form in ("mid", "box", "lip", "mid_l2", "box_l2", "lip_l2"):
        assert all(f == 1.0 for f in _values(m, f"mlp_sound_{form}")), form
        assert all(t >= 1.0 for t in _values(m, f"mlp_tightness_{form}")), form
    assert all(f == 1.0 for f in _values(m, "mlp_mid_le_box") + _values(m, "mlp_box_le_lip"))
    assert all(lip >= mid for lip, mid in zip(_values(m, "mlp_tightness_lip"), _values(m, "mlp_tightness_mid")))


@pytest.mark.parametrize("world", WORLDS)
def test_layerwise_bound_is_sound_and_vacuous(chapter_results, world):
    """The layer-by-layer bound holds at every hookpoint, every block after the window, the logits and the
    loss (soundness 1), and the certified loss is no better than log V (vacuous), as the paper expects."""
    m = _metrics(chapter_results, world)
    assert all(f == 1.0 for f in _values(m, "layerwise_sound_fraction"))
    assert all(0.0 <= f <= 1.0 for f in _values(m, "layerwise_vacuous_fraction"))
    assert m["layerwise_vacuous"] is True
    assert all(upper >= m["log_vocab"] for upper in _values(m, "layerwise_loss_upper"))


@pytest.mark.parametrize("world", WORLDS)
def test_proof_length_shapes(chapter_results, world):
    """Brute force is linear in the inputs and matches torch's FLOP counter (matrix multiplies; RoPE's
    rotation is not counted); the crosscoder proof is a fixed cost plus a per-input slope; the crossover
    is once/(brute − proof slope) when that gap is positive (at the paper's sizes it is), else infinite."""
    m = _metrics(chapter_results, world)
    assert m["flops_forward_counted"] == m["flops_forward_formula"]
    assert m["flops_brute_linear"] is True
    n, brute, proof = m["flops_n_inputs"], m["flops_brute"], m["flops_proof"]
    for ni, b, p in zip(n, brute, proof):
        assert math.isclose(b, ni * m["flops_brute_per_input"], rel_tol=1e-9)
        assert math.isclose(p, m["flops_proof_once"] + ni * m["flops_proof_per_input"], rel_tol=1e-9)
    assert proof[0] > brute[0]  # one input: the per-feature work makes the proof longer
    gap = m["flops_brute_per_input"] - m["flops_proof_per_input"]
    if gap > 0:
        assert math.isclose(m["flops_crossover"], m["flops_proof_once"] / gap, rel_tol=1e-9)
    else:
        assert m["flops_crossover"] == math.inf
    assert m["flops_paper_proof_per_input"] < m["flops_paper_brute_per_input"]
    assert math.isfinite(m["flops_crossover_paper_size"]) and m["flops_crossover_paper_size"] > 1


@pytest.mark.parametrize("world", WORLDS)
def test_qk_split_is_exact(chapter_results, world):
    """The four QK parts (mean·mean, mean·feature, feature·mean, feature·feature) sum to the scores, with
    rotary positions and grouped-query attention in SmolLM2."""
    m = _metrics(chapter_results, world)
    assert all(e < 1e-4 for e in _values(m, "qk_split_max_rel_error"))
    assert len(m["qk_term_mean_abs"]) == 4 and all(len(row) == 4 for row in m["qk_term_mean_abs"])
