"""Headless Chromium (or Chrome) driven over the DevTools protocol, to see the built book as a reader does.

No client library: Chromium speaks the protocol over two pipes (``--remote-debugging-pipe``: it reads
commands from fd 3 and writes replies and events to fd 4, each message JSON ended by a NUL byte). The
browser has no network (every http(s) request goes to a closed local port; ``file://`` still works).

:meth:`Browser.inspect` opens one page, waits for MathJax and the widgets, scrolls through it (so lazy
content loads), runs :data:`CHECKS` in the page, and saves a full-page screenshot; the console errors,
uncaught exceptions and failed loads it saw come back with what the checks found.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

BINARIES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--hide-scrollbars", "--mute-audio",
         # no network at all: every http(s) request goes to a closed local port; file:// still works
         "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>"]
WIDTH, HEIGHT = 1280, 900
MAX_SHOT_HEIGHT = 16_000


def find_browser() -> str | None:
    """The first of :data:`BINARIES` on ``PATH`` (GitHub's runners have ``google-chrome``)."""
    return next((path for path in map(shutil.which, BINARIES) if path), None)


# Runs in the page; returns {"name of check": [what it found, ...]}. Cell inputs (the code a reader reads)
# are left out of the text checks: the chapters' code may legitimately hold "$", "\\(" or "|---|".
CHECKS = r"""
(() => {
  const main = document.querySelector("main .bd-article") || document.querySelector("main") || document.body;
  const found = {raw_table: [], raw_tex: [], output_noise: [], absolute_path: [], empty_widget: [],
                 broken_image: [], overflow: []};
  const snippet = (s, i) => s.slice(Math.max(0, i - 40), i + 60).replace(/\s+/g, " ");
  const visible = main.cloneNode(true);
  visible.querySelectorAll("mjx-container, mjx-assistive-mml, script, style, .cell_input, .headerlink, " +
                           "[aria-hidden=true], .visually-hidden").forEach(e => e.remove());
  const text = visible.textContent;
  const scan = (re, key) => { for (const m of text.matchAll(re)) found[key].push(snippet(text, m.index)); };
  scan(/\|\s*:?-{3,}:?\s*\|/g, "raw_table");
  scan(/\$[^$\s][^$\n]{0,80}?[^$\s\\]\$|\$[a-zA-Z]\$|\$\$|\\\(|\\\)|\\\[|\\\]|\\begin\{|\\\||\$\\[a-zA-Z]|\\(frac|sum|mathrm|text|operatorname)\{/g, "raw_tex");
  scan(/(^|[\s'"(=:])(\/(home|root|tmp|work|usr|var|opt|Users|mnt|private)\/[^\s'")]+|[A-Z]:\\[^\s'")]+)/g,
       "absolute_path");
  for (const out of main.querySelectorAll(".cell_output")) {
    const t = out.textContent;
    for (const m of t.matchAll(/Traceback \(most recent call last\)|\b\w*Warning\b|<[\w.]+ object at 0x[0-9a-fA-F]+>/g))
      found.output_noise.push(snippet(t, m.index));
  }
  for (const view of main.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]')) {
    const box = view.parentElement;
    const drawn = [...box.children].filter(e => e !== view && e.getBoundingClientRect().height > 1);
    if (!drawn.length) found.empty_widget.push("a widget view with nothing drawn: " + view.textContent.slice(0, 80));
  }
  for (const area of main.querySelectorAll(".widget-output, .jupyter-widgets-output-area")) {
    if (!area.textContent.trim() && !area.querySelector("img, svg, canvas, table"))
      found.empty_widget.push("an empty widget Output area");
  }
  for (const img of document.images)
    if (!img.complete || img.naturalWidth === 0) found.broken_image.push(img.getAttribute("src"));
  const column = main.getBoundingClientRect();
  const describe = el => el.tagName.toLowerCase() + (el.className && typeof el.className === "string" ?
                         "." + el.className.trim().split(/\s+/).join(".") : "") + ": " +
                         (el.textContent || "").trim().slice(0, 60).replace(/\s+/g, " ");
  const insideScroller = el => {
    for (let a = el.parentElement; a && a !== main; a = a.parentElement)
      if (["auto", "scroll"].includes(getComputedStyle(a).overflowX)) return true;
    return false;
  };
  for (const el of main.querySelectorAll("*")) {
    if (el.closest("mjx-assistive-mml, script, style")) continue;
    const r = el.getBoundingClientRect();
    if (r.width < 1 || r.height < 1) continue;
    const style = getComputedStyle(el);
    if (style.position === "fixed") continue;
    if (["hidden", "clip"].includes(style.overflowX) && !style.display.startsWith("inline")
        && el.scrollWidth > el.clientWidth + 2 && style.textOverflow !== "ellipsis") {
      found.overflow.push("cut off (overflow hidden): " + describe(el));
      continue;
    }
    // a left overflow never scrolls, so the page's scrollWidth does not show it
    if (r.left < -2 && !insideScroller(el)) {
      found.overflow.push(`past the window's left edge by ${Math.round(-r.left)}px: ` + describe(el));
      continue;
    }
    if (r.right <= column.right + 2) continue;
    if (!insideScroller(el)) found.overflow.push(`past the column's right edge by ${Math.round(r.right - column.right)}px: ` +
                                                 describe(el));
  }
  if (document.documentElement.scrollWidth > window.innerWidth + 2)
    found.overflow.push(`the page scrolls sideways (${document.documentElement.scrollWidth}px > ${window.innerWidth}px)`);
  for (const k in found) found[k] = [...new Set(found[k])].slice(0, 8);
  return JSON.stringify(found);
})()
"""
SETTLE = r"""
(async () => {
  const sleep = ms => new Promise(r => setTimeout(r, ms));
  for (let i = 0; i < 100 && document.readyState !== "complete"; i++) await sleep(100);
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) await MathJax.startup.promise;
  for (let y = 0; y < document.documentElement.scrollHeight; y += window.innerHeight) { window.scrollTo(0, y); await sleep(60); }
  window.scrollTo(0, 0);
  await sleep(1500);  // the widget embedder renders after require.js has loaded it
  if (window.MathJax && MathJax.typesetPromise) await MathJax.typesetPromise();
  return true;
})()
"""


def same_article(view_png: bytes, page_png: Path, box: list[float]) -> bool:
    """Whether the page's screenshot shows, in the window's first screen, the article ``box`` (left, top,
    right, bottom in CSS pixels) as the window itself drew it (99 % of its pixels equal)."""
    import io

    from PIL import Image, ImageChops

    box = tuple(int(round(v)) for v in box)
    with Image.open(io.BytesIO(view_png)) as view, Image.open(page_png) as page:
        a, b = view.convert("RGB").crop(box), page.convert("RGB").crop(box)
        diff = ImageChops.difference(a, b).convert("L").point(lambda v: 255 if v > 16 else 0)
        return diff.histogram()[255] <= 0.01 * a.width * a.height


class Inspection(NamedTuple):
    """What one page showed: ``found`` (check name -> findings), ``console`` (errors, exceptions and
    failed loads), ``screenshot`` (the PNG's path), ``mathjax`` (typeset math elements) and ``widgets``
    (rendered widget views)."""

    url: str
    found: dict[str, list[str]]
    console: list[str]
    screenshot: Path
    mathjax: int
    widgets: int

    def problems(self) -> list[str]:
        return [f"{name}: {item}" for name, items in self.found.items() for item in items] + \
            [f"console: {line}" for line in self.console]


class BrowserError(RuntimeError):
    """The browser did not start, answer or load the page (the message says which)."""


class Browser:
    """One headless browser for many pages (use as a context manager)."""

    def __init__(self, binary: str | None = None, timeout: float = 60.0):
        self.binary = binary or find_browser()
        if self.binary is None:
            raise BrowserError(f"no browser: install Debian's chromium (as root: apt-get install chromium; "
                               f"scripts/install_chromium.sh) or Google Chrome ({', '.join(BINARIES)})")
        self.timeout, self._id, self._buffer, self._events = timeout, 0, b"", []
        self._profile = tempfile.TemporaryDirectory(prefix="book-browser-")
        to_child, self._write = os.pipe()
        self._read, from_child = os.pipe()
        # the child's fds 3 and 4; moved above 100 first so that dup2 cannot overwrite one with the other
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in (to_child, from_child)]
        for fd in (to_child, from_child):
            os.close(fd)
        self._proc = subprocess.Popen(
            [self.binary, *FLAGS, "--remote-debugging-pipe", f"--user-data-dir={self._profile.name}",
             f"--window-size={WIDTH},{HEIGHT}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            pass_fds=(3, 4), preexec_fn=lambda: (os.dup2(high[0], 3), os.dup2(high[1], 4)))
        for fd in high:
            os.close(fd)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        try:
            self._send("Browser.close")
        except BrowserError:
            pass
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        for fd in (self._read, self._write):
            os.close(fd)
        self._profile.cleanup()

    def _message(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._read], [], [], left)[0]:
                raise BrowserError(f"{self.binary} did not answer within {self.timeout:.0f} s")
            chunk = os.read(self._read, 1 << 20)
            if not chunk:
                raise BrowserError(f"{self.binary} exited (status {self._proc.poll()})")
            self._buffer += chunk
        raw, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(raw)

    def _send(self, method: str, session: str | None = None, **params) -> dict:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params} | ({"sessionId": session} if session else {})
        os.write(self._write, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._message(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error'].get('message')}")
                return reply.get("result", {})
            self._events.append(reply)

    def _evaluate(self, session: str, expression: str):
        result = self._send("Runtime.evaluate", session, expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise BrowserError(f"a check failed inside the page: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def _console(self, session: str) -> list[str]:
        lines = []
        for event in self._events:
            if event.get("sessionId") != session:
                continue
            method, p = event.get("method"), event.get("params", {})
            if method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                lines.append(" ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", [])))
            elif method == "Runtime.exceptionThrown":
                details = p.get("exceptionDetails", {})
                lines.append("uncaught: " + details.get("exception", {}).get("description", details.get("text", "")))
            elif method == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                entry = p["entry"]
                lines.append(f"{entry.get('text')} {entry.get('url', '')}".strip())
        return list(dict.fromkeys(line.split("\n")[0][:300] for line in lines))

    def inspect(self, page: Path, screenshot: Path) -> Inspection:
        """Open ``page``, let it settle, check it and save its screenshot to ``screenshot``."""
        target = self._send("Target.createTarget", url="about:blank")["targetId"]
        session = self._send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self._events = []
        try:
            for domain in ("Runtime", "Log", "Page"):
                self._send(f"{domain}.enable", session)
            self._send("Emulation.setDeviceMetricsOverride", session, width=WIDTH, height=HEIGHT,
                       deviceScaleFactor=1, mobile=False)
            navigated = self._send("Page.navigate", session, url=page.resolve().as_uri())
            if navigated.get("errorText"):
                raise BrowserError(f"{page}: {navigated['errorText']}")
            self._evaluate(session, SETTLE)
            found = json.loads(self._evaluate(session, CHECKS))
            mathjax = self._evaluate(session, "document.querySelectorAll('mjx-container').length")
            article = self._evaluate(session, "(() => { const r = (document.querySelector('main .bd-article') || "
                                              "document.body).getBoundingClientRect(); return [r.left, r.top, r.right, "
                                              "Math.min(r.bottom, window.innerHeight)]; })()")
            widgets = self._evaluate(session, "document.querySelectorAll('.widget-subarea .jupyter-widgets').length")
            view = base64.b64decode(self._send("Page.captureScreenshot", session, format="png")["data"])
            size = self._send("Page.getLayoutMetrics", session)["cssContentSize"]
            # A full-page shot taken with captureBeyondViewport renders the primary sidebar and the article
            # shifted left on long pages (chapter 3's screenshot lost its left 100-400 px, while the page laid
            # out correctly); a viewport as tall as the page, captured as it is, draws what a reader sees.
            self._send("Emulation.setDeviceMetricsOverride", session, width=WIDTH,
                       height=int(min(size["height"], MAX_SHOT_HEIGHT)), deviceScaleFactor=1, mobile=False)
            self._evaluate(session, "new Promise(r => setTimeout(() => r(true), 500))")
            shot = self._send("Page.captureScreenshot", session, format="png")
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            screenshot.write_bytes(base64.b64decode(shot["data"]))
            found["screenshot"] = [] if same_article(view, screenshot, article) else [
                "the full-page screenshot does not show the article where the window shows it"]
            return Inspection(page.as_uri(), found, self._console(session), screenshot, mathjax, widgets)
        finally:
            self._send("Target.closeTarget", targetId=target)
