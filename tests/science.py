"""Science checks on the committed results of full runs: a finding asserted with a margin taken from the
seed intervals, so a test fails when the science changes, not when noise does.

A per-chapter science test reads the committed results of a (chapter, world) with :func:`committed` and
asserts on its numbers measured over seeds (``ChapterRun.record_seeds``: each seed's value, the mean and the
95 % Student-t half-width), e.g.::

    from science import assert_above, committed

    def test_the_penalty_concentrates_the_mlp_on_one_feature():
        results = committed("03_interaction_penalty")
        assert_above(results, "share_at_1000", "share_at_0", half_widths=3)

The margin of a comparison of two means is ``half_widths`` times the half-width of their difference,
``√(h_a² + h_b²)`` (two independent means; a plain number has half-width 0). A number that was measured
with fewer than :data:`MIN_SEEDS` seeds has no interval to take a margin from, and fails the check.

``$CROSSCODER_SCIENCE_RESULTS`` points :func:`committed` at another folder of results files (the test of
these checks runs one on a deliberately broken copy).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, NamedTuple

from crosscoder_lib.book.results import EMBEDDED_WORLD, results_path
from crosscoder_lib.book.seeds import is_summary

ROOT = Path(__file__).resolve().parents[1]
FOLDER_ENV = "CROSSCODER_SCIENCE_RESULTS"
MIN_SEEDS = 3


class Measured(NamedTuple):
    """A number as a check sees it: ``mean``, ``half_width`` (0 for a plain number), ``n`` seeds, and how
    to name it in a message."""

    mean: float
    half_width: float
    n: int
    label: str


def committed(chapter: str, world: str = EMBEDDED_WORLD) -> dict:
    """The committed results file of ``chapter`` in ``world`` (a full run's: FAST files are refused)."""
    folder = Path(os.environ.get(FOLDER_ENV) or ROOT / "book" / "results")
    path = results_path(chapter, world, folder)
    assert path.is_file(), f"no committed results for {chapter} in world {world!r} ({path.name}): run the " \
                           "chapter at its defaults (make book) and commit the file"
    data = json.loads(path.read_text())
    assert not data.get("fast"), f"{path.name} comes from a FAST run: a science check needs a full run's numbers"
    data["_where"] = f"{chapter} ({world})"
    return data


def metric(results: dict, name: str) -> Any:
    """``results["metrics"]`` at a dotted ``name`` (``"fidelity.keep_largest"``)."""
    value: Any = results["metrics"]
    for part in name.split("."):
        if not isinstance(value, dict) or part not in value:
            raise AssertionError(f"{results.get('_where', 'results')}: no metric {name!r}; metrics are "
                                 f"{sorted(results['metrics'])}")
        value = value[part]
    return value


def measured(results: dict, what: str | float) -> Measured:
    """``what`` (a metric name, or a number such as a chance level) as a :class:`Measured`."""
    if not isinstance(what, str):
        return Measured(float(what), 0.0, 0, f"{what:g}")
    value = metric(results, what)
    if not is_summary(value):
        raise AssertionError(f"{results.get('_where', 'results')}: {what} = {value!r} is one number, not measured "
                             f"over seeds; record it with ChapterRun.record_seeds over SEEDS (>= {MIN_SEEDS} seeds)")
    if value["n"] < MIN_SEEDS or value["half_width"] is None or not math.isfinite(value["half_width"]):
        raise AssertionError(f"{results.get('_where', 'results')}: {what} has {value['n']} seed(s); a margin needs "
                             f"an interval from >= {MIN_SEEDS}")
    label = f"{what} = {value['mean']:.4g} ± {value['half_width']:.2g} (n={value['n']})"
    return Measured(float(value["mean"]), float(value["half_width"]), int(value["n"]), label)


def assert_above(results: dict, high: str | float, low: str | float, half_widths: float = 3.0) -> None:
    """``high`` exceeds ``low`` by more than ``half_widths`` half-widths of their difference."""
    a, b = measured(results, high), measured(results, low)
    margin = half_widths * math.hypot(a.half_width, b.half_width)
    assert a.mean - b.mean > margin, (
        f"{results.get('_where', 'results')}: {a.label} is not above {b.label} by {half_widths:g} half-widths "
        f"(the difference {a.mean - b.mean:.4g} must exceed {margin:.4g})")


def assert_below(results: dict, low: str | float, high: str | float, half_widths: float = 3.0) -> None:
    """``low`` is below ``high`` by more than ``half_widths`` half-widths of their difference."""
    assert_above(results, high, low, half_widths)


def assert_between(results: dict, name: str, lowest: float, highest: float, half_widths: float = 1.0) -> None:
    """The interval ``mean ± half_widths·half-width`` of ``name`` lies inside ``[lowest, highest]``."""
    m = measured(results, name)
    low, high = m.mean - half_widths * m.half_width, m.mean + half_widths * m.half_width
    assert lowest <= low and high <= highest, (
        f"{results.get('_where', 'results')}: {m.label} ({half_widths:g} half-widths: [{low:.4g}, {high:.4g}]) "
        f"is not inside [{lowest:g}, {highest:g}]")


def reproduces(fresh: dict, recorded: dict, half_widths: float = 3.0, rel: float = 1e-6) -> list[str]:
    """Where a fresh run's metrics differ from the recorded ones: a seed summary by more than
    ``half_widths`` half-widths of the difference of the two means, a plain number by more than ``rel``
    (a deterministic number reproduces; only float round-off may differ), anything else at all."""
    problems = []

    def compare(name: str, a: Any, b: Any) -> None:
        if is_summary(a) and is_summary(b):
            margin = half_widths * math.hypot(a["half_width"], b["half_width"])
            if not abs(a["mean"] - b["mean"]) <= margin:
                problems.append(f"{name}: {a['mean']:.4g} against {b['mean']:.4g} (margin {margin:.3g})")
        elif isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys():
            for key in a:
                compare(f"{name}.{key}", a[key], b[key])
        elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
            for i, (x, y) in enumerate(zip(a, b)):
                compare(f"{name}[{i}]", x, y)
        elif isinstance(a, float) and isinstance(b, (int, float)) and not isinstance(b, bool):
            if not math.isclose(a, b, rel_tol=rel, abs_tol=1e-12) and not (math.isnan(a) and math.isnan(b)):
                problems.append(f"{name}: {a!r} against {b!r}")
        elif a != b:
            problems.append(f"{name}: {a!r} against {b!r}")

    for name in sorted(set(fresh["metrics"]) | set(recorded["metrics"])):
        compare(name, fresh["metrics"].get(name), recorded["metrics"].get(name))
    return problems
