"""Resumable training checkpoints: what one holds, how it is written, how the latest one is found.

Layout of a checkpoint root (training uses ``out_dir/checkpoints``)::

    LATEST                   the name of the newest complete step folder, e.g. "step_00000120"
    step_00000120/           one training state:
        crosscoder.safetensors, crosscoder.json    the crosscoder, saved *unfolded* (a resumed run
                                                   continues bit for bit; load_crosscoder reads it)
        optimizer.safetensors    Adam moments and step counts, keyed "<param name>.<state key>"
        trainer_state.safetensors  the firing tracker and other training buffers
        trainer_state.json       step, metrics, optimizer hyper-parameters, the run's identity
        manifest.json            sha256 of every other file of the folder

Guarantees:

- **A valid latest state at every instant.** :func:`save_training_state` writes the state into a
  temporary folder, fsyncs every file and the folder, renames it to its step folder, and only then
  moves ``LATEST`` to it with one ``os.replace`` of a fsynced file: the commit point. Older step
  folders are deleted after it. A crash (or kill, or power loss) anywhere leaves ``LATEST`` naming a
  complete folder, the new one or the previous one.
- **Damage is detected.** :func:`load_training_state` checks every file against ``manifest.json``
  before reading anything, so a truncated file or a flipped bit is a :class:`CheckpointError`
  naming the file, not a silently different resume.
- **Older layouts are recovered.** Before this layout a checkpoint was the folder ``checkpoint``
  beside the root, swapped in through ``checkpoint.tmp`` and ``checkpoint.old``, and a kill between
  those renames left only the latter two. When the root has no ``LATEST``,
  :func:`latest_training_state` takes the complete one of those three with the most steps; the
  first save in this layout deletes them.

Only one process may write a root at a time (training holds a lock on ``out_dir``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch

from crosscoder_lib.crosscoder.persistence import WEIGHTS_FILE, load_weights_into, save_crosscoder
from crosscoder_lib.files import (
    CheckpointError,
    fsync_dir,
    read_json,
    read_tensors,
    sha256_file,
    sync_folder,
    write_json,
    write_tensors,
)

OPTIMIZER_FILE = "optimizer.safetensors"
TRAINER_TENSORS_FILE = "trainer_state.safetensors"
TRAINER_JSON_FILE = "trainer_state.json"
MANIFEST_FILE = "manifest.json"
LATEST_FILE = "LATEST"
LEGACY_NAMES = ("checkpoint", "checkpoint.tmp", "checkpoint.old")

__all__ = ["CheckpointError", "latest_training_state", "load_training_state", "read_training_meta",
           "save_training_state"]


# -- optimizer state --------------------------------------------------------------------------------

def _optimizer_tensors(crosscoder, optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    names = {id(p): n for n, p in crosscoder.named_parameters()}
    tensors, groups = {}, []
    for group in optimizer.param_groups:
        groups.append({k: v for k, v in group.items() if k != "params"} | {
            "params": [names[id(p)] for p in group["params"]]})
        for p in group["params"]:
            for key, value in optimizer.state.get(p, {}).items():
                tensors[f"{names[id(p)]}.{key}"] = torch.as_tensor(value)
    return tensors, groups


def _load_optimizer(crosscoder, optimizer, tensors: dict[str, torch.Tensor], groups: list[dict]) -> None:
    name_of = {id(p): n for n, p in crosscoder.named_parameters()}
    ours = [[name_of[id(p)] for p in g["params"]] for g in optimizer.param_groups]
    theirs = [g["params"] for g in groups]
    if ours != theirs:
        raise CheckpointError(f"optimizer checkpoint covers parameters {theirs}, this optimizer {ours}")
    optimizer.state.clear()
    for group, saved in zip(optimizer.param_groups, groups):
        for k, v in saved.items():
            if k != "params":
                group[k] = tuple(v) if isinstance(group.get(k), tuple) else v
        for p in group["params"]:
            name = name_of[id(p)]
            state = {key[len(name) + 1:]: t for key, t in tensors.items() if key.rsplit(".", 1)[0] == name}
            for key, t in state.items():
                if t.ndim and t.shape != p.shape:
                    raise CheckpointError(f"optimizer tensor {name}.{key} has shape {tuple(t.shape)} but "
                                          f"parameter {name} has shape {tuple(p.shape)}")
            if state:
                optimizer.state[p] = {k: t.to(p.device) for k, t in state.items()}


# -- writing ----------------------------------------------------------------------------------------

def step_folder_name(step: int) -> str:
    return f"step_{step:08d}"


def save_training_state(root: str | os.PathLike, step: int, *, crosscoder, optimizer,
                        buffers: dict[str, torch.Tensor], meta: dict) -> Path:
    """Write the training state after ``step`` steps under ``root`` and make it the latest
    (atomically and durably, see the module docstring); returns its step folder."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / step_folder_name(step)
    for n in range(1, 1000):  # a name LATEST may still hold (a run started over with resume=False) is kept
        if not final.exists():
            break
        final = root / f"{step_folder_name(step)}-{n}"
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{final.name}.", suffix=".tmp"))
    try:
        save_crosscoder(crosscoder, tmp, fold=False)
        opt_tensors, groups = _optimizer_tensors(crosscoder, optimizer)
        write_tensors(opt_tensors, tmp / OPTIMIZER_FILE)
        write_tensors(buffers, tmp / TRAINER_TENSORS_FILE)
        write_json(meta | {"step": step, "optimizer_param_groups": groups}, tmp / TRAINER_JSON_FILE)
        write_json({p.name: sha256_file(p) for p in sorted(tmp.iterdir())}, tmp / MANIFEST_FILE)
        sync_folder(tmp)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(root)
    pointer = root / f".{LATEST_FILE}.tmp"
    pointer.write_text(final.name + "\n")
    with open(pointer, "rb") as f:
        os.fsync(f.fileno())
    os.replace(pointer, root / LATEST_FILE)  # the commit point
    fsync_dir(root)
    _remove_all_but(root, final)
    return final


