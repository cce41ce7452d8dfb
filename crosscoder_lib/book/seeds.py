"""Numbers measured over several seeds: each seed's value, the mean and a 95 % interval.

A chapter that trains and evaluates ``n >= 3`` seeds records a :class:`SeedSummary` where it would
record one number (in ``metrics`` or as a reproduction row's ``"ours"``); the results file holds it
as a dict (``SeedSummary._asdict()``, the results format)::

    {"seeds": [0, 1, 2], "values": [0.71, 0.69, 0.74], "mean": 0.7133, "half_width": 0.0625,
     "n": 3, "confidence": 0.95, "interval": "student-t"}

and the README's table shows it as ``0.713 ± 0.063 (n=3)`` (:func:`format_value`). A single
number keeps working everywhere: it is shown as it is.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from scipy import stats


class SeedSummary(NamedTuple):
    """One quantity over seeds: ``values[i]`` was measured with ``seeds[i]``; ``mean`` and the
    interval ``mean ± half_width`` at ``confidence`` (``half_width`` is NaN for one seed)."""

    seeds: list[int]
    values: list[float]
    mean: float
    half_width: float
    n: int
    confidence: float
    interval: str = "student-t"

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width

    def cell(self, digits: int = 3) -> str:
        """``"0.713 ± 0.063 (n=3)"`` (the reproduction table's format)."""
        return format_value(self._asdict(), digits)

    def __format__(self, spec: str) -> str:
        """``format(s, ".2f")`` is ``"0.71 ± 0.06 (n=3)"``: the mean and the half-width in ``spec``
        (so a chapter glues or prints a seed summary as it would one number); ``""`` is :meth:`cell`."""
        if not spec:
            return self.cell()
        if self.n == 1 or not math.isfinite(self.half_width):
            return f"{self.mean:{spec}} (n={self.n})"
        return f"{self.mean:{spec}} ± {self.half_width:{spec}} (n={self.n})"


def summarize_seeds(values: Mapping[int, float] | Sequence[float], confidence: float = 0.95,
                    seeds: Sequence[int] | None = None) -> SeedSummary:
    """The mean of ``values`` (a ``{seed: value}`` mapping, or a sequence measured with ``seeds``,
    default ``0, 1, …``) and a two-sided Student-t interval: ``half_width = t_{(1+c)/2, n-1} · s / √n``
    with ``s`` the sample standard deviation (``n - 1`` in its denominator). The t interval assumes
    the seeds' values are roughly normal; with 3 seeds its half-width is 2.48 standard deviations
    (``t_{0.975, 2} = 4.30``, over ``√3``), so it is wide by design: few seeds, honest uncertainty.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if isinstance(values, Mapping):
        if seeds is not None:
            raise ValueError("pass the seeds either as the mapping's keys or as seeds=, not both")
        seeds, values = list(values), list(values.values())
    values = [float(v) for v in values]
    seeds = list(range(len(values))) if seeds is None else [int(s) for s in seeds]
    if not values:
        raise ValueError("summarize_seeds needs at least one value")
    if len(seeds) != len(values) or len(set(seeds)) != len(seeds):
        raise ValueError(f"need one distinct seed per value; got seeds {seeds} for {len(values)} values")
    n = len(values)
    mean = math.fsum(values) / n
    if n == 1:
        half = math.nan
    else:
        sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
        half = float(stats.t.ppf((1 + confidence) / 2, n - 1)) * sd / math.sqrt(n)
    return SeedSummary(seeds, values, mean, half, n, confidence)


def is_summary(value: Any) -> bool:
    """Whether ``value`` is a seed summary as the results files hold it (or a :class:`SeedSummary`)."""
    return isinstance(value, SeedSummary) or (isinstance(value, Mapping) and {"mean", "half_width", "n"} <= set(value))


def format_value(value: Any, digits: int = 3) -> str:
    """A table cell: ``mean ± half-width (n=…)`` for a seed summary (the half-width to 2
    significant digits), a float to ``digits`` significant digits, anything else as text."""
    if isinstance(value, SeedSummary):
        value = value._asdict()
    if is_summary(value):
        if value["n"] == 1 or value["half_width"] is None or not math.isfinite(value["half_width"]):
            return f"{value['mean']:.{digits}g} (n={value['n']})"
        return f"{value['mean']:.{digits}g} ± {value['half_width']:.2g} (n={value['n']})"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)
