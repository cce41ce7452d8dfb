"""The generated notebooks (crosscoder_lib.book.pages): each real-world page is its chapter with the world's
preset in a cell after the parameters cell, each exercise version its chapter with SOLUTIONS = False, both
with their own Colab badge, committed in sync with their sources; an exercise version run FAST stops at its
first exercise with the exercise's NotImplementedError, and with SOLUTIONS = True it runs its solutions."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from notebooks import ROOT, execute, injected_values

from crosscoder_lib.book import pages
from crosscoder_lib.book.presets import CHAPTERS, preset_chapters, preset_parameters

REPO = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"].removeprefix("https://github.com/")
WORLD_PAGES = [(w, CHAPTERS[k]) for w in pages.WORLDS for k in preset_chapters(w.name)]
# Chapters whose exercise cells (book/exercise_cells/) are not in the notebook yet: the per-chapter work
# inserts them and removes the chapter here (strict: a chapter with its exercises fails until then).
NO_EXERCISES_YET: set[str] = set()


def _nb(path: Path) -> dict:
    return json.loads(path.read_text())


def _text(cell: dict) -> str:
    return "".join(cell["source"])


def _tagged(nb: dict, tag: str) -> int:
    return next(i for i, c in enumerate(nb["cells"]) if tag in c.get("metadata", {}).get("tags", []))


def _badge(nb: dict, path: str) -> bool:
    return f"https://colab.research.google.com/github/{REPO}/blob/main/{path}" in _text(nb["cells"][0])


def test_generated_notebooks_are_in_sync_with_their_chapters():
    assert pages.stale(ROOT) == [], "run `crosscoder pages` (make book runs it) and commit the notebooks"


def test_the_check_command_fails_on_a_stale_page(tmp_path):
    for rel in ("_toc.yml", *(f"book/chapters/{c}.ipynb" for c in CHAPTERS.values()), *pages.generated(ROOT)):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes((ROOT / rel).read_bytes())
    check = [sys.executable, "-m", "crosscoder_lib.cli", "pages", "--check", "--root", str(tmp_path)]
    assert subprocess.run(check, capture_output=True, text=True).returncode == 0
    (tmp_path / "book/exercises/00_why_features_interact.ipynb").write_text("{}")
    (tmp_path / "book/exercises/99_old.ipynb").write_text("{}")
    out = subprocess.run(check, capture_output=True, text=True)
    assert out.returncode == 1 and "00_why_features_interact.ipynb: differs from its source chapter" in out.stderr
    assert "99_old.ipynb: not generated from any chapter (remove it)" in out.stderr and "crosscoder pages" in out.stderr
    pages.write(tmp_path)
    assert pages.stale(tmp_path) == [] and not (tmp_path / "book/exercises/99_old.ipynb").exists()


@pytest.mark.parametrize("world, chapter", WORLD_PAGES, ids=[f"{w.name}/{c}" for w, c in WORLD_PAGES])
def test_a_world_page_is_its_chapter_with_the_world_preset(world, chapter):
    source = _nb(ROOT / "book" / "chapters" / f"{chapter}.ipynb")
    pages._relabel(source, world.name)  # the page's own labels carry its world (the next test)
    path = f"book/chapters/{world.name}/{chapter}.ipynb"
    page = _nb(ROOT / path)
    at = _tagged(page, "parameters") + 1
    cell = page["cells"][at]
    assert cell["metadata"]["tags"] == ["injected-parameters"] and cell["cell_type"] == "code"
    assert injected_values(Path(path)) == preset_parameters(chapter, world.name)
    assert f'start_chapter("{chapter}", globals(), world="{world.name}")' in _text(page["cells"][at + 1])
    title = _text(page["cells"][0]).split("\n")[0]
    assert title == _text(source["cells"][0]).split("\n")[0] + f" ({world.title})"
    assert _badge(page, path) and "](../../offline/colab-badge.svg)" in _text(page["cells"][0])
    # everything else is the chapter's own
    rest = [c for i, c in enumerate(page["cells"]) if i not in (0, at, at + 1)]
    assert [_text(c) for c in rest] == [_text(c) for i, c in enumerate(source["cells"]) if i not in (0, at)]


@pytest.mark.parametrize("chapter", CHAPTERS.values())
def test_an_exercise_version_is_its_chapter_with_solutions_off(chapter):
    source = _nb(ROOT / "book" / "chapters" / f"{chapter}.ipynb")
    path = f"book/exercises/{chapter}.ipynb"
    version = _nb(ROOT / path)
    assert _badge(version, path) and _text(version["cells"][0]).startswith("# Exercises: ")
    back = f"[{pages.CHAPTER_LINK}](https://colab.research.google.com/github/{REPO}/blob/main/" \
           f"book/chapters/{chapter}.ipynb)"
    assert back in _text(version["cells"][0]) and pages.EXERCISES_LINK not in _text(version["cells"][0])
    params = _text(version["cells"][_tagged(version, "parameters")])
    assert re.search(r"^SOLUTIONS = False\b", params, re.M) and "SOLUTIONS = True" not in params
    assert pages.exercise_cells(version) == pages.exercise_cells(source)
    note = re.compile(rf"^ *{re.escape(pages.SOLUTION_NOTE)}\n", re.M)
    rest = [note.sub("", _text(c)) for i, c in enumerate(version["cells"]) if i not in (0, _tagged(version, "parameters"))]
    assert rest == [_text(c) for i, c in enumerate(source["cells"]) if i not in (0, _tagged(source, "parameters"))]


def _exercise_source() -> dict:
    """A chapter of one exercise in the shape of book/exercise_cells/, and a cell after it."""
    def cell(kind, text, tags=()):
        c = {"cell_type": kind, "metadata": {"tags": list(tags)} if tags else {}, "source": [text]}
        return c | ({"execution_count": None, "outputs": []} if kind == "code" else {})

    badge = "https://colab.research.google.com/github/o/r/blob/main/book/chapters/99_x.ipynb"
    exercise = ('def double(x):\n    """Twice x."""\n    if not SOLUTIONS:\n        raise NotImplementedError('
                '"Exercise 9.1: write double (see the docstring above)")\n    return 2 * x\n\n\nassert double(3) == 6')
    cells = [cell("markdown", f"# Ninety-nine\n\n[![Open In Colab](../offline/colab-badge.svg)]({badge})\n"),
             cell("code", "FAST = False\nDEVICE = 'cpu'\nSOLUTIONS = True", ["parameters"]),
             cell("code", exercise), cell("code", "print('after the exercise')")]
    return {"cells": [dict(c, id=f"cell-{i}") for i, c in enumerate(cells)],
            "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
            "nbformat": 4, "nbformat_minor": 5}


def assert_stops_at_first_exercise(run, version: dict) -> None:
    """``run`` (of an exercise version) failed at its first exercise cell with the exercise's error:
    NotImplementedError, or the exercise checker's "not done yet" (its friendly form of it)."""
    import papermill

    first = _text(version["cells"][pages.exercise_cells(version)[0]])
    assert isinstance(run.error, papermill.PapermillExecutionError), f"{run.notebook}: expected the exercise's " \
        f"NotImplementedError, got {run.error!r}"
    assert run.error.source.strip() == first.strip(), f"failed in another cell:\n{run.error.source[:400]}"
    assert run.error.ename == "NotImplementedError" or (
        run.error.ename == "ExerciseFailed" and "not done yet" in run.error.evalue), (run.error.ename, run.error.evalue)


