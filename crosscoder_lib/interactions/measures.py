"""The interaction measures as functions of ``(codes, W_dec_LHD, mlp)``: the names readers know.

Each function builds an :class:`~crosscoder_lib.interactions.object.MLPInteractions` from the
decoder rows it is given and asks it once, so each call forms ``G = W_dec · W_in`` again. To compute
several quantities, or one over many batches, build the object once instead::

    inter = MLPInteractions.of(crosscoder, mlp)
    shares = [inter.dominant_share(codes) for codes in batches]   # G formed once

``W_dec_LHD`` (and ``b_dec_LD``) are the decoder rows (and bias) at each block's MLP input in the
model's units (:func:`mlp_input_decoder`).

Also kept importable from here, until their callers outside this layer move to the modules that
define them (or to the facade ``crosscoder_lib``): ``unpack_codes``, ``active_slots_first``
(:mod:`.codes`); ``mlp_input_decoder``, ``neuron_weights``, ``block_contributions`` (:mod:`.decoder`).
"""

from __future__ import annotations

import torch

from crosscoder_lib.interactions.bound import MLPBound
from crosscoder_lib.interactions.codes import active_slots_first, unpack_codes
from crosscoder_lib.interactions.decoder import block_contributions, mlp_input_decoder, neuron_weights
from crosscoder_lib.interactions.mlp import AnyMLP, GatedContributions
from crosscoder_lib.interactions.object import MLPInteractions
from crosscoder_lib.interactions.penalty import InteractionStats
from crosscoder_lib.interactions.quantities import InteractionMatrix, TokenScores

__all__ = ["dominant_share", "interaction_penalty", "interaction_matrix", "token_interaction_scores",
           "feature_contributions", "mlp_interaction_bound", "unpack_codes", "active_slots_first",
           "mlp_input_decoder", "neuron_weights", "block_contributions"]


def dominant_share(codes, W_dec_LHD: torch.Tensor, mlp: AnyMLP, chunk_tokens: int | None = None) -> torch.Tensor:
    """Mean over ``(l, t, n)`` of ``max_v |p[l,t,n,v]| / Σ_v |p[l,t,n,v]|`` (1 where the sum is 0).

    In ``[1/a_t, 1]`` for a token with ``a_t`` active features; 1 when one feature is active.
    """
    return MLPInteractions(W_dec_LHD, mlp).dominant_share(codes, chunk_tokens)


def interaction_penalty(codes, W_dec_LHD: torch.Tensor, mlp: AnyMLP, form: str = "unweighted",
                        chunk_tokens: int | None = None) -> InteractionStats:
    """The interaction penalty ``L_int`` and the dominant share of a batch (SPEC §3).

    ``form="unweighted"`` (default, the reference code's form)::

        L_int = mean_{l,t,n} ( Σ_v |p[l,t,n,v]| − max_v |p[l,t,n,v]| )

    ``form="weighted"`` weights each neuron by ``w_ln = ‖W_out[l][n]‖``, the bound of SPEC §3 up to
    the constant ``Lip(σ)``: ``mean_{l,t,n} w_ln (Σ_v |p| − max_v |p|)``. Gradients flow through
    ``codes.val_BK`` and ``W_dec_LHD`` for any number of blocks (:mod:`.penalty`).
    """
    return MLPInteractions(W_dec_LHD, mlp).penalty(codes, form=form, chunk_tokens=chunk_tokens)


def interaction_matrix(codes, W_dec_LHD: torch.Tensor, mlp: AnyMLP, chunk_tokens: int | None = None,
                       b_dec_LD: torch.Tensor | None = None) -> InteractionMatrix:
    """Pairwise interactions ``M_l[i, j] = (1/T) Σ_t Σ_n [i dominant at (l,t,n)] ‖W_out[l][n]‖ |p[l,t,n,j]|``
    (:func:`crosscoder_lib.interactions.quantities.interaction_matrix`). A gated MLP weighs pairs by
    certified weights that read the decoder bias: pass ``b_dec_LD`` for it."""
    return MLPInteractions(W_dec_LHD, mlp, b_dec_LD).matrix(codes, chunk_tokens)


def token_interaction_scores(codes, W_dec_LHD: torch.Tensor, mlp: AnyMLP, chunk_tokens: int | None = None,
                             b_dec_LD: torch.Tensor | None = None) -> TokenScores:
    """Per-token interaction ``T(t) = Σ_l Σ_n ‖W_out[l][n]‖ Σ_{j≠i} |p[l,t,n,j]|`` (i dominant at (l,t,n));
    a gated MLP needs ``b_dec_LD`` (as :func:`interaction_matrix`)."""
    return MLPInteractions(W_dec_LHD, mlp, b_dec_LD).token_scores(codes, chunk_tokens)


def feature_contributions(codes, W_dec_LHD: torch.Tensor, mlp: AnyMLP) -> torch.Tensor | GatedContributions:
    """``p_LTNK[l, t, n, k] = val[t, k] · G_l[idx[t, k], n]``: contributions of each token's slots
    (a gated MLP: ``GatedContributions(p_gate, p_up)``).

    Memory ``L·T·N·K`` (padded slots give 0): meant for short inputs and tests; the aggregates work
    on long inputs in chunks. Differentiable in ``val`` and ``W_dec_LHD``.
    """
    return MLPInteractions(W_dec_LHD, mlp).contributions(codes)


def mlp_interaction_bound(codes, W_dec_LHD: torch.Tensor, b_dec_LD: torch.Tensor, mlp: AnyMLP,
                          chunk_tokens: int = 256) -> MLPBound:
    """SPEC §3's bound on ``‖ε(t)‖`` for every block and token, with the actual error, in float64
    (:mod:`crosscoder_lib.interactions.bound`)."""
    return MLPInteractions(W_dec_LHD, mlp, b_dec_LD).bound(codes, chunk_tokens)
