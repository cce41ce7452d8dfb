"""Checkers of chapter 0 (why features interact): the largest slope of the activation, and the
interaction term of one neuron fed by several features.

The references are the library's: :func:`~crosscoder_lib.interactions.mlp.lipschitz` (the global
constant ``sup |σ'|``) and the MLP interaction bound of
:class:`~crosscoder_lib.interactions.object.MLPInteractions` on an MLP of one neuron whose
pre-activation is exactly the sum of the features' contributions plus the bias.
"""

from __future__ import annotations

import torch

from crosscoder_lib.crosscoder.activations import SparseCodes
from crosscoder_lib.exercises.harness import Exercise, gives, when
from crosscoder_lib.interactions.mlp import MLPWeights, activation, lipschitz
from crosscoder_lib.interactions.object import MLPInteractions

F64 = torch.float64

# (case, activation name, grid): fine grids around each activation's steepest point.
SLOPE_CASES = (
    ("GELU, tanh form (GPT-Neo's gelu_new), on [-6, 6]", "gelu_new", torch.linspace(-6, 6, 120_001, dtype=F64)),
    ("exact GELU on [-4, 4]", "gelu", torch.linspace(-4, 4, 80_001, dtype=F64)),
    ("SiLU on [-8, 8]", "silu", torch.linspace(-8, 8, 160_001, dtype=F64)),
    ("ReLU on [-3, 3]", "relu", torch.linspace(-3, 3, 6_001, dtype=F64)),
)


def _slopes(sigma, z: torch.Tensor) -> torch.Tensor:
    with torch.enable_grad():
        z = z.clone().requires_grad_(True)
        return torch.autograd.grad(sigma(z).sum(), z)[0].abs()


def check_max_slope(fn) -> None:
    """Exercise 0.1: ``fn(sigma, z) -> max |σ'(z)|`` over a grid, against ``lipschitz(act_fn)``."""
    ex = Exercise("0.1", "the largest slope of the activation", fn,
                  "σ' by autograd: z = z.clone().requires_grad_(True), then torch.autograd.grad(sigma(z).sum(), z)[0]; "
                  "the answer is the largest |σ'| on the grid, as a number")
    for case, act_fn, z in SLOPE_CASES:
        sigma = lambda x, a=act_fn: activation(x, a)  # noqa: E731
        got = ex.call(case, sigma, z)
        slopes = _slopes(sigma, z)
        ex.close(case, "the largest slope", got, lipschitz(act_fn), rtol=1e-6, atol=0.0, mistakes=(
            gives(lambda: z[slopes.argmax()], "that is where the slope peaks (the z of the maximum), not the slope "
                  "itself"),
            gives(lambda: (sigma(z) / z)[z != 0].abs().max(), "σ(z)/z is the slope of the line from the origin (a "
                  "secant); the Lipschitz constant is the largest slope of σ itself, σ'(z)"),
            gives(lambda: sigma(z).abs().max(), "that is the largest value of σ; the bound needs the largest slope"),
            gives(lambda: slopes.mean(), "take the maximum of |σ'| over the grid, not its mean"),
        ))
    ex.passed()


def _one_neuron_mlp(n_features: int, beta: float, act_fn: str) -> MLPWeights:
    """One block, one neuron: ``W_in`` sums the input, ``b_in = β``, ``W_out`` is a unit vector."""
    W_out = torch.zeros(1, 1, n_features, dtype=F64)
    W_out[0, 0, 0] = 1.0
    return MLPWeights(torch.ones(1, n_features, 1, dtype=F64), torch.full((1, 1), beta, dtype=F64), W_out,
                      torch.zeros(1, n_features, dtype=F64), act_fn)


