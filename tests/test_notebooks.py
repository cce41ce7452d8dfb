"""Every chapter executes under papermill in FAST mode, and is committed in a shape CI and Colab rely on."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import nbformat
import pytest
import yaml
from notebooks import NOT_YET, ROOT, execute, injected_values, not_yet_notebooks, page_id, run_params, toc_notebooks

from crosscoder_lib.book.pages import EXERCISES, EXERCISES_LINK, WORLDS
from crosscoder_lib.book.results import results_path, world_of

NOTEBOOKS = toc_notebooks() + not_yet_notebooks()
REPO_URL = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"].rstrip("/")
REPO_SLUG = REPO_URL.removeprefix("https://github.com/")
pages = pytest.mark.parametrize("notebook", NOTEBOOKS, ids=page_id)
runs = pytest.mark.parametrize("notebook", run_params(NOTEBOOKS))


def world(notebook: Path) -> str:
    """The world a page runs in: its world cell's MODEL, else the parameters cell's (the toy's)."""
    return world_of(injected_values(notebook).get("MODEL", "embedded:clean"))


def test_toc_lists_every_chapter_and_its_world_pages():
    """Every notebook under book/ is in _toc.yml (the exercise versions are opened in Colab, not built), but the
    real-world pages that cannot run yet (NOT_YET), and each chapter's real-world pages are sections under it,
    after the toy page."""
    on_disk = sorted(p.relative_to(ROOT) for p in (ROOT / "book").rglob("*.ipynb")
                     if ".ipynb_checkpoints" not in str(p) and not p.relative_to(ROOT).as_posix().startswith(EXERCISES))
    assert on_disk, "no chapter notebooks found under book/"
    assert sorted(toc_notebooks()) == [p for p in on_disk if page_id(p) not in NOT_YET], \
        "every notebook under book/ but the NOT_YET pages must be in _toc.yml, and vice versa"
    assert all(p in on_disk for p in not_yet_notebooks()), "a NOT_YET entry names no page: remove it"
    for entry in yaml.safe_load((ROOT / "_toc.yml").read_text())["chapters"]:
        chapter = Path(entry["file"])
        want = [(chapter.parent / w.name / chapter.name).as_posix() for w in WORLDS
                if (ROOT / chapter.parent / w.name / f"{chapter.name}.ipynb").is_file()
                and f"{w.name}/{chapter.name}" not in NOT_YET]
        assert [s["file"] for s in entry.get("sections", [])] == want, f"_toc.yml: {chapter}'s sections must be {want}"


@runs
def test_chapter_executes_fast(notebook, fast_execution):
    run = fast_execution(notebook)
    assert run.error is None, f"{notebook} failed under papermill (FAST=True): {run.error}"
    results = json.loads(results_path(notebook.stem, world(notebook), run.results_dir).read_text())
    assert results["fast"] is True and results["chapter"] == notebook.stem and results["world"] == world(notebook)
    assert results["run_seconds"] > 0 and results["device_name"]


@pages
def test_chapter_has_a_science_test(notebook):
    """CI asserts on every chapter's numbers, not only on its execution."""
    assert (ROOT / "tests" / f"test_chapter_{notebook.stem}.py").is_file(), (
        f"add tests/test_chapter_{notebook.stem}.py asserting on the chapter's results file")


@pages
def test_chapter_is_committed_clean_and_runnable_on_colab(notebook):
    nb = nbformat.read(ROOT / notebook, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    for cell in code:
        assert not cell.get("outputs") and cell.get("execution_count") is None, (
            f"{notebook} is committed with outputs; clear them (Jupyter: Edit > Clear all outputs)")
    tags = [set(c.metadata.get("tags", [])) for c in code]
    params = [c for c, t in zip(code, tags) if "parameters" in t]
    assert len(params) == 1, f"{notebook} needs exactly one cell tagged 'parameters'"
    for name in ("MODEL", "DEVICE", "FAST"):
        assert f"{name} =" in params[0].source, f"{notebook}'s parameters cell lacks {name}"
    setup = [c for c, t in zip(code, tags) if "colab-setup" in t]
    assert len(setup) == 1 and REPO_SLUG in setup[0].source, (
        f"{notebook} needs one 'colab-setup' cell installing from {REPO_URL}")
    badge = f"https://colab.research.google.com/github/{REPO_SLUG}/blob/main/{notebook.as_posix()}"
    assert any(badge in c.source for c in nb.cells if c.cell_type == "markdown"), (
        f"{notebook} needs a Colab badge linking to {badge}")
    exercises = f"[{EXERCISES_LINK}](https://colab.research.google.com/github/{REPO_SLUG}/blob/main/" \
                f"{EXERCISES}/{notebook.name})"
    assert exercises in nb.cells[0].source, f"{notebook} needs, beside its badge, the link {exercises}"


def _code_cells(notebook):
    return [c for c in nbformat.read(ROOT / notebook, as_version=4).cells if c.cell_type == "code"]


@pages
def test_chapter_starts_and_finishes_through_chapter_run(notebook):
    """The cell after the parameters cell (and a world page's world cell) starts the run (ChapterRun reads
    the parameters itself and applies the fast preset; a world page names its world), no chapter repeats
    FAST's values, and the last cell writes the results; the bookkeeping cells are tagged so the built page
    shows the chapter, not its plumbing."""
    code = _code_cells(notebook)
    tags = [set(c.metadata.get("tags", [])) for c in code]
    first = [i for i, t in enumerate(tags) if "parameters" in t][0] + 1
    if "injected-parameters" in tags[first]:
        first += 1
    named = "" if world(notebook) == "embedded" else f', world="{world(notebook)}"'
    assert code[first].source.startswith(f'from crosscoder_lib import start_chapter\n\nrun = start_chapter("{notebook.stem}", '
                                         f"globals(){named})"), f"{notebook}: the cell after the parameters cell must start the run"
    assert "hide-cell" in tags[first]
    assert sum(c.source.count("start_chapter(") for c in code) == 1
    assert not any(re.search(r"^\s*if FAST\b", c.source, re.M) for c in code), (
        f"{notebook} sets FAST values itself; they belong in the fast preset (crosscoder_lib/book/presets.py)")
    assert "run.finish(" in code[-1].source and "remove-input" in tags[-1]
    assert "remove-input" in [t for t in tags if "colab-setup" in t][0]


@runs
def test_chapter_output_shows_no_machine_path_and_no_warning(notebook, fast_execution):
    """The display policy, checked on the FAST execution: no output names an absolute path of the
    building machine, and nothing reaches stderr (library warnings and logging are quieted)."""
    run = fast_execution(notebook)
    assert run.error is None, f"{notebook} failed under papermill (FAST=True): {run.error}"
    nb = nbformat.read(run.executed, as_version=4)
    machine = {str(ROOT), str(run.executed.parent.resolve()), tempfile.gettempdir() + "/", str(Path.home()) + "/"}
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream" and out.get("name") == "stderr":
                pytest.fail(f"{notebook} writes to stderr: {out['text'][:300]!r}")
            text = out.get("text", "") + "".join(v for k, v in out.get("data", {}).items()
                                                  if k.startswith("text/") and isinstance(v, str))
            shown = [m for m in machine if m in text]
            assert not shown, f"{notebook} shows a path of this machine ({shown}): {text[:300]!r}"


def test_a_failing_cell_fails_the_executor(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell("FAST = False\nDEVICE = 'cpu'")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell("raise RuntimeError('deliberate failure')")]
    path = tmp_path / "failing.ipynb"
    nbformat.write(nb, path)
    run = execute(path, tmp_path / "out" / "failing.ipynb", tmp_path / "results")
    assert run.error is not None and "deliberate failure" in str(run.error)
