"""Our training step against SAELens, sparsify and dictionary_learning, side by side in one run (issue 17).

    python benchmarks/peers/install.py                  # once: the peers' own venv
    python benchmarks/peers/bench_peers.py [--threads N] [--rounds 3] [--quick] [--save]

At one geometry for all (a single hookpoint: D = 768, H = 16·768 = 12,288, k = 32, batch 4096;
random float32 activations, CPU), each framework's training step runs in its own process
(``run_one.py``: ours with this interpreter, the peers with ``benchmarks/peers/.venv``'s), the
frameworks taking turns round-robin (A B C … A B C …) so that load from other processes hits each
alike. Each process does a few warm-up steps, then times its steps; the medians over all rounds
give tokens/s. Printed for each: tokens/s, ms/step, the peak resident set and what one step
includes (the frameworks differ: see ``run_one.STEPS``), then ours over the fastest peer
(target >= 1.0). A peer that is not installed is reported as such, not timed. ``--save`` writes
``benchmarks/results/bench_peers.json``; ``--quick`` is a smoke run (tiny sizes, one step).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # machine.py, beside the other benchmark scripts

import torch  # noqa: E402
from install import venv_python  # noqa: E402
from machine import describe, figure, finish, machine_line  # noqa: E402
from run_one import STEPS  # noqa: E402

FRAMEWORKS = list(STEPS)
SIZES = {"full": {"d-in": 768, "n-latents": 16 * 768, "k": 32, "batch": 4096, "steps": 5, "warmup": 2},
         "quick": {"d-in": 32, "n-latents": 16 * 32, "k": 4, "batch": 64, "steps": 1, "warmup": 1}}
NOT_INSTALLED = "not installed: run `python benchmarks/peers/install.py`"


def interpreter(framework: str) -> Path | None:
    """Ours runs with this interpreter; a peer with its venv's, None when that is not installed."""
    if framework.startswith("ours"):
        return Path(sys.executable)
    python = venv_python()
    return python if python.exists() else None


def run(framework: str, sizes: dict, threads: int) -> dict:
    """One process timing ``framework``; its JSON, or ``error`` saying why there is none."""
    python = interpreter(framework)
    if python is None:
        return {"framework": framework, "error": NOT_INSTALLED}
    env = dict(os.environ)
    if not framework.startswith("ours"):
        env.pop("PYTHONPATH", None)  # the peers' venv sees neither the project nor its packages
    args = [str(python), str(HERE / "run_one.py"), framework, "--threads", str(threads)]
    args += [a for name, value in sizes.items() for a in (f"--{name}", str(value))]
    out = subprocess.run(args, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        return {"framework": framework, "error": " | ".join(out.stderr.strip().splitlines()[-3:])}
    return json.loads(out.stdout.strip().splitlines()[-1])


def round_robin(frameworks: list[str], sizes: dict, threads: int, rounds: int) -> dict[str, dict]:
    """Each framework once per round, in turn; its step times pooled over the rounds."""
    runs = {fw: [] for fw in frameworks}
    for _ in range(rounds):
        for fw in frameworks:
            runs[fw].append(run(fw, sizes, threads))
    summary = {}
    for fw, rs in runs.items():
        ok = [r for r in rs if "error" not in r]
        if not ok:
            summary[fw] = {"error": rs[0]["error"]}
            continue
        median = statistics.median(t for r in ok for t in r["step_s"])
        summary[fw] = {"median_s": median, "tokens_per_s": sizes["batch"] / median, "step": STEPS[fw],
                       "peak_rss_mib": max(r["peak_rss_mib"] for r in ok),
                       "model_rss_mib": max(r["peak_rss_mib"] - r["rss_before_model_mib"] for r in ok),
                       "rounds": len(ok), "failed_rounds": len(rs) - len(ok)}
    return summary


def print_table(summary: dict[str, dict]) -> None:
    print("framework | tokens/s | ms/step | peak RSS (MiB) | of which model + step | one step includes")
    for fw, s in summary.items():
        if "error" in s:
            print(f"{fw} | - | - | - | - | {s['error']}")
        else:
            print(f"{fw} | {s['tokens_per_s']:,.0f} | {s['median_s'] * 1e3:.1f} | {s['peak_rss_mib']:.0f} | "
                  f"{s['model_rss_mib']:.0f} | {s['step']}")


def headline(summary: dict[str, dict]) -> list[dict]:
    """Each of ours over the fastest peer that ran (None, with the reason, when none did)."""
    peers = {fw: s for fw, s in summary.items() if not fw.startswith("ours") and "error" not in s}
    fastest = max(peers, key=lambda fw: peers[fw]["tokens_per_s"]) if peers else None
    figures = []
    for fw in (f for f in summary if f.startswith("ours")):
        s, name = summary[fw], f"tokens/s, {fw} / the fastest peer"
        if "error" in s or fastest is None:
            note = s.get("error") or "no peer ran (" + NOT_INSTALLED + ")"
            figures.append(figure(name, None, ">= 1.0", note=note))
        else:
            figures.append(figure(f"{name} ({fastest})", s["tokens_per_s"] / peers[fastest]["tokens_per_s"],
                                  ">= 1.0", better="higher", bound=1.0))
    return figures


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=None, help="threads of every framework (default: torch's)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--frameworks", default=",".join(FRAMEWORKS), help="comma-separated, of: " + ", ".join(FRAMEWORKS))
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, one step, one round")
    ap.add_argument("--save", action="store_true", help="write benchmarks/results/bench_peers.json")
    args = ap.parse_args(argv)
    frameworks = args.frameworks.split(",")
    unknown = sorted(set(frameworks) - set(FRAMEWORKS))
    if unknown:
        raise SystemExit(f"unknown framework(s) {', '.join(unknown)}; choose from {', '.join(FRAMEWORKS)}")
    threads = args.threads or torch.get_num_threads()
    sizes, rounds = SIZES["quick" if args.quick else "full"], 1 if args.quick else args.rounds
    machine = describe(gemm_n=256 if args.quick else 2048)
    print(f"{machine_line(machine)}\nsingle hookpoint: D = {sizes['d-in']}, H = {sizes['n-latents']}, k = "
          f"{sizes['k']}, batch {sizes['batch']}; {threads} threads each; {sizes['warmup']} warm-up + "
          f"{sizes['steps']} timed steps per process, {rounds} round(s) round-robin\n")
    summary = round_robin(frameworks, sizes, threads, rounds)
    print_table(summary)
    figures = headline(summary)
    raw = {"sizes": sizes, "rounds": rounds, "threads": threads, "frameworks": summary}
    return finish("bench_peers", machine, figures, raw, args)


if __name__ == "__main__":
    main()
