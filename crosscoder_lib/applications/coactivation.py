"""The co-activation baseline of the interaction clusters: how often two features fire together.

The paper's Figure 3 compares clusters of the interaction matrix with clusters of a co-activation
matrix (the authors' baseline is a cosine similarity). :func:`coactivation_matrix` computes it from
sparse codes (:mod:`crosscoder_lib.applications.codes`), never from a dense ``[B, H]`` table.
"""

from __future__ import annotations

from typing import Literal

import torch

from crosscoder_lib.applications.codes import analysis_codes, coalesced_rows, padded_by_row


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
    idx_BK, val_BK = analysis_codes(codes)
    remap, F = _kept_features(features, n_features, idx_BK.device)
    C = _pair_sums(idx_BK, val_BK, n_features, remap, F, weighted, chunk_size)
    if normalise == "count":
        return C
    return _normalised(C, normalise)


def _kept_features(features, n_features: int, device) -> tuple[torch.Tensor, int]:
    """``(remap, F)``: feature id -> its row in the result (-1: left out), and the result's size."""
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
    return remap, F


def _pair_sums(idx_BK, val_BK, n_features: int, remap, F: int, weighted: bool,
               chunk_size: int) -> torch.Tensor:
    """The raw ``C_FF`` (float64, on the CPU): per token, 1 (or ``a_i a_j``) for every pair of its
    active kept features, summed over tokens a chunk at a time."""
    device = idx_BK.device
    C_flat = torch.zeros(F * F, dtype=torch.float64, device=device)
    B = idx_BK.shape[0]
    for start in range(0, B, chunk_size):
        rows, feats, vals = coalesced_rows(
            idx_BK[start : start + chunk_size], val_BK[start : start + chunk_size], n_features
        )
        local = remap[feats]
        keep = local >= 0
        rows, local, vals = rows[keep], local[keep], vals[keep]
        if rows.numel() == 0:
            continue
        n_rows = int(rows.max()) + 1
        idx_bk, val_bk, mask_bk = padded_by_row(rows, local, vals, n_rows)
        pair = mask_bk.unsqueeze(2) & mask_bk.unsqueeze(1)
        key = (idx_bk.unsqueeze(2) * F + idx_bk.unsqueeze(1))[pair]
        if weighted:
            w = (val_bk.unsqueeze(2) * val_bk.unsqueeze(1))[pair].to(torch.float64)
        else:
            w = torch.ones(key.numel(), dtype=torch.float64, device=device)
        C_flat.index_add_(0, key, w)
    return C_flat.view(F, F).cpu()


def _normalised(C: torch.Tensor, normalise: str) -> torch.Tensor:
    d = torch.diagonal(C).clone()
    if normalise == "cosine":
        denom = torch.sqrt(d.unsqueeze(1) * d.unsqueeze(0))
    else:
        denom = d.unsqueeze(1) + d.unsqueeze(0) - C
    return torch.where(denom > 0, C / denom.clamp_min(1e-300), torch.zeros_like(C))
