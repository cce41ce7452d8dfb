"""Clustering crosscoder features by interaction (the paper's Figure 3), and scoring the clusters.

The paper clusters features with affinity propagation (AP) on the feature × feature interaction
matrix ``M_HH`` of SPEC §3 (``M[i, j]`` = summed pairwise interaction of dominant feature ``i`` with
active feature ``j``, averaged over tokens). This module offers

- :func:`cluster_interactions`: AP in the two ways the matrix can be read (see its docstring);
- :func:`random_clusters_like`: the random baseline with the same cluster sizes (the co-activation
  baseline is :mod:`crosscoder_lib.applications.coactivation`);
- :func:`score_clusters`, :func:`score_against_random`: ground-truth scores against the features'
  word categories (:func:`crosscoder_lib.applications.features.feature_categories`, where the paper
  needed an LLM judge; the judge protocol itself lives in ``judge``);
- :func:`plot_clustered_matrix`: the heatmap of the matrix ordered by cluster.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Literal, NamedTuple

import numpy as np

from crosscoder_lib.applications.arrays import as_numpy
from crosscoder_lib.applications.features import NO_CATEGORY

# Moved to their own modules (co-activation; feature inspection); still importable from here for
# the chapters and the facade's table until they name the new modules.
from crosscoder_lib.applications.coactivation import coactivation_matrix  # noqa: F401
from crosscoder_lib.applications.features import (  # noqa: F401
    context_strings,
    feature_categories,
    top_activations,
    top_token_strings,
)


class ClusteringDidNotConverge(RuntimeError):
    """Affinity propagation hit ``max_iter`` without settling on a set of exemplars."""


class Clusters(NamedTuple):
    """Result of :func:`cluster_interactions`.

    labels_H: int64 ``[H]``, the cluster of every feature, ``0 .. n_clusters-1``; ``-1`` for
        features left out (not in ``active_mask``: by default, features with no interaction at all).
    n_clusters: number of clusters found.
    exemplars: int64 ``[n_clusters]``, the feature id chosen by AP as exemplar of each cluster
        (``exemplars[c]`` is a feature of cluster ``c``).
    method: ``"precomputed"`` or ``"euclidean_rows"``.
    n_iter: AP iterations run.
    converged: False only when ``on_nonconvergence="warn"`` let a non-converged result through.
    """

    labels_H: np.ndarray
    n_clusters: int
    exemplars: np.ndarray
    method: str
    n_iter: int
    converged: bool


def cluster_interactions(
    M_HH,
    method: Literal["precomputed", "euclidean_rows"] = "precomputed",
    active_mask=None,
    seed: int = 0,
    damping: float = 0.7,
    max_iter: int = 500,
    convergence_iter: int = 15,
    preference: float | None = None,
    diagonal: float | None = None,
    on_nonconvergence: Literal["raise", "warn"] = "raise",
) -> Clusters:
    """Cluster features by interaction with affinity propagation (sklearn ``AffinityPropagation``).

    Both methods first symmetrise the matrix, ``S = (M + Mᵀ) / 2``, because ``M[i, j]`` (i dominant,
    j not) and ``M[j, i]`` are two halves of one pairwise relation, then keep the features of
    ``active_mask``. They differ in what counts as *similar*:

    - ``"precomputed"``: ``S[i, j]`` itself is the similarity of features i and j (AP with
      ``affinity="precomputed"``): two features are alike when they interact strongly *with each
      other*. AP overwrites the diagonal with the preference.
    - ``"euclidean_rows"`` (the paper's way, as in the authors' code: AP's default affinity on the
      rows of the symmetrised matrix): each feature is described by its row ``S[i, :]``, its
      interaction profile, and the similarity is ``-‖S[i] - S[j]‖²``: two features are alike when
      they interact *with the same partners*, whether or not with each other. ``diagonal`` sets
      ``S[i, i]`` first (the authors' code sets it to 1.0; by default it is left as ``M`` has it,
      0, since a feature is never paired with itself).

    ``preference`` defaults to sklearn's (median similarity), which sets how many clusters AP finds
    (lower gives fewer). ``damping`` defaults to 0.7, not sklearn's 0.5 (the authors' setting): on
    planted block matrices the precomputed form oscillated without converging at 0.5 for some seeds.

    Args:
        M_HH: ``[H, H]`` interaction (or any non-negative similarity) matrix, torch or numpy.
        active_mask: bool ``[H]`` of the features to cluster; the rest get label -1. Default:
            features with a non-zero row or column (never-active features have neither).
        seed: ``random_state`` of AP (it adds a tiny seeded jitter to break ties).
        on_nonconvergence: ``"raise"`` a :class:`ClusteringDidNotConverge` naming the fix, or
            ``"warn"`` and return what AP gave (``converged=False``; labels may be degenerate).
    """
    M = _checked_matrix(M_HH, method)
    feats = _features_to_cluster(M, active_mask)
    labels_H = np.full(M.shape[0], -1, dtype=np.int64)
    if feats.size == 1:
        labels_H[feats] = 0
        return Clusters(labels_H, 1, feats.astype(np.int64), method, 0, True)
    S = ((M + M.T) / 2)[np.ix_(feats, feats)]
    if diagonal is not None:
        np.fill_diagonal(S, diagonal)
    ap, converged = _affinity_propagation(S, method, seed, damping, max_iter, convergence_iter,
                                          preference, on_nonconvergence)
    labels_H[feats] = np.asarray(ap.labels_, dtype=np.int64)
    centers = np.asarray(ap.cluster_centers_indices_, dtype=np.int64)
    exemplars = feats[centers] if centers.size else np.zeros(0, dtype=np.int64)
    return Clusters(labels_H, int(centers.size), exemplars, method, int(ap.n_iter_), converged)


def _checked_matrix(M_HH, method: str) -> np.ndarray:
    M = as_numpy(M_HH).astype(np.float64)
    if M.ndim != 2 or M.shape[0] != M.shape[1]:
        raise ValueError(f"M_HH must be a square [H, H] matrix; got shape {M.shape}")
    if not np.all(np.isfinite(M)):
        raise ValueError("M_HH holds NaN or inf entries; check the interaction computation")
    if method not in ("precomputed", "euclidean_rows"):
        raise ValueError(f"method must be 'precomputed' or 'euclidean_rows'; got {method!r}")
    return M


def _features_to_cluster(M: np.ndarray, active_mask) -> np.ndarray:
    """Ids of the features of ``active_mask``; by default those with a non-zero row or column."""
    H = M.shape[0]
    if active_mask is None:
        active = (np.abs(M).sum(0) + np.abs(M).sum(1)) > 0
    else:
        active = as_numpy(active_mask).astype(bool)
        if active.shape != (H,):
            raise ValueError(f"active_mask must be bool [H]=[{H}]; got shape {active.shape}")
    feats = np.flatnonzero(active)
    if feats.size == 0:
        raise ValueError(
            "no feature to cluster: active_mask is empty (or M_HH is all zero); "
            "check that the interaction matrix was accumulated over tokens"
        )
    return feats


def _affinity_propagation(S, method, seed, damping, max_iter, convergence_iter, preference,
                          on_nonconvergence):
    """``(fitted AffinityPropagation, converged)`` on the similarity input ``S``."""
    from sklearn.cluster import AffinityPropagation
    from sklearn.exceptions import ConvergenceWarning

    ap = AffinityPropagation(
        damping=damping,
        max_iter=max_iter,
        convergence_iter=convergence_iter,
        preference=preference,
        affinity="precomputed" if method == "precomputed" else "euclidean",
        random_state=seed,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        ap.fit(S)
    not_converged = any(issubclass(w.category, ConvergenceWarning) for w in caught)
    for w in caught:  # pass on anything that is not the convergence warning handled here
        if not issubclass(w.category, ConvergenceWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if not_converged:
        msg = (
            f"affinity propagation ({method}, damping={damping}) did not converge in "
            f"max_iter={max_iter} iterations on {S.shape[0]} features. Fix: raise damping "
            f"towards 0.9 and/or max_iter; a very heavy-tailed matrix may also need a transform "
            f"(e.g. log1p) before clustering."
        )
        if on_nonconvergence == "raise":
            raise ClusteringDidNotConverge(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=3)  # at the caller of cluster_interactions
    return ap, not not_converged


def cluster_members(labels) -> dict[int, np.ndarray]:
    """``{cluster: feature ids}`` for every cluster of ``labels`` (features labelled -1 skipped),
    clusters ordered by decreasing size (ties by cluster id)."""
    labels = as_numpy(labels)
    ids, counts = np.unique(labels[labels >= 0], return_counts=True)
    order = np.lexsort((ids, -counts))
    return {int(ids[o]): np.flatnonzero(labels == ids[o]) for o in order}


def random_clusters_like(labels, seed: int = 0) -> np.ndarray:
    """Random clusters with exactly the sizes of ``labels``: the labels of clustered features are
    shuffled among them (seeded); features labelled -1 stay -1."""
    labels = as_numpy(labels).astype(np.int64)
    out = labels.copy()
    inside = np.flatnonzero(labels >= 0)
    out[inside] = np.random.default_rng(seed).permutation(labels[inside])
    return out


class ClusterScores(NamedTuple):
    """Agreement of clusters with ground-truth feature categories (:func:`score_clusters`).

    purity: ``Σ_c max_k |c ∩ k| / N``: share of features in their cluster's majority category
        (1 for singletons, hence the random baseline of same sizes).
    ami: adjusted mutual information (sklearn) between clusters and categories (0 = chance).
    n_clusters, n_features: clusters and features scored (features labelled -1 or of category
        :data:`NO_CATEGORY` are left out).
    """

    purity: float
    ami: float
    n_clusters: int
    n_features: int


def score_clusters(labels, categories: Sequence[str]) -> ClusterScores:
    """Purity and adjusted mutual information of ``labels`` against feature ``categories``."""
    from sklearn.metrics import adjusted_mutual_info_score

    labels = as_numpy(labels)
    if len(categories) != labels.shape[0]:
        raise ValueError(
            f"labels has {labels.shape[0]} features but categories {len(categories)}; both must "
            f"be indexed by feature id"
        )
    cats = np.asarray(categories, dtype=object)
    keep = (labels >= 0) & (cats != NO_CATEGORY)
    lab, cat = labels[keep], cats[keep]
    if lab.size == 0:
        raise ValueError("no feature is both clustered and categorised; nothing to score")
    _, cat_codes = np.unique(cat.astype(str), return_inverse=True)
    table = np.zeros((lab.max() + 1, cat_codes.max() + 1), dtype=np.int64)
    np.add.at(table, (lab, cat_codes), 1)
    purity = table.max(1).sum() / lab.size
    ami = adjusted_mutual_info_score(cat_codes, lab)
    return ClusterScores(float(purity), float(ami), int(np.unique(lab).size), int(lab.size))


class ScoresAgainstRandom(NamedTuple):
    """Cluster scores next to random clusters of the same sizes (:func:`score_against_random`).

    scores: the clusters' :class:`ClusterScores`.
    random_purity_mean, random_purity_std, random_ami_mean, random_ami_std: over ``n_seeds``
        shufflings (:func:`random_clusters_like`).
    """

    scores: ClusterScores
    random_purity_mean: float
    random_purity_std: float
    random_ami_mean: float
    random_ami_std: float
    n_seeds: int


def score_against_random(labels, categories: Sequence[str], n_seeds: int = 20, seed: int = 0) -> ScoresAgainstRandom:
    """:func:`score_clusters` for ``labels`` and for ``n_seeds`` random clusterings of the same
    sizes (seeds ``seed .. seed+n_seeds-1``), as mean ± std."""
    scores = score_clusters(labels, categories)
    rand = [score_clusters(random_clusters_like(labels, seed + s), categories) for s in range(n_seeds)]
    p = np.array([r.purity for r in rand])
    a = np.array([r.ami for r in rand])
    return ScoresAgainstRandom(scores, float(p.mean()), float(p.std()), float(a.mean()), float(a.std()), n_seeds)


# ----------------------------------------------------------------------------------------------
# Plot


def plot_clustered_matrix(M_HH, labels, ax=None, log: bool = True, symmetrise: bool = True, cmap: str = "viridis"):
    """Heatmap of the interaction matrix with features ordered by cluster (largest first), lines at
    cluster boundaries; features labelled -1 are left out. ``log`` shows ``log10(1 + M/m)`` with
    ``m`` the smallest positive entry, as interaction strengths span orders of magnitude.

    Returns the matplotlib axes.
    """
    import matplotlib.pyplot as plt

    M = as_numpy(M_HH).astype(np.float64)
    if symmetrise:
        M = (M + M.T) / 2
    members = cluster_members(labels)
    if not members:
        raise ValueError("labels hold no clustered feature (all -1); nothing to plot")
    order = np.concatenate(list(members.values()))
    sub = M[np.ix_(order, order)]
    if log:
        pos = sub[sub > 0]
        sub = np.log10(1 + sub / (pos.min() if pos.size else 1.0))
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 5))
    im = ax.imshow(sub, cmap=cmap, interpolation="nearest")
    edges = np.cumsum([len(v) for v in members.values()])[:-1] - 0.5
    for e in edges:
        ax.axhline(e, color="white", lw=0.5)
        ax.axvline(e, color="white", lw=0.5)
    ax.set_xlabel("feature j (ordered by cluster)")
    ax.set_ylabel("feature i (ordered by cluster)")
    ax.set_title(f"{'symmetrised ' if symmetrise else ''}interaction matrix, {len(members)} clusters")
    ax.figure.colorbar(im, ax=ax, label="log10(1 + M / min M>0)" if log else "M")
    return ax
