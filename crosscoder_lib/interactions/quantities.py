"""The aggregates of the MLP interaction term: dominant share, pairwise matrix, per-token scores.

SPEC §3, over each token's active features only (:mod:`.engine`'s passes). Every function takes
codes already read (:func:`crosscoder_lib.interactions.codes.read_codes`), the magnitudes
``|G_LHN|`` and, where a neuron's reach into the residual stream weighs in, ``w_LN = ‖W_out[l][n]‖``
(which turns a pre-activation error into a residual-stream error bound, SPEC §3's bound);
:class:`crosscoder_lib.interactions.object.MLPInteractions` supplies and caches them.

**Pair weights.** The matrix and the scores weigh each other feature ``j`` of a neuron whose
dominant feature is ``i`` by ``|p_j|``, so that ``Lip(σ)·T_l(t)`` bounds the block's interaction
error (:mod:`.bound`'s ``lip`` form). For a gated MLP the dominant feature is still the one of
``|G| = |G_gate| + |G_up|`` (the penalty's), but ``Σ_{j≠i} c_j`` is no bound: the error is bilinear,
it grows with the dominant feature's own size. There the weights are the certified
``c'_j / Lip = B̄ |p_gate,j| + (Ā / Lip) |p_up,j|`` with ``Ā = Σ_v |p_gate,v| + |β_gate|`` and
``B̄ = Σ_v |p_up,v| + |β_up|`` (:class:`CertifiedWeights`): ``Σ_{j≠i} c'_j = Ā S_up + Lip B̄ S_gate``
bounds both of :mod:`.bound`'s triangle forms for any ``i`` (``|a| + S_gate ≤ Ā``, ``|b| + S_up ≤ B̄``
and ``|σ(a)| ≤ |a|``), so ``Lip(σ)·T_l(t)`` bounds the error for both kinds, and with ``W_up = 0``,
``b_up = 1`` (``B̄ = 1``, ``p_up = 0``) the weights are ``|p|`` exactly. A gate whose σ does not
satisfy ``|σ(x)| ≤ |x|`` (a sigmoid) takes ``|σ(a)| ≤ |σ(0)| + Lip Ā`` instead: ``Ā / Lip`` becomes
``Ā + |σ(0)| / Lip``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from crosscoder_lib.interactions.codes import ActiveCodes
from crosscoder_lib.interactions.engine import Chunk, abs_contributions, make_plan, passes, share_sum


class InteractionMatrix(NamedTuple):
    """Pairwise interactions of :func:`interaction_matrix`."""

    per_block_LHH: torch.Tensor
    """``M_l[i, j]``, averaged over tokens, one matrix per block."""
    total_HH: torch.Tensor
    """``M[i, j] = Σ_l M_l[i, j]``."""
    n_tokens: int
    """Tokens averaged over (to merge results of several batches: weight each by it)."""


class TokenScores(NamedTuple):
    """Per-token interaction scores of :func:`token_interaction_scores`."""

    per_block_LT: torch.Tensor
    """``T_l(t) = Σ_n ‖W_out[l][n]‖ (Σ_v |p| − max_v |p|)``."""
    total_T: torch.Tensor
    """``T(t) = Σ_l T_l(t)``."""


class CertifiedWeights(NamedTuple):
    """A gated MLP's pair weights ``c'_j / Lip = B̄ |p_gate,j| + (Ā / Lip) |p_up,j|`` (module docstring)."""

    absG: tuple
    """``(|G_gate|, |G_up|)``, each ``[L, H, N]``."""
    abs_beta: tuple
    """``(|β_gate|, |β_up|)``, each ``[L, N]``."""
    lip: float
    """``Lip(σ)`` of the gate's activation."""
    sigma0: float | None = None
    """``|σ(0)|`` when σ does not satisfy ``|σ(x)| ≤ |x|`` (module docstring), else None."""

    def of_chunk(self, c: Chunk, buf_gate: torch.Tensor, buf_up: torch.Tensor) -> torch.Tensor:
        """``[n, k, N]`` weights of the chunk's slots (written into ``buf_gate``)."""
        l = c.block
        apg = abs_contributions(self.absG[0][l], c.idx_cK, c.vabs_cK, buf_gate)
        apu = abs_contributions(self.absG[1][l], c.idx_cK, c.vabs_cK, buf_up)
        A_bar, B_bar = apg.sum(1) + self.abs_beta[0][l], apu.sum(1) + self.abs_beta[1][l]
        up = A_bar / self.lip if self.sigma0 is None else A_bar + self.sigma0 / self.lip
        return apg.mul_(B_bar[:, None, :]).add_(apu.mul_(up[:, None, :]))


def _plan(active: ActiveCodes, absG_LHN: torch.Tensor, chunk_tokens: int | None):
    vabs_BK = active.val_BK.detach().abs().to(absG_LHN.dtype)
    return make_plan(active.idx_BK, vabs_BK, absG_LHN.shape[2], chunk_tokens)


