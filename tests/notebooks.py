"""Shared machinery for the notebook tests: the chapters listed in _toc.yml, their FAST executions, and
building the book from those executions.

Each chapter is executed at most once per test session (papermill, ``FAST=True``), into a temporary copy
of the book; the per-chapter tests and the book-build test all reuse that execution.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
FAST_PARAMETERS = {"FAST": True, "DEVICE": "cpu"}


def notebook_defaults(notebook: Path) -> dict:
    """``{name: default value}`` of a notebook's ``parameters`` cell, as papermill reads it."""
    import papermill

    return {name: ast.literal_eval(p["default"]) for name, p in papermill.inspect_notebook(str(notebook)).items()}


def toc_notebooks() -> list[Path]:
    """Every notebook the book's table of contents lists, in order (paths relative to the repo root)."""
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
    return [Path(f + ".ipynb") for f in files if (ROOT / (f + ".ipynb")).is_file()]


@dataclass
class Execution:
    """One chapter's FAST execution: where the executed notebook is, and its error if it failed."""

    notebook: Path
    executed: Path
    results_dir: Path
    error: BaseException | None


def execute(notebook: Path, out: Path, results_dir: Path, parameters: dict | None = None) -> Execution:
    """Run ``notebook`` with papermill into ``out``; record (not raise) a failure."""
    import papermill

    out.parent.mkdir(parents=True, exist_ok=True)
    results_dir.mkdir(parents=True, exist_ok=True)
    old = os.environ.get("CROSSCODER_RESULTS_DIR")
    os.environ["CROSSCODER_RESULTS_DIR"] = str(results_dir)
    error: BaseException | None = None
    try:
        papermill.execute_notebook(
            str(ROOT / notebook) if not notebook.is_absolute() else str(notebook),
            str(out),
            parameters=dict(FAST_PARAMETERS, **(parameters or {})),
            cwd=str(out.parent),
            kernel_name="python3",
            progress_bar=False,
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
