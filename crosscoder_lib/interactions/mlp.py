"""MLP kinds: the frozen MLP weights of a transformer, read so that they act on the MLP-input hookpoint.

SPEC §2: block ``l`` computes ``MLP(n2) = σ(n2 W_in + b_in) W_out + b_out`` on
``n2 = blocks.l.ln2.hook_normalized``. Every interaction quantity multiplies crosscoder decoder
rows at that hookpoint by ``W_in``, so ``W_in`` must be the matrix that multiplies *exactly* the
vector stored at ``ln2.hook_normalized`` (SPEC §8's first invariant). In TransformerLens's
compatibility mode the LayerNorm scale and bias are folded into ``W_in``/``b_in`` and
``hook_normalized`` is the un-scaled normalised vector, so the bridge's ``W_in`` is the right one;
:func:`verify_mlp_weights` checks it on real activations and says what is wrong when it is not.

**The kind of an MLP** is what the shared interaction engine needs from it, and nothing else:

- ``input_weights()``: the matrices ``[L, D, N]`` whose products ``G_m = W_dec · W_m`` with the
  decoder rows give each neuron's per-feature contributions (standard: ``(W_in,)``), and
  ``input_biases()`` their biases;
- ``combined(G)``: from those products, the matrix whose magnitude ``|G|`` ranks features at a
  neuron and that the engine and the fused C kernel consume (standard: ``G_in`` itself, the kernel
  takes ``|·|``), and ``chain(grad, G)``: the gradient with respect to each ``G_m`` given the one
  with respect to ``combined(G)`` (standard: unchanged);
- ``W_out_norms_LN()``: ``‖W_out[l][k]‖``, a neuron's reach into the residual stream;
- ``act_fn`` and ``kind`` (a name), which select the feature-wise explanation and its bound in
  :mod:`crosscoder_lib.interactions.bound`.

A gated MLP ``(act(u W_gate) ⊙ (u W_up)) W_down`` is one more kind (a NamedTuple beside
:class:`MLPWeights` with ``input_weights() = (W_gate, W_up)``, ``combined(G) = |G_gate| + |G_up|``,
``chain(grad, G) = (grad·sign(G_gate), grad·sign(G_up))``, norms of ``W_down``) plus one entry in
the bound's table of feature-wise explanations; the engine, the penalty and the kernel are reused
unchanged.
"""

from __future__ import annotations

import math
from functools import cache
from typing import NamedTuple

import torch


def activation(z: torch.Tensor, act_fn: str) -> torch.Tensor:
    """``σ(z)`` for an activation named as in Hugging Face's ``ACT2FN`` (the name a bridge's
    ``cfg.act_fn`` holds: ``"gelu_new"`` for GPT-Neo/GPT-2, ``"gelu"``, ``"relu"``, ...)."""
    from transformers.activations import ACT2FN

    if act_fn not in ACT2FN:
        raise ValueError(f"unknown MLP activation {act_fn!r}; known: {sorted(ACT2FN)}")
    return ACT2FN[act_fn](z)


