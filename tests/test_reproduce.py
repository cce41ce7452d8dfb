"""A chapter re-run at its defaults reproduces its committed results: numbers measured over seeds within
their intervals, every other number exactly (to float round-off). Slow: run with ``-m slow``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from notebooks import execute
from science import committed, reproduces

from crosscoder_lib.book.results import results_path


@pytest.mark.slow
@pytest.mark.parametrize("chapter", ["00_why_features_interact"])
def test_a_chapter_at_its_defaults_reproduces_its_committed_results(chapter, tmp_path):
    run = execute(Path("book/chapters") / f"{chapter}.ipynb", tmp_path / f"{chapter}.ipynb", tmp_path / "results",
                  {"FAST": False})
    assert run.error is None, f"{chapter} failed at its defaults: {run.error}"
    fresh = json.loads(results_path(chapter, folder=run.results_dir).read_text())
    assert fresh["fast"] is False
    problems = reproduces(fresh, committed(chapter))
    assert not problems, f"{chapter} at its defaults does not reproduce book/results/{chapter}.json:\n" + \
        "\n".join(problems)
