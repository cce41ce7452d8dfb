"""The penalty's max term as a Triton kernel: the GPU backend (float32 CUDA tensors).

Loaded only when this backend is chosen (:mod:`crosscoder_lib.interactions.kernels` imports it
lazily): Triton is not one of the project's requirements, it comes with PyTorch's CUDA builds. With
``TRITON_INTERPRET=1`` the same kernel runs on CPU tensors through Triton's interpreter, which is
how its parity with the other backends is tested on a machine without a GPU.

One program per (block ``l``, tile of ``BLOCK_T`` tokens, tile of ``BLOCK_N`` neurons) walks the
tokens' active slots twice (codes are active-slots-first, ``count[t]`` of them):

1. ``s = Σ_k |p|``, ``m = max_k |p|`` and ``ties`` (slots equal to ``m``) with
   ``|p[t,k,n]| = |val[t,k]|·|M_l[idx[t,k], n]|``; the tile's ``Σ w_n (s − m)`` and ``Σ share``
   (``m/s``, 1 where ``s = 0``) go to a float64 partial sum per program, added up afterwards
   (deterministic);
2. with a gradient: each maximal slot gives ``−w_n |M| / ties`` to ``∂/∂|val|`` and
   ``−w_n |val| / ties`` to ``∂/∂|M|`` (atomic adds: features are shared between tokens), on top
   of the sum term's part (:func:`~.torch_sums.sum_term_grads`); ``sign(M)`` multiplies at the end,
   as in the PyTorch path. The second walk recomputes ``|p|`` with the same operations, so
   ``== m`` finds the maximal slots exactly.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from crosscoder_lib.interactions.kernels.torch_sums import sum_term_grads

BLOCK_T, BLOCK_N = 16, 128


@triton.jit
def _contribution(M_l, idx, vabs, t, k, K, N, n, t_ok, n_ok, cnt):
    on = t_ok & (k < cnt)
    h = tl.load(idx + t * K + k, mask=on, other=0).to(tl.int64)
    v = tl.load(vabs + t * K + k, mask=on, other=0.0)
    g = tl.abs(tl.load(M_l + h[:, None] * N + n[None, :], mask=on[:, None] & n_ok[None, :], other=0.0))
    return on, h, v, g, v[:, None] * g


@triton.jit
def _max_term(M, idx, vabs, count, w, partial, grad_vabs, grad_M, B, K, H, N,
              HAS_W: tl.constexpr, WANT_GRAD: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr):
    pt, pn, l = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    t = pt * BLOCK_T + tl.arange(0, BLOCK_T)
    n = pn * BLOCK_N + tl.arange(0, BLOCK_N)
    t_ok, n_ok = t < B, n < N
    cnt = tl.load(count + t, mask=t_ok, other=0)
    k_end = tl.max(cnt, axis=0)
    M_l = M + l.to(tl.int64) * H * N
    s = tl.zeros([BLOCK_T, BLOCK_N], dtype=tl.float32)
    m = tl.zeros([BLOCK_T, BLOCK_N], dtype=tl.float32)
    ties = tl.zeros([BLOCK_T, BLOCK_N], dtype=tl.int32)
    for k in range(0, k_end):
        on, h, v, g, x = _contribution(M_l, idx, vabs, t, k, K, N, n, t_ok, n_ok, cnt)
        s += x
        ties = tl.where(x > m, 1, ties + ((x == m) & on[:, None]).to(tl.int32))
        m = tl.maximum(m, x)
    ok = t_ok[:, None] & n_ok[None, :]
    if HAS_W:
        w_n = tl.load(w + l * N + n, mask=n_ok, other=0.0)
    else:
        w_n = tl.where(n_ok, 1.0, 0.0)
    d = tl.where(ok, (s - m) * w_n[None, :], 0.0).to(tl.float64)
    share = tl.where(ok, tl.where(s > 0, m / tl.where(s > 0, s, 1.0), 1.0), 0.0).to(tl.float64)
    pid = (l * tl.num_programs(1) + pn) * tl.num_programs(0) + pt
    tl.store(partial + 2 * pid, tl.sum(tl.sum(d, axis=1), axis=0))
    tl.store(partial + 2 * pid + 1, tl.sum(tl.sum(share, axis=1), axis=0))
    if WANT_GRAD:
        coef = w_n[None, :] / tl.maximum(ties, 1).to(tl.float32)
        R_l = grad_M + l.to(tl.int64) * H * N
        for k in range(0, k_end):
            on, h, v, g, x = _contribution(M_l, idx, vabs, t, k, K, N, n, t_ok, n_ok, cnt)
            top = (x == m) & on[:, None] & n_ok[None, :]
            tl.atomic_add(grad_vabs + t * K + k, -tl.sum(tl.where(top, coef * g, 0.0), axis=1), mask=on)
            tl.atomic_add(R_l + h[:, None] * N + n[None, :], -(coef * v[:, None]), mask=top)


def penalty_sums(vabs_BK, M_LHN, idx_BK, w_LN, want_grad, grad_out=None):
    """``(total, share, ∂total/∂|val|, ∂total/∂M)`` through the Triton kernel (module docstring);
    ``∂/∂M`` is written into ``grad_out`` when given."""
    L, H, N = M_LHN.shape
    B, K = idx_BK.shape
    M = M_LHN.detach().contiguous()
    idx, vabs = idx_BK.contiguous(), vabs_BK.detach().contiguous()
    w = w_LN.contiguous() if w_LN is not None else M  # any pointer: HAS_W is off
    count = (vabs != 0).sum(1).to(torch.int32)
    grid = (triton.cdiv(B, BLOCK_T), triton.cdiv(N, BLOCK_N), L)
    partial = torch.zeros(2 * grid[0] * grid[1] * grid[2], dtype=torch.float64, device=M.device)
    grad_vabs = grad_M = None
    if want_grad:
        grad_vabs, grad_M = sum_term_grads(vabs, M, M.abs(), idx, w_LN, grad_out)
        grad_vabs = grad_vabs.contiguous()
    _max_term[grid](M, idx, vabs, count, w, partial, grad_vabs if want_grad else partial,
                    grad_M if want_grad else partial, B, K, H, N, HAS_W=w_LN is not None, WANT_GRAD=want_grad,
                    BLOCK_T=BLOCK_T, BLOCK_N=BLOCK_N)
    if want_grad:
        grad_M.mul_(M.sign())
    sums = partial.view(-1, 2).sum(0).tolist()
    return sums[0], sums[1], grad_vabs, grad_M
