"""Checkers of chapter 3 (the interaction penalty): the penalty over active features, the dominant
share, and the keep-largest ablation.

Each runs the reader's function on :func:`crosscoder_lib.exercises.cases.interaction_cases` and
compares it with the library: :func:`~crosscoder_lib.interactions.measures.interaction_penalty`
(value and gradient), :func:`~crosscoder_lib.interactions.measures.dominant_share` and
:func:`~crosscoder_lib.interactions.ablation.scheme_resid_post`.
"""

from __future__ import annotations

import torch

from crosscoder_lib.crosscoder.activations import SparseCodes
from crosscoder_lib.exercises.cases import interaction_cases
from crosscoder_lib.exercises.harness import Exercise, gives, leaf, reference_gradient, when
from crosscoder_lib.interactions.ablation import scheme_resid_post
from crosscoder_lib.interactions.decoder import neuron_weights
from crosscoder_lib.interactions.measures import dominant_share, feature_contributions, interaction_penalty
from crosscoder_lib.interactions.mlp import activation
from crosscoder_lib.interactions.object import MLPInteractions

TIE_HINT = ("at an exact tie between two features the gradient of max_k |p| is split evenly between them "
            "(torch.amax does that); .max(dim).values gives all of it to one")


def _abs_p_LTNK(case) -> torch.Tensor:
    return feature_contributions(case.codes, case.W_dec_LHD, case.mlp).abs()


def _penalty_mistakes(case, expected: torch.Tensor) -> tuple:
    abs_p = _abs_p_LTNK(case)
    p = feature_contributions(case.codes, case.W_dec_LHD, case.mlp)
    L, T, N, _ = abs_p.shape
    with_feature = int((case.codes.val_BK != 0).any(1).sum())
    return (
        gives(lambda: abs_p.sum(-1).mean(), "the dominant feature is not an interaction: subtract max_k |p| "
              "from Σ_k |p| at every (block, token, neuron)"),
        gives(lambda: expected * N, "you summed over neurons where L_int averages over (block, token, neuron)"),
        gives(lambda: expected * L * T * N, "you summed where L_int averages over (block, token, neuron)"),
        gives(lambda: expected * L, "you summed over blocks where L_int averages over them too"),
        gives(lambda: (abs_p.sum(-1) - p.amax(-1)).mean(), "take the maximum of |p|, not of p: a large "
              "negative contribution dominates too"),
        gives(lambda: expected * T / max(with_feature, 1), "a token with no active feature still counts in "
              "the mean (its term is 0)"),
    )


def check_penalty(fn) -> None:
    """Exercise 3.1: ``fn(idx_BK, val_BK, G_LHN) -> L_int`` against ``interaction_penalty`` (value and
    the gradient with respect to the codes and the decoder rows)."""
    ex = Exercise("3.1", "the penalty over active features", fn,
                  "L_int = mean over (l, t, n) of Σ_k |p[l,t,n,k]| − max_k |p[l,t,n,k]| with "
                  "p = val[t, k] · G_l[idx[t, k], n]; padded slots have val 0 and add nothing")
    for case in interaction_cases():
        W_ref, val_ref = leaf(case.W_dec_LHD), leaf(case.codes.val_BK)
        expected = interaction_penalty(SparseCodes(case.codes.idx_BK, val_ref), W_ref, case.mlp).penalty
        W, val = leaf(case.W_dec_LHD), leaf(case.codes.val_BK)
        got = ex.call(case.name, case.codes.idx_BK, val, neuron_weights(W, case.mlp))
        ex.close(case.name, "the penalty", got, expected, mistakes=_penalty_mistakes(case, expected.detach()))
        tie = (when(lambda g: True, TIE_HINT),) if "equally" in case.name else ()
        ex.gradient(case.name, got, {"val_BK": val, "W_dec_LHD (through G_LHN)": W},
                    reference_gradient(expected, {"val_BK": val_ref, "W_dec_LHD (through G_LHN)": W_ref}),
                    mistakes=tie)
    ex.passed()


