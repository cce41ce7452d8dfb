"""How chapters show things: the book's one display policy.

- **Tables** are markdown shown with ``display(Markdown(...))`` (:func:`show_table`); the book
  renders them as tables because ``_config.yml`` sets ``nb_render_markdown_format: myst``.
- **Paths** are shown relative to the book's checkout (:func:`shown_path`), never as an absolute
  path of the machine that built the page.
- **Progress bars** are ``tqdm.auto`` bars that close when their loop ends, even on ``break``
  (:func:`progress`); transformers' and the hub's own bars ("Loading weights") are off.
- **Library logging and warnings**: :func:`quiet` (applied by ``ChapterRun``) keeps transformers,
  the hub and PyTorch at errors only and silences warnings that say nothing about the book's
  numbers; everything the chapters print themselves stays.
- **Numbers in prose** come from the run that builds the page: :func:`glue` stores a formatted
  value in the cell's output under a name, and a markdown cell shows it with ``{glue}`name```
  (myst-nb's glue role). Outside the book (Jupyter, Colab) the glued output is invisible.
- **Bookkeeping cells** (Colab set-up, imports and ``start_chapter``, the results cell) are tagged
  ``hide-cell`` or ``remove-input`` in the notebooks, so the page shows the chapter, not its plumbing.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

# myst-nb's glue: outputs under this MIME prefix are hidden in notebooks and read by the book.
GLUE_PREFIX = "application/papermill.record/"
# Warnings about library internals a reader can do nothing about (each seen in a chapter's output).
_QUIET_WARNINGS = (
    r".*TypedStorage is deprecated.*",
    r".*`torch_dtype` is deprecated.*",
    r".*attention mask.*pad token.*",
    r".*Setting `pad_token_id` to `eos_token_id`.*",
    r".*generation flags are not valid.*",
    r".*IProgress not found.*",
    r".*A forward hook edited hook_scale/hook_normalized.*",  # TransformerLens, on every SmolLM2 splice
)


def quiet() -> None:
    """Library logging at errors only, transformers' and the hub's progress bars off, and the known
    noise warnings silenced (idempotent; the chapters' own output is untouched)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    for name in ("transformers", "huggingface_hub", "datasets", "torch", "transformer_lens", "peft", "nnsight"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
    except ImportError:
        pass
    try:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    except ImportError:
        pass
    for pattern in _QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A markdown table: ``header`` cells, then one line per row (cells shown with ``str``)."""
    lines = ["| " + " | ".join(str(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def show_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Display :func:`markdown_table` as rendered markdown (a table in Jupyter and in the book)."""
    from IPython.display import Markdown, display

    display(Markdown(markdown_table(header, rows)))


def shown_path(path: str | os.PathLike, root: Path | None = None) -> str:
    """``path`` as a chapter may print it: relative to ``root`` (the checkout) when inside it, as
    ``$CROSSCODER_RESULTS_DIR/…`` when under that folder, else its last two parts."""
    path = Path(path).resolve()
    bases = [(root.resolve(), "")] if root is not None else []
    if os.environ.get("CROSSCODER_RESULTS_DIR"):
        bases.append((Path(os.environ["CROSSCODER_RESULTS_DIR"]).resolve(), "$CROSSCODER_RESULTS_DIR/"))
    for base, prefix in bases:
        if path.is_relative_to(base):
            return prefix + path.relative_to(base).as_posix()
    return Path(*path.parts[-2:]).as_posix()


def progress(iterable: Iterable, desc: str, total: int | None = None, **kwargs) -> Iterator:
    """``iterable`` under a ``tqdm.auto`` bar labelled ``desc``, closed when the loop ends or breaks."""
    bar = tqdm(iterable, desc=desc, total=total, **kwargs)
    try:
        yield from bar
    finally:
        bar.close()


class GluedText:
    """A value already formatted for prose: its plain-text form is the text (no quotes)."""

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return self.text

    def _repr_pretty_(self, printer, cycle) -> None:
        printer.text(self.text)


def glue(name: str, value: Any, fmt: str = "") -> None:
    """Store ``format(value, fmt)`` under ``name`` for the chapter's markdown (``{glue}`name```).
    Works without myst-nb installed: it writes the output myst-nb's ``glue(display=False)`` writes."""
    from IPython.core.formatters import format_display_data
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.display import display

    if not InteractiveShell.initialized():  # a plain script: no notebook to glue into
        return
    text = format(value, fmt)
    bundle, metadata = format_display_data(GluedText(text))
    metadata["scrapbook"] = {"name": name, "mime_prefix": GLUE_PREFIX}
    display({GLUE_PREFIX + k: v for k, v in bundle.items()}, raw=True, metadata=metadata)