def test_an_exercise_version_stops_at_its_exercise_and_keeps_the_solution(tmp_path):
    version = pages.exercise_version(_exercise_source(), "99_x")
    cell = _text(version["cells"][pages.exercise_cells(version)[0]])
    assert "        raise NotImplementedError(" in cell and f"    {pages.SOLUTION_NOTE}\n    return 2 * x" in cell
    path = tmp_path / "99_x.ipynb"
    path.write_text(json.dumps(version))
    stopped = execute(path, tmp_path / "out" / "a.ipynb", tmp_path / "results")
    assert_stops_at_first_exercise(stopped, version)
    assert "Exercise 9.1: write double" in stopped.error.evalue
    solved = execute(path, tmp_path / "out" / "b.ipynb", tmp_path / "results", {"SOLUTIONS": True})
    assert solved.error is None and "after the exercise" in (tmp_path / "out" / "b.ipynb").read_text()


def test_a_source_without_what_a_page_needs_is_named():
    source = _exercise_source()
    source["cells"][1]["source"] = ["FAST = False"]
    with pytest.raises(pages.PageError, match="99_x: the parameters cell must set SOLUTIONS = True"):
        pages.exercise_version(source, "99_x")
    source["cells"][0]["source"] = ["# Ninety-nine\n\nno badge"]
    with pytest.raises(pages.PageError, match="99_x: the first markdown cell has no Colab badge"):
        pages.exercise_version(source, "99_x")


@pytest.mark.parametrize("chapter", [
    pytest.param(c, marks=[pytest.mark.xfail(strict=True, reason="exercise cells not yet inserted (book/exercise_cells/, "
                                             "the per-chapter work)")] if c in NO_EXERCISES_YET else [])
    for c in CHAPTERS.values()])
def test_the_exercise_version_runs_fast_to_its_first_exercise(chapter, fast_book_dir):
    version = _nb(ROOT / "book" / "exercises" / f"{chapter}.ipynb")
    n = len(pages.exercise_cells(version))
    assert 2 <= n <= 5, f"{chapter} has {n} exercises; each chapter has 2-5 (book/exercise_cells/)"
    run = execute(Path("book/exercises") / f"{chapter}.ipynb", fast_book_dir / "exercises" / f"{chapter}.ipynb",
                  fast_book_dir / "exercise_results")
    assert_stops_at_first_exercise(run, version)


def test_a_world_page_prefixes_the_labels_it_defines_and_its_references_to_them():
    """The toy page and its world page are built into one book: a label may be defined only once there."""
    nb = {"cells": [{"cell_type": "markdown", "metadata": {}, "source": ["(window)=\n", "## The window\n"]},
                    {"cell_type": "markdown", "metadata": {},
                     "source": ["See {ref}`window`, {ref}`the window <window>` and {ref}`notation`.\n"]}]}
    pages._relabel(nb, "smollm2")
    assert "".join(nb["cells"][0]["source"]).startswith("(smollm2-window)=")
    assert "".join(nb["cells"][1]["source"]) == ("See {ref}`smollm2-window`, {ref}`the window <smollm2-window>` and "
                                                 "{ref}`notation`.\n")
