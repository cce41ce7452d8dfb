"""The MLP interaction bound (SPEC §3): the feature-wise MLP, its error, and two bounds on it.

For each block and token, ``g`` lets each neuron see only its dominant feature; the interaction error
is ``ε(t) = MLP(n̂2(t)) − g(t)`` and::

    ‖ε(t)‖ ≤ Σ_n ‖W_out[n]‖ · |σ(z[t,n]) − σ(p[t,n,i] + β[n])|             ("mid")
           ≤ Lip(σ) · Σ_n ‖W_out[n]‖ · Σ_{j≠i} |p[t,n,j]|                   ("lip")

Proof: ``ε = Σ_n (σ(z_n) − σ(p_i + β_n)) W_out[n]`` and the triangle inequality; then
``|σ(z) − σ(z')| ≤ Lip(σ)|z − z'|`` with ``z − (p_i + β) = Σ_{j≠i} p_j``. Computed in float64.

The feature-wise explanation depends on the MLP kind (:mod:`.mlp`): :data:`FEATURE_WISE` maps each
kind to its explanation and bounds (a gated MLP adds its entry here). :func:`soundness` and
:func:`tightness` compare any bound with the actual error (the layer-wise proofs use them too).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from crosscoder_lib.interactions.codes import ActiveCodes
from crosscoder_lib.interactions.decoder import block_contributions
from crosscoder_lib.interactions.mlp import MLPWeights, activation, lipschitz

F64 = torch.float64


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


class MLPBound(NamedTuple):
    """Per (block, token) results of the MLP interaction bound (float64)."""

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


class FeatureWiseMLP(NamedTuple):
    """One block's MLP on the reconstruction, its feature-wise explanation and both bounds, per token."""

    mlp_out_TD: torch.Tensor
    """``MLP(n̂2)``."""
    g_TD: torch.Tensor
    """Each neuron sees its dominant feature only."""
    bound_mid_T: torch.Tensor
    bound_lip_T: torch.Tensor


def _standard(active: ActiveCodes, G: tuple, beta: tuple, mlp: MLPWeights, block: int,
              chunk_tokens: int) -> FeatureWiseMLP:
    """``σ(u W_in + b_in) W_out + b_out``: the dominant slot is ``argmax |p|`` over a token's active
    slots (lowest slot on ties, as in :mod:`.engine`)."""
    (G_HN,), (beta_N,) = G, beta
    idx_BK, val_BK = active
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
    return FeatureWiseMLP(out, g, b_mid, b_lip)


# MLP kind -> its feature-wise explanation and bounds, from one block's (G_m,) and (β_m,) per input matrix.
FEATURE_WISE = {"standard": _standard}


def feature_wise_mlp(active: ActiveCodes, G: tuple, beta: tuple, mlp, block: int,
                     chunk_tokens: int = 256) -> FeatureWiseMLP:
    """One block's :class:`FeatureWiseMLP` in float64, chunked over tokens.

    ``active``: float64 codes read by :func:`crosscoder_lib.interactions.codes.read_codes`; ``G``,
    ``beta``: that block's ``[H, N]`` products and ``[N]`` biases of each of the kind's input matrices.
    """
    explain = FEATURE_WISE.get(mlp.kind)
    if explain is None:
        raise ValueError(f"no feature-wise explanation for MLP kind {mlp.kind!r} yet; known kinds: {sorted(FEATURE_WISE)}")
    return explain(active, G, beta, mlp, block, chunk_tokens)


def mlp_bound(rows: list[FeatureWiseMLP]) -> MLPBound:
    """The per-(block, token) error and bounds of every block's :class:`FeatureWiseMLP`."""
    return MLPBound(
        actual_LT=torch.stack([(r.mlp_out_TD - r.g_TD).norm(dim=-1) for r in rows]),
        bound_mid_LT=torch.stack([r.bound_mid_T for r in rows]),
        bound_lip_LT=torch.stack([r.bound_lip_T for r in rows]),
    )
