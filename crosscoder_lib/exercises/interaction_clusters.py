"""Checkers of chapter 4 (interaction clusters): the accumulated interaction matrix, the co-activation
baseline, and cluster purity against ground-truth categories.

References: :func:`~crosscoder_lib.interactions.measures.interaction_matrix`,
:func:`~crosscoder_lib.applications.coactivation.coactivation_matrix` (cosine of firing patterns)
and :func:`~crosscoder_lib.applications.clustering.score_clusters`.
"""

from __future__ import annotations

import numpy as np
import torch

from crosscoder_lib.applications.clustering import score_clusters
from crosscoder_lib.applications.coactivation import coactivation_matrix
from crosscoder_lib.applications.features import NO_CATEGORY
from crosscoder_lib.exercises.cases import interaction_cases
from crosscoder_lib.exercises.harness import Exercise, gives, when
from crosscoder_lib.interactions.measures import interaction_matrix

OVERWRITE_HINT = ("some entries are too small where several (token, neuron) pairs share a dominant feature: an "
                  "indexed M[i, j] += v with repeated (i, j) keeps only one of the values (the reference code's "
                  "bug); accumulate with M.index_put_((i, j), v, accumulate=True) or index_add_")


def _overwritten(expected: torch.Tensor):
    return lambda g: bool((g <= expected + 1e-12).all() and (g < expected - 1e-9).any())


def check_interaction_matrix(fn) -> None:
    """Exercise 4.1: ``fn(idx_BK, val_BK, G_LHN, w_LN) -> M_HH`` against ``interaction_matrix``."""
    ex = Exercise("4.1", "the accumulated interaction matrix", fn,
                  "for every (block l, token t, neuron n) with dominant slot i and every other active slot j, add "
                  "w[l, n]·|p[l,t,n,j]| to M[idx[t,i], idx[t,j]]; sum over blocks and neurons, divide by the "
                  "number of tokens")
    for case in interaction_cases():
        mlp = case.mlp
        result = interaction_matrix(case.codes, case.W_dec_LHD, mlp)
        expected, B = result.total_HH, case.codes.idx_BK.shape[0]
        got = ex.call(case.name, case.codes.idx_BK, case.codes.val_BK, case.G_LHN, case.w_LN)
        unit = mlp._replace(W_out_LND=mlp.W_out_LND / case.w_LN[:, :, None])
        diag = torch.eye(expected.shape[0], dtype=torch.bool)
        ex.close(case.name, "M_HH", got, expected, dims="HH", mistakes=(
            when(_overwritten(expected), OVERWRITE_HINT),
            gives(lambda: interaction_matrix(case.codes, case.W_dec_LHD, unit).total_HH, "weigh each neuron by "
                  "‖W_out[l][n]‖ (w_LN): the matrix measures residual-stream error, as the bound does"),
            gives(lambda: expected * B, "divide by the number of tokens: M is an average over tokens"),
            gives(lambda: expected / mlp.n_blocks, "sum the blocks' matrices, do not average them"),
            gives(lambda: expected.T, "row i is the dominant feature, column j the other one: M[i, j], not M[j, i]"),
            when(lambda g: bool(torch.allclose(g[~diag], expected[~diag]) and (g[diag] > 0).any()), "a feature does "
                 "not interact with itself: leave the dominant slot out of the partners j, so M[i, i] stays 0"),
        ))
    ex.passed()


def _cosine(fired_BH: torch.Tensor) -> torch.Tensor:
    C = fired_BH.T @ fired_BH
    d = C.diagonal().sqrt()
    return (C / (d[:, None] * d[None, :])).nan_to_num(0.0)


def check_coactivation(fn) -> None:
    """Exercise 4.2: ``fn(idx_BK, val_BK, n_features) -> C_HH`` against ``coactivation_matrix`` (cosine)."""
    ex = Exercise("4.2", "the co-activation baseline", fn,
                  "C[i, j] = #{t : i and j both active at t} / √(#{t : i active} · #{t : j active}), 0 for a "
                  "feature that never fires; a slot is active where its value is not 0")
    for case in interaction_cases():
        idx, val = case.codes
        H = case.crosscoder.n_features
        expected = coactivation_matrix(case.codes, H)
        got = ex.call(case.name, idx, val, H)
        every_slot = torch.zeros(idx.shape[0], H, dtype=torch.float64).scatter_(1, idx, 1.0)
        ex.close(case.name, "C_HH", got, expected, dims="HH", mistakes=(
            gives(lambda: _cosine(every_slot), "padded slots (value 0) are not features: a slot counts as firing "
                  "only where its value is not 0"),
            gives(lambda: coactivation_matrix(case.codes, H, weighted=True), "count firings (1 where active), do not "
                  "weigh them by the activations"),
            gives(lambda: coactivation_matrix(case.codes, H, normalise="count"), "normalise the counts: C[i, j] / "
                  "√(C[i, i] C[j, j]), the cosine between the two features' firing patterns"),
            when(lambda g: bool(g.isnan().any()), "a feature that never fires has 0/0 in its row and column: make "
                 "those entries 0"),
        ))
    ex.passed()


def _purity_cases() -> list[tuple[str, np.ndarray, list[str]]]:
    cats = ["animal"] * 4 + ["colour"] * 3 + ["name"] * 3
    return [
        ("three clusters of different sizes", np.array([0, 0, 0, 1, 1, 1, 1, 2, 2, 2]), cats),
        ("unclustered features (label -1)", np.array([0, 0, 0, -1, -1, 1, 1, 1, -1, 2]), cats),
        (f"features without a category ({NO_CATEGORY!r})", np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2]),
         cats[:3] + [NO_CATEGORY, NO_CATEGORY] + cats[5:]),
        ("singletons", np.array([0, 1, 2, 3, 4, 4, 4, 4, 5, 5]), cats),
    ]


def _purity(labels: np.ndarray, cats: list[str], drop_unclustered=True, drop_uncategorised=True,
            per_cluster=False) -> float:
    cats_a = np.asarray(cats, dtype=object)
    keep = np.ones(len(labels), bool)
    if drop_unclustered:
        keep &= labels >= 0
    if drop_uncategorised:
        keep &= cats_a != NO_CATEGORY
    lab, cat = labels[keep], cats_a[keep]
    shares = [(np.unique(cat[lab == c], return_counts=True)[1].max(), (lab == c).sum()) for c in np.unique(lab)]
    if per_cluster:
        return float(np.mean([m / n for m, n in shares]))
    return float(sum(m for m, _ in shares) / lab.size)


def check_purity(fn) -> None:
    """Exercise 4.3: ``fn(labels_H, categories_H) -> purity`` against ``score_clusters(...).purity``."""
    ex = Exercise("4.3", "cluster purity", fn,
                  "purity = Σ over clusters of (features in the cluster's majority category) / (features scored); "
                  f"a feature labelled -1 or of category {NO_CATEGORY!r} is not scored")
    for case, labels, cats in _purity_cases():
        expected = score_clusters(labels, cats).purity
        got = ex.call(case, labels.copy(), list(cats))
        ex.close(case, "the purity", got, expected, mistakes=(
            gives(lambda: _purity(labels, cats, per_cluster=True), "weigh clusters by their size: purity counts "
                  "features, it is not the mean of the clusters' purities"),
            gives(lambda: _purity(labels, cats, drop_unclustered=False), "label -1 means 'not clustered': leave "
                  "those features out rather than treating them as one cluster"),
            gives(lambda: _purity(labels, cats, drop_uncategorised=False), f"a feature of category {NO_CATEGORY!r} has "
                  "no ground truth: leave it out"),
        ))
    ex.passed()
