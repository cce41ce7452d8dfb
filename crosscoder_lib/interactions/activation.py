"""The MLP activation ``σ`` and the three facts about it that the interaction bounds use.

- :func:`lipschitz`: ``Lip(σ) = sup |σ'|`` (every bound);
- :func:`activation_range`: ``σ([lo, hi])``, from the endpoints and the minimiser
  :func:`activation_argmin` (the ``box`` bound: the exact supremum over the box of pre-activations);
- :func:`bounded_by_identity`: ``|σ(x)| ≤ |x|`` (one of the gated MLP's two triangle-inequality
  forms needs it; SiLU, GELU and ReLU satisfy it).

All three are computed numerically in float64 from the activation itself (any name of Hugging
Face's ``ACT2FN``), each checked to hold, and a ``ValueError`` says so when it does not.
"""

from __future__ import annotations

import math
from functools import cache

import torch

F64 = torch.float64
# The grid every numerical check reads: σ is assumed to keep its trend outside it (checked at both ends).
_GRID = (-20.0, 20.0, 400_001)


def activation(z: torch.Tensor, act_fn: str) -> torch.Tensor:
    """``σ(z)`` for an activation named as in Hugging Face's ``ACT2FN`` (the name a bridge's
    ``cfg.act_fn`` holds: ``"gelu_new"`` for GPT-Neo/GPT-2, ``"silu"`` for Llama, ``"relu"``, ...)."""
    from transformers.activations import ACT2FN

    if act_fn not in ACT2FN:
        raise ValueError(f"unknown MLP activation {act_fn!r}; known: {sorted(ACT2FN)}")
    return ACT2FN[act_fn](z)


def _slope(z: torch.Tensor, act_fn: str) -> torch.Tensor:
    """``σ'(z)`` by autograd (signed), whatever the caller's grad mode."""
    with torch.enable_grad():
        z = z.detach().clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(activation(z, act_fn).sum(), z)
    return grad


@cache
def lipschitz(act_fn: str) -> float:
    """Global Lipschitz constant ``Lip(σ) = sup_z |σ'(z)|`` of the activation, computed numerically.

    ``σ'`` is evaluated in float64 by autograd on a grid of step 1e-4 over ``[-20, 20]``, the grid
    maximum is refined by a grid of step 1e-8 around it, and the result is rounded *up* by a
    relative 1e-9 so bounds that use it stay sound. Outside the grid the slope must have settled
    (|σ'| changing by < 1e-6 over the last unit at both ends, and not above the maximum found),
    else there is no global constant (e.g. ``relu2``) and a ``ValueError`` says so. ReLU gives 1;
    GELU gives ≈ 1.1289 (exact) / 1.1290 (tanh form), attained near ``z = √2``; SiLU ≈ 1.0998.
    """
    slope = lambda z: _slope(z, act_fn).abs()  # validates the name on first use
    z = torch.linspace(*_GRID, dtype=F64)
    s = slope(z)
    centre = z[s.argmax()].item()
    fine = torch.linspace(centre - 2e-4, centre + 2e-4, 40_001, dtype=F64)
    best = max(s.max().item(), slope(fine).max().item())
    ends = slope(torch.tensor([-20.0, -19.0, 19.0, 20.0], dtype=F64))
    if abs(ends[0] - ends[1]) > 1e-6 or abs(ends[3] - ends[2]) > 1e-6 or ends.max() > best:
        raise ValueError(f"activation {act_fn!r} has no global Lipschitz constant (its slope keeps "
                         "changing at |z| = 20); the interaction bounds need one")
    return math.nextafter(best * (1 + 1e-9), math.inf)


@cache
def activation_argmin(act_fn: str) -> float | None:
    """``x*`` where σ stops decreasing and starts increasing (SiLU −1.27846, GELU −0.75179), or None
    for a monotone σ (ReLU, tanh), whose range on an interval is read off its endpoints.

    Read off the sign of ``σ'`` on the grid of :func:`lipschitz` (``σ' ≤ 0`` before one point,
    ``≥ 0`` after it), then bisected to machine precision: ``σ'(x*) = 0``, so ``σ(x*)`` is the
    minimum to second order. Any other shape (two local minima) raises a ``ValueError``.
    """
    z = torch.linspace(*_GRID, dtype=F64)
    s = _slope(z, act_fn)
    if bool((s >= 0).all()) or bool((s <= 0).all()):
        return None
    last_neg, first_pos = int((s < 0).nonzero()[-1]), int((s > 0).nonzero()[0])
    if last_neg > first_pos:
        raise ValueError(f"activation {act_fn!r} does not decrease then increase (its slope changes sign "
                         "more than once on [-20, 20]); the box bound needs its range on an interval")
    a, b = float(z[last_neg]), float(z[last_neg + 1])
    for _ in range(200):
        m = 0.5 * (a + b)
        if m in (a, b):
            break
        a, b = (m, b) if _slope(torch.tensor([m], dtype=F64), act_fn).item() < 0 else (a, m)
    return 0.5 * (a + b)


def activation_range(lo: torch.Tensor, hi: torch.Tensor, act_fn: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(min, max)`` of σ on each interval ``[lo, hi]`` (elementwise, ``lo ≤ hi``).

    σ decreases up to :func:`activation_argmin` and increases after it, so the maximum is at an
    endpoint and the minimum is at ``x*`` when ``x*`` lies inside, else at an endpoint.
    """
    f_lo, f_hi = activation(lo, act_fn), activation(hi, act_fn)
    low, high = torch.minimum(f_lo, f_hi), torch.maximum(f_lo, f_hi)
    xs = activation_argmin(act_fn)
    if xs is not None:
        f_xs = activation(torch.tensor(xs, dtype=lo.dtype, device=lo.device), act_fn)
        low = torch.where((lo <= xs) & (xs <= hi), torch.minimum(low, f_xs), low)
    return low, high


@cache
def bounded_by_identity(act_fn: str) -> bool:
    """Whether ``|σ(x)| ≤ |x|`` (SiLU ``x·s(x)``, GELU ``x·Φ(x)``, ReLU: yes; sigmoid: no), checked
    on the grid of :func:`lipschitz` and on magnitudes from 1e-300 to 1e300."""
    x = torch.cat([torch.linspace(*_GRID, dtype=F64), torch.logspace(-300, 300, 601, dtype=F64)])
    x = torch.cat([x, -x])
    return bool((activation(x, act_fn).abs() <= x.abs()).all())
