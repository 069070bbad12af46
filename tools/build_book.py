"""Render the book: with Quarto where it is installed, otherwise with Jupyter Book 1.x.

Both renderers read the same ``_quarto.yml`` and the same (already executed) notebooks, and both
write HTML to ``_build/html``. Quarto cannot be installed everywhere (it is a binary outside the
Python and npm registries), so without it this script translates the Quarto project into a Jupyter
Book project under ``_build/jb``:

- ``_quarto.yml`` -> ``_config.yml`` and ``_toc.yml``;
- ``.qmd`` pages -> MyST Markdown ``.md``;
- notebooks -> copies whose Quarto cell options (``#| label: fig-...``, ``#| fig-cap:``,
  ``#| tbl-cap:``, ``#| echo: false`` ...) become myst-nb metadata, tags and numbered tables;
- in Markdown, Quarto cross-references (``@fig-x``), labelled equations (``$$ ... $$ {#eq-x}``),
  section ids (``{#sec-x}``) and callouts (``::: {.callout-note}``) become MyST roles, directives
  and admonitions, so figures, tables, equations and sections number and link as they do in Quarto.

Math is rendered by a local copy of MathJax 3 (from the npm registry, kept in the ignored
``cache/mathjax``), so the book needs no network to read. Nothing is executed here: notebooks are
run beforehand by ``tools/run_notebooks.py``. A second build with nothing changed returns at once.

    python tools/build_book.py            # render (Quarto if present, else Jupyter Book)
    python tools/build_book.py --force    # rebuild even if nothing changed
    python tools/build_book.py --engine jupyter-book   # use the offline route even if Quarto exists
    python tools/build_book.py --profile paper         # the chapters in results/paper/notebooks
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import html
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import nbformat
import yaml

ROOT = Path(__file__).resolve().parents[1]
BUILD_DIR = "_build"  # relative to the project root; ignored by git
JB_SOURCE = "jb"  # the generated Jupyter Book project, under BUILD_DIR
HTML_DIR = "html"  # the rendered book, under BUILD_DIR (both renderers)
STAMP_FILE = ".build_stamp"
MATHJAX_VERSION = "3"
MATHJAX_CACHE = Path("cache") / "mathjax"  # npm installs here (ignored by git, survives `rm -rf _build`)
# SVG output needs no web fonts: fonts loaded from file:// are blocked by browsers, SVG is not.
MATHJAX_SCRIPT = "tex-mml-svg.js"
MATHJAX_PARTS = (MATHJAX_SCRIPT, "input", "output", "ui", "a11y", "adaptors")
# Static files (MathJax, CSS) go to _build/jb/_vendor, which Sphinx copies to _static/. Not to
# _build/jb/_static: when that folder exists, Jupyter Book adds every .js file under every static
# folder to every page -- all of MathJax's components.
VENDOR_DIR = "_vendor"
COMPAT_CSS = "quarto-compat.css"

CALLOUT_KINDS = ("note", "warning", "tip", "important", "caution")
IMAGE_MIMES = ("image/png", "image/jpeg", "image/svg+xml", "image/gif")
# What must never reach a reader: Quarto syntax the translation missed, and MyST syntax that
# Sphinx did not parse (a directive or role shown as text).
RAW_QUARTO_PATTERNS = ("@fig-", "@tbl-", "@eq-", "@sec-", "{#", "#|")
RAW_MYST_PATTERNS = ("```{", "~~~{", ":::{", "{numref}`", "{eq}`", "{ref}`")
RAW_PATTERNS = RAW_QUARTO_PATTERNS + RAW_MYST_PATTERNS


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


# ============================================================================ the Quarto project
@dataclass
class Part:
    """One group of chapters in the table of contents (``caption`` None for chapters outside parts)."""

    caption: str | None
    chapters: list[str]


def load_quarto_config(root: Path) -> dict:
    path = root / "_quarto.yml"
    if not path.exists():
        raise SystemExit(f"No _quarto.yml in {root}: this script renders a Quarto book project.")
    config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if config.get("project", {}).get("type") != "book":
        raise SystemExit(f"{path} must say `project: type: book`.")
    if not config.get("book", {}).get("chapters"):
        raise SystemExit(f"{path} lists no `book: chapters:`.")
    return config


def book_parts(config: dict) -> list[Part]:
    """The chapters of ``_quarto.yml`` grouped into parts, in order (appendices become a part).

    Quarto allows plain chapter paths, ``{part: title, chapters: [...]}`` groups and entries written
    as ``{href: path}``; all three are accepted.
    """
    book = config["book"]
    parts: list[Part] = []
    for entry in book.get("chapters", []):
        if isinstance(entry, dict) and "part" in entry:
            parts.append(Part(_part_title(entry["part"]), _chapter_list(entry.get("chapters", []))))
        elif parts and parts[-1].caption is None:
            parts[-1].chapters.extend(_chapter_list([entry]))
        else:
            parts.append(Part(None, _chapter_list([entry])))
    if book.get("appendices"):
        parts.append(Part("Appendices", _chapter_list(book["appendices"])))
    return parts


def _part_title(part: str) -> str:
    if str(part).endswith((".qmd", ".md")):  # a part given as a page: name it after the file
        return Path(part).stem.replace("-", " ").title()
    return str(part)


def _chapter_list(entries: list) -> list[str]:
    paths = [entry.get("href") or entry.get("file") if isinstance(entry, dict) else entry for entry in entries]
    return [str(path) for path in paths if path]


def chapter_paths(config: dict) -> list[str]:
    """Every chapter path of the book, in reading order (relative to the project root)."""
    return [path for part in book_parts(config) for path in part.chapters]


def chapter_title_line(root: Path, chapter: str) -> str:
    """The chapter's title heading (``# Title {attributes}``), read from its own file as Quarto reads it."""
    path = root / chapter
    if path.suffix == ".ipynb":
        texts = [cell.source for cell in nbformat.read(path, as_version=4).cells if cell.cell_type == "markdown"]
    else:
        texts = [path.read_text(encoding="utf-8")]
    for text in texts:
        for line in text.splitlines():
            if line.startswith("# "):
                return line
    return ""


def quarto_chapter_numbers(root: Path, config: dict) -> dict[str, str | None]:
    """The number Quarto gives each chapter, by its documented rules for books: chapters are numbered
    in reading order across parts (a part takes no number), a chapter whose title carries
    ``{.unnumbered}`` takes none, and appendices are lettered A, B, ... Figures, tables and equations
    then number as ``<chapter>.<n>``."""
    numbers: dict[str, str | None] = {}
    count = 0
    appendices = set(_chapter_list(config["book"].get("appendices", [])))
    for chapter in chapter_paths(config):
        if ".unnumbered" in chapter_title_line(root, chapter) or chapter in appendices:
            numbers[chapter] = None
        else:
            count += 1
            numbers[chapter] = str(count)
    for letter, chapter in zip("ABCDEFGHIJKLMNOPQRSTUVWXYZ", [c for c in chapter_paths(config) if c in appendices]):
        numbers[chapter] = letter
    return numbers


def jupyter_book_chapter_numbers(config: dict) -> dict[str, str | None]:
    """The number the Jupyter Book build gives each chapter (``jupyter_book_toc``): the root none, the
    others numbered in order across parts (Jupyter Book's multi-toc numbering), appendices included."""
    chapters = chapter_paths(config)
    return {chapters[0]: None} | {chapter: str(i) for i, chapter in enumerate(chapters[1:], start=1)}


