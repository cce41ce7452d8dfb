"""The exercises: every cell's published solution passes its checker and prints one line, the exercise
version (SOLUTIONS = False) raises NotImplementedError pointing at the exercise and the checker turns it
into a friendly message, the cells have the notebook's layout, and the harness reports what is wrong.
Wrong solutions, two or more per exercise, are in test_exercise_mistakes.py."""

from __future__ import annotations

import ast
import re
from collections import Counter

import pytest
import torch
from IPython.core.interactiveshell import InteractiveShell
from exercise_cells import CELL_DIR, CELLS, NAME, checker_modules, expose_checkers, number, parts, published, run

from crosscoder_lib.exercises.harness import Exercise, ExerciseFailed, gives


@pytest.fixture(autouse=True)
def facade(monkeypatch):
    expose_checkers(monkeypatch)


def test_every_chapter_has_two_to_five_exercises():
    per_chapter = Counter(NAME.fullmatch(c.name)["chapter"] for c in CELLS)
    assert sorted(per_chapter) == [f"{c:02d}" for c in range(7)], f"chapters with exercises: {sorted(per_chapter)}"
    assert all(2 <= n <= 5 for n in per_chapter.values()), per_chapter
    numbers = [number(c) for c in CELLS]
    assert len(set(numbers)) == len(numbers), "two cells share an exercise number"


@pytest.mark.parametrize("cell", CELLS, ids=lambda c: c.stem)
def test_cell_layout(cell):
    """Name, statement beside it, imports through the facade, the stub's first statement, a solution of
    at most 20 lines, and the checker of this exercise called on the cell's function on the last line."""
    assert NAME.fullmatch(cell.name), f"{cell.name} is not <chapter>_<n>_<name>.py"
    statement = cell.with_suffix(".md")
    assert statement.is_file() and f"**Exercise {number(cell)}:" in statement.read_text()
    tree, fn, call = parts(cell)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("crosscoder_lib"):
            assert node.module == "crosscoder_lib", f"{cell.name} imports past the facade: {ast.unparse(node)}"
    docstring = ast.get_docstring(fn)
    assert docstring and "Returns" in docstring, f"{fn.name} needs a docstring with the formula, shapes and result"
    guard = fn.body[1]
    assert ast.unparse(guard.test) == "not SOLUTIONS" and isinstance(guard.body[0], ast.Raise)
    message = guard.body[0].exc.args[0].value
    assert guard.body[0].exc.func.id == "NotImplementedError" and message.startswith(f"Exercise {number(cell)}: ")
    solution_lines = fn.body[2].lineno, fn.end_lineno
    assert solution_lines[1] - solution_lines[0] + 1 <= 20, f"{fn.name}: solution of {solution_lines} lines"
    assert [ast.unparse(a) for a in call.args] == [fn.name] and call.func.id in checker_modules()


@pytest.mark.parametrize("cell", CELLS, ids=lambda c: c.stem)
def test_published_solution_passes(cell, capsys):
    run(cell, solutions=True)
    out = capsys.readouterr().out.strip().splitlines()
    assert out and re.fullmatch(rf"Exercise {re.escape(number(cell))} passed \(\d+ cases\)", out[-1]), out


@pytest.mark.parametrize("cell", CELLS, ids=lambda c: c.stem)
def test_exercise_version_is_friendly(cell):
    with pytest.raises(ExerciseFailed, match=rf"^Exercise {re.escape(number(cell))} \(.*\) is not done yet") as info:
        run(cell, solutions=False)
    assert info.value.__cause__ is None and info.value.__suppress_context__, "the checker's traceback must not chain"
    assert "Traceback" not in str(info.value)
    # the stub itself points at the exercise
    tree, fn, _ = parts(cell)
    ns = {"SOLUTIONS": False}
    exec(compile(ast.Module(body=tree.body[:-1], type_ignores=[]), str(cell), "exec"), ns)
    with pytest.raises(NotImplementedError, match=rf"^Exercise {re.escape(number(cell))}: write"):
        ns[fn.name](*([None] * len(fn.args.args)))


def test_the_readme_places_every_exercise():
    readme = (CELL_DIR / "README.md").read_text()
    assert all(f"| {number(c)} " in readme for c in CELLS)


def test_cells_beside_their_statements_only():
    strays = [p.name for p in CELL_DIR.iterdir() if p.name != "README.md"
              and (p.suffix not in (".py", ".md") or not p.with_suffix(".py").is_file())]
    assert not strays, f"files in book/exercise_cells without a cell: {strays}"


