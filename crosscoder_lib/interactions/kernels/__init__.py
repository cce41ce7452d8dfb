"""The interaction penalty's backends: ONE setting chooses between the fused C kernel and PyTorch.

=========  =====================================================================================
``auto``   (default) the C kernel for float32 CPU tensors when it builds and loads, else the
           PyTorch path, with one warning that says why
``c``      the C kernel for float32 CPU tensors, and an error when it is unavailable
``torch``  always the PyTorch path
=========  =====================================================================================

Tensors that are not float32 on the CPU always take the PyTorch path (the kernel is float32 CPU
code); both paths compute the same sums. The environment variable ``CROSSCODER_LIB_KERNEL`` gives
the initial setting (``auto``, ``c`` or ``torch``; ``1`` and ``0`` mean ``auto`` and ``torch``);
:func:`set_backend` and the context manager :func:`use_backend` change it, :func:`kernel_status`
reports it, and :func:`build` compiles the kernel now (``python -m crosscoder_lib.interactions.kernels
build|status``). The library asks one function, :func:`penalty_library`, which path to take.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import torch

from crosscoder_lib.interactions.kernels import cache

BACKENDS = ("auto", "c", "torch")
ENV = "CROSSCODER_LIB_KERNEL"
_ALIASES = {"1": "auto", "0": "torch"}

_lock = threading.Lock()
_setting: str | None = None  # None: not chosen yet, read from the environment on first use
# (cache folder, $CC) -> (loaded library, its path) or the reason it is unavailable; reasons warned about.
_libraries: dict[tuple, tuple | str] = {}
_warned: set[str] = set()


class KernelStatus(NamedTuple):
    """What :func:`kernel_status` reports."""

    setting: str
    """The backend setting: ``auto``, ``c`` or ``torch``."""
    backend: str
    """What a float32 CPU penalty uses now: ``c`` or ``torch``."""
    library: Path | None
    """The loaded kernel library, when there is one."""
    reason: str | None
    """Why the C kernel is not in use, when it is not."""
    threads: int
    """Threads a kernel call uses (``torch.get_num_threads()``)."""


def _checked(name: str, source: str) -> str:
    name = _ALIASES.get(name, name)
    if name not in BACKENDS:
        raise ValueError(f"unknown interaction-penalty backend {name!r} from {source}; choose one of {BACKENDS}")
    return name


def get_backend() -> str:
    """The backend setting (read from ``CROSSCODER_LIB_KERNEL`` on first use; default ``auto``)."""
    global _setting
    if _setting is None:
        _setting = _checked(os.environ.get(ENV, "auto").strip().lower(), f"the environment variable {ENV}")
    return _setting


def set_backend(name: str) -> None:
    """Choose the penalty's backend for this process: ``auto``, ``c`` or ``torch`` (module docstring)."""
    global _setting
    _setting = _checked(name, "set_backend")


@contextmanager
def use_backend(name: str) -> Iterator[None]:
    """``with use_backend("torch"): ...`` runs the block under that backend, then restores the setting."""
    before = get_backend()
    set_backend(name)
    try:
        yield
    finally:
        set_backend(before)


def _where() -> tuple:
    return cache.cache_dir(), os.environ.get("CC", "cc")


def _load_into_state(force: bool):
    """Build (or verify) and load the kernel for the current cache folder; record the outcome."""
    where = _where()
    lib, replaced = cache.build(force=force)
    if replaced is not None:
        warnings.warn(f"interaction penalty kernel: rebuilt {lib}, which was not loaded: {replaced}", stacklevel=4)
    try:
        so = cache.load(lib)
    except OSError as err:
        # It passed its checks but does not load (corrupt before its record was written): build once more.
        lib, _ = cache.build(force=True)
        try:
            so = cache.load(lib)
        except OSError as err2:
            raise RuntimeError(f"cannot load the kernel library {lib} ({err2}; before a rebuild: {err}); "
                               f"delete {lib} and run `python -m crosscoder_lib.interactions.kernels build`") from err2
    _libraries[where] = (so, lib)
    return _libraries[where]


def _library() -> tuple | str:
    """``(library, path)`` for the current cache folder and compiler, or why there is none (tried once)."""
    with _lock:
        found = _libraries.get(_where())
        if found is None:
            try:
                found = _load_into_state(force=False)
            except Exception as err:  # any failure: the PyTorch path computes the same thing
                found = _libraries[_where()] = str(err)
        return found


def penalty_library(like: torch.Tensor):
    """The ONE place the penalty's backend is chosen: the loaded C kernel for a penalty on tensors
    like ``like``, or None for the PyTorch path (see the module docstring)."""
    if like.dtype != torch.float32 or like.device.type != "cpu" or get_backend() == "torch":
        return None
    found = _library()
    if isinstance(found, tuple):
        return found[0]
    if get_backend() == "c":
        raise RuntimeError(f"the interaction penalty's backend is 'c' but the fused C kernel is unavailable: "
                           f"{found}. Fix that, or use set_backend('auto') or ('torch')")
    if found not in _warned:
        _warned.add(found)
        warnings.warn(f"interaction penalty: fused C kernel unavailable ({found}); using the PyTorch path",
                      stacklevel=3)
    return None


def kernel_status() -> KernelStatus:
    """The backend setting, what a float32 CPU penalty uses now, the library's path or why there is none
    (under ``auto`` and ``c`` this builds the kernel if it is not built yet)."""
    setting, threads = get_backend(), torch.get_num_threads()
    if setting == "torch":
        return KernelStatus(setting, "torch", None, "the backend is set to 'torch'", threads)
    found = _library()
    if isinstance(found, str):
        return KernelStatus(setting, "torch", None, found, threads)
    return KernelStatus(setting, "c", found[1], None, threads)


def build(force: bool = False) -> Path:
    """Compile (or verify) and load the kernel now; its path. Raises with the compiler's or loader's
    message on failure. ``force`` rebuilds even a library that passes its checks."""
    with _lock:
        try:
            return _load_into_state(force)[1]
        except Exception as err:
            _libraries[_where()] = str(err)
            raise
