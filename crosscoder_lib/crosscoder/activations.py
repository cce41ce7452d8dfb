"""Sparsifying activations of a crosscoder, the codes they produce, and dead-feature revival.

Every activation maps pre-activations ``pre_BH`` to :class:`SparseCodes`: for each token, the ids
of its active features and their values. Supported (SPEC §2):

- :class:`BatchTopK` (the paper's): in training, keep the ``k·B`` largest pre-activations over the
  whole batch; meanwhile keep a running estimate of the smallest value kept, and at inference keep
  every pre-activation above that threshold, so a token's code does not depend on its batch-mates
  (SPEC §7). ``inference="batch"`` keeps the batch-level selection for exact reproduction;
- :class:`TopK`: the ``k`` largest pre-activations per token;
- :class:`ReLU`: ``max(pre, 0)``, trained with the decoder-norm-weighted L1 penalty
  ``Σ_v a_v Σ_x ‖W_dec[v, x]‖`` (Anthropic's crosscoder form);
- :class:`JumpReLU`: ``pre · 1[pre > θ_v]`` with a learned threshold per feature, trained with
  an L0 penalty through straight-through estimators (Rajamanoharan et al. 2024).

Dead features are revived with AuxK (Gao et al. 2024): the ``k_aux`` largest *pre-activations*
(raw: no ReLU, no selection; see :func:`auxk_codes`) of the features that are currently dead
reconstruct the main reconstruction's residual. The paper's reference code used the
post-selection activations, which are always zero for a dead feature, so it never revived any
(SPEC §7). :class:`FiringTracker` says which features are dead.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
from torch import nn


class SparseCodes(NamedTuple):
    """A batch of sparse feature codes.

    Fields:
        idx_BK: LongTensor [B, K], feature ids of each token's active slots. Padded slots (when
            tokens have fewer than K active features) hold some valid id.
        val_BK: Tensor [B, K], the activation values; exactly 0 in padded slots, so any sum over
            slots (decoding, penalties) ignores them.
    """

    idx_BK: torch.Tensor
    val_BK: torch.Tensor


def codes_to_dense(codes: SparseCodes, n_features: int) -> torch.Tensor:
    """The dense activations ``a_BH`` of ``codes`` (scatter-add, so padded slots add nothing)."""
    idx, val = codes
    return torch.zeros(idx.shape[0], n_features, dtype=val.dtype, device=val.device).scatter_add(
        1, idx, val)


def dense_to_codes(a_BH: torch.Tensor) -> SparseCodes:
    """:class:`SparseCodes` of non-negative dense activations, with K = the largest L0 in the batch."""
    k_max = max(int((a_BH != 0).sum(-1).max()), 1) if a_BH.numel() else 1
    val, idx = a_BH.topk(min(k_max, a_BH.shape[-1]), dim=-1)
    return SparseCodes(idx, val)


def l0(codes: SparseCodes) -> torch.Tensor:
    """Active features per token, ``[B]``."""
    return (codes.val_BK != 0).sum(-1)


class Activation(nn.Module):
    """Base class: ``forward(pre_BH) -> SparseCodes``."""

    def commit_step(self) -> None:
        """Apply the state update staged by the last training forward (BatchTopK's threshold); the
        trainer calls it once the step is known good. Nothing to do for stateless activations."""

    def sparsity_penalty(self, pre_BH: torch.Tensor, codes: SparseCodes,
                         dec_norm_H: torch.Tensor) -> torch.Tensor:
        """The activation's own sparsity loss, averaged over the batch (zero for the TopK family)."""
        return pre_BH.new_zeros(())


class TopK(Activation):
    """Per token, keep the ``k`` largest pre-activations (after ReLU, so values are ≥ 0)."""

    def __init__(self, k: int):
        super().__init__()
        self.k = k

    def forward(self, pre_BH: torch.Tensor) -> SparseCodes:
        val, idx = pre_BH.topk(self.k, dim=-1)
        return SparseCodes(idx, val.relu())


class BatchTopK(Activation):
    """Keep the ``k·B`` largest (positive) pre-activations of the batch; threshold at inference.

    While training (module in train mode with gradients on) every call also stages an update of
    the buffer ``threshold``, a running estimate of the smallest value the batch selection kept (as
    dictionary_learning and SAELens do): the plain mean of the batch minima for the first
    ``1/(1-beta)`` updates, an exponential moving average with factor ``beta`` after that, so it
    follows the model as it trains. :meth:`commit_step` applies the staged update: the trainer
    calls it after the optimiser step, so a step refused for a non-finite loss (huge activations)
    leaves the threshold where the last good step put it. In eval mode with
    ``inference="threshold"`` each token keeps its pre-activations above ``threshold``,
    independently of the batch, which gives L0 ≈ k on data like the training data.
    """

    def __init__(self, k: int, inference: str = "threshold", beta: float = 0.99):
        super().__init__()
        self.k, self.inference, self.beta = k, inference, beta
        self.register_buffer("threshold", torch.zeros(()))
        self.register_buffer("n_threshold_updates", torch.zeros((), dtype=torch.long))
        self._warned = False
        self._staged_min: torch.Tensor | None = None

    def forward(self, pre_BH: torch.Tensor) -> SparseCodes:
        use_batch = self.training or self.inference == "batch"
        if not use_batch and int(self.n_threshold_updates) == 0:
            if not self._warned:
                warnings.warn("BatchTopK has no inference threshold yet (never trained); using "
                              "batch-level selection, so codes depend on the batch", stacklevel=2)
                self._warned = True
            use_batch = True
        if use_batch:
            relu_BH = pre_BH.relu()
            flat = relu_BH.flatten()
            n_keep = min(self.k * pre_BH.shape[0], flat.numel())
            kept_vals, kept_idx = flat.topk(n_keep, sorted=False)
            a_BH = torch.zeros_like(flat).scatter(0, kept_idx, kept_vals).view_as(pre_BH)
            if self.training and torch.is_grad_enabled():
                self._stage_threshold(kept_vals.detach())
        else:
            a_BH = pre_BH * (pre_BH > self.threshold.clamp_min(0))
        return dense_to_codes(a_BH)

    @torch.no_grad()
    def _stage_threshold(self, kept_vals: torch.Tensor) -> None:
        positive = kept_vals[kept_vals > 0]
        self._staged_min = positive.min() if positive.numel() else None

    @torch.no_grad()
    def commit_step(self) -> None:
        if self._staged_min is None:
            return
        n = int(self.n_threshold_updates)
        beta = min(self.beta, n / (n + 1))  # running mean first: no memory of an arbitrary start
        self.threshold.mul_(beta).add_((1 - beta) * self._staged_min)
        self.n_threshold_updates += 1
        self._staged_min = None


class ReLU(Activation):
    """``a = max(pre, 0)`` with the decoder-norm-weighted L1 penalty ``coeff · Σ_v a_v ‖W_dec[v]‖``."""

    def __init__(self, coeff: float):
        super().__init__()
        self.coeff = coeff

    def forward(self, pre_BH: torch.Tensor) -> SparseCodes:
        return dense_to_codes(pre_BH.relu())

    def sparsity_penalty(self, pre_BH, codes, dec_norm_H):
        return self.coeff * (codes.val_BK * dec_norm_H[codes.idx_BK]).sum(-1).mean()


def _rectangle(u: torch.Tensor) -> torch.Tensor:
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class _JumpReLUFn(torch.autograd.Function):
    """``x · 1[x > θ]``; the threshold's gradient through a rectangle kernel of width ε."""

    @staticmethod
    def forward(ctx, x, theta, eps):
        ctx.save_for_backward(x, theta)
        ctx.eps = eps
        return x * (x > theta)

    @staticmethod
    def backward(ctx, g):
        x, theta = ctx.saved_tensors
        eps = ctx.eps
        grad_x = g * (x > theta)
        grad_theta = (-(theta / eps) * _rectangle((x - theta) / eps) * g).sum(0)
        return grad_x, grad_theta, None


class _StepFn(torch.autograd.Function):
    """``1[x > θ]``; only the threshold gets a (straight-through) gradient."""

    @staticmethod
    def forward(ctx, x, theta, eps):
        ctx.save_for_backward(x, theta)
        ctx.eps = eps
        return (x > theta).to(x.dtype)

    @staticmethod
    def backward(ctx, g):
        x, theta = ctx.saved_tensors
        eps = ctx.eps
        grad_theta = (-(1.0 / eps) * _rectangle((x - theta) / eps) * g).sum(0)
        return torch.zeros_like(x), grad_theta, None


class JumpReLU(Activation):
    """``a_v = pre_v · 1[pre_v > θ_v]``, ``θ = exp(log_threshold_H)``, L0 penalty ``coeff · Σ_v 1[a_v > 0]``."""

    def __init__(self, n_features: int, coeff: float, bandwidth: float, init_threshold: float):
        super().__init__()
        self.coeff, self.bandwidth = coeff, bandwidth
        self.log_threshold_H = nn.Parameter(torch.full((n_features,), float(init_threshold)).log())

    def forward(self, pre_BH: torch.Tensor) -> SparseCodes:
        return dense_to_codes(_JumpReLUFn.apply(pre_BH, self.log_threshold_H.exp(), self.bandwidth))

    def sparsity_penalty(self, pre_BH, codes, dec_norm_H):
        step = _StepFn.apply(pre_BH, self.log_threshold_H.exp(), self.bandwidth)
        return self.coeff * step.sum(-1).mean()


def make_activation(cfg) -> Activation:
    """The activation module a :class:`~crosscoder_lib.crosscoder.model.CrosscoderConfig` asks for."""
    if cfg.activation == "batchtopk":
        return BatchTopK(cfg.k, inference=cfg.batchtopk_inference, beta=cfg.threshold_beta)
    if cfg.activation == "topk":
        return TopK(cfg.k)
    if cfg.activation == "relu":
        return ReLU(cfg.sparsity_coeff)
    if cfg.activation == "jumprelu":
        return JumpReLU(cfg.n_features, cfg.sparsity_coeff, cfg.jumprelu_bandwidth,
                        cfg.jumprelu_init_threshold)
    raise ValueError(f"unknown activation {cfg.activation!r}")


def auxk_codes(pre_BH: torch.Tensor, dead_H: torch.Tensor, k_aux: int) -> SparseCodes | None:
    """Codes of the AuxK reconstruction: per token, the ``min(k_aux, n_dead)`` largest
    pre-activations among dead features, used as they are (no ReLU, no selection threshold).

    Why raw pre-activations: a feature is usually dead because its pre-activation is negative on
    every token. Gao et al. apply a ReLU first, which gives such a feature no gradient at all, so
    AuxK only revives features that are barely dead. Without the ReLU every dead feature in a
    token's top ``k_aux`` gets a gradient pulling its encoder towards the residual it could
    explain (checked in tests/test_training.py: features pushed to ``b_enc = -3`` revive with AuxK
    and stay dead without it, and stay dead with a ReLU'd AuxK). Returns None when no feature is dead.
    """
    n_dead = int(dead_H.sum())
    if n_dead == 0:
        return None
    val, idx = pre_BH.masked_fill(~dead_H, float("-inf")).topk(min(k_aux, n_dead), dim=-1)
    return SparseCodes(idx, val)


class FiringTracker(nn.Module):
    """Counts, per feature, the training steps since it last fired; dead after ``window`` steps.

    The buffer ``steps_since_fired_H`` is saved with the training state, so resuming keeps it.
    """

    def __init__(self, n_features: int, window: int):
        super().__init__()
        self.window = window
        self.register_buffer("steps_since_fired_H", torch.zeros(n_features, dtype=torch.long))

    @torch.no_grad()
    def update(self, codes: SparseCodes) -> None:
        fired_H = torch.zeros_like(self.steps_since_fired_H, dtype=torch.bool)
        fired_H[codes.idx_BK[codes.val_BK > 0]] = True
        self.steps_since_fired_H += 1
        self.steps_since_fired_H[fired_H] = 0

    @property
    def dead_H(self) -> torch.Tensor:
        return self.steps_since_fired_H >= self.window

    @property
    def dead_fraction(self) -> float:
        return float(self.dead_H.float().mean())
