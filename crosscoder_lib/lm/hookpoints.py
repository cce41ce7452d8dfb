"""The paper's hookpoint layout, and checking hook names against a model.

The acausal crosscoder of the paper (SPEC §2) reads and writes, for each block ``l`` in order,

    blocks.l.hook_resid_pre, blocks.l.ln1.hook_normalized,
    blocks.l.hook_resid_mid, blocks.l.ln2.hook_normalized,

then the last block's ``hook_resid_post``: ``4 L + 1`` slots (17 for a 4-block model). The MLP input
of block ``l`` (``ln2.hook_normalized``) is then slot ``4 l + 3``; code should not rely on that
arithmetic but ask :func:`mlp_input_slots`, which works for any hookpoint list.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable

#: Per-block hook suffixes of the paper's layout, in the order the forward pass produces them.
BLOCK_HOOKS = ("hook_resid_pre", "ln1.hook_normalized", "hook_resid_mid", "ln2.hook_normalized")

_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.(.+)$")


def paper_hookpoints(n_blocks: int, first_block: int = 0) -> list[str]:
    """The paper's hookpoints for ``n_blocks`` consecutive blocks from ``first_block``: 4 per block,
    then the last block's resid_post (``paper_hookpoints(4, first_block=8)`` reads blocks 8-11 of a
    deeper model)."""
    if n_blocks < 1:
        raise ValueError(f"n_blocks must be >= 1, got {n_blocks}")
    if first_block < 0:
        raise ValueError(f"first_block must be >= 0, got {first_block}")
    blocks = range(first_block, first_block + n_blocks)
    names = [f"blocks.{l}.{h}" for l in blocks for h in BLOCK_HOOKS]
    return names + [f"blocks.{blocks[-1]}.hook_resid_post"]


def hookpoint_blocks(hookpoints: list[str]) -> list[int]:
    """The blocks whose MLP the hookpoints' MLP-input slots feed, in slot order (``[8, 9, 10, 11]``)."""
    return [hook_block(hookpoints[i]) for i in mlp_input_slots(hookpoints)]


def hook_block(name: str) -> int | None:
    """The block index in a ``blocks.{l}.…`` hook name, or None for hooks outside the blocks."""
    m = _BLOCK_RE.match(name)
    return int(m.group(1)) if m else None


def _slots_of(hookpoints: list[str], suffix: str, what: str) -> list[int]:
    found = sorted((hook_block(h), i) for i, h in enumerate(hookpoints)
                   if hook_block(h) is not None and h.endswith("." + suffix))
    if not found:
        raise ValueError(f"no {what} hookpoint (blocks.<l>.{suffix}) among {hookpoints}; "
                         f"use paper_hookpoints(n_blocks) or add them")
    return [i for _, i in found]


def mlp_input_slots(hookpoints: list[str]) -> list[int]:
    """Index in ``hookpoints`` of each block's MLP input ``blocks.l.ln2.hook_normalized``, in block order."""
    return _slots_of(hookpoints, "ln2.hook_normalized", "MLP-input")


def resid_mid_slots(hookpoints: list[str]) -> list[int]:
    """Index in ``hookpoints`` of each block's ``blocks.l.hook_resid_mid``, in block order."""
    return _slots_of(hookpoints, "hook_resid_mid", "resid_mid")


def model_hook_names(model) -> list[str]:
    """Every hook name a TransformerLens model (bridge or HookedTransformer-like) exposes."""
    hook_dict = getattr(model, "hook_dict", None)
    if hook_dict is None:
        raise TypeError(f"{type(model).__name__} has no hook_dict; pass a TransformerLens "
                        f"TransformerBridge (crosscoder_lib.lm.loading.load_model)")
    return list(hook_dict.keys())


def validate_hookpoints(hookpoints: Iterable[str], valid: Iterable[str] | object) -> list[str]:
    """Check ``hookpoints`` against ``valid`` (a list of names, or a model whose hook names to use).

    Returns the hookpoints as a list. Raises ``ValueError`` naming each unknown hook, the closest
    valid names, and the full list of valid names; also on an empty list or a duplicate.
    """
    hookpoints = list(hookpoints)
    valid = model_hook_names(valid) if hasattr(valid, "hook_dict") else list(valid)
    if not hookpoints:
        raise ValueError("empty hookpoint list; use paper_hookpoints(n_blocks)")
    dup = sorted({h for h in hookpoints if hookpoints.count(h) > 1})
    if dup:
        raise ValueError(f"duplicate hookpoints {dup}: each slot must read a distinct hook")
    valid_set = set(valid)
    unknown = [h for h in hookpoints if h not in valid_set]
    if unknown:
        hints = "; ".join(f"{h!r} (did you mean {difflib.get_close_matches(h, valid, n=3)}?)"
                          for h in unknown)
        raise ValueError(f"unknown hook name(s): {hints}. Valid hook names are: {sorted(valid)}")
    return hookpoints


def last_block_needed(hookpoints: list[str]) -> int | None:
    """The highest block index any hookpoint lives in, or None if one lies outside the blocks
    (e.g. ``ln_final.hook_normalized``), in which case the whole model must run."""
    blocks = [hook_block(h) for h in hookpoints]
    if any(b is None for b in blocks):
        return None
    return max(blocks)
