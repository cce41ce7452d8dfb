"""TinyStoriesInstruct's examples: from the Hugging Face data set, and from or to local text files.

``roneneldan/TinyStoriesInstruct`` stores one *line* per row; an example is a run of lines
``Features: …``, ``Words: …``, ``Summary: …``, ``Random sentence: …`` (any subset, any order) then
``Story:`` and the story's lines, closed by a row ``<|endoftext|>``. A local file in the same
layout (the data set's own ``.txt`` files) reads the same way. An example is the text of its lines
joined by newlines, without the ``<|endoftext|>`` (the packing of :mod:`crosscoder_lib.world.data`
puts EOS between documents). The layout's rules are :mod:`crosscoder_lib.world.textformat`'s; the
rows and lines come from :func:`crosscoder_lib.world.data.hub_texts` and
:func:`~crosscoder_lib.world.data.text_file_lines`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from itertools import chain, islice
from pathlib import Path

from crosscoder_lib.world.data import hub_texts, text_file_lines
from crosscoder_lib.world.textformat import END_OF_TEXT, group_examples

DATASET_ID = "roneneldan/TinyStoriesInstruct"


def tinystories_instruct_texts(split: str = "train", n: int | None = None,
                               streaming: bool = True) -> Iterator[str]:
    """Examples of ``roneneldan/TinyStoriesInstruct`` (``split``: ``"train"`` or
    ``"validation"``), read with ``datasets`` and regrouped by :func:`group_examples`.

    Returns an iterator (``list(...)`` it for a list), at most ``n`` examples. ``streaming=True``
    reads rows as they download instead of fetching the whole split (≈ 2 GB) first. Needs the
    Hugging Face hub (e.g. on Colab); without it, raises ``ConnectionError`` naming the data set
    and the local alternative (:func:`local_texts`; rows come from
    :func:`crosscoder_lib.world.data.hub_texts`). The first example is read before returning,
    so that error comes from this call, not from the first ``next``.
    """
    if n is not None and n < 1:
        raise ValueError(f"n must be >= 1 or None, got {n}")
    texts = group_examples(hub_texts(DATASET_ID, split, streaming=streaming))
    try:
        first = next(texts)
    except StopIteration:
        raise ValueError(f"{DATASET_ID} split {split!r} holds no example with a 'Story:' "
                         f"field") from None
    out = chain([first], texts)
    return islice(out, n) if n is not None else out


def local_texts(path: str | os.PathLike, n: int | None = None) -> list[str]:
    """Examples from a local text file in TinyStoriesInstruct's layout, or from every ``*.txt``
    file of a folder (sorted by name); at most ``n``. See :func:`group_examples` (and
    :func:`crosscoder_lib.world.data.load_texts`, which also splits off held-out examples)."""
    p = Path(path).expanduser()
    out = list(islice(group_examples(text_file_lines(p)), n))
    if not out:
        raise ValueError(
            f"{str(p)!r} holds no example: expected TinyStoriesInstruct's layout, fields such as "
            f"'Summary: …' then 'Story:' and the story, each example closed by a line "
            f"'{END_OF_TEXT}' (see crosscoder_lib.world.tinystories.save_texts)")
    return out


def save_texts(texts: Iterable[str], path: str | os.PathLike) -> Path:
    """Write examples in TinyStoriesInstruct's layout (each followed by a ``<|endoftext|>``
    line), so :func:`local_texts` reads them back unchanged."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "w", encoding="utf-8") as fh:
        for t in texts:
            if END_OF_TEXT in t:
                raise ValueError(f"an example contains {END_OF_TEXT!r}, which separates examples")
            fh.write(t.strip() + "\n" + END_OF_TEXT + "\n")
    return p
