"""Compact proofs through a crosscoder (SPEC §3, §4): bounds, their soundness and tightness, length.

Four pieces, each checked numerically against the model itself:

(a) :func:`mlp_interaction_bound` — the per-token bound of SPEC §3 on the MLP interaction error
    ``ε(t) = MLP(n̂2(t)) − g(t)``, where ``g`` lets each neuron see only its dominant feature::

        ‖ε(t)‖ ≤ Σ_n ‖W_out[n]‖ · |σ(z[t,n]) − σ(p[t,n,i] + β[n])|             ("mid")
               ≤ Lip(σ) · Σ_n ‖W_out[n]‖ · Σ_{j≠i} |p[t,n,j]|                   ("lip")

    Proof: ``ε = Σ_n (σ(z_n) − σ(p_i + β_n)) W_out[n]`` and the triangle inequality; then
    ``|σ(z) − σ(z')| ≤ Lip(σ)|z − z'|`` with ``z − (p_i + β) = Σ_{j≠i} p_j``.

(b) :func:`certified_error_bound` — the layer-by-layer error decomposition of SPEC §4, carried
    from the first hookpoint to the logits and the loss. At every hookpoint ``h`` the error
    ``e_h = x_h − x̂_h`` (model activation minus the crosscoder's reconstruction) obeys

        ‖e_{h+1}‖ ≤ Lip_h · ‖e_h‖  +  ‖F_h(x̂_h) − x̂_{h+1}‖
                    propagated       explanation residual

    and for an MLP the residual splits further into the interaction ``MLP(n̂2) − g`` (bounded by
    (a)) and the single-feature error ``m̂ + g − x̂_post``. What is **certified** (a theorem, given
    the per-token inputs listed next): every hookpoint bound, the bound on the logits and on the
    loss. What is **measured per token, not proven for unseen inputs**: the starting error at the
    first hookpoint, and the explanation residuals (computed on the reconstructed path). A compact
    proof would bound those per feature instead; here they are evaluated, so this is an error
    *decomposition* with sound Lipschitz factors, not a proof shorter than brute force.
    Lipschitz factors used, all sound on the ball of the current bound around ``x̂``:

    - LayerNorm without affine (folded): ``LN(x) = √D·Px/√(‖Px‖² + D·eps)`` has Jacobian norm
      ``√D/√(‖Pu‖² + D·eps)``, so on the ball ``Lip ≤ √D/√(max(‖Px̂‖ − δ, 0)² + D·eps)`` (per
      token); the change is also capped by ``‖LN(x)‖ + ‖LN(x̂)‖ ≤ √D + ‖LN(x̂)‖``.
    - Attention (per head, softmax over keys ``s ≤ t``): ``out − out̂ = Σ_s A_ts (v_s − v̂_s)W_O
      + Σ_s (A_ts − Â_ts)(y_s − ȳ_t)`` with ``y_s = v̂_s W_O``, ``ȳ_t = Σ_s Â_ts y_s``; the first
      is ``≤ ‖W_V W_O‖₂ max_s δ_s``, the second ``≤ ‖A_t − Â_t‖₁ max_s ‖y_s − ȳ_t‖`` and
      ``‖A_t − Â_t‖₁ ≤ min(2, max_s |Δscore_ts|)`` (softmax's ℓ∞→ℓ1 constant is ½ of the score
      range), ``|Δscore_ts| ≤ scale·(‖Δq_t‖‖k̂_s‖ + ‖q̂_t‖‖Δk_s‖ + ‖Δq_t‖‖Δk_s‖)``,
      ``‖Δq_t‖ ≤ ‖W_Q‖₂ δ_t``. The attention is re-implemented from the bridge's weights and
      checked against the model's own pattern and output on the same tokens.
    - MLP: ``Lip(σ) · min(‖W_in‖₂‖W_out‖₂, Σ_n ‖W_in[:,n]‖‖W_out[n]‖)``.
    - Logits ``z = LN_f(x) W_U + b_U``: ``|Δz_v| ≤ ‖W_U[:,v]‖ ‖ΔLN_f‖``; loss (cross-entropy):
      ``|ΔCE| ≤ max_v Δz_v − min_v Δz_v ≤ 2 max_v ‖W_U[:,v] − ū‖ · ‖ΔLN_f‖``.

    The bound is compared with the actual errors at every hookpoint, on the logits and on the
    loss (soundness: the fraction of tokens where it holds, which must be 1), and reported as
    vacuous where the certified loss ``L̂ + mean bound`` is no better than ``log V`` (uniform).

(c) :func:`proof_length` — FLOPs to check a proof over ``n`` inputs: brute force (run the
    model) against the crosscoder-backed proof of SPEC §4 (per-feature work once, per-input
    error terms), with the counting conventions in its docstring.

(d) :func:`qk_split` — attention scores of reconstructed inputs ``n1 = μ + Σ_i a_i d_i`` split
    exactly into mean·mean, mean·feature, feature·mean and feature·feature parts.

Position policy: as :mod:`crosscoder_lib.lm.harvest` (``exclude_first``): the BOS position is not
reconstructed; its activations, the same for every sequence, are taken as known exactly.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from crosscoder_lib.lm.hookpoints import paper_hookpoints
from crosscoder_lib.interactions.measures import (
    active_slots_first,
    block_contributions,
    checked_ids,
    mlp_input_decoder,
    neuron_bias,
    neuron_weights,
    unpack_codes,
)
from crosscoder_lib.interactions.mlp import MLPWeights, activation, lipschitz

F64 = torch.float64


# ----------------------------------------------------------------------------------------------
# Soundness and tightness


def soundness(bound: torch.Tensor, actual: torch.Tensor, atol: float | torch.Tensor = 0.0,
              rtol: float = 1e-9) -> float:
    """Fraction of entries where ``bound + atol + rtol·|actual| ≥ actual`` (must be 1 for a sound bound).

    ``atol`` absorbs float round-off of the model's own forward pass (see the callers).
    """
    ok = bound.to(F64) + atol + rtol * actual.to(F64).abs() >= actual.to(F64)
    return float(ok.double().mean()) if ok.numel() else float("nan")


def tightness(bound: torch.Tensor, actual: torch.Tensor) -> torch.Tensor:
    """``bound / actual`` over the entries where ``actual > 0`` (1 is tight; ∞ never happens there)."""
    keep = actual > 0
    return bound[keep].to(F64) / actual[keep].to(F64)


# ----------------------------------------------------------------------------------------------
# (a) The per-token MLP interaction bound


class MLPBound(NamedTuple):
    """Per (block, token) results of :func:`mlp_interaction_bound` (float64)."""

    actual_LT: torch.Tensor
    """``‖ε(t)‖ = ‖MLP(n̂2) − g(t)‖``."""
    bound_mid_LT: torch.Tensor
    """``Σ_n ‖W_out[n]‖ |σ(z) − σ(p_i + β)|``."""
    bound_lip_LT: torch.Tensor
    """``Lip(σ) Σ_n ‖W_out[n]‖ Σ_{j≠i} |p_j|``."""

    def soundness(self, atol: float = 0.0) -> dict:
        return {"mid": soundness(self.bound_mid_LT, self.actual_LT, atol),
                "lip": soundness(self.bound_lip_LT, self.actual_LT, atol)}

    def tightness(self) -> dict:
        """Median of ``bound / actual`` over tokens with ``actual > 0``, per bound."""
        return {k: float(tightness(b, self.actual_LT).median()) if (self.actual_LT > 0).any() else float("nan")
                for k, b in (("mid", self.bound_mid_LT), ("lip", self.bound_lip_LT))}


class _FeatureWiseMLP(NamedTuple):
    mlp_out_TD: torch.Tensor  # MLP(n̂2)
    g_TD: torch.Tensor  # each neuron sees its dominant feature only
    bound_mid_T: torch.Tensor
    bound_lip_T: torch.Tensor


def _feature_wise_mlp(idx_BK, val_BK, G_HN, beta_N, mlp: MLPWeights, block: int, chunk_tokens: int) -> _FeatureWiseMLP:
    """MLP(n̂2), g and both bounds for one block, in float64, chunked over tokens.

    ``idx_BK, val_BK`` have active slots first; the dominant slot is ``argmax |p|`` over them
    (lowest slot on ties, as in :mod:`crosscoder_lib.interactions.measures`).
    """
    W_out_ND = mlp.W_out_LND[block].to(F64)
    b_out_D = mlp.b_out_LD[block].to(F64)
    w_N = W_out_ND.norm(dim=-1)
    lip = lipschitz(mlp.act_fn)
    T, K = idx_BK.shape
    out, g = torch.empty(T, W_out_ND.shape[1], dtype=F64), torch.empty(T, W_out_ND.shape[1], dtype=F64)
    b_mid, b_lip = torch.empty(T, dtype=F64), torch.empty(T, dtype=F64)
    n_active = (val_BK != 0).sum(1)
    for start in range(0, T, chunk_tokens):
        sl = slice(start, min(start + chunk_tokens, T))
        p_TNK = block_contributions(idx_BK[sl], val_BK[sl], G_HN)
        inactive = torch.arange(K)[None, :] >= n_active[sl, None]
        dom = p_TNK.abs().masked_fill(inactive[:, None, :], -1.0).argmax(-1, keepdim=True)
        p_dom = p_TNK.gather(-1, dom).squeeze(-1)
        z = p_TNK.sum(-1) + beta_N
        s_z, s_dom = activation(z, mlp.act_fn), activation(p_dom + beta_N, mlp.act_fn)
        out[sl] = s_z @ W_out_ND + b_out_D
        g[sl] = s_dom @ W_out_ND + b_out_D
        b_mid[sl] = (s_z - s_dom).abs() @ w_N
        b_lip[sl] = lip * ((p_TNK.abs().sum(-1) - p_dom.abs()) @ w_N)
    return _FeatureWiseMLP(out, g, b_mid, b_lip)


@torch.no_grad()
def mlp_interaction_bound(codes, W_dec_LHD: torch.Tensor, b_dec_LD: torch.Tensor, mlp: MLPWeights,
                          chunk_tokens: int = 256) -> MLPBound:
    """SPEC §3's bound on ``‖ε(t)‖`` for every block and token, with the actual error (see (a) above).

    ``W_dec_LHD``, ``b_dec_LD``: decoder rows and bias at the MLP-input slots in model units
    (:func:`crosscoder_lib.interactions.measures.mlp_input_decoder`). Computed in float64.
    """
    idx_BK, val_BK = unpack_codes(codes)
    W64, mlp64 = W_dec_LHD.detach().to(F64), mlp.to(dtype=F64)
    G_LHN = neuron_weights(W64, mlp64)
    beta_LN = neuron_bias(b_dec_LD.detach().to(F64), mlp64)
    idx_BK = checked_ids(idx_BK, val_BK, G_LHN.shape[1])
    idx_BK, val_BK = active_slots_first(idx_BK, val_BK.detach().to(F64))
    rows = [_feature_wise_mlp(idx_BK, val_BK, G_LHN[l], beta_LN[l], mlp64, l, chunk_tokens) for l in range(mlp.n_blocks)]
    return MLPBound(
        actual_LT=torch.stack([(r.mlp_out_TD - r.g_TD).norm(dim=-1) for r in rows]),
        bound_mid_LT=torch.stack([r.bound_mid_T for r in rows]),
        bound_lip_LT=torch.stack([r.bound_lip_T for r in rows]),
    )


# ----------------------------------------------------------------------------------------------
# Attention, re-implemented from the bridge's weights


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
                     "crosscoder_lib.proofs.bounds models causal (optionally windowed) softmax attention only")


# ----------------------------------------------------------------------------------------------
# (d) The QK split


class QKSplit(NamedTuple):
    """Scores ``[heads, S(query t), S(key s)]`` of ``n1_t = μ + f_t`` split into four exact parts."""

    mean_mean: torch.Tensor
    """``scale · (μW_Q + b_Q)·(μW_K + b_K)`` (the same for every pair)."""
    mean_feature: torch.Tensor
    """``scale · (μW_Q + b_Q)·(f_s W_K)``."""
    feature_mean: torch.Tensor
    """``scale · (f_t W_Q)·(μW_K + b_K)``."""
    feature_feature: torch.Tensor
    """``scale · (f_t W_Q)·(f_s W_K) = scale · Σ_i Σ_j a_i(t) a_j(s) (d_i W_Q)·(d_j W_K)``."""

    def total(self) -> torch.Tensor:
        return self.mean_mean + self.mean_feature + self.feature_mean + self.feature_feature


def ln1_decoder(crosscoder, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W_dec_HD, μ_D)``: decoder rows and bias at ``blocks.{block}.ln1.hook_normalized``, in model units."""
    name = f"blocks.{block}.ln1.hook_normalized"
    if name not in crosscoder.cfg.hookpoints:
        raise ValueError(f"the crosscoder does not read {name}; it reads {crosscoder.cfg.hookpoints}")
    slot = crosscoder.cfg.hookpoints.index(name)
    W_dec_HD = crosscoder.decoder_slots_LHD([slot])[0]
    return W_dec_HD, crosscoder.b_dec_XD[slot] / crosscoder.input_scale_X[slot]


