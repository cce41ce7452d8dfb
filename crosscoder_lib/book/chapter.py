"""The bookkeeping of one chapter execution: its parameters, world, device, time and results.

A chapter's first code cell after its ``parameters`` cell is::

    from crosscoder_lib import start_chapter
    run = start_chapter("03_interaction_penalty", globals())

:meth:`ChapterRun.from_globals` reads the parameters from the notebook's namespace itself (every
upper-case name holding a plain value: the parameters cell's, and those papermill injected after
it), checks them against the one schema (:mod:`crosscoder_lib.book.parameters`), writes the
``"fast"`` preset's values (of the run's world) into the namespace when ``FAST`` is true, resolves
``DEVICE``, applies the display policy (:func:`crosscoder_lib.book.display.quiet`) and records the
parameters as the run started. The last cell calls :meth:`ChapterRun.finish`, which writes the
results file of the chapter's world and says where, relative to the book.

A real-world page (``book/chapters/smollm2/…``, :mod:`crosscoder_lib.book.pages`) starts with
``start_chapter(name, globals(), world="smollm2")``: its world preset sits in a cell tagged
``injected-parameters``, which papermill *replaces* with its own ``-p`` values, so the page checks that
its ``MODEL`` still belongs to its world instead of silently running (and overwriting) the toy's.

A headline number is measured once per seed of ``SEEDS`` (:attr:`ChapterRun.seeds`) and recorded with
:meth:`ChapterRun.record_seeds`: each seed's value, the mean, the 95 % Student-t interval and ``n``
go into the results file, and the README's table shows ``mean ± half-width (n=3)``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, MutableMapping
from typing import Any

import torch

from crosscoder_lib.book import compare, display
from crosscoder_lib.book.parameters import check_parameters
from crosscoder_lib.book.presets import fast_overrides
from crosscoder_lib.book.results import describe_device, format_seconds, record, repo_root, world_of
from crosscoder_lib.book.seeds import SeedSummary, summarize_seeds

_PLAIN = (bool, int, float, str, list, type(None))


def resolve_device(device: str = "auto") -> torch.device:
    """``"auto"`` picks CUDA, then MPS, then the CPU; any other string is taken as a torch device."""
    if device != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def notebook_parameters(namespace: MutableMapping[str, Any]) -> dict[str, Any]:
    """The parameters in a notebook's namespace: upper-case names (no leading ``_``) with plain values."""
    return {name: value for name, value in namespace.items()
            if name.isupper() and not name.startswith("_") and isinstance(value, _PLAIN)}


ONE_STORY_PER_WINDOW = ("smollm2",)
"""Worlds whose windows hold one document each (``harvest_positions(..., pack=False)``): SmolLM2 makes
every ``<|endoftext|>`` an attention sink, so a packed window's later stories read a sink, not their
own start. The toy and GPT-Neo models pack documents into windows, as the paper does."""


