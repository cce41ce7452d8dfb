"""GPU benchmark at the paper's geometry: training tokens/s, peak GPU memory, harvest vs training time.

    python benchmarks/bench_gpu.py [--steps 300] [--json bench_gpu.json]   # a GPU (else: --smoke on CPU)
    python benchmarks/bench_gpu.py --smoke [--json out.json]                # tiny geometry, any CPU

Model: a randomly initialised GPT-Neo of the shape of ``roneneldan/TinyStories-Instruct-33M``
(4 blocks, d_model 768, d_mlp 3072, 16 heads, vocab 50257, context 512, local window 256, GELU),
built here from ``GPTNeoConfig`` (no hub). Crosscoder over the 17 paper hookpoints, H = 1536,
BatchTopK k = 20, batch 256 positions, sequences of 128 tokens harvested 32 at a time into a buffer
of 16384 positions (SPEC §5; the ``crosscoder train`` defaults). Token ids are random: throughput
does not depend on the text. Every number below is measured for λ = 0 and for a penalised λ:

1. **end to end**: ``train()`` on an ``ActivationBuffer`` that harvests from the model (what
   ``crosscoder train`` runs): tokens/s, and the time spent inside the harvester (model forward and
   the copy into host memory) against the rest (training steps, buffer shuffling, host-to-device
   copies). The buffer's first fill makes a short run harvest more positions than it trains on, so
   the steady-state harvest share is also given, from the per-position costs
   ``h / (h + t)`` (h: harvest seconds per harvested position, t: other seconds per trained one);
2. **training only**: ``train()`` on activations already harvested onto the device: tokens/s;
3. **peak GPU memory** (``torch.cuda.max_memory_allocated``) of each run;
4. **the penalty's backends**: the interaction penalty alone (forward + backward, BatchTopK codes
   of one batch) on the backend ``crosscoder_lib.interactions.kernels`` chooses for the device
   (Triton on a GPU) against its PyTorch fallback, and the penalised training-only step on each,
   for every λ of the sweep (:data:`LAMBDA_SWEEP`). On a CPU (``--smoke``) the same is measured
   for the C kernel against the PyTorch path, and the GPU numbers are said to be still to measure.

Each measured run follows an unmeasured warm-up run of the same kind (CUDA context, cuBLAS
handles, kernel selection). Output: a table on stdout, and with ``--json`` the same numbers as JSON
(for the book's chapter 6; on a GPU the default is ``book/results/bench_gpu.json``). Device name,
torch and CUDA versions are printed and saved. ``--quick`` is ``--smoke``.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

from crosscoder_lib.crosscoder.model import CrosscoderConfig
from crosscoder_lib.lm.harvest import ActivationBuffer, harvest
from crosscoder_lib.lm.hookpoints import paper_hookpoints
from crosscoder_lib.lm.loading import load_model
from crosscoder_lib.interactions.mlp import mlp_weights
from crosscoder_lib.crosscoder.training import RunOptions, TrainConfig, train

GEOMETRIES = {
    # TinyStories-Instruct-33M's shape and the paper's crosscoder (SPEC §5)
    "paper": dict(n_blocks=4, d_model=768, d_mlp=3072, n_heads=16, vocab=50257, context=512, window=256,
                  seq_len=128, seqs_per_harvest=32, capacity=16384, n_features=1536, k=20, batch=256),
    # small enough to run on a busy 2-core CPU in seconds
    "smoke": dict(n_blocks=4, d_model=32, d_mlp=128, n_heads=4, vocab=1000, context=64, window=16,
                  seq_len=32, seqs_per_harvest=8, capacity=1024, n_features=128, k=4, batch=64),
}
PENALISED_LAMBDA = 1000.0  # one of the paper's λ values; the cost of a step does not depend on it
LAMBDA_SWEEP = (30.0, 100.0, 300.0, 1000.0, 2000.0)  # the penalised λ values of chapter 3's sweep
BOOK_JSON = Path(__file__).resolve().parents[1] / "book" / "results" / "bench_gpu.json"


def build_model(folder: Path, g: dict, device: str):
    """A random GPT-Neo of geometry ``g`` saved to ``folder`` and loaded as a TransformerBridge."""
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    from crosscoder_lib.world.tokenizer import build_tokenizer

    config = GPTNeoConfig(
        vocab_size=g["vocab"], max_position_embeddings=g["context"], hidden_size=g["d_model"],
        num_layers=g["n_blocks"], attention_types=[[["global", "local"], g["n_blocks"] // 2]],
        num_heads=g["n_heads"], intermediate_size=g["d_mlp"], window_size=g["window"],
        activation_function="gelu_new", bos_token_id=0, eos_token_id=0, pad_token_id=0)
    torch.manual_seed(0)
    GPTNeoForCausalLM(config).save_pretrained(str(folder))
    # load_model wants tokenizer files; the benchmark feeds token ids, so any tokenizer will do
    build_tokenizer().save_pretrained(str(folder))
    return load_model(str(folder), device=device)


def token_stream(g: dict, seed: int = 0):
    """A callable giving an endless stream of random ``tokens_BS``, BOS (id 0) first."""
    def batches():
        gen = torch.Generator().manual_seed(seed)
        while True:
            t = torch.randint(1, g["vocab"], (g["seqs_per_harvest"], g["seq_len"]), generator=gen)
            t[:, 0] = 0
            yield t
    return batches


class TimedHarvester:
    """``tokens_BS -> acts_BXD`` through :func:`harvest`, adding up its wall time and positions.
    (The harvest copies into host memory, so it has finished on the GPU when it returns.)"""

    def __init__(self, bridge, hookpoints: list[str]):
        self.bridge, self.hookpoints = bridge, hookpoints
        self.seconds, self.positions = 0.0, 0

    def __call__(self, tokens_BS: torch.Tensor) -> torch.Tensor:
        t = time.perf_counter()
        acts = harvest(self.bridge, tokens_BS, self.hookpoints)
        self.seconds += time.perf_counter() - t
        self.positions += acts.shape[0]
        return acts


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None


def run_end_to_end(bridge, g: dict, cc_cfg: CrosscoderConfig, lam: float, mlp, steps: int, device: str) -> dict:
    """``train()`` harvesting from the model through an ActivationBuffer (warm-up run first)."""
    hookpoints = cc_cfg.hookpoints
    out = {}
    for phase, n in (("warmup", max(steps // 10, 5)), ("measured", steps)):
        harvester = TimedHarvester(bridge, hookpoints)
        source = ActivationBuffer(bridge, token_stream(g, seed=1), hookpoints, batch_size=g["batch"],
                                  capacity_tokens=g["capacity"], harvester=harvester)
        tcfg = TrainConfig(n_steps=n, batch_size=g["batch"], lambda_int=lam)
        options = RunOptions(device=device, progress=False, log_every=n, checkpoint_every=0)
        sync(device)
        reset_peak(device)
        t = time.perf_counter()
        r = train(tcfg, source, crosscoder=cc_cfg, mlp=mlp if lam > 0 else None, options=options)
        sync(device)
        wall = time.perf_counter() - t
        trained = n * g["batch"]
        other_per_position = (wall - harvester.seconds) / trained
        harvest_per_position = harvester.seconds / max(harvester.positions, 1)
        out = {
            "steps": n, "wall_s": wall, "tokens_per_s": trained / wall,
            "harvest_s": harvester.seconds, "harvested_positions": harvester.positions,
            "trained_positions": trained, "harvest_share": harvester.seconds / wall,
            "harvest_share_steady_state": harvest_per_position / (harvest_per_position + other_per_position),
            "harvest_positions_per_s": 1 / harvest_per_position,
            "peak_gpu_memory_gib": peak_gib(device), "final_fvu": r.final.get("fvu"), "final_l0": r.final.get("l0"),
        }
    return out


def run_training_only(acts_TXD: torch.Tensor, g: dict, cc_cfg: CrosscoderConfig, lam: float, mlp, steps: int,
                      device: str) -> dict:
    """``train()`` on activations already on the device (warm-up run first)."""
    out = {}
    for phase, n in (("warmup", max(steps // 10, 5)), ("measured", steps)):
        tcfg = TrainConfig(n_steps=n, batch_size=g["batch"], lambda_int=lam)
        options = RunOptions(device=device, progress=False, log_every=n, checkpoint_every=0)
        sync(device)
        reset_peak(device)
        t = time.perf_counter()
        train(tcfg, acts_TXD, crosscoder=cc_cfg, mlp=mlp if lam > 0 else None, options=options)
        sync(device)
        wall = time.perf_counter() - t
        out = {"steps": n, "wall_s": wall, "tokens_per_s": n * g["batch"] / wall,
               "step_ms": 1000 * wall / n, "peak_gpu_memory_gib": peak_gib(device)}
    return out


def penalty_backends(acts_TXD: torch.Tensor, g: dict, cc_cfg: CrosscoderConfig, mlp, steps: int,
                     device: str, lambdas: tuple[float, ...] = LAMBDA_SWEEP) -> dict:
    """Section 4: the penalty alone and the penalised step on the device's kernel and on PyTorch."""
    from crosscoder_lib.crosscoder.model import Crosscoder
    from crosscoder_lib.interactions import kernels
    from crosscoder_lib.interactions.object import MLPInteractions
    from crosscoder_lib.lm.hookpoints import mlp_input_slots

    kernel = "triton" if device.startswith("cuda") else "c"
    cc = Crosscoder(cc_cfg).to(device)
    cc.set_input_scale(acts_TXD)
    with torch.no_grad():
        codes = cc.encode(acts_TXD[:g["batch"]])
    W = cc.decoder_slots_LHD(mlp_input_slots(cc_cfg.hookpoints)).detach().requires_grad_(True)
    inter = MLPInteractions(W, mlp.to(device=device))

    def penalty_ms(backend: str) -> float:
        with kernels.use_backend(backend):
            for i in range(steps + 2):  # two warm-up calls
                if i == 2:
                    sync(device)
                    t = time.perf_counter()
                inter.penalty(codes).penalty.backward()
            sync(device)
        return 1000 * (time.perf_counter() - t) / steps

    out = {"kernel": kernel, "padded_K": codes.idx_BK.shape[1], "penalty_ms": {}, "step_ms": {}}
    for backend in (kernel, "torch"):
        try:
            out["penalty_ms"][backend] = penalty_ms(backend)
            with kernels.use_backend(backend):
                out["step_ms"][backend] = {f"{lam:g}": run_training_only(acts_TXD, g, cc_cfg, lam, mlp, steps, device)
                                           ["step_ms"] for lam in lambdas}
        except RuntimeError as err:  # the kernel is unavailable here: say so, time the rest
            out["penalty_ms"][backend] = None
            out["unavailable"] = f"{backend}: {err}"
    return out


