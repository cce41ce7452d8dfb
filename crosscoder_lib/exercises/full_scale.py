"""Checkers of chapter 6 (full scale): the FLOP count of a forward pass, the learning-rate schedule of a
long run, and BatchTopK over a global batch split across data-parallel processes.

References: :func:`~crosscoder_lib.proofs.length.forward_flops` (the one FLOP model every cost
estimate calls), :meth:`~crosscoder_lib.crosscoder.training.TrainConfig.lr_at` and
:class:`~crosscoder_lib.crosscoder.activations.BatchTopK` over the whole batch, which the
data-parallel trainer must reproduce (:class:`~crosscoder_lib.crosscoder.distributed.ShardedBatchTopK`).
"""

from __future__ import annotations

import torch

from crosscoder_lib.crosscoder.activations import BatchTopK, codes_to_dense
from crosscoder_lib.crosscoder.training import TrainConfig
from crosscoder_lib.exercises.harness import Exercise, gives
from crosscoder_lib.proofs.length import forward_flops

F64 = torch.float64

FLOP_CASES = (
    ("the paper's TinyStories-Instruct-33M, 128 tokens",
     dict(n_blocks=4, d_model=768, d_mlp=3072, n_heads=16, d_head=48, vocab=50257, seq=128)),
    ("a small model, 64 tokens", dict(n_blocks=4, d_model=128, d_mlp=512, n_heads=4, d_head=32, vocab=1000, seq=64)),
    ("one block, one token", dict(n_blocks=1, d_model=8, d_mlp=32, n_heads=2, d_head=4, vocab=10, seq=1)),
    ("a long context (attention dominates)",
     dict(n_blocks=2, d_model=64, d_mlp=256, n_heads=4, d_head=16, vocab=100, seq=4096)),
)


