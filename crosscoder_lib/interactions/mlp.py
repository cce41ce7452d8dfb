"""MLP kinds: the frozen MLP weights of a transformer, read so that they act on the MLP-input hookpoint.

SPEC §2: block ``l`` computes ``MLP(n2) = σ(n2 W_in + b_in) W_out + b_out`` on
``n2 = blocks.l.ln2.hook_normalized``. Every interaction quantity multiplies crosscoder decoder
rows at that hookpoint by ``W_in``, so ``W_in`` must be the matrix that multiplies *exactly* the
vector stored at ``ln2.hook_normalized`` (SPEC §8's first invariant). In TransformerLens's
compatibility mode the norm's scale (and LayerNorm's bias) are folded into ``W_in``/``b_in`` (and
``W_gate``) and ``hook_normalized`` is the un-scaled normalised vector, so the bridge's weights are
the right ones; :func:`verify_mlp_weights` checks it on real activations and says what is wrong
when it is not.

**The kind of an MLP** is what the shared interaction engine needs from it, and nothing else:

- ``input_weights()``: the matrices ``[L, D, N]`` whose products ``G_m = W_dec · W_m`` with the
  decoder rows give each neuron's per-feature contributions, and ``input_biases()`` their biases;
- ``combined(G)``: from those products, the matrix whose magnitude ``|G|`` ranks features at a
  neuron and that the engine and the fused C kernel consume, and ``chain(grad, G)``: the gradient
  with respect to each ``G_m`` given the one with respect to ``combined(G)``, in order (an iterable);
- ``W_out_norms_LN()``: ``‖W_out[l][k]‖``, a neuron's reach into the residual stream;
- ``preactivations(n2, l)`` and ``output(z, l)``: the MLP itself, from its input or from the
  pre-activations of each input matrix; ``contributions(p)``: the per-feature contributions of
  each input matrix, packaged for the caller;
- ``act_fn`` and ``kind`` (a name), which select the feature-wise explanation and its bound in
  :mod:`crosscoder_lib.interactions.bound`.

Two kinds exist. :class:`MLPWeights` (``"standard"``): ``σ(u W_in + b_in) W_out + b_out``, one input
matrix, ``combined(G) = G``. :class:`GatedMLPWeights` (``"gated"``, SwiGLU/GeGLU as in Llama and
SmolLM2): ``(σ(u W_gate + b_gate) ⊙ (u W_in + b_in)) W_out + b_out`` with TransformerLens's names
(``W_in`` the up projection, ``W_out`` the down projection), two input matrices, ``combined(G) =
|G_gate| + |G_up|`` (a feature's contribution ``c = |p_gate| + |p_up|`` ranks it) and ``chain(grad, G)
= (grad·sign(G_gate), grad·sign(G_up))``.

Both record ``blocks``: the model block of each of their ``L`` stacked blocks (None: ``0 … L−1``),
so weights read for a crosscoder over a window of blocks (``mlp_weights(bridge, blocks=[8, 9, 10,
11])``) know which hooks they belong to.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import torch

from crosscoder_lib.interactions.activation import activation, lipschitz

__all__ = ["MLPWeights", "GatedMLPWeights", "AnyMLP", "GatedContributions", "mlp_weights", "verify_mlp_weights",
           "apply_mlp", "preactivation", "mlp_from_preactivation", "activation", "lipschitz"]


def _model_blocks(w) -> tuple[int, ...]:
    return tuple(range(w.n_blocks)) if w.blocks is None else tuple(w.blocks)


def _rebuild(w, tensor_fn, blocks):
    """``w``'s kind again, with ``tensor_fn`` applied to each weight tensor."""
    return type(w)(*(tensor_fn(t) for t in w[:-2]), act_fn=w.act_fn, blocks=blocks)


def _select(w, index: slice):
    blocks = _model_blocks(w)[index]
    return _rebuild(w, lambda t: t[index], blocks)


def _for_blocks(w, blocks):
    """The weights of the model blocks ``blocks``, in that order (``w`` itself when they are its own)."""
    blocks, have = tuple(int(b) for b in blocks), _model_blocks(w)
    if blocks == have:
        return w
    missing = [b for b in blocks if b not in have]
    if missing:
        raise ValueError(f"these MLP weights hold blocks {list(have)}, not {missing}: read the blocks the "
                         f"crosscoder needs with mlp_weights(bridge, blocks={list(blocks)}) (or all, the default)")
    index = torch.tensor([have.index(b) for b in blocks])
    return _rebuild(w, lambda t: t[index], blocks)


