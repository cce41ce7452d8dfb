"""Crosscoder and training checkpoints: safetensors for tensors, JSON for everything else.

Nothing here ever unpickles: a pickle (or ``torch.save`` zip) is refused with an error saying how to
convert it, because unpickling a file can run arbitrary code.

Layout of a crosscoder folder (:func:`save_crosscoder`)::

    crosscoder.safetensors   parameters and buffers (state_dict names)
    crosscoder.json          {"format", "config": CrosscoderConfig fields, "input_scale_folded"}

A training checkpoint (:func:`save_training_state`) is a crosscoder folder saved *unfolded* (so a
resumed run continues bit for bit) plus::

    optimizer.safetensors    Adam moments and step counts, keyed "<param name>.<state key>"
    trainer_state.safetensors  the firing tracker and other training buffers
    trainer_state.json       step, optimizer hyper-parameters, train config, metrics so far

Checkpoints are written to a temporary folder and swapped in with renames, so an interrupted write
never replaces the last good checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

FORMAT = "crosscoder_lib.crosscoder/1"
WEIGHTS_FILE = "crosscoder.safetensors"
CONFIG_FILE = "crosscoder.json"
OPTIMIZER_FILE = "optimizer.safetensors"
TRAINER_TENSORS_FILE = "trainer_state.safetensors"
TRAINER_JSON_FILE = "trainer_state.json"


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded (wrong format, missing file, shape mismatch)."""


def _describe_non_safetensors(head: bytes) -> str:
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive (what torch.save writes: a pickle inside)"
    if head[:1] == b"\x80":
        return "a Python pickle"
    return "not a safetensors file"


def check_safetensors(path: str | os.PathLike) -> Path:
    """Return ``path`` if it is a safetensors file; otherwise raise :class:`CheckpointError`.

    Checks the header (8-byte little-endian length, then a JSON object) without loading anything.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} does not exist")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(9)
    ok = len(head) == 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] <= size - 8
    if not ok:
        raise CheckpointError(
            f"{path} is {_describe_non_safetensors(head)}, and this library only reads safetensors "
            f"checkpoints (it never unpickles files: unpickling can run arbitrary code). If you trust "
            f"the file, convert it once: safetensors.torch.save_file(torch.load(path, "
            f"weights_only=True), 'crosscoder.safetensors'), with the JSON config beside it.")
    return path


def read_tensors(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file (refusing anything else)."""
    return load_file(str(check_safetensors(path)), device=str(device))


def write_tensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path))


def _write_json(obj, path: Path) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True))


def load_state_checked(module: torch.nn.Module, tensors: dict[str, torch.Tensor], what: str) -> None:
    """Load ``tensors`` into ``module``, naming every missing, unexpected or mis-shaped tensor."""
    expected = module.state_dict()
    problems = []
    for name in sorted(set(expected) - set(tensors)):
        problems.append(f"missing tensor {name!r} (expected shape {tuple(expected[name].shape)})")
    for name in sorted(set(tensors) - set(expected)):
        problems.append(f"unexpected tensor {name!r} of shape {tuple(tensors[name].shape)}")
    for name in sorted(set(tensors) & set(expected)):
        if tuple(tensors[name].shape) != tuple(expected[name].shape):
            problems.append(f"tensor {name!r} has shape {tuple(tensors[name].shape)} in the checkpoint "
                            f"but the model expects {tuple(expected[name].shape)}")
    if problems:
        raise CheckpointError(f"{what} does not fit this model: " + "; ".join(problems)
                              + ". Build the model from the checkpoint's own config "
                              "(Crosscoder.from_pretrained) or point to the matching checkpoint.")
    module.load_state_dict(tensors)


def save_crosscoder(crosscoder, folder: str | os.PathLike, *, fold: bool = True) -> Path:
    """Write a crosscoder's weights (safetensors) and config (JSON) into ``folder``.

    ``fold``: fold the input scale into the written weights (``crosscoder`` itself is unchanged).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().clone() for k, v in crosscoder.state_dict().items()}
    if fold:
        s_X = state["input_scale_X"]
        state["W_enc_XDH"] *= s_X[:, None, None]
        state["W_dec_HXD"] /= s_X[None, :, None]
        state["b_dec_XD"] /= s_X[:, None]
        state["input_scale_X"] = torch.ones_like(s_X)
    write_tensors(state, folder / WEIGHTS_FILE)
    _write_json({"format": FORMAT, "config": crosscoder.cfg.to_dict(), "input_scale_folded": fold},
                folder / CONFIG_FILE)
    return folder


def _weights_path(path: Path) -> tuple[Path, Path]:
    """(weights file, config file) for a crosscoder folder or its weights file."""
    if path.is_dir():
        weights, config = path / WEIGHTS_FILE, path / CONFIG_FILE
        if not weights.exists():
            found = sorted(p.name for p in path.iterdir())
            raise CheckpointError(f"{path} holds no {WEIGHTS_FILE} (found {found}); pass a folder "
                                  f"written by Crosscoder.save or training")
        return weights, config
    if path.is_file():
        check_safetensors(path)
        return path, path.with_name(CONFIG_FILE)
    raise CheckpointError(f"no checkpoint at {path}")


def load_crosscoder(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """A :class:`~crosscoder_lib.crosscoder.Crosscoder` from a folder (or weights file) written by
    :func:`save_crosscoder`."""
    from crosscoder_lib.crosscoder import Crosscoder, CrosscoderConfig

    weights, config = _weights_path(Path(path))
    tensors = read_tensors(weights, device=device)
    if not config.exists():
        raise CheckpointError(f"{config} is missing: the JSON config must sit beside {weights.name}")
    meta = json.loads(config.read_text())
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{config} has format {meta.get('format')!r}, expected {FORMAT!r}")
    model = Crosscoder(CrosscoderConfig.from_dict(meta["config"])).to(device)
    load_state_checked(model, tensors, f"checkpoint {weights}")
    return model


def load_weights_into(crosscoder, path: str | os.PathLike) -> None:
    """Load a saved crosscoder's tensors into an existing ``crosscoder`` (shapes checked)."""
    weights, _ = _weights_path(Path(path))
    load_state_checked(crosscoder, read_tensors(weights, device=crosscoder.W_dec_HXD.device),
                       f"checkpoint {weights}")


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
    _write_json(meta | {"optimizer_param_groups": groups}, tmp / TRAINER_JSON_FILE)
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
