"""The passes over (block, chunk of tokens) that every interaction aggregate shares.

Per block ``l`` and token ``t`` the magnitudes of the contributions of ``t``'s active slots are
``|p[t, k, n]| = |val[t, k]| · |G_l[idx[t, k], n]|`` (for another MLP kind ``|G|`` is the kind's
combined magnitude, :mod:`.mlp`). A pass yields, chunk by chunk, ``Σ_k |p|``, ``max_k |p|`` and, when
asked, the dominant slot, so that:

- memory is ``O(T·K·N)`` in chunks of tokens (a few MB at a time), never ``O(T·N·H)``;
- ties in ``argmax_k |p|`` go to the lowest slot (the order of ``idx_BK``; TopK orders slots by
  activation, so the larger activation wins). When every contribution of ``(l, t, n)`` is zero (a
  token with no active feature) the dominant slot is slot 0, which contributes nothing;
- the dominant share of such an ``(l, t, n)``, where ``Σ |p| = 0``, is 1 (:func:`share_sum`): the
  neuron sees no feature, so the feature-wise explanation is exact there.

Codes must have been read by :func:`crosscoder_lib.interactions.codes.read_codes` (active slots
first), so a chunk's active slots are its first ``K_c``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import torch

# Elements of one [tokens, slots, neurons] work buffer: 2M floats (8 MB) keeps a chunk in cache.
CHUNK_ELEMENTS = 1 << 21
# On a GPU a chunk is one launch of each of a pass's ~10 kernels, so chunks are as large as memory
# allows: a sixteenth of the free memory (a pass holds a few buffers of a chunk's size), at most 2^28.
GPU_CHUNK_FRACTION, GPU_CHUNK_MAX = 16, 1 << 28


def chunk_elements(device: torch.device | str | None = None) -> int:
    """Elements of a pass's work buffer on ``device``: :data:`CHUNK_ELEMENTS` on a CPU, sized by
    the free memory on a GPU."""
    device = torch.device(device or "cpu")
    if device.type != "cuda":
        return CHUNK_ELEMENTS
    free, _ = torch.cuda.mem_get_info(device)
    return max(CHUNK_ELEMENTS, min(GPU_CHUNK_MAX, free // (4 * GPU_CHUNK_FRACTION)))


def chunk_tokens_for(n_slots: int, n_neurons: int, chunk_tokens: int | None = None,
                     device: torch.device | str | None = None) -> int:
    """Tokens per chunk: ``chunk_tokens`` if given (≥ 1), else as many as fill :func:`chunk_elements`."""
    if chunk_tokens is not None:
        if chunk_tokens < 1:
            raise ValueError(f"chunk_tokens must be ≥ 1, got {chunk_tokens}")
        return chunk_tokens
    return max(1, chunk_elements(device) // max(1, n_slots * n_neurons))


class Plan(NamedTuple):
    """Tokens sorted by active count, cut into chunks, each trimmed to its own largest count."""

    idx_BK: torch.Tensor
    """Rows in sorted order, active slots first."""
    vabs_BK: torch.Tensor
    """``|val|`` in the same order (detached)."""
    order_B: torch.Tensor
    """Original token of each sorted row."""
    chunks: list
    """``(slice of sorted rows, slots K_c kept)`` per chunk."""
    buffer_elements: int


def make_plan(idx_BK: torch.Tensor, vabs_BK: torch.Tensor, n_neurons: int, chunk_tokens: int | None) -> Plan:
    """Under BatchTopK a few tokens have many more features than the mean; sorting tokens by count
    lets each chunk pay for its own largest count instead of the batch's."""
    B, K = idx_BK.shape
    counts = (vabs_BK != 0).sum(1)
    order = counts.argsort(stable=True)
    counts_sorted = counts[order].tolist()
    c = chunk_tokens_for(K, n_neurons, chunk_tokens, idx_BK.device)
    chunks = [(slice(a, min(a + c, B)), max(1, counts_sorted[min(a + c, B) - 1])) for a in range(0, B, c)]
    return Plan(idx_BK[order], vabs_BK[order], order, chunks, min(c, B) * K * n_neurons)


