"""Every chapter executes under papermill in FAST mode, and is committed in a shape CI and Colab rely on."""

from __future__ import annotations

import json

import nbformat
import pytest
import yaml
from notebooks import ROOT, execute, toc_notebooks

NOTEBOOKS = toc_notebooks()
REPO_URL = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"].rstrip("/")
REPO_SLUG = REPO_URL.removeprefix("https://github.com/")


def test_toc_lists_every_chapter():
    on_disk = sorted(p.relative_to(ROOT) for p in (ROOT / "book").rglob("*.ipynb") if ".ipynb_checkpoints" not in str(p))
    assert on_disk, "no chapter notebooks found under book/"
    assert sorted(NOTEBOOKS) == on_disk, "every notebook under book/ must be in _toc.yml and vice versa"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[n.stem for n in NOTEBOOKS])
def test_chapter_executes_fast(notebook, fast_execution):
    run = fast_execution(notebook)
    assert run.error is None, f"{notebook} failed under papermill (FAST=True): {run.error}"
    results = json.loads((run.results_dir / f"{notebook.stem}.json").read_text())
    assert results["fast"] is True and results["chapter"] == notebook.stem
    assert results["run_seconds"] > 0 and results["device_name"]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[n.stem for n in NOTEBOOKS])
def test_chapter_has_a_science_test(notebook):
    """CI asserts on every chapter's numbers, not only on its execution."""
    assert (ROOT / "tests" / f"test_chapter_{notebook.stem}.py").is_file(), (
        f"add tests/test_chapter_{notebook.stem}.py asserting on the chapter's results file")


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[n.stem for n in NOTEBOOKS])
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