class ChapterRun:
    """One chapter execution. Attributes: ``chapter``, ``params`` (as the run started, FAST's values
    applied), ``fast``, ``world`` (from ``MODEL``, :func:`crosscoder_lib.book.results.world_of`),
    ``device`` (resolved), ``glued`` (the numbers shown in the chapter's prose), ``seeded`` (the
    numbers measured over seeds, :meth:`record_seeds`), ``pack`` (whether windows pack several
    documents: :data:`ONE_STORY_PER_WINDOW`)."""

    def __init__(self, chapter: str, *, params: dict[str, Any], device: str | torch.device, fast: bool):
        self.chapter, self.params, self.fast = chapter, dict(params), bool(fast)
        self.world = world_of(self.params.get("MODEL", "none"))
        self.device = resolve_device(str(device))
        self.glued: dict[str, Any] = {}
        self.seeded: dict[str, SeedSummary] = {}
        self.started = time.perf_counter()
        self.load_at_start = os.getloadavg()[0]
        self.pack = self.world not in ONE_STORY_PER_WINDOW

    @classmethod
    def from_globals(cls, chapter: str, namespace: MutableMapping[str, Any], world: str | None = None) -> ChapterRun:
        """Start ``chapter`` from its notebook's ``globals()`` (see the module docstring). Call it
        before importing any upper-case name, so that the namespace holds parameters only.
        ``world``: the world the page belongs to (a real-world page passes it); a ``MODEL`` of
        another world raises before anything runs."""
        params = check_parameters(notebook_parameters(namespace), where=chapter)
        for name in ("DEVICE", "FAST"):
            if name not in params:
                raise ValueError(f"{chapter}: the parameters cell must set {name} (e.g. DEVICE = \"auto\", "
                                 "FAST = False); start_chapter reads the names defined before it")
        found = world_of(params.get("MODEL", "none"))
        if world is not None and found != world:
            raise ValueError(
                f"{chapter}: this is the {world} world's page, but MODEL = {params.get('MODEL')!r} belongs to the "
                f"{found} world. papermill replaces the page's world cell (tagged injected-parameters) with its "
                f"own -p values: pass the world's parameters too (python -m crosscoder_lib.book.presets "
                f"{chapter[:2]} {world} > p.yaml; papermill ... -f p.yaml -p FAST True), or run the toy page "
                f"book/chapters/{chapter}.ipynb")
        if params["FAST"]:
            params.update(fast_overrides(chapter, found))
        namespace.update(params)
        display.quiet()
        return cls(chapter, params=params, device=params["DEVICE"], fast=params["FAST"])

    @property
    def seeds(self) -> list[int]:
        """The seeds a headline number is measured with: ``SEEDS``, else ``[SEED]``."""
        return list(self.params.get("SEEDS", [self.params.get("SEED", 0)]))

    def record_seeds(self, name: str, values: Mapping[int, float]) -> SeedSummary:
        """Record a number measured once per seed (``{seed: value}``, e.g. over :attr:`seeds`) and
        return its summary: each seed's value, the mean, the 95 % Student-t interval and ``n``
        (``format(summary, ".2f")`` reads ``0.71 ± 0.06 (n=3)``, so it can be glued or printed).
        :meth:`finish` writes it into the results file's metrics under ``name``."""
        if name in self.seeded:
            raise ValueError(f"{self.chapter}: {name!r} is recorded over seeds twice; the results file keeps one")
        self.seeded[name] = summarize_seeds(values)
        return self.seeded[name]

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started

    def glue(self, name: str, value: Any, fmt: str = "") -> None:
        """Show ``format(value, fmt)`` wherever the chapter's markdown says ``{glue}`name``` (myst-nb
        glue), and record the value in the results file (returns nothing, so a cell ending with it
        displays nothing)."""
        if name in self.glued:
            raise ValueError(f"{self.chapter}: {name!r} is glued twice; the book would show only one of the values")
        self.glued[name] = value
        display.glue(name, value, fmt)

    def show_worlds(self, reproduction: list[dict[str, Any]], **kwargs) -> compare.WorldComparison:
        """Show this chapter's results in both worlds and the paper's, side by side: this run's
        ``reproduction`` rows (those it will pass to :meth:`finish`) in its world's column, the other
        world's from its results file of this build (:func:`crosscoder_lib.book.compare.world_comparison`)."""
        return compare.show_worlds(self, reproduction, **kwargs)

    def finish(self, metrics: dict[str, Any], reproduction: list[dict[str, Any]] | None = None) -> None:
        """Write the results file and say where, relative to the book (returns nothing: it is a
        chapter's last cell, and a returned path would be displayed under it)."""
        clash = sorted(set(metrics) & set(self.seeded))
        if clash:
            raise ValueError(f"{self.chapter}: metrics {clash} are also recorded over seeds (record_seeds); "
                             "pass each number once, the seed summary is written for you")
        path = record(
            self.chapter, {**metrics, **self.seeded}, params=self.params, device=self.device, run_seconds=self.seconds,
            fast=self.fast, reproduction=reproduction, world=self.world, glued=self.glued,
            load_average=(self.load_at_start, os.getloadavg()[0]),
        )
        print(f"results written to {display.shown_path(path, repo_root())} ({format_seconds(self.seconds)} "
              f"on {describe_device(self.device)}, world {self.world})")


def start_chapter(chapter: str, namespace: MutableMapping[str, Any], world: str | None = None) -> ChapterRun:
    """``ChapterRun.from_globals(chapter, namespace, world)``: the first line of every chapter's set-up cell."""
    return ChapterRun.from_globals(chapter, namespace, world)
