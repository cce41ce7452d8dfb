"""The MLP interaction bound (SPEC §3): the feature-wise MLP, its error, and bounds on it.

For each block and token, ``g`` lets each neuron see only its dominant feature ``i``; the interaction
error is ``ε(t) = MLP(n̂2(t)) − g(t) = Σ_n e_n W_out[n]``, and for any per-neuron ``η_n ≥ |e_n|``::

    ‖ε(t)‖ ≤ Σ_n ‖W_out[n]‖ η_n            (ℓ1 over neurons: the triangle inequality)
    ‖ε(t)‖ ≤ ‖W_out‖₂ ‖η‖₂                  (ℓ2: ‖eᵀ W_out‖ ≤ ‖W_out‖₂ ‖e‖₂; fields ``*_l2``)

with three per-neuron forms, tightest first:

- ``mid``: ``|e_n|`` itself (needs ``z``, a run of the MLP);
- ``box``: the supremum of ``|e_n|`` over every pre-activation within the off-dominant sums of the
  dominant one (:func:`box_bound`), the smallest bound that uses only ``(p_i, β, S)``;
- ``lip``: a Lipschitz triangle inequality in those sums.

**Standard kind** ``σ(u W_in + b_in) W_out + b_out``: ``e_n = σ(z_n) − σ(p_i + β_n)``, ``S_n =
Σ_{j≠i} |p_j|`` and ``lip = Lip(σ)·S_n`` (``|σ(z) − σ(z')| ≤ Lip(σ)|z − z'|``).

**Gated kind** ``(σ(u W_gate + b_gate) ⊙ (u W_in + b_in)) W_out + b_out``: neuron ``n`` sees the same
feature ``i`` in both branches (a neuron that saw one feature in the gate and another in the up
branch would compute their product: an interaction), ``i = argmax c`` with ``c = |p_gate| + |p_up|``
(the penalty's ranking, lowest slot on ties), ``a = p_gate,i + β_gate``, ``b = p_up,i + β_up``,
``e_n = σ(z_gate) z_up − σ(a) b`` and, with ``S_g``, ``S_u`` the off-dominant sums and ``L = Lip(σ)``::

    lip = min(A, B),  A = (|a| + S_g) S_u + L |b| S_g,  B = |σ(a)| S_u + L S_g (|b| + S_u)

where ``δ_g = z_g − a``, ``δ_u = z_u − b`` (``|δ| ≤ S``): ``A`` from ``e = σ(z_g) δ_u + (σ(z_g) − σ(a)) b``
and ``|σ(z_g)| ≤ |z_g| ≤ |a| + S_g`` (used only for activations with ``|σ(x)| ≤ |x|``: SiLU, GELU,
ReLU), ``B`` from ``e = σ(a) δ_u + (σ(z_g) − σ(a))(b + δ_u)``. ``|e| ≤ box`` as ``(z_g, z_u)`` lies in the
box, and ``box ≤ lip`` as ``A`` and ``B`` hold at every point of it. With ``W_in = 0`` and ``b_in = 1`` every gated form is the standard one. Computed in
float64; tests/test_gated.py checks every form against a brute-force loop.

The feature-wise explanation depends on the MLP kind (:mod:`.mlp`): :data:`FEATURE_WISE` maps each
kind to its explanation. :func:`soundness` and :func:`tightness` compare any bound with the actual
error (the layer-wise proofs use them too).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import torch

from crosscoder_lib.interactions.activation import activation, activation_range, bounded_by_identity, lipschitz
from crosscoder_lib.interactions.codes import ActiveCodes
from crosscoder_lib.interactions.decoder import block_contributions
from crosscoder_lib.interactions.engine import dominant_slots
from crosscoder_lib.interactions.mlp import AnyMLP

F64 = torch.float64
FORMS = ("mid", "box", "lip", "mid_l2", "box_l2", "lip_l2")
"""The bound's forms: per-neuron ``mid``/``box``/``lip``, summed over neurons in ℓ1, or in ℓ2 (``_l2``)."""


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


def spectral_norm(W: torch.Tensor) -> torch.Tensor:
    """``‖W‖₂`` of each matrix in a batch ``[..., m, n]``, from the largest eigenvalue of the smaller
    Gram matrix (float64), rounded up by a relative 1e-9 so that bounds using it stay sound."""
    W = W.to(F64)
    gram = W @ W.transpose(-1, -2) if W.shape[-2] <= W.shape[-1] else W.transpose(-1, -2) @ W
    return torch.linalg.eigvalsh(gram)[..., -1].clamp_min(0.0).sqrt() * (1 + 1e-9)


