"""MLP ablation fidelity (the paper's Figure 2): how much of an MLP's effect survives when each
neuron sees only some of its features.

For block ``l`` and each token, the crosscoder's codes give per-feature pre-activation
contributions ``p[t, n, v]`` (:mod:`crosscoder_lib.interactions.decoder`). A *scheme* chooses, for every
``(t, n)`` independently, which active features' contributions the neuron keeps:

=================  ===========================================================================
``none``           all active features (the full reconstruction)
``drop_random``    all but one active feature drawn uniformly at random (seeded)
``drop_second``    all but the second largest ``|p|`` (nothing dropped with one active feature)
``drop_largest``   all but the dominant feature ``argmax_v |p|``
``keep_largest``   only the dominant feature
``zero``           none (only the bias ``β``): the baseline
=================  ===========================================================================

The MLP is recomputed from ``z[t, n] = Σ_{v kept} p[t, n, v] + β[n]`` and ``blocks.l.hook_resid_post``
is replaced by ``resid_mid̂ + σ(z) W_out + b_out``, with ``resid_mid̂`` the crosscoder's
reconstruction of ``blocks.l.hook_resid_mid``. A gated MLP keeps the same features in both
branches (a neuron that saw one feature in its gate and another in its up branch would compute an
interaction), ranked by its combined contribution ``c = |p_gate| + |p_up|`` (the dominant feature of
the penalty and the bound): ``z_gate`` and ``z_up`` are each recomputed from the kept features' ``p_gate``
and ``p_up`` plus their biases, and the MLP output is ``(σ(z_gate) ⊙ z_up) W_out + b_out``. With ``L``
the mean next-token loss,

    Φ(scheme) = 1 − (L_scheme − L_model) / (L_zero − L_model)

so ``Φ(zero) = 0`` and a patch that changes nothing scores 1. Positions follow the harvest policy
(``exclude_first``: the BOS position is neither patched nor scored), as in
:mod:`crosscoder_lib.crosscoder.evaluation` (the loop is :func:`crosscoder_lib.lm.patching.patched_losses`).
The dominant feature is the one of :mod:`crosscoder_lib.interactions.engine` (lowest slot on ties);
padded slots are never features and are never dropped or kept. Blocks are the model's (``8 … 11``
for a crosscoder over a window, :func:`crosscoder_lib.lm.hookpoints.hookpoint_blocks`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import torch

from crosscoder_lib.interactions.decoder import block_contributions
from crosscoder_lib.interactions.engine import dominant_slots
from crosscoder_lib.interactions.mlp import AnyMLP
from crosscoder_lib.interactions.object import MLPInteractions
from crosscoder_lib.lm.harvest import harvest
from crosscoder_lib.lm.hookpoints import hookpoint_blocks, resid_mid_slots
from crosscoder_lib.lm.patching import patched_losses, replace_hook

SCHEMES = ("none", "drop_random", "drop_second", "drop_largest", "keep_largest")
ALL_SCHEMES = SCHEMES + ("zero",)


def _check_schemes(schemes) -> None:
    for s in schemes:
        if s not in ALL_SCHEMES:
            raise ValueError(f"unknown ablation scheme {s!r}; choose one of {ALL_SCHEMES}")


def _ranked_slots(p_TNK: torch.Tensor, n_active_T: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Slots of the largest and second-largest ``|p|`` among each token's active slots ``0 … a_t−1``
    (lowest slot on ties; meaningless for the second where fewer than two slots are active)."""
    score = p_TNK.abs()
    first = dominant_slots(score, n_active_T)
    return first, dominant_slots(score.scatter(-1, first[..., None], -2.0), n_active_T)