def existing_parts(root: Path, config: dict) -> list[Part]:
    """The parts with chapters that are missing on disk left out (with a warning), empty parts dropped.

    Chapters are written by different people at different times; a chapter listed before its
    notebook lands should not stop the rest of the book from building.
    """
    kept = []
    for part in book_parts(config):
        present = [path for path in part.chapters if (root / path).exists()]
        for path in part.chapters:
            if path not in present:
                warn(f"_quarto.yml lists {path}, which does not exist yet; it is left out of this build.")
        if present:
            kept.append(Part(part.caption, present))
    return kept


def unlisted_notebooks(root: Path, config: dict) -> list[str]:
    listed = set(chapter_paths(config))
    found = sorted(p.relative_to(root).as_posix() for p in (root / "notebooks").glob("*.ipynb"))
    return [path for path in found if path not in listed]


# ======================================================================= Markdown: cross-references
LABEL = r"(?:fig|tbl|eq|sec)-[A-Za-z0-9_-]*[A-Za-z0-9_]"
BRACKETED_REF = re.compile(r"\[(-?)@(" + LABEL + r")\]", re.IGNORECASE)
BARE_REF = re.compile(r"(?<![\w@.\\/])@(" + LABEL + r")", re.IGNORECASE)
INLINE_CODE = re.compile(r"(`+)(.+?)(?<!`)\1(?!`)")
CLASS_SPAN = re.compile(r"\[([^\]\n]+)\]\{\.[^}\n]*\}")  # [text]{.smallcaps} -> text


def ref_role(label: str, with_prefix: bool = True) -> str:
    """The MyST role for one Quarto reference: figures and tables by number, sections by title.

    ``@eq-x`` reads "Equation (1.2)" (Quarto: "Equation 1.2"); ``[-@fig-x]`` drops the prefix.
    """
    label = label.lower()  # Sphinx normalises target names to lower case
    kind = label.split("-", 1)[0]
    if kind in ("fig", "tbl"):
        return f"{{numref}}`{label}`" if with_prefix else f"{{numref}}`%s <{label}>`"
    if kind == "eq":
        return f"Equation {{eq}}`{label}`" if with_prefix else f"{{eq}}`{label}`"
    return f"{{ref}}`{label}`"


def translate_refs_in_text(text: str) -> str:
    text = BRACKETED_REF.sub(lambda m: ref_role(m.group(2), with_prefix=not m.group(1)), text)
    text = BARE_REF.sub(lambda m: ref_role(m.group(1)), text)
    return CLASS_SPAN.sub(r"\1", text)


def translate_refs(line: str) -> str:
    """Translate references in a line of Markdown, leaving inline code spans as they are."""
    pieces, last = [], 0
    for match in INLINE_CODE.finditer(line):
        pieces.append(translate_refs_in_text(line[last : match.start()]))
        pieces.append(match.group(0))
        last = match.end()
    pieces.append(translate_refs_in_text(line[last:]))
    return "".join(pieces)


# ============================================================================= Markdown: the blocks
CODE_FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*(.*)$")
DIV_FENCE = re.compile(r"^(:{3,})\s*(.*?)\s*$")
HEADING_WITH_ATTRS = re.compile(r"^(#{1,6})\s+(.*?)\s*\{([#.-][^{}]*)\}\s*$")
MYST_DIRECTIVE_FENCE = re.compile(r"^\{[A-Za-z][\w:-]*\}")  # `:::{note}`: already MyST, kept as written
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$")
IMAGE_WITH_ATTRS = re.compile(r'^\s*!\[(.*)\]\((\S+?)(?:\s+"[^"]*")?\)\{([^{}]*)\}\s*$')
MARKDOWN_IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)")
TABLE_CAPTION = re.compile(r"^\s*(?::|Table:)\s+(.*?)\s*\{#(tbl-[\w-]+)\}\s*$")
EQUATION_LABEL = re.compile(r"^\s*\{#(eq-[\w-]+)\}\s*$")
# Directives whose first line holds a caption are fenced with tildes: a caption may hold a role such
# as {numref}`fig-x`, and CommonMark ends a backtick fence's info string at the first backtick.
DIRECTIVE_FENCE = "~~~"
QUARTO_CELL = re.compile(r"^\{([A-Za-z][\w-]*)([^}]*)\}$")  # ```{python} (executable in Quarto)


def parse_attributes(text: str) -> tuple[str | None, list[str], dict[str, str]]:
    """Pandoc attributes ``#id .class key="value"`` -> (id, classes, key/values)."""
    text = text.strip().strip("{}").strip()
    try:
        tokens = shlex.split(text)
    except ValueError:  # an unbalanced quote: fall back to plain words
        tokens = text.split()
    ident, classes, values = None, [], {}
    for token in tokens:
        if token.startswith("#"):
            ident = token[1:]
        elif token.startswith("."):
            classes.append(token[1:])
        elif "=" in token:
            key, value = token.split("=", 1)
            values[key] = value
        elif token == "-":
            classes.append("unnumbered")
        else:  # `::: callout-note` written without braces
            classes.append(token)
    return ident, classes, values


@dataclass
class _Div:
    """An open Pandoc div; ``kept`` divs become MyST admonitions, others lose their fences."""

    kept: bool
    inner_height: int = 0  # deepest chain of kept divs inside

    @property
    def height(self) -> int:
        return self.inner_height + (1 if self.kept else 0)


class _Fence:
    """A colon fence whose length is known only once the div is closed (MyST: outer > inner)."""

    def __init__(self, div: _Div, template: str):
        self.div, self.template = div, template

    def __str__(self) -> str:
        return self.template.replace("{colons}", ":" * (2 + self.div.height))


def split_front_matter(text: str) -> tuple[dict, str]:
    match = re.match(r"^---\s*\n(.*?)\n---\s*(?:\n|$)", text, re.DOTALL)
    if not match:
        return {}, text
    try:
        meta = yaml.safe_load(match.group(1)) or {}
    except yaml.YAMLError as error:
        warn(f"front matter is not valid YAML ({error}); it is dropped.")
        meta = {}
    return (meta if isinstance(meta, dict) else {}), text[match.end() :]


def split_cell_options(source: str) -> tuple[dict, str]:
    """Quarto cell options (the leading ``#|`` lines, YAML) and the code without them."""
    lines = source.splitlines()
    option_lines = []
    while lines and lines[0].lstrip().startswith("#|"):
        option_lines.append(lines.pop(0).lstrip()[2:])
    if not option_lines:
        return {}, source
    try:
        options = yaml.safe_load("\n".join(line[1:] if line.startswith(" ") else line for line in option_lines))
    except yaml.YAMLError:
        options = None
    if not isinstance(options, dict):
        warn(f"cell options {option_lines!r} are not YAML `key: value` lines; they are ignored.")
        options = {}
    return options, "\n".join(lines).lstrip("\n")


