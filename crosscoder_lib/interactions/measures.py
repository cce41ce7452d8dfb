"""Feature interactions inside MLPs: contributions, dominant share, penalty, matrix, token scores.

SPEC §3. For block ``l``, token ``t``, neuron ``n`` and feature ``v`` active at ``t``, the
**per-feature pre-activation contribution** is

    p[l, t, n, v] = a[t, v] · G_l[v, n],      G_l = W_dec[:, slot(l)] @ W_in_l   ([H, N])

(``slot(l)`` is the MLP-input hookpoint, ``ln2.hook_normalized``) and the neuron's pre-activation is
``z[l, t, n] = Σ_v p[l, t, n, v] + β_l[n]`` with ``β_l = b_dec[slot(l)] @ W_in_l + b_in_l``. The
bias ``β`` is *not* a feature and is never counted as one. The **dominant feature** of ``(l, t, n)``
is ``i = argmax_v |p[l, t, n, v]|``.

Conventions used by every function here:

- Codes are read duck-typed: any object with ``idx_BK`` (long feature ids of a token's active
  slots) and ``val_BK`` (their activations; exactly 0 in padded slots). A padded slot is never a
  feature: it adds nothing to any sum, can never be chosen as a dropped or kept feature, and its
  index is never read.
- Everything is computed over each token's active slots only: memory ``O(T·K·N)`` (in chunks of
  tokens, so a few MB at a time), never ``O(T·N·H)``. ``G_l`` is formed once per call.
- Ties in ``argmax_v |p|`` go to the lowest slot (the order of ``idx_BK``; TopK orders slots by
  activation, so the larger activation wins). When every contribution of ``(l, t, n)`` is zero
  (a token with no active feature) the dominant slot is slot 0, which contributes nothing.
- The dominant share of such an ``(l, t, n)``, where ``Σ_v |p| = 0``, is defined as 1: the neuron
  sees no feature, so the feature-wise explanation is exact there (interaction term 0).
- Weights ``w_ln = ‖W_out[l][n]‖`` turn a pre-activation error into a residual-stream error bound
  (SPEC §3's bound); the pairwise matrix and token scores always use them, the penalty optionally.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal, NamedTuple

import torch

from crosscoder_lib.interactions.mlp import MLPWeights
from crosscoder_lib.lm.hookpoints import mlp_input_slots

PENALTY_FORMS = ("unweighted", "weighted")

# Elements of one [tokens, slots, neurons] work buffer: 2M floats (8 MB) keeps a chunk in cache.
_CHUNK_ELEMENTS = 1 << 21


class InteractionStats(NamedTuple):
    """What the trainer adds to its loss and logs (:func:`interaction_penalty`)."""

    penalty: torch.Tensor
    """Scalar ``L_int``, differentiable through ``codes.val_BK`` and ``W_dec_LHD``."""
    dominant_share: torch.Tensor
    """Scalar mean dominant share over ``(l, t, n)`` (detached; SPEC §3, the paper's Fig. 1 y-axis)."""


class InteractionMatrix(NamedTuple):
    """Pairwise interactions of :func:`interaction_matrix`."""

    per_block_LHH: torch.Tensor
    """``M_l[i, j]``, averaged over tokens, one matrix per block."""
    total_HH: torch.Tensor
    """``M[i, j] = Σ_l M_l[i, j]``."""
    n_tokens: int
    """Tokens averaged over (to merge results of several batches: weight each by it)."""


class TokenScores(NamedTuple):
    """Per-token interaction scores of :func:`token_interaction_scores`."""

    per_block_LT: torch.Tensor
    """``T_l(t) = Σ_n ‖W_out[l][n]‖ (Σ_v |p| − max_v |p|)``."""
    total_T: torch.Tensor
    """``T(t) = Σ_l T_l(t)``."""


# ----------------------------------------------------------------------------------------------
# Inputs


def unpack_codes(codes) -> tuple[torch.Tensor, torch.Tensor]:
    """``(idx_BK, val_BK)`` of codes (a ``SparseCodes`` or any object with ``.idx_BK`` and ``.val_BK``,
    or a pair ``(idx_BK, val_BK)``), checked: 2-D, same shape, integer ids, float values."""
    if hasattr(codes, "idx_BK") and hasattr(codes, "val_BK"):
        idx_BK, val_BK = codes.idx_BK, codes.val_BK
    elif isinstance(codes, (tuple, list)) and len(codes) == 2:
        idx_BK, val_BK = (torch.as_tensor(c) for c in codes)
    else:
        raise TypeError(f"codes must be a SparseCodes (with .idx_BK and .val_BK) or a pair "
                        f"(idx_BK, val_BK); got {type(codes).__name__}")
    if idx_BK.ndim != 2 or idx_BK.shape != val_BK.shape:
        raise ValueError(
            f"codes.idx_BK and codes.val_BK must both be [B, K]; got {tuple(idx_BK.shape)} and {tuple(val_BK.shape)}"
        )
    if idx_BK.dtype.is_floating_point or not val_BK.dtype.is_floating_point:
        raise TypeError(f"codes need integer idx_BK and float val_BK; got {idx_BK.dtype} and {val_BK.dtype}")
    return idx_BK.long(), val_BK


def checked_ids(idx_BK: torch.Tensor, val_BK: torch.Tensor, n_features: int) -> torch.Tensor:
    """Feature ids with padded slots pointed at feature 0 (never read: their value is 0).

    Raises ``ValueError`` for an active id outside ``[0, n_features)`` or a feature listed twice.
    """
    active = val_BK.detach() != 0
    idx_BK = torch.where(active, idx_BK, torch.zeros_like(idx_BK))
    if idx_BK.numel() and (idx_BK.min() < 0 or idx_BK.max() >= n_features):
        bad = idx_BK[(idx_BK < 0) | (idx_BK >= n_features)][0].item()
        raise ValueError(f"codes.idx_BK holds feature id {bad} at an active slot; the decoder has {n_features} features")
    if idx_BK.shape[1] > 1:
        # A feature listed twice at one token would count as two interacting features.
        marked = torch.where(active, idx_BK, -1 - torch.arange(idx_BK.shape[1], device=idx_BK.device))
        s = marked.sort(dim=1).values
        if (s[:, 1:] == s[:, :-1]).any():
            raise ValueError(
                "a feature appears twice among one token's active slots in codes.idx_BK; "
                "merge the duplicates (sum their values) before computing interactions"
            )
    return idx_BK


def active_slots_first(idx_BK: torch.Tensor, val_BK: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Move each token's active slots first (stable) and drop the slots that are padded in every token.

    After this, token ``t``'s active features are slots ``0 … a_t − 1`` in their original order.

    BatchTopK codes are padded to the batch's largest active count; trimming makes the cost scale
    with that count instead of the padded width. Values are gathered, so gradients flow through.
    """
    active = val_BK.detach() != 0
    if active.all():
        return idx_BK, val_BK
    k_max = max(int(active.sum(1).max()), 1)
    order = (~active).to(torch.int8).argsort(dim=1, stable=True)[:, :k_max]
    return idx_BK.gather(1, order), val_BK.gather(1, order)


def _chunk_tokens(n_slots: int, n_neurons: int, chunk_tokens: int | None) -> int:
    if chunk_tokens is not None:
        if chunk_tokens < 1:
            raise ValueError(f"chunk_tokens must be ≥ 1, got {chunk_tokens}")
        return chunk_tokens
    return max(1, _CHUNK_ELEMENTS // max(1, n_slots * n_neurons))


def _check_decoder(W_dec_LHD: torch.Tensor, mlp: MLPWeights) -> None:
    if W_dec_LHD.ndim != 3:
        raise ValueError(f"W_dec_LHD must be [L, H, D]; got shape {tuple(W_dec_LHD.shape)}")
    L, _, D = W_dec_LHD.shape
    if (L, D) != (mlp.W_in_LDN.shape[0], mlp.W_in_LDN.shape[1]):
        raise ValueError(
            f"W_dec_LHD {tuple(W_dec_LHD.shape)} does not match the MLP's W_in {tuple(mlp.W_in_LDN.shape)}: "
            "pass the decoder rows at the MLP-input slot of every block (L, H, D)"
        )


def neuron_weights(W_dec_LHD: torch.Tensor, mlp: MLPWeights) -> torch.Tensor:
    """``G_LHN[l] = W_dec_LHD[l] @ W_in_l``: feature ``v``'s pre-activation at neuron ``n`` per unit activation.

    ``W_dec_LHD`` holds the decoder rows at each block's MLP-input slot, in the model's units
    (``Crosscoder.decoder_slots_LHD(mlp_input_slots)``). Differentiable in ``W_dec_LHD``; the
    language model's ``W_in`` is frozen.
    """
    _check_decoder(W_dec_LHD, mlp)
    return torch.matmul(W_dec_LHD, _frozen_W_in(mlp, W_dec_LHD))


def _frozen_W_in(mlp: MLPWeights, like: torch.Tensor) -> torch.Tensor:
    return mlp.W_in_LDN.detach().to(device=like.device, dtype=like.dtype)


def mlp_input_decoder(crosscoder) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W_dec_LHD, b_dec_LD)``: a crosscoder's decoder rows and bias at each block's MLP input, in model units.

    Slots come from ``mlp_input_slots(crosscoder.cfg.hookpoints)``; the input scale is divided out,
    so ``codes → Σ_v a_v W_dec_LHD[l, v] + b_dec_LD[l]`` is ``crosscoder.decode(codes)`` at that slot.
    ``W_dec_LHD`` is differentiable through the crosscoder's weights.
    """
    slots = mlp_input_slots(crosscoder.cfg.hookpoints)
    W_dec_LHD = crosscoder.decoder_slots_LHD(slots)
    slots_t = torch.as_tensor(slots, device=crosscoder.b_dec_XD.device)
    b_dec_LD = crosscoder.b_dec_XD[slots_t] / crosscoder.input_scale_X[slots_t, None]
    return W_dec_LHD, b_dec_LD


def neuron_bias(b_dec_LD: torch.Tensor, mlp: MLPWeights) -> torch.Tensor:
    """``β_LN[l] = b_dec[slot(l)] @ W_in_l + b_in_l``: the part of the pre-activation that no feature carries."""
    W_in = mlp.W_in_LDN.to(device=b_dec_LD.device, dtype=b_dec_LD.dtype)
    return torch.einsum("ld,ldn->ln", b_dec_LD, W_in) + mlp.b_in_LN.to(b_dec_LD)


def _weights_LN(mlp: MLPWeights, like: torch.Tensor) -> torch.Tensor:
    return mlp.W_out_norms_LN().to(device=like.device, dtype=like.dtype)


def feature_contributions(codes, W_dec_LHD: torch.Tensor, mlp: MLPWeights) -> torch.Tensor:
    """``p_LTNK[l, t, n, k] = val[t, k] · G_l[idx[t, k], n]``: contributions of each token's active slots.

    Memory ``L·T·N·K`` (padded slots give 0): meant for short inputs and tests; the aggregate
    functions below work on long inputs in chunks. Differentiable in ``val`` and ``W_dec_LHD``.
    """
    idx_BK, val_BK = unpack_codes(codes)
    G_LHN = neuron_weights(W_dec_LHD, mlp)
    idx_BK = checked_ids(idx_BK, val_BK, G_LHN.shape[1])
    return torch.stack([block_contributions(idx_BK, val_BK, G_HN) for G_HN in G_LHN])


def block_contributions(idx_BK: torch.Tensor, val_BK: torch.Tensor, G_HN: torch.Tensor) -> torch.Tensor:
    """One block's ``p_TNK[t, n, k] = val[t, k] · G[idx[t, k], n]`` (ids already checked)."""
    return (val_BK[:, :, None] * G_HN[idx_BK]).transpose(1, 2)


# ----------------------------------------------------------------------------------------------
# The passes over (block, chunk of tokens) that every aggregate shares


def _abs_contributions(absG_HN, idx_cK, vabs_cK, buf) -> torch.Tensor:
    """``|p[t, k, n]| = |val[t, k]| · |G[idx[t, k], n]|`` gathered into the reused buffer ``buf``."""
    n, K = idx_cK.shape
    N = absG_HN.shape[1]
    absp = torch.index_select(absG_HN, 0, idx_cK.reshape(-1), out=buf[: n * K * N].view(n * K, N))
    return absp.view(n, K, N).mul_(vabs_cK[:, :, None])


class _Plan(NamedTuple):
    """Tokens sorted by active count, cut into chunks, each trimmed to its own largest count."""

    idx_BK: torch.Tensor  # rows in sorted order, active slots first
    vabs_BK: torch.Tensor  # |val| in the same order (detached)
    order_B: torch.Tensor  # original token of each sorted row
    chunks: list  # (slice of sorted rows, slots K_c kept)
    buffer_elements: int


def _plan(idx_BK: torch.Tensor, vabs_BK: torch.Tensor, n_neurons: int, chunk_tokens: int | None) -> _Plan:
    """Under BatchTopK a few tokens have many more features than the mean; sorting tokens by count
    lets each chunk pay for its own largest count instead of the batch's (``active_slots_first``
    must have been applied, so a chunk's active slots are its first ``K_c``)."""
    B, K = idx_BK.shape
    counts = (vabs_BK != 0).sum(1)
    order = counts.argsort(stable=True)
    counts_sorted = counts[order].tolist()
    c = _chunk_tokens(K, n_neurons, chunk_tokens)
    chunks = [(slice(a, min(a + c, B)), max(1, counts_sorted[min(a + c, B) - 1])) for a in range(0, B, c)]
    return _Plan(idx_BK[order], vabs_BK[order], order, chunks, min(c, B) * K * n_neurons)


class _Chunk(NamedTuple):
    block: int
    tokens: torch.Tensor  # original token indices of the chunk's rows
    idx_cK: torch.Tensor  # their feature ids, the chunk's K_c slots (active first)
    absp_cKN: torch.Tensor | None  # |p|, when asked for (overwritten by the next chunk)
    sum_cN: torch.Tensor  # Σ_k |p|
    max_cN: torch.Tensor  # max_k |p|
    dominant_cN: torch.Tensor  # slot of the dominant feature (lowest slot on ties), long


@torch.no_grad()
def _chunks(
    idx_BK: torch.Tensor, val_BK: torch.Tensor, W_dec_LHD: torch.Tensor, mlp: MLPWeights, chunk_tokens: int | None,
    keep_absp: bool
) -> Iterator[_Chunk]:
    """Σ_k|p|, max_k|p| and the dominant slot for every (block, token, neuron), chunk by chunk.

    ``|G_l|`` is formed one block at a time (memory ``H·N``, not ``L·H·N``). The dominant slot is
    read off ``(|p| == max) · (K-1-k)`` maximised over ``k`` (first slot on ties) because
    PyTorch's index-returning max reduction is ~10× slower than these passes on CPU.
    """
    L, N = W_dec_LHD.shape[0], mlp.W_in_LDN.shape[2]
    plan = _plan(idx_BK, val_BK.detach().abs().to(W_dec_LHD.dtype), N, chunk_tokens)
    buf = W_dec_LHD.new_empty(plan.buffer_elements)
    mask = torch.empty_like(buf) if keep_absp else None
    for l in range(L):
        absG_HN = neuron_weights(W_dec_LHD[l:l + 1].detach(), mlp.select(slice(l, l + 1)))[0].abs_()
        for sl, k in plan.chunks:
            idx = plan.idx_BK[sl, :k]
            absp = _abs_contributions(absG_HN, idx, plan.vabs_BK[sl, :k], buf)
            s, m = absp.sum(1), absp.amax(1)
            is_max = mask[: absp.numel()].view_as(absp).copy_(absp) if keep_absp else absp
            desc = torch.arange(k - 1, -1, -1, dtype=absG_HN.dtype, device=absG_HN.device)[None, :, None]
            dominant = (k - 1) - is_max.eq_(m[:, None, :]).mul_(desc).amax(1).long()
            yield _Chunk(l, plan.order_B[sl], idx, absp if keep_absp else None, s, m, dominant)
        del absG_HN


def _share_sum(sum_cN: torch.Tensor, max_cN: torch.Tensor) -> torch.Tensor:
    """``Σ max/sum`` with 0/0 (no feature reaches the neuron) counted as a share of 1."""
    return torch.div(max_cN, sum_cN).nan_to_num_(nan=1.0).sum(dtype=torch.float64)


# The penalty's sums and gradients, two ways: a fused C kernel (fast path, chosen once in
# _penalty_kernel) and chunked PyTorch (fallback). Both return (total, share, ∂/∂|val|, ∂/∂G).

_KERNEL_SOURCE = r"""
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#define SIGN(x) ((x) > 0.0f ? 1.0f : ((x) < 0.0f ? -1.0f : 0.0f))

/* Block l's columns [n0, n1) of the interaction penalty's max term, over every token t:
   s = sum_k |p|, m = max_k |p| with |p[t,k,n]| = vabs[t,k] * |G[idx[t,k], n]| over the token's
   count[t] active slots; out[0] += sum w_n (s - m), out[1] += sum share (m/s, 1 when s = 0).
   With grad_vabs: grad_vabs[t,k] -= sum_n [k maximal] w_n |G[idx,n]| / ties and
   R[h, n] -= sign(G[h, n]) [k maximal] w_n vabs[t,k] / ties (exact ties split evenly). */
int penalty_columns(const float* G, int64_t N, const int64_t* idx, const float* vabs,
                    const int64_t* count, int64_t B, int64_t K, const float* w,
                    int64_t n0, int64_t n1, double* out, float* grad_vabs, float* R)
{
    int64_t W = n1 - n0;
    float* s = (float*)malloc(sizeof(float) * (size_t)W);
    float* m = (float*)malloc(sizeof(float) * (size_t)W);
    int32_t* ties = (int32_t*)malloc(sizeof(int32_t) * (size_t)W);
    int32_t* first = (int32_t*)malloc(sizeof(int32_t) * (size_t)W);
    float* gk = (float*)calloc((size_t)(K > 0 ? K : 1), sizeof(float));
    if (!s || !m || !ties || !first || !gk) { free(s); free(m); free(ties); free(first); free(gk); return 1; }
    double total = 0.0, share = 0.0;
    for (int64_t t = 0; t < B; t++) {
        int64_t c = count[t];
        if (c == 0) { share += (double)W; continue; }
        const int64_t* it = idx + t * K;
        const float* vt = vabs + t * K;
        for (int64_t j = 0; j < W; j++) { s[j] = 0.0f; m[j] = 0.0f; ties[j] = 0; first[j] = 0; }
        if (!grad_vabs) {
            for (int64_t k = 0; k < c; k++) {
                const float* row = G + it[k] * N + n0;
                const float v = vt[k];
                for (int64_t j = 0; j < W; j++) {
                    float x = v * fabsf(row[j]);
                    s[j] += x;
                    m[j] = x > m[j] ? x : m[j];
                }
            }
        } else {  /* also the first maximal slot and the number of maximal slots */
            for (int32_t k = 0; k < (int32_t)c; k++) {
                const float* row = G + it[k] * N + n0;
                const float v = vt[k];
                for (int64_t j = 0; j < W; j++) {
                    float x = v * fabsf(row[j]);
                    int gt = x > m[j], eq = x == m[j];
                    s[j] += x;
                    ties[j] = gt ? 1 : ties[j] + eq;
                    first[j] = gt ? k : first[j];
                    m[j] = gt ? x : m[j];
                }
            }
        }
        for (int64_t j = 0; j < W; j++) {
            float d = s[j] - m[j];
            total += (double)(w ? w[n0 + j] * d : d);
            share += s[j] > 0.0f ? (double)(m[j] / s[j]) : 1.0;
        }
        if (!grad_vabs) continue;
        for (int64_t j = 0; j < W; j++) {
            float cf = (w ? w[n0 + j] : 1.0f) / (float)ties[j];
            if (ties[j] == 1) {
                int32_t k = first[j];
                int64_t at = it[k] * N + n0 + j;
                gk[k] += cf * fabsf(G[at]);
                R[at] -= SIGN(G[at]) * cf * vt[k];
            } else {
                for (int32_t k = 0; k < (int32_t)c; k++) {
                    int64_t at = it[k] * N + n0 + j;
                    if (vt[k] * fabsf(G[at]) == m[j]) { gk[k] += cf * fabsf(G[at]); R[at] -= SIGN(G[at]) * cf * vt[k]; }
                }
            }
        }
        for (int64_t k = 0; k < c; k++) { grad_vabs[t * K + k] -= gk[k]; gk[k] = 0.0f; }
    }
    out[0] += total;
    out[1] += share;
    free(s); free(m); free(ties); free(first); free(gk);
    return 0;
}

/* For rows [h0, h1): r[h] = sum_n w_n |G[h, n]| (w NULL: 1), and R[h, n] = sign(G[h, n]) c[h] w_n, the
   sum term's part of the gradient with respect to G, which penalty_columns then completes; one pass
   over G writes every element of R, so R needs no zeroing. */
void row_sums_and_grad(const float* G, int64_t N, const float* w, const float* c, int64_t h0, int64_t h1,
                       float* r, float* R)
{
    for (int64_t h = h0; h < h1; h++) {
        const float* row = G + h * N;
        float* out = R + h * N;
        const float ch = c[h];
        float acc = 0.0f;
        for (int64_t n = 0; n < N; n++) {
            const float wn = w ? w[n] : 1.0f;
            acc += wn * fabsf(row[n]);
            out[n] = SIGN(row[n]) * (ch * wn);
        }
        r[h] = acc;
    }
}
"""

_kernel: dict = {}


def _cpu_flags() -> str:
    try:
        return next((ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")), "")
    except OSError:
        return ""


def _build_kernel():
    """Compile the C source once per machine into ``~/.cache/crosscoder_lib`` and load it."""
    cc = os.environ.get("CC", "cc")
    if shutil.which(cc) is None:
        raise RuntimeError(f"no C compiler ({cc!r}) on PATH")
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "crosscoder_lib"
    cache.mkdir(parents=True, exist_ok=True)
    last_err = None
    # -march=native: the binary is keyed by this CPU's flags; -ffp-contract=off keeps the products
    # of the two passes bit-identical, so "== max" finds the maximal slots exactly.
    for flags in (["-O3", "-march=native", "-ffp-contract=off"], ["-O3", "-ffp-contract=off"]):
        key = hashlib.sha256("\0".join([_KERNEL_SOURCE, cc, *flags, _cpu_flags()]).encode()).hexdigest()[:16]
        lib = cache / f"penalty_{key}.so"
        if not lib.exists():
            with tempfile.TemporaryDirectory() as tmp:
                src, out = Path(tmp) / "penalty.c", Path(tmp) / "penalty.so"
                src.write_text(_KERNEL_SOURCE)
                done = subprocess.run([cc, *flags, "-fPIC", "-shared", "-o", str(out), str(src)],
                                      capture_output=True, text=True)
                if done.returncode != 0:
                    last_err = done.stderr.strip()[-500:]
                    continue
                os.replace(out, lib)  # atomic: concurrent builders never see half a file
        so = ctypes.CDLL(str(lib))
        i64, ptr = ctypes.c_int64, ctypes.c_void_p
        so.penalty_columns.argtypes = [ptr, i64, ptr, ptr, ptr, i64, i64, ptr, i64, i64, ptr, ptr, ptr]
        so.penalty_columns.restype = ctypes.c_int
        so.row_sums_and_grad.argtypes = [ptr, i64, ptr, ptr, i64, i64, ptr, ptr]
        so.row_sums_and_grad.restype = None
        return so
    raise RuntimeError(f"the C compiler failed: {last_err}")


def _penalty_kernel():
    """The fast path of the penalty, chosen here once per process: the fused C kernel when a C
    compiler is available (and ``CROSSCODER_LIB_KERNEL`` is not ``0``), else None (PyTorch path)."""
    if "fn" not in _kernel:
        fn = None
        if os.environ.get("CROSSCODER_LIB_KERNEL", "1") != "0":
            try:
                fn = _build_kernel()
            except Exception as err:  # any failure: the PyTorch path computes the same thing
                warnings.warn(f"interaction penalty: fused C kernel unavailable ({err}); using the "
                              "PyTorch path", stacklevel=3)
        _kernel["fn"] = fn
    return _kernel["fn"]


def _pool(n: int) -> ThreadPoolExecutor:
    if _kernel.get("pool_size") != n:
        _kernel["pool"] = ThreadPoolExecutor(max_workers=n, thread_name_prefix="crosscoder_penalty")
        _kernel["pool_size"] = n
    return _kernel["pool"]


def _ranges(n: int, parts: int) -> list[tuple[int, int]]:
    bounds = [round(n * i / parts) for i in range(parts + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(parts) if bounds[i + 1] > bounds[i]]


def _penalty_sums_kernel(so, vabs_BK, G_LHN, idx_BK, w_LN, want_grad):
    """``(total, share, ∂total/∂|val|, ∂total/∂G)`` through the fused C kernel, in parallel threads
    (ctypes releases the GIL): the max term over column ranges, the G-sized passes over row ranges."""
    L, H, N = G_LHN.shape
    B, K = idx_BK.shape
    G, idx, vabs = G_LHN.detach().contiguous(), idx_BK.contiguous(), vabs_BK.detach().contiguous()
    w = w_LN.contiguous() if w_LN is not None else None
    count = (vabs != 0).sum(1).contiguous()
    threads = max(1, torch.get_num_threads())
    pool = _pool(threads)
    wp = (lambda l: w[l].data_ptr()) if w is not None else (lambda l: None)

    def run_all(calls) -> list:
        return [job.result() for job in [pool.submit(*c) for c in calls]]

    grad_vabs = grad_G = None
    if want_grad:
        # Sum term: ∂/∂|val| = Σ_l r_l[idx] with r_l[h] = Σ_n w_n |G_l[h, n]|, and ∂/∂G its c ⊗ w
        # times sign(G), both from one pass over G; the max term then subtracts its part from grad_G.
        c_H = torch.zeros(H, dtype=torch.float32).index_add_(0, idx.reshape(-1), vabs.reshape(-1))
        r_LH = torch.empty(L, H, dtype=torch.float32)
        grad_G = torch.empty(L, H, N, dtype=torch.float32)
        run_all([(so.row_sums_and_grad, G[l].data_ptr(), N, wp(l), c_H.data_ptr(), h0, h1, r_LH[l].data_ptr(),
                  grad_G[l].data_ptr()) for l in range(L) for h0, h1 in _ranges(H, threads)])
        grad_vabs = r_LH[:, idx].sum(0)
    cols = _ranges(N, threads)
    partial = torch.zeros(L, len(cols), B, K, dtype=torch.float32) if want_grad else None
    outs = [(ctypes.c_double * 2)(0.0, 0.0) for _ in range(L * len(cols))]
    status = run_all([(so.penalty_columns, G[l].data_ptr(), N, idx.data_ptr(), vabs.data_ptr(), count.data_ptr(), B, K,
                       wp(l), n0, n1, outs[l * len(cols) + i],
                       partial[l, i].data_ptr() if want_grad else None, grad_G[l].data_ptr() if want_grad else None)
                      for l in range(L) for i, (n0, n1) in enumerate(cols)])
    if any(status):
        raise MemoryError("interaction penalty kernel: out of memory")
    if want_grad:
        grad_vabs += partial.sum((0, 1))
    return sum(o[0] for o in outs), sum(o[1] for o in outs), grad_vabs, grad_G


def _penalty_sums_torch(vabs_BK, G_LHN, idx_BK, w_LN, want_grad, chunk_tokens):
    """The same in chunked PyTorch (tokens sorted by active count, see :func:`_plan`)."""
    L, H, N = G_LHN.shape
    absG_LHN = G_LHN.abs()
    grad_vabs = grad_G = grad_sorted = None
    if want_grad:
        r_LH = absG_LHN.sum(-1) if w_LN is None else torch.einsum("lhn,ln->lh", absG_LHN, w_LN)
        grad_vabs = r_LH[:, idx_BK].sum(0)
        c_H = torch.zeros(H, dtype=G_LHN.dtype, device=G_LHN.device).index_add_(0, idx_BK.reshape(-1), vabs_BK.reshape(-1))
        grad_G = c_H[None, :, None].expand_as(G_LHN).clone() if w_LN is None else c_H[None, :, None] * w_LN[:, None, :]
    plan = _plan(idx_BK, vabs_BK, N, chunk_tokens)
    buf = absG_LHN.new_empty(plan.buffer_elements)
    total = torch.zeros((), dtype=torch.float64)
    share = torch.zeros((), dtype=torch.float64)
    if want_grad:
        grad_sorted = torch.zeros_like(plan.vabs_BK)
    for l in range(L):
        w_N = w_LN[l] if w_LN is not None else None
        for sl, k in plan.chunks:
            idx, vabs = plan.idx_BK[sl, :k], plan.vabs_BK[sl, :k]
            absp = _abs_contributions(absG_LHN[l], idx, vabs, buf)
            s, m = absp.sum(1), absp.amax(1)
            share += _share_sum(s, m)
            total += (s - m).sum(dtype=torch.float64) if w_N is None else ((s - m) @ w_N).sum(dtype=torch.float64)
            if not want_grad:
                continue
            mask = absp.eq_(m[:, None, :])
            coef = mask.sum(1).reciprocal_()  # 1 / ties
            if w_N is not None:
                coef.mul_(w_N)
            mask.mul_(coef[:, None, :])
            num = torch.bmm(mask, m[:, :, None]).squeeze(2)  # = Σ_n coef |G| · |val|
            grad_sorted[sl, :k] -= torch.where(vabs > 0, num / vabs.clamp_min(torch.finfo(vabs.dtype).tiny), 0.0)
            grad_G[l].index_add_(0, idx.reshape(-1), mask.mul_(vabs[:, :, None]).view(-1, N), alpha=-1)
    if want_grad:
        grad_vabs[plan.order_B] += grad_sorted
        grad_G.mul_(G_LHN.sign())
    return float(total), float(share), grad_vabs, grad_G


class _PenaltySum(torch.autograd.Function):
    """``Σ_{l,t,n} w_ln (Σ_k |p| − max_k |p|)`` and ``Σ share``, with the gradient formed in the same pass.

    Inputs ``(|val|_BK, W_dec_LHD, W_in_LDN, idx_BK, w_LN or None, chunk_tokens)``, active slots
    first; ``G_l = W_dec_LHD[l] @ W_in_l`` is formed here. With ``|p[t,k,n]| = |val[t,k]|·|G_l[idx[t,k], n]|``
    and ``m[t,n] = max_k |p|``:

    - ``∂/∂|val[t,k]| = Σ_n w_n |G_l[idx[t,k], n]| − Σ_n w_n [k maximal] |G_l[idx[t,k], n]| / ties[t,n]``
      (the first sum is ``r_l[idx[t,k]]``, one reduction of ``|G|``);
    - ``∂/∂G_l[h,n] = sign(G_l[h,n]) · w_n (c[h] − Σ_{t,k: idx=h} [k maximal] |val[t,k]| / ties[t,n])``
      with ``c[h] = Σ_{t,k: idx=h} |val[t,k]|``, and ``∂/∂W_dec_LHD[l] = ∂/∂G_l @ W_in_lᵀ``.

    An exact tie between maximal slots splits the subgradient evenly (as ``amax`` does). The max
    term runs through the fused C kernel when there is one (:func:`_penalty_kernel`; float32 CPU
    tensors: one pass over each token's gathered rows), else chunked PyTorch; either way nothing of
    size ``T·K·N`` outlives a chunk or a token. The backward pass is one product with ``W_in`` whose
    ``[L, H, D]`` result is scaled by the incoming gradient: the ``[L, H, N]`` gradient of ``G`` is
    never copied or scaled, which is most of what the penalty costs beyond forming ``G``.
    """

    @staticmethod
    def forward(ctx, vabs_BK, W_dec_LHD, W_in_LDN, idx_BK, w_LN, chunk_tokens):
        G_LHN = torch.matmul(W_dec_LHD, W_in_LDN)
        want_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        fast = G_LHN.dtype == torch.float32 and G_LHN.device.type == "cpu"
        so = _penalty_kernel() if fast else None
        if so is not None:
            total, share, grad_vabs, grad_G = _penalty_sums_kernel(so, vabs_BK, G_LHN, idx_BK, w_LN, want_grad)
        else:
            total, share, grad_vabs, grad_G = _penalty_sums_torch(vabs_BK, G_LHN, idx_BK, w_LN, want_grad, chunk_tokens)
        if want_grad:
            ctx.save_for_backward(grad_vabs, grad_G, W_in_LDN)
        share_t = torch.tensor(share, dtype=torch.float64)
        ctx.mark_non_differentiable(share_t)
        return torch.tensor(total, dtype=G_LHN.dtype, device=G_LHN.device), share_t

    @staticmethod
    def backward(ctx, grad_total, _grad_share):
        grad_vabs, grad_G, W_in_LDN = ctx.saved_tensors
        grad_W = None
        if ctx.needs_input_grad[1]:
            grad_W = torch.matmul(grad_G, W_in_LDN.transpose(1, 2)).mul_(grad_total)
        return (grad_total * grad_vabs if ctx.needs_input_grad[0] else None, grad_W, None, None, None, None)


# ----------------------------------------------------------------------------------------------
# Public aggregates


def dominant_share(codes, W_dec_LHD: torch.Tensor, mlp: MLPWeights, chunk_tokens: int | None = None) -> torch.Tensor:
    """Mean over ``(l, t, n)`` of ``max_v |p[l,t,n,v]| / Σ_v |p[l,t,n,v]|`` (1 where the sum is 0).

    In ``[1/a_t, 1]`` for a token with ``a_t`` active features; 1 when one feature is active.
    """
    idx_BK, val_BK = unpack_codes(codes)
    with torch.no_grad():
        L, H, N = W_dec_LHD.shape[0], W_dec_LHD.shape[1], mlp.W_in_LDN.shape[2]
        _check_decoder(W_dec_LHD, mlp)
        idx_BK = checked_ids(idx_BK, val_BK, H)
        idx_BK, val_BK = active_slots_first(idx_BK, val_BK)
        total = sum(_share_sum(c.sum_cN, c.max_cN) for c in _chunks(idx_BK, val_BK, W_dec_LHD, mlp, chunk_tokens, False))
        return total / (L * idx_BK.shape[0] * N)


def interaction_penalty(
    codes,
    W_dec_LHD: torch.Tensor,
    mlp: MLPWeights,
    form: Literal["unweighted", "weighted"] = "unweighted",
    chunk_tokens: int | None = None,
) -> InteractionStats:
    """The interaction penalty ``L_int`` and the dominant share of a batch (SPEC §3).

    ``form="unweighted"`` (default, the reference code's form)::

        L_int = mean_{l,t,n} ( Σ_v |p[l,t,n,v]| − max_v |p[l,t,n,v]| )

    ``form="weighted"`` weights each neuron by ``w_ln = ‖W_out[l][n]‖``, the bound of SPEC §3 up to
    the constant ``Lip(σ)``: ``mean_{l,t,n} w_ln (Σ_v |p| − max_v |p|)``.

    Gradients flow through ``codes.val_BK`` and ``W_dec_LHD`` for any number of blocks (the
    reference code detached its penalty beyond 4 blocks). How: ``|p[t,k,n]| = |val[t,k]|·|G[idx[t,k], n]|``,
    the penalty is a sum over each token's active slots whose gradient :class:`_PenaltySum` forms
    chunk by chunk in its forward pass. Memory beyond ``G`` and its gradient is one chunk buffer:
    nothing of size ``L·T·K·N`` is ever held.
    """
    if form not in PENALTY_FORMS:
        raise ValueError(f"unknown penalty form {form!r}; choose one of {PENALTY_FORMS}")
    idx_BK, val_BK = unpack_codes(codes)
    _check_decoder(W_dec_LHD, mlp)
    W_in_LDN = _frozen_W_in(mlp, W_dec_LHD)  # G = W_dec_LHD @ W_in is formed inside _PenaltySum, which owns its gradient
    L, H, N = W_dec_LHD.shape[0], W_dec_LHD.shape[1], W_in_LDN.shape[2]
    idx_BK = checked_ids(idx_BK, val_BK, H)
    idx_BK, val_BK = active_slots_first(idx_BK, val_BK)
    B, K = idx_BK.shape
    w_LN = _weights_LN(mlp, W_dec_LHD) if form == "weighted" else None
    total, share = _PenaltySum.apply(val_BK.abs(), W_dec_LHD, W_in_LDN, idx_BK, w_LN, chunk_tokens)
    penalty = total / (L * B * N)
    return InteractionStats(penalty=penalty, dominant_share=(share / (L * B * N)).to(W_dec_LHD.dtype))


@torch.no_grad()
def interaction_matrix(
    codes, W_dec_LHD: torch.Tensor, mlp: MLPWeights, chunk_tokens: int | None = None
) -> InteractionMatrix:
    """Pairwise interactions ``M_l[i, j] = (1/T) Σ_t Σ_n [i dominant at (l,t,n)] ‖W_out[l][n]‖ |p[l,t,n,j]|``.

    Summed over ``j ≠ i`` active at ``t``, accumulated over every neuron that shares the dominant
    feature ``i`` (never overwritten), averaged over the ``T`` tokens, per block and summed over
    blocks. Per token the neuron sum is a ``[K, N] @ [N, K]`` product (dominant-slot one-hot times
    weighted ``|p|``), so cost is ``O(T·K²·N)`` and only ``T·K²`` entries are scattered (index_add).
    """
    idx_BK, val_BK = unpack_codes(codes)
    L, H, N = W_dec_LHD.shape[0], W_dec_LHD.shape[1], mlp.W_in_LDN.shape[2]
    _check_decoder(W_dec_LHD, mlp)
    idx_BK = checked_ids(idx_BK, val_BK, H)
    idx_BK, val_BK = active_slots_first(idx_BK, val_BK)
    B, K = idx_BK.shape
    w_LN = _weights_LN(mlp, W_dec_LHD)
    M_LHH = torch.zeros(L, H, H, dtype=W_dec_LHD.dtype, device=W_dec_LHD.device)
    active_BK = val_BK != 0
    onehot = None
    for c in _chunks(idx_BK, val_BK, W_dec_LHD, mlp, chunk_tokens, True):
        n, k = c.idx_cK.shape
        if onehot is None or onehot.numel() < n * k * N:
            onehot = W_dec_LHD.new_empty(n * K * N)
        slots = torch.arange(k, device=W_dec_LHD.device)
        # dom[t, a, n] = w_n · [slot a is dominant at (t, n)]
        dom = onehot[: n * k * N].view(n, k, N)
        dom.copy_(c.dominant_cN[:, None, :].expand(n, k, N)).sub_(slots[None, :, None]).eq_(0).mul_(w_LN[c.block])
        pair_cKK = torch.bmm(dom, c.absp_cKN.transpose(1, 2))  # [t, dominant slot a, other slot j]
        active = active_BK[c.tokens, :k]
        keep = (slots[:, None] != slots[None, :])[None] & active[:, None, :] & active[:, :, None]
        flat = (c.idx_cK[:, :, None] * H + c.idx_cK[:, None, :])[keep]
        M_LHH[c.block].view(-1).index_add_(0, flat, pair_cKK[keep])
    M_LHH /= max(B, 1)
    return InteractionMatrix(per_block_LHH=M_LHH, total_HH=M_LHH.sum(0), n_tokens=B)


@torch.no_grad()
def token_interaction_scores(
    codes, W_dec_LHD: torch.Tensor, mlp: MLPWeights, chunk_tokens: int | None = None
) -> TokenScores:
    """Per-token interaction ``T(t) = Σ_l Σ_n ‖W_out[l][n]‖ Σ_{j≠i} |p[l,t,n,j]|`` (i dominant at (l,t,n)).

    ``Σ_{j≠i} |p| = Σ_v |p| − max_v |p|``; ``Lip(σ)·T(t)`` bounds the summed MLP interaction error
    of token ``t`` over blocks (SPEC §3).
    """
    idx_BK, val_BK = unpack_codes(codes)
    L, H = W_dec_LHD.shape[0], W_dec_LHD.shape[1]
    _check_decoder(W_dec_LHD, mlp)
    idx_BK = checked_ids(idx_BK, val_BK, H)
    idx_BK, val_BK = active_slots_first(idx_BK, val_BK)
    w_LN = _weights_LN(mlp, W_dec_LHD)
    scores_LT = torch.zeros(L, idx_BK.shape[0], dtype=W_dec_LHD.dtype, device=W_dec_LHD.device)
    for c in _chunks(idx_BK, val_BK, W_dec_LHD, mlp, chunk_tokens, False):
        scores_LT[c.block, c.tokens] = (c.sum_cN - c.max_cN) @ w_LN[c.block]
    return TokenScores(per_block_LT=scores_LT, total_T=scores_LT.sum(0))
