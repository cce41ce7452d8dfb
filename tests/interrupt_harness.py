"""Signals and kills at named points of a training step, for tests/test_interrupts.py.

A *point* is a place inside a step or a save (a library function entered or left, a hook inside
``optimizer.step()`` or inside backward); :func:`install` wraps them all once, and :data:`TRIGGER`
fires an action at the ``hit``-th time the chosen point is reached: a real signal sent to this
process (``os.kill``), a SIGKILL, or a sleep (so that another process can send the signal). Nothing
in the library knows about this: only test code patches it.

Run as a script it is the child process of the tests (``python interrupt_harness.py MODE ...``):

- ``cases OUT``: every (point, signal) case in this one process, resumed in-process, checked against
  an uninterrupted run; results written to OUT as JSON;
- ``kills OUT``: every kill of :data:`KILLS` in a forked process that SIGKILLs itself at the point,
  then the check and the resume in this one;
- ``sleep POINT HIT OUT_DIR MARKER``: train, touch MARKER and sleep at the point; on the signal the
  parent sends, exit with 128 + its number.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.optim.optimizer as optimizer_hooks

import crosscoder_lib.crosscoder.checkpoint as checkpoint
import crosscoder_lib.crosscoder.training.loop as loop
import crosscoder_lib.crosscoder.training.step as step_mod
from crosscoder_lib.crosscoder.activations import BatchTopK, FiringTracker
from crosscoder_lib.crosscoder.model import Crosscoder, CrosscoderConfig
from crosscoder_lib.crosscoder.training import RunOptions, TrainConfig, TrainingInterrupted, train
from crosscoder_lib.crosscoder.training import loss as loss_mod
from crosscoder_lib.crosscoder.training import outdir as outdir_mod
from crosscoder_lib.crosscoder.training import progress as progress_mod
from crosscoder_lib.files import read_json, read_tensors
from crosscoder_lib.interactions.kernels.buffers import GradientBuffers

HP = ["blocks.0.hook_resid_pre", "blocks.0.ln2.hook_normalized", "blocks.0.hook_resid_post"]
N_STEPS = 8


def acts() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(1024, 3, 16, generator=g) * torch.tensor([1.0, 5.0, 20.0])[None, :, None]


def cc_cfg() -> CrosscoderConfig:
    # 256 features, 3 per token: some never fire in a batch, so AuxK (and its tracker state) is in play
    return CrosscoderConfig(hookpoints=HP, d_model=16, n_features=256, k=3, dead_steps=2)


def run(out_dir, **kw):
    """The run every case interrupts: 8 steps, checkpoints after steps 3 and 6 and at the end."""
    return train(TrainConfig(n_steps=N_STEPS, batch_size=64, lr=3e-3, n_norm_batches=2), acts(),
                 crosscoder=cc_cfg(), out_dir=out_dir,
                 options=RunOptions(progress=False, log_every=2, checkpoint_every=3), **kw)


def state(folder: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Every tensor of a checkpoint folder (weights, Adam, tracker) and its JSON state."""
    tensors = {}
    for name in ("crosscoder.safetensors", "optimizer.safetensors", "trainer_state.safetensors"):
        tensors |= {f"{name}:{k}": v for k, v in read_tensors(folder / name).items()}
    return tensors, read_json(folder / "trainer_state.json")


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class Trigger:
    def __init__(self):
        self.point, self.hit, self.count, self.action = None, 0, 0, None

    def arm(self, point: str, hit: int, action) -> None:
        self.point, self.hit, self.count, self.action = point, hit, 0, action

    def __call__(self, point: str) -> None:
        if point == self.point:
            self.count += 1
            if self.count == self.hit:
                self.action()


TRIGGER = Trigger()


def _wrap(owner, attr: str, point: str, when: str) -> None:
    original = getattr(owner, attr)

    def wrapped(*args, **kwargs):
        if when == "enter":
            TRIGGER(point)
        out = original(*args, **kwargs)
        if when == "leave":
            TRIGGER(point)
        return out

    setattr(owner, attr, wrapped)


def _inside_backward() -> None:
    """A hook on the encoder's gradient: it runs in the middle of backward."""
    original = Crosscoder.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.W_enc_XDH.register_hook(lambda grad: TRIGGER("inside_backward"))

    Crosscoder.__init__ = init


