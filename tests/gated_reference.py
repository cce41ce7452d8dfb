"""Brute-force float64 reference for feature interactions inside a GATED MLP, for tests/test_gated.py.

    MLP_l(u) = (act(u W_gate + b_gate) ⊙ (u W_up + b_up)) W_down + b_down

Copied and trimmed from the derivation's reference (scratch/gated/gated_reference.py, checked there
by 60 tests: soundness proofs, finite differences, the box's supremum), plus the ablation schemes
and the ℓ2 form. Explicit Python loops over blocks, tokens, neurons and slots, scalar arithmetic:
slow, for small tensors. A crosscoder reconstructs ``û = Σ_v a_v d_v + b_dec``; per block ``l``,
token ``t``, neuron ``n`` and active slot ``s`` (feature ``v = idx[t, s]``)::

    p_g[l,t,n,s] = a[t,s] · (d_v W_gate)[n]        p_u[l,t,n,s] = a[t,s] · (d_v W_up)[n]
    c = |p_g| + |p_u|                               β_g = b_dec W_gate + b_gate, β_u likewise

Conventions as ``crosscoder_lib.interactions``: a slot with ``val == 0`` is padding, never a feature;
the dominant slot is ``argmax c`` over active slots, lowest slot on ties, 0 with no active slot.
Activations are named as in ``transformers``' ``ACT2FN`` and written out here with the math module.
``Lip(act)`` is the library's (tested against closed forms in test_gated.py), so that the
reference and the library multiply by the same constant.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from crosscoder_lib.interactions.activation import lipschitz

F64 = torch.float64


def act_scalar(x: float, name: str) -> float:
    """``act(x)`` on a Python float (math module)."""
    if name == "silu":
        return x / (1.0 + math.exp(-x)) if x >= 0 else x * math.exp(x) / (1.0 + math.exp(x))
    if name == "gelu":
        return 0.5 * x * (1.0 + math.erf(x / math.sqrt(2.0)))
    if name == "gelu_new":
        return 0.5 * x * (1.0 + math.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))
    if name == "relu":
        return max(x, 0.0)
    if name == "linear":
        return x
    raise ValueError(f"unknown activation {name!r}")


def act(x: torch.Tensor, name: str) -> torch.Tensor:
    """``act`` elementwise through :func:`act_scalar` (any shape)."""
    return torch.tensor([act_scalar(float(v), name) for v in x.reshape(-1)], dtype=F64).view(x.shape)


def act_argmin(name: str) -> float | None:
    """The minimiser of SiLU/GELU (bisection on the slope's closed form); None for monotone ones."""
    if name in ("relu", "linear"):
        return None
    slope = {
        "silu": lambda x: (s := 1 / (1 + math.exp(-x))) * (1 + x * (1 - s)),
        "gelu": lambda x: 0.5 * (1 + math.erf(x / math.sqrt(2))) + x * math.exp(-x * x / 2) / math.sqrt(2 * math.pi),
        "gelu_new": lambda x: (act_scalar(x + 1e-7, "gelu_new") - act_scalar(x - 1e-7, "gelu_new")) / 2e-7,
    }[name]
    a, b = -5.0, 0.0
    for _ in range(200):
        m = 0.5 * (a + b)
        a, b = (m, b) if slope(m) < 0 else (a, m)
    return 0.5 * (a + b)


def act_range(lo: float, hi: float, name: str) -> tuple[float, float]:
    vals = [act_scalar(lo, name), act_scalar(hi, name)]
    xs = act_argmin(name)
    if xs is not None and lo <= xs <= hi:
        vals.append(act_scalar(xs, name))
    return min(vals), max(vals)


class GatedMLP(NamedTuple):
    """Gated MLP weights of ``L`` blocks, acting on the MLP-input hookpoint (float64)."""

    W_gate_LDN: torch.Tensor
    b_gate_LN: torch.Tensor
    W_up_LDN: torch.Tensor
    b_up_LN: torch.Tensor
    W_down_LND: torch.Tensor
    b_down_LD: torch.Tensor
    act_fn: str = "silu"

    @property
    def n_blocks(self) -> int:
        return self.W_gate_LDN.shape[0]

    def w_LN(self) -> torch.Tensor:
        return self.W_down_LND.norm(dim=-1)

    def apply(self, u_D: torch.Tensor, l: int) -> torch.Tensor:
        """``MLP_l(u)`` straight from ``u`` (not through the contributions)."""
        zg = u_D @ self.W_gate_LDN[l] + self.b_gate_LN[l]
        zu = u_D @ self.W_up_LDN[l] + self.b_up_LN[l]
        return (act(zg, self.act_fn) * zu) @ self.W_down_LND[l] + self.b_down_LD[l]


def reconstruct(idx_TK, val_TK, W_dec_LHD, b_dec_LD, l: int) -> torch.Tensor:
    """``û[t] = Σ_{active s} val[t,s] W_dec[l, idx[t,s]] + b_dec[l]``."""
    out = []
    for t in range(idx_TK.shape[0]):
        u = b_dec_LD[l].clone()
        for s in range(idx_TK.shape[1]):
            if val_TK[t, s] != 0:
                u = u + val_TK[t, s] * W_dec_LHD[l, idx_TK[t, s]]
        out.append(u)
    return torch.stack(out)


def contributions(idx_TK, val_TK, W_dec_LHD, mlp: GatedMLP):
    """``(p_g, p_u, c)``, each ``[L, T, N, K]``, by loops (autograd flows through val and W_dec)."""
    L, (T, K), N = mlp.n_blocks, idx_TK.shape, mlp.W_gate_LDN.shape[2]
    zero = val_TK.new_zeros(())
    pg, pu = [], []
    for l in range(L):
        for t in range(T):
            for n in range(N):
                for s in range(K):
                    if val_TK[t, s] == 0:
                        pg.append(zero), pu.append(zero)
                        continue
                    d_v = W_dec_LHD[l, idx_TK[t, s]]
                    pg.append(val_TK[t, s] * torch.dot(d_v, mlp.W_gate_LDN[l, :, n]))
                    pu.append(val_TK[t, s] * torch.dot(d_v, mlp.W_up_LDN[l, :, n]))
    p_g, p_u = torch.stack(pg).view(L, T, N, K), torch.stack(pu).view(L, T, N, K)
    return p_g, p_u, p_g.abs() + p_u.abs()


def biases(b_dec_LD, mlp: GatedMLP) -> tuple[torch.Tensor, torch.Tensor]:
    bg = torch.stack([b_dec_LD[l] @ mlp.W_gate_LDN[l] + mlp.b_gate_LN[l] for l in range(mlp.n_blocks)])
    bu = torch.stack([b_dec_LD[l] @ mlp.W_up_LDN[l] + mlp.b_up_LN[l] for l in range(mlp.n_blocks)])
    return bg, bu


class Neuron(NamedTuple):
    """One (l, t, n) seen through dominant slot i."""

    a: float  # p_g,i + β_g
    b: float  # p_u,i + β_u
    S_g: float  # Σ_{j≠i} |p_g,j|
    S_u: float
    z_g: float  # Σ_j p_g,j + β_g
    z_u: float
    A_bar: float  # Σ_j |p_g,j| + |β_g|
    B_bar: float


def neuron(pg, pu, active, bg: float, bu: float, i: int) -> Neuron:
    rng = [j for j in range(len(pg)) if active[j]]
    return Neuron(
        a=(pg[i] if active[i] else 0.0) + bg, b=(pu[i] if active[i] else 0.0) + bu,
        S_g=sum(abs(pg[j]) for j in rng if j != i), S_u=sum(abs(pu[j]) for j in rng if j != i),
        z_g=sum(pg[j] for j in rng) + bg, z_u=sum(pu[j] for j in rng) + bu,
        A_bar=sum(abs(pg[j]) for j in rng) + abs(bg), B_bar=sum(abs(pu[j]) for j in rng) + abs(bu))


def neuron_bounds(x: Neuron, name: str) -> dict[str, float]:
    """Per-neuron bounds on ``|act(z_g) z_u − act(a) b|`` (the derivation's §2)."""
    L = lipschitz(name)
    fa = act_scalar(x.a, name)
    m, M = act_range(x.a - x.S_g, x.a + x.S_g, name)
    lipA = (abs(x.a) + x.S_g) * x.S_u + L * abs(x.b) * x.S_g
    lipB = abs(fa) * x.S_u + L * x.S_g * (abs(x.b) + x.S_u)
    return {"mid": abs(act_scalar(x.z_g, name) * x.z_u - fa * x.b),
            "box": max(abs(s * y - fa * x.b) for s in (m, M) for y in (x.b - x.S_u, x.b + x.S_u)),
            "lip": min(lipA, lipB), "lipC": x.A_bar * x.S_u + L * x.B_bar * x.S_g}


def _floats(x: torch.Tensor) -> list[float]:
    return [float(v) for v in x.detach()]


def dominant_slot(pg, pu, active) -> int:
    """Lowest active slot of the largest ``c = |p_g| + |p_u|``; 0 if none is active."""
    best, best_score = 0, None
    for s in range(len(pg)):
        score = abs(pg[s]) + abs(pu[s])
        if active[s] and (best_score is None or score > best_score):  # strict: ties keep the lower slot
            best, best_score = s, score
    return best


def dominant_slots(idx_TK, val_TK, W_dec_LHD, mlp: GatedMLP) -> torch.Tensor:
    p_g, p_u, _ = contributions(idx_TK, val_TK, W_dec_LHD, mlp)
    L, T, N, K = p_g.shape
    out = torch.zeros(L, T, N, dtype=torch.long)
    for l in range(L):
        for t in range(T):
            active = [bool(val_TK[t, s] != 0) for s in range(K)]
            for n in range(N):
                out[l, t, n] = dominant_slot(_floats(p_g[l, t, n]), _floats(p_u[l, t, n]), active)
    return out


def dominant_share(idx_TK, val_TK, W_dec_LHD, mlp: GatedMLP) -> float:
    """Mean over (l, t, n) of ``max_s c / Σ_s c`` (1 where ``Σ c = 0``)."""
    _, _, c = contributions(idx_TK, val_TK, W_dec_LHD, mlp)
    L, T, N, K = c.shape
    total = 0.0
    for l in range(L):
        for t in range(T):
            for n in range(N):
                vals = [float(c[l, t, n, s]) for s in range(K) if val_TK[t, s] != 0]
                total += max(vals) / sum(vals) if vals and sum(vals) > 0 else 1.0
    return total / (L * T * N)


def penalty(idx_TK, val_TK, W_dec_LHD, mlp: GatedMLP, form: str = "unweighted") -> torch.Tensor:
    """``L_int = mean_{l,t,n} w_n (Σ_s c − max_s c)`` (``w = 1`` or ``‖W_down[n]‖``), differentiable."""
    _, _, c = contributions(idx_TK, val_TK, W_dec_LHD, mlp)
    L, T, N, K = c.shape
    w = mlp.w_LN()
    terms = []
    for l in range(L):
        for t in range(T):
            act_s = [s for s in range(K) if val_TK[t, s] != 0]
            for n in range(N):
                if act_s:
                    row = torch.stack([c[l, t, n, s] for s in act_s])
                    terms.append((row.sum() - row.max()) * (w[l, n] if form == "weighted" else 1.0))
    total = torch.stack(terms).sum() if terms else val_TK.sum() * 0.0
    return total / (L * T * N)


def certified_weights(idx_TK, val_TK, W_dec_LHD, b_dec_LD, mlp: GatedMLP) -> torch.Tensor:
    """``c'_j = Lip·B̄·|p_g,j| + Ā·|p_u,j|`` per (l, t, n, j) (0 on padding)."""
    p_g, p_u, c = contributions(idx_TK, val_TK, W_dec_LHD, mlp)
    bg, bu = biases(b_dec_LD, mlp)
    L, T, N, K = c.shape
    Lp = lipschitz(mlp.act_fn)
    out = torch.zeros(L, T, N, K, dtype=F64)
    for l in range(L):
        for t in range(T):
            act_s = [s for s in range(K) if val_TK[t, s] != 0]
            for n in range(N):
                A_bar = sum(abs(float(p_g[l, t, n, s])) for s in act_s) + abs(float(bg[l, n]))
                B_bar = sum(abs(float(p_u[l, t, n, s])) for s in act_s) + abs(float(bu[l, n]))
                for s in act_s:
                    out[l, t, n, s] = Lp * B_bar * abs(float(p_g[l, t, n, s])) + A_bar * abs(float(p_u[l, t, n, s]))
    return out


def interaction_matrix(idx_TK, val_TK, W_dec_LHD, b_dec_LD, mlp: GatedMLP, H: int) -> torch.Tensor:
    """``M_l[i, j] = (1/T) Σ_t Σ_n [i dominant at (l,t,n)] ‖W_down[l][n]‖ c'[l,t,n,j]`` for active ``j ≠ i``,
    summed (never overwritten) over all neurons sharing a dominant feature; ``[L, H, H]``."""
    cj = certified_weights(idx_TK, val_TK, W_dec_LHD, b_dec_LD, mlp)
    dom = dominant_slots(idx_TK, val_TK, W_dec_LHD, mlp)
    L, T, N, K = cj.shape
    w = mlp.w_LN()
    M = torch.zeros(L, H, H, dtype=F64)
    for l in range(L):
        for t in range(T):
            for n in range(N):
                i = int(dom[l, t, n])
                if val_TK[t, i] == 0:
                    continue  # no active feature at this token
                for j in range(K):
                    if j != i and val_TK[t, j] != 0:
                        M[l, idx_TK[t, i], idx_TK[t, j]] += float(w[l, n]) * float(cj[l, t, n, j])
    return M / max(T, 1)


def token_scores(idx_TK, val_TK, W_dec_LHD, b_dec_LD, mlp: GatedMLP) -> torch.Tensor:
    """``T_l(t) = Σ_n ‖W_down[n]‖ Σ_{j≠i} c'[l,t,n,j]`` ``[L, T]``: the bound ``lipC``."""
    cj = certified_weights(idx_TK, val_TK, W_dec_LHD, b_dec_LD, mlp)
    dom = dominant_slots(idx_TK, val_TK, W_dec_LHD, mlp)
    L, T, N, K = cj.shape
    w = mlp.w_LN()
    out = torch.zeros(L, T, dtype=F64)
    for l in range(L):
        for t in range(T):
            for n in range(N):
                i = int(dom[l, t, n])
                out[l, t] += float(w[l, n]) * sum(float(cj[l, t, n, j]) for j in range(K)
                                                   if j != i and val_TK[t, j] != 0)
    return out


class Bounds(NamedTuple):
    mlp_out_LTD: torch.Tensor  # MLP(û), computed from û directly
    g_LTD: torch.Tensor
    actual_LT: torch.Tensor
    bounds: dict  # "mid", "box", "lip", "lipC" (ℓ1) and "mid_l2", "box_l2", "lip_l2" -> [L, T]


def explanation_and_bounds(idx_TK, val_TK, W_dec_LHD, b_dec_LD, mlp: GatedMLP, spectral_LN) -> Bounds:
    """``g(t) = Σ_n act(a_n) b_n W_down[n] + b_down``, ``ε = MLP(û) − g``, each per-neuron bound ``η``
    summed in ℓ1 (``Σ_n ‖W_down[n]‖ η_n``) and in ℓ2 (``spectral_LN[l] · ‖η‖₂``, ``spectral = ‖W_down‖₂``)."""
    p_g, p_u, _ = contributions(idx_TK, val_TK, W_dec_LHD, mlp)
    bg, bu = biases(b_dec_LD, mlp)
    L, T, N, K = p_g.shape
    w = mlp.w_LN()
    out, g = torch.zeros(L, T, mlp.W_down_LND.shape[2], dtype=F64), torch.zeros(L, T, mlp.W_down_LND.shape[2], dtype=F64)
    forms = ("mid", "box", "lip", "lipC")
    l1 = {k: torch.zeros(L, T, dtype=F64) for k in forms}
    sq = {k: torch.zeros(L, T, dtype=F64) for k in forms}
    for l in range(L):
        u_TD = reconstruct(idx_TK, val_TK, W_dec_LHD, b_dec_LD, l)
        for t in range(T):
            out[l, t] = mlp.apply(u_TD[t], l)
            active = [bool(val_TK[t, s] != 0) for s in range(K)]
            g_t = mlp.b_down_LD[l].clone()
            for n in range(N):
                pg, pu = _floats(p_g[l, t, n]), _floats(p_u[l, t, n])
                x = neuron(pg, pu, active, float(bg[l, n]), float(bu[l, n]), dominant_slot(pg, pu, active))
                g_t = g_t + act_scalar(x.a, mlp.act_fn) * x.b * mlp.W_down_LND[l, n]
                for k, v in neuron_bounds(x, mlp.act_fn).items():
                    l1[k][l, t] += float(w[l, n]) * v
                    sq[k][l, t] += v * v
            g[l, t] = g_t
    bounds = l1 | {f"{k}_l2": spectral_LN[:, None] * sq[k].sqrt() for k in forms if k != "lipC"}
    return Bounds(out, g, (out - g).norm(dim=-1), bounds)


def ablated_outputs(idx_TK, val_TK, W_dec_LHD, b_dec_LD, mlp: GatedMLP, l: int, scheme: str,
                    u_TN: torch.Tensor | None = None) -> torch.Tensor:
    """``[T, D]`` MLP output of block ``l`` when each neuron keeps the scheme's features (ranked by
    ``c``, lowest slot on ties), the same ones in both branches; ``u_TN``: drop_random's uniforms."""
    p_g, p_u, c = contributions(idx_TK, val_TK, W_dec_LHD, mlp)
    bg, bu = biases(b_dec_LD, mlp)
    T, K, N = idx_TK.shape[0], idx_TK.shape[1], p_g.shape[2]
    hidden = torch.zeros(T, N, dtype=F64)
    for t in range(T):
        act_s = [s for s in range(K) if val_TK[t, s] != 0]
        for n in range(N):
            ranked = sorted(act_s, key=lambda s: (-float(c[l, t, n, s]), s))
            kept = {"none": act_s, "zero": [], "keep_largest": ranked[:1], "drop_largest": ranked[1:],
                    "drop_second": [s for s in act_s if len(ranked) < 2 or s != ranked[1]],
                    "drop_random": [s for s in act_s if u_TN is None or s != act_s[int(float(u_TN[t, n]) * len(act_s))]]
                    if act_s else []}[scheme]
            zg = sum(float(p_g[l, t, n, s]) for s in kept) + float(bg[l, n])
            zu = sum(float(p_u[l, t, n, s]) for s in kept) + float(bu[l, n])
            hidden[t, n] = act_scalar(zg, mlp.act_fn) * zu
    return hidden @ mlp.W_down_LND[l] + mlp.b_down_LD[l]
