"""Literal numbers in a chapter's prose: every number a markdown cell types by hand, outside a short
allow-list, because a measured number in prose goes stale the day the run changes (the chapters show
measured numbers through ``run.glue`` and ``{glue}`name``` instead).

Not counted as prose: code (fenced blocks and inline spans), roles (``{glue}``, ``{cite}``, ``{ref}``…),
link targets, HTML tags, subscripts and names with digits in them (``x_1``, ``SmolLM2``, ``GPT-4o``).
Allowed: the paper's own figures and the setting's definitions (:data:`ALLOWED`), small counts 0–5
("4 hookpoints per block", "the 5-way judge"), years (1990–2039, as in citations), and any number
right after a word that makes it a reference (chapter, figure, section, exercise, table, appendix,
equation, step, block, slot, layer, λ =).
"""

from __future__ import annotations

import re
from typing import NamedTuple

# The paper's own figures (SPEC §5, §7) and the setting's definitions, as the chapters write them.
ALLOWED: dict[float, str] = {
    **{v: "the paper's Figure 1 (dominant share; λ sweep)" for v in (0.31, 0.305, 0.82, 0.816, 0.92, 0.923)},
    **{v: "the paper's λ sweep" for v in (10, 20, 50, 100, 200, 500, 1000, 2000, 10000)},
    **{v: "the paper's Figure 2 (fidelities, and the authors' re-run)" for v in (0.6, 0.1, 0.35, 0.29)},
    **{v: "the paper's Figure 3 (clusters, accuracy, chance; the authors' re-run)" for v in (73, 0.66, 0.2, 0.5, 0.54)},
    25: "the paper's ~25 % worse reconstruction",
    40: "the reference code's ~40 % dead features",
    1.13: "Lip(GELU), the paper's constant", 1.1: "Lip(SiLU) ≈ 1.1 (SPEC §6b)",
    **{v: "the paper's setting (H, k, batch, steps, tokens, lr, context)" for v in
       (1536, 256, 50_000, 12.8e6, 1e-4, 128, 33e6)},
    **{v: "TinyStories-Instruct-33M's shape" for v in (768, 3072, 16, 48, 50257)},
    **{v: "SmolLM2-135M-Instruct's shape" for v in (135e6, 30, 576, 49152)},
    **{v: "the crosscoder layout: 4 hookpoints per block, 17 slots for 4 blocks, slot 4l+3" for v in (17,)},
    95: "the 95 % interval (a definition)",
    2606.09940: "the paper's arXiv id",
}
SMALL = 5
REFERENCE_WORDS = (r"chapters?|Chapters?|figures?|Figures?|Figs?\.|Fig\.|§|sections?|Sections?|exercises?|"
                   r"Exercises?|tables?|Tables?|appendix|Appendix|Eq\.|equations?|steps?|blocks?|slots?|layers?|"
                   r"λ\s*=|λ=|k\s*=|top-|issue")

_CODE = re.compile(r"```.*?```|~~~.*?~~~|`[^`\n]*`", re.S)
_ROLE = re.compile(r"\{[a-z:-]+\}`[^`]*`")
_LINK_TARGET = re.compile(r"\]\([^)]*\)|https?://\S+|<[^>]+>|^\([^)\s]+\)=\s*$", re.M)
_NUMBER = re.compile(r"(?<![\w.\-/])(\d+(?:[ ,_\u202f]\d{3})*(?:\.\d+)?(?:[eE][-+]?\d+)?)"
                     r"([kM](?!\w)| million\b| billion\b)?(?![\w.]\d|\w)")
_REFERENCE = re.compile(rf"(?:{REFERENCE_WORDS})\s*(?:\d+\s*(?:[,–-]|and|or|to)\s*)*$")


class Literal(NamedTuple):
    """A literal number in a markdown cell: its cell index, the number as typed, and its context."""

    cell: int
    number: str
    context: str

    def __str__(self) -> str:
        return f"cell {self.cell}: {self.number!r} in …{self.context}…"


def _value(text: str, suffix: str | None) -> float:
    value = float(re.sub(r"[ ,_\u202f]", "", text))
    return value * {"k": 1e3, "M": 1e6, " million": 1e6, " billion": 1e9}.get(suffix or "", 1)


def prose(markdown: str) -> str:
    """``markdown`` without what is not prose (module docstring), each removed piece a space."""
    for pattern in (_CODE, _ROLE, _LINK_TARGET):
        markdown = pattern.sub(" ", markdown)
    return markdown


def allowed(value: float, before: str) -> bool:
    """Whether a number is allowed (module docstring); ``before`` is the prose leading up to it."""
    if value in ALLOWED or (value.is_integer() and (value <= SMALL or 1990 <= value <= 2039)):
        return True
    return _REFERENCE.search(before[-40:]) is not None


def literal_numbers(nb: dict) -> list[Literal]:
    """Every literal number outside the allow-list in the markdown cells of notebook ``nb`` (JSON)."""
    found = []
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "markdown":
            continue
        text = prose("".join(cell["source"]))
        for m in _NUMBER.finditer(text):
            if not allowed(_value(m.group(1), m.group(2)), text[:m.start()]):
                context = " ".join(text[max(0, m.start() - 40):m.end() + 20].split())
                found.append(Literal(i, m.group(0), context))
    return found
