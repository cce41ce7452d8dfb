"""The interaction penalty ``L_int``: its sums, and their gradient formed in the same pass.

SPEC §3. ``form="unweighted"`` (the reference code's form) is ``mean_{l,t,n} (Σ_v |p| − max_v |p|)``;
``form="weighted"`` weights each neuron by ``w_ln = ‖W_out[l][n]‖``, the bound of SPEC §3 up to the
constant ``Lip(σ)``. Gradients flow through the codes' values and the decoder rows for any number of
blocks (the reference code detached its penalty beyond 4 blocks).

The sums run on one of two backends, chosen in ONE place (:func:`crosscoder_lib.interactions.kernels.penalty_library`):
the fused C kernel (float32 CPU tensors: one pass over each token's gathered rows) or chunked PyTorch
(:mod:`.engine`'s passes, everywhere else). Both return ``(total, share, ∂/∂|val|, ∂/∂M)`` with ``M``
the MLP kind's combined matrix (standard: ``G``), and nothing of size ``T·K·N`` outlives a chunk.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from crosscoder_lib.interactions import kernels
from crosscoder_lib.interactions.codes import ActiveCodes
from crosscoder_lib.interactions.engine import make_plan, passes, share_sum
from crosscoder_lib.interactions.kernels import fused

PENALTY_FORMS = ("unweighted", "weighted")


class InteractionStats(NamedTuple):
    """What the trainer adds to its loss and logs (:meth:`MLPInteractions.penalty`)."""

    penalty: torch.Tensor
    """Scalar ``L_int``, differentiable through ``codes.val_BK`` and the decoder rows."""
    dominant_share: torch.Tensor
    """Scalar mean dominant share over ``(l, t, n)`` (detached; SPEC §3, the paper's Fig. 1 y-axis)."""


class PenaltyInputs(NamedTuple):
    """What the penalty reads besides the codes, all frozen (built once per decoder state)."""

    M_LHN: torch.Tensor
    """The MLP kind's combined matrix, whose magnitude ranks features (standard: ``G``), detached."""
    G: tuple
    """The products ``G_m = W_dec · W_m`` of each input matrix (detached), for the chain rule."""
    W_in: tuple
    """The kind's input matrices ``W_m`` ``[L, D, N]`` on the decoder's device and dtype."""
    chain: Callable
    """The kind's ``chain(∂/∂M, G) -> ∂/∂G_m per matrix`` (:mod:`.mlp`; an iterable, each used before the next)."""


def check_form(form: str) -> None:
    if form not in PENALTY_FORMS:
        raise ValueError(f"unknown penalty form {form!r}; choose one of {PENALTY_FORMS}")


def _max_term_grad(c, w_N, grad_sorted, grad_G_HN) -> None:
    """The max term's gradient of one chunk (``c.absp_cKN`` is overwritten): each maximal slot gets
    ``−w_n |G| / ties`` into ``∂/∂|val|`` and ``−w_n |val| / ties`` into ``∂/∂|G|`` (before sign(G))."""
    N, k = grad_G_HN.shape[1], c.idx_cK.shape[1]
    mask = c.absp_cKN.eq_(c.max_cN[:, None, :])
    coef = mask.sum(1).reciprocal_()  # 1 / ties
    if w_N is not None:
        coef.mul_(w_N)
    mask.mul_(coef[:, None, :])
    num = torch.bmm(mask, c.max_cN[:, :, None]).squeeze(2)  # = Σ_n coef |G| · |val|
    vabs = c.vabs_cK
    grad_sorted[c.rows, :k] -= torch.where(vabs > 0, num / vabs.clamp_min(torch.finfo(vabs.dtype).tiny), 0.0)
    grad_G_HN.index_add_(0, c.idx_cK.reshape(-1), mask.mul_(vabs[:, :, None]).view(-1, N), alpha=-1)


def _penalty_sums_torch(vabs_BK, G_LHN, idx_BK, w_LN, want_grad, chunk_tokens):
    """``(total, share, ∂total/∂|val|, ∂total/∂G)`` in chunked PyTorch (tokens sorted by active count)."""
    L, H, N = G_LHN.shape
    absG_LHN = G_LHN.abs()
    grad_vabs = grad_G = grad_sorted = None
    if want_grad:
        r_LH = absG_LHN.sum(-1) if w_LN is None else torch.einsum("lhn,ln->lh", absG_LHN, w_LN)
        grad_vabs = r_LH[:, idx_BK].sum(0)
        c_H = torch.zeros(H, dtype=G_LHN.dtype, device=G_LHN.device).index_add_(0, idx_BK.reshape(-1), vabs_BK.reshape(-1))
        grad_G = c_H[None, :, None].expand_as(G_LHN).clone() if w_LN is None else c_H[None, :, None] * w_LN[:, None, :]
    plan = make_plan(idx_BK, vabs_BK, N, chunk_tokens)
    total = torch.zeros((), dtype=torch.float64)
    share = torch.zeros((), dtype=torch.float64)
    if want_grad:
        grad_sorted = torch.zeros_like(plan.vabs_BK)
    for c in passes(plan, absG_LHN):
        w_N = w_LN[c.block] if w_LN is not None else None
        s, m = c.sum_cN, c.max_cN
        share += share_sum(s, m)
        total += (s - m).sum(dtype=torch.float64) if w_N is None else ((s - m) @ w_N).sum(dtype=torch.float64)
        if want_grad:
            _max_term_grad(c, w_N, grad_sorted, grad_G[c.block])
    if want_grad:
        grad_vabs[plan.order_B] += grad_sorted
        grad_G.mul_(G_LHN.sign())
    return float(total), float(share), grad_vabs, grad_G


class _PenaltySum(torch.autograd.Function):
    """``Σ_{l,t,n} w_ln (Σ_k |p| − max_k |p|)`` and ``Σ share``, with the gradient formed in the same pass.

    Inputs ``(|val|_BK, W_dec_LHD, PenaltyInputs, idx_BK, w_LN or None, chunk_tokens)``, active
    slots first. With ``|p[t,k,n]| = |val[t,k]|·|M_l[idx[t,k], n]|`` and ``m[t,n] = max_k |p|``:

    - ``∂/∂|val[t,k]| = Σ_n w_n |M_l[idx[t,k], n]| − Σ_n w_n [k maximal] |M_l[idx[t,k], n]| / ties[t,n]``
      (the first sum is ``r_l[idx[t,k]]``, one reduction of ``|M|``);
    - ``∂/∂M_l[h,n] = sign(M_l[h,n]) · w_n (c[h] − Σ_{t,k: idx=h} [k maximal] |val[t,k]| / ties[t,n])``
      with ``c[h] = Σ_{t,k: idx=h} |val[t,k]|``; the kind's ``chain`` turns it into ``∂/∂G_m`` and
      ``∂/∂W_dec_LHD[l] = Σ_m ∂/∂G_m,l @ W_m,lᵀ``.

    An exact tie between maximal slots splits the subgradient evenly (as ``amax`` does). The
    backward pass is one product with each ``W_m`` whose ``[L, H, D]`` result is scaled by the
    incoming gradient: the ``[L, H, N]`` gradient is never copied or scaled, which is most of what
    the penalty costs beyond forming ``G``.
    """

    @staticmethod
    def forward(ctx, vabs_BK, W_dec_LHD, inputs: PenaltyInputs, idx_BK, w_LN, chunk_tokens):
        M_LHN = inputs.M_LHN
        want_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        so = kernels.penalty_library(M_LHN)
        if so is not None:
            total, share, grad_vabs, grad_M = fused.penalty_sums(so, vabs_BK, M_LHN, idx_BK, w_LN, want_grad)
        else:
            total, share, grad_vabs, grad_M = _penalty_sums_torch(vabs_BK, M_LHN, idx_BK, w_LN, want_grad, chunk_tokens)
        if want_grad:
            ctx.save_for_backward(grad_vabs, grad_M)
            ctx.inputs = inputs
        share_t = torch.tensor(share, dtype=torch.float64)
        ctx.mark_non_differentiable(share_t)
        return torch.tensor(total, dtype=M_LHN.dtype, device=M_LHN.device), share_t

    @staticmethod
    def backward(ctx, grad_total, _grad_share):
        grad_vabs, grad_M = ctx.saved_tensors
        grad_W = None
        if ctx.needs_input_grad[1]:
            inputs = ctx.inputs
            for grad_G, W_m in zip(inputs.chain(grad_M, inputs.G), inputs.W_in):
                term = torch.matmul(grad_G, W_m.transpose(1, 2))
                grad_W = term if grad_W is None else grad_W.add_(term)
            grad_W.mul_(grad_total)
        return (grad_total * grad_vabs if ctx.needs_input_grad[0] else None, grad_W, None, None, None, None)


def penalty(active: ActiveCodes, W_dec_LHD: torch.Tensor, inputs: PenaltyInputs, w_LN: torch.Tensor | None,
            chunk_tokens: int | None) -> InteractionStats:
    """``L_int`` (weighted by ``w_LN`` when given) and the dominant share of checked codes ``active``.

    ``W_dec_LHD``: the live decoder rows (gradients flow into them); ``inputs`` were formed from
    their current values. Memory beyond ``G`` and its gradient is one chunk buffer.
    """
    L, _, N = inputs.M_LHN.shape
    B = active.idx_BK.shape[0]
    total, share = _PenaltySum.apply(active.val_BK.abs(), W_dec_LHD, inputs, active.idx_BK, w_LN, chunk_tokens)
    return InteractionStats(penalty=total / (L * B * N), dominant_share=(share / (L * B * N)).to(W_dec_LHD.dtype))
