"""The book's generated notebooks, written from each chapter's one source (``book/chapters/<chapter>.ipynb``).

- **Real-world pages** ``book/chapters/<world>/<chapter>.ipynb`` (chapters 1–5, :data:`WORLDS`): the
  chapter, with a cell after its parameters cell that sets the world's preset
  (:mod:`crosscoder_lib.book.presets`), tagged ``injected-parameters`` as papermill tags the values it
  injects; a title and a note saying which world; the Colab badge pointing at the page itself; and
  ``start_chapter(..., world=...)``, so that a page whose world cell papermill replaced refuses to run
  the toy's world (:mod:`crosscoder_lib.book.chapter`). The book lists each as a section under its
  chapter, after the toy page (``_toc.yml``), and builds it after every toy page, so its comparison
  with the toy (:mod:`crosscoder_lib.book.compare`) finds the toy's results of the same build.
- **Exercise versions** ``book/exercises/<chapter>.ipynb`` (every chapter): ``SOLUTIONS = False`` in
  the parameters cell, so each exercise (a cell whose function starts ``if not SOLUTIONS: raise
  NotImplementedError(...)``, ``book/exercise_cells/``) raises until the reader writes it; the solution
  bodies are *kept* below that guard, with a comment saying how to replace them. Kept, not stripped:
  the version is the chapter's own code with one parameter changed (no rewriting that could break a
  cell), ``SOLUTIONS = True`` in the same notebook gives the published solution back (which the
  exercise checkers' "not done yet" message promises), and a stuck reader finds it in place. The
  exercise versions are opened from their own Colab badges; the book does not build them.

Every generated file is committed (Colab opens notebooks from GitHub) and must match the sources:
``crosscoder pages`` rewrites them (``make book`` runs it first), ``crosscoder pages --check`` fails
when one is stale, and the tests run the check. Notebooks are JSON written the way nbformat writes
them (sorted keys, one-space indent, sources as lists of lines), so a page is byte-for-byte stable.
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import posixpath
import re
import sys
from pathlib import Path
from typing import NamedTuple

from crosscoder_lib.book.presets import CHAPTERS, preset_chapters, preset_parameters
from crosscoder_lib.book.results import repo_root


class World(NamedTuple):
    """A world with its own pages: ``name`` (its preset and ``results.world_of``), ``title`` (what the
    page's title says), ``about`` (one sentence for the page's note)."""

    name: str
    title: str
    about: str


WORLDS = (World("smollm2", "SmolLM2-135M-Instruct",
                "a real pretrained model (its 4-bit GGUF weights, dequantised) on the stories it wrote, the "
                "crosscoder reading the 4-block window that starts at `FIRST_BLOCK`"),)
SOURCES = "book/chapters"
EXERCISES = "book/exercises"
WORLD_CELL_ID = "world-parameters"
SOLUTION_NOTE = "# Published solution below: to write your own, delete it and the two guard lines above."
EXERCISES_LINK = "Exercises: open the exercise version in Colab"
"""The text of the link, beside a chapter's Colab badge, to its exercise version."""
CHAPTER_LINK = "Solutions: open the published chapter in Colab"
"""What that link becomes in the exercise version: the way back to the chapter."""
_BADGE = re.compile(r"(https://colab\.research\.google\.com/github/[^\s)]+/blob/[^\s/)]+/)([^\s)]+\.ipynb)")
_LINK = re.compile(r"(\]\()([^)\s]+)(\))|(<img [^>]*src=\")([^\"]+)(\")")
_LABEL = re.compile(r"^\(([^)\s]+)\)=", re.M)


class PageError(ValueError):
    """A source chapter lacks what a generated page is made from (named, with the fix)."""


def _text(cell: dict) -> str:
    return "".join(cell["source"])


def _set_text(cell: dict, text: str) -> None:
    cell["source"] = text.splitlines(keepends=True)


def _tagged(nb: dict, tag: str) -> int:
    found = [i for i, c in enumerate(nb["cells"]) if tag in c.get("metadata", {}).get("tags", [])]
    if len(found) != 1:
        raise PageError(f"needs exactly one cell tagged {tag!r}, found {len(found)}")
    return found[0]


def _relink(text: str, source_dir: str, target_dir: str) -> str:
    """Relative links and images of a markdown cell moved from ``source_dir`` to ``target_dir``."""
    def move(path: str) -> str:
        if re.match(r"^([a-z]+:|#|/)", path):
            return path
        return posixpath.relpath(posixpath.normpath(posixpath.join(source_dir, path)), target_dir)

    def sub(m: re.Match) -> str:
        head, path, tail = (m.group(1), m.group(2), m.group(3)) if m.group(1) else (m.group(4), m.group(5), m.group(6))
        return head + move(path) + tail

    return _LINK.sub(sub, text)