def install() -> None:
    """Wrap every point once (per process)."""
    _wrap(TrainConfig, "lr_at", "lr_schedule", "enter")  # at a step's start, and when it is logged
    _wrap(step_mod, "nonfinite_slots", "nonfinite_check", "leave")
    _wrap(Crosscoder, "forward", "forward_enter", "enter")
    _wrap(Crosscoder, "forward", "forward_leave", "leave")
    _wrap(BatchTopK, "_stage_threshold", "threshold_staged", "leave")
    _wrap(loss_mod, "aux_loss", "aux_loss", "leave")
    _wrap(step_mod, "compute_loss", "loss_computed", "leave")
    # the step clears its gradients through its recycled buffers (in place of Optimizer.zero_grad)
    _wrap(GradientBuffers, "recycle", "zero_grad", "enter")
    _wrap(torch.Tensor, "backward", "backward_enter", "enter")
    _inside_backward()
    _wrap(torch.Tensor, "backward", "backward_leave", "leave")
    _wrap(torch.nn.utils, "clip_grad_norm_", "clip_leave", "leave")
    optimizer_hooks.register_optimizer_step_pre_hook(lambda *a: TRIGGER("inside_optimizer_step_before_update"))
    optimizer_hooks.register_optimizer_step_post_hook(lambda *a: TRIGGER("inside_optimizer_step_after_update"))
    _wrap(FiringTracker, "update", "tracker_leave", "leave")
    _wrap(BatchTopK, "commit_step", "threshold_committed", "leave")
    _wrap(checkpoint, "save_crosscoder", "save_begin", "enter")
    _wrap(checkpoint, "write_tensors", "save_file_written", "leave")
    _wrap(checkpoint, "sync_folder", "save_folder_complete", "leave")
    _wrap(checkpoint, "fsync_dir", "save_renamed", "leave")  # 1st call per save: after the folder rename
    _wrap(checkpoint, "_remove_all_but", "save_committed", "enter")  # LATEST moved, old state not yet deleted
    _wrap(outdir_mod, "save_training_state", "save_end", "leave")
    _wrap(Crosscoder, "set_input_scale", "set_input_scale", "leave")
    _wrap(outdir_mod, "save_crosscoder", "export_written", "leave")
    _wrap(outdir_mod, "replace_folder", "export_swap", "enter")
    _wrap(progress_mod.Progress, "record", "metrics_recorded", "leave")
    on_device = loop.on_device

    def batches(*args, **kwargs):
        for acts_BXD in on_device(*args, **kwargs):
            TRIGGER("batch_ready")
            yield acts_BXD

    loop.on_device = batches


# (point, hit): the hit-th time the point is reached. Once-per-step points fire in 0-based step 4 on
# hit 5 (steps 0-3 came first). The saves follow steps 3, 6 and 8, so hit 2 of a once-per-save point
# is inside the step-6 save; save_file_written is reached twice per save (optimizer, tracker) and
# save_renamed twice (after the folder rename, after LATEST): hit 3 is the first of the step-6 save,
# between its two renames.
CASES = [(p, 5) for p in ("batch_ready", "lr_schedule", "nonfinite_check", "forward_enter", "forward_leave",
                          "threshold_staged", "loss_computed", "zero_grad", "backward_enter", "inside_backward",
                          "backward_leave", "clip_leave", "inside_optimizer_step_before_update",
                          "inside_optimizer_step_after_update", "tracker_leave", "threshold_committed",
                          "metrics_recorded")]
CASES += [("aux_loss", 3), ("set_input_scale", 1), ("save_begin", 2), ("save_file_written", 3),
          ("save_folder_complete", 2), ("save_renamed", 3), ("save_committed", 2), ("save_end", 2),
          ("export_written", 1), ("export_swap", 1)]


def references(tmp: Path) -> dict[int, tuple[dict, dict]]:
    """The uninterrupted run's state after every number of steps (one short run per count)."""
    out = {}
    for k in range(1, N_STEPS + 1):
        run(tmp / f"ref_{k}", stop_at_step=k)
        out[k] = state(checkpoint.latest_training_state(tmp / f"ref_{k}" / "checkpoints"))
    return out