def check_forward_flops(fn) -> None:
    """Exercise 6.1: ``fn(n_blocks, d_model, d_mlp, n_heads, d_head, vocab, seq) -> FLOPs`` against
    ``forward_flops``."""
    ex = Exercise("6.1", "the FLOP count of a forward pass", fn,
                  "2 FLOPs per multiply-add; per token and block Q, K, V, O (4·D·A·E each) and the MLP's two "
                  "matrices (D·N each); per token the unembedding D·V; per block the scores and the mixing, "
                  "2·A·S²·E (the full square: PyTorch computes it before masking)")
    for case, d in FLOP_CASES:
        expected = forward_flops(**d)
        got = ex.call(case, **d)
        L, D, N, A, E, V, S = (d[k] for k in ("n_blocks", "d_model", "d_mlp", "n_heads", "d_head", "vocab", "seq"))
        attention = L * 2 * 2 * A * S * S * E
        ex.close(case, "the FLOP count", got, expected, rtol=0.0, atol=0.5, mistakes=(
            gives(lambda: expected / 2, "count 2 FLOPs per multiply-add (one multiply, one add)"),
            gives(lambda: expected - 2 * D * V * S, "add the unembedding: 2·D·V per token, often the largest matrix"),
            gives(lambda: expected - attention + L * 2 * 2 * A * (S * (S + 1) // 2) * E, "PyTorch computes the whole "
                  "S × S score matrix before the causal mask: count S², not the triangle"),
            gives(lambda: expected - attention, "add the attention scores and the mixing, 2·2·A·S²·E per block"),
            gives(lambda: expected - S * L * 2 * D * N, "the MLP has two matrices, W_in and W_out: 2·2·D·N per token"),
        ))
    ex.passed()


LR_CASES = (
    ("the default schedule: 5 % warm-up, 20 % decay, 100 steps", 100, 1e-4, 0.05, 0.2),
    ("30 % warm-up and 30 % decay of 10 steps", 10, 1e-3, 0.3, 0.3),
    ("7 steps, half warm-up and half decay (rounding)", 7, 1.0, 0.5, 0.5),
    ("no warm-up, no decay", 20, 2e-3, 0.0, 0.0),
    ("decay over every step", 50, 1e-3, 0.0, 1.0),
)


def check_lr_schedule(fn) -> None:
    """Exercise 6.2: ``fn(step, n_steps, lr, warmup_frac, decay_frac) -> lr at step`` against
    ``TrainConfig.lr_at`` at every step."""
    ex = Exercise("6.2", "the learning-rate schedule", fn,
                  "warm = round(warmup_frac·n_steps), decay = round(decay_frac·n_steps); lr·(step + 1)/warm while "
                  "step < warm, lr·(n_steps − step)/decay once step ≥ n_steps − decay, lr in between")
    for case, n, lr, warm_frac, decay_frac in LR_CASES:
        cfg = TrainConfig(n_steps=n, lr=lr, warmup_frac=warm_frac, decay_frac=decay_frac)
        expected = torch.tensor([cfg.lr_at(s) for s in range(n)], dtype=F64)
        got = torch.tensor([float(ex.call(case, s, n, lr, warm_frac, decay_frac)) for s in range(n)], dtype=F64)
        warm, decay = round(warm_frac * n), round(decay_frac * n)
        ex.close(case, "the learning rate at each step (index = step)", got, expected, mistakes=(
            gives(lambda: torch.tensor([lr * s / warm if s < warm else cfg.lr_at(s) for s in range(n)]),
                  "the first step must learn: warm up as lr·(step + 1)/warm, which reaches lr at the last warm-up "
                  "step"),
            gives(lambda: torch.tensor([lr * (n - s - 1) / decay if s >= n - decay else cfg.lr_at(s)
                                        for s in range(n)]),
                  "the last step still learns: decay as lr·(n_steps − step)/decay, so the last step has lr/decay"),
            gives(lambda: torch.tensor([TrainConfig(n_steps=n, lr=lr, warmup_frac=int(warm_frac * n) / n,
                                                    decay_frac=int(decay_frac * n) / n).lr_at(s) for s in range(n)]),
                  "round the warm-up and decay lengths (round(frac·n_steps)), do not truncate them"),
        ))
    ex.passed()


def _sharded_cases() -> list[tuple[str, list[torch.Tensor], int]]:
    g = torch.Generator().manual_seed(6)
    skewed = [torch.randn(4, 10, generator=g, dtype=F64) + 3.0, torch.randn(4, 10, generator=g, dtype=F64)]
    return [
        ("one process (the whole batch)", [torch.randn(8, 12, generator=g, dtype=F64)], 3),
        ("four processes, equal shards", list(torch.randn(16, 12, generator=g, dtype=F64).split(4)), 2),
        ("two processes, the large values all on the first", skewed, 3),
    ]


def _kept_with_candidates(shards: list[torch.Tensor], k: int, per_rank) -> list[torch.Tensor]:
    """Each rank sends ``per_rank(its batch)`` candidates; all keep their values ≥ the pooled top k·B's smallest."""
    n_keep = k * sum(s.shape[0] for s in shards)
    union = torch.cat([s.relu().flatten().topk(min(per_rank(s), s.numel())).values for s in shards])
    tau = union.topk(min(n_keep, union.numel())).values.min()
    return [s.relu() * (s.relu() >= tau) for s in shards]


def check_sharded_batchtopk(fn) -> None:
    """Exercise 6.3: ``fn(pre_shards, k) -> a per shard``: BatchTopK over a global batch split across
    processes must equal ``BatchTopK`` on the whole batch."""
    ex = Exercise("6.3", "BatchTopK across processes", fn,
                  "the global batch has B = Σ_r B_r tokens: each rank sends its own k·B largest values of ReLU(pre) "
                  "(the global top k·B are among their union), every rank finds the same threshold τ, the k·B-th "
                  "largest of the union, and keeps its values ≥ τ")
    for case, shards, k in _sharded_cases():
        with torch.no_grad():
            whole = torch.cat(shards)
            expected = codes_to_dense(BatchTopK(k).train()(whole), whole.shape[1])
        got = ex.call(case, [s.clone() for s in shards], k)
        if not isinstance(got, (list, tuple)) or len(got) != len(shards):
            ex.fail(case, f"{ex.name}() must return one a_BH per shard ({len(shards)}), got {type(got).__name__}",
                    hint="return a list of dense [B_r, H] tensors, in the order of the shards")
        local = [codes_to_dense(BatchTopK(k).train()(s), s.shape[1]) for s in shards]
        ex.close(case, "the shards' a_BH, concatenated", torch.cat([torch.as_tensor(a) for a in got]), expected,
                 dims="BH", mistakes=(
                     gives(lambda: torch.cat(local), "each rank ran its own BatchTopK (k·B_r of its own shard); the "
                           "selection is over the GLOBAL batch, so a rank may keep more or fewer than its share"),
                     gives(lambda: torch.cat(_kept_with_candidates(shards, k, lambda s: k * s.shape[0])), "a rank may "
                           "hold more than its share of the global top k·B: each rank must send its k·B largest "
                           "(B the global batch), not k·B_r"),
                 ))
    ex.passed()
