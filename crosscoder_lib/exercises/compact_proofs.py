"""Checkers of chapter 2 (compact proofs): the per-feature contributions ``p``, the dominant-only
explanation with its error and two bounds, and the attention QK split.

References: :func:`~crosscoder_lib.interactions.measures.feature_contributions` (value and
gradient), the MLP interaction bound of :class:`~crosscoder_lib.interactions.object.MLPInteractions`
and :func:`~crosscoder_lib.proofs.qk_split.qk_split`.
"""

from __future__ import annotations

import torch

from crosscoder_lib.crosscoder.activations import SparseCodes, codes_to_dense
from crosscoder_lib.exercises.cases import interaction_cases, random_codes
from crosscoder_lib.exercises.harness import Exercise, gives, leaf, reference_gradient
from crosscoder_lib.interactions.measures import feature_contributions
from crosscoder_lib.interactions.mlp import activation, lipschitz
from crosscoder_lib.interactions.object import MLPInteractions
from crosscoder_lib.proofs.attention import AttentionWeights
from crosscoder_lib.proofs.qk_split import qk_split

F64 = torch.float64


def check_contributions(fn) -> None:
    """Exercise 2.1: ``fn(idx_TK, val_TK, W_dec_HD, W_in_DN) -> p_TNK`` against ``feature_contributions``
    (value and gradient)."""
    ex = Exercise("2.1", "the per-feature contributions p", fn,
                  "G = W_dec_HD @ W_in_DN is [H, N]; p[t, n, k] = val[t, k] · G[idx[t, k], n], so G[idx_TK] "
                  "([T, K, N]) times val, with the neuron axis before the slot axis")
    for case in interaction_cases():
        idx, mlp = case.codes.idx_BK, case.mlp
        W_ref, val_ref = leaf(case.W_dec_LHD), leaf(case.codes.val_BK)
        expected = feature_contributions(SparseCodes(idx, val_ref), W_ref, mlp)[0]
        want = reference_gradient(expected, {"val_TK": val_ref, "W_dec_HD": W_ref})
        W, val = leaf(case.W_dec_LHD[0]), leaf(case.codes.val_BK)
        got = ex.call(case.name, idx, val, W, mlp.W_in_LDN[0])
        G = case.G_LHN[0]
        ex.close(case.name, "p_TNK", got, expected, dims="TNK", mistakes=(
            gives(lambda: G[idx].transpose(1, 2), "multiply each row of G by the feature's activation val[t, k]"),
            gives(lambda: expected.detach().abs(), "p is signed: the neuron adds the contributions, and the sign "
                  "decides whether they cancel"),
        ))
        ex.gradient(case.name, got, {"val_TK": val, "W_dec_HD": W},
                    {"val_TK": want["val_TK"], "W_dec_HD": want["W_dec_HD"][0]},
                    only={"val_TK": case.codes.val_BK != 0})
    ex.passed()


def check_feature_wise_bound(fn) -> None:
    """Exercise 2.2: ``fn(p_TNK, beta_N, W_out_ND, b_out_D, sigma, lip) -> (actual_T, bound_mid_T,
    bound_lip_T)`` against the library's MLP interaction bound."""
    ex = Exercise("2.2", "the dominant-only explanation and its error bound", fn,
                  "i = argmax_k |p| per (t, n) (first slot on ties); g keeps σ(p_i + β); ε(t) = Σ_n "
                  "(σ(z_n) − σ(p_i + β_n)) W_out[n]; mid = Σ_n ‖W_out[n]‖ |σ(z_n) − σ(p_i + β_n)|; "
                  "lip = Lip(σ) Σ_n ‖W_out[n]‖ (Σ_k |p| − |p_i|)")
    names = ("actual_T", "bound_mid_T", "bound_lip_T")
    for case in interaction_cases():
        mlp = case.mlp
        bound = MLPInteractions(case.W_dec_LHD, mlp, case.b_dec_LD).bound(case.codes)
        p = feature_contributions(case.codes, case.W_dec_LHD, mlp)[0]
        beta, W_out, b_out = case.beta_LN[0], mlp.W_out_LND[0], mlp.b_out_LD[0]
        sigma = lambda x: activation(x, mlp.act_fn)  # noqa: E731
        lip = lipschitz(mlp.act_fn)
        got = ex.unpack(case.name, ex.call(case.name, p, beta, W_out, b_out, sigma, lip), names)
        w, z = W_out.norm(dim=-1), p.sum(-1) + beta
        p_i = p.gather(-1, p.abs().argmax(-1, keepdim=True)).squeeze(-1)
        signed_i = p.gather(-1, p.argmax(-1, keepdim=True)).squeeze(-1)
        gap = sigma(z) - sigma(p_i + beta)
        ex.close(case.name, "‖ε(t)‖", got[0], bound.actual_LT[0], dims="T", mistakes=(
            gives(lambda: gap.abs() @ w, "that is the mid bound, a sum of per-neuron norms; ‖ε(t)‖ is the norm of "
                  "ONE residual-stream vector, Σ_n (σ(z_n) − σ(p_i + β_n)) W_out[n]"),
            gives(lambda: ((sigma(z) - sigma(p_i)) @ W_out).norm(dim=-1), "g keeps the bias: each neuron sees "
                  "σ(p_i + β_n), β is not a feature"),
            gives(lambda: ((sigma(z) - sigma(signed_i + beta)) @ W_out).norm(dim=-1), "the dominant feature is the "
                  "largest |p|, not the largest p"),
            gives(lambda: (gap @ W_out + b_out).norm(dim=-1), "b_out is in MLP(n̂2) and in g alike: it cancels in ε"),
        ))
        ex.close(case.name, "the mid bound", got[1], bound.bound_mid_LT[0], dims="T", mistakes=(
            gives(lambda: gap.abs().sum(-1), "weigh each neuron by ‖W_out[n]‖, its reach into the residual stream"),
            gives(lambda: (gap @ W_out).norm(dim=-1), "that is ‖ε(t)‖ itself; the mid bound applies the triangle "
                  "inequality: Σ_n ‖W_out[n]‖ |σ(z_n) − σ(p_i + β_n)|"),
        ))
        rest = p.abs().sum(-1) - p_i.abs()
        ex.close(case.name, "the lip bound", got[2], bound.bound_lip_LT[0], dims="T", mistakes=(
            gives(lambda: lip * (p.abs().sum(-1) @ w), "the interaction term leaves the dominant feature out: "
                  "Σ_k |p| − |p_i|"),
            gives(lambda: rest @ w, "multiply by Lip(σ): |σ(a) − σ(b)| ≤ Lip(σ)|a − b|"),
            gives(lambda: lip * rest.sum(-1), "weigh each neuron by ‖W_out[n]‖"),
        ))
    ex.passed()


