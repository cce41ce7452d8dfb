"""Real-model costs at the SmolLM2 window the real-model chapters read (issue 17), side by side in one run.

    python benchmarks/bench_real_model.py [--threads N] [--quick] [--save]

SmolLM2-135M-Instruct (``load_model("smollm2-135m")``: d_model 576, d_mlp 1536, a SiLU-gated MLP),
the 17 hookpoints of the real-model chapters' window (``paper_hookpoints(4, first_block=REAL_FIRST_BLOCK)``,
the smollm2 preset's ``FIRST_BLOCK``), a crosscoder of
H = 1536 features, BatchTopK k = 20, batch 256, trained on activations harvested from the model
(random token ids: the cost does not depend on the text). It prints, and with ``--save`` writes to
``benchmarks/results/bench_real_model.json``:

1. harvest tokens/s over a bare forward of the same model stopped after the last hooked block
   (target >= 0.9);
2. the library's training step (``TrainingStep``), unpenalised and penalised (the gated MLP's
   interaction penalty, λ = 1000): ms/step, tokens/s and penalised / unpenalised;
3. the penalty alone (forward + backward) over its floor, the gated MLP's two input products
   ``W_dec · W_gate`` and ``W_dec · W_up`` of the 4 blocks with their gradient.

``--quick`` is a smoke run (a random 4-block Llama of the same kind, tiny sizes, one repeat; no
SmolLM2 needed): it checks that every figure is computed and printed; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from bench_crosscoder import bare_forward_ratios, harvest_breakdown
from machine import begin, figure, finish
from timing import timed

from crosscoder_lib.book.presets import REAL_FIRST_BLOCK
from crosscoder_lib.crosscoder.activations import FiringTracker, SparseCodes
from crosscoder_lib.crosscoder.model import Crosscoder, CrosscoderConfig
from crosscoder_lib.crosscoder.training import TrainConfig
from crosscoder_lib.crosscoder.training.loss import Objective, interaction_term
from crosscoder_lib.crosscoder.training.step import TrainingStep, make_optimizer
from crosscoder_lib.interactions.decoder import input_products
from crosscoder_lib.interactions.mlp import mlp_weights
from crosscoder_lib.interactions.object import MLPInteractions
from crosscoder_lib.lm.harvest import harvest
from crosscoder_lib.lm.hookpoints import hookpoint_blocks, mlp_input_slots, paper_hookpoints
from crosscoder_lib.lm.loading import load_model

LAMBDA = 1000.0
SIZES = {
    "full": {"model": "smollm2-135m", "first_block": REAL_FIRST_BLOCK, "harvest_tokens": (16, 128),
             "n_features": 1536, "k": 20, "batch": 256, "repeats": 5, "gemm_n": 2048},
    "quick": {"model": None, "first_block": 0, "harvest_tokens": (2, 16), "n_features": 64, "k": 4, "batch": 32,
              "repeats": 1, "gemm_n": 256},
}


def random_llama(folder: Path) -> Path:
    """A random 4-block Llama (SiLU-gated MLP, RMSNorm, tied embeddings: SmolLM2's kind), tiny."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from crosscoder_lib.world.tokenizer import BOS_ID, build_tokenizer

    tok = build_tokenizer()
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=True, bos_token_id=BOS_ID, eos_token_id=BOS_ID, pad_token_id=BOS_ID)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return folder


