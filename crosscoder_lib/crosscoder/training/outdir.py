"""A run's folder ``out_dir``: who may write it, what it holds, and in which order it is written.

Layout::

    .lock               held while a run trains here (names the process)
    train_config.json   the TrainConfig, written once the resume check has passed
    checkpoints/        resumable states (:mod:`crosscoder_lib.crosscoder.checkpoint`)
    crosscoder/         the final model, input scale folded

Guarantees:

- **One writer.** The main process (rank 0 under ``torchrun``) holds an exclusive ``flock`` on
  ``.lock`` for the whole run; a second run in the same folder is refused with
  :class:`RunFolderBusy` naming the holder, so it can never delete the first run's temporary
  checkpoint. The lock dies with its process: a killed run leaves nothing stale. (It is the
  operating system's lock: on a network file system shared by several machines it may not hold.)
- **A refused resume changes nothing.** The checkpoint's identity is read and compared
  (:mod:`.identity`) before any weight is loaded into the crosscoder or any file written.
- **The final model is whole or absent.** ``crosscoder/`` is written into a temporary folder,
  fsynced and swapped in (:func:`crosscoder_lib.files.replace_folder`); the checkpoint it came from
  stays, so a run killed during the export exports again when rerun.
"""

from __future__ import annotations

import os
import shutil
import socket
from contextlib import contextmanager
from pathlib import Path

from crosscoder_lib.crosscoder.checkpoint import (
    latest_training_state,
    load_training_state,
    read_training_meta,
    save_training_state,
)
from crosscoder_lib.crosscoder.model import Crosscoder
from crosscoder_lib.crosscoder.persistence import save_crosscoder
from crosscoder_lib.crosscoder.training.config import TrainConfig
from crosscoder_lib.crosscoder.training.identity import check_resume, legacy_identity
from crosscoder_lib.crosscoder.training.step import TrainingStep
from crosscoder_lib.files import replace_folder, sync_folder, write_json

try:
    import fcntl
except ImportError:  # not POSIX: runs are not locked
    fcntl = None

CHECKPOINTS_DIR = "checkpoints"
FINAL_DIR = "crosscoder"
TRAIN_CONFIG_FILE = "train_config.json"
LOCK_FILE = ".lock"


class RunFolderBusy(RuntimeError):
    """Another training run holds this ``out_dir``."""


class RunFolder:
    """``out_dir`` of one run (module docstring). Only the ``writer`` (rank 0) touches the disk;
    every rank reads the checkpoint it resumes from."""

    def __init__(self, path: str | os.PathLike, *, writer: bool = True):
        self.path, self.writer = Path(path), writer
        self.checkpoints = self.path / CHECKPOINTS_DIR
        self.saved_step: int | None = None
        """Steps of the state last saved or resumed from (None: nothing yet)."""
        self.saved_path: Path | None = None

    @contextmanager
    def locked(self):
        """Hold the run's lock (the writer only)."""
        if not self.writer or fcntl is None:
            yield self
            return
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / LOCK_FILE, "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                raise RunFolderBusy(f"{self.path} is in use by another training run ({f.read().strip()}); "
                                    "wait for it to finish, or give this run another out_dir") from None
            f.seek(0)
            f.truncate()
            f.write(f"process {os.getpid()} on {socket.gethostname()}\n")
            f.flush()
            try:
                yield self
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def resume(self, step_fn: TrainingStep, identity: dict) -> tuple[int, list[dict]]:
        """Load the latest checkpoint into ``step_fn`` if there is one; ``(steps done, metrics)``."""
        latest = latest_training_state(self.checkpoints)
        if latest is None:
            return 0, []
        meta = read_training_meta(latest)
        check_resume(meta.get("identity") or legacy_identity(meta), identity, latest)
        meta, buffers = load_training_state(latest, crosscoder=step_fn.crosscoder,
                                            optimizer=step_fn.optimizer, meta=meta)
        step_fn.tracker.load_state_dict({"steps_since_fired_H": buffers["steps_since_fired_H"]})
        self.saved_step, self.saved_path = meta["step"], latest
        return meta["step"], meta["metrics"]

    def write_config(self, cfg: TrainConfig) -> None:
        if self.writer:
            write_json(cfg.to_dict(), self.path / TRAIN_CONFIG_FILE, durable=True)

    def due(self, step: int, end: int, every: int) -> bool:
        """Whether the periodic checkpoint falls after ``step`` steps (the last one is saved anyway)."""
        return bool(every) and step % every == 0 and step < end

    def save(self, step: int, step_fn: TrainingStep, metrics: list[dict], identity: dict) -> Path:
        """Checkpoint the state after ``step`` steps (once per step); returns its folder."""
        if not self.writer:
            return self.checkpoints  # rank 0 writes it
        if step != self.saved_step:
            self.saved_path = save_training_state(
                self.checkpoints, step, crosscoder=step_fn.crosscoder, optimizer=step_fn.optimizer,
                buffers=dict(step_fn.tracker.state_dict()), meta={"metrics": metrics, "identity": identity})
            self.saved_step = step
        return self.saved_path

    def export(self, crosscoder: Crosscoder) -> Path:
        """Write the final model (input scale folded) to ``crosscoder/``, whole or not at all."""
        final = self.path / FINAL_DIR
        if not self.writer:
            return final
        for stale in self.path.glob(f".{FINAL_DIR}.*"):  # what a killed export left (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        tmp = self.path / f".{FINAL_DIR}.tmp-{os.getpid()}"
        save_crosscoder(crosscoder, tmp, fold=True)
        sync_folder(tmp)
        return replace_folder(tmp, final)