def _to(w, device, dtype):
    return _rebuild(w, lambda t: t.to(device=device, dtype=dtype), w.blocks)


class MLPWeights(NamedTuple):
    """Frozen weights of the blocks of a standard MLP, acting on ``blocks.l.ln2.hook_normalized``.

    ``MLP_l(n2) = σ(n2 @ W_in_LDN[l] + b_in_LN[l]) @ W_out_LND[l] + b_out_LD[l]``.
    """

    W_in_LDN: torch.Tensor  # [L, D, N]
    b_in_LN: torch.Tensor  # [L, N]
    W_out_LND: torch.Tensor  # [L, N, D]
    b_out_LD: torch.Tensor  # [L, D]
    act_fn: str  # a key of transformers' ACT2FN, as in the bridge's cfg.act_fn
    blocks: tuple | None = None  # the model block of each stacked block (None: 0 … L−1)

    kind = "standard"
    """The MLP kind (module docstring): ``σ(u W_in + b_in) W_out + b_out``."""
    formula = "σ(n2 W_in + b_in) W_out + b_out"

    @property
    def n_blocks(self) -> int:
        return self.W_in_LDN.shape[0]

    @property
    def model_blocks(self) -> tuple[int, ...]:
        """The model block of each stacked block (``(8, 9, 10, 11)`` for a window; default ``0 … L−1``)."""
        return _model_blocks(self)

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

    @staticmethod
    def contributions(p: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """The per-feature contributions to the one pre-activation: ``p`` itself."""
        return p[0]

    def W_out_norms_LN(self) -> torch.Tensor:
        """``‖W_out[l][k]‖``: how far neuron ``k`` of block ``l`` can move the residual stream per unit."""
        return self.W_out_LND.norm(dim=-1)

    def preactivations(self, n2_BD: torch.Tensor, block: int) -> tuple[torch.Tensor, ...]:
        """``(z,)`` with ``z = n2 @ W_in[block] + b_in[block]``."""
        return (preactivation(n2_BD, self, block),)

    def output(self, z: tuple[torch.Tensor, ...], block: int) -> torch.Tensor:
        """The MLP output ``σ(z) @ W_out[block] + b_out[block]`` from the pre-activations ``(z,)``."""
        return mlp_from_preactivation(z[0], self, block)

    def select(self, blocks: slice) -> MLPWeights:
        """The weights of a slice of the stacked blocks (e.g. ``slice(l, l + 1)``)."""
        return _select(self, blocks)

    def for_blocks(self, blocks) -> MLPWeights:
        """The weights of the model blocks ``blocks`` in that order (``hookpoint_blocks(hookpoints)``)."""
        return _for_blocks(self, blocks)

    def to(self, device=None, dtype=None) -> MLPWeights:
        return _to(self, device, dtype)


class GatedContributions(NamedTuple):
    """Per-feature contributions to a gated MLP's two pre-activations, each ``[L, T, N, K]``."""

    gate_LTNK: torch.Tensor
    """``p_gate = a · (W_dec W_gate)``: into ``σ``."""
    up_LTNK: torch.Tensor
    """``p_up = a · (W_dec W_in)``: the factor ``σ`` multiplies."""


class GatedMLPWeights(NamedTuple):
    """Frozen weights of the blocks of a gated MLP, acting on ``blocks.l.ln2.hook_normalized``.

    ``MLP_l(n2) = (σ(n2 @ W_gate[l] + b_gate[l]) ⊙ (n2 @ W_in[l] + b_in[l])) @ W_out[l] + b_out[l]``,
    with TransformerLens's names: ``W_in`` is the up projection, ``W_out`` the down projection.
    """

    W_gate_LDN: torch.Tensor  # [L, D, N]
    b_gate_LN: torch.Tensor  # [L, N]
    W_in_LDN: torch.Tensor  # [L, D, N], the up projection
    b_in_LN: torch.Tensor  # [L, N]
    W_out_LND: torch.Tensor  # [L, N, D], the down projection
    b_out_LD: torch.Tensor  # [L, D]
    act_fn: str  # of the gate: "silu" (SwiGLU), "gelu"/"gelu_new" (GeGLU)
    blocks: tuple | None = None  # the model block of each stacked block (None: 0 … L−1)

    kind = "gated"
    """The MLP kind (module docstring): ``(σ(u W_gate + b_gate) ⊙ (u W_in + b_in)) W_out + b_out``."""
    formula = "(σ(n2 W_gate + b_gate) ⊙ (n2 W_in + b_in)) W_out + b_out"

    n_blocks = MLPWeights.n_blocks
    model_blocks = MLPWeights.model_blocks
    lipschitz = MLPWeights.lipschitz
    W_out_norms_LN = MLPWeights.W_out_norms_LN

    def input_weights(self) -> tuple[torch.Tensor, ...]:
        """``(W_gate_LDN, W_in_LDN)``: the gate's, then the up projection's."""
        return (self.W_gate_LDN, self.W_in_LDN)

    def input_biases(self) -> tuple[torch.Tensor, ...]:
        return (self.b_gate_LN, self.b_in_LN)

    @staticmethod
    def combined(G: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """``C = |G_gate| + |G_up|``: feature ``v`` reaches neuron ``k`` by ``c = |a_v|·C[v, k] =
        |p_gate| + |p_up|``, whose off-dominant sum is ``S_gate + S_up`` (the penalty's term)."""
        return G[0].abs().add_(G[1].abs())

    @staticmethod
    def chain(grad: torch.Tensor, G: tuple[torch.Tensor, ...]) -> Iterator[torch.Tensor]:
        """``∂/∂G_m = sign(G_m) · ∂/∂C`` for the gate, then the up projection.

        Yielded one at a time into ONE buffer (use each before asking for the next): a fresh
        ``[L, H, N]`` tensor per step costs as much as the products themselves (page faults).
        """
        buf = torch.empty_like(grad)
        for G_m in G:
            yield torch.sign(G_m, out=buf).mul_(grad)

    @staticmethod
    def contributions(p: tuple[torch.Tensor, ...]) -> GatedContributions:
        return GatedContributions(*p)

    def preactivations(self, n2_BD: torch.Tensor, block: int) -> tuple[torch.Tensor, ...]:
        """``(z_gate, z_up)``."""
        return (n2_BD @ self.W_gate_LDN[block] + self.b_gate_LN[block],
                n2_BD @ self.W_in_LDN[block] + self.b_in_LN[block])

    def output(self, z: tuple[torch.Tensor, ...], block: int) -> torch.Tensor:
        """``(σ(z_gate) ⊙ z_up) @ W_out[block] + b_out[block]``."""
        return (activation(z[0], self.act_fn) * z[1]) @ self.W_out_LND[block] + self.b_out_LD[block]

    def select(self, blocks: slice) -> GatedMLPWeights:
        return _select(self, blocks)

    def for_blocks(self, blocks) -> GatedMLPWeights:
        return _for_blocks(self, blocks)

    def to(self, device=None, dtype=None) -> GatedMLPWeights:
        return _to(self, device, dtype)


AnyMLP = MLPWeights | GatedMLPWeights
"""The weights of an MLP of either kind."""


def _checked_blocks(blocks, n_layers: int) -> list[int]:
    blocks = list(range(n_layers)) if blocks is None else [int(b) for b in blocks]
    bad = [b for b in blocks if not 0 <= b < n_layers]
    if bad or len(set(blocks)) != len(blocks) or not blocks:
        raise ValueError(f"blocks must be distinct block indices in 0…{n_layers - 1}; got {blocks}")
    return blocks


def _bias(bridge, name: str, shape: tuple) -> torch.Tensor:
    # A bias-free checkpoint's bridge raises AttributeError for b_in/b_out: that bias is zero.
    bias = getattr(bridge, name, None)
    return torch.zeros(shape) if bias is None else bias.detach().to(torch.float32)


def mlp_weights(bridge, blocks=None) -> AnyMLP:
    """The bridge's MLP weights as frozen :class:`MLPWeights`, or :class:`GatedMLPWeights` when its
    ``cfg.gated_mlp`` is set (detached float32 copies).

    ``bridge`` is a TransformerLens ``TransformerBridge`` in compatibility mode (or anything with
    ``W_in [L,D,N]``, ``W_out``, ``cfg.act_fn``, and ``W_gate`` when gated). ``blocks``: the model
    blocks to read, in that order (a crosscoder over a window reads
    ``hookpoint_blocks(cfg.hookpoints)``); default every block. Biases the checkpoint does not have
    (SmolLM2 has none) are zeros; a gate bias the bridge does not expose as ``b_gate`` would be
    missed, which :func:`verify_mlp_weights` catches.
    """
    cfg = getattr(bridge, "cfg", None)
    gated = bool(getattr(cfg, "gated_mlp", False))
    missing = [n for n in ("W_in", "W_out", "cfg") + (("W_gate",) if gated else ()) if not hasattr(bridge, n)]
    if missing:
        raise TypeError(
            f"mlp_weights needs a TransformerBridge with W_in/W_out/cfg (and W_gate when gated); missing {missing}. "
            "Load the model with crosscoder_lib.lm.loading.load_model (compatibility mode)."
        )
    act_fn = getattr(cfg, "act_fn", None)
    activation(torch.zeros(1), act_fn)  # clear error for an unsupported activation
    n_layers, D, N = bridge.W_in.shape
    index = torch.tensor(_checked_blocks(blocks, n_layers))
    L = len(index)

    def frozen(t) -> torch.Tensor:
        return t.detach().to(torch.float32)[index].clone()

    W_in, W_out = frozen(bridge.W_in), frozen(bridge.W_out)
    b_in, b_out = frozen(_bias(bridge, "b_in", (n_layers, N))), frozen(_bias(bridge, "b_out", (n_layers, D)))
    ids = tuple(index.tolist())
    if gated:
        W_gate, b_gate = frozen(bridge.W_gate), frozen(_bias(bridge, "b_gate", (n_layers, N)))
        mlp = GatedMLPWeights(W_gate, b_gate, W_in, b_in, W_out, b_out, act_fn, ids)
    else:
        mlp = MLPWeights(W_in, b_in, W_out, b_out, act_fn, ids)
    expected = {"W_gate_LDN": (L, D, N), "b_gate_LN": (L, N), "W_in_LDN": (L, D, N), "b_in_LN": (L, N),
                "W_out_LND": (L, N, D), "b_out_LD": (L, D)}
    for field in mlp._fields[:-2]:
        shape = tuple(getattr(mlp, field).shape)
        if shape != expected[field]:
            raise ValueError(f"bridge.{field.rsplit('_', 1)[0]} has shape {shape} for the blocks read, expected "
                             f"{expected[field]} from W_in {(n_layers, D, N)}")
    return mlp


def preactivation(n2_BD: torch.Tensor, mlp: MLPWeights, block: int) -> torch.Tensor:
    """Neuron pre-activations ``z_BN = n2 @ W_in[block] + b_in[block]`` (standard kind)."""
    return n2_BD @ mlp.W_in_LDN[block] + mlp.b_in_LN[block]


def mlp_from_preactivation(z_BN: torch.Tensor, mlp: MLPWeights, block: int) -> torch.Tensor:
    """MLP output ``σ(z) @ W_out[block] + b_out[block]`` from pre-activations ``z_BN`` (standard kind)."""
    return activation(z_BN, mlp.act_fn) @ mlp.W_out_LND[block] + mlp.b_out_LD[block]


def apply_mlp(n2_BD: torch.Tensor, mlp: AnyMLP, block: int) -> torch.Tensor:
    """``MLP_block(n2)`` of either kind on MLP-input vectors ``n2_BD`` (any leading dims); ``block``
    indexes the stacked blocks."""
    return mlp.output(mlp.preactivations(n2_BD, block), block)


@torch.no_grad()
def verify_mlp_weights(bridge, mlp: AnyMLP, tokens: torch.Tensor, rtol: float = 1e-4) -> list[float]:
    """Check SPEC §8's first invariant on real activations; returns each block's relative error.

    For every block of ``mlp`` (its :attr:`model_blocks`), ``apply_mlp(blocks.b.ln2.hook_normalized)``
    must equal ``blocks.b.hook_mlp_out`` up to ``rtol`` (relative to the norm of ``hook_mlp_out``).
    Raises a ``ValueError`` naming the block otherwise: the usual cause is the norm's weights
    applied twice or not at all.
    """
    blocks = mlp.model_blocks
    names = [f"blocks.{b}.{h}" for b in blocks for h in ("ln2.hook_normalized", "hook_mlp_out")]
    _, cache = bridge.run_with_cache(tokens, names_filter=lambda n: n in names)
    errors = []
    for l, b in enumerate(blocks):
        n2 = cache[f"blocks.{b}.ln2.hook_normalized"].float()
        out = cache[f"blocks.{b}.hook_mlp_out"].float()
        err = ((apply_mlp(n2, mlp, l) - out).norm() / out.norm().clamp_min(1e-12)).item()
        errors.append(err)
        if not err <= rtol:
            raise ValueError(
                f"block {b}: {mlp.formula} differs from hook_mlp_out by {err:.2e} (relative). "
                "The input weights do not multiply the vector at ln2.hook_normalized: load the model in "
                "TransformerLens compatibility mode (the norm folded into them) or fold ln2's weight and bias in."
            )
    return errors
