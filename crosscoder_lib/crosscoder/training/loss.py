"""The training loss of a batch of raw activations (SPEC §2), in normalised units ``s_x x_x``::

    loss = mean_b Σ_x ‖s_x x_x − s_x x̂_x‖²                 reconstruction (summed over hookpoints)
         + α · Var(s x) · AuxK                              dead features model the residual
         + sparsity penalty                                 ReLU / JumpReLU only
         + λ · L_int                                        the interaction penalty (λ > 0,
                                                            optionally warmed up: lambda_warmup_frac)

with ``AuxK = mean_b ‖e − ê‖² / mean_b ‖e − mean(e)‖²``, ``e`` the (detached) residual of the main
reconstruction and ``ê`` the decoding of the dead features' ``k_aux`` largest pre-activations.
``Var(s x) = Σ_x Σ_d Var_b(s_x x_x)`` (detached) puts AuxK in the reconstruction's units: Gao et al.
(2024) weigh ``α = 1/32`` against a *normalised* reconstruction loss (the FVU), and ours is the FVU
times ``Var(s x)``; without the factor AuxK is ``Var(s x)`` ≈ X·D times weaker than intended (≈2000×
for 17 slots of width 128), too weak to revive anything in a short run. Measured on the embedded clean
model (chapter 1's run: H = 512, k = 20, 600 steps, a feature dead after 200 steps without firing):
13.9 % of features never fired on held-out tokens without the factor, 14.6 % with no AuxK at all,
7.2 % with it, and 0 % with it and a 50-step dead window.

``L_int`` is :meth:`crosscoder_lib.interactions.object.MLPInteractions.penalty` of the crosscoder's live
decoder, reached through :func:`interaction_term`, the one place the trainer calls into the interactions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F

from crosscoder_lib.crosscoder.activations import SparseCodes, auxk_codes, l0
from crosscoder_lib.crosscoder.distributed import SINGLE, SingleProcess
from crosscoder_lib.crosscoder.model import Crosscoder
from crosscoder_lib.interactions.kernels import penalty_backend
from crosscoder_lib.interactions.mlp import AnyMLP
from crosscoder_lib.interactions.object import MLPInteractions
from crosscoder_lib.interactions.penalty import InteractionStats, check_g_options

PenaltyFn = Callable[[SparseCodes], InteractionStats]


def interaction_term(crosscoder: Crosscoder, mlp: AnyMLP, form: str, *, g_precision: str = "float32",
                     g_rows: str = "all") -> PenaltyFn:
    """``codes -> InteractionStats(penalty, dominant_share)`` of the crosscoder's current decoder at
    the MLP-input slots (differentiable through the codes and ``W_dec_HXD``). ``mlp`` may hold the
    whole model's blocks: those the crosscoder's hookpoints read are taken. ``g_precision`` and
    ``g_rows`` choose how the ``G`` products are formed (opt in: bfloat16, active rows only; see
    :mod:`crosscoder_lib.interactions.penalty`)."""
    check_g_options(g_precision, g_rows)
    interactions = MLPInteractions.of(crosscoder, mlp)

    def penalty(codes: SparseCodes) -> InteractionStats:
        return interactions.penalty(codes, form=form, g_precision=g_precision, g_rows=g_rows)

    return penalty


def penalty_path(device: torch.device) -> str:
    """Which implementation sums the penalty on ``device`` (``"kernel"``: the fused C kernel,
    ``"triton"``: the Triton kernel, ``"torch"``: chunked PyTorch); they round differently, so a
    resume must keep it."""
    backend = penalty_backend(torch.empty(0, device=device))
    return "kernel" if backend == "c" else backend


class Objective(NamedTuple):
    """What the loss reads besides the batch; fixed for a run."""

    crosscoder: Crosscoder
    penalty: PenaltyFn | None = None
    """The interaction term (:func:`interaction_term`) when λ > 0."""
    parallel: SingleProcess = SINGLE
    """Where batch-level statistics are reduced (one process, or all ranks)."""


class LossTerms(NamedTuple):
    """Loss terms of one batch (all scalars; ``loss`` differentiable)."""

    loss: torch.Tensor
    mse: torch.Tensor
    fvu: torch.Tensor
    aux: torch.Tensor
    sparsity: torch.Tensor
    l0: torch.Tensor
    codes: SparseCodes
    penalty: torch.Tensor | None
    dominant_share: torch.Tensor | None


def aux_loss(crosscoder: Crosscoder, pre_BH: torch.Tensor, residual_BXD: torch.Tensor,
             dead_H: torch.Tensor, parallel: SingleProcess = SINGLE) -> torch.Tensor:
    """AuxK (normalised units): how well the dead features' top-``k_aux`` pre-activations model the
    residual, ``mean_b ‖e − ê‖² / mean_b ‖e − mean(e)‖²``; 0 when no feature is dead.

    The denominator is over the global batch (``parallel``), the numerator over this shard."""
    codes = auxk_codes(pre_BH, dead_H, crosscoder.cfg.aux_k)
    if codes is None:
        return pre_BH.new_zeros(())
    recon_BXD = crosscoder.decode_scaled(codes, bias=False)
    mean_XD = parallel.batch_mean(residual_BXD)
    denom = parallel.batch_mean((residual_BXD - mean_XD).pow(2).sum((1, 2))).clamp_min(1e-12)
    return (residual_BXD - recon_BXD).pow(2).sum((1, 2)).mean() / denom


def compute_loss(objective: Objective, acts_BXD: torch.Tensor, dead_H: torch.Tensor, *,
                 lambda_int: float = 0.0, with_fvu: bool = True) -> LossTerms:
    """All loss terms of one batch of raw activations (module docstring).

    ``lambda_int``: this step's penalty weight (the trainer passes ``cfg.lambda_at(step)``); the
    penalty and dominant share are computed whenever ``objective.penalty`` is set. ``with_fvu=False``
    skips the FVU metric (NaN then), which costs a pass over the batch. Under data parallelism
    ``acts_BXD`` is this rank's shard; AuxK's normaliser and the FVU's variance are over the global batch.
    """
    cc, parallel = objective.crosscoder, objective.parallel
    out = cc(acts_BXD, raw=False)
    B = acts_BXD.shape[0]
    mse = F.mse_loss(out.recon_scaled_BXD, out.x_scaled_BXD, reduction="sum") / B
    fvu = torch.tensor(float("nan"))
    var = None  # Σ_x Σ_d Var_b(s_x x_x): the FVU's denominator and AuxK's unit
    if with_fvu:
        with torch.no_grad():
            var = parallel.batch_var(out.x_scaled_BXD).sum()
            fvu = mse.detach() / var.clamp_min(1e-12)
    aux = aux_weight = out.pre_BH.new_zeros(())
    if cc.cfg.aux_alpha > 0 and bool(dead_H.any()):
        residual_BXD = (out.x_scaled_BXD - out.recon_scaled_BXD).detach()
        aux = aux_loss(cc, out.pre_BH, residual_BXD, dead_H, parallel)
        if var is None:
            with torch.no_grad():
                var = parallel.batch_var(out.x_scaled_BXD).sum()
        aux_weight = cc.cfg.aux_alpha * var  # α against the FVU, as in Gao et al. (module docstring)
    sparsity = cc.activation.sparsity_penalty(out.pre_BH, out.codes, cc.decoder_norms_H())
    loss = mse + aux_weight * aux + sparsity
    penalty = share = None
    if objective.penalty is not None:
        stats = objective.penalty(out.codes)
        penalty, share = stats.penalty, stats.dominant_share
        loss = loss + lambda_int * penalty
    return LossTerms(loss, mse, fvu, aux, sparsity, l0(out.codes).float().mean(), out.codes, penalty, share)
