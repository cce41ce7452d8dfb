"""The QK split (the paper's appendix): attention scores of reconstructed inputs, split exactly.

With ``n1_t = μ + f_t`` and ``f_t = Σ_i a_i(t) d_i`` (the crosscoder's reconstruction at
``blocks.l.ln1.hook_normalized``), the score ``scale · q_t · k_s`` is bilinear in ``(n1_t, n1_s)``,
so it splits exactly into mean·mean, mean·feature, feature·mean and feature·feature parts; the last
runs through the feature-pair table ``E[i, j] = (d_i W_Q)·(d_j W_K)``.

**Rotary positions** (Llama): ``q_t = rot_t(n1_t W_Q + b_Q)`` and ``k_s = rot_s(n1_s W_K + b_K)``
are still linear in the inputs (:mod:`.rotary`), so the split stays exact, but every part now
depends on both positions: ``rot_t(x)·rot_s(y) = x·rot_{s−t}(y)``, and the pair table is one per
offset, ``E_{s−t}[i, j] = (d_i W_Q)·rot_{s−t}(d_j W_K)``. Here each part is formed from the
per-feature images ``d_i W_Q``, ``d_j W_K``: summed over a position's active features, rotated
to the position, then paired, which is the table's sum without forming it for every offset.
**Grouped-query attention**: a query head pairs with the key head of its group.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from crosscoder_lib.interactions.codes import checked_codes
from crosscoder_lib.proofs.attention import AttentionWeights, per_query_head

F64 = torch.float64


class QKSplit(NamedTuple):
    """Scores ``[heads, S(query t), S(key s)]`` of ``n1_t = μ + f_t`` split into four exact parts
    (``q̄ = μW_Q + b_Q``, ``k̄ = μW_K + b_K``; with RoPE each factor is rotated to its position)."""

    mean_mean: torch.Tensor
    """``scale · q̄·k̄`` (the same for every pair without RoPE)."""
    mean_feature: torch.Tensor
    """``scale · q̄·(f_s W_K)``."""
    feature_mean: torch.Tensor
    """``scale · (f_t W_Q)·k̄``."""
    feature_feature: torch.Tensor
    """``scale · (f_t W_Q)·(f_s W_K) = scale · Σ_i Σ_j a_i(t) a_j(s) E[i, j]`` (``E_{s−t}`` with RoPE)."""

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
    Without RoPE the feature·feature part is formed per pair of active features through the table
    ``E[i, j] = (d_i W_Q)·(d_j W_K)`` restricted to the features active in the sequence; with RoPE
    from the rotated per-position sums of the same images (module docstring).
    """
    idx_BK, val_BK = checked_codes(codes, W_dec_HD.shape[0])
    S = idx_BK.shape[0]
    W_Q, W_K = attn.W_Q[block], per_query_head(attn.W_K[block], attn, 0)  # [heads, D, d_head]
    mu = mu_D.detach().to(F64)
    q_bar = torch.einsum("d,hde->he", mu, W_Q) + attn.b_Q[block]
    k_bar = torch.einsum("d,hde->he", mu, W_K) + per_query_head(attn.b_K[block], attn, 0)
    used, pos = torch.unique(idx_BK, return_inverse=True)  # features active in this sequence
    rows = torch.arange(S, device=pos.device)[:, None].expand_as(pos)
    a_SU = torch.zeros(S, len(used), dtype=F64, device=pos.device).index_put_((rows, pos), val_BK.detach().to(F64),
                                                                             accumulate=True)
    d_UD = W_dec_HD.detach().to(F64)[used]
    dq_HUE = torch.einsum("ud,hde->hue", d_UD, W_Q)
    dk_HUE = torch.einsum("ud,hde->hue", d_UD, W_K)
    if attn.rotary is not None:
        return _rotary_split(a_SU, q_bar, k_bar, dq_HUE, dk_HUE, attn)
    E_HUU = dq_HUE @ dk_HUE.transpose(-1, -2)  # feature-pair table
    heads = W_Q.shape[0]
    s = attn.scale
    mean_mean = (s * (q_bar * k_bar).sum(-1))[:, None, None].expand(heads, S, S)
    mean_feature = (s * torch.einsum("he,hue,su->hs", q_bar, dk_HUE, a_SU))[:, None, :].expand(heads, S, S)
    feature_mean = (s * torch.einsum("he,hue,tu->ht", k_bar, dq_HUE, a_SU))[:, :, None].expand(heads, S, S)
    feature_feature = s * torch.einsum("tu,huv,sv->hts", a_SU, E_HUU, a_SU)
    return QKSplit(mean_mean, mean_feature, feature_mean, feature_feature)


def _rotary_split(a_SU: torch.Tensor, q_bar_AE: torch.Tensor, k_bar_AE: torch.Tensor, dq_AUE: torch.Tensor,
                  dk_AUE: torch.Tensor, attn: AttentionWeights) -> QKSplit:
    """The four parts with each factor rotated to its position: ``rot_t(q̄)``, ``rot_t(f_t W_Q)``, ... ."""
    S = a_SU.shape[0]
    rotate = attn.rotary.rotate
    q_bar_ASE = rotate(q_bar_AE[:, None, :].expand(-1, S, -1))
    k_bar_ASE = rotate(k_bar_AE[:, None, :].expand(-1, S, -1))
    fq_ASE = rotate(torch.einsum("tu,hue->hte", a_SU, dq_AUE))
    fk_ASE = rotate(torch.einsum("su,hue->hse", a_SU, dk_AUE))
    s = attn.scale
    pair = lambda x, y: s * x @ y.transpose(-1, -2)  # [heads, t, s]
    return QKSplit(pair(q_bar_ASE, k_bar_ASE), pair(q_bar_ASE, fk_ASE), pair(fq_ASE, k_bar_ASE), pair(fq_ASE, fk_ASE))