def translate_markdown(text: str) -> str:
    """Quarto Markdown -> MyST Markdown (see the module docstring for what is translated)."""
    lines = text.split("\n")
    out: list = []
    divs: list[_Div] = []
    i = 0
    while i < len(lines):
        line = lines[i]

        fence = CODE_FENCE.match(line)
        if fence:
            i = _translate_code_block(lines, i, fence, out)
            continue

        if line.strip().startswith("$$"):
            consumed = _translate_display_math(lines, i, out)
            if consumed:
                i += consumed
                continue

        div_fence = DIV_FENCE.match(line)
        if div_fence:
            i = _translate_div_fence(lines, i, div_fence, divs, out)
            continue

        if line.lstrip().startswith("|") or _is_table_caption_before_table(lines, i):
            consumed = _translate_pipe_table(lines, i, out)
            if consumed:
                i += consumed
                continue

        heading = HEADING_WITH_ATTRS.match(line)
        if heading:
            ident, _classes, _values = parse_attributes(heading.group(3))
            if ident:
                out.append(f"({ident})=")
            out.append(f"{heading.group(1)} {translate_refs(heading.group(2))}")
            i += 1
            continue

        image = IMAGE_WITH_ATTRS.match(line)
        if image:
            out.extend(_figure_from_image(*image.groups()))
            i += 1
            continue

        out.append(translate_refs(line))
        i += 1

    while divs:  # unclosed divs: close them so the rest of the page still renders
        warn("a `:::` div is not closed; it is closed at the end of the page.")
        _close_div(divs, out)
    return "\n".join(str(item) for item in out)


def _translate_code_block(lines: list[str], start: int, fence: re.Match, out: list) -> int:
    """Copy a fenced code block verbatim; Quarto cells (```{python}) become plain code blocks."""
    indent, marker, info = fence.groups()
    end = start + 1
    closing = re.compile(r"^\s*" + re.escape(marker[0]) + "{" + str(len(marker)) + r",}\s*$")
    while end < len(lines) and not closing.match(lines[end]):
        end += 1
    body = lines[start + 1 : end]
    cell = QUARTO_CELL.match(info.strip())
    if info.strip().startswith("{=") and info.strip().endswith("}"):  # ```{=html} raw block
        out.append(f"{indent}{marker}{{raw}} {info.strip()[2:-1]}")
        out.extend(body)
    elif cell:
        options, code = split_cell_options("\n".join(body))
        if options.get("echo") is False or options.get("include") is False:
            return end + 1  # Quarto would show nothing of this cell (and execution is off)
        out.append(f"{indent}{marker}{cell.group(1)}")
        out.extend(code.split("\n"))
    else:
        out.append(lines[start])
        out.extend(body)
    if end < len(lines):
        out.append(lines[end])
    return end + 1


def _translate_display_math(lines: list[str], start: int, out: list) -> int:
    """``$$ ... $$ {#eq-x}`` -> a labelled ``{math}`` directive; returns lines consumed (0: not math)."""
    text = "\n".join(lines[start:])
    opening = text.index("$$")
    closing = text.find("$$", opening + 2)
    if closing < 0:
        return 0
    body = text[opening + 2 : closing]
    rest_of_line = text[closing + 2 :].split("\n", 1)[0]
    consumed = text[: closing + 2].count("\n") + 1
    label = EQUATION_LABEL.match(rest_of_line)
    if not label:
        if rest_of_line.strip():
            return 0  # text after the closing $$: leave the paragraph to dollarmath
        out.extend(lines[start : start + consumed])
        return consumed
    out.extend(["```{math}", f":label: {label.group(1)}", body.strip("\n").strip(), "```"])
    return consumed


def _translate_div_fence(lines: list[str], start: int, fence: re.Match, divs: list[_Div], out: list) -> int:
    """Open or close a Pandoc div; callouts become MyST admonitions, other divs are unwrapped."""
    attributes = fence.group(2)
    if not attributes:  # a closing fence
        if divs:
            _close_div(divs, out)
        else:
            warn("a closing `:::` without an opening one is dropped.")
        return start + 1

    if MYST_DIRECTIVE_FENCE.match(attributes):
        div = _Div(kept=True)
        divs.append(div)
        out.append(_Fence(div, "{colons}" + attributes))
        return start + 1

    ident, classes, values = parse_attributes(attributes)
    kind = next((c.split("-", 1)[1] for c in classes if c.startswith("callout-")), None)
    if kind not in CALLOUT_KINDS:
        if ident and ident.startswith(("fig-", "tbl-")):
            warn(f"div `{{#{ident}}}` (a Quarto div figure/table) is not translated; use an image or cell caption.")
        div = _Div(kept=False)
        divs.append(div)
        return start + 1

    next_line = start + 1
    title = values.get("title")
    # Quarto also takes the callout's title from a heading on its first line.
    while next_line < len(lines) and not lines[next_line].strip():
        next_line += 1
    heading = HEADING.match(lines[next_line]) if next_line < len(lines) else None
    if heading and not title:
        title = heading.group(1)
        start = next_line
    extra_classes = " dropdown" if values.get("collapse", "").lower() == "true" else ""
    div = _Div(kept=True)
    divs.append(div)
    if title:
        out.append(_Fence(div, "{colons}{admonition} " + translate_refs(title)))
        out.append(f":class: {kind}{extra_classes}")
    else:
        out.append(_Fence(div, "{colons}{" + kind + "}"))
        if extra_classes:
            out.append(f":class:{extra_classes}")
    if ident:
        out.append(f":name: {ident}")
    out.append("")
    return start + 1


def _close_div(divs: list[_Div], out: list) -> None:
    div = divs.pop()
    if div.kept:
        out.append(_Fence(div, "{colons}"))
    if divs:
        divs[-1].inner_height = max(divs[-1].inner_height, div.height)


def _is_table_caption_before_table(lines: list[str], i: int) -> bool:
    if not TABLE_CAPTION.match(lines[i]):
        return False
    following = [line for line in lines[i + 1 : i + 3] if line.strip()]
    return bool(following) and following[0].lstrip().startswith("|")


def _translate_pipe_table(lines: list[str], start: int, out: list) -> int:
    """A pipe table with a ``: Caption {#tbl-x}`` line before or after it -> a ``{table}`` directive."""
    caption = label = None
    i = start
    if TABLE_CAPTION.match(lines[i]):
        caption, label = TABLE_CAPTION.match(lines[i]).groups()
        i += 1
        while i < len(lines) and not lines[i].strip():
            i += 1
    table_start = i
    while i < len(lines) and lines[i].lstrip().startswith("|"):
        i += 1
    table = lines[table_start:i]
    if len(table) < 2 or not re.match(r"^\s*\|?\s*:?-{3,}", table[1]):
        return 0  # not a pipe table (a line that merely starts with "|")
    if caption is None:  # caption after the table, maybe after one blank line
        after = i + 1 if i < len(lines) and not lines[i].strip() else i
        if after < len(lines) and TABLE_CAPTION.match(lines[after]):
            caption, label = TABLE_CAPTION.match(lines[after]).groups()
            i = after + 1
    if caption is None:
        out.extend(translate_refs(line) for line in table)
        return i - start
    out.extend([f"{DIRECTIVE_FENCE}{{table}} {translate_refs(caption)}", f":name: {label}", ""])
    out.extend(translate_refs(line) for line in table)
    out.append(DIRECTIVE_FENCE)
    return i - start


