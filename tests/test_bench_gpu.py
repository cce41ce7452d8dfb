"""``benchmarks/bench_gpu.py --smoke`` runs on the CPU and writes every number chapter 6 quotes."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gpu.py"


def test_smoke_run_writes_json(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_gpu", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "bench.json"
    bench.main(["--smoke", "--device", "cpu", "--steps", "5", "--json", str(out)])
    printed = capsys.readouterr().out
    assert "device: CPU" in printed and "tokens/s" in printed
    r = json.loads(out.read_text())
    assert r["geometry"] == "smoke" and r["device"] == "cpu" and r["device_name"].startswith("CPU")
    assert set(r["runs"]) == {"lambda_0", "lambda_1000"}
    for run in r["runs"].values():
        e2e, only = run["end_to_end"], run["training_only"]
        assert e2e["steps"] == only["steps"] == 5
        assert e2e["tokens_per_s"] > 0 and only["tokens_per_s"] > 0
        # the buffer's first fill harvests more positions than 5 steps train on
        assert e2e["harvested_positions"] >= e2e["trained_positions"] == 5 * r["geometry_batch"]
        assert 0 < e2e["harvest_share"] < 1 and 0 < e2e["harvest_share_steady_state"] < 1
        assert e2e["peak_gpu_memory_gib"] is None  # no GPU here: not measured, not made up
    b = r["penalty_backends"]  # section 4 on a CPU: the C kernel against the PyTorch path
    assert b["kernel"] == "c" and b["padded_K"] >= 1
    assert b["penalty_ms"]["torch"] > 0 and set(b["step_ms"]["torch"]) == {"1000"}
    assert b["penalty_ms"]["c"] is None or b["penalty_ms"]["c"] > 0  # None (with the reason) if it did not build
    assert b["gpu"].startswith("still to be measured") and "GPU numbers are still to be measured" in printed