def qk_split(codes, W_dec_HD: torch.Tensor, mu_D: torch.Tensor, attn: AttentionWeights, block: int) -> QKSplit:
    """The attention scores of one sequence's reconstructed ``n1`` split as in the paper's appendix.

    ``codes``: the ``S`` positions of one sequence; ``W_dec_HD``, ``mu_D``: the decoder rows and
    bias at ``blocks.{block}.ln1.hook_normalized`` in model units, so ``n1_t = μ + Σ_i a_i(t) d_i``.
    The four parts sum to :func:`attention_scores` of that ``n1`` (before the causal mask).
    The feature·feature part is formed per pair of active features through the table
    ``E[i, j] = (d_i W_Q)·(d_j W_K)`` restricted to the features active in the sequence.
    """
    idx_BK, val_BK = unpack_codes(codes)
    idx_BK = checked_ids(idx_BK, val_BK, W_dec_HD.shape[0])
    S = idx_BK.shape[0]
    W_Q, W_K = attn.W_Q[block], attn.W_K[block]  # [heads, D, d_head]
    mu = mu_D.to(F64)
    q_bar = torch.einsum("d,hde->he", mu, W_Q) + attn.b_Q[block]
    k_bar = torch.einsum("d,hde->he", mu, W_K) + attn.b_K[block]
    used, pos = torch.unique(idx_BK, return_inverse=True)  # features active in this sequence
    a_SU = torch.zeros(S, len(used), dtype=F64).index_put_((torch.arange(S)[:, None].expand_as(pos), pos),
                                                            val_BK.detach().to(F64), accumulate=True)
    d_UD = W_dec_HD.detach().to(F64)[used]
    dq_HUE = torch.einsum("ud,hde->hue", d_UD, W_Q)
    dk_HUE = torch.einsum("ud,hde->hue", d_UD, W_K)
    E_HUU = dq_HUE @ dk_HUE.transpose(-1, -2)  # feature-pair table
    heads = W_Q.shape[0]
    s = attn.scale
    mean_mean = (s * (q_bar * k_bar).sum(-1))[:, None, None].expand(heads, S, S)
    mean_feature = (s * torch.einsum("he,hue,su->hs", q_bar, dk_HUE, a_SU))[:, None, :].expand(heads, S, S)
    feature_mean = (s * torch.einsum("he,hue,tu->ht", k_bar, dq_HUE, a_SU))[:, :, None].expand(heads, S, S)
    feature_feature = s * torch.einsum("tu,huv,sv->hts", a_SU, E_HUU, a_SU)
    return QKSplit(mean_mean, mean_feature, feature_mean, feature_feature)


