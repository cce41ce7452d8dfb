"""Memory reused from one training step to the next instead of mapped afresh.

glibc maps every block above its mmap threshold (at most 32 MiB) when it is allocated and unmaps
it when it is freed, so each new tensor of that size costs a page fault and the kernel's zeroing of
every 4 KiB page on first touch. At the paper's geometry a gradient of ``W_enc`` or ``W_dec`` is
80 MB and each ``G`` product 75 MB: mapped anew every step, they were a third of an unpenalised
step. Two kinds of reuse, both invisible to a caller:

- :class:`GradientBuffers`: the backward of each product with a big weight (the encoder, both
  decoders, the penalty's decoder rows: :mod:`crosscoder_lib.crosscoder.products`) writes that
  weight's gradient into a buffer it takes (:meth:`~GradientBuffers.take`), and the trainer hands the
  ``.grad`` back (:meth:`~GradientBuffers.recycle`, in place of ``zero_grad(set_to_none=True)``).
  A weight used by several products (``W_dec``: the reconstruction, AuxK, the penalty) gets one
  contribution per product; autograd adds them into the first that arrives and keeps that one as
  ``.grad``. So the first buffer taken in a backward is one the pool lets go of (autograd moves it
  into ``.grad``, as it does a fresh tensor); inside the trainer's own backward
  (:meth:`~GradientBuffers.backward`) every later one is a buffer the pool keeps, which autograd
  only reads. Outside it every buffer is let go of, so a caller's ``torch.autograd.grad`` can
  never be handed a buffer that is written again later. A gradient that anything else still
  references is not recycled; a VIEW of a gradient kept past the next step sees that step's
  gradient (as under ``zero_grad(set_to_none=False)``), because asking whether one exists would
  stop autograd from adding into the buffer in place (see :func:`unshared`);
- :class:`Workspace`: named work tensors an object keeps between calls, handed out again only when
  nothing but the workspace references them (else a fresh one replaces them).

Why not an allocator setting: glibc's ``M_MMAP_MAX=0`` (serve every block from the heap) leaks
here, because glibc 2.36's ``posix_memalign``, which PyTorch allocates with, cannot reuse a freed
block of the same size and takes new memory each time; PyTorch's ``THP_MEM_ALLOC_ENABLE`` (huge
pages) is read once, at the process's first large allocation, so a library cannot set it reliably.
The values computed are the same either way: only where they are written changes (autograd adds
the same pairs in the same order, up to the order of the two terms of one addition, which IEEE
addition ignores). The cost: the kept buffers (at most one per extra product of a weight, 80 MB
each at the paper's geometry) stay allocated between steps.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

import torch

_storage_use_count = getattr(torch._C, "_storage_Use_Count", None)


def _references(t: torch.Tensor) -> int:
    return sys.getrefcount(t)


def _call_overhead() -> int:
    t = torch.empty(0)
    return _references(t) - 1  # the local t is its one holder


_CALL_REFS = _call_overhead()  # references a call to _references adds (its argument, getrefcount's)


def unreferenced(t: torch.Tensor, holders: int) -> bool:
    """Whether ``t`` is referenced only by the caller's ``holders`` Python references (+ 1: this
    function's argument) and its tensor by nothing in C++ but its Python object."""
    return _references(t) <= holders + 1 + _CALL_REFS and t._use_count() == 1


def unshared(t: torch.Tensor, holders: int) -> bool:
    """:func:`unreferenced`, and no view of ``t`` alive (its storage referenced by ``t`` alone).
    False when PyTorch cannot say.

    Asking for the storage's count gives the storage a Python object that lives as long as it does,
    and autograd adds into a gradient in place only when its storage has no other reference: so
    gradients are checked with :func:`unreferenced` only, never this."""
    if _storage_use_count is None or not unreferenced(t, holders + 1):
        return False
    # <= 2: the storage's count includes its Python object, asked for here.
    return _storage_use_count(t.untyped_storage()._cdata) <= 2


class GradientBuffers:
    """Reusable gradient buffers, per parameter (module docstring)."""

    def __init__(self) -> None:
        self._free: dict[int, torch.Tensor] = {}  # a recycled .grad, referenced by nothing else
        self._kept: dict[int, list[torch.Tensor]] = {}  # buffers for contributions after the first
        self._taken: dict[int, int] = {}  # buffers taken per parameter in the current backward
        self._known: set[int] = set()  # parameters whose gradients a product writes
        self._in_backward = False

    # Keyed by the parameters' ids: a copy or an unpickled object starts empty (its parameters are new).
    def __deepcopy__(self, memo) -> GradientBuffers:
        return GradientBuffers()

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__init__()

    def take(self, param: torch.Tensor) -> torch.Tensor:
        """A contiguous tensor shaped like ``param`` to write a gradient of it into (content garbage)."""
        key = id(param)
        self._known.add(key)
        n = self._taken.get(key, 0)
        self._taken[key] = n + 1
        if n == 0 or not self._in_backward:
            buf = self._free.pop(key, None)
            return buf if buf is not None and _like(buf, param) else _empty_like(param)
        kept = self._kept.setdefault(key, [])
        if len(kept) < n or not _like(kept[n - 1], param):
            kept[n - 1:] = [_empty_like(param)]
        return kept[n - 1]

    @contextmanager
    def backward(self) -> Iterator[None]:
        """The trainer's own backward: buffers after a parameter's first are kept for the next step."""
        self._in_backward, self._taken = True, {}
        try:
            yield
        finally:
            self._in_backward, self._taken = False, {}

    def recycle(self, params) -> None:
        """Set every parameter's ``.grad`` to None, keeping those a later :meth:`take` can reuse."""
        for p in params:
            g = p.grad
            p.grad = None
            if g is not None and id(p) in self._known and _like(g, p) and unreferenced(g, holders=1):
                self._free[id(p)] = g


def _like(t: torch.Tensor, param: torch.Tensor) -> bool:
    return t.shape == param.shape and t.dtype == param.dtype and t.device == param.device and t.is_contiguous()


def _empty_like(param: torch.Tensor) -> torch.Tensor:
    return torch.empty(param.shape, dtype=param.dtype, device=param.device)


class Workspace:
    """Named tensors kept between calls and handed out again when nothing else holds them."""

    def __init__(self) -> None:
        self._tensors: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape, dtype: torch.dtype, device) -> torch.Tensor:
        """A tensor of that shape, dtype and device (content garbage), the last one when unshared."""
        shape, device = tuple(shape), torch.device(device)
        t = self._tensors.get(name)
        if (t is None or tuple(t.shape) != shape or t.dtype != dtype or t.device != device
                or not unshared(t, holders=2)):  # the dict's entry and the local t
            t = torch.empty(shape, dtype=dtype, device=device)
            self._tensors[name] = t
        return t
