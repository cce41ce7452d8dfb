"""Training a crosscoder: config, loop, checkpoints, resume, and a command line for sweeps.

The loss of a batch of raw activations ``x_BXD`` (SPEC §2), in normalised units ``s_x x_x``::

    loss = mean_b Σ_x ‖s_x x_x − s_x x̂_x‖²                 reconstruction (summed over hookpoints)
         + α · Var(s x) · AuxK                              dead features model the residual
         + sparsity penalty                                 ReLU / JumpReLU only
         + λ · L_int                                        the interaction penalty (λ > 0,
                                                            optionally warmed up: lambda_warmup_frac)

with ``AuxK = mean_b ‖e − ê‖² / mean_b ‖e − mean(e)‖²``, ``e`` the (detached) residual of the main
reconstruction and ``ê`` the decoding of the dead features' ``k_aux`` largest pre-activations.
``Var(s x) = Σ_x Σ_d Var_b(s_x x_x)`` (detached) puts AuxK in the reconstruction's units: Gao et al.
(2024) weigh ``α = 1/32`` against a *normalised* reconstruction loss (the FVU), and ours is the FVU
times ``Var(s x)``; without the factor AuxK is ``Var(s x)`` ≈ X·D times weaker than intended (≈2000×
for 17 slots of width 128), too weak to revive anything in a short run. Measured on the embedded clean
model (chapter 1's run: H = 512, k = 20, 600 steps, a feature dead after 200 steps without firing):
13.9 % of features never fired on held-out tokens without the factor, 14.6 % with no AuxK at all,
7.2 % with it, and 0 % with it and a 50-step dead window.
``L_int`` comes from :func:`crosscoder_lib.interactions.measures.interaction_penalty` on the MLP-input
slots. Adam, learning rate warmed up linearly over ``warmup_frac`` of the steps and decayed linearly
to zero over the last ``decay_frac``; gradient-norm clipping.

**Reproducibility.** Everything is seeded (weights by ``CrosscoderConfig.init_seed``, data order by
``TrainConfig.seed``), nothing random happens inside a step, and a checkpoint stores the weights,
the input scale, Adam's moments, the firing tracker, BatchTopK's threshold, the metrics and the
step. Resuming replays the source up to the checkpoint's step (the source must give the same
batches again: a tensor, a list, or an :class:`~crosscoder_lib.lm.harvest.ActivationBuffer` over a
re-iterable token stream; ``cache_dir`` makes the replay cheap), so a stopped-and-resumed run ends
bit for bit where the uninterrupted run does (tested).

**Failures lose nothing.** Non-finite activations stop training with the step and hookpoint named,
after saving the last good state; so does a non-finite loss; Ctrl-C saves a checkpoint first.

Command line (``crosscoder-train`` or ``python -m crosscoder_lib.crosscoder.training``)::

    crosscoder-train run.json [--set train.lr=3e-4 --set crosscoder.k=32 ...]
    torchrun --nproc_per_node 4 -m crosscoder_lib.crosscoder.training run.json      # same file, 4 processes

Under ``torchrun`` the global batch ``train.batch_size`` is split across the processes and every
batch-level quantity is reduced over all of them, so the result equals one process's up to float
round-off (:mod:`crosscoder_lib.crosscoder.distributed`). ``train.lambda_int`` may be a list: a λ sweep, each
λ trained in turn (by all processes) into ``out_dir/lambda_<λ>``.

with ``run.json`` holding ``model``, ``hookpoints`` (``"paper"`` or a list), ``data``, ``buffer``,
``crosscoder`` (CrosscoderConfig fields; ``hookpoints``/``d_model`` filled in), ``train``
(TrainConfig fields) and ``out_dir``; see :func:`run_from_config`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F

from crosscoder_lib.crosscoder.activations import FiringTracker, SparseCodes, auxk_codes, l0
from crosscoder_lib.crosscoder.checkpoint import (
    CheckpointError,
    has_training_state,
    load_training_state,
    save_training_state,
)
from crosscoder_lib.crosscoder.model import Crosscoder, CrosscoderConfig
from crosscoder_lib.crosscoder.persistence import save_crosscoder
from crosscoder_lib.crosscoder.distributed import (
    SINGLE,
    SingleProcess,
    data_parallel,
    init_from_env,
    teardown,
)
from crosscoder_lib.lm.hookpoints import mlp_input_slots

PENALTY_FORMS = ("unweighted", "weighted")
CHECKPOINT_DIR = "checkpoint"
FINAL_DIR = "crosscoder"
TRAIN_CONFIG_FILE = "train_config.json"

# Fields that do not change the arithmetic of training: a resumed run may change them.
_COSMETIC = {"log_every", "checkpoint_every", "progress", "wandb", "wandb_project", "wandb_run_name"}


@dataclass
class TrainConfig:
    """How to train (validated on construction; saved as ``train_config.json`` beside checkpoints)."""

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
    log_every: int = 10
    """Steps between recorded metrics (and progress-bar updates)."""
    checkpoint_every: int = 500
    """Steps between resumable checkpoints (needs ``out_dir``; 0: only at the end)."""
    progress: bool = True
    """Show a tqdm progress bar with live loss, FVU, L0 (and dominant share, penalty when λ > 0)."""
    wandb: bool = False
    """Log metrics to Weights & Biases (off by default; needs the ``wandb`` package)."""
    wandb_project: str = "crosscoder_lib"
    """W&B project name."""
    wandb_run_name: str | None = None
    """W&B run name (None: W&B picks one)."""
    device: str = "cpu"
    """Device of the crosscoder and of the batches."""

    def __post_init__(self):
        self.adam_betas = tuple(float(b) for b in self.adam_betas)
        for name in ("n_steps", "batch_size", "n_norm_batches", "log_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0 or not math.isfinite(self.lr):
            raise ValueError(f"TrainConfig.lr must be a positive number, got {self.lr}")
        if not self.lambda_int >= 0 or not math.isfinite(self.lambda_int):
            raise ValueError(f"TrainConfig.lambda_int (λ) must be >= 0, got {self.lambda_int}")
        if self.checkpoint_every < 0:
            raise ValueError(f"TrainConfig.checkpoint_every must be >= 0, got {self.checkpoint_every}")
        if self.grad_clip < 0:
            raise ValueError(f"TrainConfig.grad_clip must be >= 0 (0 disables), got {self.grad_clip}")
        for name in ("warmup_frac", "decay_frac", "lambda_warmup_frac"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"TrainConfig.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.warmup_frac + self.decay_frac > 1.0:
            raise ValueError(f"warmup_frac + decay_frac must be <= 1, got {self.warmup_frac + self.decay_frac}")
        if len(self.adam_betas) != 2 or not all(0.0 <= b < 1.0 for b in self.adam_betas):
            raise ValueError(f"adam_betas must be two numbers in [0, 1), got {self.adam_betas}")
        if self.penalty_form not in PENALTY_FORMS:
            raise ValueError(f"penalty_form must be one of {PENALTY_FORMS}, got {self.penalty_form!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s) {unknown}; known: {sorted(known)}")
        return cls(**d)

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


class NonFiniteError(FloatingPointError):
    """Training met NaN/inf (in the activations or the loss); the message says where and when."""


class TrainResult(NamedTuple):
    """What :func:`train` returns.

    Fields:
        crosscoder: the trained model (input scale still in ``input_scale_X``, not folded).
        metrics: one dict per logged step (``step``, ``loss``, ``mse``, ``fvu``, ``l0``, ``aux``,
            ``dead_fraction``, ``lr``, and ``penalty``/``dominant_share``/``lambda`` (the step's
            weight, see ``lambda_warmup_frac``) when λ > 0).
        final: the last step's metrics.
        step: steps done so far (== ``cfg.n_steps`` unless stopped early by ``stop_at_step``).
        out_dir: where checkpoints and the final model went (None without ``out_dir``).
    """

    crosscoder: Crosscoder
    metrics: list[dict]
    final: dict
    step: int
    out_dir: Path | None


# -- data -------------------------------------------------------------------------------------------

def _tensor_batches(acts_TXD: torch.Tensor, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    if len(acts_TXD) < batch_size:
        raise ValueError(f"the activation tensor holds {len(acts_TXD)} positions, fewer than one "
                         f"batch of {batch_size}; pass more activations or a smaller batch_size")
    for epoch in itertools.count():
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        perm = torch.randperm(len(acts_TXD), generator=g)
        for i in range(0, len(perm) - batch_size + 1, batch_size):
            yield acts_TXD[perm[i:i + batch_size]]


def _rebatched(source: Iterable[torch.Tensor], batch_size: int) -> Iterator[torch.Tensor]:
    """Exactly ``batch_size`` positions per batch from a source of any batch sizes; passes over a
    re-iterable source again when it ends."""
    pending: list[torch.Tensor] = []
    n_pending = 0
    for epoch in itertools.count():
        got = 0
        for acts in source:
            if acts.ndim != 3:
                raise ValueError(f"the source must yield activations [B, X, D], got shape {tuple(acts.shape)}")
            got += len(acts)
            pending.append(acts)
            n_pending += len(acts)
            while n_pending >= batch_size:
                cat = torch.cat(pending) if len(pending) > 1 else pending[0]
                yield cat[:batch_size]
                pending, n_pending = [cat[batch_size:]], n_pending - batch_size
        if got == 0:
            raise ValueError("the activation source is empty" + (
                "" if epoch == 0 else f" on pass {epoch + 1}: it is a one-shot iterator that ran out; "
                "pass a re-iterable source (a list, a tensor, an ActivationBuffer over a list or "
                "callable of token batches) or fewer n_steps"))


def batch_stream(source, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    """The training batches of ``source`` (a tensor ``[T, X, D]`` or an iterable of ``[B, X, D]``)."""
    if isinstance(source, torch.Tensor):
        if source.ndim != 3:
            raise ValueError(f"an activation tensor source must be [T, X, D], got {tuple(source.shape)}")
        return _tensor_batches(source, batch_size, seed)
    return _rebatched(source, batch_size)


# -- one step ---------------------------------------------------------------------------------------

class StepOutput(NamedTuple):
    """Loss terms of one training step (all scalars; ``loss`` differentiable)."""

    loss: torch.Tensor
    mse: torch.Tensor
    fvu: torch.Tensor
    aux: torch.Tensor
    sparsity: torch.Tensor
    l0: torch.Tensor
    codes: SparseCodes
    penalty: torch.Tensor | None
    dominant_share: torch.Tensor | None


def aux_loss(crosscoder: Crosscoder, pre_BH: torch.Tensor, residual_BXD: torch.Tensor,
             dead_H: torch.Tensor, parallel: SingleProcess = SINGLE) -> torch.Tensor:
    """AuxK (normalised units): how well the dead features' top-``k_aux`` pre-activations model the
    residual, ``mean_b ‖e − ê‖² / mean_b ‖e − mean(e)‖²``; 0 when no feature is dead.

    The denominator is over the global batch (``parallel``), the numerator over this shard."""
    codes = auxk_codes(pre_BH, dead_H, crosscoder.cfg.aux_k)
    if codes is None:
        return pre_BH.new_zeros(())
    recon_BXD = crosscoder.decode_scaled(codes, bias=False)
    mean_XD = parallel.batch_mean(residual_BXD)
    denom = parallel.batch_mean((residual_BXD - mean_XD).pow(2).sum((1, 2))).clamp_min(1e-12)
    return (residual_BXD - recon_BXD).pow(2).sum((1, 2)).mean() / denom


def compute_loss(crosscoder: Crosscoder, acts_BXD: torch.Tensor, cfg: TrainConfig, dead_H: torch.Tensor,
                 mlp=None, mlp_slots: list[int] | None = None, with_fvu: bool = True,
                 parallel: SingleProcess = SINGLE, lambda_int: float | None = None) -> StepOutput:
    """All loss terms of one batch of raw activations (see the module docstring).

    ``lambda_int``: the penalty weight of this step (default ``cfg.lambda_int``; the loop passes
    ``cfg.lambda_at(step)``). The penalty and dominant share are computed whenever ``cfg.lambda_int > 0``.

    ``with_fvu=False`` skips the FVU metric (NaN then), which costs a pass over the batch. Under
    data parallelism ``acts_BXD`` is this rank's shard; batch-level statistics (AuxK's normaliser,
    the FVU's variance) are taken over the global batch by ``parallel``.
    """
    out = crosscoder(acts_BXD, raw=False)
    B = acts_BXD.shape[0]
    mse = F.mse_loss(out.recon_scaled_BXD, out.x_scaled_BXD, reduction="sum") / B
    fvu = torch.tensor(float("nan"))
    var = None  # Σ_x Σ_d Var_b(s_x x_x): the FVU's denominator and AuxK's unit
    if with_fvu:
        with torch.no_grad():
            var = parallel.batch_var(out.x_scaled_BXD).sum()
            fvu = mse.detach() / var.clamp_min(1e-12)
    aux = aux_weight = out.pre_BH.new_zeros(())
    if crosscoder.cfg.aux_alpha > 0 and bool(dead_H.any()):
        residual_BXD = (out.x_scaled_BXD - out.recon_scaled_BXD).detach()
        aux = aux_loss(crosscoder, out.pre_BH, residual_BXD, dead_H, parallel)
        if var is None:
            with torch.no_grad():
                var = parallel.batch_var(out.x_scaled_BXD).sum()
        aux_weight = crosscoder.cfg.aux_alpha * var  # α against the FVU, as in Gao et al. (module docstring)
    sparsity = crosscoder.activation.sparsity_penalty(out.pre_BH, out.codes, crosscoder.decoder_norms_H())
    loss = mse + aux_weight * aux + sparsity
    penalty = share = None
    if cfg.lambda_int > 0:
        from crosscoder_lib.interactions.measures import interaction_penalty
        stats = interaction_penalty(out.codes, crosscoder.decoder_slots_LHD(mlp_slots), mlp, form=cfg.penalty_form)
        penalty, share = stats.penalty, stats.dominant_share
        loss = loss + (cfg.lambda_int if lambda_int is None else lambda_int) * penalty
    return StepOutput(loss, mse, fvu, aux, sparsity, l0(out.codes).float().mean(), out.codes, penalty, share)


def training_step(crosscoder: Crosscoder, optimizer: torch.optim.Optimizer, acts_BXD: torch.Tensor,
                  cfg: TrainConfig, tracker: FiringTracker, lr: float, mlp=None,
                  mlp_slots: list[int] | None = None, with_fvu: bool = True,
                  parallel: SingleProcess = SINGLE, lambda_int: float | None = None) -> StepOutput:
    """One optimiser step on raw ``acts_BXD``: loss, backward, clipping, Adam, firing tracker
    (``lambda_int``: this step's penalty weight, default ``cfg.lambda_int``).

    If the loss is not finite nothing is updated (the caller decides what to do). Under data
    parallelism the returned scalars are the global batch's (detached) and gradients are averaged
    over ranks before clipping.
    """
    for group in optimizer.param_groups:
        group["lr"] = lr
    s = compute_loss(crosscoder, acts_BXD, cfg, tracker.dead_H, mlp, mlp_slots, with_fvu, parallel, lambda_int)
    loss, s = s.loss, parallel.mean_over_ranks(s)
    if not torch.isfinite(s.loss):
        return s
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    parallel.average_gradients(optimizer.param_groups[0]["params"])
    if cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(optimizer.param_groups[0]["params"], cfg.grad_clip, foreach=True)
    optimizer.step()
    tracker.update(parallel.fired_codes(s.codes, crosscoder.n_features))
    return s


def _nonfinite_slots(acts_BXD: torch.Tensor, parallel: SingleProcess = SINGLE) -> list[int]:
    # A sum is non-finite iff some element is (inf - inf gives nan), at the cost of one reduction;
    # summed over ranks so that every rank stops at the same step.
    per_slot = parallel.sum_over_ranks(acts_BXD.sum(dim=(0, 2)))
    return torch.nonzero(~torch.isfinite(per_slot)).flatten().tolist()


# -- the loop ---------------------------------------------------------------------------------------

def make_optimizer(crosscoder: Crosscoder, cfg: TrainConfig) -> torch.optim.Adam:
    params = [p for p in crosscoder.parameters() if p.requires_grad]
    # The fused kernel is ~5x faster than the default on CPU at the paper's size (the update of
    # 2 x 20M parameters otherwise costs as much as the matrix products); same update rule.
    try:
        return torch.optim.Adam(params, lr=cfg.lr, betas=cfg.adam_betas, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.Adam(params, lr=cfg.lr, betas=cfg.adam_betas)


def _check_resume_config(saved: dict, cfg: TrainConfig, cc_cfg: CrosscoderConfig, path: Path) -> None:
    mine = cfg.to_dict()
    diffs = [f"train.{k}: checkpoint {saved['train_config'].get(k)!r} vs now {mine[k]!r}"
             for k in mine if k not in _COSMETIC and json.loads(json.dumps(mine[k])) != saved["train_config"].get(k)]
    cc_mine = json.loads(json.dumps(cc_cfg.to_dict()))
    diffs += [f"crosscoder.{k}: checkpoint {saved['crosscoder_config'].get(k)!r} vs now {cc_mine[k]!r}"
              for k in cc_mine if cc_mine[k] != saved["crosscoder_config"].get(k)]
    if diffs:
        raise CheckpointError(f"cannot resume from {path}: the configuration changed ({'; '.join(diffs)}). "
                              f"Use the same configuration, another out_dir, or resume=False.")


def train(cfg: TrainConfig, source, *, crosscoder: Crosscoder | CrosscoderConfig, mlp=None,
          out_dir: str | os.PathLike | None = None, resume: bool = True,
          stop_at_step: int | None = None) -> TrainResult:
    """Train ``crosscoder`` on ``source`` under ``cfg``.

    Args:
        cfg: the :class:`TrainConfig`.
        source: raw activations: a tensor ``[T, X, D]`` (shuffled per epoch with ``cfg.seed``) or an
            iterable of batches ``[B, X, D]`` in hookpoint order (e.g. an ActivationBuffer), re-batched
            to ``cfg.batch_size`` and passed over again when it ends.
        crosscoder: a :class:`CrosscoderConfig` (a fresh model is built) or a :class:`Crosscoder`
            (trained in place). Its input scale is estimated from the first ``cfg.n_norm_batches``
            batches unless resuming.
        mlp: :class:`crosscoder_lib.interactions.mlp.MLPWeights` of the model, required when ``cfg.lambda_int > 0``.
        out_dir: folder for ``checkpoint/`` (resumable, every ``cfg.checkpoint_every`` steps and at
            the end), ``crosscoder/`` (the final model, input scale folded) and ``train_config.json``.
        resume: continue from ``out_dir/checkpoint`` when there is one.
        stop_at_step: stop (with a checkpoint) once this many steps are done, e.g. to split a run.

    Under ``torchrun`` (an initialised process group of several ranks) every rank calls this with
    the same arguments: each trains on its shard of every global batch of ``cfg.batch_size``
    positions, and only rank 0 writes to ``out_dir`` (:mod:`crosscoder_lib.crosscoder.distributed`).

    Raises:
        NonFiniteError: NaN/inf in a batch (step and hookpoint named) or in the loss; the state
            before that step is kept (and checkpointed when ``out_dir`` is given).
    """
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"cfg must be a TrainConfig, got {type(cfg).__name__}")
    if cfg.lambda_int > 0 and mlp is None:
        raise ValueError("cfg.lambda_int > 0 needs the model's MLP weights: pass "
                         "mlp=crosscoder_lib.interactions.mlp.mlp_weights(bridge)")
    if stop_at_step is not None and stop_at_step < 1:
        raise ValueError(f"stop_at_step must be >= 1, got {stop_at_step}")
    parallel = data_parallel()
    parallel.check_batch_size(cfg.batch_size)
    torch.manual_seed(cfg.seed)
    device = torch.device(cfg.device)
    cc = crosscoder if isinstance(crosscoder, Crosscoder) else Crosscoder(crosscoder)
    cc.to(device).train()
    mlp_slots = None
    if cfg.lambda_int > 0:
        mlp_slots = mlp_input_slots(cc.cfg.hookpoints)
        mlp = mlp.to(device)
        if mlp.n_blocks != len(mlp_slots):
            raise ValueError(f"mlp has {mlp.n_blocks} blocks but the hookpoints have {len(mlp_slots)} "
                             f"MLP-input slots")
    optimizer = make_optimizer(cc, cfg)
    tracker = FiringTracker(cc.n_features, cc.cfg.dead_steps).to(device)
    out_dir = Path(out_dir) if out_dir is not None else None
    ckpt_dir = out_dir / CHECKPOINT_DIR if out_dir is not None else None
    step, metrics = 0, []
    if out_dir is not None and parallel.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / TRAIN_CONFIG_FILE).write_text(json.dumps(cfg.to_dict(), indent=2))
    if resume and ckpt_dir is not None and has_training_state(ckpt_dir):
        meta, buffers = load_training_state(ckpt_dir, crosscoder=cc, optimizer=optimizer)
        _check_resume_config(meta, cfg, cc.cfg, ckpt_dir)
        tracker.load_state_dict({"steps_since_fired_H": buffers["steps_since_fired_H"]})
        step, metrics = meta["step"], meta["metrics"]

    def save(at_step: int) -> Path | None:
        if ckpt_dir is None:
            return None
        if not parallel.is_main:
            return ckpt_dir  # rank 0 writes it
        return save_training_state(ckpt_dir, crosscoder=cc, optimizer=optimizer,
                                   buffers=dict(tracker.state_dict()),
                                   meta={"step": at_step, "metrics": metrics,
                                         "train_config": cfg.to_dict(),
                                         "crosscoder_config": cc.cfg.to_dict()})

    batches = batch_stream(source, cfg.batch_size, cfg.seed)
    if step == 0:
        head = list(itertools.islice(batches, cfg.n_norm_batches))
        if not head:
            raise ValueError("the activation source gave no batch")
        sample = torch.cat(head)
        bad = _nonfinite_slots(sample)
        if bad:
            raise NonFiniteError(f"non-finite activations before training (in the normalisation "
                                 f"batches) at hookpoint(s) {[cc.cfg.hookpoints[i] for i in bad]}")
        cc.set_input_scale(sample.to(device))
        batches = itertools.chain(head, batches)
    else:
        for _ in range(step):  # replay the source up to the checkpoint
            next(batches)

    end = cfg.n_steps if stop_at_step is None else min(stop_at_step, cfg.n_steps)
    bar = None
    if cfg.progress and parallel.is_main:
        from tqdm.auto import tqdm
        bar = tqdm(total=cfg.n_steps, initial=step, desc="crosscoder", dynamic_ncols=True)
    run = _wandb_run(cfg, cc.cfg) if cfg.wandb and parallel.is_main else None
    local_activation, cc.activation = cc.activation, parallel.activation(cc.activation)
    try:
        while step < end:
            acts = parallel.shard(next(batches)).to(device)
            bad = _nonfinite_slots(acts, parallel)
            if bad:
                path = save(step)
                raise NonFiniteError(
                    f"non-finite activations at step {step} in hookpoint(s) "
                    f"{[cc.cfg.hookpoints[i] for i in bad]}; training stopped before using them. "
                    + (f"The last good state (after {step} steps) is checkpointed at {path}."
                       if path else "The crosscoder keeps its last good state (pass out_dir to checkpoint it)."))
            lr = cfg.lr_at(step)
            logging = (step + 1) % cfg.log_every == 0 or step + 1 == cfg.n_steps
            lam = cfg.lambda_at(step)
            s = training_step(cc, optimizer, acts, cfg, tracker, lr, mlp, mlp_slots, with_fvu=logging,
                              parallel=parallel, lambda_int=lam)
            if not torch.isfinite(s.loss):
                path = save(step)
                raise NonFiniteError(
                    f"the loss became non-finite at step {step} (mse={float(s.mse)}, aux={float(s.aux)}"
                    + (f", penalty={float(s.penalty)}" if s.penalty is not None else "")
                    + "); lower lr or lambda_int. "
                    + (f"Last good state checkpointed at {path}." if path else "The crosscoder keeps its last good state."))
            step += 1
            if logging:
                m = {"step": step, "loss": float(s.loss.detach()), "mse": float(s.mse.detach()), "fvu": float(s.fvu),
                     "l0": float(s.l0), "aux": float(s.aux.detach()), "dead_fraction": tracker.dead_fraction, "lr": lr}
                if s.penalty is not None:
                    m["penalty"], m["dominant_share"] = float(s.penalty.detach()), float(s.dominant_share)
                    m["lambda"] = lam
                metrics.append(m)
                if bar is not None:
                    bar.set_postfix({k: f"{v:.3g}" for k, v in m.items()
                                     if k in ("loss", "fvu", "l0", "dead_fraction", "dominant_share", "penalty")})
                if run is not None:
                    run.log(m, step=step)
            if bar is not None:
                bar.update(1)
            if ckpt_dir is not None and cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < end:
                save(step)
    except KeyboardInterrupt:
        save(step)
        raise
    finally:
        cc.activation = local_activation
        if bar is not None:
            bar.close()
        if run is not None:
            run.finish()
    save(step)
    if out_dir is not None and step == cfg.n_steps and parallel.is_main:
        save_crosscoder(cc, out_dir / FINAL_DIR, fold=True)
    parallel.barrier()  # rank 0's files are complete before any rank reads them (e.g. to resume)
    return TrainResult(cc, metrics, metrics[-1] if metrics else {}, step, out_dir)


def _wandb_run(cfg: TrainConfig, cc_cfg: CrosscoderConfig):
    try:
        import wandb
    except ImportError as err:
        raise ImportError("TrainConfig.wandb=True needs the wandb package (pip install wandb)") from err
    return wandb.init(project=cfg.wandb_project, name=cfg.wandb_run_name,
                      config={"train": cfg.to_dict(), "crosscoder": cc_cfg.to_dict()})


# -- command line -----------------------------------------------------------------------------------

def _apply_override(config: dict, assignment: str) -> None:
    key, sep, value = assignment.partition("=")
    if not sep:
        raise ValueError(f"--set wants key=value (dotted key), got {assignment!r}")
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    node = config
    parts = key.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = parsed


def run_from_config(config: dict):
    """Train from a run description (what the command line reads); returns the :class:`TrainResult`.

    Keys: ``model`` (a ``load_model`` name or folder), ``hookpoints`` (``"paper"`` or a list),
    ``data`` (``dataset``: ``"embedded"`` by default, a local TinyStoriesInstruct-layout or
    one-per-line text file, or a hub id such as ``"roneneldan/TinyStoriesInstruct"``, read by
    :func:`crosscoder_lib.world.data.load_texts`'s train split; ``n_texts``, ``context_len``,
    ``batch_size``, ``seed``), ``buffer`` (``capacity_tokens``,
    ``exclude_first``, ``cache_dir``), ``crosscoder`` (CrosscoderConfig fields), ``train``
    (TrainConfig fields), ``out_dir``.

    A list ``train.lambda_int`` is a λ sweep: each λ is trained in turn on the same activation
    stream into ``out_dir/lambda_<λ>``, a list of results is returned and ``out_dir/sweep.json``
    holds every λ's final metrics. Under ``torchrun`` every rank harvests its share of each token
    batch (:meth:`~crosscoder_lib.crosscoder.distributed.DataParallel.sharded_harvester`; a ``cache_dir`` gets
    one sub-folder per rank) and only rank 0 writes files.
    """
    from crosscoder_lib.world import data as data_mod
    from crosscoder_lib.lm.harvest import ActivationBuffer, harvest
    from crosscoder_lib.lm.hookpoints import paper_hookpoints, validate_hookpoints
    from crosscoder_lib.lm.loading import load_model

    unknown = sorted(set(config) - {"model", "hookpoints", "data", "buffer", "crosscoder", "train", "out_dir"})
    if unknown:
        raise ValueError(f"unknown run-config key(s) {unknown}")
    train_d = config.get("train", {})
    sweep = isinstance(train_d.get("lambda_int"), list)
    tcfgs = [TrainConfig.from_dict(train_d | {"lambda_int": lam}) for lam in train_d["lambda_int"]] if sweep \
        else [TrainConfig.from_dict(train_d)]
    if not tcfgs:
        raise ValueError("train.lambda_int is an empty list; give at least one λ")
    tcfg = tcfgs[0]
    parallel = data_parallel()
    bridge = load_model(config["model"], device=tcfg.device)
    hp = config.get("hookpoints", "paper")
    hookpoints = paper_hookpoints(bridge.cfg.n_layers) if hp == "paper" else list(hp)
    validate_hookpoints(hookpoints, bridge)
    d = {"dataset": "embedded", "n_texts": 20000, "context_len": 128, "batch_size": 32, "seed": 0}
    unknown = sorted(set(config.get("data", {})) - set(d))
    if unknown:
        raise ValueError(f"unknown data key(s) {unknown}; valid: {', '.join(d)} "
                         "(a text file is data.dataset = its path)")
    d |= config.get("data", {})
    texts = data_mod.load_texts(d["dataset"], "train", d["n_texts"], seed=d["seed"])

    def tokens():
        return data_mod.token_batches(texts, bridge.tokenizer, batch_size=d["batch_size"],
                                      context_len=d["context_len"], seed=d["seed"], epochs=None)

    buf_cfg = {"capacity_tokens": 16384, "exclude_first": True, "cache_dir": None} | config.get("buffer", {})
    buf_cfg["cache_dir"] = parallel.private_dir(buf_cfg["cache_dir"])
    harvester = parallel.sharded_harvester(
        lambda t: harvest(bridge, t, hookpoints, exclude_first=buf_cfg["exclude_first"]))
    source = ActivationBuffer(bridge, tokens, hookpoints, batch_size=tcfg.batch_size, seed=tcfg.seed,
                              harvester=harvester, **buf_cfg)
    cc_cfg = CrosscoderConfig.from_dict({"hookpoints": hookpoints, "d_model": bridge.cfg.d_model}
                                        | config.get("crosscoder", {}))
    mlp = None
    if any(c.lambda_int > 0 for c in tcfgs):
        from crosscoder_lib.interactions.mlp import mlp_weights
        mlp = mlp_weights(bridge)
    out_dir = config.get("out_dir")
    results = []
    for c in tcfgs:
        run_dir = Path(out_dir, f"lambda_{c.lambda_int:g}") if sweep and out_dir is not None else out_dir
        results.append(train(c, source, crosscoder=cc_cfg, mlp=mlp if c.lambda_int > 0 else None,
                             out_dir=run_dir))
        if run_dir is not None and parallel.is_main:
            Path(run_dir, "final_metrics.json").write_text(json.dumps(results[-1].final, indent=2))
    if out_dir is not None and parallel.is_main:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        Path(out_dir, "run_config.json").write_text(json.dumps(config, indent=2))
        if sweep:
            Path(out_dir, "sweep.json").write_text(json.dumps(
                [{"lambda_int": c.lambda_int, **r.final} for c, r in zip(tcfgs, results)], indent=2))
    return results if sweep else results[0]


def main(argv: list[str] | None = None) -> int:
    """``crosscoder-train run.json [--set key=value ...]``: train from a run-config file (under
    ``torchrun`` too: the process group is set up from its environment and torn down at the end)."""
    parser = argparse.ArgumentParser(prog="crosscoder-train", description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="run-config JSON file (see crosscoder_lib.crosscoder.training.run_from_config)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a dotted key, e.g. train.lr=3e-4 (value parsed as JSON)")
    args = parser.parse_args(argv)
    config = json.loads(Path(args.config).read_text())
    for assignment in args.set:
        _apply_override(config, assignment)
    parallel = init_from_env(config.get("train", {}).get("device", "cpu"))
    try:
        result = run_from_config(config)
    except BaseException:
        teardown(wait=False)  # the other ranks may be stuck in a collective
        raise
    teardown()
    if parallel.is_main:
        if isinstance(result, list):
            print(json.dumps([{"lambda_int": lam, "step": r.step, **r.final}
                              for lam, r in zip(config["train"]["lambda_int"], result)], indent=2))
        else:
            print(json.dumps({"step": result.step, **result.final}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
