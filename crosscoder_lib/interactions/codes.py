"""A crosscoder's codes, read and checked once for every interaction quantity.

Codes are read duck-typed: any object with ``idx_BK`` (long feature ids of a token's active slots)
and ``val_BK`` (their activations; exactly 0 in padded slots), or a pair ``(idx_BK, val_BK)``. A
padded slot is never a feature: it adds nothing to any sum, can never be chosen as a dropped or
kept feature, and its index is never read.

:func:`read_codes` is the preamble every quantity shares: unpack, check the ids against the
dictionary, move each token's active slots first (:class:`ActiveCodes`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class ActiveCodes(NamedTuple):
    """Checked codes with each token's active slots first (:func:`read_codes`)."""

    idx_BK: torch.Tensor
    """Feature ids; token ``t``'s active features are slots ``0 … a_t − 1``; padded slots hold 0."""
    val_BK: torch.Tensor
    """Their activations, gathered (gradients flow through); exactly 0 in padded slots."""


def unpack_codes(codes) -> tuple[torch.Tensor, torch.Tensor]:
    """``(idx_BK, val_BK)`` of codes (a ``SparseCodes`` or any object with ``.idx_BK`` and ``.val_BK``,
    or a pair ``(idx_BK, val_BK)``), checked: 2-D, same shape, integer ids, float values."""
    if hasattr(codes, "idx_BK") and hasattr(codes, "val_BK"):
        idx_BK, val_BK = codes.idx_BK, codes.val_BK
    elif isinstance(codes, (tuple, list)) and len(codes) == 2:
        idx_BK, val_BK = (torch.as_tensor(c) for c in codes)
    else:
        raise TypeError(f"codes must be a SparseCodes (with .idx_BK and .val_BK) or a pair "
                        f"(idx_BK, val_BK); got {type(codes).__name__}")
    if idx_BK.ndim != 2 or idx_BK.shape != val_BK.shape:
        raise ValueError(
            f"codes.idx_BK and codes.val_BK must both be [B, K]; got {tuple(idx_BK.shape)} and {tuple(val_BK.shape)}"
        )
    if idx_BK.dtype.is_floating_point or not val_BK.dtype.is_floating_point:
        raise TypeError(f"codes need integer idx_BK and float val_BK; got {idx_BK.dtype} and {val_BK.dtype}")
    return idx_BK.long(), val_BK


def checked_ids(idx_BK: torch.Tensor, val_BK: torch.Tensor, n_features: int) -> torch.Tensor:
    """Feature ids with padded slots pointed at feature 0 (never read: their value is 0).

    Raises ``ValueError`` for an active id outside ``[0, n_features)`` or a feature listed twice.
    """
    active = val_BK.detach() != 0
    idx_BK = torch.where(active, idx_BK, torch.zeros_like(idx_BK))
    if idx_BK.numel() and (idx_BK.min() < 0 or idx_BK.max() >= n_features):
        bad = idx_BK[(idx_BK < 0) | (idx_BK >= n_features)][0].item()
        raise ValueError(f"codes.idx_BK holds feature id {bad} at an active slot; the decoder has {n_features} features")
    if idx_BK.shape[1] > 1:
        # A feature listed twice at one token would count as two interacting features.
        marked = torch.where(active, idx_BK, -1 - torch.arange(idx_BK.shape[1], device=idx_BK.device))
        s = marked.sort(dim=1).values
        if (s[:, 1:] == s[:, :-1]).any():
            raise ValueError(
                "a feature appears twice among one token's active slots in codes.idx_BK; "
                "merge the duplicates (sum their values) before computing interactions"
            )
    return idx_BK


def active_slots_first(idx_BK: torch.Tensor, val_BK: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Move each token's active slots first (stable) and drop the slots that are padded in every token.

    After this, token ``t``'s active features are slots ``0 … a_t − 1`` in their original order.

    BatchTopK codes are padded to the batch's largest active count; trimming makes the cost scale
    with that count instead of the padded width. Values are gathered, so gradients flow through.
    """
    active = val_BK.detach() != 0
    if active.all():
        return idx_BK, val_BK
    k_max = max(int(active.sum(1).max()), 1)
    order = (~active).to(torch.int8).argsort(dim=1, stable=True)[:, :k_max]
    return idx_BK.gather(1, order), val_BK.gather(1, order)


def checked_codes(codes, n_features: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(idx_BK, val_BK)`` of ``codes``, unpacked and checked, slots in their original order."""
    idx_BK, val_BK = unpack_codes(codes)
    return checked_ids(idx_BK, val_BK, n_features), val_BK


def read_codes(codes, n_features: int) -> ActiveCodes:
    """Unpack ``codes``, check their ids against a dictionary of ``n_features``, active slots first."""
    return ActiveCodes(*active_slots_first(*checked_codes(codes, n_features)))
