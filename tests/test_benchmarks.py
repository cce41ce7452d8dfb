"""Every benchmark script runs end to end in its ``--quick`` smoke mode and prints its figures.

The numbers of a quick run mean nothing (tiny sizes, one repeat, a busy machine); what is checked
is that each figure the script promises is computed (a finite number, or ``None`` with the reason)
and printed in the side-by-side table, and that ``--save`` writes it marked as a quick run.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = ["bench_crosscoder", "bench_interactions", "bench_precision", "bench_real_model"]


def load(name: str, monkeypatch, folder: Path = BENCHMARKS):
    """The script as a module, its folder on the path (as ``python benchmarks/<name>.py`` has it)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", SCRIPTS)
def test_quick_run_prints_every_figure(name, tmp_path, monkeypatch, capsys):
    script = load(name, monkeypatch)
    monkeypatch.setattr(importlib.import_module("machine"), "RESULTS", tmp_path)  # --save: here, not in results/
    figures = script.main(["--quick", "--threads", "1", "--save"])
    printed = capsys.readouterr().out
    assert figures, f"{name} returned no figures"
    table = printed[printed.index("figure | value | target | met"):]
    for f in figures:
        assert f["name"] in table
        if f["value"] is None:
            assert f["note"], f"{f['name']}: not measured, and no reason given"
        else:
            assert math.isfinite(f["value"]), f["name"]
            assert f"{f['value']:.3g}{f['unit']}" in table
        if f["ok"] is not None:
            assert {True: "yes", False: "NO"}[f["ok"]] in table
    assert not (tmp_path / f"{name}.json").exists()  # a quick run never overwrites a measurement
    saved = json.loads((tmp_path / f"{name}.quick.json").read_text())
    assert saved["quick"] is True and saved["benchmark"] == name
    assert [f["name"] for f in saved["figures"]] == [f["name"] for f in figures]
    assert saved["machine"]["gemm_fp32_gflops"] > 0 and saved["machine"]["cpu_model"]


def test_peers_orchestrator_times_ours_and_names_a_missing_peer(tmp_path, monkeypatch, capsys):
    """``bench_peers.py --quick``: ours in its own process, a peer whose venv is missing reported as
    not installed (the figure then has no value and says why), never timed or made up."""
    monkeypatch.syspath_prepend(str(BENCHMARKS / "peers"))
    bench = load("bench_peers", monkeypatch, BENCHMARKS / "peers")
    monkeypatch.setattr(bench, "venv_python", lambda: tmp_path / "no-venv" / "bin" / "python")
    monkeypatch.setattr(importlib.import_module("machine"), "RESULTS", tmp_path)
    figures = bench.main(["--quick", "--threads", "1", "--frameworks", "ours-topk,sparsify-topk", "--save"])
    printed = capsys.readouterr().out
    ours_row = next(line for line in printed.splitlines() if line.startswith("ours-topk |"))
    assert float(ours_row.split(" | ")[1].replace(",", "")) > 0  # tokens/s measured in the child
    assert "sparsify-topk | - | - | - | - | not installed" in printed
    (f,) = figures
    assert f["value"] is None and "no peer ran" in f["note"]
    saved = json.loads((tmp_path / "bench_peers.quick.json").read_text())
    assert saved["quick"] is True and saved["raw"]["frameworks"]["ours-topk"]["tokens_per_s"] > 0
    assert saved["raw"]["frameworks"]["sparsify-topk"]["error"].startswith("not installed")
