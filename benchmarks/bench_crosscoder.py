"""Crosscoder speed and memory, measured side by side in one run (issue 4's targets).

    python benchmarks/bench_crosscoder.py [--threads N] [--quick]

Prints:

1. training tokens/s (the library's own ``TrainingStep``: loss, AuxK, backward, clipping, fused
   Adam) at the embedded geometry (17 x 128 inputs) and at the paper's (17 x 768, H = 1536, k = 20);
2. at the paper geometry, the step time with the dense decoder over the step time with the sparse
   decoder (target >= 2x);
3. each step's time over the time of its bare kernels: the dense step's five matrix products
   (encoder forward and weight gradient, decoder forward, both decoder gradients), the sparse
   step's two encoder products plus ``embedding_bag`` forward and backward (target <= 2x);
4. harvest throughput (17 hookpoints into one tensor) over a plain forward of the same model
   (target >= 0.7), on ``embedded:clean`` when shipped, else a random model of its shape;
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
from timing import timed

from crosscoder_lib.crosscoder.activations import FiringTracker
from crosscoder_lib.crosscoder.model import Crosscoder, CrosscoderConfig
from crosscoder_lib.lm.hookpoints import paper_hookpoints
from crosscoder_lib.crosscoder.training import RunOptions, TrainConfig
from crosscoder_lib.crosscoder.training.loss import Objective
from crosscoder_lib.crosscoder.training.step import TrainingStep, make_optimizer

HP = paper_hookpoints(4)
EMBEDDED = {"d_model": 128, "n_features": 512, "k": 20, "batch": 256}
PAPER = {"d_model": 768, "n_features": 1536, "k": 20}


def step_fn(d_model: int, n_features: int, k: int, batch: int, decode: str):
    """A closure doing one ``TrainingStep`` on fresh random activations of this geometry."""
    cfg = CrosscoderConfig(HP, d_model, n_features, k=k, decode=decode)
    cc = Crosscoder(cfg)
    acts = torch.randn(batch * 4, len(HP), d_model)
    cc.set_input_scale(acts)
    tcfg = TrainConfig(batch_size=batch, warmup_frac=0.0, decay_frac=0.0)  # lr 1e-4 at every step
    opt = make_optimizer(cc, tcfg)
    tracker = FiringTracker(n_features, cfg.dead_steps)
    training_step = TrainingStep(Objective(cc), opt, tracker, tcfg)
    i = [0]

    def step():
        b = acts[(i[0] % 4) * batch:(i[0] % 4 + 1) * batch]
        i[0] += 1
        training_step(b, 0, with_fvu=False)

    return step


def decoder_fn(d_model: int, n_features: int, k: int, batch: int, path: str):
    """Forward + backward through the decoder alone (the part the sparse path changes)."""
    from crosscoder_lib.crosscoder.activations import SparseCodes

    cc = Crosscoder(CrosscoderConfig(HP, d_model, n_features, k=k))
    idx = torch.stack([torch.randperm(n_features)[:k] for _ in range(batch)])
    val = torch.rand(batch, k, requires_grad=True)
    g = torch.randn(batch, len(HP), d_model)

    def fwd_bwd():
        out = cc.decode_scaled(SparseCodes(idx, val), path=path)
        torch.autograd.grad(out, (cc.W_dec_HXD, val), g)

    return fwd_bwd


def bare_dense_fn(d_model: int, n_features: int, batch: int):
    XD = len(HP) * d_model
    x, W_enc = torch.randn(batch, XD), torch.randn(XD, n_features)
    W_dec, a, g_out, g_pre = torch.randn(n_features, XD), torch.randn(batch, n_features), \
        torch.randn(batch, XD), torch.randn(batch, n_features)

    def five():
        x @ W_enc                      # encoder forward
        x.T @ g_pre                    # encoder weight gradient
        a @ W_dec                      # decoder forward
        a.T @ g_out                    # decoder weight gradient
        g_out @ W_dec.T                # gradient to the codes

    return five


def bare_sparse_fn(d_model: int, n_features: int, k: int, batch: int):
    XD = len(HP) * d_model
    x, W_enc, g_pre = torch.randn(batch, XD), torch.randn(XD, n_features), torch.randn(batch, n_features)
    W_dec = torch.randn(n_features, XD, requires_grad=True)
    idx = torch.stack([torch.randperm(n_features)[:k] for _ in range(batch)])
    val = torch.rand(batch, k, requires_grad=True)
    g_out = torch.randn(batch, XD)

    def kernels():
        x @ W_enc
        x.T @ g_pre
        out = F.embedding_bag(idx, W_dec, per_sample_weights=val, mode="sum")
        torch.autograd.grad(out, (W_dec, val), g_out)

    return kernels


def harvest_ratio(repeats: int) -> tuple[float, float, str]:
    from crosscoder_lib.lm.harvest import harvest
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
    tokens = torch.randint(5, 200, (32, 128))
    hps = paper_hookpoints(bridge.cfg.n_layers)
    def no_grad(fn):
        def run():
            with torch.no_grad():
                fn()
        return run

    t = timed({"bridge": no_grad(lambda: bridge(tokens)), "hf": no_grad(lambda: hf(tokens)),
               "harvest": lambda: harvest(bridge, tokens, hps)}, repeats)
    return t["bridge"] / t["harvest"], t["hf"] / t["harvest"], name


def peak_rss_mib() -> float:
    """This process's peak resident set (VmHWM; unlike ru_maxrss it is not inherited across exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_child(n_steps: int) -> None:
    """Train ``n_steps`` through a harvesting buffer; print the peak RSS (MiB) as JSON."""
    from crosscoder_lib.lm.harvest import ActivationBuffer
    from crosscoder_lib.lm.loading import load_model, save_random_tinystories_like
    from crosscoder_lib.crosscoder.training import train

    torch.set_num_threads(1)
    folder = save_random_tinystories_like(tempfile.mkdtemp(), d_model=64, d_mlp=256, context_len=64)
    bridge = load_model(folder)
    vocab = bridge.cfg.d_vocab

    def tokens():  # an endless seeded stream: 16 x 64 tokens per batch
        g = torch.Generator().manual_seed(0)
        while True:
            yield torch.randint(5, vocab, (16, 64), generator=g)

    buf = ActivationBuffer(bridge, tokens, HP, batch_size=256, capacity_tokens=8192)
    before = peak_rss_mib()
    train(TrainConfig(n_steps=n_steps, batch_size=256), buf, crosscoder=CrosscoderConfig(HP, 64, 512, k=20),
          options=RunOptions(progress=False, log_every=50))
    peak = peak_rss_mib()
    print(json.dumps({"steps": n_steps, "tokens": n_steps * 256, "rss_before_mib": before, "peak_mib": peak}))


