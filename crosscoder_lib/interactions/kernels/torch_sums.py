"""The penalty's sums in chunked PyTorch: the fallback everywhere the C and Triton kernels are not.

``(total, share, ∂total/∂|val|, ∂total/∂M)`` from :mod:`..engine`'s passes over (block, chunk of
tokens), tokens sorted by active count so each chunk pays for its own largest count. On a CPU a
chunk fills a cache-sized buffer; on a GPU it is sized by the device's free memory
(:func:`~crosscoder_lib.interactions.engine.chunk_tokens_for`), so a batch takes a few large
kernels per block instead of hundreds of tiny ones.
"""

from __future__ import annotations

import torch

from crosscoder_lib.interactions.engine import make_plan, passes, share_sum


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


def sum_term_grads(vabs_BK, G_LHN, absG_LHN, idx_BK, w_LN, grad_out):
    """The sum term's gradients: ``∂/∂|val| = Σ_l r_l[idx]`` and ``∂/∂|G| = c[h] w_n`` (into ``grad_out``)."""
    H = G_LHN.shape[1]
    r_LH = absG_LHN.sum(-1) if w_LN is None else torch.einsum("lhn,ln->lh", absG_LHN, w_LN)
    grad_vabs = r_LH[:, idx_BK].sum(0)
    c_H = torch.zeros(H, dtype=G_LHN.dtype, device=G_LHN.device).index_add_(0, idx_BK.reshape(-1), vabs_BK.reshape(-1))
    c = c_H[None, :, None].expand_as(G_LHN)
    if grad_out is None:
        grad_G = c.clone() if w_LN is None else c_H[None, :, None] * w_LN[:, None, :]
    elif w_LN is None:
        grad_G = grad_out.copy_(c)
    else:
        grad_G = torch.mul(c_H[None, :, None], w_LN[:, None, :], out=grad_out)
    return grad_vabs, grad_G


def penalty_sums_torch(vabs_BK, G_LHN, idx_BK, w_LN, want_grad, chunk_tokens, grad_out=None):
    """``(total, share, ∂total/∂|val|, ∂total/∂G)`` in chunked PyTorch (module docstring); ``∂/∂G``
    is written into ``grad_out`` when given (a reused ``[L, H, N]`` buffer)."""
    N = G_LHN.shape[2]
    absG_LHN = G_LHN.abs()
    grad_vabs = grad_G = grad_sorted = None
    if want_grad:
        grad_vabs, grad_G = sum_term_grads(vabs_BK, G_LHN, absG_LHN, idx_BK, w_LN, grad_out)
    plan = make_plan(idx_BK, vabs_BK, N, chunk_tokens)
    total = torch.zeros((), dtype=torch.float64, device=G_LHN.device)  # read once, at the end
    share = torch.zeros((), dtype=torch.float64, device=G_LHN.device)
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