def _figure_from_image(caption: str, path: str, attributes: str) -> list[str]:
    """``![Caption](a.png){#fig-x width=60%}`` -> a numbered ``{figure}`` directive."""
    ident, _classes, values = parse_attributes(attributes)
    if not ident or not ident.startswith("fig-"):
        return [f"![{translate_refs(caption)}]({path})"]
    block = [f"```{{figure}} {path}", f":name: {ident}"]
    if values.get("width"):
        block.append(f":width: {values['width']}")
    if values.get("fig-alt"):
        block.append(f":alt: {values['fig-alt']}")
    return block + ["", translate_refs(caption), "```"]


INCLUDE_SHORTCODE = re.compile(r"^\s*\{\{<\s*include\s+(\S+)\s*>\}\}\s*$", re.MULTILINE)


def expand_includes(text: str, folder: Path, depth: int = 0) -> str:
    """Quarto's ``{{< include file.qmd >}}``: the file's text in place (paths relative to the page)."""

    def include(match: re.Match) -> str:
        path = folder / match.group(1)
        if depth > 5 or not path.is_file():
            warn(f"cannot include {match.group(1)} (not found from {folder}).")
            return ""
        _meta, body = split_front_matter(path.read_text(encoding="utf-8"))
        return expand_includes(body, path.parent, depth + 1)

    return INCLUDE_SHORTCODE.sub(include, text)


def translate_qmd(text: str, folder: Path | None = None) -> str:
    """A ``.qmd`` page -> a MyST ``.md`` page (front-matter title becomes the page's first heading)."""
    meta, body = split_front_matter(text)
    if folder is not None:
        body = expand_includes(body, folder)
    body = translate_markdown(body)
    title = meta.get("title")
    if title and not re.search(r"^# ", body, re.MULTILINE):
        body = f"# {title}\n\n{body.lstrip()}"
    return body.rstrip() + "\n"


# ============================================================================ notebooks: tables
class _HtmlTable(HTMLParser):
    """The cells of the first ``<table>`` in an HTML snippet (pandas ``to_html`` or a Styler).

    Keeps header rows apart from body rows, expands ``colspan``/``rowspan`` (pandas uses them for
    MultiIndex labels) and notes which cells are bold, including a Styler's CSS-by-id bold.
    """

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.header_rows: list[list[dict]] = []
        self.body_rows: list[list[dict]] = []
        self.in_thead = self.done = False
        self.depth = 0
        self.row: list[dict] | None = None
        self.cell: dict | None = None
        self.in_style = False
        self.css = ""
        self.caption_text: list[str] = []
        self.in_caption = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "style":
            self.in_style = True
        if self.done:
            return
        if tag == "table":
            self.depth += 1
        elif self.depth != 1:
            return
        elif tag == "thead":
            self.in_thead = True
        elif tag == "caption":
            self.in_caption = True
        elif tag == "tr":
            self.row = []
        elif tag in ("td", "th") and self.row is not None:
            self.cell = {
                "text": [],
                "colspan": int(attrs.get("colspan") or 1),
                "rowspan": int(attrs.get("rowspan") or 1),
                "id": attrs.get("id"),
                "bold": "bold" in (attrs.get("style") or "") or "700" in (attrs.get("style") or ""),
            }
        elif tag in ("b", "strong") and self.cell is not None:
            self.cell["bold"] = True
        elif tag == "br" and self.cell is not None:
            self.cell["text"].append(" ")

    def handle_endtag(self, tag):
        if tag == "style":
            self.in_style = False
        if self.done:
            return
        if tag == "table":
            self.depth -= 1
            self.done = self.depth == 0
        elif self.depth != 1:
            return
        elif tag == "thead":
            self.in_thead = False
        elif tag == "caption":
            self.in_caption = False
        elif tag in ("td", "th") and self.cell is not None and self.row is not None:
            self.cell["text"] = " ".join("".join(self.cell["text"]).split())
            self.row.append(self.cell)
            self.cell = None
        elif tag == "tr" and self.row is not None:
            (self.header_rows if self.in_thead else self.body_rows).append(self.row)
            self.row = None

    def handle_data(self, data):
        if self.in_style:
            self.css += data
        elif self.cell is not None:
            self.cell["text"].append(data)
        elif self.in_caption:
            self.caption_text.append(data)

    def bold_ids(self) -> set[str]:
        ids = set()
        for selectors, body in re.findall(r"([^{}]+)\{([^{}]*)\}", self.css):
            if re.search(r"font-weight\s*:\s*(bold|[6-9]00)", body):
                ids.update(s.strip().lstrip("#") for s in selectors.split(",") if s.strip().startswith("#"))
        return ids


def _expand_spans(rows: list[list[dict]], bold_ids: set[str]) -> list[list[str]]:
    """Rows of cells with col/rowspans -> a rectangular grid of Markdown cell texts."""
    grid: list[list[str]] = []
    carried: dict[int, int] = {}  # column -> rows still covered by a rowspan from above
    for row in rows:
        out_row: list[str] = []
        cells = iter(row)
        column = 0
        while True:
            if carried.get(column):
                carried[column] -= 1
                out_row.append("")
                column += 1
                continue
            cell = next(cells, None)
            if cell is None:
                break
            text = _escape_markdown(cell["text"])
            if text and (cell["bold"] or cell["id"] in bold_ids):
                text = f"**{text}**"
            for offset in range(cell["colspan"]):
                out_row.append(text if offset == 0 else "")
                if cell["rowspan"] > 1:
                    carried[column] = cell["rowspan"] - 1
                column += 1
        grid.append(out_row)
    width = max((len(r) for r in grid), default=0)
    return [r + [""] * (width - len(r)) for r in grid]


def _escape_markdown(text: str) -> str:
    # Cells are parsed as Markdown by the list-table directive: escape what Markdown would act on.
    return re.sub(r"([\\`*_{}\[\]<>()#+\-!|$~])", r"\\\1", text)


def html_table_to_list_table(html_text: str, caption: str, label: str) -> str | None:
    """A pandas/Styler HTML table -> a numbered MyST ``{list-table}`` (None if no table is found)."""
    parser = _HtmlTable()
    parser.feed(html_text)
    rows = parser.header_rows + parser.body_rows
    if not rows:
        return None
    grid = _expand_spans(rows, parser.bold_ids())
    if not parser.body_rows and grid:  # an empty frame: docutils wants a row below the header
        grid.append(["—"] * len(grid[-1]))
    lines = [f"{DIRECTIVE_FENCE}{{list-table}} {translate_refs(caption)}", f":header-rows: {len(parser.header_rows)}"]
    lines += [f":name: {label}", ":class: dataframe", ""]
    for row in grid:
        lines.append(f"* - {row[0]}".rstrip())
        lines.extend(f"  - {cell}".rstrip() for cell in row[1:])
    lines.append(DIRECTIVE_FENCE)
    return "\n".join(lines)


def markdown_table_to_table(markdown: str, caption: str, label: str) -> str | None:
    """A pipe table (e.g. from ``display(Markdown(df.to_markdown()))``) -> a numbered ``{table}``."""
    table = [line for line in markdown.strip().splitlines() if line.strip()]
    if len(table) < 2 or not all(line.lstrip().startswith("|") for line in table):
        return None
    return "\n".join([f"{DIRECTIVE_FENCE}{{table}} {translate_refs(caption)}", f":name: {label}", "", *table, DIRECTIVE_FENCE])


