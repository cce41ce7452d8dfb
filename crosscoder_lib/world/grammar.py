"""The grammar checker: whether a story is one the corpus generator could have written.

The generator (:mod:`crosscoder_lib.world.corpus`) fills the templates of
:mod:`crosscoder_lib.world.words`; this module turns the same templates into regular expressions
and decides whether a story (the part after ``Story:``) is a sequence of sentences the generator
could write: an opening, the companion's introduction, the outing, body sentences (feature sentences
included) and an ending with an optional moral, each matching a template. It checks syntax and
structure, not coreference. The embedded models' stories are judged by it
(:mod:`crosscoder_lib.applications.behaviour`).
"""

from __future__ import annotations

import re
from functools import cache

from crosscoder_lib.world.textformat import STORY_FIELD
from crosscoder_lib.world.words import (
    ACTIONS,
    ANIMALS,
    BODY_CLAUSES,
    BOY_NAMES,
    COLOURS,
    CONJUNCTIONS,
    ENDINGS,
    FEATURE_SENTENCES,
    FEELINGS,
    FOODS,
    GIRL_NAMES,
    INTRODUCTIONS,
    MORALS,
    OBJECTS,
    OPENINGS,
    OUTINGS,
    PLACES,
    PUNCTUATION,
    SIZES,
    TIMES,
    WEATHERS,
    WORD_CATEGORIES,
)


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
    if STORY_FIELD in text:
        text = text.rsplit(STORY_FIELD, 1)[1]
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
