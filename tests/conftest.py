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
    """``chapter_results("01_crosscoders", world="embedded") -> dict``: the results file of the FAST run
    of the chapter's page in that world (``book/chapters/<world>/<chapter>.ipynb`` for a real world)."""
    import json

    from crosscoder_lib.book.results import EMBEDDED_WORLD, results_path

    def get(chapter: str, world: str = EMBEDDED_WORLD) -> dict:
        folder = Path("book/chapters") if world == EMBEDDED_WORLD else Path("book/chapters") / world
        run = fast_execution(folder / f"{chapter}.ipynb")
        if run.error is not None:
            pytest.fail(f"chapter {chapter} ({world}) failed under papermill (FAST): {run.error}")
        return json.loads(results_path(chapter, world, run.results_dir).read_text())

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
