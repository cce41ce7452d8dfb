"""Crosscoder training speed and memory, measured side by side in one run (issues 4 and 17).

    python benchmarks/bench_crosscoder.py [--threads N] [--quick] [--save]

``--quick`` is a smoke run (tiny sizes, one repeat, memory measured in this process; seconds): it
checks that every figure below is computed and printed, and its numbers mean nothing.

At the paper's geometry (17 x 768 inputs, H = 1536, BatchTopK k = 20; random weights and
activations whose per-token scale varies by ±30 %, so BatchTopK pads each batch to its largest L0)
it prints, and with ``--save`` writes to ``benchmarks/results/bench_crosscoder.json``:

1. training tokens/s of the library's own ``TrainingStep`` (loss, AuxK, backward, clipping,
   fused Adam, gradient buffers recycled) at the embedded geometry (17 x 128) and at the paper's,
   batch 256, with the sparse and the dense decoder;
2. the unpenalised step over its matmul FLOP floor: the step's two encoder products (forward and
   weight gradient, 4·B·X·D·H FLOPs; the sparse decoder adds no matrix product) at the plain GEMM
   rate measured in this run (target <= 2); and over its bare kernels, the same products and the
   sparse decoder's gathers timed alone;
3. the whole step with the dense decoder over the step with the sparse one, batch 256 (target >= 2),
   and the decoder alone, forward and backward, padded codes against the unpadded entries the
   library passes, batch 256 and 4096;
4. harvest throughput (17 hookpoints into one tensor) over a bare forward of the same model
   stopped where the harvest stops (target >= 0.9), and over the raw Hugging Face forward, on
   ``embedded:clean`` when shipped, else a random model of its shape;
5. peak resident memory of a whole training run (harvesting through an ActivationBuffer) at N and
   4N tokens, each in a fresh process (target: no growth).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile

import torch
import torch.nn.functional as F
from machine import begin, figure, finish
from timing import timed

from crosscoder_lib.crosscoder.activations import FiringTracker, SparseCodes
from crosscoder_lib.crosscoder.model import Crosscoder, CrosscoderConfig
from crosscoder_lib.crosscoder.products import sparse_decode
from crosscoder_lib.crosscoder.training import RunOptions, TrainConfig
from crosscoder_lib.crosscoder.training.loss import Objective
from crosscoder_lib.crosscoder.training.step import TrainingStep, make_optimizer
from crosscoder_lib.lm.hookpoints import last_block_needed, paper_hookpoints

HP = paper_hookpoints(4)
# the sizes measured: ``embedded`` and ``paper`` geometries, the decoder's two batches, the harvest's
# (sequences, tokens), the memory runs' steps (N and 4N), repeats, the machine's GEMM size
SIZES = {
    "full": {"embedded": {"d_model": 128, "n_features": 512, "k": 20, "batch": 256},
             "paper": {"d_model": 768, "n_features": 1536, "k": 20, "batch": 256}, "big_batch": 4096,
             "harvest_tokens": (32, 128), "memory_steps": (100, 400), "repeats": 7, "gemm_n": 2048},
    "quick": {"embedded": {"d_model": 16, "n_features": 64, "k": 4, "batch": 32},
              "paper": {"d_model": 32, "n_features": 128, "k": 4, "batch": 64}, "big_batch": 256,
              "harvest_tokens": (2, 16), "memory_steps": (2, 8), "repeats": 1, "gemm_n": 256},
}


def random_acts(batch: int, d_model: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, len(HP), d_model, generator=g) * torch.rand(batch, 1, 1, generator=g).mul(0.6).add(0.7)


def step_fn(d_model: int, n_features: int, k: int, batch: int, decode: str):
    """A closure doing one ``TrainingStep`` on fresh random activations of this geometry."""
    cfg = CrosscoderConfig(HP, d_model, n_features, k=k, decode=decode)
    cc = Crosscoder(cfg)
    acts = random_acts(batch * 4, d_model)
    cc.set_input_scale(acts)
    tcfg = TrainConfig(batch_size=batch, warmup_frac=0.0, decay_frac=0.0)  # lr 1e-4 at every step
    training_step = TrainingStep(Objective(cc), make_optimizer(cc, tcfg), FiringTracker(n_features, cfg.dead_steps),
                                 tcfg)
    i = [0]

    def step():
        b = acts[(i[0] % 4) * batch:(i[0] % 4 + 1) * batch]
        i[0] += 1
        training_step(b, 0, with_fvu=False)

    return step


def batchtopk_codes(batch: int, n_features: int, k: int, seed: int = 0) -> SparseCodes:
    """BatchTopK codes of random pre-activations (per-token scales vary, so the padded K > k)."""
    g = torch.Generator().manual_seed(seed)
    pre = torch.randn(batch, n_features, generator=g) * torch.rand(batch, 1, generator=g).mul(0.6).add(0.7)
    flat = pre.relu().flatten()
    vals, ids = flat.topk(k * batch)
    a = torch.zeros_like(flat).scatter(0, ids, vals).view(batch, n_features)
    val, idx = a.topk(int((a != 0).sum(1).max()), dim=1)
    return SparseCodes(idx, val)


def decoder_fn(d_model: int, n_features: int, k: int, batch: int, which: str):
    """Forward + backward through the decoder alone: ``padded`` hands embedding_bag the padded
    codes (the library before issue 17), ``unpadded`` is the library's sparse decoder."""
    W = torch.randn(n_features, len(HP), d_model, requires_grad=True)
    codes = batchtopk_codes(batch, n_features, k)
    g = torch.randn(batch, len(HP) * d_model)

    def fwd_bwd():
        val = codes.val_BK.clone().requires_grad_(True)
        if which == "padded":
            out = F.embedding_bag(codes.idx_BK, W.flatten(1), per_sample_weights=val, mode="sum")
        else:
            out = sparse_decode(codes.idx_BK, val, W)
        torch.autograd.grad(out, (W, val), g)

    return fwd_bwd, codes


