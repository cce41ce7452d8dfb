"""Which 4 consecutive blocks of SmolLM2-135M should the real world's crosscoder read?

For each candidate window ``b..b+3`` this trains a standard crosscoder (λ = 0) on the window's 17
hookpoints and measures, on held-out stories, what decides whether the paper's effects can show:

- how polysemantic the window's MLP neurons look through a standard crosscoder: the dominant share
  and the keep_largest fidelity Φ (the toy's early MLPs are nearly one feature per neuron, so
  Figure 2's effect cannot show there);
- how much the window's MLPs matter: the loss increase when every feature is removed from an MLP
  input (L_zero − L_model, the denominator of Φ);
- what it costs: harvest throughput (tokens/s) through the window, on this machine.

``python scripts/smollm2_window.py --out book/results/smollm2_window.json`` (the five default windows
took 26.8 min on an idle 2-core CPU, 5-6.5 min each; each window's row records its phases' seconds:
training and the one-batch ablation take most of it). The file is
rewritten after every window, and a re-run with the same parameters keeps the windows it holds and
measures only the missing ones. The chosen default (``FIRST_BLOCK`` of the smollm2 preset) and why
are in chapter 1's SmolLM2 page, which reads this file.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from crosscoder_lib import (CrosscoderConfig, MLPInteractions, RunOptions, TrainConfig, ablation_fidelity,
                            describe_device, evaluate_reconstruction, harvest_positions, load_model, load_texts,
                            mlp_weights, paper_hookpoints, token_batches, train)


def measure_window(model, mlp, first_block: int, args) -> dict:
    hookpoints = paper_hookpoints(4, first_block=first_block)
    texts = load_texts("smollm2-stories", "train", args.n_texts)
    seconds, t0 = {}, time.perf_counter()
    train_set = harvest_positions(model, texts, hookpoints, args.n_tokens, context_len=args.context_len,
                                  batch_size=16, seed=0, pack=False)
    harvest_s = seconds["harvest"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    held = load_texts("smollm2-stories", "heldout", args.n_texts // 4)
    test_set = harvest_positions(model, held, hookpoints, args.n_test_tokens, context_len=args.context_len,
                                 batch_size=16, seed=1, pack=False)
    seconds["harvest_heldout"] = time.perf_counter() - t0
    cfg = CrosscoderConfig(hookpoints=hookpoints, d_model=model.cfg.d_model, n_features=args.n_features, k=20,
                           dead_steps=max(10, args.steps // 6), init_seed=0)
    t0 = time.perf_counter()
    cc = train(TrainConfig(n_steps=args.steps, batch_size=256, lr=2e-3, seed=0), train_set.acts_BXD, crosscoder=cfg,
               options=RunOptions(progress=False)).crosscoder.eval()
    seconds["train"], t0 = time.perf_counter() - t0, time.perf_counter()
    with torch.no_grad():
        share = float(MLPInteractions.of(cc, mlp).dominant_share(cc.encode(test_set.acts_BXD)))
    fvu = evaluate_reconstruction(cc, test_set.acts_BXD).fvu
    batches = token_batches(held, model.tokenizer, batch_size=8, context_len=args.context_len, seed=2, pack=False)
    seconds["share_fvu"], t0 = time.perf_counter() - t0, time.perf_counter()
    results = ablation_fidelity(model, cc, mlp, batches, max_batches=args.ablation_batches, progress=False)
    seconds["ablation"] = time.perf_counter() - t0
    per_block = {}
    for r in results:
        per_block.setdefault(r.block, []).append(r)
    blocks = {b: {"keep_largest": float(np.mean([r.fidelity["keep_largest"] for r in rs])),
                  "zero_minus_model": float(np.mean([r.loss["zero"] - r.loss_model for r in rs]))}
              for b, rs in sorted(per_block.items())}
    return {"first_block": first_block, "harvest_tokens_per_s": args.n_tokens / harvest_s, "fvu": fvu,
            "dominant_share": share, "blocks": blocks,
            "keep_largest": float(np.mean([v["keep_largest"] for v in blocks.values()])),
            "zero_minus_model": float(np.mean([v["zero_minus_model"] for v in blocks.values()])),
            "seconds": {k: round(v, 1) for k, v in seconds.items()}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("book/results/smollm2_window.json"))
    p.add_argument("--windows", type=int, nargs="+", default=[0, 6, 12, 18, 24])
    p.add_argument("--n-tokens", type=int, default=16_384)
    p.add_argument("--n-test-tokens", type=int, default=2_048)
    p.add_argument("--n-texts", type=int, default=1_200)
    p.add_argument("--n-features", type=int, default=2_048)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--context-len", type=int, default=128)
    p.add_argument("--ablation-batches", type=int, default=1)
    args = p.parse_args()
    params = vars(args) | {"out": str(args.out)}
    done, spent = _finished_windows(args.out, params)
    model = load_model("smollm2-135m")
    mlp = mlp_weights(model)
    started = time.perf_counter()
    rows = list(done.values())
    for b in args.windows:
        if b in done:
            print(f"window {b}: already in {args.out}, kept", flush=True)
            continue
        rows.append(measure_window(model, mlp, b, args))
        print(json.dumps(rows[-1]), flush=True)
        # after every window, so an interrupted run keeps what it measured and resumes at the next one
        out = {"windows": sorted(rows, key=lambda r: r["first_block"]), "params": params,
               "device": describe_device("cpu"), "threads": torch.get_num_threads(),
               "run_seconds": round(spent + time.perf_counter() - started, 1)}
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(out, indent=2) + "\n")
        tmp.replace(args.out)


def _finished_windows(path: Path, params: dict) -> tuple[dict[int, dict], float]:
    """Windows already measured in ``path`` with the same parameters, and the seconds they took."""
    if not path.is_file():
        return {}, 0.0
    old = json.loads(path.read_text())
    same = {k: v for k, v in old.get("params", {}).items() if k != "windows"} == \
        {k: v for k, v in params.items() if k != "windows"}
    if not same:
        raise SystemExit(f"{path} holds windows measured with other parameters ({old.get('params')}); "
                         f"move it away or pass the same parameters to resume it")
    return {r["first_block"]: r for r in old["windows"]}, float(old.get("run_seconds", 0.0))


if __name__ == "__main__":
    main()
