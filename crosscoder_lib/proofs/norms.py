"""The normalisation layers without their weights (folded into the next matrices), in float64, and
how far each can move its output.

TransformerLens's compatibility mode folds a norm's scale (and LayerNorm's bias) into the weights
that read it, so the hookpoint ``ln.hook_normalized`` holds the bare normalised vector:

- LayerNorm (``"layer"``, GPT-Neo): ``LN(x) = Px/√(‖Px‖²/D + eps)``, ``P`` removes the mean;
- RMSNorm (``"rms"``, Llama): ``RMS(x) = x/√(‖x‖²/D + eps)``: the same map with ``P`` the identity.

**Change bound.** With ``c = Px`` (or ``x``), ``N(x) = √D·c/√(‖c‖² + D·eps)`` has Jacobian
``√D/√(‖c‖² + D·eps) · (I − ĉĉᵀ‖c‖²/(‖c‖² + D·eps))·P``, of norm ``√D/√(‖c‖² + D·eps)``, largest
where ``‖c‖`` is smallest. On the ball ``‖x − x̂‖ ≤ δ``, ``‖Px − Px̂‖ ≤ δ`` (``P`` is a projection), so

    ‖N(x) − N(x̂)‖ ≤ δ · √D/√(max(‖Px̂‖ − δ, 0)² + D·eps)

per token (the local Lipschitz factor), and never more than ``‖N(x)‖ + ‖N(x̂)‖ ≤ √D + ‖N(x̂)‖``.
"""

from __future__ import annotations

import math

import torch

KINDS = ("layer", "rms")


def norm_kind(bridge) -> str:
    """``"layer"`` or ``"rms"``: the bridge's ``cfg.normalization_type`` (``LN``/``LNPre``, ``RMS``/``RMSPre``)."""
    kind = str(getattr(bridge.cfg, "normalization_type", None))
    if kind.startswith("LN"):
        return "layer"
    if kind.startswith("RMS"):
        return "rms"
    raise ValueError(f"normalization_type {kind!r} is not modelled: crosscoder_lib.proofs.norms knows LayerNorm "
                     "(LN, LNPre) and RMSNorm (RMS, RMSPre)")


def _centred(x: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "layer":
        return x - x.mean(-1, keepdim=True)
    if kind == "rms":
        return x
    raise ValueError(f"unknown norm kind {kind!r}; known: {KINDS}")


def normalise(x: torch.Tensor, eps: float, kind: str) -> torch.Tensor:
    """LayerNorm or RMSNorm without its weights, over the last axis."""
    c = _centred(x, kind)
    return c / (c.pow(2).mean(-1, keepdim=True) + eps).sqrt()


def layer_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """LayerNorm without its affine part (folded into the next weights), over the last axis."""
    return normalise(x, eps, "layer")


def rms_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm without its weight (folded into the next weights), over the last axis."""
    return normalise(x, eps, "rms")


def norm_change_bound(x_hat: torch.Tensor, radius: torch.Tensor, eps: float,
                      kind: str = "layer") -> tuple[torch.Tensor, torch.Tensor]:
    """``(bound on ‖N(x) − N(x̂)‖ for ‖x − x̂‖ ≤ radius, the local Lipschitz factor used)`` per token."""
    D = x_hat.shape[-1]
    r = _centred(x_hat, kind).norm(dim=-1)
    r_min = (r - radius).clamp_min(0.0)
    lip = math.sqrt(D) / (r_min.pow(2) + D * eps).sqrt()
    cap = math.sqrt(D) + normalise(x_hat, eps, kind).norm(dim=-1)
    return torch.minimum(lip * radius, cap), lip


def layer_norm_change_bound(x_hat: torch.Tensor, radius: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`norm_change_bound` of LayerNorm."""
    return norm_change_bound(x_hat, radius, eps, "layer")