def abs_contributions(absG_HN, idx_cK, vabs_cK, buf) -> torch.Tensor:
    """``|p[t, k, n]| = |val[t, k]| · |G[idx[t, k], n]|`` gathered into the reused buffer ``buf``."""
    n, K = idx_cK.shape
    N = absG_HN.shape[1]
    absp = torch.index_select(absG_HN, 0, idx_cK.reshape(-1), out=buf[: n * K * N].view(n * K, N))
    return absp.view(n, K, N).mul_(vabs_cK[:, :, None])


class Chunk(NamedTuple):
    """One (block, chunk of tokens) of a pass; its tensors are overwritten by the next chunk."""

    block: int
    rows: slice
    """The chunk's rows in the plan's sorted order."""
    tokens: torch.Tensor
    """Original token index of each row."""
    idx_cK: torch.Tensor
    """Their feature ids, the chunk's ``K_c`` slots (active first)."""
    vabs_cK: torch.Tensor
    absp_cKN: torch.Tensor
    """``|p|`` (a work buffer: a consumer may overwrite it)."""
    sum_cN: torch.Tensor
    """``Σ_k |p|``."""
    max_cN: torch.Tensor
    """``max_k |p|``."""
    dominant_cN: torch.Tensor | None
    """Slot of the dominant feature (lowest slot on ties), long; None unless asked for."""


@torch.no_grad()
def passes(plan: Plan, absG_LHN: torch.Tensor, dominant: bool = False) -> Iterator[Chunk]:
    """``Σ_k |p|``, ``max_k |p|`` (and the dominant slot) for every (block, token, neuron), chunk by chunk.

    The dominant slot is read off ``(|p| == max) · (K-1-k)`` maximised over ``k`` (first slot on
    ties) because PyTorch's index-returning max reduction is ~10× slower than these passes on CPU.
    """
    buf = absG_LHN.new_empty(plan.buffer_elements)
    mask = torch.empty_like(buf) if dominant else None
    for l in range(absG_LHN.shape[0]):
        for rows, k in plan.chunks:
            idx, vabs = plan.idx_BK[rows, :k], plan.vabs_BK[rows, :k]
            absp = abs_contributions(absG_LHN[l], idx, vabs, buf)
            s, m = absp.sum(1), absp.amax(1)
            dom = None
            if dominant:
                is_max = mask[: absp.numel()].view_as(absp).copy_(absp)
                desc = torch.arange(k - 1, -1, -1, dtype=absG_LHN.dtype, device=absG_LHN.device)[None, :, None]
                dom = (k - 1) - is_max.eq_(m[:, None, :]).mul_(desc).amax(1).long()
            yield Chunk(l, rows, plan.order_B[rows], idx, vabs, absp, s, m, dom)


def dominant_slots(score_TNK: torch.Tensor, n_active_T: torch.Tensor) -> torch.Tensor:
    """``[T, N]`` slot of the largest ``score ≥ 0`` among each token's active slots ``0 … a_t − 1``,
    the passes' rule on dense scores: lowest slot on ties (``argmax`` returns the first maximum),
    slot 0 when no slot is active."""
    K = score_TNK.shape[-1]
    inactive = torch.arange(K, device=score_TNK.device)[None, :] >= n_active_T[:, None]  # [T, K]
    return score_TNK.masked_fill(inactive[:, None, :], -1.0).argmax(-1)


def share_sum(sum_cN: torch.Tensor, max_cN: torch.Tensor) -> torch.Tensor:
    """``Σ max/sum`` with 0/0 (no feature reaches the neuron) counted as a share of 1."""
    return torch.div(max_cN, sum_cN).nan_to_num_(nan=1.0).sum(dtype=torch.float64)