def print_backends(b: dict, device: str) -> None:
    k = b["kernel"]
    print(f"\npenalty backends ({k} vs torch; padded K = {b['padded_K']}):")
    if b["penalty_ms"].get(k) is None:
        print(f"  {b.get('unavailable', k + ' unavailable')}")
    for backend, ms in b["penalty_ms"].items():
        if ms is not None:
            steps = ", ".join(f"λ={lam} {v:.2f}" for lam, v in b["step_ms"][backend].items())
            print(f"  {backend:6s}: penalty fwd+bwd {ms:8.2f} ms; penalised step (ms) {steps}")
    if b["penalty_ms"].get(k) and b["penalty_ms"].get("torch"):
        print(f"  torch / {k}: penalty {b['penalty_ms']['torch'] / b['penalty_ms'][k]:.2f}x")
    if not device.startswith("cuda"):
        print("  GPU numbers are still to be measured: no GPU here (run this script on one)")


def device_info(device: str) -> dict:
    info = {"device": device, "torch": torch.__version__, "python": platform.python_version()}
    if device.startswith("cuda"):
        p = torch.cuda.get_device_properties(torch.cuda.current_device())
        info |= {"device_name": p.name, "gpu_memory_gib": p.total_memory / 2**30, "cuda": torch.version.cuda}
    else:
        info |= {"device_name": f"CPU ({platform.processor() or platform.machine()}, "
                                f"{torch.get_num_threads()} threads)"}
    return info


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", "--quick", action="store_true", help="tiny geometry (what runs on a CPU)")
    ap.add_argument("--device", default=None, help="cuda / cpu (default: cuda when available)")
    ap.add_argument("--steps", type=int, default=None, help="measured steps per run (default 300; smoke 20)")
    ap.add_argument("--lambda-penalised", type=float, default=PENALISED_LAMBDA)
    ap.add_argument("--json", default=None, help="also write the results to this JSON file (on a GPU, default "
                                                  "book/results/bench_gpu.json)")
    args = ap.parse_args(argv)

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    smoke = args.smoke
    if args.device is None and device == "cpu" and not smoke:
        print("no GPU: running the --smoke geometry on the CPU (the paper's needs a GPU)")
        smoke = True
    name = "smoke" if smoke else "paper"
    g = GEOMETRIES[name]
    steps = args.steps or (20 if smoke else 300)
    info = device_info(device)
    print(f"device: {info['device_name']} ({device}); torch {info['torch']}"
          + (f", CUDA {info['cuda']}" if "cuda" in info else ""))
    print(f"geometry {name}: {g}")

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        bridge = build_model(Path(tmp) / "model", g, device)
        print(f"random model built and loaded in {time.perf_counter() - t:.1f} s; "
              f"{sum(p.numel() for p in bridge.parameters()) / 1e6:.1f}M parameters")
    hookpoints = paper_hookpoints(g["n_blocks"])
    cc_cfg = CrosscoderConfig(hookpoints=hookpoints, d_model=g["d_model"], n_features=g["n_features"], k=g["k"])
    mlp = mlp_weights(bridge)
    tokens = token_stream(g, seed=2)()
    acts_TXD = torch.cat([harvest(bridge, next(tokens), hookpoints) for _ in range(4)]).to(device)
    data_gib = acts_TXD.numel() * acts_TXD.element_size() / 2**30

    results = {"geometry": name, **{f"geometry_{k}": v for k, v in g.items()}, **info,
               "model_parameters": sum(p.numel() for p in bridge.parameters()),
               "training_only_data_gib": data_gib, "runs": {}}
    for lam in (0.0, args.lambda_penalised):
        key = f"lambda_{lam:g}"
        e2e = run_end_to_end(bridge, g, cc_cfg, lam, mlp, steps, device)
        only = run_training_only(acts_TXD, g, cc_cfg, lam, mlp, steps, device)
        results["runs"][key] = {"lambda_int": lam, "end_to_end": e2e, "training_only": only}
        mem = lambda r: "n/a (CPU)" if r["peak_gpu_memory_gib"] is None else f"{r['peak_gpu_memory_gib']:.2f} GiB"
        print(f"\nλ = {lam:g}")
        print(f"  end to end (harvest + train): {e2e['tokens_per_s']:>10,.0f} tokens/s   peak GPU memory {mem(e2e)}")
        print(f"    harvest share of wall time: {e2e['harvest_share']:.1%} in this run "
              f"({e2e['harvested_positions']:,} positions harvested for {e2e['trained_positions']:,} trained); "
              f"steady state {e2e['harvest_share_steady_state']:.1%}")
        print(f"    harvest throughput:         {e2e['harvest_positions_per_s']:>10,.0f} positions/s")
        print(f"  training only (device data):  {only['tokens_per_s']:>10,.0f} tokens/s   "
              f"({only['step_ms']:.2f} ms/step)   peak GPU memory {mem(only)} "
              f"(of which {data_gib:.2f} GiB are the pre-harvested activations)")
    lambdas = (args.lambda_penalised,) if smoke else LAMBDA_SWEEP  # a step's cost does not depend on λ > 0
    results["penalty_backends"] = penalty_backends(acts_TXD, g, cc_cfg, mlp, steps, device, lambdas)
    print_backends(results["penalty_backends"], device)
    if not device.startswith("cuda"):
        results["penalty_backends"]["gpu"] = "still to be measured: no GPU here"
    results["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    json_path = args.json or (BOOK_JSON if device.startswith("cuda") and not smoke else None)
    if json_path:
        Path(json_path).write_text(json.dumps(results, indent=2))
        print(f"\nwrote {json_path}")
    return results


if __name__ == "__main__":
    main()
    sys.exit(0)
