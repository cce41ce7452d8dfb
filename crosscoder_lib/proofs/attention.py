"""Attention and LayerNorm re-implemented in float64 from a bridge's weights, and their change bounds.

The layer-wise proof (:mod:`crosscoder_lib.proofs.layerwise`) needs, at every hookpoint, a sound
Lipschitz factor on the ball of the current error bound around the reconstruction ``x̂``:

- LayerNorm without affine (folded): ``LN(x) = √D·Px/√(‖Px‖² + D·eps)`` has Jacobian norm
  ``√D/√(‖Pu‖² + D·eps)``, so on the ball ``Lip ≤ √D/√(max(‖Px̂‖ − δ, 0)² + D·eps)`` (per
  token); the change is also capped by ``‖LN(x)‖ + ‖LN(x̂)‖ ≤ √D + ‖LN(x̂)‖``.
- Attention (per head, softmax over keys ``s ≤ t``): ``out − out̂ = Σ_s A_ts (v_s − v̂_s)W_O
  + Σ_s (A_ts − Â_ts)(y_s − ȳ_t)`` with ``y_s = v̂_s W_O``, ``ȳ_t = Σ_s Â_ts y_s``; the first
  is ``≤ ‖W_V W_O‖₂ max_s δ_s``, the second ``≤ ‖A_t − Â_t‖₁ max_s ‖y_s − ȳ_t‖`` and
  ``‖A_t − Â_t‖₁ ≤ min(2, max_s |Δscore_ts|)`` (softmax's ℓ∞→ℓ1 constant is ½ of the score
  range), ``|Δscore_ts| ≤ scale·(‖Δq_t‖‖k̂_s‖ + ‖q̂_t‖‖Δk_s‖ + ‖Δq_t‖‖Δk_s‖)``,
  ``‖Δq_t‖ ≤ ‖W_Q‖₂ δ_t``.

The attention is re-implemented from the bridge's weights (:func:`attention_weights`) and checked
against the model's own pattern on the same tokens.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

F64 = torch.float64


class AttentionWeights(NamedTuple):
    """Attention weights of every block (float64), acting on ``blocks.l.ln1.hook_normalized``.

    Shapes: ``W_Q, W_K, W_V`` ``[L, heads, D, d_head]``, ``W_O`` ``[L, heads, d_head, D]``,
    ``b_Q, b_K, b_V`` ``[L, heads, d_head]``, ``b_O`` ``[L, D]``. ``scale`` multiplies ``q·k``
    (GPT-Neo: 1; GPT-2: ``1/√d_head``); ``windows[l]`` is the local-attention window of block
    ``l`` (None: global).
    """

    W_Q: torch.Tensor
    W_K: torch.Tensor
    W_V: torch.Tensor
    W_O: torch.Tensor
    b_Q: torch.Tensor
    b_K: torch.Tensor
    b_V: torch.Tensor
    b_O: torch.Tensor
    scale: float
    windows: tuple


def _windows(bridge) -> tuple:
    cfg = getattr(getattr(bridge, "original_model", None), "config", None)
    layers = getattr(cfg, "attention_layers", None)
    if layers is None:
        return (None,) * bridge.cfg.n_layers
    return tuple(cfg.window_size if kind == "local" else None for kind in layers)


def attention_scores(n1_BSD: torch.Tensor, attn: AttentionWeights, block: int) -> torch.Tensor:
    """Pre-softmax scores ``scale · q_t · k_s`` ``[B, heads, S, S]`` (no mask) of inputs ``n1_BSD``."""
    q = torch.einsum("bsd,hde->bhse", n1_BSD, attn.W_Q[block]) + attn.b_Q[block][None, :, None]
    k = torch.einsum("bsd,hde->bhse", n1_BSD, attn.W_K[block]) + attn.b_K[block][None, :, None]
    return attn.scale * q @ k.transpose(-1, -2)


def _key_mask(S: int, window: int | None, device=None) -> torch.Tensor:
    t = torch.arange(S, device=device)
    mask = t[None, :] <= t[:, None]
    if window is not None:
        mask &= t[:, None] - t[None, :] < window
    return mask  # [query t, key s]


def attention_output(n1_BSD: torch.Tensor, attn: AttentionWeights, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(pattern [B, heads, S, S], attention output [B, S, D])`` of inputs ``n1_BSD`` (causal, windowed)."""
    S = n1_BSD.shape[1]
    scores = attention_scores(n1_BSD, attn, block)
    pattern = scores.masked_fill(~_key_mask(S, attn.windows[block], n1_BSD.device), float("-inf")).softmax(-1)
    v = torch.einsum("bsd,hde->bhse", n1_BSD, attn.W_V[block]) + attn.b_V[block][None, :, None]
    out = torch.einsum("bhts,bhse,hed->btd", pattern, v, attn.W_O[block]) + attn.b_O[block]
    return pattern, out


