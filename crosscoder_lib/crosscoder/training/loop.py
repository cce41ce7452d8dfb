"""The training loop: a step function over the batch stream, and what happens when a run stops.

:func:`train` guarantees (each tested):

- **Reproducible.** Everything is seeded (weights by ``CrosscoderConfig.init_seed``, data order by
  ``TrainConfig.seed``) and nothing random happens inside a step. A checkpoint stores the weights,
  the input scale, Adam's moments, the firing tracker, BatchTopK's threshold, the metrics and the
  step; resuming replays the source up to it (the source must give the same batches again: a
  tensor, a list, or an ActivationBuffer over a re-iterable token stream; ``cache_dir`` makes the
  replay cheap), so a stopped-and-resumed run ends bit for bit where the uninterrupted run does.
- **Resumes only the same run.** The checkpoint's identity (model, data, configs, numerics:
  :mod:`.identity`) is compared first; a differing run is refused and nothing is touched.
- **Interrupts lose nothing.** SIGINT/SIGTERM stop at a step boundary after saving the last
  completed step (:mod:`.interrupts`).
- **Failures lose nothing.** Any exception inside the loop (a non-finite batch, loss or gradient; a
  mis-shaped batch; a failing harvester; out of memory) propagates after the state of the last
  completed step is saved, and its message says so: "training stopped at step N; the state after
  N steps is checkpointed at PATH". A failure while a step applies its update (``optimizer.step``)
  saves nothing, since that state is no completed step; the last checkpoint on disk stays valid.
- **Files are atomic** and ``out_dir`` is locked (:mod:`.outdir`, :mod:`crosscoder_lib.crosscoder.checkpoint`).

Under ``torchrun`` (an initialised process group of several ranks) every rank calls :func:`train`
with the same arguments: each trains on its shard of every global batch, and only rank 0 writes
(:mod:`crosscoder_lib.crosscoder.distributed`).
"""

from __future__ import annotations

import itertools
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch

from crosscoder_lib.crosscoder.distributed import SINGLE, SingleProcess, data_parallel
from crosscoder_lib.crosscoder.model import Crosscoder, CrosscoderConfig
from crosscoder_lib.crosscoder.training.batches import batch_stream, on_device
from crosscoder_lib.crosscoder.training.config import RunOptions, TrainConfig
from crosscoder_lib.crosscoder.training.identity import run_identity
from crosscoder_lib.crosscoder.training.interrupts import StopSignals, TrainingInterrupted
from crosscoder_lib.crosscoder.training.loss import penalty_path
from crosscoder_lib.crosscoder.training.outdir import RunFolder
from crosscoder_lib.crosscoder.training.progress import Progress
from crosscoder_lib.crosscoder.training.step import NonFiniteError, TrainingStep, nonfinite_slots


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


def _add_to_message(err: BaseException, note: str) -> None:
    """Say where training stopped in ``err``'s own message (its type and traceback stay)."""
    if not err.args:
        err.args = (note,)
    elif isinstance(err.args[0], str):
        err.args = (f"{err.args[0]} ({note})", *err.args[1:])
    elif hasattr(err, "add_note"):
        err.add_note(note)


def _input_batches(source, cfg: TrainConfig, cc: Crosscoder, start: int, parallel: SingleProcess,
                   device: torch.device, signals: StopSignals) -> Iterator[torch.Tensor]:
    """The stream from step ``start`` on: the input scale is set from the first batches when
    starting, else the stream is replayed up to ``start`` (an interrupt cuts the replay short:
    the loop then stops before its first step)."""
    batches = batch_stream(source, cfg.batch_size, cfg.seed, (cc.n_slots, cc.d_model))
    dtype = cc.W_dec_HXD.dtype
    if start == 0:
        head = list(itertools.islice(batches, cfg.n_norm_batches))
        if not head:
            raise ValueError("the activation source gave no batch")
        sample = torch.cat(head).to(device=device, dtype=dtype)
        bad = nonfinite_slots(sample, SINGLE)
        if bad:
            raise NonFiniteError(f"non-finite activations before training (in the normalisation "
                                 f"batches) at hookpoint(s) {[cc.cfg.hookpoints[i] for i in bad]}")
        cc.set_input_scale(sample)
        batches = itertools.chain(head, batches)
    else:
        for _ in range(start):  # replay the source up to the checkpoint
            if signals.signum is not None:
                break
            next(batches)
    return on_device(batches, parallel, device, dtype)