# ----------------------------------------------------------------------------------------------
# (b) The layer-by-layer certified bound


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


def _cross_entropy(logits_BSV: torch.Tensor, targets_BS: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits_BSV.flatten(0, 1), targets_BS.flatten(), reduction="none").view(targets_BS.shape)


class ErrorPropagation(NamedTuple):
    """Result of :func:`certified_error_bound`; per-token tensors are ``[n_seq, S]`` (float64).

    Per hookpoint (dicts keyed by hook name): ``actual`` ‖x_h − x̂_h‖, ``bound`` (certified),
    ``propagated`` (Lip·previous bound), ``residual`` (explanation residual used), ``lipschitz``
    (the local factor used; absent for the first hookpoint). For MLP outputs also ``interaction``
    (the bound (a), or the exact interaction error) and ``single_feature``. Positions before
    ``start`` (BOS) are exact (0) and excluded from the summaries.
    """

    hookpoints: list
    actual: dict
    bound: dict
    propagated: dict
    residual: dict
    lipschitz: dict
    interaction: dict
    single_feature: dict
    logit_actual: torch.Tensor
    """``max_v |z_v − ẑ_v|``: model logits vs logits of the reconstructed final residual."""
    logit_bound: torch.Tensor
    loss_actual: torch.Tensor
    """``|CE(z) − CE(ẑ)|`` per predicted token (positions ``start … S−2``)."""
    loss_bound: torch.Tensor
    loss_model: float
    loss_explained: float
    scale: dict
    """Activation scale per token (``1 + ‖x̂_h‖``; logits ``1 + max|ẑ|``; loss ``1 + CE(ẑ)``) for round-off tolerances."""
    start: int
    vocab_size: int

    @property
    def loss_upper(self) -> float:
        """Certified upper bound on the model's loss: ``L̂ + mean bound``."""
        return self.loss_explained + float(self.loss_bound[:, self.start:-1].mean())

    @property
    def vacuous(self) -> bool:
        """True when the certified loss bound is no better than a uniform guess (``log V``)."""
        return self.loss_upper >= math.log(self.vocab_size)

    def soundness(self, rtol: float = 1e-5) -> dict:
        """Fraction of tokens where each bound holds, up to float32 round-off of the model's own
        forward pass: ``rtol`` times the activation scale of the token (:attr:`scale`)."""
        out = {}
        for h in self.hookpoints:
            out[h] = soundness(self.bound[h][:, self.start:], self.actual[h][:, self.start:],
                               atol=rtol * self.scale[h][:, self.start:])
        for name, b, a in (("logits", self.logit_bound, self.logit_actual), ("loss", self.loss_bound, self.loss_actual)):
            out[name] = soundness(b[:, self.start:-1], a[:, self.start:-1], atol=rtol * self.scale[name][:, self.start:-1])
        return out

    def summary(self) -> dict:
        """Median actual error, bound and tightness (bound/actual) per hookpoint, logits and loss."""
        rows = {}
        pairs = [(h, self.bound[h][:, self.start:], self.actual[h][:, self.start:]) for h in self.hookpoints]
        pairs += [("logits", self.logit_bound[:, self.start:-1], self.logit_actual[:, self.start:-1]),
                  ("loss", self.loss_bound[:, self.start:-1], self.loss_actual[:, self.start:-1])]
        for name, b, a in pairs:
            ratio = tightness(b, a)
            rows[name] = {"actual": float(a.median()), "bound": float(b.median()),
                          "tightness": float(ratio.median()) if ratio.numel() else float("nan")}
        return rows


