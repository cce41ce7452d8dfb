"""Interaction penalty and interaction matrix: speed and memory, measured side by side in one run.

    python benchmarks/bench_interactions.py [--threads N] [--quick]

At the paper geometry (4 blocks, D = 768, N = 3072, H = 1536, k = 20, 17 hookpoints; a random
crosscoder and random activations, BatchTopK codes, so the padded slot count K is the batch's
largest L0) it prints:

1. the penalised training step (ours: ``crosscoder_lib.interactions.measures.interaction_penalty``, on the
   backend ``crosscoder_lib.interactions.kernels`` chooses) against
   the same step with a dense ``(blocks, batch, neurons, active slots)`` formulation of the same
   penalty (the reference code's: gather each token's active decoder rows, push them through
   ``W_in`` per token, ``|p|``, sum − max, autograd through all of it), batch 256: time and peak
   memory (targets ≥ 10× faster, ≥ 4× less memory); the penalty alone (forward + backward) too;
   and the whole steps again in a child process whose allocator reuses freed memory, because the
   ratio depends on it (see :func:`steps_reusing_memory`);
2. the penalised step over its floor, the ``G_l = W_dec[:, slot(l)] W_in`` products and their
   gradient timed alone (target ≤ 1.5×), and over the unpenalised step at batch 256 and 4096
   (target ≤ 1.3× at 4096);
3. the interaction matrix over 10,000 tokens: ours (active features) against a dense
   ``(tokens, neurons, H)`` formulation (target ≥ 10× faster, ≥ 10× less memory). The dense one is
   timed on a subset of tokens and scaled linearly (its cost per token is constant; over all
   10,000 tokens it would take many minutes), and both are chunked with the same number of tokens
   per chunk (the dense full tensor would be 10,000 × 3072 × 1536 floats = 176 GiB).

Times are medians of round-robin repeats (A B C A B C …, so load from other processes on the
shared machine hits every candidate alike). Peak memory is the rise of the resident set (VmHWM,
reset through /proc/self/clear_refs after a warm-up call) during one call, each measurement in a
fresh process with glibc's mmap threshold fixed at 128 KiB, so every tensor's memory is mapped
when allocated and returned when freed, and RSS sees it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import torch
from timing import timed

from crosscoder_lib.crosscoder.activations import FiringTracker, SparseCodes
from crosscoder_lib.crosscoder.model import Crosscoder, CrosscoderConfig
from crosscoder_lib.interactions import kernels
from crosscoder_lib.interactions.decoder import neuron_weights
from crosscoder_lib.interactions.engine import chunk_tokens_for
from crosscoder_lib.interactions.measures import interaction_matrix, interaction_penalty
from crosscoder_lib.interactions.mlp import MLPWeights
from crosscoder_lib.lm.hookpoints import mlp_input_slots, paper_hookpoints
from crosscoder_lib.crosscoder.training import TrainConfig
from crosscoder_lib.crosscoder.training.loss import Objective, compute_loss, interaction_term
from crosscoder_lib.crosscoder.training.step import TrainingStep, make_optimizer

L, D, N, H, K_TOPK = 4, 768, 3072, 1536, 20
HP = paper_hookpoints(L)
SLOTS = mlp_input_slots(HP)
LAMBDA = 1000.0
MATRIX_TOKENS = 10_000
DENSE_MATRIX_TOKENS = 64  # timed, then scaled to MATRIX_TOKENS
DENSE_MATRIX_CHUNK = chunk_tokens_for(K_TOPK, N)  # the same tokens per chunk as ours


# -- the world --------------------------------------------------------------------------------------

def random_mlp(seed: int = 0) -> MLPWeights:
    g = torch.Generator().manual_seed(seed)
    return MLPWeights(torch.randn(L, D, N, generator=g) / D ** 0.5, torch.randn(L, N, generator=g) * 0.1,
                      torch.randn(L, N, D, generator=g) / N ** 0.5, torch.randn(L, D, generator=g) * 0.1,
                      "gelu_new")


def random_acts(batch: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # per-token scales vary by ±10 %, so BatchTopK gives tokens different L0 (mean k = 20, padded
    # K ≈ 44 at batch 256 on this random crosscoder)
    return torch.randn(batch, len(HP), D, generator=g) * torch.rand(batch, 1, 1, generator=g).mul(0.2).add(0.9)


def new_crosscoder(activation: str = "batchtopk") -> Crosscoder:
    cc = Crosscoder(CrosscoderConfig(hookpoints=HP, d_model=D, n_features=H, activation=activation, k=K_TOPK))
    cc.set_input_scale(random_acts(1024, seed=7))
    return cc


# -- the dense baselines ----------------------------------------------------------------------------

def dense_penalty(codes, W_dec_LHD: torch.Tensor, mlp: MLPWeights) -> torch.Tensor:
    """The same penalty, formulated as the reference code does: per token, gather the active
    decoder rows ``[L, B, K, D]``, multiply each by its activation, push it through ``W_in`` to
    ``p [L, B, N, K]``, then ``mean(Σ_k |p| − max_k |p|)``; autograd keeps every intermediate."""
    rows_LBKD = W_dec_LHD[:, codes.idx_BK] * codes.val_BK[None, :, :, None]
    p_LBNK = torch.einsum("lbkd,ldn->lbnk", rows_LBKD, mlp.W_in_LDN)
    absp = p_LBNK.abs()
    return (absp.sum(-1) - absp.amax(-1)).mean()


@torch.no_grad()
def dense_matrix(codes, W_dec_LHD: torch.Tensor, mlp: MLPWeights, chunk: int = DENSE_MATRIX_CHUNK) -> torch.Tensor:
    """``M[i, j]`` over all H features per token: ``p = a_H · G`` as ``[tokens, N, H]`` chunks, the
    dominant feature by argmax over H, and the weighted ``|p|`` rows accumulated (index_add)."""
    G_LHN = neuron_weights(W_dec_LHD, mlp)
    w_LN = mlp.W_out_norms_LN()
    T = codes.idx_BK.shape[0]
    a_TH = torch.zeros(T, H, dtype=codes.val_BK.dtype).scatter_add_(1, codes.idx_BK, codes.val_BK)
    M = torch.zeros(L, H, H, dtype=codes.val_BK.dtype)
    for l in range(L):
        GT_NH = G_LHN[l].T.contiguous()
        for s in range(0, T, chunk):
            absp = (a_TH[s:s + chunk, None, :] * GT_NH[None]).abs_()  # [c, N, H]
            dom = absp.argmax(-1)  # [c, N]
            absp.mul_(w_LN[l][None, :, None]).scatter_(-1, dom[..., None], 0.0)
            M[l].index_add_(0, dom.flatten(), absp.view(-1, H))
    return (M / T).sum(0)


# -- one training step (identical for every penalty) ------------------------------------------------

def step_fn(batch: int, penalty: str):
    """One optimiser step at the paper geometry: the library's reconstruction loss (+ AuxK) with
    ``λ · penalty`` added, backward, clipping, Adam. ``penalty``: none | ours | dense | library."""
    cc, mlp, acts = new_crosscoder(), random_mlp(), random_acts(batch)
    cfg = TrainConfig(lambda_int=LAMBDA if penalty == "library" else 0.0, warmup_frac=0.0, decay_frac=0.0)
    opt, tracker = make_optimizer(cc, cfg), FiringTracker(H, cc.cfg.dead_steps)
    if penalty == "library":  # the trainer's own path (compute_loss adds the penalty itself)
        training_step = TrainingStep(Objective(cc, interaction_term(cc, mlp, cfg.penalty_form)), opt, tracker, cfg)
        return lambda: training_step(acts, 0, with_fvu=False)
    fn = {"ours": lambda c, W: interaction_penalty(c, W, mlp).penalty, "dense": lambda c, W: dense_penalty(c, W, mlp)}

    def step():
        s = compute_loss(Objective(cc), acts, tracker.dead_H, with_fvu=False)
        loss = s.loss if penalty == "none" else s.loss + LAMBDA * fn[penalty](s.codes, cc.decoder_slots_LHD(SLOTS))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(opt.param_groups[0]["params"], 1.0, foreach=True)
        opt.step()
        tracker.update(s.codes)
    return step


def penalty_fn(batch: int, which: str):
    """The penalty alone, forward + backward, on fixed codes (gradients into codes and W_dec)."""
    cc, mlp = new_crosscoder(), random_mlp()
    with torch.no_grad():
        codes = cc.encode(random_acts(batch))
    W = cc.decoder_slots_LHD(SLOTS).detach().requires_grad_(True)
    val = codes.val_BK.clone().requires_grad_(True)
    c = SparseCodes(codes.idx_BK, val)
    if which == "floor":  # the G_l products and their gradient alone
        def run():
            G = neuron_weights(W, mlp)
            G.backward(torch.ones_like(G))
    elif which == "ours":
        def run():
            interaction_penalty(c, W, mlp).penalty.backward()
    elif which == "ours_torch":  # the PyTorch fallback, forced through the public setting
        def run():
            with kernels.use_backend("torch"):
                interaction_penalty(c, W, mlp).penalty.backward()
    else:
        def run():
            dense_penalty(c, W, mlp).backward()
    return run


def matrix_fn(which: str, n_tokens: int):
    cc, mlp = new_crosscoder("topk"), random_mlp()
    with torch.no_grad():
        codes = cc.encode(random_acts(n_tokens, seed=3))
        W = cc.decoder_slots_LHD(SLOTS)
    if which == "ours":
        return lambda: interaction_matrix(codes, W, mlp)
    return lambda: dense_matrix(codes, W, mlp)


# -- peak memory, one fresh process per measurement -------------------------------------------------

def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_child(spec: str) -> None:
    kind, which, size = spec.split(":")
    size = int(size)
    fn = {"step": lambda: step_fn(size, which), "penalty": lambda: penalty_fn(size, which),
          "matrix": lambda: matrix_fn(which, size)}[kind]()
    fn()  # warm-up: optimiser state, caches
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    base = _status_kib("VmRSS")
    fn()
    print(json.dumps({"peak_rise_mib": (_status_kib("VmHWM") - base) / 1024, "base_mib": base / 1024}))


def _child(flag: str, value: str, threads: int, malloc_env: dict) -> dict:
    """Run this script with ``flag value`` in a fresh process under glibc settings ``malloc_env``;
    the child prints its answer as JSON on its last line."""
    out = subprocess.run([sys.executable, __file__, flag, value, "--threads", str(threads)],
                         check=True, capture_output=True, text=True,
                         env=os.environ | {"PYTHONWARNINGS": "ignore"} | malloc_env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def memory(spec: str, threads: int) -> dict:
    # A fixed mmap threshold makes glibc map every block over 128 KiB and unmap it when freed, so
    # RSS follows the live tensors (with its default adaptive threshold, freed blocks stay resident
    # and a later step's allocations would not show).
    return _child("--memory-child", spec, threads, {"MALLOC_MMAP_THRESHOLD_": "131072"})


def steps_reusing_memory(repeats: int, threads: int) -> dict:
    """The batch-256 steps timed again in a process whose freed memory glibc keeps for reuse
    (no ``mmap`` for large blocks, no trimming), as a caching allocator (PyTorch's on GPU, or
    jemalloc/tcmalloc on CPU) does. With glibc's defaults every block over 32 MiB is mapped fresh
    and the kernel zeroes its pages on first touch, a cost that grows with the tensors a step makes."""
    return _child("--steps-child", str(repeats), threads,
                  {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 40), "MALLOC_TOP_PAD_": str(1 << 30)})


# -- main -------------------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--quick", action="store_true", help="fewer repeats (noisier)")
    ap.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--steps-child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child is not None:
        memory_child(args.memory_child)
        return
    if args.steps_child is not None:
        print(json.dumps(timed({w: step_fn(256, w) for w in ("none", "ours", "dense")}, args.steps_child)))
        return
    threads = torch.get_num_threads()
    r = 3 if args.quick else 5
    status = kernels.kernel_status()
    path = f"fused C kernel ({status.library})" if status.backend == "c" else f"PyTorch ({status.reason})"
    print(f"torch {torch.__version__}, {threads} threads, CPU; paper geometry L={L}, D={D}, N={N}, H={H}, "
          f"k={K_TOPK}, {len(HP)} hookpoints; λ={LAMBDA:g}; medians of {r} round-robin runs; "
          f"penalty path: {path}; load average at start {os.getloadavg()[0]:.1f}\n")

    cc, mlp = new_crosscoder(), random_mlp()
    with torch.no_grad():
        codes = cc.encode(random_acts(256))
        W = cc.decoder_slots_LHD(SLOTS)
        ours, dense = interaction_penalty(codes, W, mlp).penalty.item(), dense_penalty(codes, W, mlp).item()
    k_pad, l0 = codes.idx_BK.shape[1], (codes.val_BK != 0).sum(1).float().mean().item()
    print(f"BatchTopK codes at batch 256: padded K = {k_pad} slots, mean L0 = {l0:.1f}; "
          f"penalty ours {ours:.6g} vs dense {dense:.6g} (rel. diff {abs(ours - dense) / abs(dense):.1e})\n")

    print("1. penalised step, ours vs dense (blocks, batch, neurons, active slots), batch 256")
    t = timed({"none": step_fn(256, "none"), "ours": step_fn(256, "ours"), "dense": step_fn(256, "dense"),
               "library": step_fn(256, "library"), "p_floor": penalty_fn(256, "floor"),
               "p_ours": penalty_fn(256, "ours"), "p_torch": penalty_fn(256, "ours_torch"),
               "p_dense": penalty_fn(256, "dense")}, r)
    mem = {name: memory(spec, threads)["peak_rise_mib"] for name, spec in
           (("ours", "step:ours:256"), ("dense", "step:dense:256"), ("none", "step:none:256"),
            ("p_ours", "penalty:ours:256"), ("p_torch", "penalty:ours_torch:256"), ("p_dense", "penalty:dense:256"),
            ("p_floor", "penalty:floor:256"))}
    print(f"   whole step:  ours {t['ours'] * 1e3:8.1f} ms, peak +{mem['ours']:7.1f} MiB | dense "
          f"{t['dense'] * 1e3:8.1f} ms, peak +{mem['dense']:7.1f} MiB | {t['dense'] / t['ours']:5.2f}x faster, "
          f"{mem['dense'] / mem['ours']:5.2f}x less memory   (targets >= 10x, >= 4x)")
    print(f"   penalty only (fwd+bwd): ours {t['p_ours'] * 1e3:8.1f} ms, +{mem['p_ours']:7.1f} MiB | dense "
          f"{t['p_dense'] * 1e3:8.1f} ms, +{mem['p_dense']:7.1f} MiB | {t['p_dense'] / t['p_ours']:5.2f}x faster, "
          f"{mem['p_dense'] / mem['p_ours']:5.2f}x less memory")
    print(f"   penalty only, PyTorch fallback path: {t['p_torch'] * 1e3:8.1f} ms, +{mem['p_torch']:7.1f} MiB | "
          f"{t['p_dense'] / t['p_torch']:5.2f}x faster, {mem['p_dense'] / mem['p_torch']:5.2f}x less memory than dense")
    print(f"   (the library's TrainingStep with λ > 0: {t['library'] * 1e3:.1f} ms; unpenalised step "
          f"{t['none'] * 1e3:.1f} ms, peak +{mem['none']:.1f} MiB)")
    # Amdahl: any formulation that forms G_l still pays the unpenalised step plus the G_l floor.
    print(f"   ceiling of the whole-step ratio for any G_l-based penalty with this unpenalised step: "
          f"dense / (unpenalised step + floor) = "
          f"{t['dense'] / (t['none'] + t['p_floor']):5.2f}x")
    tr = steps_reusing_memory(r, threads)
    print(f"   the same steps with freed memory reused (glibc MALLOC_MMAP_MAX_=0, as a caching allocator does): "
          f"ours {tr['ours'] * 1e3:.1f} ms, dense {tr['dense'] * 1e3:.1f} ms, unpenalised {tr['none'] * 1e3:.1f} ms "
          f"-> {tr['dense'] / tr['ours']:5.2f}x faster (most of the dense step's time above is the kernel "
          f"zeroing fresh pages for its [L, B, N, K] tensors)")

    print("\n2. overheads of the penalty")
    print(f"   floor (G_l = W_dec W_in for 4 blocks, forward + gradient): {t['p_floor'] * 1e3:.1f} ms, "
          f"peak +{mem['p_floor']:.1f} MiB")
    print(f"   penalty fwd+bwd / floor: {t['p_ours'] / t['p_floor']:5.2f}x   (target <= 1.5)")
    print(f"   penalised step / floor: {t['ours'] / t['p_floor']:5.2f}x;  penalised step / (unpenalised step "
          f"+ floor): {t['ours'] / (t['none'] + t['p_floor']):5.2f}x")
    print(f"   batch  256: penalised / unpenalised step {t['ours'] / t['none']:5.2f}x "
          f"({t['ours'] * 1e3:.0f} vs {t['none'] * 1e3:.0f} ms)")
    r_big = max(2, r - 2)
    t4 = timed({"none": step_fn(4096, "none"), "ours": step_fn(4096, "ours"),
                "p_floor": penalty_fn(4096, "floor"), "p_ours": penalty_fn(4096, "ours")}, r_big)
    print(f"   batch 4096: penalised / unpenalised step {t4['ours'] / t4['none']:5.2f}x "
          f"({t4['ours'] * 1e3:.0f} vs {t4['none'] * 1e3:.0f} ms; target <= 1.3); penalty fwd+bwd "
          f"{t4['p_ours'] * 1e3:.0f} ms = {t4['p_ours'] / t4['p_floor']:.2f}x its floor ({t4['p_floor'] * 1e3:.0f} ms)")

    print(f"\n3. interaction matrix over {MATRIX_TOKENS} tokens (TopK codes, k={K_TOPK}), all 4 blocks; "
          f"both in chunks of {DENSE_MATRIX_CHUNK} tokens")
    cc_m, mlp_m = new_crosscoder("topk"), random_mlp()
    with torch.no_grad():  # the two formulations agree (float64, so float32 summation order is not measured)
        c = cc_m.encode(random_acts(DENSE_MATRIX_TOKENS, seed=3))
        c64, W64, mlp64 = SparseCodes(c.idx_BK, c.val_BK.double()), cc_m.decoder_slots_LHD(SLOTS).double(), mlp_m.to(dtype=torch.float64)
        ours_m, dense_m = interaction_matrix(c64, W64, mlp64).total_HH, dense_matrix(c64, W64, mlp64)
    diff = ((ours_m - dense_m).abs().max() / dense_m.abs().max()).item()
    tm = timed({"ours": matrix_fn("ours", MATRIX_TOKENS)}, max(2, r - 2), warmup=0)
    td = timed({"dense": matrix_fn("dense", DENSE_MATRIX_TOKENS)}, max(2, r - 2), warmup=0)
    dense_full = td["dense"] * MATRIX_TOKENS / DENSE_MATRIX_TOKENS
    mm = {w: memory(f"matrix:{w}:{n}", threads)["peak_rise_mib"]
          for w, n in (("ours", MATRIX_TOKENS), ("dense", DENSE_MATRIX_TOKENS))}
    print(f"   agreement on {DENSE_MATRIX_TOKENS} tokens (float64): max |ours − dense| / max|M| = {diff:.1e}")
    print(f"   ours:  {tm['ours']:8.2f} s for {MATRIX_TOKENS} tokens, peak +{mm['ours']:7.1f} MiB")
    print(f"   dense: {td['dense']:8.2f} s for {DENSE_MATRIX_TOKENS} tokens -> {dense_full:8.1f} s scaled to "
          f"{MATRIX_TOKENS}; peak +{mm['dense']:7.1f} MiB (unchunked it would need "
          f"{MATRIX_TOKENS * N * H * 4 / 2 ** 30:.0f} GiB)")
    print(f"   ours {dense_full / tm['ours']:6.1f}x faster, {mm['dense'] / mm['ours']:5.1f}x less memory   "
          f"(targets >= 10x, >= 10x)")


if __name__ == "__main__":
    main()