def bare_sparse_fn(d_model: int, n_features: int, k: int, batch: int):
    """The sparse step's kernels alone: the two encoder products and the decoder's gathers."""
    XD = len(HP) * d_model
    x, W_enc, g_pre = torch.randn(batch, XD), torch.randn(XD, n_features), torch.randn(batch, n_features)
    dec, _ = decoder_fn(d_model, n_features, k, batch, "unpadded")

    def kernels():
        x @ W_enc
        x.T @ g_pre
        dec()

    return kernels


def encoder_flops(d_model: int, n_features: int, batch: int) -> float:
    """The unpenalised sparse step's matrix products: encoder forward and its weight gradient."""
    return 2 * 2 * batch * len(HP) * d_model * n_features


def harvest_ratios(repeats: int, tokens_shape: tuple[int, int]) -> dict:
    from crosscoder_lib.lm.loading import load_hf, load_model, save_random_tinystories_like

    try:
        name = "embedded:clean"
        bridge = load_model(name)
        hf, _ = load_hf(name)
    except Exception:  # not shipped yet
        folder = save_random_tinystories_like(tempfile.mkdtemp(), d_model=128, d_mlp=512)
        name = "random GPT-Neo 4x128 (embedded:clean not shipped)"
        bridge = load_model(folder)
        hf, _ = load_hf(folder)
    tokens = torch.randint(5, 200, tokens_shape)
    hps = paper_hookpoints(bridge.cfg.n_layers)
    return {"model": name, **bare_forward_ratios(bridge, hf, tokens, hps, repeats)}


