"""Time one framework's SAE training step in this process; print the result as JSON (last line).

    python benchmarks/peers/run_one.py FRAMEWORK --d-in 768 --n-latents 12288 --k 32 --batch 4096 \
        --steps 5 --warmup 2 --threads 2 [--profile]

``bench_peers.py`` starts this once per framework and round, with the project's interpreter for
ours and the peers' venv (``install.py``) for the others; it imports only the framework it times.
Every framework trains on the same random activations (4 batches of a fixed seed, cycled), in
float32, on the CPU. What each step includes is in :data:`STEPS` (and printed with the result).
``--profile`` prints instead where a step's time goes, op by op (torch.profiler, self CPU time per step).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Callable

import torch

STEPS = {
    "ours-topk": "crosscoder_lib TrainingStep, one hookpoint, TopK: encode, sparse decode, MSE + AuxK, backward, "
                 "clip 1.0, fused Adam, dead-feature tracking",
    "ours-batchtopk": "the same with BatchTopK (the library's default activation)",
    "saelens-topk": "SAELens TopKTrainingSAE.training_forward_pass (MSE + AuxK), backward, clip 1.0, Adam, "
                    "dead-neuron counters (SAETrainer._train_step without its LR scheduler and logging)",
    "saelens-batchtopk": "the same with BatchTopKTrainingSAE (threshold update included)",
    "sparsify-topk": "sparsify SparseCoder forward (fused TopK encoder, FVU; AuxK at alpha 1/32 with its dead "
                     "mask), backward, decoder unit-norm and parallel-gradient removal, torch Adam "
                     "(Trainer's step without its LR scheduler and hooks into a model)",
    "dictlearn-topk": "dictionary_learning TopKTrainer.update: MSE + AuxK, backward, parallel-gradient removal, "
                      "clip 1.0, Adam, LR scheduler, decoder renormalisation",
    "dictlearn-batchtopk": "the same with BatchTopKTrainer",
}


def hookpoint() -> str:
    from crosscoder_lib.lm.hookpoints import paper_hookpoints

    return paper_hookpoints(1)[0]


def ours(activation: str, d_in: int, n_latents: int, k: int, batch: int) -> Callable[[torch.Tensor], None]:
    from crosscoder_lib.crosscoder.activations import FiringTracker
    from crosscoder_lib.crosscoder.model import Crosscoder, CrosscoderConfig
    from crosscoder_lib.crosscoder.training import TrainConfig
    from crosscoder_lib.crosscoder.training.loss import Objective
    from crosscoder_lib.crosscoder.training.step import TrainingStep, make_optimizer

    cfg = CrosscoderConfig([hookpoint()], d_in, n_latents, k=k, activation=activation)
    cc = Crosscoder(cfg)
    tcfg = TrainConfig(batch_size=batch, warmup_frac=0.0, decay_frac=0.0)
    step = TrainingStep(Objective(cc), make_optimizer(cc, tcfg), FiringTracker(n_latents, cfg.dead_steps), tcfg)
    calls = [0]

    def run(x_BD: torch.Tensor) -> None:
        step(x_BD[:, None, :], calls[0], with_fvu=False)
        calls[0] += 1
    return run


def saelens(activation: str, d_in: int, n_latents: int, k: int, batch: int) -> Callable[[torch.Tensor], None]:
    from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
    from sae_lens.saes.sae import TrainStepInput
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

    cls, cfg_cls = ((TopKTrainingSAE, TopKTrainingSAEConfig) if activation == "topk"
                    else (BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig))
    sae = cls(cfg_cls(d_in=d_in, d_sae=n_latents, k=k, dtype="float32", device="cpu"))
    opt = torch.optim.Adam(sae.parameters(), lr=3e-4, betas=(0.9, 0.999))
    since_fired = torch.zeros(n_latents)
    calls = [0]

    def run(x_BD: torch.Tensor) -> None:
        sae.train()
        out = sae.training_forward_pass(step_input=TrainStepInput(
            sae_in=x_BD, coefficients={}, dead_neuron_mask=since_fired > 1000, n_training_steps=calls[0],
            is_logging_step=False))
        with torch.no_grad():
            fired = out.feature_acts.bool().float().sum(-2).bool()
            if fired.is_sparse:
                fired = fired.to_dense()
            since_fired.add_(1)[fired] = 0
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        calls[0] += 1
    return run


def sparsify(activation: str, d_in: int, n_latents: int, k: int, batch: int) -> Callable[[torch.Tensor], None]:
    from sparsify import SparseCoder, SparseCoderConfig

    sae = SparseCoder(d_in, SparseCoderConfig(num_latents=n_latents, k=k), device="cpu", dtype=torch.float32)
    opt = torch.optim.Adam(sae.parameters(), lr=2e-4 / (n_latents / 2 ** 14) ** 0.5)
    tokens_since_fired = torch.zeros(n_latents, dtype=torch.long)

    def run(x_BD: torch.Tensor) -> None:
        sae.set_decoder_norm_to_unit_norm()
        out = sae(x_BD, dead_mask=tokens_since_fired > 10_000_000)
        tokens_since_fired.add_(x_BD.shape[0])[out.latent_indices.flatten()] = 0
        (out.fvu + out.auxk_loss / 32).backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()
    return run


def dictlearn(activation: str, d_in: int, n_latents: int, k: int, batch: int) -> Callable[[torch.Tensor], None]:
    from dictionary_learning.trainers.batch_top_k import BatchTopKTrainer
    from dictionary_learning.trainers.top_k import TopKTrainer

    cls = TopKTrainer if activation == "topk" else BatchTopKTrainer
    trainer = cls(steps=10_000, activation_dim=d_in, dict_size=n_latents, k=k, layer=0, lm_name="bench",
                  device="cpu", seed=0)
    calls = [0]

    def run(x_BD: torch.Tensor) -> None:
        trainer.update(calls[0], x_BD)
        calls[0] += 1
    return run


BUILDERS = {"ours": ours, "saelens": saelens, "sparsify": sparsify, "dictlearn": dictlearn}


def status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def setup(framework: str, d_in: int, n_latents: int, k: int, batch: int) -> tuple[Callable, list[torch.Tensor]]:
    """``framework``'s step and the activations every framework trains on (4 batches of a fixed seed)."""
    if framework not in STEPS:
        raise SystemExit(f"unknown framework {framework!r}; choose one of {', '.join(STEPS)}")
    name, activation = framework.split("-")
    g = torch.Generator().manual_seed(0)
    data = [torch.randn(batch, d_in, generator=g) for _ in range(4)]
    return BUILDERS[name](activation, d_in, n_latents, k, batch), data


