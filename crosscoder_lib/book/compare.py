"""Both worlds and the paper side by side: one table per chapter, read from this build's results files.

A chapter's reproduction rows (``{"result", "paper", "ours"}``, :func:`crosscoder_lib.book.results.record`)
say the same thing in every world, so the comparison needs nothing but the files: its rows are the
results named in any world, its columns the paper and each world (the embedded toy first). The
real-world page is built after every toy page (``book/chapters/<world>/…`` sorts after the chapters),
so it finds the toy's results of the same build; the running page passes its own rows, which are not
written until its last cell. A world without a results file, or without a row, shows ``–`` and is
named under the table with the page that makes it; a FAST run's numbers are marked as such.

Use, in a chapter's last section::

    run.show_worlds(reproduction)   # reproduction: the rows this run will pass to run.finish
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

from crosscoder_lib.book.display import markdown_table, shown_path
from crosscoder_lib.book.results import EMBEDDED_WORLD, REAL_WORLDS, load, repo_root, results_dir, results_path
from crosscoder_lib.book.seeds import format_value

MISSING = "–"
WORLD_NAMES = {EMBEDDED_WORLD: "toy (embedded)", "smollm2": "SmolLM2-135M", "tinystories": "TinyStories-33M"}


class WorldComparison(NamedTuple):
    """``header`` and ``rows`` of the table (cells as text), ``values[world][result]`` as recorded
    (numbers or seed summaries, for a figure), and ``notes``: one line per missing or FAST world."""

    header: list[str]
    rows: list[list[str]]
    values: dict[str, dict[str, Any]]
    notes: list[str]

    def markdown(self) -> str:
        """The table, then the notes as a list (shown by :func:`show_worlds`)."""
        return markdown_table(self.header, self.rows) + "".join(f"\n\n- {n}" for n in self.notes)


def _page(chapter: str, world: str) -> str:
    return f"book/chapters/{chapter}.ipynb" if world == EMBEDDED_WORLD else f"book/chapters/{world}/{chapter}.ipynb"


def _world_rows(chapter: str, world: str, folder: Path | None, notes: list[str]) -> list[dict] | None:
    try:
        data = load(chapter, folder, world)
    except FileNotFoundError:
        where = shown_path(results_path(chapter, world, folder), repo_root())
        notes.append(f"{WORLD_NAMES.get(world, world)}: no results yet ({where}); run {_page(chapter, world)}")
        return None
    if data.get("fast"):
        notes.append(f"{WORLD_NAMES.get(world, world)}: a FAST smoke run (tiny sizes): its numbers mean nothing")
    return data.get("reproduction", [])


def world_comparison(chapter: str, current: tuple[str, list[dict]] | None = None, *,
                     worlds: tuple[str, ...] = (EMBEDDED_WORLD, *REAL_WORLDS[:1]),
                     folder: Path | None = None, current_fast: bool = False) -> WorldComparison:
    """The comparison of ``chapter`` across ``worlds`` (the toy and SmolLM2), from the results files in
    ``folder`` (default :func:`crosscoder_lib.book.results.results_dir`); ``current = (world, rows)``
    stands in for that world's file (the running page's rows, not yet written)."""
    folder = folder or results_dir()
    if current is not None and current[0] not in worlds:
        worlds = (*worlds, current[0])
    notes: list[str] = []
    by_world: dict[str, list[dict] | None] = {}
    for world in worlds:
        if current is not None and world == current[0]:
            by_world[world] = list(current[1])
            if current_fast:
                notes.append(f"{WORLD_NAMES.get(world, world)}: this page's FAST smoke run: its numbers mean nothing")
        else:
            by_world[world] = _world_rows(chapter, world, folder, notes)
    results, paper = [], {}
    values: dict[str, dict[str, Any]] = {w: {} for w in worlds}
    for world, rows in by_world.items():
        for row in rows or []:
            if row["result"] not in paper:
                results.append(row["result"])
                paper[row["result"]] = row["paper"]
            values[world][row["result"]] = row["ours"]
    header = ["Result", "Paper", *(WORLD_NAMES.get(w, w) for w in worlds)]
    rows = [[r, format_value(paper[r]), *(format_value(values[w][r]) if r in values[w] else MISSING for w in worlds)]
            for r in results]
    return WorldComparison(header, rows, values, notes)


def show_worlds(run, reproduction: list[dict], **kwargs) -> WorldComparison:
    """Display the comparison of ``run``'s chapter (a :class:`~crosscoder_lib.book.chapter.ChapterRun`)
    with this run's ``reproduction`` rows in its world's column, and return it."""
    from IPython.display import Markdown, display

    comparison = world_comparison(run.chapter, (run.world, reproduction), current_fast=run.fast, **kwargs)
    display(Markdown(comparison.markdown()))
    return comparison