# ============================================================================ notebooks: the cells
DISPLAY_OUTPUTS = ("display_data", "execute_result")


def _add_tags(cell, *tags: str) -> None:
    existing = cell.metadata.setdefault("tags", [])
    existing.extend(tag for tag in tags if tag not in existing)


def _as_text(value) -> str:
    return "".join(value) if isinstance(value, list) else str(value)


def _keep_one_figure(cell, label: str) -> None:
    """myst-nb wraps *every* display output of a figure cell in the figure: keep only the image.

    Text results such as ``<Axes: ...>`` would otherwise become extra, identically named figures.
    """
    kept, images = [], 0
    for output in cell.outputs:
        if output.output_type not in DISPLAY_OUTPUTS:
            kept.append(output)
        elif any(mime in output.get("data", {}) for mime in IMAGE_MIMES):
            images += 1
            if images == 1:
                kept.append(output)
    if images == 0:
        warn(f"cell `{label}` has a figure caption but no image output (was the notebook executed?).")
    elif images > 1:
        warn(f"cell `{label}` shows {images} images; only the first is kept as the figure.")
    cell.outputs = kept


def _new_markdown_cell(source: str, cell_id: str):
    """A Markdown cell with a fixed id (nbformat picks random ones, which would defeat the up-to-date check)."""
    cell = nbformat.v4.new_markdown_cell(source)
    cell.id = re.sub(r"[^A-Za-z0-9_-]", "-", cell_id)[:64]
    return cell


def _table_cell(cell, label: str, caption: str):
    """Move the cell's table output into a new Markdown cell holding a numbered MyST table."""
    for index, output in enumerate(cell.outputs):
        if output.output_type not in DISPLAY_OUTPUTS:
            continue
        data = output.get("data", {})
        table = None
        if "<table" in _as_text(data.get("text/html", "")):
            table = html_table_to_list_table(_as_text(data["text/html"]), caption, label)
        elif "text/markdown" in data:
            table = markdown_table_to_table(_as_text(data["text/markdown"]), caption, label)
        if table:
            del cell.outputs[index]
            return _new_markdown_cell(table, f"{label}-table")
    warn(f"cell `{label}` has a table caption but no HTML or Markdown table output; it is not numbered.")
    return _new_markdown_cell(f"({label})=\n**Table:** {translate_refs(caption)}", f"{label}-table")


def translate_code_cell(cell) -> list:
    """One code cell with Quarto options -> the cell(s) Jupyter Book should see."""
    options, code = split_cell_options(cell.source)
    if not options:
        return [cell]
    cell = copy.deepcopy(cell)
    cell.source = code
    if options.get("include") is False:
        _add_tags(cell, "remove-cell")
    if options.get("echo") is False:
        _add_tags(cell, "remove-input")
    if options.get("code-fold") in (True, "true", "show"):
        _add_tags(cell, "hide-input")
    if options.get("output") is False:
        _add_tags(cell, "remove-output")
    if options.get("warning") is False:
        _add_tags(cell, "remove-stderr")

    label = str(options.get("label") or "")
    extra = []
    if label.startswith("fig-") or options.get("fig-cap"):
        figure = {"caption": translate_refs(str(options.get("fig-cap") or ""))}
        if label.startswith("fig-"):
            figure["name"] = label
        cell.metadata.setdefault("mystnb", {})["figure"] = figure
        _keep_one_figure(cell, label or "(unlabelled)")
    elif label.startswith("tbl-"):
        extra.append(_table_cell(cell, label, str(options.get("tbl-cap") or "")))
    return [cell, *extra]