@torch.no_grad()
def certified_error_bound(bridge, crosscoder, mlp: MLPWeights, tokens_BS: torch.Tensor, *,
                          exclude_first: bool = True, mlp_residual: str = "exact",
                          chunk_tokens: int = 256) -> ErrorPropagation:
    """Carry the crosscoder's error from the first hookpoint to the logits and the loss (see (b)).

    ``tokens_BS``: BOS-first LongTensor ``[n_seq, S]``. The crosscoder must use the paper's
    hookpoints (``paper_hookpoints(n_blocks)``). ``mlp_residual``: ``"exact"`` evaluates the MLP
    explanation residual ``m̂ + MLP(n̂2) − x̂_post``; ``"interaction_bound"`` replaces its
    interaction part by bound (a) ("mid"), i.e. ``‖ε‖_bound + ‖m̂ + g − x̂_post‖``.
    """
    if mlp_residual not in ("exact", "interaction_bound"):
        raise ValueError(f"mlp_residual must be 'exact' or 'interaction_bound', got {mlp_residual!r}")
    L = bridge.cfg.n_layers
    hookpoints = list(crosscoder.cfg.hookpoints)
    if hookpoints != paper_hookpoints(L):
        raise ValueError(f"certified_error_bound follows the paper's layout; the crosscoder reads {hookpoints}, "
                         f"expected paper_hookpoints({L})")
    tokens_BS = tokens_BS.to(bridge.cfg.device)
    n_seq, S = tokens_BS.shape
    start = 1 if exclude_first else 0
    if S - start < 2:
        raise ValueError("sequences are too short: need at least two positions after the excluded BOS")
    eps = float(bridge.cfg.eps)
    attn = attention_weights(bridge, tokens_BS[:1])

    # The model: every hookpoint at every position, its patterns and its logits.
    wanted = set(hookpoints) | {f"blocks.{l}.attn.hook_pattern" for l in range(L)}
    logits, cache = bridge.run_with_cache(tokens_BS, names_filter=lambda n: n in wanted)
    x = {h: cache[h].to(F64) for h in hookpoints}
    for l in range(L):  # the proof's attention must be the model's
        pat, _ = attention_output(x[f"blocks.{l}.ln1.hook_normalized"], attn, l)
        err = float((pat - cache[f"blocks.{l}.attn.hook_pattern"].to(F64)).abs().max())
        if err > 1e-4:
            raise ValueError(f"block {l}: the re-implemented attention pattern differs from the model's by {err:.2e}")

    # The explanation: the crosscoder's reconstruction (BOS position taken as known).
    was_training = crosscoder.training
    crosscoder.eval()
    try:
        acts = torch.stack([cache[h][:, start:] for h in hookpoints], dim=2).flatten(0, 1)
        codes = crosscoder.encode(acts.to(crosscoder.W_dec_HXD.device).float())
        recon = crosscoder.decode(codes).to(F64).view(n_seq, S - start, len(hookpoints), -1)
        W_dec_LHD, b_dec_LD = mlp_input_decoder(crosscoder)
    finally:
        crosscoder.train(was_training)
    x_hat = {}
    for i, h in enumerate(hookpoints):
        x_hat[h] = x[h].clone()
        x_hat[h][:, start:] = recon[:, :, i]

    actual = {h: (x[h] - x_hat[h]).norm(dim=-1) for h in hookpoints}
    bound, prop, resid, lip, inter, single = {}, {}, {}, {}, {}, {}
    bound[hookpoints[0]] = actual[hookpoints[0]].clone()  # the starting error (measured)
    mlp64 = mlp.to(dtype=F64)
    W_in, W_out = mlp64.W_in_LDN, mlp64.W_out_LND
    lip_sigma = lipschitz(mlp.act_fn)
    mlp_lip = lip_sigma * torch.minimum(
        spectral_norm(W_in) * spectral_norm(W_out),
        (W_in.norm(dim=1) * W_out.norm(dim=2)).sum(-1))  # [L]
    if mlp_residual == "interaction_bound":
        idx_BK, val_BK = unpack_codes(codes)
        G_LHN = neuron_weights(W_dec_LHD.detach().to(F64), mlp64)
        beta_LN = neuron_bias(b_dec_LD.detach().to(F64), mlp64)
        idx_BK = checked_ids(idx_BK, val_BK, G_LHN.shape[1])
        idx_BK, val_BK = active_slots_first(idx_BK, val_BK.detach().to(F64))

    def padded(t_TD: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
        out = fill.clone()
        out[:, start:] = t_TD.view(n_seq, S - start, *t_TD.shape[1:])
        return out

    for l in range(L):
        pre, ln1, mid, ln2 = (f"blocks.{l}.{s}" for s in
                              ("hook_resid_pre", "ln1.hook_normalized", "hook_resid_mid", "ln2.hook_normalized"))
        post = hookpoints[4 * l + 4]
        # LayerNorm 1
        prop[ln1], lip[ln1] = layer_norm_change_bound(x_hat[pre], bound[pre], eps)
        resid[ln1] = (layer_norm(x_hat[pre], eps) - x_hat[ln1]).norm(dim=-1)
        bound[ln1] = prop[ln1] + resid[ln1]
        # Attention (with the residual connection from resid_pre)
        _, attn_out = attention_output(x_hat[ln1], attn, l)
        prop[mid] = bound[pre] + attention_change_bound(x_hat[ln1], bound[ln1], attn, l)
        resid[mid] = (x_hat[pre] + attn_out - x_hat[mid]).norm(dim=-1)
        bound[mid] = prop[mid] + resid[mid]
        # LayerNorm 2
        prop[ln2], lip[ln2] = layer_norm_change_bound(x_hat[mid], bound[mid], eps)
        resid[ln2] = (layer_norm(x_hat[mid], eps) - x_hat[ln2]).norm(dim=-1)
        bound[ln2] = prop[ln2] + resid[ln2]
        # MLP (with the residual connection from resid_mid)
        lip[post] = mlp_lip[l].expand(n_seq, S)
        prop[post] = bound[mid] + mlp_lip[l] * bound[ln2]
        mlp_out = activation(x_hat[ln2] @ W_in[l] + mlp64.b_in_LN[l], mlp.act_fn) @ W_out[l] + mlp64.b_out_LD[l]
        exact = (x_hat[mid] + mlp_out - x_hat[post]).norm(dim=-1)
        if mlp_residual == "exact":
            resid[post] = exact
        else:
            fw = _feature_wise_mlp(idx_BK, val_BK, G_LHN[l], beta_LN[l], mlp64, l, chunk_tokens)
            zero = torch.zeros(n_seq, S, dtype=F64)
            inter[post] = padded(fw.bound_mid_T, zero)
            g = padded(fw.g_TD, x_hat[post] - x_hat[mid])  # at BOS: exact, so no single-feature error
            single[post] = (x_hat[mid] + g - x_hat[post]).norm(dim=-1)
            # Guard: at BOS positions the exact residual is 0 and there is no feature-wise split.
            resid[post] = inter[post] + single[post]
        bound[post] = prop[post] + resid[post]

    # Logits and loss
    last = hookpoints[-1]
    W_U, b_U = bridge.W_U.detach().to(F64), bridge.b_U.detach().to(F64)
    d_ln, lip["logits"] = layer_norm_change_bound(x_hat[last], bound[last], eps)
    col = W_U.norm(dim=0)
    spread = (W_U - W_U.mean(1, keepdim=True)).norm(dim=0).max()
    logit_bound = col.max() * d_ln
    loss_bound = 2 * spread * d_ln
    logits_hat = layer_norm(x_hat[last], eps) @ W_U + b_U
    z = logits.to(F64)
    logit_actual = (z - logits_hat).abs().amax(-1)
    targets = tokens_BS[:, 1:]
    ce, ce_hat = _cross_entropy(z[:, :-1], targets), _cross_entropy(logits_hat[:, :-1], targets)
    pad = torch.zeros(n_seq, 1, dtype=F64)
    loss_actual = torch.cat([(ce - ce_hat).abs(), pad], 1)
    scale = {h: 1 + x_hat[h].norm(dim=-1) for h in hookpoints}
    scale["logits"] = 1 + logits_hat.abs().amax(-1)
    scale["loss"] = 1 + torch.cat([ce_hat, pad], 1)
    return ErrorPropagation(
        hookpoints=hookpoints, actual=actual, bound=bound, propagated=prop, residual=resid, lipschitz=lip,
        interaction=inter, single_feature=single, logit_actual=logit_actual, logit_bound=logit_bound,
        loss_actual=loss_actual, loss_bound=loss_bound,
        loss_model=float(ce[:, start:].mean()), loss_explained=float(ce_hat[:, start:].mean()),
        scale=scale, start=start, vocab_size=W_U.shape[1],
    )


# ----------------------------------------------------------------------------------------------
# (c) Proof length


class ProofLength(NamedTuple):
    """FLOPs to check a proof over each number of inputs in ``n_inputs`` (see :func:`proof_length`)."""

    n_inputs: torch.Tensor
    brute_force: torch.Tensor
    crosscoder: torch.Tensor
    crosscoder_once: float
    """The per-feature part, paid once."""
    crosscoder_per_input: float
    brute_per_input: float

    @property
    def crossover(self) -> float:
        """Inputs beyond which the crosscoder-backed proof is shorter (inf if never)."""
        gap = self.brute_per_input - self.crosscoder_per_input
        return self.crosscoder_once / gap if gap > 0 else float("inf")


def forward_flops(n_blocks: int, d_model: int, d_mlp: int, n_heads: int, d_head: int, vocab: int, seq: int) -> int:
    """Matrix-multiply FLOPs (2 per multiply-add) of one forward pass over ``seq`` tokens.

    Per token and block: Q, K, V, O projections ``2·4·D·heads·d_head`` and the MLP ``2·2·D·N``; the
    unembedding ``2·D·V``; per block the scores and the mixing ``2·2·heads·S²·d_head`` (PyTorch
    computes the full square before masking). LayerNorms, softmax and activations are not counted
    (lower-order). This is what ``torch.utils.flop_counter`` counts on the model (tested).
    """
    per_token = n_blocks * (2 * 4 * d_model * n_heads * d_head + 2 * 2 * d_model * d_mlp) + 2 * d_model * vocab
    return seq * per_token + n_blocks * 2 * 2 * n_heads * seq * seq * d_head


def proof_length(n_inputs, *, n_blocks: int, d_model: int, d_mlp: int, n_heads: int, d_head: int, vocab: int,
                 seq: int, n_features: int, k: int, n_slots: int | None = None) -> ProofLength:
    """Proof length in FLOPs as a function of the number of inputs (sequences of ``seq`` tokens).

    **Brute force**: run the model on every input, ``n · forward_flops``.

    **Crosscoder-backed** (SPEC §4's decomposition, with these conventions):

    - once, per feature: ``G_l = W_dec[:, slot(l)] W_in`` and each feature's single-feature MLP
      transition back to the residual stream (``2·L·H·D·N`` each); its OV image per block
      (``2·L·H·D·D``); the QK feature-pair table ``E[i, j]`` per head (``2·L·heads·H²·d_head``)
      and its mean·feature rows; the Lipschitz factors (spectral norms, ``≈ 2·L·(2·D·N + 4·D·D)``
      per power-iteration step, 20 steps).
    - per input token: its codes (the encoder, ``2·X·D·H``); the MLP interaction terms over its
      active features (``L·N·k`` contributions, ``≈ 4`` FLOPs each); the attention score of each
      earlier token from the pair table (``L·heads·S·k²`` look-ups, 2 FLOPs each); and the
      error recurrence (a few FLOPs per hookpoint, with ``O(k·D)`` norms of reconstructions).

    Counting is for comparison, not a measured run: the point is the shape — a large fixed cost
    and a per-input slope, against brute force's slope — and where they cross.
    """
    n = torch.as_tensor(n_inputs, dtype=F64)
    L, D, N, H = n_blocks, d_model, d_mlp, n_features
    X = n_slots if n_slots is not None else 4 * L + 1
    brute = float(forward_flops(L, D, N, n_heads, d_head, vocab, seq))
    once = (2 * L * H * D * N) * 2 + 2 * L * H * D * D + 2 * L * n_heads * H * H * d_head \
        + 2 * 2 * L * n_heads * H * D * d_head + 20 * 2 * L * (2 * D * N + 4 * D * D)
    per_token = 2 * X * D * H + 4 * L * N * k + 2 * L * n_heads * seq * k * k + X * (2 * k * D + 10)
    per_input = float(seq * per_token)
    return ProofLength(n, n * brute, once + n * per_input, float(once), per_input, brute)