class MLPBound(NamedTuple):
    """Per (block, token) results of the MLP interaction bound (float64; forms in the module docstring)."""

    actual_LT: torch.Tensor
    """``‖ε(t)‖ = ‖MLP(n̂2) − g(t)‖``."""
    bound_mid_LT: torch.Tensor
    """``Σ_n ‖W_out[n]‖ |e_n|`` (standard: ``|σ(z) − σ(p_i + β)|``)."""
    bound_lip_LT: torch.Tensor
    """``Σ_n ‖W_out[n]‖ lip_n`` (standard: ``Lip(σ) Σ_n ‖W_out[n]‖ Σ_{j≠i} |p_j|``)."""
    bound_box_LT: torch.Tensor
    """``Σ_n ‖W_out[n]‖ box_n``."""
    bound_mid_l2_LT: torch.Tensor
    """``‖W_out‖₂ ‖e‖₂``."""
    bound_box_l2_LT: torch.Tensor
    bound_lip_l2_LT: torch.Tensor

    def forms(self) -> dict[str, torch.Tensor]:
        """Form name (:data:`FORMS`) -> its ``[L, T]`` bound."""
        return {f: getattr(self, f"bound_{f}_LT") for f in FORMS}

    def soundness(self, atol: float = 0.0, forms=("mid", "lip")) -> dict:
        """Form -> fraction of (block, token) where it bounds the error (default SPEC §3's two; all: ``FORMS``)."""
        return {f: soundness(self.forms()[f], self.actual_LT, atol) for f in forms}

    def tightness(self, forms=("mid", "lip")) -> dict:
        """Median of ``bound / actual`` over tokens with ``actual > 0``, per form."""
        has = bool((self.actual_LT > 0).any())
        return {f: float(tightness(self.forms()[f], self.actual_LT).median()) if has else float("nan") for f in forms}


class FeatureWiseMLP(NamedTuple):
    """One block's MLP on the reconstruction, its feature-wise explanation and every bound, per token."""

    mlp_out_TD: torch.Tensor
    """``MLP(n̂2)``."""
    g_TD: torch.Tensor
    """Each neuron sees its dominant feature only."""
    bound_mid_T: torch.Tensor
    bound_lip_T: torch.Tensor
    bound_box_T: torch.Tensor
    bound_mid_l2_T: torch.Tensor
    bound_box_l2_T: torch.Tensor
    bound_lip_l2_T: torch.Tensor


class NeuronErrors(NamedTuple):
    """A chunk of tokens of one block, per neuron, before ``W_out`` (what an explanation yields)."""

    hidden_TN: torch.Tensor
    """The MLP's hidden layer on the reconstruction (``MLP = hidden @ W_out + b_out``)."""
    hidden_g_TN: torch.Tensor
    """The feature-wise explanation's (``g = hidden_g @ W_out + b_out``)."""
    mid_TN: torch.Tensor
    box_TN: torch.Tensor
    lip_TN: torch.Tensor
    lip_scale: float
    """``lip`` is ``lip_scale · lip_TN`` (standard: ``Lip(σ)`` times ``S``, multiplied after the neuron sum)."""


def box_bound(a, b, S_g, S_u, act_fn: str) -> torch.Tensor:
    """``sup |σ(x) y − σ(a) b|`` over ``|x − a| ≤ S_g``, ``|y − b| ≤ S_u`` (elementwise).

    ``|s y − σ(a) b|`` is affine in ``y`` and in ``s = σ(x)``, whose range is
    ``[m, M] = σ([a − S_g, a + S_g])`` (:func:`crosscoder_lib.interactions.activation.activation_range`):
    the supremum is at one of the four corners ``s ∈ {m, M}``, ``y ∈ {b ± S_u}``, and is attained.
    The standard kind is ``b = 1``, ``S_u = 0``.
    """
    fab = activation(a, act_fn) * b
    low, high = activation_range(a - S_g, a + S_g, act_fn)
    corners = [(s * y - fab).abs() for s in (low, high) for y in (b - S_u, b + S_u)]
    return torch.stack(torch.broadcast_tensors(*corners)).amax(0)


def _chunks(T: int, chunk_tokens: int) -> Iterator[slice]:
    for start in range(0, T, chunk_tokens):
        yield slice(start, min(start + chunk_tokens, T))


def _standard(active: ActiveCodes, G: tuple, beta: tuple, mlp: AnyMLP, chunk_tokens: int):
    """``σ(u W_in + b_in) W_out + b_out``: the dominant slot is ``argmax |p|`` over a token's active
    slots (lowest slot on ties, as in :mod:`.engine`)."""
    (G_HN,), (beta_N,) = G, beta
    idx_BK, val_BK = active
    lip = lipschitz(mlp.act_fn)
    n_active = (val_BK != 0).sum(1)
    for sl in _chunks(idx_BK.shape[0], chunk_tokens):
        p_TNK = block_contributions(idx_BK[sl], val_BK[sl], G_HN)
        dom = dominant_slots(p_TNK.abs(), n_active[sl])[..., None]
        p_dom = p_TNK.gather(-1, dom).squeeze(-1)
        z = p_TNK.sum(-1) + beta_N
        s_z, s_dom = activation(z, mlp.act_fn), activation(p_dom + beta_N, mlp.act_fn)
        S = p_TNK.abs().sum(-1) - p_dom.abs()
        box = box_bound(p_dom + beta_N, 1.0, S, 0.0, mlp.act_fn)
        yield sl, NeuronErrors(s_z, s_dom, (s_z - s_dom).abs(), box, S, lip)


