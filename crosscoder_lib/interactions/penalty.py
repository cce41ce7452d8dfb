"""The interaction penalty ``L_int``: its sums, and their gradient formed in the same pass.

SPEC §3. ``form="unweighted"`` (the reference code's form) is ``mean_{l,t,n} (Σ_v |p| − max_v |p|)``;
``form="weighted"`` weights each neuron by ``w_ln = ‖W_out[l][n]‖``, the bound of SPEC §3 up to the
constant ``Lip(σ)``. Gradients flow through the codes' values and the decoder rows for any number of
blocks (the reference code detached its penalty beyond 4 blocks).

The sums run on the backend chosen in ONE place (:func:`crosscoder_lib.interactions.kernels.penalty_backend`):
the fused C kernel (float32 CPU tensors), the Triton kernel (float32 CUDA tensors) or chunked
PyTorch. Each returns ``(total, share, ∂/∂|val|, ∂/∂M)`` with ``M`` the MLP kind's combined matrix
(standard: ``G``), and nothing of size ``T·K·N`` outlives a chunk.

Two opt-in ways to form the ``G_m = W_dec · W_m`` products for less (:func:`penalty_inputs`); the
defaults keep every result bit for bit:

- ``g_precision="bfloat16"``: both products with the MLP (``G`` forward, ``∂/∂G · W_mᵀ`` backward)
  take bfloat16 inputs (float32 accumulation inside the GEMM), ~8× faster where the CPU has bf16
  matrix units; ``G`` then carries a relative error of ~3e-3, which can flip the dominant feature
  of a near-tie (``benchmarks/bench_precision.py`` measures the flips, the penalty's error and a
  short training run both ways);
- ``g_rows="active"``: only the rows of the features active in the batch (a sorted subset: the
  penalty reads no other). Not bit-identical in general: a GEMM's kernel choice depends on its
  row count (MKL takes another kernel for a single row), so it rounds differently.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from crosscoder_lib.interactions import kernels
from crosscoder_lib.interactions.codes import ActiveCodes
from crosscoder_lib.interactions.decoder import frozen, input_products
from crosscoder_lib.interactions.kernels.buffers import Workspace
from crosscoder_lib.interactions.mlp import AnyMLP

PENALTY_FORMS = ("unweighted", "weighted")
G_PRECISIONS = {"float32": torch.float32, "bfloat16": torch.bfloat16}
G_ROWS = ("all", "active")


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
    """The kind's input matrices ``W_m`` ``[L, D, N]`` on the decoder's device, in the products' dtype."""
    chain: Callable
    """The kind's ``chain(∂/∂M, G) -> ∂/∂G_m per matrix`` (:mod:`.mlp`; an iterable, each used before the next)."""
    rows: torch.Tensor | None = None
    """The features whose rows ``M`` and ``G`` hold (sorted), when not all (``g_rows="active"``)."""
    workspace: Workspace | None = None
    """Where ``∂/∂M`` is written, reused from call to call."""


def check_form(form: str) -> None:
    if form not in PENALTY_FORMS:
        raise ValueError(f"unknown penalty form {form!r}; choose one of {PENALTY_FORMS}")


def check_g_options(g_precision: str, g_rows: str) -> None:
    if g_precision not in G_PRECISIONS:
        raise ValueError(f"unknown g_precision {g_precision!r}; choose one of {tuple(G_PRECISIONS)} "
                         "(float32 is exact; bfloat16 is faster where the CPU or GPU has bf16 matrix units)")
    if g_rows not in G_ROWS:
        raise ValueError(f"unknown g_rows {g_rows!r}; choose one of {G_ROWS}")


def penalty_inputs(W_dec_LHD: torch.Tensor, mlp: AnyMLP, *, g_precision: str = "float32", rows=None,
                   low_weights: tuple | None = None, workspace: Workspace | None = None) -> PenaltyInputs:
    """What the penalty reads, from detached decoder rows ``W_dec_LHD`` (module docstring).

    ``rows``: the (sorted) features to form rows for, None for all; ``low_weights``: the MLP's input
    matrices already in ``g_precision`` (a cache's), else cast here; ``workspace``: reused buffers.
    """
    dtype = G_PRECISIONS[g_precision]
    W_LHD = W_dec_LHD if rows is None else W_dec_LHD.index_select(1, rows)
    if dtype == W_LHD.dtype:
        W_in = tuple(frozen(W_m, W_LHD) for W_m in mlp.input_weights())
        G = input_products(W_LHD, mlp, workspace if rows is None else None)  # active rows: a new shape each batch
    else:
        W_in = low_weights or tuple(W_m.detach().to(device=W_LHD.device, dtype=dtype) for W_m in mlp.input_weights())
        W_low = W_LHD.to(dtype)
        G = tuple(_widened(torch.matmul(W_low, W_m), W_LHD.dtype, workspace if rows is None else None, f"G{m}")
                  for m, W_m in enumerate(W_in))
    return PenaltyInputs(mlp.combined(G), G, W_in, mlp.chain, rows, workspace)


def _widened(t: torch.Tensor, dtype: torch.dtype, workspace: Workspace | None, name: str) -> torch.Tensor:
    if workspace is None:
        return t.to(dtype)
    return workspace.get(name, t.shape, dtype, t.device).copy_(t)


def active_rows(idx_BK: torch.Tensor, val_BK: torch.Tensor, n_features: int) -> torch.Tensor:
    """The sorted ids of the features active in a batch of checked codes."""
    seen = torch.zeros(n_features, dtype=torch.bool, device=idx_BK.device)
    seen[idx_BK[val_BK.detach() != 0]] = True
    return seen.nonzero().flatten()


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
        if inputs.rows is not None:  # ids into the formed rows (a padded slot's id, 0, may be any row)
            row_of = torch.zeros(W_dec_LHD.shape[1], dtype=torch.long, device=idx_BK.device)
            row_of[inputs.rows] = torch.arange(len(inputs.rows), device=idx_BK.device)
            idx_BK = row_of[idx_BK]
        grad_out = None
        if want_grad and inputs.workspace is not None:
            grad_out = inputs.workspace.get("grad_M", M_LHN.shape, M_LHN.dtype, M_LHN.device)
        total, share, grad_vabs, grad_M = kernels.penalty_sums(vabs_BK, M_LHN, idx_BK, w_LN, want_grad, chunk_tokens,
                                                               grad_out)
        if want_grad:
            ctx.save_for_backward(grad_vabs, grad_M)
            ctx.inputs, ctx.n_features = inputs, W_dec_LHD.shape[1]
        share_t = torch.tensor(share, dtype=torch.float64)
        ctx.mark_non_differentiable(share_t)
        return torch.tensor(total, dtype=M_LHN.dtype, device=M_LHN.device), share_t

    @staticmethod
    def backward(ctx, grad_total, _grad_share):
        grad_vabs, grad_M = ctx.saved_tensors
        inputs, grad_W = ctx.inputs, None
        ctx.inputs = None  # the graph may outlive this call (a returned loss): free G and the buffers for reuse
        if ctx.needs_input_grad[1]:
            for grad_G, W_m in zip(inputs.chain(grad_M, inputs.G), inputs.W_in):
                term = torch.matmul(grad_G.to(W_m.dtype), W_m.transpose(1, 2)).to(grad_M.dtype)
                grad_W = term if grad_W is None else grad_W.add_(term)
            grad_W.mul_(grad_total)
            if inputs.rows is not None:
                L, _, D = grad_W.shape
                grad_W = grad_W.new_zeros(L, ctx.n_features, D).index_copy_(1, inputs.rows, grad_W)
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
