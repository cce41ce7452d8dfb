"""Checked, atomic file I/O shared by every layer: safetensors for tensors, JSON for everything else.

Guarantees:

- **Nothing is ever unpickled.** A pickle (or ``torch.save`` zip) is refused with an error saying how
  to convert it, because unpickling a file can run arbitrary code.
- **Writes are atomic.** :func:`write_tensors` and :func:`write_json` write a temporary file beside
  the target and swap it in with one ``os.replace``: a reader (or a run after a crash) sees the old
  file or the new one, never a torn one. ``durable=True`` also fsyncs the file and its folder, so
  the new file survives a power loss; :func:`sync_folder` does that for a whole folder at once.
- **Reads name the file.** A missing file, one too short to be safetensors, a truncated one (its
  header promises more bytes than it holds) and invalid JSON all raise :class:`CheckpointError`
  naming the path, never a raw library error.
- **Checksums.** :func:`sha256_file` and :func:`digest` (of tensors and strings) let callers detect
  flipped bits, which a valid safetensors header does not reveal.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


class CheckpointError(ValueError):
    """A file that cannot be loaded (wrong format, missing, truncated, corrupt, shape mismatch)."""


# -- reading ----------------------------------------------------------------------------------------

def _describe_non_safetensors(head: bytes) -> tuple[str, bool]:
    """What the first bytes look like, and whether it is a pickle (which gets conversion advice)."""
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive (what torch.save writes: a pickle inside)", True
    if head[:1] == b"\x80":
        return "a Python pickle", True
    return f"not a safetensors file (it starts with {head[:9]!r})", False


def check_safetensors(path: str | os.PathLike) -> Path:
    """Return ``path`` if it is a complete safetensors file; otherwise raise :class:`CheckpointError`.

    Checks the header (8-byte little-endian length, then a JSON object whose tensors' data offsets
    end exactly at the end of the file) without loading any tensor.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} does not exist")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(9)
        if size < 9:
            raise CheckpointError(f"{path} is truncated: {size} bytes, fewer than the 9 of the smallest "
                                  "safetensors file (an 8-byte header length, then a JSON header); the "
                                  "write that made it was cut short, so write it again")
        n_header = struct.unpack("<Q", head[:8])[0]
        if head[8:9] != b"{" or n_header > size - 8:
            what, is_pickle = _describe_non_safetensors(head)
            if head[8:9] == b"{" and not is_pickle:
                raise CheckpointError(f"{path} is truncated: its header alone needs {n_header + 8} bytes, "
                                      f"the file holds {size}")
            advice = (" If you trust the file, convert it once: safetensors.torch.save_file(torch.load(path, "
                      "weights_only=True), 'crosscoder.safetensors'), with the JSON config beside it."
                      if is_pickle else "")
            raise CheckpointError(f"{path} is {what}, and this library only reads safetensors files (it "
                                  f"never unpickles files: unpickling can run arbitrary code).{advice}")
        f.seek(8)
        header_bytes = f.read(n_header)
    try:
        header = json.loads(header_bytes)
        end = max([int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"], default=0)
    except (ValueError, KeyError, TypeError, IndexError) as err:
        raise CheckpointError(f"{path} has a corrupt safetensors header ({err})") from err
    if 8 + n_header + end != size:
        raise CheckpointError(f"{path} is truncated or corrupt: its header describes {8 + n_header + end} "
                              f"bytes, the file holds {size}")
    return path


def read_tensors(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file (refusing anything else, see :func:`check_safetensors`)."""
    path = check_safetensors(path)
    try:
        return load_file(str(path), device=str(device))
    except Exception as err:  # safetensors raises its own error type for damage the header check misses
        raise CheckpointError(f"{path} could not be read as safetensors ({err})") from err


def read_json(path: str | os.PathLike):
    """The JSON value in ``path``; a missing or invalid file raises :class:`CheckpointError` naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as err:
        raise CheckpointError(f"{path} does not exist") from err
    except (ValueError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is not valid JSON ({err}): the file is truncated or corrupt") from err


# -- writing ----------------------------------------------------------------------------------------

def fsync_dir(folder: str | os.PathLike) -> None:
    """Make the names in ``folder`` (new files, renames) durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _atomic_write(path: str | os.PathLike, write: Callable[[Path], None], durable: bool) -> None:
    path = Path(path)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        if durable:
            _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


def write_tensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike, *, durable: bool = False) -> None:
    """Write ``tensors`` as a safetensors file, atomically (module docstring)."""
    cpu = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    _atomic_write(path, lambda tmp: save_file(cpu, str(tmp)), durable)


def write_json(obj, path: str | os.PathLike, *, durable: bool = False) -> None:
    """Write ``obj`` as indented JSON with sorted keys, atomically (module docstring)."""
    text = json.dumps(obj, indent=2, sort_keys=True)
    _atomic_write(path, lambda tmp: tmp.write_text(text), durable)


def sync_folder(folder: str | os.PathLike) -> None:
    """fsync every file directly in ``folder``, then the folder itself."""
    for p in Path(folder).iterdir():
        if p.is_file():
            _fsync_file(p)
    fsync_dir(folder)


def replace_folder(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Put the complete folder ``src`` at ``dst``: the old ``dst`` (if any) is renamed aside, ``src``
    renamed in, the old one deleted. ``dst`` is never a mix of the two; between the renames it is
    briefly absent (what a caller must be able to redo)."""
    src, dst = Path(src), Path(dst)
    aside = dst.with_name(f".{dst.name}.old-{os.getpid()}")
    if dst.exists():
        os.replace(dst, aside)
    os.replace(src, dst)
    fsync_dir(dst.parent)
    shutil.rmtree(aside, ignore_errors=True)
    return dst


# -- checksums --------------------------------------------------------------------------------------

def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def digest(*parts: torch.Tensor | str | bytes) -> str:
    """sha256 of tensors (dtype, shape and bytes) and strings, in order."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, torch.Tensor):
            t = part.detach().cpu().contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy())
        else:
            h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()


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