def one_neuron_reference(p_BH: torch.Tensor, beta: float, act_fn: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(|σ(Σ p + β) − σ(p_i + β)|, Σ_{j≠i} |p_j|)`` per row, from the library's MLP bound.

    Feature ``v`` decodes to the unit vector ``e_v`` with activation ``p[b, v]``, so its contribution to
    the one neuron is ``p[b, v]``; the neuron's reach ``‖W_out‖`` is 1, so the bound's actual error is
    the neuron's error and its Lipschitz form is ``Lip(σ)`` times the interaction term.
    """
    B, H = p_BH.shape
    inter = MLPInteractions(torch.eye(H, dtype=F64)[None], _one_neuron_mlp(H, beta, act_fn),
                            torch.zeros(1, H, dtype=F64))
    bound = inter.bound(SparseCodes(torch.arange(H).expand(B, H), p_BH))
    return bound.actual_LT[0], bound.bound_lip_LT[0] / lipschitz(act_fn)


def _one_neuron_cases() -> list[tuple[str, torch.Tensor, float, str]]:
    g = torch.Generator().manual_seed(0)
    tie = torch.tensor([[1.5, -1.5], [-0.7, 0.7], [2.0, 2.0], [-1.0, -1.0]], dtype=F64)
    lonely = torch.tensor([[0.0, 0.0, 0.0], [1.3, 0.0, 0.0], [0.0, -2.0, 0.0]], dtype=F64)
    return [
        ("two features, as in the chapter (GELU)", torch.randn(64, 2, generator=g, dtype=F64) * 2.0, 0.3, "gelu_new"),
        ("five features and a negative bias", torch.randn(32, 5, generator=g, dtype=F64), -1.0, "gelu_new"),
        ("a tie: two contributions of equal size", tie, 0.2, "gelu_new"),
        ("no feature, or one feature alone", lonely, 0.5, "gelu_new"),
        ("ReLU", torch.randn(32, 3, generator=g, dtype=F64), 0.1, "relu"),
    ]


def _pick(p: torch.Tensor, signed: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(p_i, Σ_{j≠i} p_j)`` with ``i`` the first maximum of ``|p|`` (or of ``p``)."""
    i = (p if signed else p.abs()).argmax(1, keepdim=True)
    p_i = p.gather(1, i).squeeze(1)
    return p_i, p.sum(1) - p_i


def check_one_neuron(fn) -> None:
    """Exercise 0.2: ``fn(p_BH, beta, sigma) -> (error_B, term_B)`` against the library's bound."""
    ex = Exercise("0.2", "one neuron's feature-wise error and interaction term", fn,
                  "i = argmax_v |p[b, v]| (the first on ties); error = |σ(Σ_v p + β) − σ(p_i + β)|, "
                  "term = Σ_{j≠i} |p[b, j]|")
    for case, p, beta, act_fn in _one_neuron_cases():
        sigma = lambda x, a=act_fn: activation(x, a)  # noqa: E731
        error, term = ex.unpack(case, ex.call(case, p, beta, sigma), ("error_B", "term_B"))
        want_error, want_term = one_neuron_reference(p, beta, act_fn)
        z = p.sum(1) + beta
        p_i, rest = _pick(p)
        ps_i, _ = _pick(p, signed=True)
        ex.close(case, "the feature-wise error", error, want_error, rtol=1e-9, dims="B", mistakes=(
            gives(lambda: (sigma(z) - sigma(ps_i + beta)).abs(), "the dominant feature is the largest |p|, not the "
                  "largest p: a large negative contribution dominates too"),
            gives(lambda: (sigma(z) - sigma(p_i)).abs(), "the feature-wise explanation keeps the bias: σ(p_i + β), "
                  "since β is not a feature"),
            gives(lambda: sigma(z) - sigma(p_i + beta), "an error is a distance: take the absolute value"),
            when(lambda g: "tie" in case, "on a tie |p_1| = |p_2| the dominant feature is the first one (the lowest "
                 "index, as torch.argmax returns)"),
        ))
        ex.close(case, "the interaction term", term, want_term, rtol=1e-9, dims="B", mistakes=(
            gives(lambda: p.abs().sum(1), "the interaction term leaves out the dominant feature: Σ_{j≠i} |p_j|"),
            gives(lambda: rest.abs(), "sum the absolute values: |Σ_{j≠i} p_j| lets contributions cancel, and the "
                  "bound needs Σ_{j≠i} |p_j|"),
            gives(lambda: p.abs().sum(1) - ps_i.abs(), "the dominant feature is the largest |p|, not the largest p"),
        ))
    ex.passed()
