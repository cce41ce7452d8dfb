"""Round-robin timing shared by the benchmark scripts (run them as ``python benchmarks/<name>.py``,
which puts this folder on the import path)."""

from __future__ import annotations

import statistics
import time


def timed(fns: dict, repeats: int, warmup: int = 2) -> dict:
    """Median seconds of each ``fn()`` in ``fns``, run round-robin (A B C A B C ...) so that load
    from other processes on a shared machine hits every candidate alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(ts) for name, ts in times.items()}
