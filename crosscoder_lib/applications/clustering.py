"""Clustering crosscoder features by interaction (the paper's Figure 3), and scoring the clusters.

The paper clusters features with affinity propagation (AP) on the feature × feature interaction
matrix ``M_HH`` of SPEC §3 (``M[i, j]`` = summed pairwise interaction of dominant feature ``i`` with
active feature ``j``, averaged over tokens). This module offers

- :func:`cluster_interactions`: AP in the two ways the matrix can be read (see its docstring);
- :func:`coactivation_matrix`: the co-activation baseline, computed from sparse codes;
- :func:`random_clusters_like`: the random baseline with the same cluster sizes;
- :func:`top_activations`, :func:`context_strings`: each feature's top-activating tokens;
- :func:`feature_categories`, :func:`score_clusters`, :func:`score_against_random`: ground-truth
  scores from the embedded world's word categories (where the paper needed an LLM judge; the judge
  protocol itself lives in ``judge``);
- :func:`plot_clustered_matrix`: the heatmap of the matrix ordered by cluster.

Sparse codes are read duck-typed, as any object with ``idx_BK`` (long feature ids of the active
slots) and ``val_BK`` (their values, 0 in padded slots) — ``crosscoder.SparseCodes`` — or as a pair
``(idx_BK, val_BK)``.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Literal, NamedTuple

import numpy as np
import torch

from crosscoder_lib.interactions.measures import unpack_codes

NO_CATEGORY = "<none>"
"""Category given to a feature with no top activations (never active on the data)."""


# ----------------------------------------------------------------------------------------------
# Small shared helpers


def _as_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _analysis_codes(codes) -> tuple[torch.Tensor, torch.Tensor]:
    idx_BK, val_BK = unpack_codes(codes)
    # analysis only: never carry the crosscoder's graph into counts and rankings
    return idx_BK, val_BK.detach()


def _coalesced_rows(
    idx_BK: torch.Tensor, val_BK: torch.Tensor, n_features: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The active ``(row, feature, value)`` triples of a block of codes, one per (row, feature).

    Padded slots (value 0) are dropped. A feature listed twice in one row has its values summed, as
    a dense decode (scatter-add) of the code would; it then counts once. Triples come sorted by row,
    then feature.
    """
    B, K = idx_BK.shape
    live = val_BK != 0
    rows = torch.arange(B, device=idx_BK.device).unsqueeze(1).expand(B, K)[live]
    feats = idx_BK[live]
    if feats.numel() and (int(feats.min()) < 0 or int(feats.max()) >= n_features):
        raise ValueError(
            f"codes hold feature ids in [{int(feats.min())}, {int(feats.max())}] but n_features="
            f"{n_features}; pass the crosscoder's dictionary size H as n_features"
        )
    key = rows * n_features + feats
    uniq, inverse = torch.unique(key, sorted=True, return_inverse=True)
    vals = torch.zeros(uniq.numel(), dtype=val_BK.dtype, device=val_BK.device)
    vals.index_add_(0, inverse, val_BK[live])
    keep = vals != 0
    uniq, vals = uniq[keep], vals[keep]
    return uniq // n_features, uniq % n_features, vals


