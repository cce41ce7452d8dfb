"""bfloat16 G against float32 G: what the opt-in ``g_precision="bfloat16"`` changes (issue 17).

    python benchmarks/bench_precision.py [--steps 300] [--quick] [--save]

``--quick`` is a smoke run (a tiny geometry, a few training steps; seconds): it checks that every
figure below is computed and printed, and its numbers mean nothing.

The interaction penalty forms ``G_l = W_dec[:, slot(l)] · W_in_l`` every step. In bfloat16 (inputs
rounded to 8 mantissa bits, float32 accumulation inside the GEMM, the product rounded to bf16) it is
~8× faster where the CPU has bf16 matrix units, and ``G`` carries a relative error of ~3e-3. This
measures what that error does, and prints (``--save``: ``benchmarks/results/bench_precision.json``):

1. at the paper geometry (random crosscoder, BatchTopK codes of 1024 random tokens, 4 blocks,
   D = 768, N = 3072, H = 1536): the relative error of ``G``, how often the dominant feature of a
   (block, token, neuron) flips, the relative error of the penalty and of the dominant share, and
   of the penalty's gradients (decoder and codes);
2. a short training run on the embedded world (``embedded:clean``'s 17 hookpoints, H = 512, k = 20,
   λ = 1000 warmed up over 30 % of the steps, the same seed and batches) with float32 and with
   bfloat16 ``G``: the held-out FVU and dominant share each run ends with, and their differences.
   On a CPU without bf16 units the bf16 run is the slower one (the GEMM is emulated); only its
   result is compared here, speed is ``bench_interactions.py``'s.
"""

from __future__ import annotations

import argparse

import torch
from machine import begin, figure, finish

from crosscoder_lib.crosscoder.activations import FiringTracker, SparseCodes
from crosscoder_lib.crosscoder.evaluation import evaluate_reconstruction
from crosscoder_lib.crosscoder.model import Crosscoder, CrosscoderConfig
from crosscoder_lib.crosscoder.training import TrainConfig
from crosscoder_lib.crosscoder.training.loss import Objective, interaction_term
from crosscoder_lib.crosscoder.training.step import TrainingStep, make_optimizer
from crosscoder_lib.interactions.mlp import MLPWeights, mlp_weights
from crosscoder_lib.interactions.object import MLPInteractions
from crosscoder_lib.lm.hookpoints import mlp_input_slots, paper_hookpoints

LAMBDA = 1000.0
# (blocks, D, neurons, features, tokens) of the random case; the training run's (steps, batch, features,
# held-out tokens)
SIZES = {"full": {"case": (4, 768, 3072, 1536, 1024), "train": (300, 256, 512, 4096), "gemm_n": 2048},
         "quick": {"case": (4, 32, 128, 64, 128), "train": (4, 64, 64, 256), "gemm_n": 256}}


def paper_case(L: int, D: int, N: int, H: int, n_tokens: int):
    """A random crosscoder at the paper geometry, its BatchTopK codes and the MLP-input rows."""
    g = torch.Generator().manual_seed(0)
    mlp = MLPWeights(torch.randn(L, D, N, generator=g) / D ** 0.5, torch.randn(L, N, generator=g) * 0.1,
                     torch.randn(L, N, D, generator=g) / N ** 0.5, torch.randn(L, D, generator=g) * 0.1, "gelu_new")
    hp = paper_hookpoints(L)
    cc = Crosscoder(CrosscoderConfig(hookpoints=hp, d_model=D, n_features=H, k=20))
    acts = torch.randn(n_tokens, len(hp), D, generator=g) * torch.randn(n_tokens, 1, 1, generator=g).mul(0.135).exp()
    cc.set_input_scale(acts)
    with torch.no_grad():
        codes = cc.encode(acts)
    return codes, cc.decoder_slots_LHD(mlp_input_slots(hp)).detach(), mlp


def dominant_flips(codes: SparseCodes, G32: torch.Tensor, G16: torch.Tensor, chunk: int = 64) -> float:
    """Fraction of (block, token, neuron) with an active feature whose dominant feature differs."""
    flips = total = 0
    for s in range(0, codes.idx_BK.shape[0], chunk):
        idx, val = codes.idx_BK[s:s + chunk], codes.val_BK[s:s + chunk]
        has = (val != 0).any(1)
        for l in range(G32.shape[0]):
            d32 = (val[:, :, None] * G32[l][idx]).abs().argmax(1)  # [t, N]
            d16 = (val[:, :, None] * G16[l][idx]).abs().argmax(1)
            flips += int(((d32 != d16) & has[:, None]).sum())
            total += int(has.sum()) * G32.shape[2]
    return flips / total


def penalty_and_grads(codes, W, mlp, g_precision):
    W = W.clone().requires_grad_(True)
    v = codes.val_BK.clone().requires_grad_(True)
    stats = MLPInteractions(W, mlp).penalty(SparseCodes(codes.idx_BK, v), g_precision=g_precision)
    stats.penalty.backward()
    return stats.penalty.item(), stats.dominant_share.item(), W.grad, v.grad


def rel(a, b) -> float:
    return float((a - b).norm() / b.norm()) if isinstance(a, torch.Tensor) else abs(a - b) / abs(b)


