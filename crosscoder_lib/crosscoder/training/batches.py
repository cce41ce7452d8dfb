"""The stream of training batches: exactly ``batch_size`` positions each, checked, on the device.

A source is a tensor ``[T, X, D]`` (shuffled per epoch with the config's seed) or an iterable of
batches ``[B, X, D]`` of any sizes (a list, an ActivationBuffer), re-batched and passed over again
when it ends. The same source gives the same batches every time, which is what lets a resumed run
replay the stream up to its checkpoint.

Checks: every source batch must be ``[B, X, D]`` with the crosscoder's ``X`` and ``D`` (a wrong
one raises ``ValueError`` naming the batch and the shape wanted, before any raw ``torch.cat``
error), and floating point. Activations of another float dtype are cast to the crosscoder's
(float32) batch by batch, on the device: a float16 buffer saves memory, float64 adds no precision
to a float32 model; float32 activations pass unchanged.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator

import torch

from crosscoder_lib.crosscoder.distributed import SingleProcess


def _tensor_batches(acts_TXD: torch.Tensor, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    if len(acts_TXD) < batch_size:
        raise ValueError(f"the activation tensor holds {len(acts_TXD)} positions, fewer than one "
                         f"batch of {batch_size}; pass more activations or a smaller batch_size")
    for epoch in itertools.count():
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        perm = torch.randperm(len(acts_TXD), generator=g)
        for i in range(0, len(perm) - batch_size + 1, batch_size):
            yield acts_TXD[perm[i:i + batch_size]]


def _check_batch(acts: torch.Tensor, shape_XD: tuple[int, int] | None, where: str) -> None:
    if not isinstance(acts, torch.Tensor) or acts.ndim != 3 or (
            shape_XD is not None and tuple(acts.shape[1:]) != tuple(shape_XD)):
        want = "[B, X, D]" if shape_XD is None else f"[B, {shape_XD[0]}, {shape_XD[1]}]"
        got = tuple(acts.shape) if isinstance(acts, torch.Tensor) else type(acts).__name__
        raise ValueError(f"{where} is {got}, but training needs activations {want} (positions, the "
                         "crosscoder's hookpoint slots, d_model)")
    if not acts.is_floating_point():
        raise ValueError(f"{where} has dtype {acts.dtype}; activations must be floating point")


def _rebatched(source: Iterable[torch.Tensor], batch_size: int,
               shape_XD: tuple[int, int] | None) -> Iterator[torch.Tensor]:
    """Exactly ``batch_size`` positions per batch from a source of any batch sizes; passes over a
    re-iterable source again when it ends."""
    pending: list[torch.Tensor] = []
    n_pending = 0
    for epoch in itertools.count():
        got = 0
        for i, acts in enumerate(source):
            _check_batch(acts, shape_XD, f"batch {i} of the source (pass {epoch + 1})")
            got += len(acts)
            pending.append(acts)
            n_pending += len(acts)
            while n_pending >= batch_size:
                cat = torch.cat(pending) if len(pending) > 1 else pending[0]
                yield cat[:batch_size]
                pending, n_pending = [cat[batch_size:]], n_pending - batch_size
        if got == 0:
            raise ValueError("the activation source is empty" + (
                "" if epoch == 0 else f" on pass {epoch + 1}: it is a one-shot iterator that ran out; "
                "pass a re-iterable source (a list, a tensor, an ActivationBuffer over a list or "
                "callable of token batches) or fewer n_steps"))


def batch_stream(source, batch_size: int, seed: int,
                 shape_XD: tuple[int, int] | None = None) -> Iterator[torch.Tensor]:
    """The training batches of ``source`` (module docstring); ``shape_XD``: the crosscoder's
    ``(X, D)``, checked on every batch."""
    if isinstance(source, torch.Tensor):
        _check_batch(source, shape_XD, "the activation tensor")
        return _tensor_batches(source, batch_size, seed)
    return _rebatched(source, batch_size, shape_XD)


def on_device(batches: Iterator[torch.Tensor], parallel: SingleProcess, device: torch.device,
              dtype: torch.dtype) -> Iterator[torch.Tensor]:
    """This rank's shard of every global batch, on ``device`` in ``dtype``."""
    for acts in batches:
        yield parallel.shard(acts).to(device=device, dtype=dtype)
