"""The checkers' common harness: run a reader's function on seeded cases, compare it with the library,
and say what is wrong.

A checker builds an :class:`Exercise` around the reader's function, runs it on each case with
:meth:`Exercise.call`, compares what came back with the library's answer (:meth:`Exercise.close`,
:meth:`Exercise.gradient`) and ends with :meth:`Exercise.passed`, which prints one line
(``Exercise 3.1 passed (6 cases)``). The first difference raises :class:`ExerciseFailed` naming the
exercise, the case, what is wrong, expected against got (a few numbers) and a hint: the hint of the
first :class:`Mistake` the wrong answer looks like, else the exercise's own.

A function that raises ``NotImplementedError`` (the exercise version of a chapter, ``SOLUTIONS =
False``) gets a short "not done yet" message; any other exception is reported with the line of the
reader's code it came from. Inside IPython/Jupyter an :class:`ExerciseFailed` is shown as its message
alone: the checker's own frames are not the reader's business.
"""

from __future__ import annotations

import math
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, NoReturn

import numpy as np
import torch

F64 = torch.float64
_PACKAGE_DIR = str(Path(__file__).resolve().parents[1])


class ExerciseFailed(AssertionError):
    """A reader's solution is wrong or not written yet; the message says which case, what and why."""

    def _render_traceback_(self) -> list[str]:
        # IPython (and so Jupyter and papermill) shows these lines instead of the checker's traceback,
        # and still reports the error under this class's name.
        return [f"{type(self).__name__}: {self}"]


class Mistake(NamedTuple):
    """A common mistake: ``looks_like(got)`` says whether a wrong answer has its signature."""

    hint: str
    looks_like: Callable[[Any], bool]


def gives(answer: Callable[[], Any], hint: str, rtol: float = 1e-6, atol: float = 1e-9) -> Mistake:
    """The mistake whose answer on this case is ``answer()`` (evaluated only once the answer is wrong)."""
    return Mistake(hint, lambda got: _allclose(got, answer(), rtol, atol))


def when(test: Callable[[torch.Tensor], bool], hint: str) -> Mistake:
    """The mistake recognised by ``test(got)``, ``got`` as a float64 tensor of the expected shape."""
    return Mistake(hint, test)


def as_f64(x) -> torch.Tensor:
    """``x`` (tensor, array, number) as a detached float64 CPU tensor."""
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", F64)
    return torch.as_tensor(np.asarray(x, dtype=np.float64))


def _allclose(got, expected, rtol: float, atol: float) -> bool:
    try:
        g, e = as_f64(got), as_f64(expected)
    except (TypeError, ValueError):
        return False
    return g.shape == e.shape and bool(torch.allclose(g, e, rtol=rtol, atol=atol, equal_nan=True))


def _difference(got: torch.Tensor, expected: torch.Tensor, rtol: float, atol: float) -> str:
    """Expected against got: the number itself for a scalar, else how many entries differ, the worst
    one and the first two others."""
    if expected.numel() == 1:
        return f"expected {expected.item():.6g}, got {got.item():.6g}"
    wrong = ~torch.isclose(got, expected, rtol=rtol, atol=atol, equal_nan=True)
    diff = (got - expected).abs().nan_to_num(nan=math.inf) * wrong
    worst = int(diff.flatten().argmax())
    shown = [worst] + [i for i in wrong.flatten().nonzero().flatten()[:3].tolist() if i != worst][:2]
    entries = []
    for i in shown:
        at = tuple(int(j) for j in np.unravel_index(i, tuple(expected.shape)))
        entries.append(f"at {list(at)} expected {expected[at].item():.6g}, got {got[at].item():.6g}")
    return f"{int(wrong.sum())} of {expected.numel()} entries differ; " + "; ".join(entries)


def _shape(shape, dims: str | None) -> str:
    names = f" ({', '.join(dims)})" if dims and len(dims) == len(shape) else ""
    return f"[{', '.join(str(s) for s in shape)}]{names}"


