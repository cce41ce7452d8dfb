"""The crosscoder's products with its big weights, as autograd functions.

- :func:`encode`: ``pre_BH = b_enc + x_BF @ W_enc`` (``F = X·D``);
- :func:`sparse_decode`: ``out_BF[b] = Σ_k val[b, k] · W_dec[idx[b, k]]`` over the ACTIVE slots only;
- :func:`dense_decode`: ``out_BF = a_BH @ W_dec``;
- :func:`select_slots`: the decoder rows at some hookpoint slots (what the penalty reads).

Each computes exactly what autograd's own ``addmm``, ``embedding_bag``, ``mm`` and ``index_select``
compute, values and gradients bit for bit; two things differ. The weight gradient is written into a buffer taken
from ``buffers`` (:class:`~crosscoder_lib.interactions.kernels.buffers.GradientBuffers`), so a
trainer that recycles its gradients maps no new memory for them; and the sparse decoder works on
the active entries only.

**Unpadded sparse decoding.** Codes come padded to ``[B, K]`` with ``K`` the batch's largest row
count (BatchTopK: 4–7× its mean ``k``), padded slots holding 0. Passing the padded codes to
``embedding_bag`` gathers a row for every slot, forward and backward; :func:`sparse_decode` passes
the active entries, flat with per-token offsets. A padded entry only ever adds an exact ``0 · row``,
so the forward (each token's entries summed in slot order) does not change. The weight gradient of
``embedding_bag`` on the CPU accumulates each feature's entries in the order of a (not stable) sort
of the flat PADDED ids, which dropping entries would change (1-ulp drifts), so :class:`_SparseDecode`
sorts the padded ids the same way, drops the inactive entries from that permutation, and sums what
is left feature by feature as an ``embedding_bag`` over the incoming gradient's rows (the transposed
problem): the same products added in the same order. The gradient reaching a slot whose value is 0
is 0, where the padded call gave it ``W_dec[id] · grad``; every activation but JumpReLU multiplies
that by 0 on its way to the pre-activations (a ReLU or a selection), so no parameter's gradient
changes (JumpReLU decodes densely under ``decode="auto"`` for this reason, see ``Crosscoder.decode_path``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from crosscoder_lib.interactions.kernels.buffers import GradientBuffers

SUM = 0  # embedding_bag's mode code for "sum"
CHUNK_BYTES = 8 << 20  # the transposed sum's output per call: under glibc's mmap threshold, so it is reused


def _buffer(buffers: GradientBuffers | None, param: torch.Tensor) -> torch.Tensor | None:
    # Not under create_graph: an out= product is not differentiable.
    return buffers.take(param) if buffers is not None and not torch.is_grad_enabled() else None


class _Encode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_BF, W_XDH, b_H, buffers):
        W_FH = W_XDH.flatten(0, 1)
        ctx.save_for_backward(x_BF, W_XDH)
        ctx.buffers, ctx.b_shape = buffers, b_H.shape
        return torch.addmm(b_H, x_BF, W_FH)

    @staticmethod
    def backward(ctx, grad_BH):
        x_BF, W_XDH = ctx.saved_tensors
        W_FH = W_XDH.flatten(0, 1)
        grad_x = grad_W = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = grad_BH.mm(W_FH.t())  # autograd's mm_mat1_backward for a row-major weight
        if ctx.needs_input_grad[1]:
            buf = _buffer(ctx.buffers, W_XDH)
            if buf is None:
                grad_W = x_BF.t().mm(grad_BH).view_as(W_XDH)
            else:  # returned as the buffer itself, not a view of it, so autograd may add into it
                grad_W = buf
                torch.mm(x_BF.t(), grad_BH, out=buf.view_as(W_FH))
        if ctx.needs_input_grad[2]:
            grad_b = grad_BH.sum_to_size(ctx.b_shape)  # what autograd does for addmm's broadcast bias
        return grad_x, grad_W, grad_b, None


def encode(x_BF: torch.Tensor, W_XDH: torch.Tensor, b_H: torch.Tensor,
           buffers: GradientBuffers | None = None) -> torch.Tensor:
    """``b_H + x_BF @ W_XDH.flatten(0, 1)`` (module docstring)."""
    return _Encode.apply(x_BF, W_XDH, b_H, buffers)


class _DenseDecode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a_BH, W_HXD, buffers):
        ctx.save_for_backward(a_BH, W_HXD)
        ctx.buffers = buffers
        return torch.mm(a_BH, W_HXD.flatten(1))

    @staticmethod
    def backward(ctx, grad_BF):
        a_BH, W_HXD = ctx.saved_tensors
        W_HF = W_HXD.flatten(1)
        grad_a = grad_W = None
        if ctx.needs_input_grad[0]:
            grad_a = grad_BF.mm(W_HF.t())
        if ctx.needs_input_grad[1]:
            buf = _buffer(ctx.buffers, W_HXD)
            if buf is None:
                grad_W = a_BH.t().mm(grad_BF).view_as(W_HXD)
            else:
                grad_W = buf
                torch.mm(a_BH.t(), grad_BF, out=buf.view_as(W_HF))
        return grad_a, grad_W, None


def dense_decode(a_BH: torch.Tensor, W_HXD: torch.Tensor, buffers: GradientBuffers | None = None) -> torch.Tensor:
    """``a_BH @ W_HXD.flatten(1)``, ``[B, X·D]`` (module docstring)."""
    return _DenseDecode.apply(a_BH, W_HXD, buffers)


class FlatCodes(NamedTuple):
    """The active entries of padded codes, flat, token by token in slot order."""

    idx_E: torch.Tensor
    """Feature id of each active entry."""
    val_E: torch.Tensor
    """Its value (differentiable: the masked ``val_BK``)."""
    offsets_B: torch.Tensor
    """Where each token's entries start in ``idx_E``."""
    active_BK: torch.Tensor
    """Which slots of the padded codes are active (value ≠ 0)."""


