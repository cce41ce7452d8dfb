"""Training a crosscoder, one concept per module:

- ``config``: :class:`TrainConfig` (the arithmetic: every field changes the result) and
  :class:`RunOptions` (progress, logging and checkpoint cadence, device, W&B: what a resumed run
  may change);
- ``loss``: the loss of a batch (reconstruction, AuxK, sparsity, λ · interaction penalty);
- ``step``: one optimiser step, whose state changes all happen after every check passed;
- ``batches``: the batch stream of a tensor or iterable source, checked and on the device;
- ``progress``: metrics, progress bar, W&B;
- ``identity``: what a checkpoint must match to be resumed (model, data, configs, numerics);
- ``interrupts``: SIGINT/SIGTERM stop at a step boundary, after a checkpoint;
- ``outdir``: the run folder (lock, atomic final model);
- ``loop``: :func:`train`, a short loop over the step function, and its guarantees;
- ``run_config``: :func:`~crosscoder_lib.crosscoder.training.run_config.run_from_config`, what the
  command line ``crosscoder train run.json`` runs (imported from its module: it loads models).

Checkpoints themselves are :mod:`crosscoder_lib.crosscoder.checkpoint`.
"""

from crosscoder_lib.crosscoder.training.config import RunOptions, TrainConfig
from crosscoder_lib.crosscoder.training.interrupts import TrainingInterrupted
from crosscoder_lib.crosscoder.training.loop import TrainResult, train
from crosscoder_lib.crosscoder.training.outdir import RunFolderBusy
from crosscoder_lib.crosscoder.training.step import NonFiniteError

__all__ = ["NonFiniteError", "RunFolderBusy", "RunOptions", "TrainConfig", "TrainResult", "TrainingInterrupted",
           "train"]
