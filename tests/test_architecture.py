"""The architecture the package docstring promises: layers that only import upwards, no import cycle,
no import hidden inside a function to dodge one, modules a reader can hold in their head, and
chapters that use only the facade."""

import ast
import json
from pathlib import Path

import pytest

import crosscoder_lib

PKG = Path(crosscoder_lib.__file__).resolve().parent
ROOT = PKG.parent

# The layers of the package docstring, top (imported by everything) to bottom.
LAYERS = ["files", "world", "lm", "interactions", "crosscoder", "proofs", "applications", "exercises", "book", "cli"]
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
# Data-only modules (word lists, tables) may be longer: a reader skims them, not holds them.
DATA_MODULES = {"world.words"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _layer(module: str) -> int:
    return LAYERS.index(module.split(".")[0]) if module else -1


def _imports(path: Path) -> list[tuple[str, bool, int]]:
    """``(imported crosscoder_lib module, inside a function, line)`` for every import in ``path``."""
    tree = ast.parse(path.read_text())
    found = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                if child.module == "crosscoder_lib":
                    for alias in child.names:
                        found.append((alias.name, in_function, child.lineno))
                elif child.module.startswith("crosscoder_lib."):
                    base = child.module[len("crosscoder_lib."):]
                    for alias in child.names:
                        sub = f"{base}.{alias.name}"
                        found.append((sub if sub in MODULES else base, in_function, child.lineno))
            elif isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name.startswith("crosscoder_lib."):
                        found.append((alias.name[len("crosscoder_lib."):], in_function, child.lineno))
            visit(child, inner)

    visit(tree, False)
    return found


def _graph() -> dict[str, set[str]]:
    return {m: {dep for dep, _, _ in _imports(p) if dep in MODULES and dep != m} for m, p in MODULES.items()}


def test_every_module_belongs_to_a_layer():
    for m in MODULES:
        assert m == "" or m.split(".")[0] in LAYERS, f"crosscoder_lib.{m} is in no layer of the package docstring"


def test_no_import_cycle():
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(m):
        state[m] = 1
        stack.append(m)
        for dep in sorted(graph[m]):
            if state.get(dep) == 1:
                cycle = stack[stack.index(dep):] + [dep]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                dfs(dep)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            dfs(m)


def test_layers_only_import_upwards_and_never_inside_functions():
    problems = []
    for m, path in MODULES.items():
        if m == "":
            continue  # the facade maps every layer lazily
        for dep, in_function, line in _imports(path):
            if in_function:
                problems.append(f"crosscoder_lib.{m}:{line} imports crosscoder_lib.{dep} inside a function")
            elif _layer(dep) > _layer(m):
                problems.append(f"crosscoder_lib.{m}:{line} imports crosscoder_lib.{dep}, a lower layer")
    assert not problems, "\n".join(problems)


def test_modules_and_functions_stay_small():
    problems = []
    for m, path in MODULES.items():
        lines = path.read_text().count("\n")
        if lines > MAX_MODULE_LINES and m not in DATA_MODULES:
            problems.append(f"crosscoder_lib.{m}: {lines} lines (> {MAX_MODULE_LINES})")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    problems.append(f"crosscoder_lib.{m}.{node.name} (line {node.lineno}): {n} lines "
                                    f"(> {MAX_FUNCTION_LINES})")
    assert not problems, "\n".join(problems)


def test_facade_names_resolve():
    for name in crosscoder_lib.__all__:
        assert getattr(crosscoder_lib, name) is not None
    with pytest.raises(AttributeError, match="public names"):
        crosscoder_lib.no_such_name  # noqa: B018


def test_package_docstring_maps_every_subpackage():
    doc = crosscoder_lib.__doc__
    for sub in sorted({m.split(".")[0] for m in MODULES if m}):
        assert f"``{sub}``" in doc, f"the package docstring does not describe crosscoder_lib.{sub}"


def _chapter_code(path: Path) -> str:
    nb = json.loads(path.read_text())
    return "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")


@pytest.mark.parametrize("chapter", sorted((ROOT / "book" / "chapters").glob("*.ipynb")), ids=lambda p: p.stem)
def test_chapters_import_only_the_facade(chapter):
    tree = ast.parse(_chapter_code(chapter))
    deep = [ast.unparse(n) for n in ast.walk(tree)
            if isinstance(n, ast.ImportFrom) and n.module and n.module.startswith("crosscoder_lib.")
            or isinstance(n, ast.Import) and any(a.name.startswith("crosscoder_lib.") for a in n.names)]
    assert not deep, f"{chapter.name} imports past the facade: {deep}"
