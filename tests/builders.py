"""Small objects several library tests build: a tiny random TinyStories-shaped model, BOS-first random
tokens, and a crosscoder that reconstructs every hookpoint exactly."""

from __future__ import annotations

from pathlib import Path

import torch

from crosscoder_lib.lm import loading
from crosscoder_lib.crosscoder.model import Crosscoder, CrosscoderConfig
from crosscoder_lib.lm.hookpoints import paper_hookpoints
from crosscoder_lib.world.tokenizer import BOS_ID


def tiny_bridge(folder: Path, **shape):
    """A randomly initialised GPT-Neo of the TinyStories architecture saved to ``folder`` and loaded
    as a TransformerBridge (``shape``: keyword arguments of ``save_random_tinystories_like``)."""
    return loading.load_model(str(loading.save_random_tinystories_like(folder, **shape)))


def random_tokens(bridge, batch: int, seq: int, seed: int = 0) -> torch.Tensor:
    """``tokens_BS``: uniform random non-special ids, BOS first, as every window of the data pipeline."""
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(2, bridge.cfg.d_vocab, (batch, seq), generator=g)
    t[:, 0] = BOS_ID
    return t


def exact_crosscoder(n_blocks: int, d_model: int) -> Crosscoder:
    """Features ±e_{x,d} under ReLU reconstruct every hookpoint exactly: x = relu(x) − relu(−x)."""
    X = 4 * n_blocks + 1
    cfg = CrosscoderConfig(hookpoints=paper_hookpoints(n_blocks), d_model=d_model,
                           n_features=2 * X * d_model, activation="relu", sparsity_coeff=1e-3)
    cc = Crosscoder(cfg)
    eye = torch.eye(X * d_model).view(X * d_model, X, d_model)
    with torch.no_grad():
        cc.W_dec_HXD.copy_(torch.cat([eye, -eye]))
        cc.W_enc_XDH.copy_(cc.W_dec_HXD.permute(1, 2, 0))
    return cc