def _remove_all_but(root: Path, keep: Path) -> None:
    """Delete every other state under ``root`` and the older layouts beside it (module docstring)."""
    for p in root.iterdir():
        if p.is_dir() and p != keep:
            shutil.rmtree(p, ignore_errors=True)
    for name in LEGACY_NAMES:
        shutil.rmtree(root.parent / name, ignore_errors=True)


# -- finding and reading ----------------------------------------------------------------------------

def _is_complete_legacy(folder: Path) -> bool:
    needed = (WEIGHTS_FILE, "crosscoder.json", OPTIMIZER_FILE, TRAINER_TENSORS_FILE, TRAINER_JSON_FILE)
    if not all((folder / f).is_file() for f in needed):
        return False
    try:
        read_json(folder / TRAINER_JSON_FILE)["step"]
    except (CheckpointError, KeyError, TypeError):
        return False
    return True


def latest_training_state(root: str | os.PathLike) -> Path | None:
    """The step folder ``LATEST`` names under ``root``, else the most advanced complete checkpoint of
    the older layout beside it, else None (no state: train from step 0)."""
    root = Path(root)
    pointer = root / LATEST_FILE
    if pointer.exists():
        folder = root / pointer.read_text().strip()
        if not (folder / MANIFEST_FILE).is_file():
            raise CheckpointError(f"{pointer} names {folder.name}, which is missing or incomplete: the "
                                  "checkpoint folder was changed by hand. Restore it, or train with "
                                  "resume=False (or another out_dir) to start over")
        return folder
    legacy = [root.parent / n for n in LEGACY_NAMES if _is_complete_legacy(root.parent / n)]
    return max(legacy, key=lambda f: read_json(f / TRAINER_JSON_FILE)["step"], default=None)


def _verify(folder: Path) -> None:
    manifest_path = folder / MANIFEST_FILE
    if not manifest_path.exists():
        return  # the older layout had no checksums
    manifest = read_json(manifest_path)
    for name, want in manifest.items():
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"{path} is missing from the checkpoint (listed in {MANIFEST_FILE})")
        if sha256_file(path) != want:
            raise CheckpointError(f"{path} does not match its checksum in {MANIFEST_FILE}: the file was "
                                  "damaged (truncated, flipped bits) after it was written. Restore it, or "
                                  "train with resume=False (or another out_dir) to start over")


def read_training_meta(folder: str | os.PathLike) -> dict:
    """``trainer_state.json`` of a checkpoint, every file of it checked first (nothing is loaded)."""
    folder = Path(folder)
    _verify(folder)
    return read_json(folder / TRAINER_JSON_FILE)


def load_training_state(folder: str | os.PathLike, *, crosscoder, optimizer,
                        meta: dict | None = None) -> tuple[dict, dict[str, torch.Tensor]]:
    """Restore ``crosscoder`` and ``optimizer`` from a checkpoint folder; return ``(meta, buffers)``.

    ``meta``: what :func:`read_training_meta` returned for this folder (its files are then not
    checked a second time)."""
    folder = Path(folder)
    meta = read_training_meta(folder) if meta is None else meta
    device = crosscoder.W_dec_HXD.device
    opt_tensors = read_tensors(folder / OPTIMIZER_FILE, device=device)
    buffers = read_tensors(folder / TRAINER_TENSORS_FILE, device=device)
    load_weights_into(crosscoder, folder)
    _load_optimizer(crosscoder, optimizer, opt_tensors, meta["optimizer_param_groups"])
    return meta, buffers
