"""harvest_positions: exactly the first n positions, BOS never counted, the windows beside them, and the
same activations as `harvest` on those windows; harvest_prompts: ragged per-prompt activations."""

import pytest
import torch

from crosscoder_lib.lm.harvest import harvest
from crosscoder_lib.lm.hookpoints import paper_hookpoints
from crosscoder_lib.lm.loading import load_model, save_random_tinystories_like
from crosscoder_lib.lm.positions import NotEnoughPositionsError, harvest_positions, harvest_prompts
from crosscoder_lib.world.data import embedded_texts, token_batches
from crosscoder_lib.world.tokenizer import encode

HP = paper_hookpoints(4)
S = 16  # window length: 15 positions after BOS


@pytest.fixture(scope="module")
def bridge(tmp_path_factory):
    folder = save_random_tinystories_like(tmp_path_factory.mktemp("rts"), d_model=32, d_mlp=64, context_len=32)
    return load_model(folder)


@pytest.fixture(scope="module")
def texts():
    return embedded_texts(12)


def test_exactly_n_positions_bos_never_counted(bridge, texts):
    n = 96  # 6 windows of 15 positions and 6 of a 7th; were BOS counted, 6 windows of 16 would do
    got = harvest_positions(bridge, texts, HP, n, context_len=S, batch_size=4, seed=3)
    assert got.acts_BXD.shape == (n, 17, 32)
    assert got.tokens_NS.shape == (7, S)
    assert (got.tokens_NS[:, 0] == bridge.tokenizer.bos_token_id).all()
    assert torch.equal(got.positions_NS, got.tokens_NS[:, 1:])
    assert torch.equal(got.token_ids_B, got.tokens_NS[:, 1:].reshape(-1)[:n])
    # row i is position i % 15 + 1 of window i // 15: every position but each window's first
    every = harvest(bridge, got.tokens_NS, HP, exclude_first=False).view(7, S, 17, 32)
    assert torch.allclose(got.acts_BXD, every[:, 1:].reshape(-1, 17, 32)[:n], atol=1e-5, rtol=1e-5)
    # the windows are the first ones of the same stream token_batches gives
    stream = torch.cat(list(token_batches(texts, bridge.tokenizer, batch_size=4, context_len=S, seed=3)))
    assert torch.equal(got.tokens_NS, stream[:7])


def test_equals_harvest_on_the_same_windows(bridge, texts):
    n = 100
    got = harvest_positions(bridge, texts, HP, n, context_len=S, batch_size=4, seed=3)
    batches = list(token_batches(texts, bridge.tokenizer, batch_size=4, context_len=S, seed=3))[:2]
    same = torch.cat([harvest(bridge, b, HP) for b in batches])[:n]
    assert torch.equal(got.acts_BXD, same)  # batch by batch, as the chapters did by hand: bit for bit
    whole = harvest(bridge, got.tokens_NS, HP)[:n]  # one forward over the returned windows
    assert torch.allclose(got.acts_BXD, whole, atol=1e-5, rtol=1e-5)
    # token batches in, used as they come
    again = harvest_positions(bridge, batches, HP, n)
    assert torch.equal(again.acts_BXD, got.acts_BXD) and torch.equal(again.tokens_NS, got.tokens_NS)


def test_whole_stream_and_too_short_a_stream(bridge, texts):
    every = harvest_positions(bridge, texts, HP, None, context_len=S, batch_size=4)
    n_windows = len(every.tokens_NS)
    assert n_windows % 4 == 0 and every.acts_BXD.shape[0] == n_windows * (S - 1)
    with pytest.raises(NotEnoughPositionsError, match=r"gave \d+ positions .* fewer than n_positions=100000") as err:
        harvest_positions(bridge, texts, HP, 100_000, context_len=S, batch_size=4)
    assert torch.equal(err.value.partial.acts_BXD, every.acts_BXD)  # nothing harvested is lost
    with pytest.raises(ValueError, match="n_positions must be >= 1"):
        harvest_positions(bridge, texts, HP, 0, context_len=S)
    with pytest.raises(ValueError, match="needs context_len"):
        harvest_positions(bridge, texts, HP, 10)
    with pytest.raises(ValueError, match="no texts and no token batches"):
        harvest_positions(bridge, [], HP, 10, context_len=S)


def test_harvest_prompts_is_ragged_per_prompt(bridge, texts):
    tok = bridge.tokenizer
    prompts = [t[: 20 + 15 * i] for i, t in enumerate(texts[:5])]
    batches = list(harvest_prompts(bridge, prompts, HP, batch_size=2))
    assert [b.start for b in batches] == [0, 2, 4]
    ids = [encode(tok, p) for p in prompts]
    acts = [a for b in batches for a in b.per_prompt()]
    tokens = [t for b in batches for t in b.tokens]
    for i, p_ids in enumerate(ids):
        assert acts[i].shape == (len(p_ids) - 1, 17, 32)
        assert tokens[i] == tok.convert_ids_to_tokens(p_ids[1:])
        alone = harvest(bridge, torch.tensor([p_ids]), HP)  # right padding in the batch changes nothing
        assert torch.allclose(acts[i], alone, atol=1e-5, rtol=1e-5)
    assert torch.equal(batches[0].acts_BXD, torch.cat(batches[0].per_prompt()))
    same = list(harvest_prompts(bridge, ids, HP, batch_size=2))  # token ids in: the same batches
    assert all(torch.equal(a.acts_BXD, b.acts_BXD) for a, b in zip(same, batches))
    with pytest.raises(ValueError, match="BOS-first"):
        next(harvest_prompts(bridge, [[5, 6, 7]], HP))