def keep_mask(p_TNK: torch.Tensor, n_active_T: torch.Tensor, scheme: str,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """Which contributions each neuron keeps under ``scheme``: a bool ``[T, N, K]``, ranked by ``|p_TNK|``
    (a gated MLP passes its combined contributions ``c``).

    Token ``t``'s active features are slots ``0 … n_active_T[t] − 1`` (see
    :func:`crosscoder_lib.interactions.codes.read_codes`). ``drop_random`` draws one uniform
    ``u[t, n]`` per neuron from ``generator`` and drops active slot ``⌊u · a_t⌋``.
    """
    _check_schemes((scheme,))
    T, N, K = p_TNK.shape
    slots_K = torch.arange(K, device=p_TNK.device)
    active = (slots_K[None, :] < n_active_T[:, None])[:, None, :].expand(T, N, K)
    if scheme == "none":
        return active.clone()
    if scheme == "zero":
        return torch.zeros_like(active)
    first, second = _ranked_slots(p_TNK, n_active_T)
    has_any = (n_active_T > 0)[:, None]
    if scheme == "keep_largest":
        return (slots_K == first[..., None]) & has_any[..., None]
    if scheme == "drop_largest":
        target = first
    elif scheme == "drop_second":
        target = torch.where((n_active_T >= 2)[:, None], second, -1)
    else:  # drop_random
        u = torch.rand(T, N, generator=generator, device="cpu").to(p_TNK.device)
        target = (u * n_active_T[:, None]).long().clamp_max(K - 1)
        target = torch.where(has_any, target, -1)
    return active & (slots_K != target[..., None])


def fidelity(loss_scheme: float, loss_model: float, loss_zero: float) -> float:
    """``Φ = 1 − (L_scheme − L_model) / (L_zero − L_model)`` (nan when ``L_zero == L_model``)."""
    gap = loss_zero - loss_model
    return 1.0 - (loss_scheme - loss_model) / gap if gap != 0 else float("nan")


class AblationResult(NamedTuple):
    """Fidelity of every scheme at one block (``._asdict()`` is JSON-ready)."""

    block: int
    loss_model: float
    """Mean next-token loss of the unmodified model."""
    loss: dict
    """Scheme -> mean loss with the block's ``resid_post`` patched (includes ``"zero"``)."""
    fidelity: dict
    """Scheme -> Φ (``"zero"`` is 0 by definition)."""
    n_tokens: int
    """Predictions averaged over."""
    seed: int


def _position(interactions: MLPInteractions, block: int) -> int:
    if block not in interactions.blocks:
        raise ValueError(f"block {block} out of range: the crosscoder's hookpoints cover blocks {list(interactions.blocks)}")
    return interactions.blocks.index(block)


@torch.no_grad()
def scheme_resid_post(codes, interactions: MLPInteractions, block: int, schemes=ALL_SCHEMES,
                      generator: torch.Generator | None = None, recon_BXD: torch.Tensor | None = None,
                      chunk_tokens: int = 256) -> dict[str, torch.Tensor]:
    """Scheme -> patched ``resid_post`` ``[T, D]`` of model block ``block`` for tokens with ``codes``
    (see module docstring).

    ``interactions``: ``MLPInteractions.of(crosscoder, mlp)`` (its ``G`` and ``β`` are reused over
    calls). ``recon_BXD`` (the crosscoder's reconstruction of these codes) is decoded when not given.
    Work is chunked over tokens, so memory is ``chunk_tokens · N · K`` per input matrix plus ``T · N``
    per scheme and input matrix. ``drop_random`` draws once per (chunk, scheme), for every kind.
    """
    _check_schemes(schemes)
    crosscoder = interactions.crosscoder
    if crosscoder is None:
        raise ValueError("ablation patches the crosscoder's resid_mid reconstruction: build the interactions "
                         "with MLPInteractions.of(crosscoder, mlp)")
    l = _position(interactions, block)
    W_dec_LHD = interactions.W_dec_LHD
    mlp = interactions.mlp.to(device=W_dec_LHD.device, dtype=W_dec_LHD.dtype)
    G = tuple(G_m[l] for G_m in interactions.G)
    rank_HN = interactions.absG_LHN[l]
    idx_BK, val_BK = interactions.read(codes)
    val_BK = val_BK.to(rank_HN.dtype)
    n_active_T = (val_BK != 0).sum(1)
    T = idx_BK.shape[0]
    z = {s: tuple(b[l].expand(T, -1).clone() for b in interactions.beta) for s in schemes}
    for start in range(0, T, chunk_tokens):
        sl = slice(start, min(start + chunk_tokens, T))
        p = [block_contributions(idx_BK[sl], val_BK[sl], G_HN) for G_HN in G]
        # |val|·|G| (standard: exactly |p|; gated: c, the engine's ranking)
        rank_TNK = block_contributions(idx_BK[sl], val_BK[sl].abs(), rank_HN)
        for s in schemes:
            if s != "zero":
                keep = keep_mask(rank_TNK, n_active_T[sl], s, generator)
                for z_m, p_m in zip(z[s], p):
                    z_m[sl] += (p_m * keep).sum(-1)
    if recon_BXD is None:
        recon_BXD = crosscoder.decode(codes)
    mid_slot = resid_mid_slots(crosscoder.cfg.hookpoints)[l]
    resid_mid_TD = recon_BXD[:, mid_slot].to(rank_HN.dtype)
    return {s: resid_mid_TD + mlp.output(z[s], l) for s in schemes}


@torch.no_grad()
def ablation_fidelity(bridge, crosscoder, mlp: AnyMLP, token_batches: Iterable[torch.Tensor], *,
                      blocks: list[int] | None = None, schemes=SCHEMES, seed: int = 0,
                      exclude_first: bool = True, max_batches: int | None = None,
                      progress: bool = True) -> list[AblationResult]:
    """Φ of every scheme at every model block in ``blocks`` (default: all the crosscoder reads) over
    held-out ``token_batches``; ``mlp`` of either kind, holding those blocks (``mlp_weights(bridge)``).

    ``token_batches``: LongTensors ``[B, S]`` (BOS-first, ``crosscoder_lib.world.data``) the crosscoder
    was not trained on. ``drop_random`` draws from ``torch.Generator().manual_seed(seed)``, in a
    fixed order (batch, block, chunk), so a run is reproducible. Codes are the crosscoder's in eval
    mode (BatchTopK: its inference threshold, so codes do not depend on batch-mates).
    """
    names = list(crosscoder.cfg.hookpoints)
    window = hookpoint_blocks(names)
    blocks = list(window) if blocks is None else list(blocks)
    bad = [b for b in blocks if b not in window]
    if bad:
        raise ValueError(f"block(s) {bad} out of range: the crosscoder's hookpoints cover blocks {window}")
    run_schemes = tuple(s for s in schemes if s != "zero") + ("zero",)
    start = 1 if exclude_first else 0
    generator = torch.Generator().manual_seed(seed)
    interactions = MLPInteractions.of(crosscoder, mlp)

    def variants(tokens):
        n_seq, seq = tokens.shape
        acts = harvest(bridge, tokens, names, exclude_first=exclude_first).to(crosscoder.W_dec_HXD.device)
        codes = crosscoder.encode(acts)
        recon = crosscoder.decode(codes)
        for b in blocks:
            for s, post_TD in scheme_resid_post(codes, interactions, b, run_schemes, generator, recon).items():
                yield (b, s), [(f"blocks.{b}.hook_resid_post", replace_hook(post_TD.view(n_seq, seq - start, -1), start))]

    was_training = crosscoder.training
    crosscoder.eval()
    try:
        losses = patched_losses(bridge, token_batches, variants, start=start, max_batches=max_batches,
                                progress=progress, desc="ablation")
    finally:
        crosscoder.train(was_training)
    results = []
    for b in blocks:
        loss = {s: losses.patched[(b, s)] for s in run_schemes}
        phi = {s: fidelity(loss[s], losses.clean, loss["zero"]) for s in run_schemes}
        results.append(AblationResult(b, losses.clean, loss, phi, losses.n_tokens, seed))
    return results