def literal_assignments(source: str) -> dict | None:
    """``{name: value}`` of a cell made only of ``name = literal`` lines (a papermill parameters
    cell); None when the cell holds anything else, or a value that is not a literal."""
    import ast

    try:
        body = ast.parse(source).body
    except SyntaxError:
        return None
    values = {}
    for node in body:
        if not isinstance(node, ast.Assign):
            return None
        if len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                values[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                return None
    return values


def _tags(cell) -> list:
    return list(cell.get("metadata", {}).get("tags", []))


HIDDEN = "#| include: false\n"


def hide_redundant_injected_parameters(nb) -> bool:
    """Give papermill's injected cell the cell option ``include: false`` when it only repeats the
    chapter's defaults (``redundant_injected_parameters``), so Quarto and the Jupyter Book build both
    leave it out of the page; returns whether it did. The runner calls this on every executed chapter."""
    if not redundant_injected_parameters(nb):
        return False
    injected = next(c for c in nb.cells if c.cell_type == "code" and "injected-parameters" in _tags(c))
    if not injected.source.startswith(HIDDEN):
        injected.source = HIDDEN + injected.source
    return True


def redundant_injected_parameters(nb) -> bool:
    """True when papermill's injected ``# Parameters`` cell only repeats defaults of the chapter's
    ``parameters`` cell (``profile = "mini"`` on a default run): the page then need not show it. A
    run with other values keeps it, so the reader sees what the chapter really ran with."""
    cells = nb.cells
    defaults = next((c for c in cells if c.cell_type == "code" and "parameters" in _tags(c)), None)
    injected = next((c for c in cells if c.cell_type == "code" and "injected-parameters" in _tags(c)), None)
    if defaults is None or injected is None:
        return False
    given, default = literal_assignments(injected.source), literal_assignments(defaults.source)
    return given is not None and default is not None and all(k in default and default[k] == v for k, v in given.items())


def translate_notebook(nb):
    """A Quarto-flavoured executed notebook -> the notebook Jupyter Book renders (outputs kept)."""
    notice = PENDING_NOTICE if not is_executed(nb) else STALE_NOTICE if is_stale(nb) else None  # before any edit
    nb = copy.deepcopy(nb)
    cells, title = [], None
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "raw" and index == 0 and cell.source.lstrip().startswith("---"):
            meta, _ = split_front_matter(cell.source.lstrip())  # Quarto's front matter cell
            title = meta.get("title")
            continue
        if cell.cell_type == "markdown":
            cell.source = translate_markdown(cell.source)
            cells.append(cell)
        elif cell.cell_type == "code":
            translated = translate_code_cell(cell)
            for output in (o for c in translated if c.cell_type == "code" for o in c.get("outputs", [])):
                # Markdown a cell displays (a computed callout, a sentence) is Quarto Markdown too.
                if "text/markdown" in output.get("data", {}):
                    output["data"]["text/markdown"] = translate_markdown(_as_text(output["data"]["text/markdown"]))
            cells.extend(translated)
        else:
            cells.append(cell)
    has_title = any(c.cell_type == "markdown" and re.search(r"^# ", c.source, re.M) for c in cells)
    if title and not has_title:
        cells.insert(0, _new_markdown_cell(f"# {title}", "quarto-title"))
    if notice:
        first_heading = next((i for i, c in enumerate(cells) if c.cell_type == "markdown"), -1)
        cells.insert(first_heading + 1, _new_markdown_cell(notice, "pending-notice"))
    nb.cells = cells
    return nb


PENDING_MARKER = "This chapter has not been executed yet"
PENDING_NOTICE = f""":::{{warning}} Not executed yet
{PENDING_MARKER}: its code is shown, but its tables and figures appear only after the notebooks
run (`make book`, or `python tools/run_notebooks.py --profile mini`). Until then its figure and
table references have nothing to point to.
:::"""


STALE_MARKER = "The code of this chapter changed after its outputs were computed"
STALE_NOTICE = f""":::{{warning}} Outputs of an earlier version
{STALE_MARKER}: the tables, figures and numbers below come from an earlier version of the chapter or
of the library, and some may be missing. Rerun the notebooks (`make book`) to bring them up to date.
:::"""


def is_executed(nb) -> bool:
    """True when any code cell of the notebook has been run (papermill leaves execution counts)."""
    return any(c.cell_type == "code" and (c.get("outputs") or c.get("execution_count")) for c in nb.cells)


def source_digest(nb) -> str:
    """The notebook's code and Markdown; outputs, metadata and papermill's injected cell do not count."""
    cells = [[cell.cell_type, cell.source] for cell in nb.cells
             if "injected-parameters" not in cell.get("metadata", {}).get("tags", [])]
    return hashlib.sha256(json.dumps(cells).encode("utf-8")).hexdigest()


def stamp_executed(nb, core: str) -> None:
    """Record in the notebook's metadata which chapter source and which library it was executed with."""
    nb.metadata.setdefault("unidetox", {})["executed_with"] = {"source": source_digest(nb), "core": core}


def is_stale(nb, core: str | None = None) -> bool:
    """An executed notebook whose outputs were not computed by its present source (and, given ``core``,
    library): edited since it ran, or run before runs were stamped."""
    if not is_executed(nb):
        return False
    stamp = nb.metadata.get("unidetox", {}).get("executed_with")
    if not stamp:
        return True
    return stamp.get("source") != source_digest(nb) or (core is not None and stamp.get("core") != core)


def is_pending_page(page_html: str) -> bool:
    """A rendered chapter whose outputs are missing or out of date (it carries the pending or the stale
    notice): its references may have nothing to point to."""
    return PENDING_MARKER in page_html or STALE_MARKER in page_html


# ========================================================================= the Jupyter Book project
def numfig_format(config: dict) -> dict:
    crossref = config.get("crossref", {}) or {}
    return {
        "figure": f"{crossref.get('fig-prefix', 'Figure')} %s",
        "table": f"{crossref.get('tbl-prefix', 'Table')} %s",
        "code-block": "Listing %s",
        "section": f"{crossref.get('sec-prefix', 'Section')} %s",
    }


def jupyter_book_config(config: dict, mathjax: str | None) -> dict:
    """``_config.yml`` for Jupyter Book from ``_quarto.yml``: title, author, numbering, offline math."""
    book = config["book"]
    author = book.get("author", "")
    if isinstance(author, list):
        author = ", ".join(a.get("name", "") if isinstance(a, dict) else str(a) for a in author)
    sphinx_config = {
        "numfig_format": numfig_format(config),
        "numfig_secnum_depth": 1,  # "Figure 3.2", as Quarto numbers figures in a book
        "nb_merge_streams": True,
        "html_show_copyright": False,
        "html_show_sphinx": False,
        "suppress_warnings": ["mystnb.unknown_mime_type"],
        "html_static_path": [VENDOR_DIR],
        "html_css_files": [COMPAT_CSS],
        # Markdown that a cell displays is translated like the pages (callouts, references), so
        # myst-nb must read it as MyST, not as its default CommonMark.
        "nb_render_markdown_format": "myst",
    }
    if mathjax:
        sphinx_config["mathjax_path"] = mathjax
    if mathjax and "MathJax.js" in mathjax:  # MathJax 2: MyST marks its math with classes MathJax 2 must be told of
        sphinx_config["mathjax2_config"] = {
            "tex2jax": {"processClass": "tex2jax_process|mathjax_process|math|output_area"}
        }
    return {
        "title": book.get("title", "Book"),
        "author": author,
        "copyright": str(book.get("date", "")),
        "only_build_toc_files": True,
        "exclude_patterns": ["_build", VENDOR_DIR, "**.ipynb_checkpoints"],
        "execute": {"execute_notebooks": "off"},  # notebooks are run beforehand by papermill
        "parse": {
            "myst_enable_extensions": ["colon_fence", "dollarmath", "amsmath", "deflist", "linkify"],
            "myst_dmath_double_inline": True,
        },
        "html": {
            "use_multitoc_numbering": True,
            "home_page_in_navbar": True,
            "use_repository_button": False,
            "use_issues_button": False,
            "use_edit_page_button": False,
            "extra_footer": "Rendered offline by Jupyter Book from the book's <code>_quarto.yml</code>.",
        },
        "launch_buttons": {"thebe": False},
        "sphinx": {"config": sphinx_config},
    }


def compat_css(config: dict) -> str:
    """Small CSS so the offline book looks like the Quarto one where Quarto options say so."""
    html_format = (config.get("format", {}) or {}).get("html", {}) or {}
    rules = ["/* generated by tools/build_book.py from _quarto.yml */"]
    if html_format.get("code-overflow") == "wrap":
        rules.append("div.highlight pre, div.output pre { white-space: pre-wrap; word-break: break-word; }")
    return "\n".join(rules) + "\n"


def _docname(path: str) -> str:
    return str(Path(path).with_suffix("").as_posix())


def jupyter_book_toc(parts: list[Part]) -> dict:
    """``_toc.yml``: the first chapter is the (unnumbered) root, the rest are numbered chapters."""
    root = parts[0].chapters[0]
    rest = [Part(parts[0].caption, parts[0].chapters[1:])] + parts[1:]
    rest = [part for part in rest if part.chapters]
    toc = {"format": "jb-book", "root": _docname(root), "defaults": {"numbered": True}}
    if all(part.caption is None for part in rest):
        toc["chapters"] = [{"file": _docname(p)} for part in rest for p in part.chapters]
    else:
        toc["parts"] = []
        for part in rest:
            entry = {"caption": part.caption} if part.caption else {}
            entry["chapters"] = [{"file": _docname(p)} for p in part.chapters]
            toc["parts"].append(entry)
    return toc


def write_if_changed(path: Path, content: str | bytes) -> bool:
    """Write only when the content differs, so Sphinx (which compares times) rebuilds only what changed."""
    data = content.encode("utf-8") if isinstance(content, str) else content
    if path.exists() and path.read_bytes() == data:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return True


def local_images(text: str) -> list[str]:
    """Relative image paths referenced by Markdown (``![..](x.png)`` and ``{figure} x.png``)."""
    found = MARKDOWN_IMAGE.findall(text) + re.findall(r"^```\{figure\}\s+(\S+)", text, re.MULTILINE)
    return [p for p in found if not re.match(r"^[a-z]+:", p) and not p.startswith("/")]


def translate_chapter(root: Path, source: str, target_dir: Path) -> list[Path]:
    """Write the Jupyter Book version of one chapter (and the images it references); return paths written."""
    path = root / source
    written = []
    if path.suffix == ".ipynb":
        nb = translate_notebook(nbformat.read(path, as_version=4))
        target = target_dir / source
        write_if_changed(target, nbformat.writes(nb) + "\n")
        markdown = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    elif path.suffix in (".qmd", ".md"):
        markdown = translate_qmd(path.read_text(encoding="utf-8"), folder=path.parent)
        target = (target_dir / source).with_suffix(".md")
        write_if_changed(target, markdown)
    else:
        raise SystemExit(f"Chapter {source}: only .qmd, .md and .ipynb chapters can be rendered.")
    written.append(target)
    for image in local_images(markdown):
        image_source = (path.parent / image).resolve()
        image_target = (target.parent / image).resolve()
        if image_source.is_file() and image_target.is_relative_to(target_dir.resolve()):
            write_if_changed(image_target, image_source.read_bytes())
            written.append(image_target)
        else:
            warn(f"{source} shows image {image}, which was not found next to it.")
    return written


# =============================================================================== offline MathJax
def find_or_install_mathjax() -> Path | None:
    """The ``es5`` folder of a local MathJax 3: installed by npm into ``cache/mathjax`` once.

    Order: ``UNIDETOX_MATHJAX_DIR`` (an ``es5`` folder a reader already has), the npm cache, a
    fresh ``npm install mathjax@3``. Returns None when none works; the caller then falls back.
    """
    given = os.environ.get("UNIDETOX_MATHJAX_DIR")
    if given and (Path(given) / MATHJAX_SCRIPT).exists():
        return Path(given)
    prefix = ROOT / MATHJAX_CACHE  # the repository's cache serves every book it renders
    es5 = prefix / "node_modules" / "mathjax" / "es5"
    if (es5 / MATHJAX_SCRIPT).exists():
        return es5
    npm = shutil.which("npm")
    if not npm:
        return None
    print(f"Installing MathJax {MATHJAX_VERSION} from the npm registry into {prefix} (once) ...")
    prefix.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [npm, "install", "--prefix", str(prefix), "--no-audit", "--no-fund", "--no-save", f"mathjax@{MATHJAX_VERSION}"],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0 or not (es5 / MATHJAX_SCRIPT).exists():
        warn(f"npm could not install mathjax@{MATHJAX_VERSION}: {result.stderr.strip()[-500:]}")
        return None
    return es5


DEBIAN_MATHJAX2 = Path("/usr/share/javascript/mathjax")  # apt-get install libjs-mathjax
# What MathJax 2 needs for TeX input and SVG output (the package holds 40 MB of other fonts and builds).
MATHJAX2_PARTS = (
    "MathJax.js", "config/TeX-AMS-MML_SVG.js", "jax/input/TeX", "jax/input/MathML", "jax/element",
    "jax/output/SVG/jax.js", "jax/output/SVG/config.js", "jax/output/SVG/autoload", "jax/output/SVG/fonts/TeX",
    "extensions",
)


def vendor_mathjax(source_dir: Path, use_npm: bool = True) -> str | None:
    """Copy the parts of MathJax the book needs into the Jupyter Book project; return ``mathjax_path``.

    MathJax 3 from npm is preferred. Without npm, Debian's ``libjs-mathjax`` (MathJax 2) still renders
    offline. With neither, Sphinx's default (a CDN) is kept and math needs a network: warned loudly.
    """
    vendor = source_dir / VENDOR_DIR / "mathjax"
    es5 = find_or_install_mathjax() if use_npm else None
    if es5:
        for part in MATHJAX_PARTS:
            _copy_once(es5 / part, vendor / part)
        return f"mathjax/{MATHJAX_SCRIPT}"
    if (DEBIAN_MATHJAX2 / "MathJax.js").exists():
        warn("no MathJax 3 (npm); using Debian's MathJax 2 from libjs-mathjax.")
        for part in MATHJAX2_PARTS:
            _copy_once(DEBIAN_MATHJAX2 / part, vendor / part)
        return "mathjax/MathJax.js?config=TeX-AMS-MML_SVG"
    warn("no local MathJax (install npm, or `apt-get install libjs-mathjax`): math will load from a CDN.")
    return None


def _copy_once(source: Path, target: Path) -> None:
    if target.exists() or not source.exists():
        return
    if source.is_dir():
        shutil.copytree(source, target)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)


