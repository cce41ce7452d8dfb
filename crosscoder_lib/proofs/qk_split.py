"""The QK split (the paper's appendix): attention scores of reconstructed inputs, split exactly.

With ``n1_t = μ + f_t`` and ``f_t = Σ_i a_i(t) d_i`` (the crosscoder's reconstruction at
``blocks.l.ln1.hook_normalized``), the score ``scale · q_t · k_s`` splits into mean·mean,
mean·feature, feature·mean and feature·feature parts; the last runs through the feature-pair table
``E[i, j] = (d_i W_Q)·(d_j W_K)``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from crosscoder_lib.interactions.codes import checked_codes
from crosscoder_lib.proofs.attention import AttentionWeights

F64 = torch.float64


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
    idx_BK, val_BK = checked_codes(codes, W_dec_HD.shape[0])
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

