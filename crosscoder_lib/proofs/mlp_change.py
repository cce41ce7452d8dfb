"""How far an MLP's output can move when its input moves: the propagated MLP term of the layer-wise bound.

For ``‖u − û‖ ≤ δ`` (per token), ``‖MLP(u) − MLP(û)‖ ≤ Lip · δ`` with a factor ``Lip`` that is sound
on that ball, by MLP kind (:mod:`crosscoder_lib.interactions.mlp`):

- **standard** ``σ(u W_in + b_in) W_out + b_out``: the global factor
  ``Lip(σ) · min(‖W_in‖₂‖W_out‖₂, Σ_n ‖W_in[:,n]‖‖W_out[n]‖)``, the same for every token;
- **gated** ``(σ(u W_gate + b_gate) ⊙ (u W_in + b_in)) W_out + b_out`` (``W_in`` the up
  projection): the product of two linear maps has no global factor, so it is local, per token.
  With ``ĝ``, ``v̂`` the gate and up pre-activations of ``û`` and the column norms
  ``c_g = ‖W_gate[:,n]‖``, ``c_u = ‖W_in[:,n]‖``, neuron ``n``'s inputs move by ``|Δg| ≤ c_g δ``,
  ``|Δv| ≤ c_u δ``, and splitting ``σ(g)v − σ(ĝ)v̂ = σ(ĝ)(v − v̂) + (σ(g) − σ(ĝ))v`` with
  ``|v| ≤ |v̂| + c_u δ`` gives ``|Δh_n| ≤ δ κ_n``,

      κ_n = |σ(ĝ_n)| c_u + Lip(σ) c_g (|v̂_n| + c_u δ),

  then ``‖Δh W_out‖ ≤ δ · min(Σ_n ‖W_out[n]‖ κ_n, ‖W_out‖₂ ‖κ‖₂)`` (triangle inequality, or the
  operator norm with ``|Δh_n| ≤ δκ_n`` for every ``n``). Only ``Lip(σ)`` is assumed of ``σ``.

:func:`mlp_propagation` prepares the per-block constants once; :meth:`MLPPropagation.through`
returns the MLP's output on ``û`` with the change bound and the factor used.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from crosscoder_lib.interactions.mlp import activation, apply_mlp, lipschitz
from crosscoder_lib.interactions.bound import spectral_norm

F64 = torch.float64


class MLPPropagation(NamedTuple):
    """An MLP of either kind (float64 weights) and the per-block constants of its change bound."""

    mlp: object
    """The MLP weights (``MLPWeights`` or a gated kind) of model blocks ``first, first + 1, …``, float64."""
    constants: tuple
    """Standard: ``(Lip_L,)``, the global factor of each block. Gated: ``(c_gate_LN, c_up_LN, ‖W_out‖₂_L)``."""
    first: int = 0

    def through(self, n2_hat: torch.Tensor, delta: torch.Tensor, block: int) -> tuple[torch.Tensor, ...]:
        """``(MLP(n̂2) [B, S, D], bound on ‖MLP(n2) − MLP(n̂2)‖ [B, S], factor Lip [B, S])`` for
        ``‖n2 − n̂2‖ ≤ delta`` at model block ``block``."""
        return _THROUGH[self.mlp.kind](self, n2_hat, delta, block - self.first)


def _standard_lipschitz(mlp64) -> torch.Tensor:
    """``Lip(σ) · min(‖W_in‖₂‖W_out‖₂, Σ_n ‖W_in[:,n]‖‖W_out[n]‖)`` per block ``[L]``."""
    W_in, W_out = mlp64.W_in_LDN, mlp64.W_out_LND
    return lipschitz(mlp64.act_fn) * torch.minimum(spectral_norm(W_in) * spectral_norm(W_out),
                                                   (W_in.norm(dim=1) * W_out.norm(dim=2)).sum(-1))


def _standard_through(p: MLPPropagation, n2_hat, delta, block):
    (lip_L,) = p.constants
    lip = lip_L[block]
    return apply_mlp(n2_hat, p.mlp, block), lip * delta, lip.expand(delta.shape)


def _gated_constants(mlp64) -> tuple:
    W_gate_LDN, W_up_LDN = mlp64.input_weights()
    return W_gate_LDN.norm(dim=1), W_up_LDN.norm(dim=1), spectral_norm(mlp64.W_out_LND)


def _gated_through(p: MLPPropagation, n2_hat, delta, block):
    mlp = p.mlp
    c_gate_LN, c_up_LN, out_norm_L = p.constants
    g, v = mlp.preactivations(n2_hat, block)  # [B, S, N] each: gate and up
    kappa = (activation(g, mlp.act_fn).abs() * c_up_LN[block]
             + lipschitz(mlp.act_fn) * c_gate_LN[block] * (v.abs() + c_up_LN[block] * delta[..., None]))
    lip = torch.minimum(kappa @ mlp.W_out_LND[block].norm(dim=-1), out_norm_L[block] * kappa.norm(dim=-1))
    return mlp.output((g, v), block), lip * delta, lip


_CONSTANTS = {"standard": lambda mlp64: (_standard_lipschitz(mlp64),), "gated": _gated_constants}
_THROUGH = {"standard": _standard_through, "gated": _gated_through}


def mlp_propagation(mlp, first: int = 0) -> MLPPropagation:
    """The change bound of the MLPs of model blocks ``first …`` (``mlp`` holds every block, of any
    kind in the module docstring), its constants formed once in float64."""
    kind = getattr(mlp, "kind", None)
    if kind not in _CONSTANTS:
        raise NotImplementedError(f"no MLP change bound for MLP kind {kind!r}; crosscoder_lib.proofs.mlp_change "
                                  f"knows {sorted(_CONSTANTS)}")
    mlp64 = mlp.select(slice(first, mlp.n_blocks)).to(dtype=F64)
    return MLPPropagation(mlp64, _CONSTANTS[kind](mlp64), first)
