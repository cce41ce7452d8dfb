"""``benchmarks/report.py`` writes the README's performance section from the results files."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPORT = Path(__file__).resolve().parents[1] / "benchmarks" / "report.py"


@pytest.fixture(scope="module")
def report():
    spec = importlib.util.spec_from_file_location("report", REPORT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MACHINE = {"cpu_model": "Test CPU", "torch_threads": 2, "logical_cores": 2, "torch": "2.13.0",
           "gemm_fp32_gflops": 250.0, "gemm_bf16_gflops": 2300.0, "load_average_at_start": 0.1,
           "date": "2026-12-03 12:00 UTC"}


def write(folder: Path, name: str, figures: list[dict], quick: bool = False) -> None:
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(
        {"benchmark": name, "quick": quick, "machine": MACHINE, "figures": figures, "raw": {}}))


def fig(name, value, target=None, ok=None, unit="x", note=""):
    return {"name": name, "value": value, "unit": unit, "target": target, "ok": ok, "note": note}


def readme(tmp_path: Path, report) -> Path:
    path = tmp_path / "README.md"
    path.write_text(f"# Title\n\n## Performance\n\n{report.BEGIN}\nold text\n{report.END}\n\n## Layout\nkept\n")
    return path


def test_section_quotes_full_runs_in_order_and_skips_quick_ones(tmp_path, report):
    results = tmp_path / "results"
    write(results, "bench_interactions", [fig("penalty, dense / ours", 31.2, ">= 30", True)])
    write(results, "bench_crosscoder", [fig("dense / sparse decoder", 1.5, ">= 2", False),
                                        fig("tokens/s", 12345.6, unit=" tokens/s"),
                                        fig("memory ratio", None, note="no measurable rise")])
    write(results, "bench_precision", [fig("flips", 0.4, unit=" %")], quick=True)
    body = report.section(results)
    assert body.index("### Crosscoder training step") < body.index("### Interaction penalty")
    assert "| dense / sparse decoder | 1.5x | >= 2 | **no** |" in body
    assert "| penalty, dense / ours | 31.2x | >= 30 | yes |" in body
    assert "| tokens/s | 12,346 tokens/s | – | – |" in body
    assert "| memory ratio | not measured (no measurable rise) | – | – |" in body
    assert "Test CPU, 2 threads of 2" in body and "250 GFLOP/s fp32" in body
    assert "flips" not in body and "Skipped (quick smoke runs, not measurements): bench_precision.json." in body


def test_readme_between_markers_only_and_check(tmp_path, report):
    results = tmp_path / "results"
    write(results, "bench_crosscoder", [fig("dense / sparse decoder", 2.4, ">= 2", True)])
    path = readme(tmp_path, report)
    assert report.main(["--results", str(results), "--readme", str(path), "--check"]) == 1  # stale
    assert report.main(["--results", str(results), "--readme", str(path)]) == 0
    text = path.read_text()
    assert "old text" not in text and "| dense / sparse decoder | 2.4x | >= 2 | yes |" in text
    assert text.startswith("# Title\n\n## Performance\n\n") and text.endswith("## Layout\nkept\n")
    assert report.main(["--results", str(results), "--readme", str(path), "--check"]) == 0  # fresh
    report.main(["--results", str(results), "--readme", str(path)])
    assert path.read_text() == text  # idempotent


def test_no_results_and_bad_inputs_say_what_to_do(tmp_path, report):
    empty = tmp_path / "none"
    empty.mkdir()
    assert "No benchmark run is recorded yet" in report.section(empty)
    with pytest.raises(ValueError, match="add these two lines"):
        report.between_markers("# no markers\n", "body")
    (empty / "x.json").write_text('{"benchmark": "x"}')
    with pytest.raises(ValueError, match="no figures, machine"):
        report.section(empty)
    (empty / "x.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not JSON"):
        report.section(empty)


def test_the_peers_table_lists_every_framework_with_what_its_step_includes(tmp_path, report):
    results = tmp_path / "results"
    write(results, "bench_peers", [fig("tokens/s, ours-topk / the fastest peer (sparsify-topk)", 0.93, ">= 1.0", False)])
    record = json.loads((results / "bench_peers.json").read_text())
    record["raw"] = {"frameworks": {
        "ours-topk": {"tokens_per_s": 2761.2, "median_s": 1.4833, "peak_rss_mib": 975.4, "step": "encode, decode"},
        "saelens-topk": {"error": "not installed: run `python benchmarks/peers/install.py`"}}}
    (results / "bench_peers.json").write_text(json.dumps(record))
    body = report.section(results)
    assert "| ours-topk | 2,761 | 1,483 | 975 | encode, decode |" in body
    assert "| saelens-topk | – | – | – | not timed: not installed: run `python benchmarks/peers/install.py` |" in body
    assert body.index("| Figure |") < body.index("| Framework |")