def at_paper_geometry(case: tuple) -> dict:
    codes, W, mlp = paper_case(*case)
    G32 = torch.matmul(W, mlp.W_in_LDN)
    G16 = torch.matmul(W.to(torch.bfloat16), mlp.W_in_LDN.to(torch.bfloat16)).float()
    p32, s32, gW32, gv32 = penalty_and_grads(codes, W, mlp, "float32")
    p16, s16, gW16, gv16 = penalty_and_grads(codes, W, mlp, "bfloat16")
    return {"G_rel_error": rel(G16, G32), "dominant_flip_fraction": dominant_flips(codes, G32, G16),
            "penalty_rel_error": rel(p16, p32), "share_rel_error": rel(s16, s32),
            "grad_W_rel_error": rel(gW16, gW32), "grad_val_rel_error": rel(gv16, gv32),
            "padded_K": codes.idx_BK.shape[1]}


def embedded_activations(n_train: int, n_test: int):
    from crosscoder_lib.lm.loading import load_model
    from crosscoder_lib.lm.positions import harvest_positions
    from crosscoder_lib.world.data import load_texts

    model = load_model("embedded:clean")
    hp = paper_hookpoints(model.cfg.n_layers)

    def positions(split: str, n_texts: int, n: int, seed: int):
        return harvest_positions(model, load_texts("embedded", split, n_texts), hp, n, context_len=128, batch_size=32,
                                 seed=seed).acts_BXD

    return model, hp, positions("train", 4000, n_train, 0), positions("heldout", 1000, n_test, 1)


def train_run(acts, test, hp, mlp, g_precision: str, steps: int, batch: int = 256, n_features: int = 512) -> dict:
    """``steps`` TrainingSteps at λ = 1000 (warmed up over 30 %) with G in ``g_precision``."""
    torch.manual_seed(0)
    cfg = TrainConfig(n_steps=steps, batch_size=batch, lr=1e-3, lambda_int=LAMBDA, lambda_warmup_frac=0.3, seed=0)
    cc = Crosscoder(CrosscoderConfig(hookpoints=hp, d_model=acts.shape[2], n_features=n_features, k=20,
                                     dead_steps=100))
    cc.set_input_scale(acts[:2048])
    term = interaction_term(cc, mlp, cfg.penalty_form, g_precision=g_precision)
    step = TrainingStep(Objective(cc, term), make_optimizer(cc, cfg), FiringTracker(n_features, cc.cfg.dead_steps),
                        cfg)
    order = torch.randperm(acts.shape[0], generator=torch.Generator().manual_seed(0))
    for i in range(steps):
        rows = order[(i * batch) % acts.shape[0]:][:batch]
        step(acts[rows], i, with_fvu=False)
    cc.eval()
    with torch.no_grad():
        share = float(MLPInteractions.of(cc, mlp).dominant_share(cc.encode(test)))
    return {"fvu": evaluate_reconstruction(cc, test).fvu, "dominant_share": share}


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=None, help="training steps (default 300)")
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny geometry, 4 training steps (seconds)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--save", action="store_true", help="write benchmarks/results/bench_precision.json")
    args = ap.parse_args(argv)
    sizes, machine = begin(args, SIZES)
    steps, batch, n_features, n_test = sizes["train"]
    steps = args.steps or steps
    p = at_paper_geometry(sizes["case"])
    L, D, N, H, T = sizes["case"]
    print(f"1. {L} blocks, D={D}, N={N}, H={H}, {T} tokens (padded K = {p['padded_K']}): G rel. error "
          f"{p['G_rel_error']:.2e}; dominant feature flips at {p['dominant_flip_fraction']:.3%} of (block, token, "
          f"neuron); penalty rel. error {p['penalty_rel_error']:.2e}, share {p['share_rel_error']:.2e}; gradients: "
          f"decoder {p['grad_W_rel_error']:.2e}, codes {p['grad_val_rel_error']:.2e}")
    model, hp, acts, test = embedded_activations(max(steps * batch // 2, 2 * batch), n_test)
    mlp = mlp_weights(model)
    runs = {prec: train_run(acts, test, hp, mlp, prec, steps, batch, n_features) for prec in ("float32", "bfloat16")}
    a, b = runs["float32"], runs["bfloat16"]
    print(f"\n2. embedded:clean, H={n_features}, {steps} steps of {batch} at λ = {LAMBDA:g}: float32 G ends at FVU "
          f"{a['fvu']:.4f}, share {a['dominant_share']:.4f}; bfloat16 G at FVU {b['fvu']:.4f}, share "
          f"{b['dominant_share']:.4f} (differences {b['fvu'] - a['fvu']:+.4f}, "
          f"{b['dominant_share'] - a['dominant_share']:+.4f})")
    figures = [
        figure("bf16 G: dominant-feature flips (paper geometry)", 100 * p["dominant_flip_fraction"], unit=" %"),
        figure("bf16 G: penalty relative error (paper geometry)", p["penalty_rel_error"], unit=""),
        figure(f"bf16 G: short training run, FVU difference ({steps} steps)", b["fvu"] - a["fvu"], unit=""),
        figure(f"bf16 G: short training run, dominant share difference ({steps} steps)",
               b["dominant_share"] - a["dominant_share"], unit=""),
    ]
    raw = {"sizes": sizes, "paper_geometry": p, "training": runs, "steps": steps}
    return finish("bench_precision", machine, figures, raw, args)


if __name__ == "__main__":
    main()