def _reader_line(err: BaseException) -> str:
    """Where in the reader's code ``err`` was raised (the innermost frame outside this package and
    the libraries), or ``""``."""
    frames = [f for f in traceback.extract_tb(err.__traceback__)
              if not f.filename.startswith(_PACKAGE_DIR) and "site-packages" not in f.filename]
    if not frames:
        return ""
    f = frames[-1]
    code = f": {f.line.strip()}" if f.line else ""
    return f" (line {f.lineno} of {f.name}{code})"


class Exercise:
    """One run of a checker over a reader's function ``fn`` (module docstring).

    ``number``: "3.1"; ``title``: what the reader writes; ``hint``: said when no known mistake fits.
    """

    def __init__(self, number: str, title: str, fn: Callable, hint: str):
        if not callable(fn):
            raise TypeError(f"the checker of Exercise {number} takes your function itself, e.g. "
                            f"check(my_function), not {type(fn).__name__}")
        self.number, self.title, self.fn, self.hint = number, title, fn, hint
        self.name = getattr(fn, "__name__", "your function")
        self.cases: list[str] = []

    # -- failing -------------------------------------------------------------------------------
    def fail(self, case: str, what: str, detail: str = "", hint: str | None = None,
             cause: BaseException | None = None) -> NoReturn:
        """Raise :class:`ExerciseFailed`: exercise, case, what is wrong, the numbers, a hint."""
        lines = [f"Exercise {self.number} ({self.title}), case \"{case}\": {what}."]
        if detail:
            lines.append(f"  {detail}")
        lines.append(f"  Hint: {hint or self.hint}")
        raise ExerciseFailed("\n".join(lines)) from cause

    # -- running -------------------------------------------------------------------------------
    def call(self, case: str, *args, **kwargs):
        """``fn(*args, **kwargs)`` on one case; its inputs must come back unchanged."""
        if case not in self.cases:
            self.cases.append(case)
        before = [(i, a.detach().clone()) for i, a in enumerate((*args, *kwargs.values()))
                  if isinstance(a, torch.Tensor)]
        try:
            out = self.fn(*args, **kwargs)
        except NotImplementedError:
                raise ExerciseFailed(
                f"Exercise {self.number} ({self.title}) is not done yet: write the body of {self.name}() below "
                f"its `if not SOLUTIONS` line (its docstring gives the formula and the shapes), then run the "
                f"cell again; SOLUTIONS = True in the parameters cell uses the published solution instead.") from None
        except ExerciseFailed:
            raise
        except Exception as err:
            self.fail(case, f"{self.name}() raised {type(err).__name__}: {err}{_reader_line(err)}", cause=err)
        inputs = (*args, *kwargs.values())
        for i, old in before:
            if not torch.equal(inputs[i].detach(), old):
                self.fail(case, f"{self.name}() changed its input number {i + 1} in place",
                          hint="work on copies (x = x.clone()) or out-of-place operations: the caller "
                               "still needs its tensors")
        if out is None:
            self.fail(case, f"{self.name}() returned None", hint="did you forget the return statement?")
        return out

    def unpack(self, case: str, got, names: tuple[str, ...]) -> tuple:
        """``got`` as a tuple of ``len(names)`` results (a function that returns several things)."""
        if not isinstance(got, (tuple, list)) or len(got) != len(names):
            n = f"{len(got)} things" if isinstance(got, (tuple, list)) else f"a {type(got).__name__}"
            self.fail(case, f"{self.name}() returned {n}, expected the tuple ({', '.join(names)})",
                      hint=f"end with return {', '.join(names)}")
        return tuple(got)

    # -- comparing -----------------------------------------------------------------------------
    def close(self, case: str, what: str, got, expected, *, mistakes: tuple[Mistake, ...] = (),
              rtol: float = 1e-7, atol: float = 1e-10, dims: str | None = None) -> None:
        """``got`` must equal ``expected`` (tensor, array or number) to ``rtol``/``atol``.

        ``dims``: the shape letters of ``expected`` (e.g. "TNK"), used in a shape message.
        """
        e = as_f64(expected)
        if isinstance(got, torch.Tensor) and got.is_complex():
            self.fail(case, f"{what} is complex")
        try:
            g = as_f64(got)
        except (TypeError, ValueError):
            self.fail(case, f"{what} is a {type(got).__name__}, not a number or tensor",
                      hint=f"return a tensor of shape {_shape(e.shape, dims)}")
        if g.numel() == 1 and e.numel() == 1:
            g = g.reshape(e.shape)
        if g.shape != e.shape:
            order = " (the same sizes in another order: check the order of the axes)" \
                if sorted(g.shape) == sorted(e.shape) else ""
            self.fail(case, f"{what} has shape {_shape(g.shape, None)}, expected {_shape(e.shape, dims)}{order}",
                      hint=self._hint(g, mistakes))
        if torch.allclose(g, e, rtol=rtol, atol=atol, equal_nan=True):
            return
        low = isinstance(got, torch.Tensor) and got.dtype in (torch.float32, torch.float16, torch.bfloat16)
        if low and torch.allclose(g, e, rtol=1e-3, atol=1e-6, equal_nan=True):
            self.fail(case, f"{what} is right only to {got.dtype} precision", _difference(g, e, rtol, atol),
                      hint="the inputs are float64: compute in their dtype (a fresh tensor needs "
                           "dtype=x.dtype, e.g. torch.zeros(H, H, dtype=G_LHN.dtype))")
        nan = " (it holds NaN where the answer does not: a 0/0?)" if g.isnan().any() and not e.isnan().any() else ""
        self.fail(case, f"{what} is wrong{nan}", _difference(g, e, rtol, atol), self._hint(g, mistakes))

    def _hint(self, got: torch.Tensor, mistakes: tuple[Mistake, ...]) -> str:
        for m in mistakes:
            try:
                if m.looks_like(got):
                    return m.hint
            except Exception:  # a test for another shape or kind of answer does not apply
                continue
        return self.hint

    def gradient(self, case: str, output, inputs: dict[str, torch.Tensor], expected: dict[str, torch.Tensor],
                 *, mistakes: tuple[Mistake, ...] = (), rtol: float = 1e-7, atol: float = 1e-10,
                 only: dict[str, torch.Tensor] | None = None) -> None:
        """The gradient of ``output`` (the reader's, as returned) with respect to each of ``inputs``
        must be ``expected[name]``; a non-scalar ``output`` is weighed by :func:`cotangent`.

        ``only[name]``: a bool mask of the entries that matter (e.g. not a padded slot's value,
        whose gradient depends on which id the slot happens to hold)."""
        if not isinstance(output, torch.Tensor) or not output.requires_grad:
            self.fail(case, f"the result of {self.name}() carries no gradient",
                      hint="keep it connected to the inputs: no .detach(), .item(), .numpy(), "
                           "torch.tensor(...) of results or in-place writes into a fresh tensor's .data")
        grads = torch.autograd.grad((output * cotangent(output)).sum(), list(inputs.values()),
                                    allow_unused=True)
        for (name, _), g in zip(inputs.items(), grads):
            if g is None:
                self.fail(case, f"no gradient reaches {name}",
                          hint=f"the result must depend differentiably on {name}: did you detach it "
                               f"(or a tensor computed from it)?")
            want = expected[name]
            if only and name in only:
                g, want = g * only[name], want * only[name]
            self.close(case, f"the gradient with respect to {name}", g, want, mistakes=mistakes, rtol=rtol, atol=atol)

    def passed(self) -> None:
        print(f"Exercise {self.number} passed ({len(self.cases)} cases)")


def cotangent(output: torch.Tensor) -> torch.Tensor:
    """Fixed weights ``1, 2, …`` (over the output's entries, scaled to mean 1) for checking the
    gradient of a non-scalar output: every entry counts, none cancels another."""
    if output.ndim == 0:
        return torch.ones((), dtype=output.dtype, device=output.device)
    w = torch.arange(1, output.numel() + 1, dtype=output.dtype, device=output.device)
    return (w * 2 / (output.numel() + 1)).view(output.shape)


def reference_gradient(output: torch.Tensor, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The library's gradient, weighed as :meth:`Exercise.gradient` weighs the reader's."""
    grads = torch.autograd.grad((output * cotangent(output)).sum(), list(inputs.values()))
    return dict(zip(inputs, grads))


def leaf(t: torch.Tensor) -> torch.Tensor:
    """A fresh leaf copy of ``t`` that requires grad (the reader's and the library's graphs never mix)."""
    return t.detach().clone().requires_grad_(True)