def check_case(out_dir: Path, refs: dict) -> dict:
    """After an interrupted run: is its checkpoint a completed step, and does resuming end bit for bit?"""
    latest = checkpoint.latest_training_state(out_dir / "checkpoints")
    report = {"saved_step": None, "saved_exact": True}
    if latest is not None:
        tensors, meta = state(latest)
        ref_tensors, ref_meta = refs[meta["step"]]
        report = {"saved_step": meta["step"],
                  "saved_exact": same(tensors, ref_tensors) and meta["metrics"] == ref_meta["metrics"]}
    final = run(out_dir)
    tensors, meta = state(checkpoint.latest_training_state(out_dir / "checkpoints"))
    ref_tensors, ref_meta = refs[N_STEPS]
    report["final_exact"] = (final.step == N_STEPS and same(tensors, ref_tensors)
                             and meta["metrics"] == ref_meta["metrics"])
    return report


def run_cases(out: Path) -> None:
    install()
    tmp = Path(tempfile.mkdtemp())
    refs = references(tmp)
    results = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        for point, hit in CASES:
            out_dir = tmp / f"{point}_{sig.name}"
            TRIGGER.arm(point, hit, lambda: os.kill(os.getpid(), sig))
            try:
                run(out_dir)
                raised = None
            except TrainingInterrupted as err:
                raised = err.signum
            fired = TRIGGER.count >= hit
            TRIGGER.arm(None, 0, None)
            results.append({"point": point, "signal": sig.name, "fired": fired, "raised": raised}
                           | check_case(out_dir, refs))
    out.write_text(json.dumps(results, indent=1))


# SIGKILL (no handler runs) at each instant of the step-6 save and of the final export:
# (point, hit, the steps of the state that must survive it).
KILLS = [("save_file_written", 3, 3),        # the new step folder half written
         ("save_folder_complete", 2, 3),     # written and fsynced, not yet renamed
         ("save_renamed", 3, 3),             # renamed, LATEST not yet moved: between the two renames
         ("save_committed", 2, 6),           # LATEST moved, the old state not yet deleted
         ("export_written", 1, 8)]           # the final model in its temporary folder, not swapped in


def run_kills(out: Path) -> None:
    """Each kill in a forked process (a real SIGKILL), then the check and the resume in this one."""
    install()
    tmp = Path(tempfile.mkdtemp())
    refs = references(tmp)
    results = []
    for point, hit, survives in KILLS:
        out_dir = tmp / point
        pid = os.fork()
        if pid == 0:
            TRIGGER.arm(point, hit, lambda: os.kill(os.getpid(), signal.SIGKILL))
            run(out_dir)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        latest = checkpoint.latest_training_state(out_dir / "checkpoints")
        survived = state(latest)[1]["step"] if latest is not None else None
        report = {"point": point, "killed": os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL,
                  "survived": survived, "expected": survives, "final_absent": not (out_dir / "crosscoder").exists()}
        report |= check_case(out_dir, refs)
        report["left"] = sorted(p.name for p in out_dir.iterdir()) + sorted(
            p.name for p in (out_dir / "checkpoints").iterdir())
        results.append(report)
    out.write_text(json.dumps(results, indent=1))


def _sleep_at(marker: Path) -> None:
    """Sleep until the signal the parent sends has set the trainer's flag (or a minute passed)."""
    marker.write_text("here")
    stop = getattr(signal.getsignal(signal.SIGTERM), "__self__", None)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (stop is None or stop.signum is None):
        time.sleep(0.01)


if __name__ == "__main__":
    torch.set_num_threads(1)
    mode = sys.argv[1]
    if mode == "cases":
        run_cases(Path(sys.argv[2]))
    elif mode == "kills":
        run_kills(Path(sys.argv[2]))
    else:  # sleep POINT HIT OUT_DIR MARKER
        install()
        TRIGGER.arm(sys.argv[2], int(sys.argv[3]), lambda: _sleep_at(Path(sys.argv[5])))
        try:
            run(Path(sys.argv[4]))
        except TrainingInterrupted as err:
            sys.exit(128 + err.signum)