def bare_forward_ratios(bridge, hf, tokens: torch.Tensor, hookpoints: list[str], repeats: int) -> dict:
    """Harvest time against the bridge's forward stopped where the harvest stops (no hooks) and,
    when given, the raw Hugging Face forward of the whole model."""
    from crosscoder_lib.lm.harvest import harvest

    last = last_block_needed(hookpoints)
    stop = None if last is None or last + 1 >= bridge.cfg.n_layers else last + 1

    def no_grad(fn):
        def run():
            with torch.no_grad():
                fn()
        return run

    def nothing(act, hook):
        return None

    # the same hooks doing nothing: what the hooks cost, apart from copying the activations out
    hooks = [(h, nothing) for h in hookpoints]
    fns = {"bare": no_grad(lambda: bridge(tokens, stop_at_layer=stop)),
           "hooks_only": no_grad(lambda: bridge.run_with_hooks(tokens, stop_at_layer=stop, fwd_hooks=hooks)),
           "harvest": lambda: harvest(bridge, tokens, hookpoints)}
    if hf is not None:
        fns["hf"] = no_grad(lambda: hf(tokens))
    t = timed(fns, repeats)
    positions = tokens.shape[0] * (tokens.shape[1] - 1)
    out = {"harvest_tokens_per_s": positions / t["harvest"], "bare_tokens_per_s": positions / t["bare"],
           "harvest_over_bare": t["bare"] / t["harvest"], "stop_at_layer": stop,
           "times_s": {k: t[k] for k in ("bare", "hooks_only", "harvest")},
           "n_hooks": len(hookpoints), "copied_mib": positions * len(hookpoints) * bridge.cfg.d_model * 4 / 2 ** 20}
    if hf is not None:
        out["harvest_over_hf"] = t["hf"] / t["harvest"]
    return out


def harvest_breakdown(h: dict) -> str:
    """Where a harvest's time goes beyond the bare forward: the hooks themselves, then the copy out."""
    t = h["times_s"]
    return (f"of the harvest's {t['harvest'] * 1e3:.1f} ms: the bare forward {t['bare'] * 1e3:.1f} ms, its "
            f"{h['n_hooks']} hooks doing nothing +{(t['hooks_only'] - t['bare']) * 1e3:.1f} ms, copying "
            f"{h['copied_mib']:.0f} MiB of activations out +{(t['harvest'] - t['hooks_only']) * 1e3:.1f} ms")


