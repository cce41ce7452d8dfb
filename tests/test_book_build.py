"""The book builds from the chapters' FAST executions, renders math and widgets offline in a browser,
and a failing cell fails the build."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import nbformat
import pytest
import yaml
from browser import Browser, Inspection, find_browser
from notebooks import NOT_YET, ROOT, build_book, page_id, stage_book, toc_files, toc_notebooks

from crosscoder_lib.book.seeds import SeedSummary

BROWSER = find_browser()
needs_browser = [pytest.mark.browser, pytest.mark.skipif(
    BROWSER is None, reason="needs headless Chromium or Chrome: install Debian's 'chromium' package (as root: "
    "apt-get install chromium), or run `make test`, which installs it where it can")]
# Every page of the built book, as its path in _build/html.
PAGES = [Path(f).with_suffix(".html").as_posix() for f in toc_files()] + ["genindex.html", "search.html"]
# Defects of one chapter's own content that the browser finds (strict: a fixed page fails until its entry goes).
PAGE_DEFECTS: dict[str, str] = {}


def screenshots_dir() -> Path:
    """Where the browser test saves a screenshot of each page: ``$CROSSCODER_ARTEFACTS/screenshots``, else
    ``_build/screenshots`` of the checkout."""
    base = os.environ.get("CROSSCODER_ARTEFACTS")
    return Path(base) / "screenshots" if base else ROOT / "_build" / "screenshots"


@pytest.fixture(scope="session")
def built_book(fast_execution, tmp_path_factory) -> Path:
    """The book built from the pages' FAST executions; a real-world page that cannot run yet (NOT_YET) is
    built from its committed, unexecuted notebook."""
    executed = {}
    for notebook in toc_notebooks():
        run = fast_execution(notebook)
        if run.error is not None and page_id(notebook) not in NOT_YET:
            pytest.fail(f"cannot build the book: {notebook} failed under papermill: {run.error}")
        if run.error is None:
            executed[notebook] = run.executed
    source = stage_book(tmp_path_factory.mktemp("book_src"), executed)
    proc = build_book(source)
    assert proc.returncode == 0, f"jupyter-book build failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return source / "_build" / "html"


@pytest.fixture(scope="session")
def inspected(built_book) -> dict[str, Inspection]:
    """Every page of the built book opened in the browser, checked, and its screenshot saved."""
    shots = screenshots_dir()
    with Browser(BROWSER) as browser:
        return {page: browser.inspect(built_book / page, shots / Path(page).with_suffix(".png")) for page in PAGES}


def test_make_book_leaves_unexecuted_exactly_the_pages_that_cannot_run_yet():
    """_config.yml's execute.exclude_patterns (what make book does not run) are the NOT_YET pages: a page
    that runs is executed by make book, and one that cannot yet does not fail it."""
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    excluded = {page_id(Path(p)) for p in config["execute"].get("exclude_patterns", [])}
    assert excluded == set(NOT_YET), "keep _config.yml's execute.exclude_patterns equal to tests/notebooks.py NOT_YET"


def test_every_chapter_is_built(built_book):
    for notebook in toc_notebooks():
        page = built_book / notebook.with_suffix(".html")
        assert page.is_file(), f"{page} missing from the built book"
        assert "Traceback" not in page.read_text(), f"{page} shows a traceback"


def test_pages_load_nothing_from_a_cdn(built_book):
    """No script, image, stylesheet or frame comes from the network (links to elsewhere are fine)."""
    for page in built_book.rglob("*.html"):
        html = page.read_text()
        loaded = re.findall(r"<(?:script|img|iframe)[^>]+src=\"([^\"]+)\"", html)
        loaded += [href for tag in re.findall(r"<link[^>]+>", html) if 'rel="stylesheet"' in tag
                   for href in re.findall(r'href="([^"]+)"', tag)]
        for src in loaded:
            assert not src.startswith(("http://", "https://", "//")), f"{page.name} loads {src} from the network"
        for tag in re.findall(r"<script[^>]*embed-amd\.js[^>]*>", html):
            assert "crossorigin" not in tag, f"{page.name}: the widget script's crossorigin attribute breaks file://"


def test_numbers_in_prose_come_from_the_run(built_book, fast_execution):
    """Chapter 0's markdown shows the numbers its run glued (myst-nb resolves each {glue} role), and the
    results file records them."""
    notebook = Path("book/chapters/00_why_features_interact.ipynb")
    glued = json.loads((fast_execution(notebook).results_dir / f"{notebook.stem}.json").read_text())["glued"]
    html = (built_book / notebook.with_suffix(".html")).read_text()
    text = re.sub(r"<[^>]+>", "", html)
    assert "{glue}" not in text, "a glue role was left unresolved"
    assert f"maximum slope of {glued['lip_gelu']:.2f} near" in text
    tightness = SeedSummary(**glued["tightness"])  # glued over the draws: "mean ± half-width (n=…)"
    assert f"overestimate the error {tightness:.2f}-fold on" in text


def test_markdown_tables_render_as_tables(built_book):
    """display(Markdown(table)) is parsed as MyST (nb_render_markdown_format), so it is an HTML table."""
    html = (built_book / "book" / "chapters" / "06_full_scale.html").read_text()
    tables = re.findall(r"<table.*?</table>", html, re.S)
    assert any("positions held" in t and "A100 (est.)" in t for t in tables), "the cost table is not rendered as a table"
    assert "| preset | chapter |" not in html


@pytest.mark.parametrize("page", [pytest.param(p, id=p, marks=[*needs_browser, *(
    [pytest.mark.xfail(strict=True, reason=PAGE_DEFECTS[p])] if p in PAGE_DEFECTS else [])]) for p in PAGES])
def test_every_page_reads_as_it_should(page, inspected):
    """Each page in headless Chromium with no network, as a reader sees it: no raw Markdown table, no raw TeX
    outside typeset math, no traceback, warning or object repr in an output, no absolute path, no empty widget,
    no console error, no image that fails to load, nothing past the content column's right edge. Its
    screenshot is saved (screenshots_dir())."""
    seen = inspected[page]
    print(f"screenshot: {seen.screenshot}")
    assert seen.screenshot.is_file() and seen.screenshot.stat().st_size > 20_000, f"{page}: no screenshot, or a blank page"
    problems = seen.problems()
    assert not problems, f"{page} as a reader sees it:\n" + "\n".join(f"  {p}" for p in problems)


@pytest.mark.parametrize("page", ["book/chapters/00_why_features_interact.html"])
@pytest.mark.browser
@pytest.mark.skipif(BROWSER is None, reason="needs headless Chromium or Chrome (see above)")
def test_math_is_typeset_and_widgets_render_offline(page, inspected):
    """Chapter 0's math is typeset and its slider drawn, with no network; a rendered page makes a large
    screenshot (a blank or unstyled one compresses to a small file)."""
    seen = inspected[page]
    assert seen.mathjax >= 5, "MathJax did not typeset the chapter's math"
    assert seen.widgets >= 1, "the ipywidgets slider did not render"
    assert seen.screenshot.stat().st_size > 50_000, "a blank or unstyled page"


def test_a_failing_cell_fails_the_book_build(tmp_path):
    shutil.copy(ROOT / "_config.yml", tmp_path / "_config.yml")
    (tmp_path / "book").mkdir()
    (tmp_path / "book" / "intro.md").write_text("# Intro\n")
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_markdown_cell("# Broken"), nbformat.v4.new_code_cell("1 / 0")]
    nbformat.write(nb, tmp_path / "book" / "broken.ipynb")
    (tmp_path / "_toc.yml").write_text("format: jb-book\nroot: book/intro\nchapters:\n  - file: book/broken\n")
    (tmp_path / "book" / "references.bib").write_text((ROOT / "book" / "references.bib").read_text())
    shutil.copytree(ROOT / "book" / "offline", tmp_path / "book" / "offline")
    shutil.copytree(ROOT / "scripts", tmp_path / "scripts")
    proc = build_book(tmp_path)
    assert proc.returncode != 0, "a notebook with a failing cell must fail the build"
    assert "ZeroDivisionError" in proc.stdout + proc.stderr