def _padded_by_row(
    rows: torch.Tensor, feats: torch.Tensor, vals: torch.Tensor, n_rows: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row-sorted triples back into a padded ``[n_rows, K']`` table with an occupancy mask."""
    counts = torch.bincount(rows, minlength=n_rows)
    width = int(counts.max()) if counts.numel() and rows.numel() else 0
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(rows.numel(), device=rows.device) - starts[rows]
    idx = torch.zeros(n_rows, width, dtype=torch.long, device=rows.device)
    val = torch.zeros(n_rows, width, dtype=vals.dtype, device=rows.device)
    mask = torch.zeros(n_rows, width, dtype=torch.bool, device=rows.device)
    idx[rows, slot], val[rows, slot], mask[rows, slot] = feats, vals, True
    return idx, val, mask


# ----------------------------------------------------------------------------------------------
# Affinity propagation


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
    from sklearn.cluster import AffinityPropagation
    from sklearn.exceptions import ConvergenceWarning

    M = _as_numpy(M_HH).astype(np.float64)
    if M.ndim != 2 or M.shape[0] != M.shape[1]:
        raise ValueError(f"M_HH must be a square [H, H] matrix; got shape {M.shape}")
    if not np.all(np.isfinite(M)):
        raise ValueError("M_HH holds NaN or inf entries; check the interaction computation")
    if method not in ("precomputed", "euclidean_rows"):
        raise ValueError(f"method must be 'precomputed' or 'euclidean_rows'; got {method!r}")
    H = M.shape[0]
    S = (M + M.T) / 2
    if active_mask is None:
        active = (np.abs(M).sum(0) + np.abs(M).sum(1)) > 0
    else:
        active = _as_numpy(active_mask).astype(bool)
        if active.shape != (H,):
            raise ValueError(f"active_mask must be bool [H]=[{H}]; got shape {active.shape}")
    feats = np.flatnonzero(active)
    labels_H = np.full(H, -1, dtype=np.int64)
    if feats.size == 0:
        raise ValueError(
            "no feature to cluster: active_mask is empty (or M_HH is all zero); "
            "check that the interaction matrix was accumulated over tokens"
        )
    if feats.size == 1:
        labels_H[feats] = 0
        return Clusters(labels_H, 1, feats.astype(np.int64), method, 0, True)

    S = S[np.ix_(feats, feats)]
    if diagonal is not None:
        np.fill_diagonal(S, diagonal)
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
            f"max_iter={max_iter} iterations on {feats.size} features. Fix: raise damping "
            f"towards 0.9 and/or max_iter; a very heavy-tailed matrix may also need a transform "
            f"(e.g. log1p) before clustering."
        )
        if on_nonconvergence == "raise":
            raise ClusteringDidNotConverge(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=2)
    local = np.asarray(ap.labels_, dtype=np.int64)
    labels_H[feats] = local
    centers = np.asarray(ap.cluster_centers_indices_, dtype=np.int64)
    exemplars = feats[centers] if centers.size else np.zeros(0, dtype=np.int64)
    return Clusters(
        labels_H, int(centers.size), exemplars, method, int(ap.n_iter_), not not_converged
    )


def cluster_members(labels) -> dict[int, np.ndarray]:
    """``{cluster: feature ids}`` for every cluster of ``labels`` (features labelled -1 skipped),
    clusters ordered by decreasing size (ties by cluster id)."""
    labels = _as_numpy(labels)
    ids, counts = np.unique(labels[labels >= 0], return_counts=True)
    order = np.lexsort((ids, -counts))
    return {int(ids[o]): np.flatnonzero(labels == ids[o]) for o in order}


def random_clusters_like(labels, seed: int = 0) -> np.ndarray:
    """Random clusters with exactly the sizes of ``labels``: the labels of clustered features are
    shuffled among them (seeded); features labelled -1 stay -1."""
    labels = _as_numpy(labels).astype(np.int64)
    out = labels.copy()
    inside = np.flatnonzero(labels >= 0)
    out[inside] = np.random.default_rng(seed).permutation(labels[inside])
    return out


# ----------------------------------------------------------------------------------------------
# Co-activation baseline


def coactivation_matrix(
    codes,
    n_features: int,
    normalise: Literal["count", "cosine", "jaccard"] = "cosine",
    weighted: bool = False,
    features=None,
    chunk_size: int = 8192,
) -> torch.Tensor:
    """The co-activation baseline: how often two features are active at the same token.

    With ``weighted=False`` the raw matrix is the co-occurrence **count**
    ``C[i, j] = #{tokens t : a[t, i] ≠ 0 and a[t, j] ≠ 0}`` (so ``C[i, i]`` is feature i's firing
    count); with ``weighted=True`` it is ``C[i, j] = Σ_t a[t, i] a[t, j]``. ``normalise`` then gives

    - ``"count"``: ``C`` as is;
    - ``"cosine"`` (default; the authors' baseline is a cosine similarity): ``C[i, j] / √(C[i, i] C[j, j])``,
      the cosine between the two features' firing (or activation) vectors over tokens;
    - ``"jaccard"`` (``weighted=False`` only): ``C[i, j] / (C[i, i] + C[j, j] − C[i, j])``.

    Entries of never-active features are 0. The count is accumulated sparsely from the active slots
    (``index_add_`` over the ``K × K`` pairs of each token, so repeated pairs add up, never
    overwrite); memory is ``O(chunk_size · K² + F²)``, never ``O(B · H)``.

    Args:
        codes: ``SparseCodes`` (``idx_BK``, ``val_BK``) or a pair; padded slots have value 0.
        n_features: dictionary size H.
        features: optional long ids of the F features to keep (the result is ``[F, F]`` in that
            order); default all H features. Use it when H² is too large to hold.

    Returns: float64 ``[F, F]`` (``F = H`` by default) on the CPU.
    """
    if normalise not in ("count", "cosine", "jaccard"):
        raise ValueError(f"normalise must be 'count', 'cosine' or 'jaccard'; got {normalise!r}")
    if normalise == "jaccard" and weighted:
        raise ValueError("normalise='jaccard' is defined for counts; use weighted=False")
    idx_BK, val_BK = _analysis_codes(codes)
    device = idx_BK.device
    if features is None:
        remap = torch.arange(n_features, device=device)
        F = n_features
    else:
        features = torch.as_tensor(features, device=device).long()
        remap = torch.full((n_features,), -1, dtype=torch.long, device=device)
        remap[features] = torch.arange(features.numel(), device=device)
        F = features.numel()
    if F * F > 2**31:
        raise ValueError(
            f"a dense [{F}, {F}] co-activation matrix is too large; pass features= with the ids "
            f"you need (e.g. the features active in the interaction matrix)"
        )
    C_flat = torch.zeros(F * F, dtype=torch.float64, device=device)
    B = idx_BK.shape[0]
    for start in range(0, B, chunk_size):
        rows, feats, vals = _coalesced_rows(
            idx_BK[start : start + chunk_size], val_BK[start : start + chunk_size], n_features
        )
        local = remap[feats]
        keep = local >= 0
        rows, local, vals = rows[keep], local[keep], vals[keep]
        if rows.numel() == 0:
            continue
        n_rows = int(rows.max()) + 1
        idx_bk, val_bk, mask_bk = _padded_by_row(rows, local, vals, n_rows)
        pair = mask_bk.unsqueeze(2) & mask_bk.unsqueeze(1)
        key = (idx_bk.unsqueeze(2) * F + idx_bk.unsqueeze(1))[pair]
        if weighted:
            w = (val_bk.unsqueeze(2) * val_bk.unsqueeze(1))[pair].to(torch.float64)
        else:
            w = torch.ones(key.numel(), dtype=torch.float64, device=device)
        C_flat.index_add_(0, key, w)
    C = C_flat.view(F, F).cpu()
    if normalise == "count":
        return C
    d = torch.diagonal(C).clone()
    if normalise == "cosine":
        denom = torch.sqrt(d.unsqueeze(1) * d.unsqueeze(0))
    else:
        denom = d.unsqueeze(1) + d.unsqueeze(0) - C
    return torch.where(denom > 0, C / denom.clamp_min(1e-300), torch.zeros_like(C))


# ----------------------------------------------------------------------------------------------
# Top activations


class TopActivations(NamedTuple):
    """Each feature's top-activating token positions, from :func:`top_activations`.

    positions_HK: long ``[H, k]``, flat positions (rows of the codes, i.e. ``seq * S + pos`` for
        tokens of shape ``[n_seq, S]``) by decreasing activation; -1 where a feature fired fewer
        than k times.
    values_HK: ``[H, k]`` activations there (0 in unused slots).
    token_ids_HK: long ``[H, k]`` token ids there (-1 in unused slots).
    n_active_H: long ``[H]``, how many positions each feature fired on in total.
    """

    positions_HK: torch.Tensor
    values_HK: torch.Tensor
    token_ids_HK: torch.Tensor
    n_active_H: torch.Tensor


def _select_top_per_feature(feats, vals, pos, n_features: int, k: int):
    """For triples (feature, value, position), the k largest values of each feature; ties go to
    the earlier position."""
    order = torch.argsort(pos, stable=True)
    order = order[torch.argsort(vals[order], descending=True, stable=True)]
    order = order[torch.argsort(feats[order], stable=True)]
    f, v, p = feats[order], vals[order], pos[order]
    counts = torch.bincount(f, minlength=n_features)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(f.numel(), device=f.device) - starts[f]
    sel = rank < k
    top_pos = torch.full((n_features, k), -1, dtype=torch.long, device=f.device)
    top_val = torch.zeros((n_features, k), dtype=vals.dtype, device=f.device)
    top_pos[f[sel], rank[sel]] = p[sel]
    top_val[f[sel], rank[sel]] = v[sel]
    return top_pos, top_val


def top_activations(codes, token_ids, n_features: int, k: int = 10, chunk_size: int = 65536) -> TopActivations:
    """The ``k`` token positions where each feature fires most strongly, computed sparsely.

    Only the active slots are read, a chunk of rows at a time, and each chunk's candidates are
    merged with the running top-k table, so memory is ``O(chunk_size · K + H · k)``.

    Args:
        codes: ``SparseCodes`` (``idx_BK``, ``val_BK``) or a pair, one row per token position.
        token_ids: token ids of those positions: ``[B]``, or ``[n_seq, S]`` with ``n_seq·S = B``
            (row-major, as the activations were flattened).
        n_features: dictionary size H.
    """
    idx_BK, val_BK = _analysis_codes(codes)
    token_ids = torch.as_tensor(token_ids).reshape(-1).long()
    B = idx_BK.shape[0]
    if token_ids.numel() != B:
        raise ValueError(
            f"token_ids has {token_ids.numel()} positions but codes have B={B} rows; pass the "
            f"tokens the codes were computed on ([B] or [n_seq, S] flattened row-major)"
        )
    if k < 1:
        raise ValueError(f"k must be >= 1; got {k}")
    device = idx_BK.device
    top_pos = torch.full((n_features, k), -1, dtype=torch.long, device=device)
    top_val = torch.zeros((n_features, k), dtype=val_BK.dtype, device=device)
    n_active = torch.zeros(n_features, dtype=torch.long, device=device)
    feat_of_slot = torch.arange(n_features, device=device).unsqueeze(1).expand(n_features, k)
    for start in range(0, B, chunk_size):
        rows, feats, vals = _coalesced_rows(
            idx_BK[start : start + chunk_size], val_BK[start : start + chunk_size], n_features
        )
        n_active += torch.bincount(feats, minlength=n_features)
        held = top_pos >= 0
        top_pos, top_val = _select_top_per_feature(
            torch.cat([feats, feat_of_slot[held]]),
            torch.cat([vals, top_val[held]]),
            torch.cat([rows + start, top_pos[held]]),
            n_features,
            k,
        )
    tok = torch.where(top_pos >= 0, token_ids.to(device)[top_pos.clamp_min(0)], -1)
    return TopActivations(top_pos, top_val, tok, n_active)


def top_token_strings(top: TopActivations, id_to_str: Callable[[int], str]) -> list[list[str]]:
    """Each feature's top tokens as strings (unused slots dropped): the input of
    :func:`feature_categories` and ``judge.explain_feature``."""
    ids = top.token_ids_HK.cpu().tolist()
    return [[id_to_str(t) for t in row if t >= 0] for row in ids]


def context_strings(
    tokens_NS,
    positions,
    id_to_str: Callable[[int], str],
    left: int = 6,
    right: int = 2,
    mark: tuple[str, str] = ("«", "»"),
    sep: str = " ",
) -> list[str]:
    """Text around flat positions (``seq * S + pos``) of a token array ``[n_seq, S]``, the focus
    token wrapped in ``mark``; windows stop at the sequence's edges. Positions < 0 give ``""``."""
    tokens_NS = torch.as_tensor(tokens_NS)
    if tokens_NS.ndim != 2:
        raise ValueError(f"tokens_NS must be [n_seq, S]; got shape {tuple(tokens_NS.shape)}")
    n_seq, S = tokens_NS.shape
    out = []
    for p in _as_numpy(positions).reshape(-1).tolist():
        if p < 0:
            out.append("")
            continue
        if p >= n_seq * S:
            raise ValueError(f"position {p} is outside the token array of {n_seq}×{S} positions")
        s, t = divmod(int(p), S)
        row = tokens_NS[s].tolist()
        words = [id_to_str(i) for i in row[max(0, t - left) : t]]
        words.append(f"{mark[0]}{id_to_str(row[t])}{mark[1]}")
        words += [id_to_str(i) for i in row[t + 1 : t + 1 + right]]
        out.append(sep.join(words))
    return out


# ----------------------------------------------------------------------------------------------
# Ground-truth scores


class FeatureCategories(NamedTuple):
    """Per-feature ground-truth label from :func:`feature_categories`.

    categories: the majority word category of each feature's top tokens (:data:`NO_CATEGORY`
        for a feature with none).
    purity: float ``[H]``, share of its top tokens in that category (0 for none).
    """

    categories: list[str]
    purity: np.ndarray


def feature_categories(
    top_token_strs_per_feature: Sequence[Sequence[str]], category_of: Callable[[str], str]
) -> FeatureCategories:
    """Label each feature by the majority category of its top-activating tokens.

    Ties go to the category met first in the list (the top tokens come strongest first).
    """
    cats, purity = [], np.zeros(len(top_token_strs_per_feature))
    for h, toks in enumerate(top_token_strs_per_feature):
        if len(toks) == 0:
            cats.append(NO_CATEGORY)
            continue
        (best, n), = Counter(category_of(t) for t in toks).most_common(1)
        cats.append(best)
        purity[h] = n / len(toks)
    return FeatureCategories(cats, purity)


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

    labels = _as_numpy(labels)
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

    M = _as_numpy(M_HH).astype(np.float64)
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