def peak_rss_mib() -> float:
    """This process's peak resident set (VmHWM; unlike ru_maxrss it is not inherited across exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_child(n_steps: int) -> dict:
    """Train ``n_steps`` through a harvesting buffer; the peak RSS (MiB) from here on."""
    from crosscoder_lib.crosscoder.training import train
    from crosscoder_lib.lm.harvest import ActivationBuffer
    from crosscoder_lib.lm.loading import load_model, save_random_tinystories_like

    torch.set_num_threads(1)
    folder = save_random_tinystories_like(tempfile.mkdtemp(), d_model=64, d_mlp=256, context_len=64)
    bridge = load_model(folder)
    vocab = bridge.cfg.d_vocab

    def tokens():  # an endless seeded stream: 16 x 64 tokens per batch
        g = torch.Generator().manual_seed(0)
        while True:
            yield torch.randint(5, vocab, (16, 64), generator=g)

    buf = ActivationBuffer(bridge, tokens, HP, batch_size=256, capacity_tokens=8192)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := the current RSS, so an in-process (--quick) run measures from here
    before = peak_rss_mib()
    train(TrainConfig(n_steps=n_steps, batch_size=256), buf, crosscoder=CrosscoderConfig(HP, 64, 512, k=20),
          options=RunOptions(progress=False, log_every=50))
    return {"steps": n_steps, "tokens": n_steps * 256, "rss_before_mib": before, "peak_mib": peak_rss_mib()}


def memory_run(n_steps: int, in_process: bool = False) -> dict:
    """:func:`memory_child` in a fresh process (or, for ``--quick``, in this one)."""
    if in_process:
        return memory_child(n_steps)
    out = subprocess.run([sys.executable, __file__, "--memory-child", str(n_steps)], check=True,
                         capture_output=True, text=True, env=os.environ | {"PYTHONWARNINGS": "ignore"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure_steps(sizes: dict) -> dict:
    e, p, r = sizes["embedded"], sizes["paper"], sizes["repeats"]
    geo, b = (p["d_model"], p["n_features"], p["k"]), p["batch"]
    t = timed({
        "embedded": step_fn(e["d_model"], e["n_features"], e["k"], e["batch"], "auto"),
        "sparse": step_fn(*geo, b, "sparse"),
        "dense": step_fn(*geo, b, "dense"),
        "bare_sparse": bare_sparse_fn(*geo, b),
        "dec_padded": decoder_fn(*geo, b, "padded")[0],
        "dec_unpadded": decoder_fn(*geo, b, "unpadded")[0],
    }, r)
    big = timed({w: decoder_fn(*geo, sizes["big_batch"], w)[0] for w in ("padded", "unpadded")}, max(1, r - 2))
    t |= {"dec_padded_big": big["padded"], "dec_unpadded_big": big["unpadded"]}
    for name, batch in (("batch", b), ("big", sizes["big_batch"])):
        codes = batchtopk_codes(batch, p["n_features"], p["k"])
        t[f"padded_K_{name}"] = codes.idx_BK.shape[1]
        t[f"mean_L0_{name}"] = float((codes.val_BK != 0).sum(1).float().mean())
    return t


def print_steps(t: dict, sizes: dict, machine: dict) -> float:
    """Sections 1-3; returns the unpenalised step's matmul FLOP floor (seconds)."""
    e, p = sizes["embedded"], sizes["paper"]
    b, big = p["batch"], sizes["big_batch"]
    flops = encoder_flops(p["d_model"], p["n_features"], b)
    floor = flops / (machine["gemm_fp32_gflops"] * 1e9)
    geo = f"17x{p['d_model']}, H={p['n_features']}, k={p['k']}, batch {b}"
    print("1. training throughput (TrainingStep: loss + AuxK + backward + clip + fused Adam)")
    print(f"   embedded geometry 17x{e['d_model']}, H={e['n_features']}, k={e['k']}, batch {e['batch']}: "
          f"{t['embedded'] * 1e3:7.1f} ms/step  {e['batch'] / t['embedded']:9.0f} tokens/s")
    print(f"   paper geometry {geo} (padded K = {t['padded_K_batch']}, mean L0 {t['mean_L0_batch']:.1f}): sparse "
          f"{t['sparse'] * 1e3:7.1f} ms/step ({b / t['sparse']:6.0f} tokens/s), dense {t['dense'] * 1e3:7.1f} ms/step "
          f"({b / t['dense']:6.0f} tokens/s)")
    print("\n2. unpenalised step over its floor (target <= 2)")
    print(f"   sparse step / matmul FLOP floor ({flops / 1e9:.2f} GFLOP at {machine['gemm_fp32_gflops']:.0f} GFLOP/s "
          f"= {floor * 1e3:.2f} ms): {t['sparse'] / floor:5.2f}x;  / its bare kernels "
          f"({t['bare_sparse'] * 1e3:.1f} ms): "
          f"{t['sparse'] / t['bare_sparse']:5.2f}x")
    print(f"\n3. the sparse decoder (target >= 2 for the whole step at batch {b})")
    print(f"   whole step, dense / sparse decoder: {t['dense'] / t['sparse']:5.2f}x")
    print(f"   decoder forward+backward, padded / unpadded entries: batch {b} "
          f"{t['dec_padded'] / t['dec_unpadded']:5.2f}x "
          f"({t['dec_padded'] * 1e3:.1f} vs {t['dec_unpadded'] * 1e3:.1f} ms), batch {big} "
          f"{t['dec_padded_big'] / t['dec_unpadded_big']:5.2f}x ({t['dec_padded_big'] * 1e3:.0f} vs "
          f"{t['dec_unpadded_big'] * 1e3:.0f} ms; padded K = {t['padded_K_big']})")
    print(f"   {traffic_note(decoder_traffic(t, sizes, machine), t)}")
    return floor


def decoder_traffic(t: dict, sizes: dict, machine: dict) -> dict:
    """Why the sparse decoder is not free: the bytes it must move (active rows read forward, added into
    the gradient backward, and the gradient zeroed), their time at the copy rate measured in this run,
    and the whole-step dense / sparse ratio a decoder costing nothing would give."""
    p = sizes["paper"]
    row = len(HP) * p["d_model"] * 4
    active = p["batch"] * t["mean_L0_batch"] * row
    moved = 3 * active + p["n_features"] * row
    return {"moved_mib": moved / 2 ** 20, "at_copy_rate_s": moved / (machine["copy_gbs"] * 1e9),
            "copy_gbs": machine["copy_gbs"], "free_decoder_ratio": t["dense"] / (t["sparse"] - t["dec_unpadded"])}