def measure(framework: str, d_in: int, n_latents: int, k: int, batch: int, steps: int, warmup: int) -> dict:
    """Median seconds of ``steps`` steps after ``warmup``, and the peak resident set."""
    base = status_mib("VmRSS")
    step, data = setup(framework, d_in, n_latents, k, batch)
    times = []
    for i in range(warmup + steps):
        t = time.perf_counter()
        step(data[i % len(data)])
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return {"framework": framework, "step": STEPS[framework], "step_s": times, "median_s": statistics.median(times),
            "peak_rss_mib": status_mib("VmHWM"), "rss_before_model_mib": base, "torch": torch.__version__,
            "threads": torch.get_num_threads()}


def profile(framework: str, d_in: int, n_latents: int, k: int, batch: int, steps: int, warmup: int,
            top: int = 15) -> dict:
    """Where a step's time goes: torch.profiler's ops by self CPU time, per step, after ``warmup``
    (the profiler adds overhead, so these are shares, not the step's time)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    step, data = setup(framework, d_in, n_latents, k, batch)
    for i in range(warmup):
        step(data[i % len(data)])
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(steps):
            step(data[(warmup + i) % len(data)])
    ops = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in ops)
    return {"framework": framework, "profiled_steps": steps, "self_ms_per_step_total": total / 1e3 / steps,
            "ops": [{"op": e.key, "self_ms_per_step": e.self_cpu_time_total / 1e3 / steps, "calls_per_step":
                     e.count / steps} for e in ops[:top]]}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("framework", choices=sorted(STEPS))
    for flag, default in (("--d-in", 768), ("--n-latents", 16 * 768), ("--k", 32), ("--batch", 4096),
                          ("--steps", 5), ("--warmup", 2), ("--threads", 0)):
        ap.add_argument(flag, type=int, default=default)
    ap.add_argument("--profile", action="store_true", help="print where the step's time goes, by op, instead")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    run = profile if a.profile else measure
    print(json.dumps(run(a.framework, a.d_in, a.n_latents, a.k, a.batch, a.steps, a.warmup)))


if __name__ == "__main__":
    main()