@contextmanager
def _global_activation(cc: Crosscoder, parallel: SingleProcess):
    """Train with the activation that selects over the global batch; give back the local one."""
    local, cc.activation = cc.activation, parallel.activation(cc.activation)
    try:
        yield
    finally:
        cc.activation = local


@dataclass
class _Run:
    step_fn: TrainingStep
    options: RunOptions
    progress: Progress
    folder: RunFolder | None
    identity: dict | None
    step: int
    end: int

    def loop(self, batches: Iterator[torch.Tensor], signals: StopSignals, parallel: SingleProcess) -> None:
        while self.step < self.end and not signals.requested(parallel):
            s = self.step_fn(next(batches), self.step, with_fvu=self.progress.logs(self.step))
            self.step += 1
            self.progress.record(self.step, s, self.step_fn.tracker.dead_fraction)
            if self.folder is not None and self.folder.due(self.step, self.end, self.options.checkpoint_every):
                self.save()

    def save(self) -> Path | None:
        if self.folder is None or self.step == 0:  # no step done: a rerun redoes it all
            return None
        return self.folder.save(self.step, self.step_fn, self.progress.metrics, self.identity)

    def finish(self, n_steps: int) -> Path | None:
        path = self.save()
        if self.folder is not None and self.step == n_steps:
            self.folder.export(self.step_fn.crosscoder)
        return path

    def note_failure(self, err: BaseException) -> None:
        if self.step_fn.committing:
            last = self.folder.saved_path if self.folder is not None else None
            note = (f"training stopped while applying step {self.step}'s update, a state that is no "
                    "completed step, so nothing was saved" + (f"; the last checkpoint, {last}, is intact" if last else ""))
        elif self.step == 0:
            note = "training stopped before its first step completed"
        else:
            try:
                path = self.save()
            except Exception as save_err:
                path, note = None, f"saving the state after {self.step} steps failed too: {save_err}"
            else:
                note = (f"training stopped at step {self.step}; the state after {self.step} steps is "
                        + (f"checkpointed at {path}" if path else "kept by the crosscoder in memory "
                           "(pass out_dir to checkpoint it)"))
        _add_to_message(err, note)


def _open(folder: RunFolder | None, step_fn: TrainingStep, source, data_id: dict | None, resume: bool,
          parallel: SingleProcess, device: torch.device) -> tuple[dict | None, int, list[dict]]:
    """``(identity, steps done, metrics)``: the checked checkpoint of ``folder`` loaded into
    ``step_fn`` when resuming, else a start from step 0; then ``train_config.json`` written."""
    if folder is None:
        return None, 0, []
    cfg = step_fn.cfg
    identity = run_identity(cfg, step_fn.crosscoder.cfg, source, data_id, world_size=parallel.world_size,
                            penalty_path=penalty_path(device) if cfg.lambda_int > 0 else None)
    start, metrics = folder.resume(step_fn, identity) if resume else (0, [])
    folder.write_config(cfg)
    return identity, start, metrics


def _check_arguments(cfg, options, mlp, stop_at_step) -> None:
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"cfg must be a TrainConfig, got {type(cfg).__name__}")
    if not isinstance(options, RunOptions):
        raise TypeError(f"options must be a RunOptions, got {type(options).__name__}")
    if cfg.lambda_int > 0 and mlp is None:
        raise ValueError("cfg.lambda_int > 0 needs the model's MLP weights: pass "
                         "mlp=crosscoder_lib.interactions.mlp.mlp_weights(bridge)")
    if stop_at_step is not None and stop_at_step < 1:
        raise ValueError(f"stop_at_step must be >= 1, got {stop_at_step}")