def check_dominant_share(fn) -> None:
    """Exercise 3.2: ``fn(idx_BK, val_BK, G_LHN) -> share`` against ``dominant_share``."""
    ex = Exercise("3.2", "the dominant share", fn,
                  "the share is the mean over (l, t, n) of max_k |p| / Σ_k |p|, counted as 1 where Σ_k |p| = 0")
    for case in interaction_cases():
        expected = dominant_share(case.codes, case.W_dec_LHD, case.mlp)
        got = ex.call(case.name, case.codes.idx_BK, case.codes.val_BK, case.G_LHN)
        abs_p = _abs_p_LTNK(case)
        p = feature_contributions(case.codes, case.W_dec_LHD, case.mlp)
        ex.close(case.name, "the dominant share", got, expected, mistakes=(
            when(lambda g: bool(g.isnan().any()), "a neuron that no feature reaches (Σ_k |p| = 0, e.g. a token "
                 "with no active feature) has share 1: the feature-wise explanation is exact there, not 0/0"),
            gives(lambda: abs_p.amax(-1).mean() / abs_p.sum(-1).mean(), "the share is the mean of the ratios "
                  "max/sum, not the ratio of their means"),
            gives(lambda: (p.amax(-1) / abs_p.sum(-1)).nan_to_num(1.0).mean(), "take the maximum of |p|, not of p"),
            gives(lambda: (abs_p.amax(-1) / abs_p.sum(-1)).nan_to_num(0.0).mean(), "where Σ_k |p| = 0 the share is "
                  "1, not 0: no feature reaches the neuron, so nothing interacts"),
        ))
    ex.passed()


def _dominant(p_TNK: torch.Tensor, by) -> torch.Tensor:
    return p_TNK.gather(-1, by(p_TNK).argmax(-1, keepdim=True)).squeeze(-1)


def check_keep_largest(fn) -> None:
    """Exercise 3.3: ``fn(p_TNK, beta_N, W_out_ND, b_out_D, sigma) -> out_TD``, the MLP in which each
    neuron sees only its dominant feature, against the library's ``keep_largest`` ablation."""
    ex = Exercise("3.3", "the keep_largest ablation", fn,
                  "each neuron keeps the signed contribution p[t, n, i] of its dominant feature "
                  "i = argmax_k |p[t, n, k]| (first slot on ties), adds β[n], applies σ, and the MLP "
                  "writes σ(z) @ W_out + b_out")
    for case in interaction_cases():
        mlp, l = case.mlp, 0
        sigma = lambda z: activation(z, mlp.act_fn)  # noqa: E731
        zeros_BXD = torch.zeros(case.codes.idx_BK.shape[0], case.crosscoder.n_slots, case.crosscoder.d_model,
                                dtype=torch.float64)
        expected = scheme_resid_post(case.codes, MLPInteractions.of(case.crosscoder, mlp), l, ("keep_largest",),
                                     recon_BXD=zeros_BXD)["keep_largest"]
        p = feature_contributions(case.codes, case.W_dec_LHD, mlp)[l]
        beta, W_out, b_out = case.beta_LN[l], mlp.W_out_LND[l], mlp.b_out_LD[l]
        got = ex.call(case.name, p, beta, W_out, b_out, sigma)
        out = lambda z: sigma(z) @ W_out + b_out  # noqa: E731
        ex.close(case.name, "the MLP output", got, expected, dims="TD", mistakes=(
            gives(lambda: out(_dominant(p, lambda q: q) + beta), "the dominant feature is the largest |p|, not "
                  "the largest p: a large negative contribution dominates too"),
            gives(lambda: out(_dominant(p, torch.abs).abs() + beta), "keep the signed contribution p[t, n, i]: "
                  "the neuron sees its sign, |p| only chooses which feature it is"),
            gives(lambda: out(_dominant(p, torch.abs)), "the bias β is not a feature but the neuron still sees it: "
                  "z = p[t, n, i] + β[n]"),
            gives(lambda: sigma(_dominant(p, torch.abs) + beta) @ W_out, "the MLP adds b_out after W_out"),
            gives(lambda: out(p.sum(-1) + beta), "that is the MLP with every feature (the 'none' scheme): keep only "
                  "the dominant one"),
        ))
    ex.passed()
