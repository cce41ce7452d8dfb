"""The next-token loss of a language model under forward hooks that patch its activations.

Evaluations that splice something into a model (a crosscoder's reconstruction, an ablated MLP)
share one loop, :func:`patched_losses`: over token batches, the clean loss and the loss under each
variant's hooks, summed over predictions and averaged at the end. Position policy as in
:mod:`crosscoder_lib.lm.harvest`: with ``start = 1`` (``exclude_first``) the first, BOS, position is
neither patched nor scored, so the losses average the predictions made from positions
``start … S−2``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Hashable, Iterable
from typing import NamedTuple

import torch
from tqdm.auto import tqdm


class PatchedLosses(NamedTuple):
    """Mean next-token losses of :func:`patched_losses`."""

    clean: float
    """The unpatched model's."""
    patched: dict
    """Variant key -> the loss under its hooks."""
    n_tokens: int
    """Predictions averaged over."""


def loss_sum(model, tokens_BS: torch.Tensor, fwd_hooks: list, start: int) -> float:
    """``Σ`` of the next-token losses predicted from positions ``start …`` of ``tokens_BS`` under ``fwd_hooks``."""
    per_tok = model.run_with_hooks(tokens_BS, fwd_hooks=fwd_hooks, return_type="loss", loss_per_token=True)
    return float(per_tok[:, start:].sum())


def positions_replaced(act_BSD: torch.Tensor, new, start: int) -> torch.Tensor:
    """A copy of ``act_BSD`` with positions ``start …`` replaced by ``new`` (a tensor ``[B, S − start, D]`` or a number)."""
    out = act_BSD.clone()
    out[:, start:] = new.to(act_BSD.device, act_BSD.dtype) if isinstance(new, torch.Tensor) else new
    return out


def replace_hook(new_BSD: torch.Tensor, start: int) -> Callable:
    """A forward hook that replaces positions ``start …`` of its activation by ``new_BSD``."""
    def hook(act, hook):
        return positions_replaced(act, new_BSD, start)
    return hook


@torch.no_grad()
def patched_losses(model, token_batches: Iterable[torch.Tensor],
                   variants: Callable[[torch.Tensor], Iterable[tuple[Hashable, list]]], *, start: int,
                   max_batches: int | None = None, progress: bool = False, desc: str = "patched loss") -> PatchedLosses:
    """Mean next-token loss of ``model`` (a TransformerLens model) clean and under each variant's hooks.

    ``token_batches``: LongTensors ``[B, S]`` (at most ``max_batches`` are read); ``variants(tokens)``
    yields ``(key, fwd_hooks)`` for one batch, in a fixed order (it runs after the clean loss).
    Raises ``ValueError`` when no prediction was scored.
    """
    clean, n_tok, totals = 0.0, 0, {}
    batches = token_batches if max_batches is None else itertools.islice(token_batches, max_batches)
    for tokens in tqdm(batches, desc=desc, disable=not progress, total=max_batches):
        tokens = tokens.to(model.cfg.device)
        n_seq, seq = tokens.shape
        clean += loss_sum(model, tokens, [], start)
        n_tok += n_seq * (seq - 1 - start)
        for key, hooks in variants(tokens):
            totals[key] = totals.get(key, 0.0) + loss_sum(model, tokens, hooks, start)
    if n_tok == 0:
        raise ValueError("no token batches to evaluate (or sequences too short)")
    return PatchedLosses(clean / n_tok, {k: v / n_tok for k, v in totals.items()}, n_tok)
