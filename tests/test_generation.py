"""Batched KV-cache generation: greedy equals transformers' generate; sampling is seeded; stops are honoured."""

import pytest
import torch

from crosscoder_lib.lm.generation import generate_tokens
from crosscoder_lib.lm.loading import load_hf, save_random_tinystories_like


@pytest.fixture(scope="module")
def model_and_tok(tmp_path_factory):
    folder = save_random_tinystories_like(tmp_path_factory.mktemp("gen") / "m", n_blocks=2, d_model=32, d_mlp=64)
    return load_hf(str(folder))


def test_greedy_is_transformers_generate_token_for_token(model_and_tok):
    model, tok = model_and_tok
    prompts = [[0, 5, 6, 7], [0, 9], [0, 3, 3, 3, 3, 3]]
    ours = generate_tokens(model, prompts, max_new_tokens=12, stop_ids=[10_000], pad_id=0)
    for p, got in zip(prompts, ours):
        # An explicit mask: generate() would otherwise mask the BOS, which is also the pad token here.
        ids = torch.tensor([p])
        ref = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                             pad_token_id=0, eos_token_id=None)[0, len(p):].tolist()
        assert got == ref


def test_sampling_is_seeded_and_stops_at_a_stop_token(model_and_tok):
    model, _ = model_and_tok
    prompts = [[0, 5, 6], [0, 7]]
    a = generate_tokens(model, prompts, max_new_tokens=20, stop_ids=[10_000], pad_id=0, temperature=1.0, seed=1)
    b = generate_tokens(model, prompts, max_new_tokens=20, stop_ids=[10_000], pad_id=0, temperature=1.0, seed=1)
    c = generate_tokens(model, prompts, max_new_tokens=20, stop_ids=[10_000], pad_id=0, temperature=1.0, seed=2)
    assert a == b and a != c
    stop = a[0][3]
    cut = generate_tokens(model, prompts, max_new_tokens=20, stop_ids=[stop], pad_id=0, temperature=1.0, seed=1)
    assert cut[0] == a[0][:a[0].index(stop)] and stop not in cut[0]
    assert generate_tokens(model, [], max_new_tokens=3, stop_ids=[1], pad_id=0) == []