def _gated(active: ActiveCodes, G: tuple, beta: tuple, mlp: AnyMLP, chunk_tokens: int):
    """``(σ(u W_gate + b_gate) ⊙ (u W_in + b_in)) W_out + b_out``: the dominant slot is ``argmax c``,
    ``c = |a|·(|G_gate| + |G_up|)``, formed as the engine forms it (in one dtype both pick the same ``i``)."""
    (Gg_HN, Gu_HN), (bg_N, bu_N) = G, beta
    idx_BK, val_BK = active
    L, with_A = lipschitz(mlp.act_fn), bounded_by_identity(mlp.act_fn)
    C_HN = mlp.combined((Gg_HN, Gu_HN))
    n_active = (val_BK != 0).sum(1)
    for sl in _chunks(idx_BK.shape[0], chunk_tokens):
        idx, val = idx_BK[sl], val_BK[sl]
        pg, pu = block_contributions(idx, val, Gg_HN), block_contributions(idx, val, Gu_HN)  # [T, N, K]
        dom = dominant_slots(block_contributions(idx, val.abs(), C_HN), n_active[sl])[..., None]
        pg_i, pu_i = pg.gather(-1, dom).squeeze(-1), pu.gather(-1, dom).squeeze(-1)
        a, b = pg_i + bg_N, pu_i + bu_N
        S_g, S_u = pg.abs().sum(-1) - pg_i.abs(), pu.abs().sum(-1) - pu_i.abs()
        hidden = activation(pg.sum(-1) + bg_N, mlp.act_fn) * (pu.sum(-1) + bu_N)
        fa = activation(a, mlp.act_fn)
        lip = fa.abs() * S_u + L * S_g * (b.abs() + S_u)
        if with_A:
            lip = torch.minimum((a.abs() + S_g) * S_u + L * b.abs() * S_g, lip)
        yield sl, NeuronErrors(hidden, fa * b, (hidden - fa * b).abs(), box_bound(a, b, S_g, S_u, mlp.act_fn),
                               lip, 1.0)


# MLP kind -> its feature-wise explanation: from the codes, one block's (G_m,) and (β_m,) per input
# matrix, the weights and a chunk size, (slice of tokens, NeuronErrors) chunk by chunk.
FEATURE_WISE = {"standard": _standard, "gated": _gated}


def feature_wise_mlp(active: ActiveCodes, G: tuple, beta: tuple, mlp: AnyMLP, block: int,
                     chunk_tokens: int = 256) -> FeatureWiseMLP:
    """One block's :class:`FeatureWiseMLP` in float64, chunked over tokens.

    ``active``: float64 codes read by :func:`crosscoder_lib.interactions.codes.read_codes`; ``G``,
    ``beta``: that block's ``[H, N]`` products and ``[N]`` biases of each of the kind's input matrices;
    ``block`` indexes ``mlp``'s stacked blocks.
    """
    explain = FEATURE_WISE.get(mlp.kind)
    if explain is None:
        raise ValueError(f"no feature-wise explanation for MLP kind {mlp.kind!r} yet; known kinds: {sorted(FEATURE_WISE)}")
    W_out_ND = mlp.W_out_LND[block].to(F64)
    b_out_D = mlp.b_out_LD[block].to(F64)
    w_N = W_out_ND.norm(dim=-1)
    spec = spectral_norm(W_out_ND)
    T, D = active.idx_BK.shape[0], W_out_ND.shape[1]
    out, g = torch.empty(T, D, dtype=F64), torch.empty(T, D, dtype=F64)
    bounds = {f: torch.empty(T, dtype=F64) for f in FORMS}
    for sl, e in explain(active, G, beta, mlp, chunk_tokens):
        out[sl] = e.hidden_TN @ W_out_ND + b_out_D
        g[sl] = e.hidden_g_TN @ W_out_ND + b_out_D
        bounds["mid"][sl] = e.mid_TN @ w_N
        bounds["box"][sl] = e.box_TN @ w_N
        bounds["lip"][sl] = e.lip_scale * (e.lip_TN @ w_N)
        bounds["mid_l2"][sl] = spec * e.mid_TN.norm(dim=-1)
        bounds["box_l2"][sl] = spec * e.box_TN.norm(dim=-1)
        bounds["lip_l2"][sl] = spec * (e.lip_scale * e.lip_TN.norm(dim=-1))
    return FeatureWiseMLP(out, g, *(bounds[f] for f in ("mid", "lip", "box", "mid_l2", "box_l2", "lip_l2")))


def mlp_bound(rows: list[FeatureWiseMLP]) -> MLPBound:
    """The per-(block, token) error and bounds of every block's :class:`FeatureWiseMLP`."""
    stack = lambda field: torch.stack([getattr(r, field) for r in rows])
    return MLPBound(torch.stack([(r.mlp_out_TD - r.g_TD).norm(dim=-1) for r in rows]),
                    *(stack(f) for f in FeatureWiseMLP._fields[2:]))
