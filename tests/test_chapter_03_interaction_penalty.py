"""Smoke checks on chapter 3's FAST runs, in both worlds: loose but meaningful, at sizes whose numbers mean
little (toy: λ ∈ {0, 100, 1000}, 3 seeds, 50 steps on exactly 2,000 positions, 500 held out; SmolLM2:
λ ∈ {0, 1000}, 2 seeds, 30 steps). The findings of the full runs are asserted with seed margins in
tests/test_science_03_interaction_penalty.py.

Margins checked at FAST size before choosing them (toy, seeds 0-2, 2026-12-03): share 0.228 → 0.689,
penalty 2.42/0.86/0.050, MLP-input FVU 0.18 → 0.82, Σ|p| 3.09 → 0.49.
"""

import pytest

CHAPTER = "03_interaction_penalty"
SCHEMES = {"none", "drop_random", "drop_second", "drop_largest", "keep_largest"}


def _means(m, key):
    """The per-λ means of a curve, in the order of m["lambdas"]."""
    return [m["curves"][key][f"{lam:g}"]["mean"] for lam in m["lambdas"]]


def _metrics(chapter_results, world="embedded"):
    return chapter_results(CHAPTER, world)["metrics"]


def test_penalty_raises_dominant_share(chapter_results):
    """The strongest penalty raises the held-out dominant share over λ = 0 by a clear margin."""
    m = _metrics(chapter_results)
    shares = _means(m, "dominant_share")
    assert m["lambdas"][0] == 0.0 and len(shares) == len(m["lambdas"]) == 3
    assert all(0.0 < s <= 1.0 for s in shares)
    assert shares[-1] > shares[0] + 0.2, shares
    assert len(m["seeds"]) >= 3 and m["curves"]["dominant_share"]["0"]["n"] == len(m["seeds"])


def test_penalty_is_paid_and_how(chapter_results):
    """What training optimises falls at every λ (held-out penalty), and part of the price is the MLP
    inputs' reconstruction: their FVU rises and the total contribution Σ_v|p| shrinks with λ (the
    mechanism the chapter gives for a share that can fall at very large λ)."""
    m = _metrics(chapter_results)
    pens, mlp_fvu, sum_p = _means(m, "penalty"), _means(m, "mlp_input_fvu"), _means(m, "sum_abs_p")
    assert all(b < a for a, b in zip(pens, pens[1:])), pens
    assert mlp_fvu[-1] > mlp_fvu[0] + 0.2, mlp_fvu
    assert sum_p[-1] < 0.5 * sum_p[0], sum_p
    assert m["lambda_warmup"] > 0


def test_ablation_fidelity_orders_the_schemes(chapter_results):
    """Φ of Figure 2 at every λ (block means over seeds): dropping the dominant feature loses more than
    dropping the second one, and keeping all features loses no more than dropping the dominant one."""
    m = _metrics(chapter_results)
    fid = m["fidelity"]["mean"]
    assert SCHEMES <= set(fid)
    for lam in m["lambdas"]:
        at = {s: fid[s][f"{lam:g}"]["mean"] for s in SCHEMES}
        assert at["none"] >= at["drop_largest"], (lam, at)
        assert at["drop_second"] >= at["drop_largest"], (lam, at)
    assert m["lambda_matched_cost"] in m["lambdas"] and m["lambda_matched_cost"] > 0
    assert m["lambda_paper_share"] in m["lambdas"]


def test_bound_sound_and_shrinking(chapter_results):
    """The chapter-2 MLP bound holds on every held-out token at every λ and seed, and the penalty shrinks
    both the interaction error and its bound (λ=1000 against λ=0)."""
    m = _metrics(chapter_results)
    assert m["bound_sound_min"] == 1.0, m["bound_sound_min"]
    assert all(t >= 1.0 for t in _means(m, "tightness"))
    assert _means(m, "mean_bound")[-1] < 0.5 * _means(m, "mean_bound")[0]
    assert _means(m, "mean_error")[-1] < 0.5 * _means(m, "mean_error")[0]
    assert all(0.0 < p <= 1.0 for p in _means(m, "purity"))


def test_the_smollm2_page_runs_on_the_gated_window(chapter_results):
    """The SmolLM2 page (FAST) reads its 4-block window of the gated model, and even 30 steps of the
    penalty lower it and keep the bound sound on every token."""
    m = _metrics(chapter_results, "smollm2")
    assert m["mlp_kind"] == "gated" and len(m["window"]) == 4 and m["window"][0] > 0, (m["mlp_kind"], m["window"])
    pens = _means(m, "penalty")
    assert pens[-1] < pens[0], pens
    assert m["bound_sound_min"] == 1.0, m["bound_sound_min"]
    assert SCHEMES <= set(m["fidelity"]["mean"])
