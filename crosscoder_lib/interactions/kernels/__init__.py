"""The interaction penalty's backends: ONE setting chooses between the fused C kernel, Triton and PyTorch.

=========  =====================================================================================
``auto``   (default) float32 CPU tensors: the C kernel when it builds and loads; float32 CUDA
           tensors: the Triton kernel when Triton imports; else the PyTorch path, with one
           warning that says why
``c``      the C kernel for float32 CPU tensors, and an error when it is unavailable
``triton`` the Triton kernel for float32 CUDA tensors (CPU ones too under ``TRITON_INTERPRET=1``,
           Triton's interpreter: how its parity is tested without a GPU), and an error when it
           is unavailable
``torch``  always the PyTorch path (chunked; on a GPU its chunks are sized by the free memory)
=========  =====================================================================================

Tensors of another dtype always take the PyTorch path (both kernels are float32 code), as do
CUDA tensors under ``c`` and CPU ones under ``triton`` without the interpreter; every path
computes the same sums. The environment variable ``CROSSCODER_LIB_KERNEL`` gives the initial
setting (``auto``, ``c``, ``triton`` or ``torch``; ``1`` and ``0`` mean ``auto`` and ``torch``);
:func:`set_backend` and the context manager :func:`use_backend` change it, :func:`kernel_status`
reports it, and :func:`build` compiles the C kernel now (``python -m crosscoder_lib.interactions.kernels
build|status``). The library asks one function, :func:`penalty_backend`, which path to take, and
:func:`penalty_sums` takes it. Triton is imported only when its backend is asked for
(:func:`triton_kernel`): it is not a requirement of the project.
"""

from __future__ import annotations

import importlib
import os
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import torch

from crosscoder_lib.interactions.kernels import cache, fused
from crosscoder_lib.interactions.kernels.torch_sums import penalty_sums_torch

BACKENDS = ("auto", "c", "triton", "torch")
TRITON_MODULE = f"{__name__}.triton_sums"
ENV = "CROSSCODER_LIB_KERNEL"
_ALIASES = {"1": "auto", "0": "torch"}

_lock = threading.Lock()
_setting: str | None = None  # None: not chosen yet, read from the environment on first use
# (cache folder, $CC) -> (loaded library, its path) or the reason it is unavailable; reasons warned about.
_libraries: dict[tuple, tuple | str] = {}
_warned: set[str] = set()
_triton: object | str | None = None  # the loaded Triton module, or why it is unavailable; None: not tried


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
    gpu_backend: str = "torch"
    """What a float32 CUDA penalty uses: ``triton`` or ``torch``."""
    gpu_reason: str | None = None
    """Why the Triton kernel is not in use on a GPU, when it is not."""


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


def triton_kernel():
    """The Triton backend's module, imported on first use, or why it is unavailable (a string)."""
    global _triton
    with _lock:
        if _triton is None:
            try:
                # Lazily, by name: Triton is optional and slow to import (module docstring).
                _triton = importlib.import_module(TRITON_MODULE)
            except Exception as err:  # not installed, or an install that does not load
                _triton = f"Triton is unavailable ({type(err).__name__}: {err}); install it (`pip install triton`)"
        return _triton


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _warn_once(reason: str, fallback: str) -> None:
    if reason not in _warned:
        _warned.add(reason)
        warnings.warn(f"interaction penalty: {reason}; using the PyTorch path{fallback}", stacklevel=4)


def _triton_or_torch(setting: str, like: torch.Tensor) -> str:
    if like.device.type != "cuda" and not (like.device.type == "cpu" and _interpreting()):
        if setting == "triton":
            raise RuntimeError(f"the interaction penalty's backend is 'triton', which runs on CUDA tensors (or on CPU "
                               f"ones with TRITON_INTERPRET=1); these are on {like.device}. Use set_backend('auto')")
        return "torch"
    found = triton_kernel()
    if not isinstance(found, str):
        return "triton"
    if setting == "triton":
        raise RuntimeError(f"the interaction penalty's backend is 'triton' but {found}. Fix that, or use "
                           "set_backend('auto') or ('torch')")
    _warn_once(found, "")
    return "torch"


def penalty_backend(like: torch.Tensor) -> str:
    """The ONE place the penalty's backend is chosen: ``"c"``, ``"triton"`` or ``"torch"`` for a
    penalty on tensors like ``like`` (see the module docstring)."""
    setting = get_backend()
    if setting == "torch" or like.dtype != torch.float32:
        return "torch"
    if setting == "triton" or (setting == "auto" and like.device.type == "cuda"):
        return _triton_or_torch(setting, like)
    if like.device.type != "cpu":
        return "torch"
    found = _library()
    if isinstance(found, tuple):
        return "c"
    if setting == "c":
        raise RuntimeError(f"the interaction penalty's backend is 'c' but the fused C kernel is unavailable: "
                           f"{found}. Fix that, or use set_backend('auto') or ('torch')")
    _warn_once(f"fused C kernel unavailable ({found})", "")
    return "torch"


def penalty_library(like: torch.Tensor):
    """The loaded C kernel when :func:`penalty_backend` picks it for tensors like ``like``, else None."""
    return _library()[0] if penalty_backend(like) == "c" else None


def penalty_sums(vabs_BK, M_LHN, idx_BK, w_LN, want_grad: bool, chunk_tokens: int | None, grad_out=None):
    """``(total, share, ∂total/∂|val|, ∂total/∂M)`` on the backend :func:`penalty_backend` picks;
    ``∂/∂M`` lands in ``grad_out`` when given (a reused ``[L, H, N]`` buffer)."""
    backend = penalty_backend(M_LHN)
    if backend == "c":
        return fused.penalty_sums(_library()[0], vabs_BK, M_LHN, idx_BK, w_LN, want_grad, grad_out)
    if backend == "triton":
        return triton_kernel().penalty_sums(vabs_BK, M_LHN, idx_BK, w_LN, want_grad, grad_out)
    return penalty_sums_torch(vabs_BK, M_LHN, idx_BK, w_LN, want_grad, chunk_tokens, grad_out)


def _gpu_status(setting: str) -> tuple[str, str | None]:
    if setting in ("torch", "c"):
        return "torch", f"the backend is set to {setting!r}"
    found = triton_kernel()
    return ("torch", found) if isinstance(found, str) else ("triton", None)


def kernel_status() -> KernelStatus:
    """The backend setting, what a float32 CPU penalty uses now, the library's path or why there is none
    (under ``auto`` and ``c`` this builds the kernel if it is not built yet), and what a float32 CUDA
    penalty would use (this imports Triton unless the setting rules it out)."""
    setting, threads = get_backend(), torch.get_num_threads()
    gpu = _gpu_status(setting)
    if setting in ("torch", "triton"):
        return KernelStatus(setting, "torch", None, f"the backend is set to {setting!r}", threads, *gpu)
    found = _library()
    if isinstance(found, str):
        return KernelStatus(setting, "torch", None, found, threads, *gpu)
    return KernelStatus(setting, "c", found[1], None, threads, *gpu)


def build(force: bool = False) -> Path:
    """Compile (or verify) and load the kernel now; its path. Raises with the compiler's or loader's
    message on failure. ``force`` rebuilds even a library that passes its checks."""
    with _lock:
        try:
            return _load_into_state(force)[1]
        except Exception as err:
            _libraries[_where()] = str(err)
            raise
