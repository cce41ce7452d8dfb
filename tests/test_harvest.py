"""Harvesting (TransformerBridge and nnsight agree) and the shuffling activation buffer."""

import pytest
import torch

from crosscoder_lib.lm.harvest import ActivationBuffer, harvest, harvest_nnsight
from crosscoder_lib.lm.hookpoints import paper_hookpoints
from crosscoder_lib.lm.loading import (
    load_model,
    load_nnsight,
    save_random_tinystories_like,
)

HP = paper_hookpoints(4)




@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_random_tinystories_like(tmp_path_factory.mktemp("rts"), d_model=32, d_mlp=64,
                                        context_len=32)


@pytest.fixture(scope="module")
def bridge(folder):
    return load_model(folder)


def _tokens(n=4, s=12, seed=0):
    return torch.randint(5, 60, (n, s), generator=torch.Generator().manual_seed(seed))


def test_harvest_matches_run_with_cache_and_drops_first_position(bridge):
    toks = _tokens()
    acts = harvest(bridge, toks, HP)
    assert acts.shape == (4 * 11, 17, 32)
    _, cache = bridge.run_with_cache(toks)
    ref = torch.stack([cache[h][:, 1:] for h in HP], dim=2).reshape(-1, 17, 32)
    assert torch.equal(acts, ref)
    keep = harvest(bridge, toks, HP, exclude_first=False)
    ref_all = torch.stack([cache[h] for h in HP], dim=2).reshape(-1, 17, 32)
    assert torch.equal(keep, ref_all)
    # hookpoints in early blocks only: the forward stops early and still agrees
    early = harvest(bridge, toks, HP[:4])
    assert torch.equal(early, ref[:, :4])


def test_nnsight_harvest_agrees_with_bridge(folder, bridge):
    toks = _tokens(seed=1)
    a_bridge = harvest(bridge, toks, HP)
    a_nn = harvest_nnsight(load_nnsight(folder), toks, HP)
    # LayerNorm weights are randomised in this model: a twice- or never-applied LN would differ by O(1)
    assert torch.allclose(a_nn, a_bridge, atol=1e-4, rtol=1e-4)
    sub = [HP[5], HP[16], HP[2]]  # any order, any subset
    assert torch.allclose(harvest_nnsight(load_nnsight(folder), toks, sub), a_bridge[:, [5, 16, 2]], atol=1e-4)


def test_bad_inputs(bridge):
    with pytest.raises(ValueError, match="unknown hook name.*Valid hook names are"):
        harvest(bridge, _tokens(), ["blocks.0.hook_resid_pre", "blocks.9.hook_resid_pre"])
    with pytest.raises(ValueError, match="LongTensor"):
        harvest(bridge, _tokens().float(), HP)
    with pytest.raises(ValueError, match="length 1"):
        harvest(bridge, _tokens(s=1), HP)


def test_buffer_yields_every_position_once_shuffled_and_bounded(bridge):
    batches = [_tokens(seed=s) for s in range(6)]  # 6 × 44 positions
    all_acts = torch.cat([harvest(bridge, t, HP) for t in batches])
    buf = ActivationBuffer(bridge, batches, HP, batch_size=32, capacity_tokens=100, seed=3)
    out = list(buf)
    got = torch.cat(out)
    assert len(got) == len(all_acts) == 264
    assert all(len(b) == 32 for b in out[:-1])
    # same multiset of rows: sort rows by a fingerprint and compare
    proj = torch.randn(17 * 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    key = lambda a: a.flatten(1).double() @ proj
    assert torch.allclose(key(got).sort().values, key(all_acts).sort().values, rtol=0, atol=1e-9)
    assert not torch.equal(got[:32], all_acts[:32])  # shuffled
    assert buf.memory_bytes == 100 * 17 * 32 * 4  # bounded by capacity, not by the stream
    again = torch.cat(list(buf))
    assert torch.equal(again, got)  # a pass is reproducible
    other = torch.cat(list(ActivationBuffer(bridge, batches, HP, batch_size=32, capacity_tokens=100, seed=4)))
    assert not torch.equal(other, got)


def test_buffer_empty_stream_is_a_clear_error(bridge):
    with pytest.raises(ValueError, match="token stream yielded no batches"):
        next(iter(ActivationBuffer(bridge, [], HP)))
    with pytest.raises(ValueError, match="batch_size"):
        ActivationBuffer(bridge, [], HP, batch_size=64, capacity_tokens=32)
    with pytest.raises(ValueError, match="unknown hook name"):
        ActivationBuffer(bridge, [], ["blocks.0.hook_nope"])


def test_buffer_disk_cache_reused(bridge, tmp_path):
    batches = [_tokens(seed=s) for s in range(3)]
    calls = []

    def counting(tokens):
        calls.append(1)
        return harvest(bridge, tokens, HP)

    buf = ActivationBuffer(bridge, lambda: iter(batches), HP, batch_size=16, capacity_tokens=64,
                           harvester=counting, cache_dir=tmp_path / "cache")
    first = torch.cat(list(buf))
    assert len(calls) == 3 and len(list((tmp_path / "cache").glob("shard_*.safetensors"))) == 3
    second = torch.cat(list(buf))
    assert len(calls) == 3  # nothing harvested again
    assert torch.equal(first, second)
    changed = [batches[0], _tokens(seed=42), batches[2]]
    buf.token_batches = changed
    list(buf)
    assert len(calls) == 4  # only the changed batch is harvested again
    with pytest.raises(ValueError, match="was written for"):
        next(iter(ActivationBuffer(bridge, batches, HP[:3], cache_dir=tmp_path / "cache")))


def test_buffer_cache_is_keyed_by_the_model(bridge, tmp_path):
    """Another model with the same shape reads the same tokens: on the code before the fix its buffer
    served the first model's cached activations."""
    other = load_model(save_random_tinystories_like(tmp_path / "other", d_model=32, d_mlp=64, context_len=32,
                                                    seed=1))
    batches = [_tokens(seed=s) for s in range(2)]
    list(ActivationBuffer(bridge, batches, HP, batch_size=16, capacity_tokens=64, cache_dir=tmp_path / "cache"))
    with pytest.raises(ValueError, match="was written for another model_sha256"):
        next(iter(ActivationBuffer(other, batches, HP, batch_size=16, capacity_tokens=64,
                                   cache_dir=tmp_path / "cache")))
    # its own cache holds its own activations
    got = torch.cat(list(ActivationBuffer(other, batches, HP, batch_size=16, capacity_tokens=64, seed=0,
                                          cache_dir=tmp_path / "cache_other")))
    want = torch.cat(list(ActivationBuffer(other, batches, HP, batch_size=16, capacity_tokens=64, seed=0)))
    assert torch.equal(got, want)