def train(cfg: TrainConfig, source, *, crosscoder: Crosscoder | CrosscoderConfig, mlp=None,
          out_dir: str | os.PathLike | None = None, resume: bool = True, stop_at_step: int | None = None,
          options: RunOptions | None = None, data_id: dict | None = None) -> TrainResult:
    """Train ``crosscoder`` on ``source`` under ``cfg`` (guarantees in the module docstring).

    Args:
        cfg: the :class:`TrainConfig` (what changes the result).
        source: raw activations: a tensor ``[T, X, D]`` (shuffled per epoch with ``cfg.seed``) or an
            iterable of batches ``[B, X, D]`` in hookpoint order (e.g. an ActivationBuffer), re-batched
            to ``cfg.batch_size`` and passed over again when it ends (:mod:`.batches`).
        crosscoder: a :class:`CrosscoderConfig` (a fresh model is built) or a :class:`Crosscoder`
            (trained in place). Its input scale is estimated from the first ``cfg.n_norm_batches``
            batches unless resuming.
        mlp: :class:`crosscoder_lib.interactions.mlp.MLPWeights` of the model, required when ``cfg.lambda_int > 0``.
        out_dir: folder for ``checkpoints/`` (every ``options.checkpoint_every`` steps, at the end,
            on an interrupt or a failure), ``crosscoder/`` (the final model, input scale folded)
            and ``train_config.json`` (:mod:`.outdir`).
        resume: continue from the checkpoint in ``out_dir`` when there is one (checked to be this run).
        stop_at_step: stop (with a checkpoint) once this many steps are done, e.g. to split a run.
        options: the :class:`RunOptions` (progress, cadences, device, W&B); a resume may change them.
        data_id: what identifies a stream source's data (stored and checked with the identity;
            :func:`run_from_config` passes the model name and its data and buffer sections).

    Raises:
        NonFiniteError: NaN/inf in a batch (step and hookpoint named), the loss or the gradient.
        TrainingInterrupted: SIGINT or SIGTERM (its ``result`` holds what was trained).
        CheckpointError: a checkpoint of another run, or a damaged one, in ``out_dir``.
        RunFolderBusy: another run trains in ``out_dir``.
    """
    options = RunOptions() if options is None else options
    _check_arguments(cfg, options, mlp, stop_at_step)
    parallel = data_parallel()
    parallel.check_batch_size(cfg.batch_size)
    torch.manual_seed(cfg.seed)
    device = torch.device(options.device)
    step_fn = TrainingStep.build(cfg, crosscoder, mlp, device, parallel)
    cc = step_fn.crosscoder
    folder = None if out_dir is None else RunFolder(out_dir, writer=parallel.is_main)
    with folder.locked() if folder is not None else nullcontext(), StopSignals() as signals:
        identity, start, metrics = _open(folder, step_fn, source, data_id, resume, parallel, device)
        batches = _input_batches(source, cfg, cc, start, parallel, device, signals)
        progress = Progress(cfg, options, metrics, start, show=parallel.is_main, wandb_config={
            "train": cfg.to_dict(), "crosscoder": cc.cfg.to_dict(), "options": options.to_dict()})
        end = cfg.n_steps if stop_at_step is None else min(stop_at_step, cfg.n_steps)
        run = _Run(step_fn, options, progress, folder, identity, start, end)
        try:
            with _global_activation(cc, parallel):
                run.loop(batches, signals, parallel)
            path = run.finish(cfg.n_steps)
        except BaseException as err:
            run.note_failure(err)
            raise
        finally:
            progress.close()
        parallel.barrier()  # rank 0's files are complete before any rank reads them (e.g. to resume)
        result = TrainResult(cc, progress.metrics, progress.metrics[-1] if progress.metrics else {}, run.step,
                             folder.path if folder is not None else None)
        if signals.requested(parallel):
            raise TrainingInterrupted(signals.signum or signal.SIGTERM, result, path)
    return result
