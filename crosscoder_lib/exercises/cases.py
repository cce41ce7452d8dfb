"""Seeded inputs the checkers share: small crosscoders, MLPs and codes with every awkward case.

An :class:`InteractionCase` is what an MLP interaction quantity reads (SPEC §3): a crosscoder over
the paper's hookpoints of ``L`` blocks (float64, a random non-zero decoder bias, so that ``β`` is
more than ``b_in``), frozen MLP weights and a batch of codes. :func:`interaction_cases` gives the
cases every interaction checker runs:

- random codes over two blocks;
- padded slots (value 0, their ids pointing at real features) and a token with no active feature;
- a neuron that two features drive equally, in opposite directions (exact ties);
- one feature that dominates many neurons of a token (the interaction matrix must sum them);
- one active feature per token (share 1, penalty 0), on a ReLU MLP.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from crosscoder_lib.crosscoder.activations import SparseCodes
from crosscoder_lib.crosscoder.model import Crosscoder, CrosscoderConfig
from crosscoder_lib.interactions.decoder import mlp_input_decoder, neuron_bias, neuron_weights
from crosscoder_lib.interactions.mlp import MLPWeights
from crosscoder_lib.lm.hookpoints import mlp_input_slots, paper_hookpoints

F64 = torch.float64


class InteractionCase(NamedTuple):
    """One case of an interaction checker (module docstring); float64 throughout."""

    name: str
    crosscoder: Crosscoder
    mlp: MLPWeights
    codes: SparseCodes

    @property
    def W_dec_LHD(self) -> torch.Tensor:
        """Decoder rows at each block's MLP input, model units (detached)."""
        return mlp_input_decoder(self.crosscoder)[0].detach()

    @property
    def b_dec_LD(self) -> torch.Tensor:
        return mlp_input_decoder(self.crosscoder)[1].detach()

    @property
    def G_LHN(self) -> torch.Tensor:
        """``G_l = W_dec[:, slot(l)] @ W_in_l`` (detached)."""
        return neuron_weights(self.W_dec_LHD, self.mlp)

    @property
    def beta_LN(self) -> torch.Tensor:
        """``β_l = b_dec[slot(l)] @ W_in_l + b_in_l``: what no feature carries."""
        return neuron_bias(self.b_dec_LD, self.mlp)

    @property
    def w_LN(self) -> torch.Tensor:
        """``‖W_out[l][n]‖``."""
        return self.mlp.W_out_norms_LN()


def random_mlp(n_blocks: int, d_model: int, d_mlp: int, g: torch.Generator, act_fn: str = "gelu_new") -> MLPWeights:
    """Frozen float64 MLP weights of ``n_blocks`` blocks, every tensor drawn from ``g``."""
    return MLPWeights(torch.randn(n_blocks, d_model, d_mlp, generator=g, dtype=F64) / d_model ** 0.5,
                      torch.randn(n_blocks, d_mlp, generator=g, dtype=F64) * 0.5,
                      torch.randn(n_blocks, d_mlp, d_model, generator=g, dtype=F64) / d_mlp ** 0.5,
                      torch.randn(n_blocks, d_model, generator=g, dtype=F64) * 0.1, act_fn)


def random_crosscoder(n_blocks: int, d_model: int, n_features: int, g: torch.Generator) -> Crosscoder:
    """A float64 crosscoder over ``paper_hookpoints(n_blocks)`` with random decoder rows and bias."""
    cfg = CrosscoderConfig(hookpoints=paper_hookpoints(n_blocks), d_model=d_model, n_features=n_features,
                           k=min(4, n_features))
    cc = Crosscoder(cfg).double()
    with torch.no_grad():
        cc.W_dec_HXD.copy_(torch.randn(cc.W_dec_HXD.shape, generator=g, dtype=F64))
        cc.b_dec_XD.copy_(torch.randn(cc.b_dec_XD.shape, generator=g, dtype=F64) * 0.3)
    return cc


def random_codes(n_tokens: int, n_slots: int, n_features: int, g: torch.Generator) -> SparseCodes:
    """Distinct feature ids per token, activations in ``[0.2, 1.2)`` (every slot active)."""
    idx = torch.stack([torch.randperm(n_features, generator=g)[:n_slots] for _ in range(n_tokens)])
    return SparseCodes(idx, torch.rand(n_tokens, n_slots, generator=g, dtype=F64) + 0.2)


def _case(name: str, seed: int, L: int = 2, H: int = 8, D: int = 5, N: int = 6, B: int = 6, K: int = 3,
          act_fn: str = "gelu_new") -> InteractionCase:
    g = torch.Generator().manual_seed(seed)
    return InteractionCase(name, random_crosscoder(L, D, H, g), random_mlp(L, D, N, g, act_fn),
                           random_codes(B, K, H, g))


def _padded(case: InteractionCase) -> InteractionCase:
    idx, val = case.codes.idx_BK.clone(), case.codes.val_BK.clone()
    val[1] = 0.0  # no active feature
    val[2, 0] = 0.0  # a padded slot before an active one
    val[3, 1:] = 0.0  # one active feature, then padding
    idx[3, 1:] = idx[3, 0]  # padded ids may point at a real (even the same) feature
    return case._replace(codes=SparseCodes(idx, val))


def _tie(case: InteractionCase) -> InteractionCase:
    """Features 1 and 2 have opposite decoder rows and equal activations at token 0: at every neuron
    their contributions are equal in size and opposite in sign (which one dominates matters)."""
    with torch.no_grad():
        case.crosscoder.W_dec_HXD[2] = -case.crosscoder.W_dec_HXD[1]
    idx, val = case.codes.idx_BK.clone(), case.codes.val_BK.clone()
    idx[0] = torch.tensor([1, 2, 5])
    val[0, :2] = 0.7
    return case._replace(codes=SparseCodes(idx, val))


def _shared_dominant(case: InteractionCase, g: torch.Generator) -> InteractionCase:
    """Feature 0 (a large decoder row at the MLP inputs) dominates most neurons of every token."""
    slots = mlp_input_slots(case.crosscoder.cfg.hookpoints)
    with torch.no_grad():
        case.crosscoder.W_dec_HXD[0, slots] *= 8.0
    idx = case.codes.idx_BK.clone()
    idx[:, 0] = 0
    idx[:, 1:] = torch.stack([torch.randperm(7, generator=g)[:idx.shape[1] - 1] + 1 for _ in range(idx.shape[0])])
    return case._replace(codes=SparseCodes(idx, case.codes.val_BK))


def _single(case: InteractionCase) -> InteractionCase:
    return case._replace(codes=SparseCodes(case.codes.idx_BK[:, :1], case.codes.val_BK[:, :1]))


def interaction_cases(seed: int = 0) -> list[InteractionCase]:
    """The five cases of the module docstring, seeded."""
    return [
        _case("random codes, two blocks", seed),
        _padded(_case("padded slots and a token with no active feature", seed + 1)),
        _tie(_case("a neuron that two features drive equally", seed + 2, L=1)),
        _shared_dominant(_case("one feature dominates many neurons", seed + 3, L=1, N=12, B=4),
                         torch.Generator().manual_seed(seed + 3)),
        _single(_case("one active feature per token (ReLU MLP)", seed + 4, act_fn="relu")),
    ]
