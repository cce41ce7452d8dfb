"""Science checks on chapter 2's FAST run: the compact-proof bounds through a crosscoder (SPEC §3, §4, §8)."""

import math


def _metrics(chapter_results):
    return chapter_results("02_compact_proofs")["metrics"]


def test_spec8_invariants_hold_on_the_model(chapter_results):
    """σ(n2 W_in + b_in) W_out + b_out equals hook_mlp_out, Σ_v p + β equals n̂2 W_in + b_in, and the
    three-part error decomposition (propagated + interaction + single-feature) equals e_post: all at
    float round-off, which a wrong W_in (LayerNorm folded twice) or a dropped term would break by far."""
    m = _metrics(chapter_results)
    assert m["mlp_invariant_rel_error"] < 1e-4
    assert m["p_sum_invariant_rel_error"] < 1e-6
    assert m["decomposition_rel_error"] < 1e-4


def test_mlp_interaction_bound_is_sound_and_never_below_the_error(chapter_results):
    """The per-token MLP bound holds on every (block, token) pair (a theorem: soundness exactly 1, both
    forms, every block), and bound/actual is ≥ 1 (the Lip form is looser than the mid form)."""
    m = _metrics(chapter_results)
    assert m["mlp_bound_sound_fraction"] == 1.0
    assert all(f == 1.0 for f in m["mlp_bound_sound_fraction_per_block"])
    assert all(f == 1.0 for f in m["mlp_bound_mid_sound_fraction_per_block"])
    assert m["mlp_bound_mid_tightness"] >= 1.0
    assert m["mlp_bound_tightness"] >= m["mlp_bound_mid_tightness"]


def test_layerwise_bound_is_sound_and_vacuous(chapter_results):
    """The layer-by-layer bound holds at every hookpoint, the logits and the loss (soundness 1), and the
    certified loss is no better than log V (vacuous), as the paper expects for real models."""
    m = _metrics(chapter_results)
    assert m["layerwise_sound_fraction"] == 1.0
    assert 0.0 <= m["layerwise_vacuous_fraction"] <= 1.0
    assert m["layerwise_vacuous"] is True
    assert m["layerwise_loss_upper"] >= m["log_vocab"]


def test_proof_length_shapes(chapter_results):
    """Brute force is linear in the inputs and matches torch's FLOP counter; the crosscoder proof is a
    fixed cost plus a per-input slope; the crossover is once/(brute − proof slope) when that gap is
    positive (at the paper's sizes it is) and infinite otherwise."""
    m = _metrics(chapter_results)
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


def test_qk_split_is_exact(chapter_results):
    """The four QK terms (mean·mean, mean·feature, feature·mean, feature·feature) sum to the scores."""
    m = _metrics(chapter_results)
    assert m["qk_split_max_rel_error"] < 1e-4
    assert all(len(row) == 4 for row in m["qk_term_mean_abs"])
