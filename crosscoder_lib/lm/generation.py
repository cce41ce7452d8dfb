"""Batched text generation with a key-value cache, seeded, for Hugging Face causal LMs.

``transformers``' ``generate`` draws a nucleus (top-p) sample by sorting the whole vocabulary at every
step: with SmolLM2's 49k tokens that sort costs more than the model's forward pass on a CPU. Here the
nucleus is taken inside the ``top_k`` most likely tokens (256 by default), which is the same sample
whenever those tokens hold at least ``top_p`` of the probability (almost always at ``top_p = 0.9``).
``temperature = 0`` is greedy decoding, token for token what ``generate(do_sample=False)`` gives
(tested). Prompts are left-padded; positions count from each prompt's first real token.

A run is reproducible bit for bit on the same machine and thread count (the random draws come from one
``torch.Generator`` seeded per call); another thread count can change float round-off and so a draw.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch


def _sample(logits_BV: torch.Tensor, temperature: float, top_p: float, top_k: int,
            generator: torch.Generator | None) -> torch.Tensor:
    """Next token ``[B, 1]``: greedy at ``temperature = 0``, else nucleus sampling within the top ``top_k``."""
    if temperature <= 0:
        return logits_BV.argmax(-1, keepdim=True)
    v, i = torch.topk(logits_BV.float() / temperature, min(top_k, logits_BV.shape[-1]), dim=-1)
    p = v.softmax(-1)
    p = p * ((p.cumsum(-1) - p) < top_p)  # the most likely token is always kept
    return i.gather(-1, torch.multinomial(p, 1, generator=generator))


def _left_padded(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for r, p in enumerate(prompts):
        ids[r, width - len(p):] = torch.tensor(list(p), dtype=torch.long)
        mask[r, width - len(p):] = 1
    return ids, mask


@torch.no_grad()
def generate_tokens(model, prompts: Sequence[Sequence[int]], *, max_new_tokens: int, stop_ids: Sequence[int],
                    pad_id: int, temperature: float = 0.0, top_p: float = 0.9, top_k: int = 256,
                    seed: int = 0) -> list[list[int]]:
    """The new tokens of each prompt (token-id lists), up to and excluding the first of ``stop_ids``.

    ``model``: a Hugging Face causal LM in eval mode. ``prompts``: token-id lists (already holding
    any BOS or chat markers). At most ``max_new_tokens`` per prompt.
    """
    from transformers import DynamicCache

    if not prompts:
        return []
    device = next(model.parameters()).device
    ids, mask = _left_padded(prompts, pad_id)
    ids, mask = ids.to(device), mask.to(device)
    generator = torch.Generator(device=device).manual_seed(seed) if temperature > 0 else None
    # transformers 5 calls the key-value cache `cache`; older releases (still found on Colab) `past_key_values`.
    kv = {("cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"): DynamicCache()}
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **kv)
    stop = torch.tensor(list(stop_ids), device=device)
    done = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    new = torch.empty(len(prompts), 0, dtype=torch.long, device=device)
    last = positions[:, -1:]
    for _ in range(max_new_tokens):
        token = _sample(out.logits[:, -1], temperature, top_p, top_k, generator)
        token = torch.where(done[:, None], torch.full_like(token, pad_id), token)
        done |= torch.isin(token[:, 0], stop)
        new = torch.cat([new, token], dim=1)
        if bool(done.all()):
            break
        mask = torch.cat([mask, torch.ones_like(token)], dim=1)
        last = last + 1
        out = model(input_ids=token, attention_mask=mask, position_ids=last, use_cache=True, **kv)
    rows = []
    for row in new.tolist():
        cut = next((i for i, t in enumerate(row) if t in set(stop_ids)), len(row))
        rows.append(row[:cut])
    return rows