def _pair_weights(pairs: CertifiedWeights | None, plan, absG_LHN: torch.Tensor):
    """``chunk -> [n, k, N]`` weight of each slot as the other feature of a pair: ``|p|``, or ``pairs``'."""
    if pairs is None:
        return lambda c: c.absp_cKN
    bufs = absG_LHN.new_empty(plan.buffer_elements), absG_LHN.new_empty(plan.buffer_elements)
    return lambda c: pairs.of_chunk(c, *bufs)


@torch.no_grad()
def dominant_share(active: ActiveCodes, absG_LHN: torch.Tensor, chunk_tokens: int | None = None) -> torch.Tensor:
    """Mean over ``(l, t, n)`` of ``max_v |p[l,t,n,v]| / Σ_v |p[l,t,n,v]|`` (1 where the sum is 0).

    In ``[1/a_t, 1]`` for a token with ``a_t`` active features; 1 when one feature is active.
    """
    L, _, N = absG_LHN.shape
    total = sum(share_sum(c.sum_cN, c.max_cN) for c in passes(_plan(active, absG_LHN, chunk_tokens), absG_LHN))
    return total / (L * active.idx_BK.shape[0] * N)


@torch.no_grad()
def interaction_matrix(active: ActiveCodes, absG_LHN: torch.Tensor, w_LN: torch.Tensor,
                       chunk_tokens: int | None = None, pairs: CertifiedWeights | None = None) -> InteractionMatrix:
    """Pairwise interactions ``M_l[i, j] = (1/T) Σ_t Σ_n [i dominant at (l,t,n)] ‖W_out[l][n]‖ |p[l,t,n,j]|``
    (``pairs``: a gated MLP's certified weights in place of ``|p|``, module docstring).

    Summed over ``j ≠ i`` active at ``t``, accumulated over every neuron that shares the dominant
    feature ``i`` (never overwritten), averaged over the ``T`` tokens, per block and summed over
    blocks. Per token the neuron sum is a ``[K, N] @ [N, K]`` product (dominant-slot one-hot times
    weighted ``|p|``), so cost is ``O(T·K²·N)`` and only ``T·K²`` entries are scattered (index_add).
    """
    L, H, N = absG_LHN.shape
    B, K = active.idx_BK.shape
    M_LHH = torch.zeros(L, H, H, dtype=absG_LHN.dtype, device=absG_LHN.device)
    active_BK = active.val_BK != 0
    onehot = None
    plan = _plan(active, absG_LHN, chunk_tokens)
    weights = _pair_weights(pairs, plan, absG_LHN)
    for c in passes(plan, absG_LHN, dominant=True):
        n, k = c.idx_cK.shape
        if onehot is None or onehot.numel() < n * k * N:
            onehot = absG_LHN.new_empty(n * K * N)
        slots = torch.arange(k, device=absG_LHN.device)
        # dom[t, a, n] = w_n · [slot a is dominant at (t, n)]
        dom = onehot[: n * k * N].view(n, k, N)
        dom.copy_(c.dominant_cN[:, None, :].expand(n, k, N)).sub_(slots[None, :, None]).eq_(0).mul_(w_LN[c.block])
        pair_cKK = torch.bmm(dom, weights(c).transpose(1, 2))  # [t, dominant slot a, other slot j]
        act = active_BK[c.tokens, :k]
        keep = (slots[:, None] != slots[None, :])[None] & act[:, None, :] & act[:, :, None]
        flat = (c.idx_cK[:, :, None] * H + c.idx_cK[:, None, :])[keep]
        M_LHH[c.block].view(-1).index_add_(0, flat, pair_cKK[keep])
    M_LHH /= max(B, 1)
    return InteractionMatrix(per_block_LHH=M_LHH, total_HH=M_LHH.sum(0), n_tokens=B)


@torch.no_grad()
def token_interaction_scores(active: ActiveCodes, absG_LHN: torch.Tensor, w_LN: torch.Tensor,
                             chunk_tokens: int | None = None, pairs: CertifiedWeights | None = None) -> TokenScores:
    """Per-token interaction ``T(t) = Σ_l Σ_n ‖W_out[l][n]‖ Σ_{j≠i} |p[l,t,n,j]|`` (i dominant at (l,t,n);
    ``pairs``: a gated MLP's certified weights in place of ``|p|``, module docstring).

    ``Σ_{j≠i} |p| = Σ_v |p| − max_v |p|``; ``Lip(σ)·T_l(t)`` bounds block ``l``'s MLP interaction
    error of token ``t``, so ``Lip(σ)·T(t)`` bounds their sum over blocks (SPEC §3).
    """
    scores_LT = absG_LHN.new_zeros(absG_LHN.shape[0], active.idx_BK.shape[0])
    plan = _plan(active, absG_LHN, chunk_tokens)
    weights = _pair_weights(pairs, plan, absG_LHN)
    for c in passes(plan, absG_LHN, dominant=pairs is not None):
        if pairs is None:
            off_cN = c.sum_cN - c.max_cN
        else:
            wp = weights(c)
            off_cN = wp.sum(1) - wp.gather(1, c.dominant_cN[:, None, :]).squeeze(1)
        scores_LT[c.block, c.tokens] = off_cN @ w_LN[c.block]
    return TokenScores(per_block_LT=scores_LT, total_T=scores_LT.sum(0))
