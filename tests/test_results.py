"""The results files and the README's generated reproduction table."""

from __future__ import annotations

import json

import pytest
from notebooks import ROOT

from crosscoder_lib import results


def test_record_and_table(tmp_path, monkeypatch):
    monkeypatch.setenv(results.RESULTS_ENV, str(tmp_path))
    results.record("01_x", {"fvu": 0.1}, params={"FAST": False}, device="cpu", run_seconds=120.0, fast=False,
                   reproduction=[{"result": "Fig. 1 share", "paper": "0.92", "ours": 0.7123}])
    results.record("02_y", {"a": 1}, params={}, device="cpu", run_seconds=3.0, fast=True,
                   reproduction=[{"result": "never shown", "paper": "1", "ours": 2}])
    table = results.reproduction_table(tmp_path)
    assert "| 01_x | Fig. 1 share | 0.92 | 0.712 | CPU:" in table and "2.0 min" in table
    assert "never shown" not in table, "FAST runs must not reach the README"
    assert results.load("01_x")["metrics"] == {"fvu": 0.1}


def test_bad_reproduction_row_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv(results.RESULTS_ENV, str(tmp_path))
    with pytest.raises(ValueError, match="lacks"):
        results.record("x", {}, params={}, device="cpu", run_seconds=1, fast=False, reproduction=[{"result": "r"}])


def test_readme_table_is_generated_from_committed_results():
    text = (ROOT / "README.md").read_text()
    assert results.render_readme(text, results.reproduction_table(ROOT / "book" / "results")) == text, (
        "README.md's reproduction table is stale: run `make table` (python -m crosscoder_lib.results)")


def test_committed_results_are_full_runs():
    for path in (ROOT / "book" / "results").glob("*.json"):
        data = json.loads(path.read_text())
        assert data["fast"] is False, f"{path.name} comes from a FAST run; commit only full runs"