def _retitle(nb: dict, chapter: str, target: str, title: str, note: str) -> None:
    """The first markdown cell: its ``# title`` replaced, its badge pointing at ``target``, ``note``
    after the badge line, its links moved to ``target``'s folder."""
    for cell in nb["cells"]:
        if cell["cell_type"] == "markdown":
            _set_text(cell, _relink(_text(cell), SOURCES, posixpath.dirname(target)))
    first = next((c for c in nb["cells"] if c["cell_type"] == "markdown"), None)
    if first is None or not _text(first).startswith("# "):
        raise PageError(f"{chapter}: the first markdown cell must start with the chapter's '# title'")
    head, _, rest = _text(first).partition("\n")
    if not _BADGE.search(rest):
        raise PageError(f"{chapter}: the first markdown cell has no Colab badge to point at {target}")
    own = f"{SOURCES}/{chapter}.ipynb"
    badge_line = next(line for line in rest.split("\n") if _BADGE.search(line))
    moved = _BADGE.sub(lambda m: m.group(1) + (target if m.group(2) == own else m.group(2)), badge_line)
    rest = rest.replace(badge_line, moved + "\n\n" + note, 1)
    _set_text(first, title.format(title=head[2:]) + "\n" + rest)


def _relabel(nb: dict, prefix: str) -> None:
    """Prefix the labels the page defines (``(name)=``), and its references to them, with ``prefix``:
    the toy page defines the same labels, and the book needs each once."""
    cells = [c for c in nb["cells"] if c["cell_type"] == "markdown"]
    own = {m.group(1) for c in cells for m in _LABEL.finditer(_text(c))}
    if not own:
        return
    names = "|".join(re.escape(n) for n in sorted(own, key=len, reverse=True))
    target = re.compile(rf"(^\(|{{ref}}`(?:[^`<]*<)?)({names})(\)=|>?`)", re.M)
    for c in cells:
        _set_text(c, target.sub(lambda m: f"{m.group(1)}{prefix}-{m.group(2)}{m.group(3)}", _text(c)))


def _literal(value) -> str:
    """A value as the chapters' parameters cells write it (strings in double quotes)."""
    return json.dumps(value, ensure_ascii=False) if isinstance(value, str) else repr(value)


def world_page(source: dict, chapter: str, world: World) -> dict:
    """The real-world page of ``chapter`` (module docstring), from its source notebook ``source``."""
    nb = copy.deepcopy(source)
    target = f"{SOURCES}/{world.name}/{chapter}.ipynb"
    note = (f"> **{world.title}.** This page is [the chapter](../{chapter}.ipynb) run on {world.title}: "
            f"{world.about}. The cell after the parameters cell sets the world's preset (`{world.name}`); the text "
            f"is the toy page's, the numbers and figures come from this run. Generated by `crosscoder pages` from "
            f"`{SOURCES}/{chapter}.ipynb`: edit that notebook, not this one.")
    _retitle(nb, chapter, target, "# {title} (" + world.title + ")", note)
    _relabel(nb, world.name)
    params = preset_parameters(chapter, world.name)
    lines = [f"# The {world.name} world's parameters (preset {world.name!r} of crosscoder_lib.book.presets), set by "
             "`crosscoder pages`.",
             f"# papermill replaces this cell with its own -p values: pass these too "
             f"(python -m crosscoder_lib.book.presets {chapter[:2]} {world.name} > p.yaml; papermill ... -f p.yaml).",
             *(f"{name} = {_literal(value)}" for name, value in params.items())]
    cell = {"cell_type": "code", "execution_count": None, "id": WORLD_CELL_ID,
            "metadata": {"tags": ["injected-parameters"]}, "outputs": [], "source": []}
    _set_text(cell, "\n".join(lines))
    at = _tagged(nb, "parameters") + 1
    nb["cells"].insert(at, cell)
    start = nb["cells"][at + 1]
    call = f'start_chapter("{chapter}", globals())'
    if call not in _text(start):
        raise PageError(f"{chapter}: the cell after the parameters cell must call {call}")
    _set_text(start, _text(start).replace(call, f'start_chapter("{chapter}", globals(), world="{world.name}")', 1))
    return nb


def _guards(tree: ast.AST) -> list[ast.If]:
    """``if not SOLUTIONS: raise ...`` statements at the top of a function's body."""
    return [node for node in ast.walk(tree) if isinstance(node, ast.If) and isinstance(node.test, ast.UnaryOp)
            and isinstance(node.test.op, ast.Not) and isinstance(node.test.operand, ast.Name)
            and node.test.operand.id == "SOLUTIONS" and len(node.body) == 1 and isinstance(node.body[0], ast.Raise)]


def exercise_cells(nb: dict) -> list[int]:
    """Indices of the code cells holding an exercise (a function guarded by ``if not SOLUTIONS``)."""
    found = []
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code" and "SOLUTIONS" in _text(cell):
            try:
                if _guards(ast.parse(_text(cell))):
                    found.append(i)
            except SyntaxError:  # an IPython magic: no exercise cell has one
                continue
    return found


def _note_solutions(cell: dict) -> None:
    lines = _text(cell).split("\n")
    for guard in sorted(_guards(ast.parse(_text(cell))), key=lambda g: -g.end_lineno):
        lines.insert(guard.end_lineno, " " * guard.col_offset + SOLUTION_NOTE)
    _set_text(cell, "\n".join(lines))


