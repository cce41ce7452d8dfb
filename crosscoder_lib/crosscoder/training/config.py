"""What a training run is: the arithmetic (:class:`TrainConfig`) and the run options (:class:`RunOptions`).

The split says what a resumed run may change. Every :class:`TrainConfig` field changes the numbers
training produces, so it is part of the run's identity and a resume under another value is refused
(:mod:`~crosscoder_lib.crosscoder.training.identity`). :class:`RunOptions` only change how the run
is watched and kept (progress bar, logging and checkpoint cadence, W&B) or where it runs (device):
a resume may change them freely. Moving to another device keeps the run but not its bit-for-bit
arithmetic (other kernels sum in another order).

Both are :class:`~crosscoder_lib.crosscoder.jsonconfig.JsonConfig`: JSON values are coerced by
field type (``1e3`` for an int, ``"3e-4"`` for a float) or rejected with the field named.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from crosscoder_lib.crosscoder.jsonconfig import ConfigError, JsonConfig

PENALTY_FORMS = ("unweighted", "weighted")


@dataclass
class RunOptions(JsonConfig):
    """How a run is watched and kept; a resumed run may change any of these (module docstring)."""

    progress: bool = True
    """Show a tqdm progress bar with live loss, FVU, L0 (and dominant share, penalty when λ > 0)."""
    log_every: int = 10
    """Steps between recorded metrics (and progress-bar updates)."""
    checkpoint_every: int = 500
    """Steps between resumable checkpoints (needs ``out_dir``; 0: only at the end)."""
    device: str = "cpu"
    """Device of the crosscoder and of the batches."""
    wandb: bool = False
    """Log metrics to Weights & Biases (off by default; needs the ``wandb`` package)."""
    wandb_project: str = "crosscoder_lib"
    """W&B project name."""
    wandb_run_name: str | None = None
    """W&B run name (None: W&B picks one)."""

    def __post_init__(self):
        self._coerce_fields()
        if self.log_every < 1:
            raise ConfigError(f"RunOptions.log_every must be >= 1, got {self.log_every}")
        if self.checkpoint_every < 0:
            raise ConfigError(f"RunOptions.checkpoint_every must be >= 0, got {self.checkpoint_every}")


@dataclass
class TrainConfig(JsonConfig):
    """How to train: every field changes the result (validated on construction; saved as
    ``train_config.json`` beside checkpoints). How the run is watched is :class:`RunOptions`."""

    HINT = ("progress, log_every, checkpoint_every, device and wandb* are run options: "
            "RunOptions in train(..., options=), the \"options\" section of a run config")

    n_steps: int = 2000
    """Optimiser steps."""
    batch_size: int = 256
    """Token positions per step (the paper: 256)."""
    lr: float = 1e-4
    """Peak Adam learning rate (the paper: 1e-4)."""
    warmup_frac: float = 0.05
    """Fraction of the steps over which the learning rate rises linearly from 0."""
    decay_frac: float = 0.2
    """Fraction of the steps, at the end, over which the learning rate falls linearly to 0."""
    adam_betas: tuple[float, float] = (0.9, 0.999)
    """Adam's β1, β2."""
    grad_clip: float = 1.0
    """Maximum global gradient norm (0 disables clipping)."""
    seed: int = 0
    """Seed of the data order (tensor sources) and of torch's global RNG."""
    lambda_int: float = 0.0
    """Weight λ of the interaction penalty (SPEC §3); > 0 needs ``mlp`` in :func:`train`."""
    lambda_warmup_frac: float = 0.0
    """Fraction of the steps over which λ rises linearly from 0 to ``lambda_int`` (0: full λ from
    the first step). Like an L1 coefficient warm-up: a penalty at full strength on a random
    dictionary cuts every feature's contributions before any has learned what to reconstruct, and
    features die (chapter 3 measured 90 % dead at λ = 1000 in a 150-step run without it, 28 % with
    a 30 % warm-up, and a dominant share of 0.84 against 0.92)."""
    penalty_form: str = "unweighted"
    """``"unweighted"`` (the reference code's) or ``"weighted"`` by ``‖W_out[k]‖``."""
    n_norm_batches: int = 8
    """Batches (the first of the stream) that estimate the per-hookpoint input scale."""

    def __post_init__(self):
        self._coerce_fields()
        for name in ("n_steps", "batch_size", "n_norm_batches"):
            if getattr(self, name) < 1:
                raise ConfigError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0 or not math.isfinite(self.lr):
            raise ConfigError(f"TrainConfig.lr must be a positive number, got {self.lr}")
        if not self.lambda_int >= 0 or not math.isfinite(self.lambda_int):
            raise ConfigError(f"TrainConfig.lambda_int (λ) must be >= 0, got {self.lambda_int}")
        if self.grad_clip < 0:
            raise ConfigError(f"TrainConfig.grad_clip must be >= 0 (0 disables), got {self.grad_clip}")
        for name in ("warmup_frac", "decay_frac", "lambda_warmup_frac"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"TrainConfig.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.warmup_frac + self.decay_frac > 1.0:
            raise ConfigError(f"warmup_frac + decay_frac must be <= 1, got {self.warmup_frac + self.decay_frac}")
        if not all(0.0 <= b < 1.0 for b in self.adam_betas):
            raise ConfigError(f"adam_betas must be two numbers in [0, 1), got {self.adam_betas}")
        if self.penalty_form not in PENALTY_FORMS:
            raise ConfigError(f"penalty_form must be one of {PENALTY_FORMS}, got {self.penalty_form!r}")

    def lr_at(self, step: int) -> float:
        """Learning rate of (0-based) ``step``: linear warm-up, constant, linear decay to 0."""
        warm = round(self.warmup_frac * self.n_steps)
        decay = round(self.decay_frac * self.n_steps)
        if warm and step < warm:
            return self.lr * (step + 1) / warm
        if decay and step >= self.n_steps - decay:
            return self.lr * (self.n_steps - step) / decay
        return self.lr

    def lambda_at(self, step: int) -> float:
        """Penalty weight of (0-based) ``step``: linear warm-up over ``lambda_warmup_frac``, then λ."""
        warm = round(self.lambda_warmup_frac * self.n_steps)
        if warm and step < warm:
            return self.lambda_int * (step + 1) / warm
        return self.lambda_int
