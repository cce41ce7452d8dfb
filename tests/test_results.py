"""The results files and the README's generated reproduction table."""

from __future__ import annotations

import json

import pytest
from notebooks import ROOT, notebook_defaults, toc_notebooks

from crosscoder_lib.book import results


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
        "README.md's reproduction table is stale: run `make table` (python -m crosscoder_lib.book.results)")


def test_committed_results_are_full_runs():
    for path in (ROOT / "book" / "results").glob("*.json"):
        data = json.loads(path.read_text())
        assert data["fast"] is False, f"{path.name} comes from a FAST run; commit only full runs"


@pytest.mark.parametrize("notebook", [nb for nb in toc_notebooks() if nb.parts[:2] == ("book", "chapters")],
                         ids=lambda p: p.stem)
def test_every_chapter_has_results_from_its_current_defaults(notebook):
    """Each chapter's committed results come from a full run with the parameters its notebook has now:
    a changed default without a re-run leaves the README table describing another experiment."""
    path = ROOT / "book" / "results" / f"{notebook.stem}.json"
    assert path.is_file(), f"no {path.relative_to(ROOT)}: run the chapter with its defaults (make book) and commit it"
    recorded = json.loads(path.read_text())["params"]
    stale = {name: (recorded[name], default) for name, default in notebook_defaults(ROOT / notebook).items()
             if name in recorded and recorded[name] != default}
    assert not stale, f"{path.name} was made with other defaults (recorded, notebook): {stale}; re-run the chapter"
