"""The exercise cells of ``book/exercise_cells`` as the tests read them: their files, their parts, and
their functions executed exactly as a notebook would (``SOLUTIONS`` set, imports through the facade)."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
from pathlib import Path

import crosscoder_lib
import crosscoder_lib.exercises

ROOT = Path(__file__).resolve().parents[1]
CELL_DIR = ROOT / "book" / "exercise_cells"
CELLS = sorted(CELL_DIR.glob("*.py"))
NAME = re.compile(r"(?P<chapter>\d\d)_(?P<n>\d)_(?P<name>[a-z0-9_]+)\.py")


def checker_modules() -> dict[str, str]:
    """Every ``check_*`` function of ``crosscoder_lib.exercises`` -> the module that defines it."""
    out = {}
    for info in pkgutil.iter_modules(crosscoder_lib.exercises.__path__):
        module = importlib.import_module(f"crosscoder_lib.exercises.{info.name}")
        out |= {n: module.__name__ for n in vars(module) if n.startswith("check_")
                and getattr(module, n).__module__ == module.__name__}
    return out


def expose_checkers(monkeypatch) -> None:
    """Make ``from crosscoder_lib import check_x`` work as it will once the facade lists the checkers."""
    for name, module in checker_modules().items():
        monkeypatch.setitem(crosscoder_lib._EXPORTS, name, module)


def number(cell: Path) -> str:
    """``03_1_penalty.py`` -> ``"3.1"``."""
    m = NAME.fullmatch(cell.name)
    return f"{int(m['chapter'])}.{m['n']}"


def parts(cell: Path) -> tuple[ast.Module, ast.FunctionDef, ast.Call]:
    """The cell's module, its one function, and its last statement's checker call."""
    tree = ast.parse(cell.read_text())
    functions = [s for s in tree.body if isinstance(s, ast.FunctionDef)]
    assert len(functions) == 1, f"{cell.name} must define exactly one function, defines {len(functions)}"
    last = tree.body[-1]
    assert isinstance(last, ast.Expr) and isinstance(last.value, ast.Call), f"{cell.name} must end with a checker call"
    return tree, functions[0], last.value


def run(cell: Path, solutions: bool) -> dict:
    """Execute the whole cell (the checker call included) in a fresh namespace, as the notebook does."""
    ns = {"SOLUTIONS": solutions}
    exec(compile(cell.read_text(), str(cell), "exec"), ns)
    return ns


def published(cell: Path):
    """The cell's function with ``SOLUTIONS = True``, defined without running the checker."""
    tree, fn, _ = parts(cell)
    body = ast.Module(body=tree.body[:-1], type_ignores=[])
    ns = {"SOLUTIONS": True}
    exec(compile(body, str(cell), "exec"), ns)
    return ns[fn.name]
