"""The penalty's faster paths: G in bfloat16 and for active rows only (opt in, checked against float32),
the Triton backend (its choice, its lazy import, its parity under Triton's interpreter), and the
buffers reused between steps."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from crosscoder_lib.crosscoder.activations import SparseCodes
from crosscoder_lib.interactions import kernels
from crosscoder_lib.interactions.engine import CHUNK_ELEMENTS, chunk_elements
from crosscoder_lib.interactions.kernels.buffers import GradientBuffers, Workspace
from crosscoder_lib.interactions.measures import interaction_penalty
from crosscoder_lib.interactions.mlp import GatedMLPWeights, MLPWeights
from crosscoder_lib.interactions.object import MLPInteractions

ROOT = Path(__file__).resolve().parents[1]
HAS_TRITON = importlib.util.find_spec("triton") is not None


def paper_like_case(L=2, H=300, D=48, N=96, B=128, K=24, seed=0, gated=False):
    """Ragged BatchTopK-like codes over a random MLP (mean L0 ≈ K/2), decoder rows of norm ~1."""
    g = torch.Generator().manual_seed(seed)
    W_in, W_out = torch.randn(L, D, N, generator=g) / D ** 0.5, torch.randn(L, N, D, generator=g) / N ** 0.5
    if gated:
        mlp = GatedMLPWeights(torch.randn(L, D, N, generator=g) / D ** 0.5, torch.zeros(L, N), W_in, torch.zeros(L, N),
                              W_out, torch.zeros(L, D), "silu")
    else:
        mlp = MLPWeights(W_in, torch.zeros(L, N), W_out, torch.zeros(L, D), "gelu_new")
    W_dec = torch.randn(L, H, D, generator=g) / D ** 0.5
    idx = torch.stack([torch.randperm(H // 2, generator=g)[:K] for _ in range(B)])  # half the features unused
    val = torch.rand(B, K, generator=g) * (torch.rand(B, K, generator=g) < 0.5)
    return SparseCodes(idx, val), W_dec, mlp


def run(codes, W_dec, mlp, **options):
    W = W_dec.clone().requires_grad_(True)
    v = codes.val_BK.clone().requires_grad_(True)
    stats = MLPInteractions(W, mlp).penalty(SparseCodes(codes.idx_BK, v), **options)
    stats.penalty.backward()
    return stats.penalty.item(), stats.dominant_share.item(), W.grad, v.grad


# -- G for the active rows only, and in bfloat16 -------------------------------------------------------

@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("form", ["unweighted", "weighted"])
def test_active_rows_give_the_all_rows_penalty_and_gradients(form, gated):
    codes, W_dec, mlp = paper_like_case(gated=gated)
    full = run(codes, W_dec, mlp, form=form)
    active = run(codes, W_dec, mlp, form=form, g_rows="active")
    assert active[0] == pytest.approx(full[0], rel=1e-6) and active[1] == pytest.approx(full[1], rel=1e-6)
    torch.testing.assert_close(active[2], full[2], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(active[3], full[3], rtol=1e-5, atol=1e-7)
    unused = torch.ones(W_dec.shape[1], dtype=torch.bool)
    unused[codes.idx_BK[codes.val_BK != 0]] = False
    assert unused.any() and torch.all(active[2][:, unused] == 0)


def dominant_flips(codes, W_dec, mlp) -> float:
    """Fraction of (block, token, neuron) with an active feature whose dominant feature changes
    when G is formed in bfloat16 instead of float32."""
    inter = MLPInteractions(W_dec, mlp)
    G32 = inter.G[0]
    G16 = torch.matmul(W_dec.to(torch.bfloat16), mlp.W_in_LDN.to(torch.bfloat16)).float()
    idx, val = codes.idx_BK, codes.val_BK
    p32 = (val[None, :, :, None] * G32[:, idx]).abs()  # [L, B, K, N]
    p16 = (val[None, :, :, None] * G16[:, idx]).abs()
    has = (val != 0).any(1)[None, :, None].expand(p32.shape[0], -1, p32.shape[-1])
    flips = (p32.argmax(2) != p16.argmax(2)) & has
    return flips.sum().item() / has.sum().item()


@pytest.mark.parametrize("gated", [False, True])
def test_bfloat16_g_stays_within_its_measured_tolerance(gated):
    """bfloat16 G (opt in): the penalty within 1 % of float32's, the share within 0.5 %, the
    gradients within a few percent, and few dominant features flip (only near-ties can)."""
    codes, W_dec, mlp = paper_like_case(gated=gated)
    p32, s32, gW32, gv32 = run(codes, W_dec, mlp)
    p16, s16, gW16, gv16 = run(codes, W_dec, mlp, g_precision="bfloat16")
    assert abs(p16 - p32) / p32 < 1e-2 and abs(s16 - s32) / s32 < 5e-3
    for a, b in ((gW16, gW32), (gv16, gv32)):
        assert (a - b).norm() / b.norm() < 5e-2
    if not gated:
        assert 0 <= dominant_flips(codes, W_dec, mlp) < 0.02
    fast = run(codes, W_dec, mlp, g_precision="bfloat16", g_rows="active")
    assert fast[0] == pytest.approx(p16, rel=1e-5)


def test_bad_g_options_are_named():
    codes, W_dec, mlp = paper_like_case(H=20, B=4, K=3)
    with pytest.raises(ValueError, match="g_precision 'float16'.*float32.*bfloat16"):
        MLPInteractions(W_dec, mlp).penalty(codes, g_precision="float16")
    with pytest.raises(ValueError, match="g_rows 'some'"):
        MLPInteractions(W_dec, mlp).penalty(codes, g_rows="some")


def test_float32_default_is_what_it_was():
    """The defaults (float32, all rows) are the interaction measure's own penalty, exactly."""
    codes, W_dec, mlp = paper_like_case()
    a = run(codes, W_dec, mlp)
    b = run(codes, W_dec, mlp, g_precision="float32", g_rows="all")
    ref = interaction_penalty(codes, W_dec, mlp)
    assert a[0] == b[0] == ref.penalty.item() and torch.equal(a[2], b[2]) and torch.equal(a[3], b[3])


