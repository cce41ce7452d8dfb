"""Sparse codes read for analysis: the active ``(row, feature, value)`` entries of a block of rows.

Codes are read duck-typed, as any object with ``idx_BK`` (long feature ids of the active slots) and
``val_BK`` (their values, 0 in padded slots) — ``crosscoder.SparseCodes`` — or as a pair
``(idx_BK, val_BK)`` (:func:`crosscoder_lib.interactions.measures.unpack_codes`). The feature
inspection (:mod:`crosscoder_lib.applications.features`) and the co-activation baseline
(:mod:`crosscoder_lib.applications.coactivation`) both work on the entries these functions give,
never on a dense ``[B, H]`` table.
"""

from __future__ import annotations

import torch

from crosscoder_lib.interactions.measures import unpack_codes


def analysis_codes(codes) -> tuple[torch.Tensor, torch.Tensor]:
    """``(idx_BK, val_BK)`` of ``codes``, the values detached: counts and rankings never carry the
    crosscoder's graph."""
    idx_BK, val_BK = unpack_codes(codes)
    return idx_BK, val_BK.detach()


def coalesced_rows(
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


def padded_by_row(
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
