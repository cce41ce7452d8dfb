"""The one loader: hook names, SPEC §8's MLP invariant on every block, clear errors."""

from __future__ import annotations

import socket
import time

import pytest
import torch

from crosscoder_lib.lm import loading
from crosscoder_lib.interactions.mlp import apply_mlp, mlp_weights
from crosscoder_lib.world.tokenizer import BOS_ID


@pytest.fixture(scope="module")
def random_folder(tmp_path_factory):
    return loading.save_random_tinystories_like(tmp_path_factory.mktemp("rnd") / "model", seed=3)


@pytest.fixture(scope="module")
def bridge(random_folder):
    return loading.load_model(str(random_folder))


def test_random_folder_is_a_complete_model_folder(random_folder):
    names = {p.name for p in random_folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= names


def test_hook_names_and_weight_shapes(bridge):
    tokens = bridge.to_tokens("Story: Lily went to the park.")
    assert tokens[0, 0].item() == BOS_ID and (tokens[0, 1:] != BOS_ID).all()  # one BOS, no double
    _, cache = bridge.run_with_cache(tokens)
    for l in range(4):
        for h in ("hook_resid_pre", "ln1.hook_normalized", "hook_resid_mid", "ln2.hook_normalized",
                  "hook_mlp_in", "hook_mlp_out", "hook_resid_post"):
            assert f"blocks.{l}.{h}" in cache, h
    assert bridge.W_in.shape == (4, 64, 256) and bridge.W_out.shape == (4, 256, 64)
    assert bridge.b_in.shape == (4, 256) and bridge.b_out.shape == (4, 64)
    assert bridge.cfg.act_fn == "gelu_new"


def test_mlp_invariant_every_block(bridge):
    """SPEC §8: σ(n2 W_in + b_in) W_out + b_out == hook_mlp_out, LayerNorm weights counted once."""
    torch.manual_seed(0)
    tokens = torch.randint(2, bridge.cfg.d_vocab, (3, 20))
    tokens[:, 0] = BOS_ID
    _, cache = bridge.run_with_cache(tokens)
    for l in range(4):
        n2 = cache[f"blocks.{l}.ln2.hook_normalized"]
        out = apply_mlp(n2, mlp_weights(bridge), l)
        torch.testing.assert_close(out, cache[f"blocks.{l}.hook_mlp_out"], atol=1e-5, rtol=1e-5)
        # hook_normalized is the un-weighted normalised vector (LayerNorm weights live in W_in) ...
        m = cache[f"blocks.{l}.hook_resid_mid"]
        c = m - m.mean(-1, keepdim=True)
        torch.testing.assert_close(n2, c / (c.pow(2).mean(-1, keepdim=True) + 1e-5).sqrt(),
                                   atol=1e-5, rtol=1e-5)
        # ... and the random LayerNorm weights are far from 1, so counting them twice would show.
        w = bridge.W_in[l]
        twice = torch.nn.functional.gelu(n2 * 1.3 @ w + bridge.b_in[l], approximate="tanh")
        assert (twice @ bridge.W_out[l] + bridge.b_out[l] - out).abs().max() > 1e-3


def test_bridge_matches_hf_log_probs(random_folder, bridge):
    model, tok = loading.load_hf(str(random_folder))
    tokens = bridge.to_tokens("Words: ball, park\nStory: Tom ran.")
    with torch.no_grad():
        ours = bridge(tokens).log_softmax(-1)
        ref = model(tokens).logits.log_softmax(-1)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)


def test_nnsight_view_of_the_same_checkpoint(random_folder, bridge):
    model = loading.load_nnsight(str(random_folder))
    prompt = "Story: Lily went to the park."
    with model.trace(prompt):
        logits = model.lm_head.output.save()
    ref = bridge(bridge.to_tokens(prompt))
    torch.testing.assert_close(logits.log_softmax(-1), ref.log_softmax(-1), atol=1e-4, rtol=1e-4)


def test_folder_that_is_not_a_model(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(loading.ModelNotFoundError, match="not a model folder.*config.json"):
        loading.load_model(str(tmp_path))
    with pytest.raises(loading.ModelNotFoundError, match="does not exist"):
        loading.load_model(str(tmp_path / "missing"))
    with pytest.raises(loading.ModelNotFoundError, match="is a file"):
        loading.load_model(str(tmp_path / "notes.txt"))
    with pytest.raises(loading.ModelNotFoundError, match="embedded:clean"):
        loading.load_model("embedded:nope")


def test_offline_hub_id_says_it_needs_network(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(loading.ModelNotFoundError,
                       match="roneneldan/TinyStories-Instruct-33M.*network"):
        loading.load_model("roneneldan/TinyStories-Instruct-33M")


def test_odd_block_count(tmp_path):
    folder = loading.save_random_tinystories_like(tmp_path / "m", n_blocks=3, d_model=32,
                                                  d_mlp=64, n_heads=2, context_len=32)
    b = loading.load_model(str(folder))
    assert b.cfg.n_layers == 3


@pytest.fixture
def no_network(monkeypatch):
    """A machine without the hub: every host name fails to resolve (as in a sandbox), and a retry's
    sleep is recorded instead of slept. Yields the list of sleeps."""
    from huggingface_hub import constants

    def unresolvable(host, *args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    slept: list[float] = []
    monkeypatch.setattr(socket, "getaddrinfo", unresolvable)
    monkeypatch.setattr(time, "sleep", slept.append)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY",
                "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    return slept


def test_missing_relative_folder_is_not_retried_as_a_hub_id(tmp_path, monkeypatch, no_network):
    """``models/tiny`` has a hub id's shape; with no such folder and no hub, every loader says so at
    once, naming the folder it looked for, and the hub client never gets to retry."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    for load in (loading.load_model, loading.load_hf, loading.load_nnsight):
        with pytest.raises(loading.ModelNotFoundError,
                           match=r"no folder 'models/tiny' in .*hub cannot be reached.*network"):
            load("models/tiny")
    assert no_network == []  # no retry was waited for


def test_hub_id_in_the_local_cache_loads_without_the_hub(tmp_path, monkeypatch, random_folder,
                                                         no_network):
    """Offline, a hub id stands for its complete copy in the local hub cache, read as a folder."""
    import shutil

    from huggingface_hub import constants

    snapshot = tmp_path / "hub" / "models--someone--tiny" / "snapshots" / "0123abcd"
    shutil.copytree(random_folder, snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0123abcd")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.chdir(tmp_path)
    assert loading.resolve("someone/tiny") == str(snapshot)
    model, tok = loading.load_hf("someone/tiny")
    assert model.config.num_layers == 4 and tok.bos_token_id == BOS_ID
    assert no_network == []
    shutil.rmtree(snapshot.parents[1] / "refs")  # a snapshot no ref names is not a usable copy
    with pytest.raises(loading.ModelNotFoundError, match="nor is it in the local hub cache"):
        loading.resolve("someone/tiny")