def flatten_codes(idx_BK: torch.Tensor, val_BK: torch.Tensor) -> FlatCodes:
    """The active entries of ``(idx_BK, val_BK)`` with their offsets (:class:`FlatCodes`)."""
    active_BK = val_BK.detach() != 0
    counts_B = active_BK.sum(1)
    return FlatCodes(idx_BK[active_BK], val_BK[active_BK], counts_B.cumsum(0) - counts_B, active_BK)


def _feature_sums(bag_E, grad_BF, starts_H, val_E, out_HF: torch.Tensor | None) -> torch.Tensor:
    """``out[h] = Σ_{entries e of feature h, in order} val[e] · grad[bag[e]]`` (``embedding_bag`` of
    the transposed problem), into ``out_HF`` a chunk of features at a time when given."""
    if out_HF is None:
        return F.embedding_bag(bag_E, grad_BF, starts_H, per_sample_weights=val_E, mode="sum")
    H, n = out_HF.shape[0], len(bag_E)
    rows = max(1, CHUNK_BYTES // max(1, out_HF.shape[1] * out_HF.element_size()))
    bounds = torch.cat([starts_H, starts_H.new_tensor([n])]).tolist()
    for h0 in range(0, H, rows):
        h1 = min(h0 + rows, H)
        e0, e1 = bounds[h0], bounds[h1]
        out_HF[h0:h1] = F.embedding_bag(bag_E[e0:e1], grad_BF, starts_H[h0:h1] - e0,
                                        per_sample_weights=val_E[e0:e1], mode="sum")
    return out_HF


class _SparseDecode(torch.autograd.Function):
    """``embedding_bag`` over flat active entries with the padded call's weight-gradient order (CPU)."""

    @staticmethod
    def forward(ctx, W_HXD, val_E, idx_E, offsets_B, idx_BK, active_BK, buffers):
        out_BF, offset2bag, _, _ = torch.ops.aten._embedding_bag(W_HXD.flatten(1), idx_E, offsets_B, False, SUM,
                                                                 False, val_E)
        ctx.save_for_backward(W_HXD, val_E, idx_E, offsets_B, offset2bag, idx_BK, active_BK)
        ctx.buffers = buffers
        return out_BF

    @staticmethod
    def backward(ctx, grad_BF):
        W_HXD, val_E, idx_E, offsets_B, offset2bag, idx_BK, active_BK = ctx.saved_tensors
        grad_BF = grad_BF.contiguous()
        grad_W = grad_val = None
        if ctx.needs_input_grad[0]:
            # The padded backward's order: its sort of the flat padded ids, inactive entries dropped.
            perm = idx_BK.reshape(-1).sort().indices
            perm = perm[active_BK.reshape(-1)[perm]]
            counts_H = torch.bincount(idx_BK.reshape(-1)[perm], minlength=W_HXD.shape[0])
            entry_of = active_BK.reshape(-1).cumsum(0) - 1  # padded position -> its entry in val_E
            buf = _buffer(ctx.buffers, W_HXD)
            grad_W = _feature_sums(torch.div(perm, idx_BK.shape[1], rounding_mode="floor"), grad_BF,
                                   counts_H.cumsum(0) - counts_H, val_E.detach()[entry_of[perm]],
                                   None if buf is None else buf.view(W_HXD.shape[0], -1))
            grad_W = grad_W.view_as(W_HXD) if buf is None else buf
        if ctx.needs_input_grad[1]:
            grad_val = torch.ops.aten._embedding_bag_per_sample_weights_backward(
                grad_BF, W_HXD.flatten(1), idx_E, offsets_B, offset2bag, SUM)
        return grad_W, grad_val, None, None, None, None, None


class _SelectSlots(torch.autograd.Function):
    @staticmethod
    def forward(ctx, W_HXD, slots, buffers):
        ctx.save_for_backward(slots)
        ctx.buffers, ctx.shape = buffers, W_HXD.shape
        ctx.param = W_HXD
        return W_HXD.index_select(1, slots)

    @staticmethod
    def backward(ctx, grad_HSD):
        (slots,) = ctx.saved_tensors
        buf = _buffer(ctx.buffers, ctx.param)
        # index_select's own backward: zeros, then index_add (into the buffer, zeroed, when there is one)
        grad_W = grad_HSD.new_zeros(ctx.shape) if buf is None else buf.zero_()
        return grad_W.index_add_(1, slots, grad_HSD), None, None


def select_slots(W_HXD: torch.Tensor, slots: torch.Tensor, buffers: GradientBuffers | None = None) -> torch.Tensor:
    """``W_HXD.index_select(1, slots)``, ``[H, len(slots), D]``, its gradient written into ``buffers``'."""
    return _SelectSlots.apply(W_HXD, slots, buffers)


def sparse_decode(idx_BK: torch.Tensor, val_BK: torch.Tensor, W_HXD: torch.Tensor,
                  buffers: GradientBuffers | None = None) -> torch.Tensor:
    """``[B, X·D]``: ``Σ_k val[b, k] · W_HXD[idx[b, k]]`` over the active slots (module docstring).

    The one place the sparse decoder's implementation is chosen: float32 on the CPU (training's
    case) takes :class:`_SparseDecode`; another device the flat entries through autograd's own
    ``embedding_bag`` (its GPU backward keeps no order to reproduce); another CPU dtype the padded
    call, whose gradient order the transposed sum reproduces for float32's kernel only.
    """
    val_BK = val_BK.to(W_HXD.dtype)
    if W_HXD.device.type == "cpu" and W_HXD.dtype != torch.float32:
        return F.embedding_bag(idx_BK, W_HXD.flatten(1), per_sample_weights=val_BK, mode="sum")
    flat = flatten_codes(idx_BK, val_BK)
    if W_HXD.device.type != "cpu":
        return F.embedding_bag(flat.idx_E, W_HXD.flatten(1), flat.offsets_B, per_sample_weights=flat.val_E, mode="sum")
    return _SparseDecode.apply(W_HXD, flat.val_E, flat.idx_E, flat.offsets_B, idx_BK, flat.active_BK, buffers)
