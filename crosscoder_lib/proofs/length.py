"""Proof length in FLOPs, and the ONE FLOP model of a transformer's forward pass.

:func:`forward_flops` counts the matrix-multiply FLOPs of one forward pass (tested against
``torch.utils.flop_counter`` on the model itself); everything that costs a forward pass (brute
force here, the book's cost model of a run) calls it. :func:`proof_length` compares brute force (run
the model on every input) with the crosscoder-backed proof of SPEC §4 (per-feature work once,
per-input error terms).
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


def forward_flops(n_blocks: int, d_model: int, d_mlp: int, n_heads: int, d_head: int, vocab: int, seq: int) -> int:
    """Matrix-multiply FLOPs (2 per multiply-add) of one forward pass over ``seq`` tokens.

    Per token and block: Q, K, V, O projections ``2·4·D·heads·d_head`` and the MLP ``2·2·D·N``; the
    unembedding ``2·D·V``; per block the scores and the mixing ``2·2·heads·S²·d_head`` (PyTorch
    computes the full square before masking). LayerNorms, softmax and activations are not counted
    (lower-order). This is what ``torch.utils.flop_counter`` counts on the model (tested).
    """
    per_token = n_blocks * (2 * 4 * d_model * n_heads * d_head + 2 * 2 * d_model * d_mlp) + 2 * d_model * vocab
    return seq * per_token + n_blocks * 2 * 2 * n_heads * seq * seq * d_head


def proof_length(n_inputs, *, n_blocks: int, d_model: int, d_mlp: int, n_heads: int, d_head: int, vocab: int,
                 seq: int, n_features: int, k: int, n_slots: int | None = None) -> ProofLength:
    """Proof length in FLOPs as a function of the number of inputs (sequences of ``seq`` tokens).

    **Brute force**: run the model on every input, ``n · forward_flops``.

    **Crosscoder-backed** (SPEC §4's decomposition, with these conventions):

    - once, per feature: ``G_l = W_dec[:, slot(l)] W_in`` and each feature's single-feature MLP
      transition back to the residual stream (``2·L·H·D·N`` each); its OV image per block
      (``2·L·H·D·D``); the QK feature-pair table ``E[i, j]`` per head (``2·L·heads·H²·d_head``)
      and its mean·feature rows; the Lipschitz factors (spectral norms, ``≈ 2·L·(2·D·N + 4·D·D)``
      per power-iteration step, 20 steps).
    - per input token: its codes (the encoder, ``2·X·D·H``); the MLP interaction terms over its
      active features (``L·N·k`` contributions, ``≈ 4`` FLOPs each); the attention score of each
      earlier token from the pair table (``L·heads·S·k²`` look-ups, 2 FLOPs each); and the
      error recurrence (a few FLOPs per hookpoint, with ``O(k·D)`` norms of reconstructions).

    Counting is for comparison, not a measured run: the point is the shape — a large fixed cost
    and a per-input slope, against brute force's slope — and where they cross.
    """
    n = torch.as_tensor(n_inputs, dtype=F64)
    L, D, N, H = n_blocks, d_model, d_mlp, n_features
    X = n_slots if n_slots is not None else 4 * L + 1
    brute = float(forward_flops(L, D, N, n_heads, d_head, vocab, seq))
    once = (2 * L * H * D * N) * 2 + 2 * L * H * D * D + 2 * L * n_heads * H * H * d_head \
        + 2 * 2 * L * n_heads * H * D * d_head + 20 * 2 * L * (2 * D * N + 4 * D * D)
    per_token = 2 * X * D * H + 4 * L * N * k + 2 * L * n_heads * seq * k * k + X * (2 * k * D + 10)
    per_input = float(seq * per_token)
    return ProofLength(n, n * brute, once + n * per_input, float(once), per_input, brute)