# -- the Triton backend -----------------------------------------------------------------------------

def test_triton_backend_on_cpu_tensors_without_the_interpreter_says_what_to_do(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    codes, W_dec, mlp = paper_like_case(H=20, B=4, K=3)
    with kernels.use_backend("triton"), pytest.raises(RuntimeError, match="CUDA tensors.*TRITON_INTERPRET=1"):
        interaction_penalty(codes, W_dec, mlp)
    assert kernels.penalty_backend(torch.empty(0, dtype=torch.float64)) == "torch"  # not float32: never a kernel


def test_the_cpu_path_never_imports_triton():
    """Triton is imported only when its backend is asked for (it is not a requirement)."""
    code = ("import sys, torch; from crosscoder_lib.interactions.measures import interaction_penalty; "
            "sys.path.insert(0, 'tests'); from test_penalty_paths import paper_like_case; c, W, m = paper_like_case(H=20, B=4, K=3); "
            "interaction_penalty(c, W, m); print('triton' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env=os.environ | {"PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_status_names_the_gpu_backend():
    status = kernels.kernel_status()
    assert status.gpu_backend in ("triton", "torch")
    assert (status.gpu_reason is None) == (status.gpu_backend == "triton")
    with kernels.use_backend("torch"):
        assert kernels.kernel_status().gpu_backend == "torch"


PARITY = """
import sys
import torch
sys.path.insert(0, "tests")
from crosscoder_lib.interactions import kernels
from test_penalty_paths import paper_like_case, run
for gated in (False, True):
    for form in ("unweighted", "weighted"):
        case = paper_like_case(H=60, D=16, N=150, B=37, K=9, gated=gated)
        codes = case[0]
        codes.idx_BK[0, :2] = torch.tensor([3, 4]); case[1][:, 4] = case[1][:, 3]  # an exact tie
        codes.val_BK[0, :2] = 0.5
        with kernels.use_backend("torch"):
            ref = run(*case, form=form)
        with kernels.use_backend("triton"):
            assert kernels.penalty_backend(case[1]) == "triton"
            got = run(*case, form=form)
        assert abs(got[0] - ref[0]) <= 1e-5 * abs(ref[0]) and abs(got[1] - ref[1]) <= 1e-6 * abs(ref[1]), (got[:2], ref[:2])
        torch.testing.assert_close(got[2], ref[2], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(got[3], ref[3], rtol=1e-4, atol=1e-6)
print("parity ok")
"""


@pytest.mark.skipif(not HAS_TRITON, reason="Triton is not installed (it is optional: pip install triton)")
def test_triton_kernel_matches_the_pytorch_path_under_the_interpreter():
    """The GPU kernel, run by Triton's interpreter on CPU tensors, gives the PyTorch path's
    penalty, share and gradients (ragged codes, an exact tie, both forms, both MLP kinds)."""
    out = subprocess.run([sys.executable, "-c", PARITY], capture_output=True, text=True, cwd=ROOT,
                         env=os.environ | {"PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path]),
                                           "TRITON_INTERPRET": "1"}, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "parity ok" in out.stdout


def test_gpu_chunks_are_sized_by_memory_cpu_chunks_by_cache():
    assert chunk_elements("cpu") == CHUNK_ELEMENTS
    if torch.cuda.is_available():
        assert chunk_elements("cuda") >= CHUNK_ELEMENTS


# -- buffers reused between steps -------------------------------------------------------------------

def test_workspace_reuses_a_buffer_only_when_nothing_holds_it():
    ws = Workspace()
    a = ws.get("x", (3, 4), torch.float32, "cpu")
    held = ws.get("x", (3, 4), torch.float32, "cpu")
    assert held.data_ptr() != a.data_ptr()  # `a` is still held
    ptr = held.data_ptr()
    del a, held
    again = ws.get("x", (3, 4), torch.float32, "cpu")
    assert again.data_ptr() == ptr
    view = again[0]
    del again
    assert ws.get("x", (3, 4), torch.float32, "cpu").data_ptr() != ptr  # a view of it is alive
    del view
    assert ws.get("x", (2, 4), torch.float32, "cpu").shape == (2, 4)


def test_gradient_buffers_never_hand_out_what_a_caller_holds():
    p = torch.nn.Parameter(torch.randn(4, 5))
    buffers = GradientBuffers()
    first = buffers.take(p)
    p.grad = first
    del first
    buffers.recycle([p])
    assert p.grad is None
    reused = buffers.take(p)  # the recycled gradient
    held = reused
    p.grad = reused
    del reused
    buffers.recycle([p])  # `held` still references it: not recycled
    assert buffers.take(p).data_ptr() != held.data_ptr()
    # Outside the trainer's backward every buffer is let go of (a caller's autograd.grad may keep it)
    a, b = buffers.take(p), buffers.take(p)
    assert a.data_ptr() != b.data_ptr()
    with buffers.backward():
        first, kept = buffers.take(p), buffers.take(p)
    assert first.data_ptr() != kept.data_ptr()
    with buffers.backward():
        buffers.take(p)
        assert buffers.take(p) is kept  # the second contribution's buffer is the pool's