def _attention(n_heads: int, d_model: int, d_head: int, scale: float, g: torch.Generator) -> AttentionWeights:
    """Random float64 attention weights of one block."""
    r = lambda *shape: torch.randn(1, *shape, generator=g, dtype=F64)  # noqa: E731
    return AttentionWeights(r(n_heads, d_model, d_head), r(n_heads, d_model, d_head), r(n_heads, d_model, d_head),
                            r(n_heads, d_head, d_model), r(n_heads, d_head), r(n_heads, d_head), r(n_heads, d_head),
                            r(d_model), scale, (None,))


def _qk_cases() -> list:
    g = torch.Generator().manual_seed(5)
    out = []
    for case, S, scale, mean in (("two heads, a non-zero mean μ", 5, 0.5, 1.0),
                                 ("μ = 0: the decoder bias frozen at zero, as in the paper's runs", 4, 1.0, 0.0),
                                 ("one position", 1, 0.25, 1.0)):
        codes = random_codes(S, 3, 7, g)
        codes.val_BK[0, 2] = 0.0  # a padded slot
        W_dec_HD = torch.randn(7, 6, generator=g, dtype=F64)
        mu_D = torch.randn(6, generator=g, dtype=F64) * mean
        out.append((case, codes, W_dec_HD, mu_D, _attention(2, 6, 3, scale, g)))
    return out


def check_qk_split(fn) -> None:
    """Exercise 2.3: ``fn(f_SD, mu_D, W_Q_ADE, b_Q_AE, W_K_ADE, b_K_AE, scale)`` returns the four parts
    ``[A, Q, S]`` of the attention scores, against ``qk_split``."""
    ex = Exercise("2.3", "the QK split", fn,
                  "q = (μ + f_t) W_Q + b_Q splits into the mean part q̄ = μ W_Q + b_Q and the feature part f_t W_Q "
                  "(likewise k); the four products q̄·k̄, q̄·(f_s W_K), (f_t W_Q)·k̄, (f_t W_Q)·(f_s W_K), each "
                  "times the scale, expanded to [heads, query t, key s]")
    names = ("mean_mean", "mean_feature", "feature_mean", "feature_feature")
    for case, codes, W_dec_HD, mu_D, attn in _qk_cases():
        f_SD = codes_to_dense(codes, W_dec_HD.shape[0]) @ W_dec_HD
        expected = qk_split(codes, W_dec_HD, mu_D, attn, 0)
        args = (f_SD, mu_D, attn.W_Q[0], attn.b_Q[0], attn.W_K[0], attn.b_K[0], attn.scale)
        got = ex.unpack(case, ex.call(case, *args), names)
        qf, kf = torch.einsum("sd,ade->ase", f_SD, attn.W_Q[0]), torch.einsum("sd,ade->ase", f_SD, attn.W_K[0])
        qm, km = mu_D @ attn.W_Q[0], mu_D @ attn.W_K[0]
        S = f_SD.shape[0]
        hints = {
            "mean_mean": (gives(lambda: attn.scale * (qm * km).sum(-1)[:, None, None].expand(-1, S, S), "the mean "
                                "parts carry the biases: (μ W_Q + b_Q)·(μ W_K + b_K)"),),
            "mean_feature": (gives(lambda: expected.feature_mean, "you swapped mean·feature and feature·mean: "
                                   "mean·feature pairs the query's mean with the key's features, so it varies "
                                   "along the key position s only"),),
            "feature_mean": (gives(lambda: expected.mean_feature, "you swapped feature·mean and mean·feature: "
                                   "feature·mean pairs the query's features with the key's mean"),),
            "feature_feature": (
                gives(lambda: attn.scale * (qf + attn.b_Q[0][:, None]) @ (kf + attn.b_K[0][:, None]).transpose(1, 2),
                      "the biases b_Q, b_K belong to the mean parts: feature·feature is (f_t W_Q)·(f_s W_K)"),
            ),
        }
        for name, part in zip(names, got):
            unscaled = gives(lambda: getattr(expected, name) / attn.scale, "multiply every part by the score scale")
            ex.close(case, name, part, getattr(expected, name), dims="AQS", mistakes=hints[name] + (unscaled,))
    ex.passed()
