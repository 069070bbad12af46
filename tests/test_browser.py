"""The built book, opened in a real browser: headless Chromium (Debian package ``chromium``).

Renders the book if it is not up to date (``tools/build_book.py``), then for every chapter listed in
``_quarto.yml`` loads the page from disk, lets its scripts run (MathJax typesets the math from the
local copy, with no network) and reads the resulting DOM: the page has its title and content, every
image it shows exists, and no Quarto syntax (``@fig-``, ``@tbl-``, ``{#``, ``#|``) or unparsed MyST is
left over.
Screenshots of two chapters are saved to ``_build/screenshots/`` for a person to look at.
Skipped, with the reason, where Chromium is not installed (``apt-get install chromium``).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import build_book  # noqa: E402

BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# No network, no first-run work, no sandbox (CI runs as root): the flags the project settled on.
BROWSER_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
    "--virtual-time-budget=10000",  # let MathJax and the theme's scripts finish before reading the page
]


def find_browser() -> str | None:
    return next((path for path in map(shutil.which, BROWSER_NAMES) if path), None)


@pytest.fixture(scope="module")
def browser() -> str:
    path = find_browser()
    if not path:
        pytest.skip("headless Chromium is not installed (Debian: apt-get install chromium)")
    return path


@pytest.fixture(scope="module")
def html_dir() -> Path:
    return build_book.build_book(ROOT)  # returns at once when the book is up to date


@pytest.fixture(scope="module")
def chapter_pages(html_dir) -> dict[str, Path]:
    """Chapter source path -> its HTML page, for the chapters of ``_quarto.yml`` that exist."""
    chapters = build_book.chapter_paths(build_book.load_quarto_config(ROOT))
    return {c: html_dir / Path(c).with_suffix(".html") for c in chapters if (ROOT / c).exists()}


def run_browser(browser: str, profile_dir: Path, *args: str) -> subprocess.CompletedProcess:
    command = [browser, *BROWSER_FLAGS, f"--user-data-dir={profile_dir}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=90)


@pytest.fixture(scope="module")
def doms(browser, chapter_pages, tmp_path_factory) -> dict[str, str]:
    """Chapter -> the DOM Chromium built for its page (after scripts ran)."""
    profile_dir = tmp_path_factory.mktemp("chromium-profile")
    result = {}
    for chapter, page in chapter_pages.items():
        assert page.exists(), f"{chapter}: the build wrote no {page}"
        done = run_browser(browser, profile_dir, "--dump-dom", page.as_uri())
        assert done.returncode == 0, f"{chapter}: chromium failed: {done.stderr[-2000:]}"
        result[chapter] = done.stdout
    return result


class _Dom(HTMLParser):
    """The title, first heading and image sources of a page."""

    def __init__(self):
        super().__init__()
        self.title = self.h1 = ""
        self.images: list[str] = []
        self._in = None

    def handle_starttag(self, tag, attrs):
        if tag == "title" or (tag == "h1" and not self.h1):
            self._in = tag
        if tag == "img":
            self.images.append(dict(attrs).get("src") or "")

    def handle_endtag(self, tag):
        if tag == self._in:
            self._in = None

    def handle_data(self, data):
        if self._in == "title":
            self.title += data
        elif self._in == "h1":
            self.h1 += data


def words(text: str) -> str:
    """Text without section numbers, permalink signs and extra spaces, for comparing titles."""
    return " ".join(re.sub(r"[#¶]|\b\d+(\.\d+)*\.?(?=\s)", " ", text).split())


def parse_dom(dom: str) -> _Dom:
    parsed = _Dom()
    parsed.feed(dom)
    return parsed


def test_every_chapter_page_loads_with_title_and_content(doms):
    assert doms, "no chapter pages"
    for chapter, dom in doms.items():
        page = parse_dom(dom)
        heading = words(page.h1)
        assert heading, f"{chapter}: no <h1> in the page"
        assert heading in words(page.title), f"{chapter}: title {page.title!r} lacks {heading!r}"
        text = build_book.visible_text(dom)
        assert len(text.split()) > 40, f"{chapter}: the page is nearly empty"


def test_every_image_exists(doms, chapter_pages):
    for chapter, dom in doms.items():
        page_path = chapter_pages[chapter]
        for src in parse_dom(dom).images:
            url = urlparse(src)
            if url.scheme == "data":
                continue
            assert url.scheme in ("", "file"), f"{chapter}: image {src} needs a network"
            path = Path(unquote(url.path)) if url.scheme == "file" else page_path.parent / unquote(url.path)
            assert path.is_file(), f"{chapter}: image {src} is missing"


def test_no_raw_quarto_syntax(doms):
    for chapter, dom in doms.items():
        text = build_book.visible_text(dom)
        left = [pattern for pattern in build_book.RAW_PATTERNS if pattern in text]
        assert not left, f"{chapter}: untranslated Quarto syntax {left}"


def test_cross_references_resolve(doms):
    """Every reference links -- except in a chapter whose notebook has not run yet, which must say so."""
    pending = {chapter for chapter, dom in doms.items() if build_book.is_pending_page(dom)}
    for chapter in pending:
        assert chapter.endswith(".ipynb"), f"{chapter}: only notebooks can be pending"
    broken = {chapter: build_book.unresolved_references(dom) for chapter, dom in doms.items() if chapter not in pending}
    broken = {chapter: labels for chapter, labels in broken.items() if labels}
    assert not broken, (
        f"references that do not resolve: {broken}. A figure or table label of a notebook exists only once "
        "the notebook is executed: run `python tools/run_notebooks.py --profile mini` and commit the notebooks."
    )


def test_math_is_typeset_offline(doms, chapter_pages):
    with_math = [c for c, page in chapter_pages.items() if 'class="math' in page.read_text(encoding="utf-8")]
    assert with_math, "no chapter has math (the method chapter should)"
    for chapter in with_math:
        typeset = re.search(r'<mjx-container|class="MathJax_SVG', doms[chapter])  # MathJax 3, or Debian's MathJax 2
        assert typeset, f"{chapter}: MathJax did not typeset the math"


def test_screenshots_of_two_chapters(browser, chapter_pages, tmp_path_factory):
    # The first two chapters after the preface: the method (math, figures) and the data (tables).
    chosen = list(chapter_pages)[1:3]
    shots = tmp_path_factory.mktemp("screenshots")
    profile_dir = tmp_path_factory.mktemp("chromium-shots")
    for chapter in chosen:
        target = shots / (Path(chapter).stem + ".png")
        done = run_browser(
            browser, profile_dir, "--window-size=1280,2000", f"--screenshot={target}", chapter_pages[chapter].as_uri()
        )
        assert done.returncode == 0 and target.exists(), f"{chapter}: no screenshot: {done.stderr[-2000:]}"
        assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and target.stat().st_size > 20_000
