"""Checked file I/O shared by every layer: safetensors for tensors, JSON for everything else.

Nothing here ever unpickles: a pickle (or ``torch.save`` zip) is refused with an error saying how to
convert it, because unpickling a file can run arbitrary code.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


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


def write_json(obj, path: Path) -> None:
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
