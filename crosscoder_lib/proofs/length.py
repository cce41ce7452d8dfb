"""Proof length in FLOPs, and the ONE FLOP model of a transformer's forward pass.

:func:`forward_flops` counts the FLOPs of one forward pass of either family the book runs: GPT-Neo
(full multi-head attention, ``σ(u W_in) W_out``) and Llama (grouped-query attention, the gated
``(σ(u W_gate) ⊙ u W_in) W_out``, rotary positions), tested against ``torch.utils.flop_counter`` on
both models; everything that costs a forward pass (brute force here, the book's cost model of a
run) calls it. :func:`model_shape` reads its arguments from a bridge. :func:`proof_length`
compares brute force (run the model on every input) with the crosscoder-backed proof of SPEC §4
(per-feature work once, per-input error terms).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

F64 = torch.float64


class ProofLength(NamedTuple):
    """FLOPs to check a proof over each number of inputs in ``n_inputs`` (see :func:`proof_length`)."""

    n_inputs: torch.Tensor
    brute_force: torch.Tensor
    crosscoder: torch.Tensor
    crosscoder_once: float
    """The per-feature part, paid once."""
    crosscoder_per_input: float
    brute_per_input: float

    @property
    def crossover(self) -> float:
        """Inputs beyond which the crosscoder-backed proof is shorter (inf if never)."""
        gap = self.brute_per_input - self.crosscoder_per_input
        return self.crosscoder_once / gap if gap > 0 else float("inf")


def _mlp_inputs(gated: bool) -> int:
    """Matrices that read the MLP input: ``W_in`` (standard), or ``W_gate`` and ``W_in`` (gated)."""
    return 2 if gated else 1


def forward_flops(n_blocks: int, d_model: int, d_mlp: int, n_heads: int, d_head: int, vocab: int, seq: int, *,
                  n_kv_heads: int | None = None, gated: bool = False, rotary: bool = False) -> int:
    """FLOPs (2 per multiply-add) of one forward pass over ``seq`` tokens.

    Per token and block: the Q and O projections ``2·2·D·heads·d_head``, K and V ``2·2·D·kv·d_head``
    (``kv = n_kv_heads``, default ``n_heads``: grouped-query attention shares them over groups of
    query heads), the MLP ``2·m·D·N`` with ``m = 2`` matrices, 3 when ``gated``; the unembedding
    ``2·D·V``; per block the scores and the mixing ``2·2·heads·S²·d_head`` (every query head, over
    the full square: PyTorch computes it before masking). These matrix multiplies are what
    ``torch.utils.flop_counter`` counts on the model (tested). With ``rotary``, RoPE's rotation of
    every query and key, ``3·(heads + kv)·d_head`` per token and block (``x·cos + rotate_half(x)·sin``:
    two multiplies and an add per coordinate), is added; the flop counter does not count it, nor
    anything else elementwise (norms, softmax, activations, the gate's product: lower order, left out).
    """
    kv = n_heads if n_kv_heads is None else n_kv_heads
    attention = 2 * 2 * d_model * n_heads * d_head + 2 * 2 * d_model * kv * d_head
    mlp = 2 * (_mlp_inputs(gated) + 1) * d_model * d_mlp
    per_token = n_blocks * (attention + mlp) + 2 * d_model * vocab
    rotation = n_blocks * seq * 3 * (n_heads + kv) * d_head if rotary else 0
    return seq * per_token + n_blocks * 2 * 2 * n_heads * seq * seq * d_head + rotation


def model_shape(bridge) -> dict:
    """The keyword arguments of :func:`forward_flops` and :func:`proof_length` that describe
    ``bridge``'s architecture (all but ``seq``, and the crosscoder's ``n_features``, ``k``)."""
    c = bridge.cfg
    return dict(n_blocks=c.n_layers, d_model=c.d_model, d_mlp=c.d_mlp, n_heads=c.n_heads, d_head=c.d_head,
                vocab=c.d_vocab, n_kv_heads=getattr(c, "n_key_value_heads", None) or c.n_heads,
                gated=bool(getattr(c, "gated_mlp", False)),
                rotary=getattr(c, "positional_embedding_type", None) == "rotary")


def proof_length(n_inputs, *, n_blocks: int, d_model: int, d_mlp: int, n_heads: int, d_head: int, vocab: int,
                 seq: int, n_features: int, k: int, n_slots: int | None = None, n_kv_heads: int | None = None,
                 gated: bool = False, rotary: bool = False, window: int | None = None) -> ProofLength:
    """Proof length in FLOPs as a function of the number of inputs (sequences of ``seq`` tokens).

    **Brute force**: run the model on every input, ``n · forward_flops``.

    **Crosscoder-backed** (SPEC §4's decomposition, with these conventions; ``m`` the matrices that
    read the MLP input, 1 or 2 when gated, ``kv`` the key/value heads):

    - once, per feature: ``G_l = W_dec[:, slot(l)] W_m`` for each of the ``m`` and each feature's
      single-feature MLP transition back to the residual stream (``2·L·H·D·N`` each); its OV image
      per block (``2·L·H·D·D``); the QK feature-pair table ``E[i, j]`` per head
      (``2·L·heads·H²·d_head``; with RoPE one per offset ``s − t``, ``seq`` of them, since a rotated
      score is ``q·rot_{s−t}(k)``) and the feature images ``d W_Q``, ``d W_K`` behind it and the
      mean·feature rows (``2·L·H·D·d_head·(heads + kv)``); the Lipschitz factors (spectral norms,
      ``≈ 2·L·((m + 1)·D·N + 2·D·d_head·(heads + kv))`` per power-iteration step, 20 steps).
    - per input token: its codes (the encoder, ``2·X·D·H``); the MLP interaction terms over its
      active features (``L·N·k`` contributions per input matrix, ``≈ 4`` FLOPs each); the attention
      score of each earlier token from the pair table (``L·heads·S·k²`` look-ups, 2 FLOPs each,
      the same with RoPE: the table is per offset); and the error recurrence (a few FLOPs per
      hookpoint, with ``O(k·D)`` norms of reconstructions).

    ``window``: the crosscoder reads ``window`` consecutive blocks of the ``n_blocks`` (default all;
    ``X = 4·window + 1`` slots). ``L`` above is then ``window``, and every input also pays the
    other blocks' share of :func:`forward_flops` (run as the model, before the window to reach its
    first hookpoint, after it to carry the error to the logits, as
    :func:`crosscoder_lib.proofs.layerwise.certified_error_bound` does).

    Counting is for comparison, not a measured run: the point is the shape — a large fixed cost
    and a per-input slope, against brute force's slope — and where they cross.
    """
    n = torch.as_tensor(n_inputs, dtype=F64)
    L = n_blocks if window is None else window
    if not 1 <= L <= n_blocks:
        raise ValueError(f"window must be between 1 and n_blocks = {n_blocks} blocks; got {window}")
    D, N, H = d_model, d_mlp, n_features
    X = n_slots if n_slots is not None else 4 * L + 1
    kv = n_heads if n_kv_heads is None else n_kv_heads
    m = _mlp_inputs(gated)
    arch = dict(n_kv_heads=kv, gated=gated, rotary=rotary)
    brute = float(forward_flops(n_blocks, D, N, n_heads, d_head, vocab, seq, **arch))
    offsets = seq if rotary else 1
    once = (2 * L * H * D * N) * (m + 1) + 2 * L * H * D * D + 2 * L * n_heads * H * H * d_head * offsets \
        + 2 * L * H * D * d_head * (n_heads + kv) + 20 * 2 * L * ((m + 1) * D * N + 2 * D * d_head * (n_heads + kv))
    per_token = 2 * X * D * H + 4 * L * N * k * m + 2 * L * n_heads * seq * k * k + X * (2 * k * D + 10)
    per_input = float(seq * per_token)
    if L < n_blocks:
        per_input += float(forward_flops(n_blocks - L, D, N, n_heads, d_head, 0, seq, **arch))
    return ProofLength(n, n * brute, once + n * per_input, float(once), per_input, brute)