@torch.no_grad()
def attention_weights(bridge, probe_tokens: torch.Tensor | None = None) -> AttentionWeights:
    """The bridge's attention weights, with the score scale found by matching the model's pattern.

    The scale is the candidate (1, ``1/√d_head``) whose softmax reproduces
    ``blocks.l.attn.hook_pattern`` of every block on ``probe_tokens``; a ``ValueError`` says so
    when neither does (an attention this module does not model).
    """
    names = ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O")
    tensors = [getattr(bridge, n).detach().to(F64) for n in names]
    if probe_tokens is None:
        probe_tokens = torch.arange(min(12, bridge.cfg.d_vocab))[None]
    probe_tokens = probe_tokens.to(bridge.cfg.device)
    L = bridge.cfg.n_layers
    hooks = [f"blocks.{l}.{h}" for l in range(L) for h in ("ln1.hook_normalized", "attn.hook_pattern")]
    _, cache = bridge.run_with_cache(probe_tokens, names_filter=lambda n: n in hooks)
    windows = _windows(bridge)
    errors = {}
    for scale in (1.0, 1.0 / math.sqrt(bridge.cfg.d_head)):
        attn = AttentionWeights(*tensors, scale=scale, windows=windows)
        err = max(float((attention_output(cache[f"blocks.{l}.ln1.hook_normalized"].to(F64), attn, l)[0]
                         - cache[f"blocks.{l}.attn.hook_pattern"].to(F64)).abs().max()) for l in range(L))
        errors[scale] = err
        if err < 1e-4:
            return attn
    raise ValueError(f"no score scale reproduces the model's attention pattern (max errors {errors}); "
                     "crosscoder_lib.proofs.attention models causal (optionally windowed) softmax attention only")



def spectral_norm(W: torch.Tensor) -> torch.Tensor:
    """``‖W‖₂`` of each matrix in a batch ``[..., m, n]``, from the largest eigenvalue of the smaller
    Gram matrix (float64), rounded up by a relative 1e-9 so that bounds using it stay sound."""
    W = W.to(F64)
    gram = W @ W.transpose(-1, -2) if W.shape[-2] <= W.shape[-1] else W.transpose(-1, -2) @ W
    return torch.linalg.eigvalsh(gram)[..., -1].clamp_min(0.0).sqrt() * (1 + 1e-9)


def layer_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """LayerNorm without its affine part (folded into the next weights), over the last axis."""
    c = x - x.mean(-1, keepdim=True)
    return c / (c.pow(2).mean(-1, keepdim=True) + eps).sqrt()


def layer_norm_change_bound(x_hat: torch.Tensor, radius: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(bound on ‖LN(x) − LN(x̂)‖ for ‖x − x̂‖ ≤ radius, the local Lipschitz factor used)`` per token."""
    D = x_hat.shape[-1]
    r = (x_hat - x_hat.mean(-1, keepdim=True)).norm(dim=-1)
    r_min = (r - radius).clamp_min(0.0)
    lip = math.sqrt(D) / (r_min.pow(2) + D * eps).sqrt()
    cap = math.sqrt(D) + layer_norm(x_hat, eps).norm(dim=-1)
    return torch.minimum(lip * radius, cap), lip


def attention_change_bound(n1_hat: torch.Tensor, delta: torch.Tensor, attn: AttentionWeights, block: int) -> torch.Tensor:
    """Bound on ``‖Attn_t(n1) − Attn_t(n̂1)‖`` ``[B, S]`` given ``‖n1_s − n̂1_s‖ ≤ delta[b, s]`` (module docstring)."""
    B, S, _ = n1_hat.shape
    mask = _key_mask(S, attn.windows[block], n1_hat.device)  # [t, s]
    pattern, _ = attention_output(n1_hat, attn, block)
    W_Q, W_K, W_V, W_O = attn.W_Q[block], attn.W_K[block], attn.W_V[block], attn.W_O[block]
    norm_Q, norm_K, norm_VO = spectral_norm(W_Q), spectral_norm(W_K), spectral_norm(W_V @ W_O)  # [heads]
    q = torch.einsum("bsd,hde->bhse", n1_hat, W_Q) + attn.b_Q[block][None, :, None]
    k = torch.einsum("bsd,hde->bhse", n1_hat, W_K) + attn.b_K[block][None, :, None]
    v = torch.einsum("bsd,hde->bhse", n1_hat, W_V) + attn.b_V[block][None, :, None]
    y = torch.einsum("bhse,hed->bhsd", v, W_O)  # [B, heads, S, D]
    y_bar = pattern @ y  # [B, heads, t, D] (pattern-weighted mean over keys)
    dq = norm_Q[None, :, None] * delta[:, None, :]  # [B, heads, S]
    dk = norm_K[None, :, None] * delta[:, None, :]
    qn, kn = q.norm(dim=-1), k.norm(dim=-1)
    d_score = attn.scale * (dq[..., :, None] * kn[..., None, :] + qn[..., :, None] * dk[..., None, :]
                            + dq[..., :, None] * dk[..., None, :])  # [B, heads, t, s]
    d_score = d_score.masked_fill(~mask, 0.0).amax(-1)
    d_pattern = d_score.clamp_max(2.0)
    # ‖y_s − ȳ_t‖² by its expansion (no [B, heads, S, S, D] tensor); the 1e-12 relative margin
    # covers float64 cancellation, keeping the bound sound.
    yy, bb = y.pow(2).sum(-1), y_bar.pow(2).sum(-1)  # [B, heads, S]
    sq = bb[..., :, None] + yy[..., None, :] - 2 * y_bar @ y.transpose(-1, -2)  # [B, heads, t, s]
    spread = (sq.clamp_min(0.0) + 1e-12 * (bb[..., :, None] + yy[..., None, :])).sqrt()
    spread = spread.masked_fill(~mask, 0.0).amax(-1)
    max_delta = delta[:, None, :].expand(B, S, S).masked_fill(~mask[None], 0.0).amax(-1)  # [B, t]
    per_head = norm_VO[None, :, None] * max_delta[:, None, :] + d_pattern * spread
    return per_head.sum(1)