def exercise_version(source: dict, chapter: str) -> dict:
    """The exercise version of ``chapter`` (module docstring), from its source notebook ``source``."""
    nb = copy.deepcopy(source)
    target = f"{EXERCISES}/{chapter}.ipynb"
    n = len(exercise_cells(nb))
    note = (f"> **Exercise version** of [the chapter](../chapters/{chapter}.ipynb) ({n} exercise{'s' * (n != 1)}): "
            "`SOLUTIONS = False`, so each exercise raises `NotImplementedError` until you write its function; the "
            "checker at the end of its cell says at once whether it is right (`SOLUTIONS = True` uses the published "
            f"solutions). Generated by `crosscoder pages` from `{SOURCES}/{chapter}.ipynb`.")
    _retitle(nb, chapter, target, "# Exercises: {title}", note)
    first = nb["cells"][0]
    _set_text(first, re.sub(rf"\[{re.escape(EXERCISES_LINK)}\]\(([^)]*/blob/[^/)]+/){re.escape(target)}\)",
                            lambda m: f"[{CHAPTER_LINK}]({m.group(1)}{SOURCES}/{chapter}.ipynb)", _text(first)))
    params = nb["cells"][_tagged(nb, "parameters")]
    # " ?": the one space "False" is longer by, so the line's comment keeps its column
    text, count = re.subn(r"^SOLUTIONS = True\b ?", "SOLUTIONS = False", _text(params), flags=re.M)
    if count != 1:
        raise PageError(f"{chapter}: the parameters cell must set SOLUTIONS = True (one line) for its exercise version")
    _set_text(params, text)
    for i in exercise_cells(nb):
        _note_solutions(nb["cells"][i])
    return nb


def _dumps(nb: dict) -> str:
    return json.dumps(nb, sort_keys=True, indent=1, ensure_ascii=False) + "\n"


def generated(root: Path) -> dict[str, str]:
    """``{path relative to root: file text}`` of every generated notebook, from the sources under ``root``."""
    out = {}
    for key, chapter in CHAPTERS.items():
        path = root / SOURCES / f"{chapter}.ipynb"
        try:
            source = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise PageError(f"cannot read the source chapter {path}: {err}") from None
        try:
            for world in WORLDS:
                if key in preset_chapters(world.name):
                    out[f"{SOURCES}/{world.name}/{chapter}.ipynb"] = _dumps(world_page(source, chapter, world))
            out[f"{EXERCISES}/{chapter}.ipynb"] = _dumps(exercise_version(source, chapter))
        except PageError as err:
            raise PageError(f"{path.relative_to(root)}: {err}") from None
    return out


def _generated_folders() -> list[str]:
    return [*(f"{SOURCES}/{w.name}" for w in WORLDS), EXERCISES]


def stale(root: Path) -> list[str]:
    """What differs between the committed generated notebooks and the sources: one line per file."""
    want = generated(root)
    have = {p.relative_to(root).as_posix() for folder in _generated_folders() for p in (root / folder).glob("*.ipynb")}
    problems = [f"{p}: missing" for p in sorted(set(want) - have)]
    problems += [f"{p}: not generated from any chapter (remove it)" for p in sorted(have - set(want))]
    problems += [f"{p}: differs from its source chapter" for p in sorted(set(want) & have)
                 if (root / p).read_text() != want[p]]
    return problems


def write(root: Path) -> list[str]:
    """Write every generated notebook under ``root`` and remove stale ones; returns the paths changed."""
    want, changed = generated(root), []
    for folder in _generated_folders():
        for path in (root / folder).glob("*.ipynb"):
            if path.relative_to(root).as_posix() not in want:
                path.unlink()
                changed.append(path.relative_to(root).as_posix())
    for rel, text in want.items():
        path = root / rel
        if not path.is_file() or path.read_text() != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            changed.append(rel)
    return changed


def main(argv: list[str] | None = None) -> int:
    """``crosscoder pages [--check] [--root DIR]``: write (or check) the generated notebooks."""
    parser = argparse.ArgumentParser(prog="crosscoder pages", description="Write each chapter's real-world pages "
                                     "and its exercise version from book/chapters/<chapter>.ipynb.")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a generated notebook is stale")
    parser.add_argument("--root", type=Path, default=None, help="the book's checkout (default: the one around "
                        "the current folder)")
    args = parser.parse_args(argv)
    root = args.root or repo_root()
    if root is None:
        raise PageError("no book checkout (a folder holding _toc.yml) here or above: run it in the checkout, "
                        "or pass --root")
    if args.check:
        problems = stale(root)
        for line in problems:
            print(f"stale: {line}", file=sys.stderr)
        if problems:
            print("run `crosscoder pages` (make book runs it) and commit the notebooks", file=sys.stderr)
        return 1 if problems else 0
    for rel in write(root):
        print(f"wrote {rel}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
