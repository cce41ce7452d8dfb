"""Stopping a run cleanly on SIGINT (Ctrl-C, a notebook's interrupt) or SIGTERM (a scheduler, ``kill``).

While :func:`~crosscoder_lib.crosscoder.training.loop.train` runs, the first SIGINT or SIGTERM only
sets a flag (:class:`StopSignals`). The loop reads it between steps, saves the state of the last
completed step and raises :class:`TrainingInterrupted`. So a signal may land anywhere (inside
``optimizer.step()``, inside backward, between two files of a checkpoint) and the checkpoint still
holds a completed step exactly as an uninterrupted run had it after that many steps; resuming ends
bit for bit where the uninterrupted run does (tests/test_interrupts.py sends real signals at 27
positions of a step). Under ``torchrun`` the flag is reduced over the ranks, so all stop at the
same step.

A second signal is not deferred: it does what it did before training (SIGINT: KeyboardInterrupt;
SIGTERM: terminate), for a step that hangs; the checkpoint on disk is then the last one saved.
Handlers can only be installed from the main thread; called from another thread, training leaves
signals as they are.
"""

from __future__ import annotations

import signal
import threading

from crosscoder_lib.crosscoder.distributed import SingleProcess

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(KeyboardInterrupt):
    """A run stopped by SIGINT or SIGTERM after saving its last completed step.

    Attributes: ``signum``; ``result``, the :class:`~crosscoder_lib.crosscoder.training.loop.TrainResult`
    so far (its crosscoder holds the state after ``result.step`` steps); ``checkpoint``, the folder
    holding that state (None without ``out_dir``). Run the same training again to resume.
    """

    def __init__(self, signum: int, result, checkpoint):
        self.signum, self.result, self.checkpoint = signum, result, checkpoint
        where = (f"checkpointed at {checkpoint}; run the same training again to resume" if checkpoint
                 else "kept in .result.crosscoder (pass out_dir to checkpoint it)")
        super().__init__(f"training stopped by {signal.Signals(signum).name} after {result.step} steps; the "
                         f"state after {result.step} steps is {where}")


class StopSignals:
    """Context manager: while open, the first SIGINT/SIGTERM sets :attr:`signum` (module docstring)."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        if self.signum is None:
            self.signum = signum
            return
        previous = self._previous.get(signum, signal.SIG_DFL)
        self.__exit__()
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_DFL:
            signal.raise_signal(signum)

    def requested(self, parallel: SingleProcess) -> bool:
        """Whether some rank has been signalled (every rank gets the same answer)."""
        return parallel.any_rank(self.signum is not None)
