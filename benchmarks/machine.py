"""The machine a benchmark runs on, measured in the same run, and where its results are kept.

Every benchmark script saves ``benchmarks/results/<name>.json`` (``--save``) holding:

- ``machine``: CPU model, logical cores, the threads PyTorch uses, torch and Python versions, the
  load average when the run started, and the plain GEMM rate measured in this very run (fp32 and
  bf16, 2048³; bf16 smaller where it is too slow to time at that size, ``gemm_bf16_n``): timings
  from another run, or another load, would not be comparable;
- ``figures``: the headline numbers, each with its target (:func:`figure`), which
  ``benchmarks/report.py`` turns into the README's performance section;
- whatever raw numbers the script measured besides.

Results are taken on an idle machine only: ``load_average_at_start`` says how idle it was.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or the platform's best guess."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The vector and matrix extensions that decide GEMM speed (AVX2, AVX-512, AMX, bf16)."""
    try:
        flags = next(ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")).split()
    except (OSError, StopIteration):
        return []
    keep = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    return [f for f in keep if f in flags]


def gemm_gflops(dtype: torch.dtype = torch.float32, n: int = 2048, repeats: int = 5, device: str = "cpu") -> float:
    """Median GFLOP/s of an ``n × n × n`` matrix product in ``dtype`` (one warm-up first)."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    times = []
    for i in range(repeats + 1):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        a @ b
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - t)
    return 2 * n ** 3 / statistics.median(times) / 1e9


def copy_gbs(mib: int = 256, repeats: int = 5) -> float:
    """Median memory bandwidth of one large tensor copy, GB/s of bytes read plus written: the rate
    that bounds the memory-bound parts of a step (the sparse decoder's gathers and scatters)."""
    src = torch.ones(mib << 18)
    dst = torch.empty_like(src)
    times = []
    for i in range(repeats + 1):
        t = time.perf_counter()
        dst.copy_(src)
        if i:
            times.append(time.perf_counter() - t)
    return 2 * src.numel() * 4 / statistics.median(times) / 1e9


def gemm_size_within(dtype: torch.dtype, n: int, budget_s: float = 10.0, device: str = "cpu") -> int:
    """The largest power-of-two GEMM size up to ``n`` whose measurement (warm-up and 5 repeats) fits
    in about ``budget_s``, judged from one 256³ product. A CPU without bf16 hardware multiplies bf16
    at under 1 GFLOP/s, so the 2048³ measurement alone took 6 minutes of every script."""
    a = torch.randn(256, 256, device=device).to(dtype)
    t = time.perf_counter()
    a @ a
    rate = 2 * 256 ** 3 / max(time.perf_counter() - t, 1e-9)
    while n > 256 and 6 * 2 * n ** 3 / rate > budget_s:
        n //= 2
    return n


def describe(device: str = "cpu", gemm_n: int = 2048) -> dict:
    """This machine, with its GEMM rate measured now (module docstring); ``gemm_n``: the GEMM's size
    (the ``--quick`` smoke runs take a small one, whose rate is below the machine's)."""
    info = {
        "cpu_model": cpu_model(), "cpu_flags": cpu_flags(), "logical_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
        "load_average_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "gemm_n": gemm_n,
        "gemm_fp32_gflops": gemm_gflops(torch.float32, gemm_n),
    }
    info["copy_gbs"] = copy_gbs(256 if gemm_n >= 1024 else 16)
    bf16_n = gemm_size_within(torch.bfloat16, gemm_n)
    info |= {"gemm_bf16_n": bf16_n, "gemm_bf16_gflops": gemm_gflops(torch.bfloat16, bf16_n)}
    if device.startswith("cuda") and torch.cuda.is_available():
        info |= {"gpu": torch.cuda.get_device_name(), "gpu_gemm_fp32_gflops": gemm_gflops(device=device),
                 "gpu_gemm_bf16_gflops": gemm_gflops(torch.bfloat16, 8192, device=device)}
    return info


def begin(args, sizes_by_mode: dict[str, dict]) -> tuple[dict, dict]:
    """A script's start: ``--threads``, its sizes (``"quick"`` under ``--quick``, else ``"full"``), and the
    machine described and printed with the GEMM rate measured now. Returns ``(sizes, machine)``."""
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = sizes_by_mode["quick" if args.quick else "full"]
    machine = describe(gemm_n=sizes["gemm_n"])
    repeats = f"; medians of {sizes['repeats']} round-robin runs" if "repeats" in sizes else ""
    print(f"{machine_line(machine)}{repeats}\n")
    return sizes, machine


def machine_line(info: dict) -> str:
    """One line naming the machine and its measured GEMM rate."""
    return (f"{info['cpu_model']} ({', '.join(info.get('cpu_flags', [])) or 'no flags read'}), "
            f"{info['torch_threads']} threads of {info['logical_cores']}, torch {info['torch']}; "
            f"GEMM {info['gemm_fp32_gflops']:.0f} GFLOP/s fp32, {info['gemm_bf16_gflops']:.{_digits(info['gemm_bf16_gflops'])}f} "
            f"bf16 ({_sizes(info)}, measured in this run); load average "
            f"{info['load_average_at_start']:.1f} at start")


def _digits(gflops: float) -> int:
    return 0 if gflops >= 10 else 2  # a bf16 rate under 1 GFLOP/s would print as 0


def _sizes(info: dict) -> str:
    n, n_bf16 = info.get("gemm_n", 2048), info.get("gemm_bf16_n", info.get("gemm_n", 2048))
    return f"{n}³" if n == n_bf16 else f"{n}³ fp32, {n_bf16}³ bf16"


def figure(name: str, value: float | None, target: str | None = None, *, unit: str = "x",
           better: str | None = None, bound: float | None = None, note: str = "") -> dict:
    """A headline number: ``better`` is ``"higher"`` or ``"lower"`` than ``bound`` (the target),
    ``value`` None when it could not be measured here (``note`` says why)."""
    ok = None
    if value is not None and bound is not None and better is not None:
        ok = value >= bound if better == "higher" else value <= bound
    return {"name": name, "value": value, "unit": unit, "target": target, "ok": ok, "note": note}


def save(name: str, machine: dict, figures: list[dict], raw: dict, path: Path | None = None, *,
         quick: bool = False) -> Path:
    """Write ``benchmarks/results/<name>.json`` (or ``path``) with the machine, figures and raw numbers;
    ``quick``: a ``--quick`` smoke run (tiny sizes), which goes to ``<name>.quick.json`` (it never
    overwrites a measurement) and which ``report.py`` refuses to quote."""
    path = Path(path) if path is not None else RESULTS / f"{name}{'.quick' if quick else ''}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"benchmark": name, "quick": quick, "machine": machine, "figures": figures, "raw": raw}
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def print_figures(figures: list[dict]) -> None:
    """The figures side by side, each with its target and whether it is met."""
    print("\nfigure | value | target | met")
    for f in figures:
        value = "not measured" if f["value"] is None else f"{f['value']:.3g}{f['unit']}"
        met = {True: "yes", False: "NO", None: "-"}[f["ok"]]
        print(f"{f['name']} | {value} | {f['target'] or '-'} | {met}" + (f" ({f['note']})" if f["note"] else ""))


def finish(name: str, machine: dict, figures: list[dict], raw: dict, args) -> list[dict]:
    """The end of every script: the figures side by side, saved when ``args.save`` (marked quick when
    ``args.quick``); returns them."""
    print_figures(figures)
    if args.save:
        print(f"\nwrote {save(name, machine, figures, raw, quick=args.quick)}")
    return figures
