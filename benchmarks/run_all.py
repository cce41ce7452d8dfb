"""Every benchmark, one after the other, saved; then the README's performance section (the idle-machine run).

    python benchmarks/peers/install.py         # once, for bench_peers
    python benchmarks/run_all.py [--threads N] [--only bench_crosscoder,...] [--quick]

Each script runs in its own process with ``--save`` (``benchmarks/results/<name>.json``), one at a
time (never two at once: they would time each other), and ``report.py`` then writes the section
between the README's markers. Run it on an idle machine: every results file records the load
average it started under. ``--quick`` runs the smoke sizes instead, saving nothing and leaving the
README alone, to check that everything runs.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = {"bench_crosscoder": HERE / "bench_crosscoder.py", "bench_interactions": HERE / "bench_interactions.py",
           "bench_precision": HERE / "bench_precision.py", "bench_real_model": HERE / "bench_real_model.py",
           "bench_peers": HERE / "peers" / "bench_peers.py"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--only", default=",".join(SCRIPTS), help="comma-separated, of: " + ", ".join(SCRIPTS))
    ap.add_argument("--quick", action="store_true", help="smoke sizes; the README is left alone")
    args = ap.parse_args(argv)
    names = args.only.split(",")
    unknown = sorted(set(names) - set(SCRIPTS))
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(SCRIPTS)}")
    extra = (["--threads", str(args.threads)] if args.threads else []) + (["--quick"] if args.quick else ["--save"])
    failed = []
    for name in names:
        print(f"\n=== {name} ===", flush=True)
        if subprocess.call([sys.executable, str(SCRIPTS[name]), *extra]) != 0:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)} (their output above); the README is left alone", file=sys.stderr)
        return 1
    if not args.quick:
        return subprocess.call([sys.executable, str(HERE / "report.py")])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
