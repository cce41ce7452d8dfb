"""The book builds from the chapters' FAST executions, renders math and widgets offline in a browser,
and a failing cell fails the build."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import nbformat
import pytest
from notebooks import ROOT, build_book, stage_book, toc_notebooks

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  # no network at all: every http(s) request goes to a closed local port; file:// still works
                  "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>"]


@pytest.fixture(scope="session")
def built_book(fast_execution, tmp_path_factory) -> Path:
    executed = {}
    for notebook in toc_notebooks():
        run = fast_execution(notebook)
        if run.error is not None:
            pytest.fail(f"cannot build the book: {notebook} failed under papermill: {run.error}")
        executed[notebook] = run.executed
    source = stage_book(tmp_path_factory.mktemp("book_src"), executed)
    proc = build_book(source)
    assert proc.returncode == 0, f"jupyter-book build failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return source / "_build" / "html"


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
    assert f"{glued['tightness']:.2f}-fold on average" in text


def test_markdown_tables_render_as_tables(built_book):
    """display(Markdown(table)) is parsed as MyST (nb_render_markdown_format), so it is an HTML table."""
    html = (built_book / "book" / "chapters" / "06_full_scale.html").read_text()
    tables = re.findall(r"<table.*?</table>", html, re.S)
    assert any("positions in memory" in t for t in tables), "the cost table is not rendered as a table"
    assert "| preset | chapter |" not in html


def _chromium(page: Path, *args: str) -> subprocess.CompletedProcess:
    """Headless Chromium on ``page`` with a throw-away profile, no network, 20 s of virtual time."""
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=20000", *args,
             page.as_uri()],
            capture_output=True, text=True, timeout=180)


def _dom(page: Path) -> str:
    return _chromium(page, "--dump-dom").stdout


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="needs headless Chromium: install Debian's 'chromium' package "
                    "(as root: apt-get install chromium), or run `make test`, which installs it where it can")
def test_math_is_typeset_and_widgets_render_offline(built_book):
    page = built_book / "book" / "chapters" / "00_why_features_interact.html"
    dom = _dom(page)
    assert dom.count("<mjx-container") >= 5, "MathJax did not typeset the chapter's math"
    assert "widget-slider" in dom, "the ipywidgets slider did not render"


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="needs headless Chromium (see the test above)")
def test_screenshot_of_a_chapter(built_book, tmp_path):
    """A screenshot of chapter 0 (kept in the test's tmp folder, path printed): a rendered page makes a
    large PNG; a blank or unstyled one compresses to a small file."""
    page = built_book / "book" / "chapters" / "00_why_features_interact.html"
    shot = tmp_path / "chapter00.png"
    _chromium(page, "--window-size=1280,4000", f"--screenshot={shot}")
    print(f"screenshot: {shot}")
    assert shot.is_file() and shot.stat().st_size > 50_000, "no screenshot, or a blank page"


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
    proc = build_book(tmp_path)
    assert proc.returncode != 0, "a notebook with a failing cell must fail the build"
    assert "ZeroDivisionError" in proc.stdout + proc.stderr
