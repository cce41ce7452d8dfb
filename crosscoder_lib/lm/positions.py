"""Harvesting a chapter's token positions: exactly the first ``n`` positions of a text stream, and
every real token of a list of prompts.

**One stopping rule.** :func:`harvest_positions` reads BOS-first windows
(:func:`crosscoder_lib.world.data.token_batches`) and keeps exactly the first ``n_positions``
harvested positions. A window's BOS position is never harvested and never counted (see the
position policy of :mod:`crosscoder_lib.lm.harvest`), so ``n_positions`` is what the crosscoder
trains or is evaluated on. The windows come back beside the activations: position ``i`` is
``tokens_NS[:, 1:].flatten()[i]``; the last window may be used only in part.

**Prompts.** :func:`harvest_prompts` runs prompts of different lengths in right-padded batches
(padding after a prompt cannot change its positions in a causal model) and yields, per batch, the
activations of every real token after BOS, ragged per prompt, with the token strings.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import NamedTuple

import torch
from tqdm.auto import tqdm

from crosscoder_lib.lm.harvest import harvest
from crosscoder_lib.world.data import token_batches
from crosscoder_lib.world.tokenizer import encode


class HarvestedPositions(NamedTuple):
    """``acts_BXD``: the activations of ``B = n_positions`` positions (BOS excluded), slot ``x`` at
    ``hookpoints[x]``; ``tokens_NS``: the BOS-first windows they come from, in order (the last one
    possibly used in part)."""

    acts_BXD: torch.Tensor
    tokens_NS: torch.Tensor

    @property
    def positions_NS(self) -> torch.Tensor:
        """The harvestable positions of each window, ``tokens_NS[:, 1:]``: flat index ``i`` of this
        grid (row-major) is row ``i`` of ``acts_BXD`` (for ``context_strings``)."""
        return self.tokens_NS[:, 1:]

    @property
    def token_ids_B(self) -> torch.Tensor:
        """The token at each harvested position (for ``top_activations``)."""
        return self.positions_NS.reshape(-1)[: len(self.acts_BXD)]


class NotEnoughPositionsError(ValueError):
    """The stream ended before ``n_positions``; ``partial`` holds what was harvested."""

    def __init__(self, message: str, partial: HarvestedPositions):
        super().__init__(message)
        self.partial = partial


def _batches(source, tokenizer, batch_size: int, context_len: int | None, seed: int,
             pack: bool) -> Iterable[torch.Tensor]:
    """Token batches from ``source``: its own batches, or windows cut from its texts."""
    if isinstance(source, Sequence) and not isinstance(source, str):
        first = source[0] if len(source) else None
    else:  # a one-pass iterable: peek at its first item and put it back
        items = iter(source)
        first = next(items, None)
        source = itertools.chain([first], items) if first is not None else ()
    if first is None:
        raise ValueError("harvest_positions got no texts and no token batches")
    if isinstance(first, torch.Tensor):
        return source
    if context_len is None:
        raise ValueError("harvest_positions needs context_len to cut texts into windows")
    return token_batches(source, tokenizer, batch_size=batch_size, context_len=context_len, seed=seed, pack=pack)


@torch.no_grad()
def harvest_positions(model, texts_or_batches: Iterable[str] | Iterable[torch.Tensor], hookpoints: list[str],
                      n_positions: int | None, *, context_len: int | None = None, batch_size: int = 16,
                      seed: int = 0, tokenizer=None, harvester: Callable = harvest, pack: bool = True,
                      progress: bool | str = False) -> HarvestedPositions:
    """The first ``n_positions`` positions of a stream, harvested at ``hookpoints``.

    ``texts_or_batches``: texts (cut into BOS-first windows of ``context_len`` tokens by
    :func:`~crosscoder_lib.world.data.token_batches` with ``batch_size`` and ``seed``, one pass,
    tokenised by ``tokenizer``, default ``model.tokenizer``; ``pack=False``: one document per window,
    as the real world needs), or token batches ``tokens_BS`` used as they come. ``n_positions=None`` harvests every position of the stream. Each batch goes through
    ``harvester(model, tokens_BS, hookpoints)`` (default :func:`~crosscoder_lib.lm.harvest.harvest`)
    whole; the last one is cut after the ``n_positions``-th position. ``progress``: a tqdm bar
    (``True`` or its label), closed when the harvest ends.

    Raises :class:`NotEnoughPositionsError` (its ``partial`` keeps the harvest) when the stream
    holds fewer positions.
    """
    if n_positions is not None and n_positions < 1:
        raise ValueError(f"n_positions must be >= 1 (or None for the whole stream), got {n_positions}")
    batches = _batches(texts_or_batches, tokenizer if tokenizer is not None else getattr(model, "tokenizer", None),
                       batch_size, context_len, seed, pack)
    acts, windows, held = [], [], 0
    label = progress if isinstance(progress, str) else "harvest"
    with tqdm(total=n_positions, desc=label, unit="position", disable=not progress) as bar:
        for tokens_BS in batches:
            acts.append(harvester(model, tokens_BS, hookpoints))
            windows.append(tokens_BS.cpu())
            # the bar counts kept positions, so it ends at exactly n_positions (never "110/?")
            bar.update(len(acts[-1]) if n_positions is None else min(len(acts[-1]), n_positions - held))
            held += len(acts[-1])
            if n_positions is not None and held >= n_positions:
                break
    acts_BXD, tokens_NS = torch.cat(acts), torch.cat(windows)
    if n_positions is None:
        return HarvestedPositions(acts_BXD, tokens_NS)
    per_window = tokens_NS.shape[1] - 1
    if held < n_positions:
        raise NotEnoughPositionsError(
            f"the stream gave {held} positions ({len(tokens_NS)} windows of {per_window} after BOS), fewer than "
            f"n_positions={n_positions}; pass more texts or ask for fewer positions (the error's .partial holds "
            "what was harvested)", HarvestedPositions(acts_BXD, tokens_NS))
    return HarvestedPositions(acts_BXD[:n_positions], tokens_NS[: math.ceil(n_positions / per_window)])


class PromptBatch(NamedTuple):
    """One batch of :func:`harvest_prompts`: ``acts_BXD`` holds every real token after BOS of the
    batch's prompts, prompt after prompt (``lengths`` tokens each); ``tokens`` their token strings;
    ``start`` the index of the batch's first prompt in the list."""

    acts_BXD: torch.Tensor
    lengths: list[int]
    tokens: list[list[str]]
    start: int

    def per_prompt(self) -> list[torch.Tensor]:
        """``acts_BXD`` split into one ``[n_i, X, D]`` tensor per prompt (ragged)."""
        return list(self.acts_BXD.split(self.lengths))


