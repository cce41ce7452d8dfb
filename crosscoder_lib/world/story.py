"""One story while the corpus generator writes it: its entities, the filling of template slots, and
the recorder that adds every random choice's ``-log p`` (the corpus's entropy, see
:mod:`crosscoder_lib.world.corpus`).

Slots are the UPPERCASE elements of the templates in :mod:`crosscoder_lib.world.words`. A slot
that names an entity of the story (``MAIN``, ``COMP``, ``PLACE``, ``OBJ_REF`` …) is filled from the
story's state, so coreference holds; the others draw a word of their category.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from crosscoder_lib.world.words import (
    ACTIONS,
    ANIMALS,
    COLOURS,
    FEELINGS,
    FOODS,
    OBJECTS,
    PLACES,
    PUNCTUATION,
    SIZES,
    TIMES,
    WEATHERS,
)


class Recorder:
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
class Story:
    """The entities of one story and the fillers of its slots."""

    rec: Recorder
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