@cache
def lipschitz(act_fn: str) -> float:
    """Global Lipschitz constant ``Lip(σ) = sup_z |σ'(z)|`` of the activation, computed numerically.

    ``σ'`` is evaluated in float64 by autograd on a grid of step 1e-4 over ``[-20, 20]``, the grid
    maximum is refined by a grid of step 1e-8 around it, and the result is rounded *up* by a
    relative 1e-9 so bounds that use it stay sound. Outside the grid the slope must have settled
    (|σ'| changing by < 1e-6 over the last unit at both ends, and not above the maximum found),
    else there is no global constant (e.g. ``relu2``) and a ``ValueError`` says so. ReLU gives 1;
    GELU gives ≈ 1.1289 (exact) / 1.1290 (tanh form), attained near ``z = √2``.
    """
    f = lambda z: activation(z, act_fn)  # validates the name on first use

    def slope(z: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():  # callers may be under no_grad
            z = z.clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(f(z).sum(), z)
        return grad.abs()

    z = torch.linspace(-20.0, 20.0, 400_001, dtype=torch.float64)
    s = slope(z)
    centre = z[s.argmax()].item()
    fine = torch.linspace(centre - 2e-4, centre + 2e-4, 40_001, dtype=torch.float64)
    best = max(s.max().item(), slope(fine).max().item())
    ends = slope(torch.tensor([-20.0, -19.0, 19.0, 20.0], dtype=torch.float64))
    if abs(ends[0] - ends[1]) > 1e-6 or abs(ends[3] - ends[2]) > 1e-6 or ends.max() > best:
        raise ValueError(f"activation {act_fn!r} has no global Lipschitz constant (its slope keeps "
                         "changing at |z| = 20); the interaction bounds need one")
    return math.nextafter(best * (1 + 1e-9), math.inf)


class MLPWeights(NamedTuple):
    """Frozen weights of every block of a standard MLP, acting on ``blocks.l.ln2.hook_normalized``.

    ``MLP_l(n2) = σ(n2 @ W_in_LDN[l] + b_in_LN[l]) @ W_out_LND[l] + b_out_LD[l]``.
    """

    W_in_LDN: torch.Tensor  # [L, D, N]
    b_in_LN: torch.Tensor  # [L, N]
    W_out_LND: torch.Tensor  # [L, N, D]
    b_out_LD: torch.Tensor  # [L, D]
    act_fn: str  # a key of transformers' ACT2FN, as in the bridge's cfg.act_fn

    @property
    def kind(self) -> str:
        """The MLP kind (module docstring): ``"standard"``, ``σ(u W_in + b_in) W_out + b_out``."""
        return "standard"

    @property
    def n_blocks(self) -> int:
        return self.W_in_LDN.shape[0]

    @property
    def lipschitz(self) -> float:
        """``Lip(σ)`` of this MLP's activation (see :func:`lipschitz`)."""
        return lipschitz(self.act_fn)

    def input_weights(self) -> tuple[torch.Tensor, ...]:
        """The matrices multiplying the MLP input: ``(W_in_LDN,)``."""
        return (self.W_in_LDN,)

    def input_biases(self) -> tuple[torch.Tensor, ...]:
        """Their biases: ``(b_in_LN,)``."""
        return (self.b_in_LN,)

    @staticmethod
    def combined(G: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """The matrix whose magnitude ranks features at a neuron: ``G_in`` itself."""
        return G[0]

    @staticmethod
    def chain(grad: torch.Tensor, G: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """The gradient with respect to each ``G_m`` from the one with respect to :meth:`combined`."""
        return (grad,)

    def W_out_norms_LN(self) -> torch.Tensor:
        """``‖W_out[l][k]‖``: how far neuron ``k`` of block ``l`` can move the residual stream per unit."""
        return self.W_out_LND.norm(dim=-1)

    def select(self, blocks: slice) -> MLPWeights:
        """The weights of a slice of blocks (e.g. ``slice(l, l + 1)``)."""
        return MLPWeights(*(t[blocks] for t in self[:4]), act_fn=self.act_fn)

    def to(self, device=None, dtype=None) -> MLPWeights:
        return MLPWeights(
            *(t.to(device=device, dtype=dtype) for t in self[:4]), act_fn=self.act_fn
        )


def mlp_weights(bridge) -> MLPWeights:
    """The bridge's MLP weights as a frozen :class:`MLPWeights` (detached float32 copies).

    ``bridge`` is a TransformerLens ``TransformerBridge`` in compatibility mode (or anything with
    ``W_in [L,D,N]``, ``b_in``, ``W_out``, ``b_out`` and ``cfg.act_fn``).
    """
    missing = [n for n in ("W_in", "b_in", "W_out", "b_out", "cfg") if not hasattr(bridge, n)]
    if missing:
        raise TypeError(
            f"mlp_weights needs a TransformerBridge with W_in/b_in/W_out/b_out/cfg; missing {missing}. "
            "Load the model with crosscoder_lib.lm.loading.load_model (compatibility mode)."
        )
    act_fn = getattr(bridge.cfg, "act_fn", None)
    activation(torch.zeros(1), act_fn)  # clear error for an unsupported activation

    def frozen(t) -> torch.Tensor:
        return t.detach().to(torch.float32).clone()

    mlp = MLPWeights(frozen(bridge.W_in), frozen(bridge.b_in), frozen(bridge.W_out), frozen(bridge.b_out), act_fn)
    L, D, N = mlp.W_in_LDN.shape
    expected = {"b_in": (L, N), "W_out": (L, N, D), "b_out": (L, D)}
    for name, tensor in zip(expected, mlp[1:4]):
        if tuple(tensor.shape) != expected[name]:
            raise ValueError(f"bridge.{name} has shape {tuple(tensor.shape)}, expected {expected[name]} from W_in {(L, D, N)}")
    return mlp


def preactivation(n2_BD: torch.Tensor, mlp: MLPWeights, block: int) -> torch.Tensor:
    """Neuron pre-activations ``z_BN = n2 @ W_in[block] + b_in[block]``."""
    return n2_BD @ mlp.W_in_LDN[block] + mlp.b_in_LN[block]


def mlp_from_preactivation(z_BN: torch.Tensor, mlp: MLPWeights, block: int) -> torch.Tensor:
    """MLP output ``σ(z) @ W_out[block] + b_out[block]`` from pre-activations ``z_BN``."""
    return activation(z_BN, mlp.act_fn) @ mlp.W_out_LND[block] + mlp.b_out_LD[block]


def apply_mlp(n2_BD: torch.Tensor, mlp: MLPWeights, block: int) -> torch.Tensor:
    """``MLP_block(n2) = σ(n2 W_in + b_in) W_out + b_out`` on MLP-input vectors ``n2_BD`` (any leading dims)."""
    return mlp_from_preactivation(preactivation(n2_BD, mlp, block), mlp, block)


@torch.no_grad()
def verify_mlp_weights(bridge, mlp: MLPWeights, tokens: torch.Tensor, rtol: float = 1e-4) -> list[float]:
    """Check SPEC §8's first invariant on real activations; returns each block's relative error.

    For every block, ``apply_mlp(blocks.l.ln2.hook_normalized)`` must equal ``blocks.l.hook_mlp_out``
    up to ``rtol`` (relative to the norm of ``hook_mlp_out``). Raises a ``ValueError`` naming the
    block otherwise: the usual cause is LayerNorm weights applied twice or not at all.
    """
    names = [f"blocks.{l}.{h}" for l in range(mlp.n_blocks) for h in ("ln2.hook_normalized", "hook_mlp_out")]
    _, cache = bridge.run_with_cache(tokens, names_filter=lambda n: n in names)
    errors = []
    for l in range(mlp.n_blocks):
        n2 = cache[f"blocks.{l}.ln2.hook_normalized"].float()
        out = cache[f"blocks.{l}.hook_mlp_out"].float()
        err = ((apply_mlp(n2, mlp, l) - out).norm() / out.norm().clamp_min(1e-12)).item()
        errors.append(err)
        if not err <= rtol:
            raise ValueError(
                f"block {l}: σ(n2 W_in + b_in) W_out + b_out differs from hook_mlp_out by {err:.2e} (relative). "
                "W_in does not multiply the vector at ln2.hook_normalized: load the model in TransformerLens "
                "compatibility mode (LayerNorm folded into W_in) or fold ln2's weight and bias into W_in/b_in."
            )
    return errors