# -- the harness ---------------------------------------------------------------------------------

def _square_checker(fn, mistakes=()):
    ex = Exercise("9.9", "squares", fn, "return x ** 2")
    x = torch.arange(4.0)
    ex.close("four numbers", "the squares", ex.call("four numbers", x), x**2, mistakes=mistakes, dims="B")
    ex.passed()


def test_passing_prints_one_line(capsys):
    _square_checker(lambda x: x * x)
    assert capsys.readouterr().out == "Exercise 9.9 passed (1 cases)\n"


def test_failure_names_exercise_case_numbers_and_hint():
    with pytest.raises(ExerciseFailed) as info:
        _square_checker(lambda x: 2 * x)
    msg = str(info.value)
    assert msg.startswith("Exercise 9.9 (squares), case \"four numbers\": the squares is wrong.")
    assert "2 of 4 entries differ; at [3] expected 9, got 6; at [1] expected 1, got 2" in msg
    assert msg.endswith("Hint: return x ** 2")


def test_a_known_mistake_gets_its_own_hint():
    with pytest.raises(ExerciseFailed, match="Hint: you doubled"):
        _square_checker(lambda x: 2 * x, mistakes=(gives(lambda: 3 * torch.arange(4.0), "tripled"),
                                                    gives(lambda: 2 * torch.arange(4.0), "you doubled")))


def test_shape_and_type_messages():
    with pytest.raises(ExerciseFailed, match=r"has shape \[2, 2\], expected \[4\] \(B\)"):
        _square_checker(lambda x: (x * x).view(2, 2))
    with pytest.raises(ExerciseFailed, match=r"is a str, not a number or tensor"):
        _square_checker(lambda x: "squares")
    with pytest.raises(ExerciseFailed, match=r"(?s)returned None.*forget the return"):
        _square_checker(lambda x: None)


def test_a_float32_answer_is_told_to_keep_the_inputs_dtype():
    ex = Exercise("9.9", "a detour", lambda x: (x.float() + 1000) - 1000, "x itself")
    x = torch.rand(10, generator=torch.Generator().manual_seed(0), dtype=torch.float64) + 0.5
    with pytest.raises(ExerciseFailed, match=r"(?s)right only to torch.float32 precision.*dtype=x.dtype"):
        ex.close("ten numbers", "x", ex.call("ten numbers", x), x)


def test_exceptions_name_the_readers_line():
    def broken(x):
        y = x.view(3, 3)
        return y

    where = r"\(line \d+ of broken: y = x.view\(3, 3\)\)"
    with pytest.raises(ExerciseFailed, match=r"broken\(\) raised RuntimeError: .*" + where):
        _square_checker(broken)


def test_changing_an_input_in_place_is_reported():
    with pytest.raises(ExerciseFailed, match="changed its input number 1 in place"):
        _square_checker(lambda x: x.mul_(x))


def test_a_detached_result_has_no_gradient():
    x = torch.ones(3, requires_grad=True)
    ex = Exercise("9.9", "squares", lambda t: t.detach() ** 2, "keep the graph")
    with pytest.raises(ExerciseFailed, match="carries no gradient"):
        ex.gradient("three ones", ex.call("three ones", x), {"x": x}, {"x": 2 * x.detach()})


def test_the_checker_takes_a_function():
    with pytest.raises(TypeError, match="takes your function itself"):
        Exercise("9.9", "squares", 3.0, "")


def test_ipython_shows_the_message_without_the_checkers_traceback(capfd):
    shell = InteractiveShell.instance()
    shell.user_ns["check"] = _square_checker
    result = shell.run_cell("check(lambda x: x)")
    out = capfd.readouterr()
    assert isinstance(result.error_in_exec, ExerciseFailed)
    shown = out.out + out.err
    assert "ExerciseFailed: Exercise 9.9 (squares)" in shown and "Traceback" not in shown


def test_published_function_is_the_cells_own():
    fn = published(CELLS[0])
    assert fn.__code__.co_filename == str(CELLS[0])


def test_checkers_leave_the_chapters_random_state_alone():
    """A cell inserted in a chapter must not move the chapter's random numbers: every case is seeded
    with its own generator, never the global one."""
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    for cell in CELLS:
        run(cell, solutions=True)
    assert torch.equal(torch.get_rng_state(), state) and torch.equal(torch.rand(3), expected)
    assert torch.is_grad_enabled()
