"""Resumable training checkpoints: a crosscoder folder saved unfolded, plus the optimiser and trainer state.

A training checkpoint (:func:`save_training_state`) is a crosscoder folder
(:mod:`crosscoder_lib.crosscoder.persistence`) saved *unfolded* (so a resumed run continues bit for
bit) plus::

    optimizer.safetensors    Adam moments and step counts, keyed "<param name>.<state key>"
    trainer_state.safetensors  the firing tracker and other training buffers
    trainer_state.json       step, optimizer hyper-parameters, train config, metrics so far

Checkpoints are written to a temporary folder and swapped in with renames, so an interrupted write
never replaces the last good checkpoint.
"""

from __future__ import annotations


import os
import shutil
from pathlib import Path

import json

import torch

from crosscoder_lib.crosscoder.persistence import WEIGHTS_FILE, load_weights_into, save_crosscoder
from crosscoder_lib.files import CheckpointError, read_tensors, write_json, write_tensors

OPTIMIZER_FILE = "optimizer.safetensors"
TRAINER_TENSORS_FILE = "trainer_state.safetensors"
TRAINER_JSON_FILE = "trainer_state.json"

__all__ = ["CheckpointError", "has_training_state", "load_training_state", "save_training_state"]


# -- training state ---------------------------------------------------------------------------------

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


def save_training_state(folder: str | os.PathLike, *, crosscoder, optimizer, buffers: dict[str, torch.Tensor],
                        meta: dict) -> Path:
    """Atomically write a resumable training checkpoint into ``folder`` (see the module docstring)."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    save_crosscoder(crosscoder, tmp, fold=False)
    opt_tensors, groups = _optimizer_tensors(crosscoder, optimizer)
    write_tensors(opt_tensors, tmp / OPTIMIZER_FILE)
    write_tensors(buffers, tmp / TRAINER_TENSORS_FILE)
    write_json(meta | {"optimizer_param_groups": groups}, tmp / TRAINER_JSON_FILE)
    old = folder.with_name(folder.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    if old.exists():
        shutil.rmtree(old)
    return folder


def has_training_state(folder: str | os.PathLike) -> bool:
    folder = Path(folder)
    return (folder / TRAINER_JSON_FILE).exists() and (folder / WEIGHTS_FILE).exists()


def load_training_state(folder: str | os.PathLike, *, crosscoder, optimizer) -> tuple[dict, dict[str, torch.Tensor]]:
    """Restore ``crosscoder`` and ``optimizer`` from a training checkpoint; return ``(meta, buffers)``."""
    folder = Path(folder)
    load_weights_into(crosscoder, folder)
    meta = json.loads((folder / TRAINER_JSON_FILE).read_text())
    device = crosscoder.W_dec_HXD.device
    _load_optimizer(crosscoder, optimizer, read_tensors(folder / OPTIMIZER_FILE, device=device),
                    meta["optimizer_param_groups"])
    return meta, read_tensors(folder / TRAINER_TENSORS_FILE, device=device)
