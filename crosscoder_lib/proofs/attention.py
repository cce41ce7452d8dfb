"""Attention re-implemented in float64 from a bridge's weights, and its change bound.

Causal softmax attention of two families: GPT-Neo (learned positions, optional local windows,
biases) and Llama (rotary positions, grouped-query attention, no biases). Per query head ``h``
and query position ``t``, over keys ``s ≤ t`` (within the window, if any)::

    q_t = rot_t(n1_t W_Q + b_Q),  k_s = rot_s(n1_s W_K + b_K),  v_s = n1_s W_V + b_V
    out_t = Σ_h Σ_s A_ts v_s W_O + b_O,   A_t = softmax_s(scale · q_t·k_s)

``rot`` is RoPE (:mod:`.rotary`; the identity without it). Under grouped-query attention the key
and value heads are fewer: query head ``h`` reads key/value head ``h // (A / A_kv)``, as Hugging
Face's ``repeat_kv`` does. :func:`attention_weights` reads the weights and checks them against the
model's own pattern.

**Change bound** (the layer-wise proof, :mod:`crosscoder_lib.proofs.layerwise`): given
``‖n1_s − n̂1_s‖ ≤ δ_s``, ``out − out̂ = Σ_s A_ts (v_s − v̂_s)W_O + Σ_s (A_ts − Â_ts)(y_s − ȳ_t)`` with
``y_s = v̂_s W_O``, ``ȳ_t = Σ_s Â_ts y_s``; the first is ``≤ ‖W_V W_O‖₂ max_s δ_s``, the second
``≤ ‖A_t − Â_t‖₁ max_s ‖y_s − ȳ_t‖`` and ``‖A_t − Â_t‖₁ ≤ min(2, max_s |Δscore_ts|)`` (softmax's
ℓ∞→ℓ1 constant is ½ of the score range), ``|Δscore_ts| ≤ scale·(‖Δq_t‖‖k̂_s‖ + ‖q̂_t‖‖Δk_s‖ +
‖Δq_t‖‖Δk_s‖)``, ``‖Δq_t‖ ≤ ‖W_Q‖₂ δ_t``. **RoPE changes nothing in it**: ``rot_t`` is a rotation,
so ``‖Δq_t‖ = ‖rot_t(Δn1_t W_Q)‖ = ‖Δn1_t W_Q‖ ≤ ‖W_Q‖₂ δ_t`` and ``‖q̂_t‖`` is the norm of the
unrotated query; Cauchy–Schwarz holds for the rotated vectors as for any. **GQA** changes only
which ``W_K``, ``W_V`` a query head reads (their norms are the shared key/value head's).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from crosscoder_lib.interactions.bound import spectral_norm
from crosscoder_lib.proofs.rotary import Rotary, rotary_of

F64 = torch.float64


class AttentionWeights(NamedTuple):
    """Attention weights of every block (float64), acting on ``blocks.l.ln1.hook_normalized``.

    Shapes: ``W_Q`` ``[L, A, D, E]``, ``W_K, W_V`` ``[L, A_kv, D, E]`` (``A_kv = A`` without
    grouped-query attention), ``W_O`` ``[L, A, E, D]``, ``b_Q`` ``[L, A, E]``, ``b_K, b_V``
    ``[L, A_kv, E]``, ``b_O`` ``[L, D]`` (zeros for a bias-free checkpoint). ``scale`` multiplies
    ``q·k`` (GPT-Neo: 1; GPT-2, Llama: ``1/√d_head``); ``windows[l]`` is the local-attention window
    of block ``l`` (None: global); ``rotary`` the RoPE of queries and keys (None: no rotation).
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
    rotary: Rotary | None = None

    @property
    def group(self) -> int:
        """Query heads per key/value head (1 without grouped-query attention)."""
        return self.W_Q.shape[1] // self.W_K.shape[1]


def per_query_head(t: torch.Tensor, attn: AttentionWeights, dim: int) -> torch.Tensor:
    """Key/value-head tensor ``t`` with its head axis ``dim`` repeated for every query head of the group."""
    return t if attn.group == 1 else t.repeat_interleave(attn.group, dim=dim)


def _rotated(x_BASE: torch.Tensor, attn: AttentionWeights) -> torch.Tensor:
    return x_BASE if attn.rotary is None else attn.rotary.rotate(x_BASE)


def queries(n1_BSD: torch.Tensor, attn: AttentionWeights, block: int) -> torch.Tensor:
    """``q`` ``[B, A, S, E]``: projected, biased and rotated to each position."""
    q = torch.einsum("bsd,hde->bhse", n1_BSD, attn.W_Q[block]) + attn.b_Q[block][None, :, None]
    return _rotated(q, attn)


def keys(n1_BSD: torch.Tensor, attn: AttentionWeights, block: int) -> torch.Tensor:
    """``k`` ``[B, A, S, E]`` per query head (a key/value head repeated over its group), rotated."""
    k = torch.einsum("bsd,hde->bhse", n1_BSD, attn.W_K[block]) + attn.b_K[block][None, :, None]
    return per_query_head(_rotated(k, attn), attn, 1)


def values(n1_BSD: torch.Tensor, attn: AttentionWeights, block: int) -> torch.Tensor:
    """``v`` ``[B, A, S, E]`` per query head (never rotated)."""
    v = torch.einsum("bsd,hde->bhse", n1_BSD, attn.W_V[block]) + attn.b_V[block][None, :, None]
    return per_query_head(v, attn, 1)