# ==================================================================================== building
def tree_digest(folder: Path) -> str:
    """A digest of every file's path and content under ``folder`` (the stamp file excluded)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != STAMP_FILE):
        digest.update(path.relative_to(folder).as_posix().encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def remove_stale_files(source_dir: Path, keep: set[Path]) -> None:
    """Delete generated pages whose chapter left the book (Sphinx would otherwise keep old pages)."""
    for path in sorted(source_dir.rglob("*"), reverse=True):  # files before the folders holding them
        if path.name == STAMP_FILE or VENDOR_DIR in path.relative_to(source_dir).parts:
            continue
        if path.is_file() and path.resolve() not in keep:
            path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()


def prepare_jupyter_book(root: Path) -> Path:
    """Translate the Quarto project into ``_build/jb`` (only changed files are rewritten)."""
    config = load_quarto_config(root)
    for path in unlisted_notebooks(root, config):
        warn(f"{path} is not listed in _quarto.yml `book: chapters:`, so it is not in the book.")
    parts = existing_parts(root, config)
    if not parts:
        raise SystemExit("None of the chapters listed in _quarto.yml exists.")
    source_dir = root / BUILD_DIR / JB_SOURCE
    written: set[Path] = set()
    for part in parts:
        for chapter in part.chapters:
            written.update(p.resolve() for p in translate_chapter(root, chapter, source_dir))
    mathjax = vendor_mathjax(source_dir)
    write_if_changed(source_dir / VENDOR_DIR / COMPAT_CSS, compat_css(config))
    for name, content in (
        ("_config.yml", jupyter_book_config(config, mathjax)),
        ("_toc.yml", jupyter_book_toc(parts)),
    ):
        target = source_dir / name
        write_if_changed(target, yaml.safe_dump(content, sort_keys=False, allow_unicode=True))
        written.add(target.resolve())
    remove_stale_files(source_dir, written)
    return source_dir


def run_jupyter_book(root: Path, source_dir: Path, fresh: bool = False) -> None:
    """``jupyter-book build`` of the translated project; HTML goes to ``<root>/_build/html``."""
    command = [
        sys.executable, "-c", "from jupyter_book.cli.main import main; main()",
        "build", str(source_dir), "--path-output", str(root), "--builder", "html", "--keep-going",
    ]
    if fresh:
        command.append("--all")
    result = subprocess.run(command, capture_output=True, text=True, cwd=root)
    log = re.sub(r"\x1b\[[0-9;]*m", "", result.stdout + result.stderr)  # Sphinx colours its warnings
    for line in log.splitlines():
        if "WARNING" in line or "ERROR" in line:
            print(line.replace(str(source_dir) + os.sep, ""), file=sys.stderr)
    if result.returncode != 0:
        print(log[-5000:], file=sys.stderr)
        raise SystemExit(f"jupyter-book build failed (exit {result.returncode}).")


def raw_syntax_leftovers(html_dir: Path) -> list[str]:
    """``page: pattern`` for every page whose visible text still holds Quarto or MyST syntax."""
    found = []
    for page in sorted(html_dir.rglob("*.html")):
        if page.relative_to(html_dir).parts[0] in ("_static", "_sources", "_images"):
            continue
        text = visible_text(page.read_text(encoding="utf-8", errors="replace"))
        found.extend(f"{page.relative_to(html_dir)}: {p}" for p in RAW_PATTERNS if p in text)
    return found


UNRESOLVED_REFERENCE = re.compile(r'class="xref (?:std std-(?:num)?ref|eq)\b[^>]*>(?:<span class="pre">)?([^<]*)')


def unresolved_references(page_html: str) -> list[str]:
    """Labels that Sphinx could not link (shown as bare code), e.g. a figure of a notebook never run."""
    return UNRESOLVED_REFERENCE.findall(page_html)


def visible_text(page_html: str) -> str:
    """The text a reader sees: scripts, styles and tags removed, entities decoded."""
    text = re.sub(r"<(script|style)\b.*?</\1>", " ", page_html, flags=re.DOTALL | re.IGNORECASE)
    return html.unescape(re.sub(r"<[^>]+>", " ", text))


def build_with_jupyter_book(root: Path, force: bool = False) -> Path:
    source_dir = prepare_jupyter_book(root)
    html_dir = root / BUILD_DIR / HTML_DIR
    stamp_path = source_dir / STAMP_FILE
    digest = tree_digest(source_dir)
    if not force and (html_dir / "index.html").exists() and stamp_path.exists() and stamp_path.read_text() == digest:
        print(f"Book is up to date: {html_dir / 'index.html'}")
        return html_dir
    stamp_path.unlink(missing_ok=True)  # an interrupted build must not look finished
    run_jupyter_book(root, source_dir, fresh=force)
    stamp_path.write_text(digest)
    for leftover in raw_syntax_leftovers(html_dir):
        warn(f"raw syntax shown to readers in {leftover}")
    for page in sorted(html_dir.glob("**/*.html")):
        html = page.read_text(encoding="utf-8", errors="replace")
        labels = [] if is_pending_page(html) else unresolved_references(html)
        if labels:
            warn(f"{page.relative_to(html_dir)}: references to {', '.join(labels)} do not resolve "
                 "(is the notebook executed? python tools/run_notebooks.py)")
    print(f"Book written to {html_dir / 'index.html'}")
    return html_dir


def quarto_math_url(root: Path, chapter: str) -> str | None:
    """The MathJax address Quarto writes into ``chapter``'s page: the ``html-math-method`` url of the
    chapter's folder's ``_metadata.yml`` if it sets one, else ``_quarto.yml``'s (Quarto's rule for
    directory metadata: the nearer file wins)."""
    def url(config: dict) -> str | None:
        method = config.get("format", {}).get("html", {}).get("html-math-method")
        return method.get("url") if isinstance(method, dict) else None

    folder_metadata = (root / chapter).parent / "_metadata.yml"
    if folder_metadata.exists() and folder_metadata.parent != root:
        found = url(yaml.safe_load(folder_metadata.read_text()) or {})
        if found:
            return found
    return url(load_quarto_config(root))


def build_with_quarto(root: Path, quarto: str) -> Path:
    # _quarto.yml points every page at this copy of MathJax (and copies it into the book).
    if find_or_install_mathjax() != root / MATHJAX_CACHE / "node_modules" / "mathjax" / "es5":
        warn(f"no MathJax under {MATHJAX_CACHE} (npm install mathjax@{MATHJAX_VERSION} failed): "
             "Quarto's pages will show math as TeX source.")
    subprocess.run([quarto, "render", "--to", "html"], cwd=root, check=True)
    output_dir = load_quarto_config(root)["project"].get("output-dir", "_book")
    return root / output_dir


DEFAULT_PROFILE = "mini"  # the profile whose executed chapters are the notebooks themselves
PROFILE_BUILDS = "profiles"  # under BUILD_DIR: one staged project per other profile


def stage_profile(root: Path, profile: str) -> Path:
    """The project to render for ``profile``: ``root`` itself for the default profile, whose executed
    chapters are ``notebooks/``; for any other, a copy of the book's sources in
    ``_build/profiles/<profile>`` whose notebooks are ``results/<profile>/notebooks`` (where
    ``tools/run_notebooks.py`` writes every other profile's chapters), with a note on the preface
    saying which profile the reader is looking at."""
    if profile == DEFAULT_PROFILE:
        return root
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", profile):
        raise SystemExit(f"--profile {profile!r}: use a profile name such as 'paper' or 'tiny'.")
    chapters = chapter_paths(load_quarto_config(root))
    executed = root / "results" / profile / "notebooks"
    notebooks = [c for c in chapters if c.endswith(".ipynb")]
    missing = [Path(c).name for c in notebooks if not (executed / Path(c).name).exists()]
    if missing:
        raise SystemExit(f"--profile {profile}: {len(missing)} of {len(notebooks)} chapters were not executed on this "
                         f"profile (none in {executed.relative_to(root)}: {', '.join(missing[:3])}"
                         f"{', ...' if len(missing) > 3 else ''}). Run `make notebooks PROFILE={profile}` first.")
    stage = root / BUILD_DIR / PROFILE_BUILDS / profile
    # The pages, and what sits beside them in their folders (includes, _metadata.yml): all but notebooks.
    sources = {root / "_quarto.yml", *(root / c for c in chapters if not c.endswith(".ipynb"))}
    for folder in {(root / c).parent for c in chapters} - {root}:
        sources.update(f for f in folder.iterdir() if f.is_file() and f.suffix != ".ipynb")
    for source in sorted(sources):
        write_if_changed(stage / source.relative_to(root), source.read_bytes())
    for chapter in notebooks:
        write_if_changed(stage / chapter, (executed / Path(chapter).name).read_bytes())
    front, _, rest = (root / chapters[0]).read_text(encoding="utf-8").partition("\n")
    note = (f"\n::: {{.callout-important}}\n## The {profile} profile\n\nThis rendering shows the chapters as executed "
            f"on the **{profile}** profile (`results/{profile}/notebooks`). The book's committed chapters, and every "
            f"number its prose quotes, are the {DEFAULT_PROFILE} profile's.\n:::\n")
    write_if_changed(stage / chapters[0], front + "\n" + note + rest)
    cache = stage / "cache"  # the local MathJax lives in the project's cache (_quarto.yml `resources`)
    if not cache.exists():
        (root / "cache").mkdir(exist_ok=True)
        cache.symlink_to(root / "cache", target_is_directory=True)
    return stage


def build_book(root: Path = ROOT, engine: str = "auto", force: bool = False) -> Path:
    """Render the book at ``root``; return the HTML folder."""
    quarto = shutil.which("quarto")
    if engine == "quarto" and not quarto:
        raise SystemExit("--engine quarto: no `quarto` binary on PATH (https://quarto.org/docs/get-started/).")
    if quarto and engine in ("auto", "quarto"):
        return build_with_quarto(root, quarto)
    return build_with_jupyter_book(root, force=force)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="the project folder holding _quarto.yml")
    parser.add_argument("--engine", choices=("auto", "quarto", "jupyter-book"), default="auto")
    parser.add_argument("--force", action="store_true", help="rebuild every page even if nothing changed")
    parser.add_argument("--profile", default=DEFAULT_PROFILE,
                        help=f"whose executed chapters to render (default {DEFAULT_PROFILE}: notebooks/; another "
                             "profile: results/<profile>/notebooks, into _build/profiles/<profile>/_build/html)")
    args = parser.parse_args(argv)
    build_book(stage_profile(args.root.resolve(), args.profile), engine=args.engine, force=args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
