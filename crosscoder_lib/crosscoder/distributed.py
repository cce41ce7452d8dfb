"""Data-parallel training over ``torch.distributed`` (``torchrun``), and its single-process twin.

The same run-config file trains on one process (``crosscoder train run.json``) or on several
(``torchrun --nproc_per_node 4 -m crosscoder_lib.cli train run.json``); with the same global batch
and seed both give the same crosscoder up to float round-off (``tests/test_distributed.py``). How:

- **One global batch, split.** ``TrainConfig.batch_size`` is the *global* batch ``B``; it must be
  divisible by the world size ``W``. Every rank draws the same global batch stream (same seed, same
  buffer) and keeps the contiguous shard ``[r·B/W, (r+1)·B/W)`` (:meth:`DataParallel.shard`).
- **Every batch-level quantity is over the global batch.** BatchTopK keeps the ``k·B`` largest
  pre-activations of the *global* batch: each rank sends its own ``k·B`` largest (the global top
  ``k·B`` are among their union), every rank finds the same threshold ``τ`` (the ``k·B``-th largest
  of the union) and keeps its pre-activations ``≥ τ`` (:class:`ShardedBatchTopK`; ties at ``τ``,
  which have probability zero for continuous pre-activations, would all be kept). Its inference
  threshold is updated from the same global values. AuxK's normaliser (the residual's variance over
  the batch), the FVU's variance, the dead-feature tracker, the non-finite checks and the stop
  flag of an interrupt are reduced over all ranks. Per-token means (reconstruction, AuxK numerator, penalty, sparsity) are taken over
  the shard; with equal shards their average over ranks is the global mean, so averaging gradients
  (all-reduce, then ``/W``) gives the gradient of the global loss. Clipping then sees the global
  gradient norm, and Adam makes the same update on every rank.
- **Harvesting is sharded, its result shared.** Each rank harvests a contiguous block of the rows of
  each token batch and the blocks are all-gathered (:meth:`DataParallel.sharded_harvester`), so every
  rank's buffer holds what one process would have harvested: the model's forward work is split
  ``W`` ways, at the cost of each rank holding the whole buffer and receiving every harvested
  activation (``X·D`` floats per position, e.g. 52 KB at the paper's geometry).
- **Only rank 0 writes** checkpoints, the final model, results files, the progress bar and W&B.
  Every rank reads a checkpoint to resume (one machine, or a shared file system).

Single process or not is decided in one place, :func:`data_parallel`: it returns a
:class:`DataParallel` when a process group of more than one rank is initialised (``torchrun`` plus
:func:`init_from_env`, which the command line calls), and :data:`SINGLE` otherwise, whose methods
are the identities that leave the one-process arithmetic exactly as it is.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist

from crosscoder_lib.crosscoder.activations import (
    Activation,
    BatchTopK,
    SparseCodes,
    dense_to_codes,
)

TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


class SingleProcess:
    """The one-process case: every method is the identity (or a no-op)."""

    rank = 0
    world_size = 1
    is_main = True

    def check_batch_size(self, batch_size: int) -> None:
        pass

    def shard(self, x_B: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a global batch."""
        return x_B

    def batch_mean(self, t_B: torch.Tensor) -> torch.Tensor:
        """Mean over the global batch (axis 0)."""
        return t_B.mean(0)

    def batch_var(self, t_B: torch.Tensor) -> torch.Tensor:
        """Biased variance over the global batch (axis 0)."""
        return t_B.var(0, unbiased=False)

    def sum_over_ranks(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def any_rank(self, flag: bool) -> bool:
        """Whether ``flag`` is true on some rank (so every rank takes the same branch)."""
        return flag

    def mean_over_ranks(self, out):
        """``out`` (a NamedTuple) with its scalar tensor fields averaged over ranks."""
        return out

    def average_gradients(self, params) -> None:
        pass

    def fired_codes(self, codes: SparseCodes, n_features: int) -> SparseCodes:
        """Codes whose firing features are those that fired anywhere in the global batch."""
        return codes

    def activation(self, act: Activation) -> Activation:
        """The activation module to train with (BatchTopK must select over the global batch)."""
        return act

    def sharded_harvester(self, harvest_fn: Callable[[torch.Tensor], torch.Tensor]):
        """A harvester ``tokens_BS -> acts_BXD`` whose forward work is split across ranks."""
        return harvest_fn

    def private_dir(self, path):
        """A folder this rank may write without racing the others."""
        return path

    def barrier(self) -> None:
        """Wait until every rank gets here."""


SINGLE = SingleProcess()


class DataParallel(SingleProcess):
    """The data-parallel case: ``world_size`` ranks share each global batch (module docstring)."""

    def __init__(self, group=None):
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        self.is_main = self.rank == 0
        # NCCL only moves CUDA tensors; gloo moves CPU ones.
        nccl = dist.get_backend(group) == "nccl"
        self.device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")

    def check_batch_size(self, batch_size: int) -> None:
        if batch_size % self.world_size:
            raise ValueError(f"train.batch_size={batch_size} (the global batch) is not divisible by the "
                             f"{self.world_size} processes; use a multiple of {self.world_size}")

    def shard(self, x_B: torch.Tensor) -> torch.Tensor:
        self.check_batch_size(x_B.shape[0])
        n = x_B.shape[0] // self.world_size
        return x_B[self.rank * n:(self.rank + 1) * n]

    def _all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        out = t.detach().to(self.device, copy=True)
        dist.all_reduce(out, group=self.group)
        return out.to(t.device)

    def _all_gather(self, t: torch.Tensor) -> list[torch.Tensor]:
        t = t.detach().to(self.device).contiguous()
        parts = [torch.empty_like(t) for _ in range(self.world_size)]
        dist.all_gather(parts, t, group=self.group)
        return parts

    def batch_mean(self, t_B: torch.Tensor) -> torch.Tensor:
        # No gradient flows through the reduction: the trainer only uses it on detached tensors.
        return self._all_reduce_sum(t_B.sum(0)) / (t_B.shape[0] * self.world_size)

    def batch_var(self, t_B: torch.Tensor) -> torch.Tensor:
        return self.batch_mean((t_B - self.batch_mean(t_B)).pow(2))

    def sum_over_ranks(self, t: torch.Tensor) -> torch.Tensor:
        return self._all_reduce_sum(t)

    def any_rank(self, flag: bool) -> bool:
        return bool(self._all_reduce_sum(torch.tensor([int(flag)])) > 0)

    def mean_over_ranks(self, out):
        names = [n for n, v in out._asdict().items() if isinstance(v, torch.Tensor) and v.ndim == 0]
        flat = torch.stack([getattr(out, n).detach().float().to(self.device) for n in names])
        flat = self._all_reduce_sum(flat) / self.world_size
        return out._replace(**{n: v.to(getattr(out, n).device) for n, v in zip(names, flat.unbind())})

    def average_gradients(self, params) -> None:
        # One flat buffer, one all-reduce: the crosscoder has a handful of large parameters.
        params = [p for p in params if p.requires_grad]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.flatten() for p in params])
        flat = self._all_reduce_sum(flat).div_(self.world_size)
        for p, g in zip(params, flat.split([p.numel() for p in params])):
            p.grad.copy_(g.view_as(p))

    def fired_codes(self, codes: SparseCodes, n_features: int) -> SparseCodes:
        fired_H = torch.zeros(n_features, dtype=torch.int32, device=codes.idx_BK.device)
        fired_H[codes.idx_BK[codes.val_BK > 0]] = 1
        fired_H = self._all_reduce_sum(fired_H) > 0
        idx = fired_H.nonzero().flatten()[None]
        return SparseCodes(idx, torch.ones(idx.shape, dtype=codes.val_BK.dtype, device=idx.device))

    def activation(self, act: Activation) -> Activation:
        return ShardedBatchTopK(act, self) if type(act) is BatchTopK else act

    def sharded_harvester(self, harvest_fn: Callable[[torch.Tensor], torch.Tensor]):
        def harvest_rows(tokens_BS: torch.Tensor) -> torch.Tensor:
            n = tokens_BS.shape[0]
            per = -(-n // self.world_size)
            pad = per * self.world_size - n
            if pad:  # all-gather wants equal blocks: pad with copies of row 0, dropped below
                tokens_BS = torch.cat([tokens_BS, tokens_BS[:1].expand(pad, -1)])
            mine_BXD = harvest_fn(tokens_BS[self.rank * per:(self.rank + 1) * per])
            positions_per_row = mine_BXD.shape[0] // per
            out_BXD = torch.cat(self._all_gather(mine_BXD)).to(mine_BXD.device)
            return out_BXD[:n * positions_per_row]
        return harvest_rows

    def private_dir(self, path):
        return None if path is None else Path(path) / f"rank_{self.rank}"

    def barrier(self) -> None:
        dist.barrier(group=self.group)


class ShardedBatchTopK(BatchTopK):
    """BatchTopK whose training-time selection keeps the ``k·B`` largest pre-activations of the
    global batch spread over the ranks (module docstring). It shares the wrapped module's buffers
    (``threshold``, ``n_threshold_updates``), so state dicts and checkpoints are unchanged."""

    def __init__(self, local: BatchTopK, parallel: DataParallel):
        super().__init__(local.k, local.inference, local.beta)
        self.threshold = local.threshold
        self.n_threshold_updates = local.n_threshold_updates
        self.parallel = parallel

    def forward(self, pre_BH: torch.Tensor) -> SparseCodes:
        if not self.training:
            return super().forward(pre_BH)
        relu_BH = pre_BH.relu()
        n_keep = self.k * pre_BH.shape[0] * self.parallel.world_size
        local_top = relu_BH.detach().flatten().topk(min(n_keep, relu_BH.numel()), sorted=False).values
        union = torch.cat(self.parallel._all_gather(local_top)).to(pre_BH.device)
        kept_vals = union.topk(min(n_keep, union.numel()), sorted=False).values
        tau = kept_vals.min()
        # τ = 0 means fewer than k·B positive values exist: all of them are kept, zeros add nothing.
        a_BH = relu_BH * (relu_BH >= tau)
        if torch.is_grad_enabled():
            self._stage_threshold(kept_vals)
        return dense_to_codes(a_BH)


def data_parallel() -> SingleProcess:
    """:class:`DataParallel` over the default process group when one of more than one rank is
    initialised, else :data:`SINGLE`. The one place where the training path is chosen."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return DataParallel()
    return SINGLE


def launched_by_torchrun() -> bool:
    """Whether the ``torchrun`` environment variables are set."""
    return all(v in os.environ for v in TORCHRUN_ENV)


def init_from_env(device: str = "cpu") -> SingleProcess:
    """Initialise the default process group from ``torchrun``'s environment (no-op without it).

    Backend: NCCL when ``device`` is CUDA (each rank then uses ``cuda:LOCAL_RANK``: write
    ``"cuda"`` without an index in the config), gloo otherwise. Returns :func:`data_parallel`.
    """
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) < 2 or dist.is_initialized():
        return data_parallel()
    dev = torch.device(device)
    if dev.type == "cuda":
        if dev.index is not None:
            raise ValueError(f"train.device={device!r} pins every torchrun process to one GPU; write "
                             f"'cuda' (each process uses cuda:LOCAL_RANK)")
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        dist.init_process_group("nccl", device_id=torch.device("cuda", int(os.environ["LOCAL_RANK"])))
    else:
        dist.init_process_group("gloo")
    return data_parallel()


def teardown(wait: bool = True) -> None:
    """Wait for every rank (unless ``wait=False``, after an error), then destroy the default
    process group (no-op when there is none)."""
    if dist.is_available() and dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()
