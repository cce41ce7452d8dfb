"""Session-wide fixtures: each chapter's FAST execution happens once and is shared by every test."""

from __future__ import annotations

from pathlib import Path

import pytest
from notebooks import Execution, execute


@pytest.fixture(scope="session")
def fast_book_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fast_book")


@pytest.fixture(scope="session")
def fast_execution(fast_book_dir):
    """``fast_execution(Path("book/chapters/x.ipynb")) -> Execution``, run once per session."""
    cache: dict[Path, Execution] = {}

    def get(notebook: Path) -> Execution:
        if notebook not in cache:
            cache[notebook] = execute(notebook, fast_book_dir / notebook, fast_book_dir / "results")
        return cache[notebook]

    return get


@pytest.fixture(scope="session")
def chapter_results(fast_execution):
    """``chapter_results("01_crosscoders") -> dict``: the results file of the chapter's FAST run."""
    import json

    def get(chapter: str) -> dict:
        run = fast_execution(Path("book/chapters") / f"{chapter}.ipynb")
        if run.error is not None:
            pytest.fail(f"chapter {chapter} failed under papermill (FAST): {run.error}")
        return json.loads((run.results_dir / f"{chapter}.json").read_text())

    return get


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Library tests use tiny tensors: on a shared 2-core machine a second OpenMP thread only adds
    synchronisation (measured: 1 s -> 35 s for one bound under load). Notebook executions run in
    their own kernels and keep their threads."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