def token_ids(bridge, shape: tuple[int, int], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(5, bridge.cfg.d_vocab, shape, generator=g)


def step_fn(cc_cfg: CrosscoderConfig, acts: torch.Tensor, mlp, batch: int, penalised: bool):
    """One library ``TrainingStep`` on the harvested ``acts`` (batches in turn), with or without the penalty."""
    cc = Crosscoder(cc_cfg)
    cc.set_input_scale(acts)
    tcfg = TrainConfig(batch_size=batch, lambda_int=LAMBDA if penalised else 0.0, warmup_frac=0.0, decay_frac=0.0)
    term = interaction_term(cc, mlp, tcfg.penalty_form) if penalised else None
    training_step = TrainingStep(Objective(cc, term), make_optimizer(cc, tcfg),
                                 FiringTracker(cc_cfg.n_features, cc_cfg.dead_steps), tcfg)
    n_batches, i = acts.shape[0] // batch, [0]

    def step():
        b = i[0] % n_batches
        i[0] += 1
        training_step(acts[b * batch:(b + 1) * batch], 0, with_fvu=False)
    return step


def penalty_fns(cc_cfg: CrosscoderConfig, acts: torch.Tensor, mlp, batch: int) -> dict:
    """The penalty alone (forward + backward) and its floor, the MLP's input products with their gradient."""
    cc = Crosscoder(cc_cfg)
    cc.set_input_scale(acts)
    with torch.no_grad():
        codes = cc.encode(acts[:batch])
    W = cc.decoder_slots_LHD(mlp_input_slots(cc_cfg.hookpoints)).detach().requires_grad_(True)
    c = SparseCodes(codes.idx_BK, codes.val_BK.clone().requires_grad_(True))
    inter = MLPInteractions(W, mlp)

    def penalty():
        inter.penalty(c).penalty.backward()

    def floor():
        Gs = input_products(W, mlp)
        torch.autograd.backward(Gs, [torch.ones_like(G) for G in Gs])
    return {"penalty": penalty, "floor": floor, "padded_K": codes.idx_BK.shape[1]}


def open_model(sizes: dict):
    if sizes["model"] is not None:
        return load_model(sizes["model"]), sizes["model"]
    return load_model(random_llama(Path(tempfile.mkdtemp()) / "llama")), "random 4-block Llama (--quick)"


def measure(sizes: dict) -> dict:
    bridge, name = open_model(sizes)
    hps = paper_hookpoints(4, first_block=sizes["first_block"])
    mlp = mlp_weights(bridge, blocks=hookpoint_blocks(hps))
    r, batch = sizes["repeats"], sizes["batch"]
    h = bare_forward_ratios(bridge, None, token_ids(bridge, sizes["harvest_tokens"], 0), hps, r)
    n_seq = -(-4 * batch // sizes["harvest_tokens"][1])
    acts = harvest(bridge, token_ids(bridge, (n_seq, sizes["harvest_tokens"][1] + 1), 1), hps)[:4 * batch]
    cc_cfg = CrosscoderConfig(hookpoints=hps, d_model=bridge.cfg.d_model, n_features=sizes["n_features"],
                              k=sizes["k"])
    p = penalty_fns(cc_cfg, acts, mlp, batch)
    t = timed({"plain": step_fn(cc_cfg, acts, mlp, batch, False), "penalised": step_fn(cc_cfg, acts, mlp, batch, True),
               "penalty": p["penalty"], "floor": p["floor"]}, r)
    return {"model": name, "d_model": bridge.cfg.d_model, "d_mlp": bridge.cfg.d_mlp, "hookpoints": hps,
            "harvest": h, "times_s": t, "padded_K": p["padded_K"]}


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--quick", action="store_true", help="smoke run: a random tiny Llama, one repeat (seconds)")
    ap.add_argument("--save", action="store_true", help="write benchmarks/results/bench_real_model.json")
    args = ap.parse_args(argv)
    sizes, machine = begin(args, SIZES)
    m = measure(sizes)
    h, t, b = m["harvest"], m["times_s"], sizes["batch"]
    n_seq, n_tok = sizes["harvest_tokens"]
    print(f"{m['model']}: d_model {m['d_model']}, d_mlp {m['d_mlp']}, hookpoints {m['hookpoints'][0]} .. "
          f"{m['hookpoints'][-1]} ({len(m['hookpoints'])}); H = {sizes['n_features']}, BatchTopK k = {sizes['k']}, "
          f"batch {b} (padded K = {m['padded_K']})")
    stop = "the whole model" if h["stop_at_layer"] is None else f"stopped before block {h['stop_at_layer']}"
    print(f"1. harvest, {n_seq}x{n_tok} tokens: {h['harvest_tokens_per_s']:,.0f} tokens/s; over a bare forward of "
          f"{stop}: {h['harvest_over_bare']:5.2f}   (target >= 0.9)")
    print(f"   {harvest_breakdown(h)}")
    print(f"2. training step: unpenalised {t['plain'] * 1e3:.1f} ms ({b / t['plain']:,.0f} tokens/s), penalised "
          f"(λ = {LAMBDA:g}) {t['penalised'] * 1e3:.1f} ms; penalised / unpenalised "
          f"{t['penalised'] / t['plain']:5.2f}x")
    print(f"3. penalty fwd+bwd {t['penalty'] * 1e3:.1f} ms over its floor (W_dec·W_gate, W_dec·W_up and their "
          f"gradient, {t['floor'] * 1e3:.1f} ms): {t['penalty'] / t['floor']:5.2f}x")
    figures = [
        figure(f"harvest / bare forward ({m['model']}, blocks {sizes['first_block']}-{sizes['first_block'] + 3})",
               h["harvest_over_bare"], ">= 0.9", better="higher", bound=0.9, note=harvest_breakdown(h)),
        figure(f"training step, tokens/s (unpenalised, batch {b})", b / t["plain"], unit=" tokens/s"),
        figure(f"penalised / unpenalised step (batch {b})", t["penalised"] / t["plain"]),
        figure("penalty fwd+bwd / its floor (the gated MLP's input products)", t["penalty"] / t["floor"]),
    ]
    return finish("bench_real_model", machine, figures, m | {"sizes": sizes}, args)


if __name__ == "__main__":
    main()