def traffic_note(d: dict, t: dict) -> str:
    return (f"the unpadded decoder moves {d['moved_mib']:.0f} MiB per fwd+bwd, {d['at_copy_rate_s'] * 1e3:.0f} ms at "
            f"this run's {d['copy_gbs']:.1f} GB/s copy rate, of its {t['dec_unpadded'] * 1e3:.0f} ms; a decoder "
            f"costing nothing would give {d['free_decoder_ratio']:.2f}x")


def print_harvest_and_memory(sizes: dict, quick: bool) -> tuple[dict, list[dict]]:
    """Sections 4-5."""
    h = harvest_ratios(sizes["repeats"], sizes["harvest_tokens"])
    n_seq, n_tok = sizes["harvest_tokens"]
    print(f"\n4. harvest throughput / bare forward (target >= 0.9), {h['model']}, {n_seq}x{n_tok} tokens, "
          f"17 hookpoints")
    print(f"   vs the bridge's forward stopped where the harvest stops: {h['harvest_over_bare']:5.2f}    "
          f"vs the raw Hugging Face forward: {h['harvest_over_hf']:5.2f}    "
          f"({h['harvest_tokens_per_s']:,.0f} tokens/s)")
    print(f"   {harvest_breakdown(h)}")
    where = "in this process (--quick)" if quick else "fresh process each"
    print(f"\n5. peak memory of a whole training run through an ActivationBuffer ({where})")
    runs = [memory_run(n, in_process=quick) for n in sizes["memory_steps"]]
    for m in runs:
        print(f"   {m['tokens']:7d} tokens: peak RSS {m['peak_mib']:7.1f} MiB "
              f"(of which {m['rss_before_mib']:.1f} MiB before training: torch, model)")
    return h, runs


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, one repeat (seconds)")
    ap.add_argument("--save", action="store_true", help="write benchmarks/results/bench_crosscoder.json")
    ap.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.memory_child is not None:
        print(json.dumps(memory_child(args.memory_child)))
        return []
    sizes, machine = begin(args, SIZES)
    t = measure_steps(sizes)
    floor = print_steps(t, sizes, machine)
    h, (small, large) = print_harvest_and_memory(sizes, args.quick)
    growth = large["peak_mib"] / small["peak_mib"]
    print(f"   growth for 4x the tokens: {growth:5.3f}x")
    b, big = sizes["paper"]["batch"], sizes["big_batch"]
    traffic = decoder_traffic(t, sizes, machine)
    figures = [
        figure(f"unpenalised step / its matmul FLOP floor (paper geometry, batch {b})", t["sparse"] / floor, "<= 2",
               better="lower", bound=2),
        figure(f"whole step, dense / sparse decoder (batch {b})", t["dense"] / t["sparse"], ">= 2", better="higher",
               bound=2, note=traffic_note(traffic, t)),
        figure(f"decoder fwd+bwd, padded / unpadded (batch {b})", t["dec_padded"] / t["dec_unpadded"]),
        figure(f"decoder fwd+bwd, padded / unpadded (batch {big})", t["dec_padded_big"] / t["dec_unpadded_big"]),
        figure(f"harvest / bare forward ({h['model']})", h["harvest_over_bare"], ">= 0.9", better="higher", bound=0.9,
               note=harvest_breakdown(h)),
        figure(f"paper-geometry training, tokens/s (sparse, batch {b})", b / t["sparse"], unit=" tokens/s"),
        figure("peak memory growth for 4x the tokens", growth, "no growth (<= 1.05)", better="lower", bound=1.05),
    ]
    raw = {"sizes": sizes, "times_s": t, "decoder_traffic": traffic, "harvest": h, "memory": [small, large]}
    return finish("bench_crosscoder", machine, figures, raw, args)


if __name__ == "__main__":
    main()