def attention_scores(n1_BSD: torch.Tensor, attn: AttentionWeights, block: int) -> torch.Tensor:
    """Pre-softmax scores ``scale · q_t · k_s`` ``[B, A, S, S]`` (no mask) of inputs ``n1_BSD``."""
    q, k = queries(n1_BSD, attn, block), keys(n1_BSD, attn, block)
    return attn.scale * q @ k.transpose(-1, -2)


def _key_mask(S: int, window: int | None, device=None) -> torch.Tensor:
    t = torch.arange(S, device=device)
    mask = t[None, :] <= t[:, None]
    if window is not None:
        mask &= t[:, None] - t[None, :] < window
    return mask  # [query t, key s]


def attention_output(n1_BSD: torch.Tensor, attn: AttentionWeights, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(pattern [B, A, S, S], attention output [B, S, D])`` of inputs ``n1_BSD`` (causal, windowed)."""
    S = n1_BSD.shape[1]
    scores = attention_scores(n1_BSD, attn, block)
    pattern = scores.masked_fill(~_key_mask(S, attn.windows[block], n1_BSD.device), float("-inf")).softmax(-1)
    v = values(n1_BSD, attn, block)
    out = torch.einsum("bhts,bhse,hed->btd", pattern, v, attn.W_O[block]) + attn.b_O[block]
    return pattern, out


def _windows(bridge) -> tuple:
    cfg = getattr(getattr(bridge, "original_model", None), "config", None)
    layers = getattr(cfg, "attention_layers", None)
    if layers is None:
        return (None,) * bridge.cfg.n_layers
    return tuple(cfg.window_size if kind == "local" else None for kind in layers)


def _weights(bridge) -> list[torch.Tensor]:
    """``W_Q … b_O`` in float64; a bias the checkpoint does not have is zeros (a bias-free bridge
    raises AttributeError for ``b_Q`` instead of returning them)."""
    W = [getattr(bridge, n).detach().to(F64) for n in ("W_Q", "W_K", "W_V", "W_O")]
    shapes = {"b_Q": W[0].shape[:2] + W[0].shape[3:], "b_K": W[1].shape[:2] + W[1].shape[3:],
              "b_V": W[2].shape[:2] + W[2].shape[3:], "b_O": W[3].shape[:1] + W[3].shape[3:]}
    biases = []
    for name, shape in shapes.items():
        try:
            biases.append(getattr(bridge, name).detach().to(F64))
        except AttributeError:
            biases.append(torch.zeros(shape, dtype=F64, device=W[0].device))
    return W + biases


@torch.no_grad()
def attention_weights(bridge, probe_tokens: torch.Tensor | None = None) -> AttentionWeights:
    """The bridge's attention weights, with the score scale found by matching the model's pattern.

    The scale is the candidate (1, ``1/√d_head``) whose softmax reproduces
    ``blocks.l.attn.hook_pattern`` of every block on ``probe_tokens``; a ``ValueError`` says so
    when neither does (an attention this module does not model).
    """
    tensors = _weights(bridge)
    rotary = rotary_of(bridge)
    if probe_tokens is None:
        probe_tokens = torch.arange(min(12, bridge.cfg.d_vocab))[None]
    probe_tokens = probe_tokens.to(bridge.cfg.device)
    L = bridge.cfg.n_layers
    hooks = [f"blocks.{l}.{h}" for l in range(L) for h in ("ln1.hook_normalized", "attn.hook_pattern")]
    _, cache = bridge.run_with_cache(probe_tokens, names_filter=lambda n: n in hooks)
    windows = _windows(bridge)
    errors = {}
    for scale in (1.0, 1.0 / math.sqrt(bridge.cfg.d_head)):
        attn = AttentionWeights(*tensors, scale=scale, windows=windows, rotary=rotary)
        err = max(float((attention_output(cache[f"blocks.{l}.ln1.hook_normalized"].to(F64), attn, l)[0]
                         - cache[f"blocks.{l}.attn.hook_pattern"].to(F64)).abs().max()) for l in range(L))
        errors[scale] = err
        if err < 1e-4:
            return attn
    raise ValueError(f"no score scale reproduces the model's attention pattern (max errors {errors}); "
                     "crosscoder_lib.proofs.attention models causal (optionally windowed) softmax attention, "
                     "with learned or rotary positions, only")


def attention_change_bound(n1_hat: torch.Tensor, delta: torch.Tensor, attn: AttentionWeights, block: int) -> torch.Tensor:
    """Bound on ``‖Attn_t(n1) − Attn_t(n̂1)‖`` ``[B, S]`` given ``‖n1_s − n̂1_s‖ ≤ delta[b, s]`` (module docstring)."""
    B, S, _ = n1_hat.shape
    mask = _key_mask(S, attn.windows[block], n1_hat.device)  # [t, s]
    pattern, _ = attention_output(n1_hat, attn, block)
    W_Q, W_O = attn.W_Q[block], attn.W_O[block]
    W_K, W_V = per_query_head(attn.W_K[block], attn, 0), per_query_head(attn.W_V[block], attn, 0)
    norm_Q, norm_K, norm_VO = spectral_norm(W_Q), spectral_norm(W_K), spectral_norm(W_V @ W_O)  # [heads]
    q, k, v = queries(n1_hat, attn, block), keys(n1_hat, attn, block), values(n1_hat, attn, block)
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