def _token_ids(tokenizer, prompt: str | Sequence[int]) -> list[int]:
    ids = encode(tokenizer, prompt) if isinstance(prompt, str) else list(prompt)
    if len(ids) < 2 or ids[0] != tokenizer.bos_token_id:
        raise ValueError(f"a prompt must be BOS-first with at least one token after BOS; got ids {ids[:8]}…")
    return ids


@torch.no_grad()
def harvest_prompts(model, prompts: Sequence[str] | Sequence[Sequence[int]], hookpoints: list[str], *,
                    batch_size: int = 64, tokenizer=None, harvester: Callable = harvest,
                    progress: bool | str = False) -> Iterator[PromptBatch]:
    """Per-prompt activations of ``prompts`` (texts, encoded BOS-first, or BOS-first token ids),
    ``batch_size`` prompts per forward pass, each batch right-padded with EOS to its longest prompt.

    Yields one :class:`PromptBatch` per batch, so memory stays one batch of activations.
    """
    tokenizer = tokenizer if tokenizer is not None else model.tokenizer
    rows = [_token_ids(tokenizer, p) for p in prompts]
    starts = range(0, len(rows), batch_size)
    label = progress if isinstance(progress, str) else "harvest prompts"
    with tqdm(total=len(starts), desc=label, unit="batch", disable=not progress) as bar:
        for b in starts:
            batch = rows[b:b + batch_size]
            width = max(len(ids) for ids in batch)
            tokens_BS = torch.full((len(batch), width), tokenizer.eos_token_id, dtype=torch.long)
            for i, ids in enumerate(batch):
                tokens_BS[i, :len(ids)] = torch.tensor(ids)
            acts = harvester(model, tokens_BS, hookpoints).view(len(batch), width - 1, len(hookpoints), -1)
            lengths = [len(ids) - 1 for ids in batch]
            yield PromptBatch(torch.cat([acts[i, :n] for i, n in enumerate(lengths)]), lengths,
                              [tokenizer.convert_ids_to_tokens(ids[1:]) for ids in batch], b)
            bar.update(1)
