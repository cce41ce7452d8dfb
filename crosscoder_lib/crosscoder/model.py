"""The acausal crosscoder: one sparse dictionary that reads and writes every hookpoint (SPEC §2).

For a token with activations ``x_x`` at hookpoint slots ``x = 0 … X-1``::

    pre_H  = Σ_x (s_x x_x) W_enc[x] + b_enc                  (s_x: per-hookpoint input scale)
    a_H    = activation(pre_H)                                (BatchTopK, TopK, ReLU, JumpReLU)
    x̂_x    = (Σ_v a_v W_dec[v, x] + b_dec[x]) / s_x

Inputs to :meth:`Crosscoder.encode` and :meth:`Crosscoder.forward` are RAW model activations and
reconstructions come back in the model's units: the scaling happens inside. ``s_x`` (buffer
``input_scale_X``) is estimated from data before training so that every hookpoint has mean norm
``sqrt(d_model)`` (:meth:`Crosscoder.set_input_scale`); the training loss compares ``s_x x_x`` with
``s_x x̂_x``, so every hookpoint weighs the same. :meth:`Crosscoder.fold_input_scale` moves the
factors into the weights (``W_enc[x] ← s_x W_enc[x]``, ``W_dec[:, x] ← W_dec[:, x]/s_x``,
``b_dec[x] ← b_dec[x]/s_x``, ``s ← 1``) without changing codes or reconstructions; exported
checkpoints are folded. An SAE is the one-hookpoint case.

The decoder bias is frozen at zero by default (as in the paper's runs), so a reconstruction is
exactly a sum of features and the bias never counts as one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from crosscoder_lib.crosscoder.activations import (
    Activation,
    SparseCodes,
    codes_to_dense,
    make_activation,
)
from crosscoder_lib.crosscoder.jsonconfig import ConfigError, JsonConfig
from crosscoder_lib.crosscoder.products import dense_decode, encode, select_slots, sparse_decode
from crosscoder_lib.interactions.kernels.buffers import GradientBuffers

ACTIVATIONS = ("batchtopk", "topk", "relu", "jumprelu")
DECODE_PATHS = ("auto", "sparse", "dense")


@dataclass
class CrosscoderConfig(JsonConfig):
    """Architecture of a crosscoder (validated and typed on construction, see
    :mod:`~crosscoder_lib.crosscoder.jsonconfig`; saved as JSON with its weights)."""

    hookpoints: list[str]
    """Hook names read and written, one slot each, in order (``paper_hookpoints(n_blocks)``)."""
    d_model: int
    """Width D of every hookpoint's activation vector."""
    n_features: int
    """Dictionary size H."""
    activation: str = "batchtopk"
    """``"batchtopk"`` (the paper's), ``"topk"``, ``"relu"`` or ``"jumprelu"``."""
    k: int = 20
    """Active features per token for TopK/BatchTopK (BatchTopK: on average over the batch)."""
    batchtopk_inference: str = "threshold"
    """BatchTopK in eval mode: ``"threshold"`` (batch-independent codes) or ``"batch"`` (as trained)."""
    threshold_beta: float = 0.99
    """Moving-average factor of BatchTopK's inference-threshold estimate (memory ≈ 1/(1-β) steps)."""
    sparsity_coeff: float = 0.0
    """ReLU: coefficient of the decoder-norm-weighted L1; JumpReLU: of the L0. Must be > 0 for them."""
    jumprelu_bandwidth: float = 1e-3
    """JumpReLU: width ε of the straight-through rectangle kernel."""
    jumprelu_init_threshold: float = 1e-3
    """JumpReLU: initial threshold θ of every feature."""
    aux_k: int | None = None
    """AuxK: dead features used to model the residual per token; None means ``d_model // 2`` (SPEC §2)."""
    aux_alpha: float = 1 / 32
    """AuxK: weight α of the auxiliary loss (0 disables it)."""
    dead_steps: int = 500
    """AuxK: a feature is dead after this many training steps without firing."""
    dec_init_norm: float = 0.1
    """Initial norm of every decoder row ``W_dec[v, x]`` (random direction; encoder = its transpose)."""
    train_dec_bias: bool = False
    """Train ``b_dec_XD``; the paper freezes it at zero, so reconstructions are sums of features."""
    decode: str = "auto"
    """Decoder path: ``"sparse"`` (through active features only), ``"dense"``, or ``"auto"``."""
    init_seed: int = 0
    """Seed of the initial weights (a private generator; the global RNG is untouched)."""

    def __post_init__(self):
        if isinstance(self.hookpoints, str):
            raise ConfigError(f"CrosscoderConfig.hookpoints must be a list of hook names, got the string "
                              f"{self.hookpoints!r}; use crosscoder_lib.lm.hookpoints.paper_hookpoints")
        self._coerce_fields()
        if not self.hookpoints:
            raise ValueError("hookpoints is empty; use crosscoder_lib.lm.hookpoints.paper_hookpoints")
        if len(set(self.hookpoints)) != len(self.hookpoints):
            raise ValueError(f"duplicate hookpoints in {self.hookpoints}")
        for name in ("d_model", "n_features", "k", "dead_steps"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; choose one of {ACTIVATIONS}")
        if self.activation in ("batchtopk", "topk") and self.k > self.n_features:
            raise ValueError(f"k={self.k} is larger than the dictionary (n_features="
                             f"{self.n_features}); lower k or raise n_features")
        if self.batchtopk_inference not in ("threshold", "batch"):
            raise ValueError(f"batchtopk_inference must be 'threshold' or 'batch', got "
                             f"{self.batchtopk_inference!r}")
        if not 0.0 <= self.threshold_beta < 1.0:
            raise ValueError(f"threshold_beta must be in [0, 1), got {self.threshold_beta}")
        if self.sparsity_coeff < 0:
            raise ValueError(f"sparsity_coeff must be >= 0, got {self.sparsity_coeff}")
        if self.activation in ("relu", "jumprelu") and self.sparsity_coeff == 0:
            raise ValueError(f"activation {self.activation!r} needs sparsity_coeff > 0 "
                             f"(e.g. 1e-3): without it nothing makes the codes sparse")
        if self.jumprelu_bandwidth <= 0 or self.jumprelu_init_threshold <= 0:
            raise ValueError("jumprelu_bandwidth and jumprelu_init_threshold must be > 0")
        if self.aux_k is None:
            self.aux_k = max(self.d_model // 2, 1)
        if not 1 <= self.aux_k:
            raise ValueError(f"aux_k must be >= 1, got {self.aux_k}")
        self.aux_k = min(self.aux_k, self.n_features)
        if self.aux_alpha < 0:
            raise ValueError(f"aux_alpha must be >= 0, got {self.aux_alpha}")
        if self.dec_init_norm <= 0:
            raise ValueError(f"dec_init_norm must be > 0, got {self.dec_init_norm}")
        if self.decode not in DECODE_PATHS:
            raise ValueError(f"decode must be one of {DECODE_PATHS}, got {self.decode!r}")

    @property
    def n_slots(self) -> int:
        """Number X of hookpoint slots."""
        return len(self.hookpoints)


class CrosscoderOutput(NamedTuple):
    """Result of :meth:`Crosscoder.forward`.

    Fields:
        recon_BXD: reconstruction in the model's units (compare with the raw input); None
            when ``forward(..., raw=False)``.
        codes: the :class:`SparseCodes` of each token.
        pre_BH: pre-activations (what AuxK and the sparsity penalties read).
        x_scaled_BXD: the input times the per-hookpoint scale (the loss's target).
        recon_scaled_BXD: the reconstruction in the same normalised units (the loss's prediction).
    """

    recon_BXD: torch.Tensor
    codes: SparseCodes
    pre_BH: torch.Tensor
    x_scaled_BXD: torch.Tensor
    recon_scaled_BXD: torch.Tensor


class Crosscoder(nn.Module):
    """An acausal crosscoder over ``cfg.hookpoints`` (see the module docstring for the maths)."""

    def __init__(self, cfg: CrosscoderConfig):
        super().__init__()
        self.cfg = cfg
        X, D, H = cfg.n_slots, cfg.d_model, cfg.n_features
        self.W_enc_XDH = nn.Parameter(torch.empty(X, D, H))
        self.b_enc_H = nn.Parameter(torch.zeros(H))
        self.W_dec_HXD = nn.Parameter(torch.empty(H, X, D))
        self.b_dec_XD = nn.Parameter(torch.zeros(X, D), requires_grad=cfg.train_dec_bias)
        self.register_buffer("input_scale_X", torch.ones(X))
        self.activation: Activation = make_activation(cfg)
        # Where the weight gradients are written; a trainer recycles them (TrainingStep).
        self.grad_buffers = GradientBuffers()
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The paper's initialisation: each decoder row ``W_dec[v, x]`` a random direction of norm
        ``dec_init_norm``, the encoder its transpose, biases zero."""
        g = torch.Generator().manual_seed(self.cfg.init_seed)
        W = torch.randn(self.W_dec_HXD.shape, generator=g)
        W *= self.cfg.dec_init_norm / W.norm(dim=-1, keepdim=True)
        self.W_dec_HXD.copy_(W)
        self.W_enc_XDH.copy_(W.permute(1, 2, 0))
        self.b_enc_H.zero_()
        self.b_dec_XD.zero_()

    # -- sizes ---------------------------------------------------------------------------------
    @property
    def n_slots(self) -> int:
        return self.cfg.n_slots

    @property
    def d_model(self) -> int:
        return self.cfg.d_model

    @property
    def n_features(self) -> int:
        return self.cfg.n_features

    def _check_input(self, x_BXD: torch.Tensor) -> None:
        want = (self.n_slots, self.d_model)
        if x_BXD.ndim != 3 or tuple(x_BXD.shape[1:]) != want:
            raise ValueError(f"expected activations of shape [B, {want[0]}, {want[1]}] (batch, "
                             f"hookpoint slots, d_model), got {tuple(x_BXD.shape)}")

    # -- normalisation -------------------------------------------------------------------------
    @torch.no_grad()
    def set_input_scale(self, x_BXD: torch.Tensor) -> torch.Tensor:
        """Set ``input_scale_X`` so each hookpoint of ``x_BXD`` (raw) has mean norm ``sqrt(d_model)``."""
        self._check_input(x_BXD)
        mean_norm_X = x_BXD.float().norm(dim=-1).mean(0)
        if not torch.all(mean_norm_X > 0):
            bad = [self.cfg.hookpoints[i] for i in torch.nonzero(mean_norm_X <= 0).flatten().tolist()]
            raise ValueError(f"hookpoint(s) {bad} are all zero in the data: cannot normalise them")
        self.input_scale_X.copy_(math.sqrt(self.d_model) / mean_norm_X)
        return self.input_scale_X.clone()

    @torch.no_grad()
    def fold_input_scale(self) -> None:
        """Fold ``input_scale_X`` into the weights and set it to 1; codes and reconstructions of
        raw inputs are unchanged (up to float round-off)."""
        s_X = self.input_scale_X
        self.W_enc_XDH.mul_(s_X[:, None, None])
        self.W_dec_HXD.div_(s_X[None, :, None])
        self.b_dec_XD.div_(s_X[:, None])
        self.input_scale_X.fill_(1.0)

    # -- encode / decode -----------------------------------------------------------------------
    def pre_activations(self, x_BXD: torch.Tensor) -> torch.Tensor:
        """``pre_BH = Σ_x (s_x x_x) W_enc[x] + b_enc`` for raw inputs."""
        self._check_input(x_BXD)
        return self._pre_from_scaled(x_BXD * self.input_scale_X[:, None])

    def _pre_from_scaled(self, x_scaled_BXD: torch.Tensor) -> torch.Tensor:
        return encode(x_scaled_BXD.flatten(1), self.W_enc_XDH, self.b_enc_H, self.grad_buffers)

    def encode(self, x_BXD: torch.Tensor, return_pre: bool = False):
        """Codes of raw activations ``x_BXD``; with ``return_pre`` also ``pre_BH``: ``(codes, pre_BH)``."""
        pre_BH = self.pre_activations(x_BXD)
        codes = self.activation(pre_BH)
        return (codes, pre_BH) if return_pre else codes

    def decode_path(self, codes: SparseCodes) -> str:
        """Where the choice of decoder path is made: ``"sparse"`` gathers only the active rows
        (:func:`~crosscoder_lib.crosscoder.products.sparse_decode`: the active entries, flat with
        offsets), ``"dense"`` multiplies the full ``a_BH``.

        ``auto``: sparse when a token's slots K are at most 1/8 of the dictionary (TopK family).
        The rule reads the padded K, as it did when the sparse path gathered padded slots, so a run
        takes the path it took before at every step (the two paths round differently). JumpReLU
        always decodes densely: its threshold's straight-through gradient reads the gradient of
        every slot of the codes, which the sparse path gives only to active slots.
        """
        if self.cfg.decode != "auto":
            return self.cfg.decode
        if self.cfg.activation == "jumprelu":
            return "dense"
        return "sparse" if codes.idx_BK.shape[1] * 8 <= self.n_features else "dense"

    def decode_scaled(self, codes: SparseCodes, *, bias: bool = True, path: str | None = None) -> torch.Tensor:
        """``Σ_v a_v W_dec[v, x] (+ b_dec[x])`` in normalised units, ``[B, X, D]``."""
        path = path or self.decode_path(codes)
        if path == "sparse":
            out_BF = sparse_decode(codes.idx_BK, codes.val_BK, self.W_dec_HXD, self.grad_buffers)
        elif path == "dense":
            out_BF = dense_decode(codes_to_dense(codes, self.n_features), self.W_dec_HXD, self.grad_buffers)
        else:
            raise ValueError(f"unknown decode path {path!r}; use 'sparse' or 'dense'")
        out_BXD = out_BF.view(-1, self.n_slots, self.d_model)
        # A frozen all-zero bias (the default) is skipped: one pass over the batch fewer.
        if bias and (self.b_dec_XD.requires_grad or bool(self.b_dec_XD.any())):
            out_BXD = out_BXD + self.b_dec_XD
        return out_BXD

    def decode(self, codes: SparseCodes) -> torch.Tensor:
        """Reconstruction in the model's units: ``x̂_x = (Σ_v a_v W_dec[v, x] + b_dec[x]) / s_x``."""
        return self.decode_scaled(codes) / self.input_scale_X[:, None]

    def forward(self, x_BXD: torch.Tensor, *, raw: bool = True) -> CrosscoderOutput:
        """Encode raw ``x_BXD`` ``[B, X, D]`` and reconstruct it; see :class:`CrosscoderOutput`.

        ``raw=False`` skips the reconstruction in model units (``recon_BXD`` is None): the
        training loss only needs the normalised one.
        """
        self._check_input(x_BXD)
        x_scaled_BXD = x_BXD * self.input_scale_X[:, None]
        pre_BH = self._pre_from_scaled(x_scaled_BXD)
        codes = self.activation(pre_BH)
        recon_scaled_BXD = self.decode_scaled(codes)
        recon_BXD = recon_scaled_BXD / self.input_scale_X[:, None] if raw else None
        return CrosscoderOutput(recon_BXD, codes, pre_BH, x_scaled_BXD, recon_scaled_BXD)

    # -- views used by the interaction analysis ------------------------------------------------
    def decoder_slots_LHD(self, slots: list[int]) -> torch.Tensor:
        """Decoder rows at ``slots`` in the model's units, ``[len(slots), H, D]``: row ``[l, v]`` is
        ``W_dec[v, slots[l]] / s_{slots[l]}``, so the raw reconstruction at that slot is
        ``Σ_v a_v · row[l, v]`` (plus the bias). Differentiable through ``W_dec_HXD``."""
        slots_t = torch.as_tensor(list(slots), dtype=torch.long, device=self.W_dec_HXD.device)
        scale = self.input_scale_X[slots_t]
        # index_select, not W[:, slots]: its backward is one index_add, where advanced indexing's is a
        # sorting index_put over the whole [H, X, D] gradient (a third of the penalty's overhead).
        return (select_slots(self.W_dec_HXD, slots_t, self.grad_buffers) / scale[None, :, None]).permute(1, 0, 2)

    def decoder_norms_H(self) -> torch.Tensor:
        """``Σ_x ‖W_dec[v, x]‖`` per feature (normalised units): the weights of the ReLU L1 penalty."""
        return self.W_dec_HXD.norm(dim=-1).sum(-1)