def memory_run(n_steps: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--memory-child", str(n_steps)], check=True,
                         capture_output=True, text=True, env=os.environ | {"PYTHONWARNINGS": "ignore"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--quick", action="store_true", help="fewer repeats (noisier)")
    ap.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child is not None:
        memory_child(args.memory_child)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    r = 3 if args.quick else 7
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU; median of {r} runs\n")

    print("1. training throughput (TrainingStep: loss + AuxK + backward + clip + fused Adam)")
    e, p = EMBEDDED, PAPER
    t_emb = timed({"emb": step_fn(e["d_model"], e["n_features"], e["k"], e["batch"], "auto")}, r)["emb"]
    print(f"   embedded geometry 17x{e['d_model']}, H={e['n_features']}, k={e['k']}, batch {e['batch']}: "
          f"{t_emb * 1e3:7.1f} ms/step  {e['batch'] / t_emb:9.0f} tokens/s")
    rows = {}
    for batch in (64, 256):
        rows[batch] = t = timed({
            "sparse": step_fn(p["d_model"], p["n_features"], p["k"], batch, "sparse"),
            "dense": step_fn(p["d_model"], p["n_features"], p["k"], batch, "dense"),
            "bare_sparse": bare_sparse_fn(p["d_model"], p["n_features"], p["k"], batch),
            "bare_dense": bare_dense_fn(p["d_model"], p["n_features"], batch),
            "dec_sparse": decoder_fn(p["d_model"], p["n_features"], p["k"], batch, "sparse"),
            "dec_dense": decoder_fn(p["d_model"], p["n_features"], p["k"], batch, "dense"),
        }, r)
        print(f"   paper geometry 17x768, H=1536, k=20, batch {batch:3d}: sparse {t['sparse'] * 1e3:7.1f} ms/step "
              f"({batch / t['sparse']:6.0f} tokens/s), dense {t['dense'] * 1e3:7.1f} ms/step "
              f"({batch / t['dense']:6.0f} tokens/s)")
    print("\n2. sparse decode at the paper geometry: dense time / sparse time (target >= 2)")
    for batch, t in rows.items():
        print(f"   batch {batch:3d}: decoder forward+backward {t['dec_dense'] / t['dec_sparse']:5.2f}x "
              f"({t['dec_dense'] * 1e3:.1f} vs {t['dec_sparse'] * 1e3:.1f} ms); "
              f"whole training step {t['dense'] / t['sparse']:5.2f}x")
    print("\n3. step time / its bare kernels (target <= 2)")
    for batch, t in rows.items():
        print(f"   batch {batch:3d}: sparse step {t['sparse'] / t['bare_sparse']:5.2f}x its 2 matmuls + "
              f"embedding_bag fwd/bwd ({t['bare_sparse'] * 1e3:.1f} ms); dense step "
              f"{t['dense'] / t['bare_dense']:5.2f}x its 5 matmuls ({t['bare_dense'] * 1e3:.1f} ms)")
    ratio_bridge, ratio_hf, name = harvest_ratio(r)
    print(f"\n4. harvest throughput / plain forward (target >= 0.7), {name}, 32x128 tokens, 17 hookpoints")
    print(f"   vs the bridge's own forward: {ratio_bridge:5.2f}    vs the raw Hugging Face forward: {ratio_hf:5.2f}")
    print("\n5. peak memory of a whole training run through an ActivationBuffer (fresh process each)")
    small, large = memory_run(100), memory_run(400)
    for m in (small, large):
        print(f"   {m['tokens']:7d} tokens: peak RSS {m['peak_mib']:7.1f} MiB "
              f"(of which {m['rss_before_mib']:.1f} MiB before training: torch, model)")
    print(f"   growth for 4x the tokens: {large['peak_mib'] / small['peak_mib']:5.3f}x")


if __name__ == "__main__":
    main()
