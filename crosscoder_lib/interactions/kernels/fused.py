"""Calling the fused C kernel (``penalty.c``) on PyTorch tensors, in parallel threads.

ctypes releases the GIL during a call, so the penalty's max term runs over column ranges of the
neurons and its ``G``-sized passes over row ranges of the features in one thread pool, sized by
``torch.get_num_threads()`` (:class:`ThreadPool`: when that count changes, the executor it replaces
is shut down, so no idle threads pile up).
"""

from __future__ import annotations

import ctypes
import threading
from concurrent.futures import ThreadPoolExecutor

import torch


class ThreadPool:
    """One executor for the kernel's calls, replaced (and the old one shut down) when its size changes."""

    def __init__(self, name: str = "crosscoder_penalty") -> None:
        self.name = name
        self._executor: ThreadPoolExecutor | None = None
        self._size = 0
        self._lock = threading.Lock()

    def get(self, n: int) -> ThreadPoolExecutor:
        with self._lock:
            if n != self._size or self._executor is None:
                old = self._executor
                self._executor = ThreadPoolExecutor(max_workers=n, thread_name_prefix=self.name)
                self._size = n
                if old is not None:
                    old.shutdown(wait=False)  # its threads finish any job in flight, then exit
            return self._executor


POOL = ThreadPool()


def _ranges(n: int, parts: int) -> list[tuple[int, int]]:
    bounds = [round(n * i / parts) for i in range(parts + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(parts) if bounds[i + 1] > bounds[i]]


def penalty_sums(so, vabs_BK, G_LHN, idx_BK, w_LN, want_grad, grad_out=None):
    """``(total, share, ∂total/∂|val|, ∂total/∂G)`` through the fused C kernel ``so`` (float32 CPU
    tensors): the max term over column ranges, the G-sized passes over row ranges, in parallel.
    ``∂/∂G`` is written into ``grad_out`` when given (every element: its content may be garbage)."""
    L, H, N = G_LHN.shape
    B, K = idx_BK.shape
    G, idx, vabs = G_LHN.detach().contiguous(), idx_BK.contiguous(), vabs_BK.detach().contiguous()
    w = w_LN.contiguous() if w_LN is not None else None
    count = (vabs != 0).sum(1).contiguous()
    threads = max(1, torch.get_num_threads())
    pool = POOL.get(threads)
    wp = (lambda l: w[l].data_ptr()) if w is not None else (lambda l: None)

    def run_all(calls) -> list:
        return [job.result() for job in [pool.submit(*c) for c in calls]]

    grad_vabs = grad_G = None
    if want_grad:
        # Sum term: ∂/∂|val| = Σ_l r_l[idx] with r_l[h] = Σ_n w_n |G_l[h, n]|, and ∂/∂G its c ⊗ w
        # times sign(G), both from one pass over G; the max term then subtracts its part from grad_G.
        c_H = torch.zeros(H, dtype=torch.float32).index_add_(0, idx.reshape(-1), vabs.reshape(-1))
        r_LH = torch.empty(L, H, dtype=torch.float32)
        grad_G = torch.empty(L, H, N, dtype=torch.float32) if grad_out is None else grad_out
        run_all([(so.row_sums_and_grad, G[l].data_ptr(), N, wp(l), c_H.data_ptr(), h0, h1, r_LH[l].data_ptr(),
                  grad_G[l].data_ptr()) for l in range(L) for h0, h1 in _ranges(H, threads)])
        grad_vabs = r_LH[:, idx].sum(0)
    cols = _ranges(N, threads)
    partial = torch.zeros(L, len(cols), B, K, dtype=torch.float32) if want_grad else None
    outs = [(ctypes.c_double * 2)(0.0, 0.0) for _ in range(L * len(cols))]
    status = run_all([(so.penalty_columns, G[l].data_ptr(), N, idx.data_ptr(), vabs.data_ptr(), count.data_ptr(), B, K,
                       wp(l), n0, n1, outs[l * len(cols) + i],
                       partial[l, i].data_ptr() if want_grad else None, grad_G[l].data_ptr() if want_grad else None)
                      for l in range(L) for i, (n0, n1) in enumerate(cols)])
    if any(status):
        raise MemoryError("interaction penalty kernel: out of memory")
    if want_grad:
        grad_vabs += partial.sum((0, 1))
    return sum(o[0] for o in outs), sum(o[1] for o in outs), grad_vabs, grad_G
