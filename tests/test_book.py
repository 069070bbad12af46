"""The book pipeline: Quarto -> Jupyter Book translation, papermill runs with caching, a full build.

The translation tests work on small strings and notebooks. The end-to-end test executes the fixture
book in ``tests/fixtures/book`` (a page plus a notebook with a seaborn figure and a pandas table,
both labelled and cross-referenced) with ``tools/run_notebooks.py``, renders it with
``tools/build_book.py`` and reads the HTML. The caching tests use the two trivial notebooks in
``tests/fixtures/chain``.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
sys.path.insert(0, str(ROOT / "tools"))

import build_book  # noqa: E402
import run_notebooks  # noqa: E402


# ============================================================================ Markdown translation
def test_references_become_numbered_roles():
    text = "See @fig-a, @tbl-b, @eq-c and @sec-d; [-@fig-a] and [@tbl-b]."
    assert build_book.translate_refs(text) == (
        "See {numref}`fig-a`, {numref}`tbl-b`, Equation {eq}`eq-c` and {ref}`sec-d`; "
        "{numref}`%s <fig-a>` and {numref}`tbl-b`."
    )


def test_references_leave_code_emails_and_citations_alone():
    assert build_book.translate_refs("`@fig-a` stays") == "`@fig-a` stays"
    assert build_book.translate_refs("mail me@fig-host.org") == "mail me@fig-host.org"
    assert build_book.translate_refs("as @smith2020 said") == "as @smith2020 said"
    # A label ends before trailing punctuation, and Sphinx targets are lower case.
    assert build_book.translate_refs("(@Fig-Big-One).") == "({numref}`fig-big-one`)."


def test_heading_ids_become_labels_and_classes_are_dropped():
    out = build_book.translate_markdown("# Preface {.unnumbered #sec-preface}\n\n## Data {#sec-data}")
    assert out == "(sec-preface)=\n# Preface\n\n(sec-data)=\n## Data"


def test_labelled_equation_becomes_math_directive():
    out = build_book.translate_markdown("Before\n\n$$\na = b\n$$ {#eq-ab}\n\nAfter @eq-ab")
    assert "```{math}\n:label: eq-ab\na = b\n```" in out
    assert "{#" not in out and out.endswith("After Equation {eq}`eq-ab`")
    one_line = build_book.translate_markdown("$$ x^2 $$ {#eq-sq}")
    assert one_line == "```{math}\n:label: eq-sq\nx^2\n```"
    unlabelled = "$$\nc = d\n$$"
    assert build_book.translate_markdown(unlabelled) == unlabelled  # dollarmath renders it as is


@pytest.mark.parametrize("kind", build_book.CALLOUT_KINDS)
def test_callouts_become_admonitions(kind):
    out = build_book.translate_markdown(f"::: {{.callout-{kind}}}\nBody @fig-x\n:::")
    assert out == f":::{{{kind}}}\n\nBody {{numref}}`fig-x`\n:::"


def test_callout_titles_from_attribute_or_heading_and_collapse():
    titled = build_book.translate_markdown('::: {.callout-warning title="Content warning"}\nText\n:::')
    assert titled.startswith(":::{admonition} Content warning\n:class: warning\n")
    from_heading = build_book.translate_markdown("::: {.callout-tip collapse=\"true\"}\n## Read me\nText\n:::")
    assert from_heading.splitlines()[:2] == [":::{admonition} Read me", ":class: tip dropdown"]
    assert "## Read me" not in from_heading


def test_nested_divs_get_longer_outer_fences_and_plain_divs_are_unwrapped():
    text = "::::: {.callout-note}\nOuter\n::: {.column-margin}\nmargin\n:::\n::: {.callout-tip}\nInner\n:::\n:::::"
    out = build_book.translate_markdown(text)
    assert out.splitlines()[0] == "::::{note}"  # outer: one colon more than the inner admonition
    assert ":::{tip}" in out and "column-margin" not in out and "margin" in out
    assert out.splitlines()[-1] == "::::"


def test_myst_directives_and_braces_in_headings_are_kept():
    assert build_book.translate_markdown(":::{note}\nAlready MyST\n:::") == ":::{note}\nAlready MyST\n:::"
    assert build_book.translate_markdown("## The set {a, b}") == "## The set {a, b}"


def test_code_blocks_are_left_alone_and_quarto_cells_become_plain_code():
    text = "```python\n# @fig-a {#x}\n```\n\n```{python}\n#| echo: true\nprint(1)\n```\n\n```{python}\n#| echo: false\nsecret()\n```"
    out = build_book.translate_markdown(text)
    assert "```python\n# @fig-a {#x}\n```" in out  # code shows literally
    assert "```python\nprint(1)\n```" in out and "#|" not in out
    assert "secret" not in out  # echo: false with execution off shows nothing


def test_image_figure_and_pipe_table_captions_number():
    figure = build_book.translate_markdown('![A *plot*](img/a.png){#fig-plot width="60%"}')
    assert figure == "```{figure} img/a.png\n:name: fig-plot\n:width: 60%\n\nA *plot*\n```"
    table = build_book.translate_markdown("| a | b |\n|---|---|\n| 1 | 2 |\n\n: Caption @fig-plot {#tbl-ab}")
    # Tildes, not backticks: a backtick fence's first line may not hold the role's backticks.
    assert table == "~~~{table} Caption {numref}`fig-plot`\n:name: tbl-ab\n\n| a | b |\n|---|---|\n| 1 | 2 |\n~~~"


def test_qmd_front_matter_title_and_includes(tmp_path):
    (tmp_path / "part.qmd").write_text("---\ntitle: ignored\n---\nIncluded @fig-a.\n")
    page = "---\ntitle: My page\n---\n\nIntro\n\n{{< include part.qmd >}}\n"
    out = build_book.translate_qmd(page, folder=tmp_path)
    assert out.startswith("# My page\n\nIntro")
    assert "Included {numref}`fig-a`." in out


# ============================================================================= notebook translation
def _figure_output():
    return new_output("display_data", data={"image/png": "iVBORw0KGgo=", "text/plain": "<Figure>"})


def test_figure_cell_options_become_mystnb_metadata():
    cell = new_code_cell('#| label: fig-x\n#| fig-cap: "A caption, see @tbl-y"\n#| echo: false\nplot()')
    cell.outputs = [
        new_output("execute_result", data={"text/plain": "<Axes: >"}, execution_count=1),
        _figure_output(),
        new_output("stream", name="stdout", text="printed\n"),
    ]
    [out] = build_book.translate_code_cell(cell)
    assert out.source == "plot()"
    assert out.metadata["mystnb"]["figure"] == {"name": "fig-x", "caption": "A caption, see {numref}`tbl-y`"}
    assert "remove-input" in out.metadata["tags"]
    kinds = [o.output_type for o in out.outputs]
    assert kinds == ["display_data", "stream"]  # the `<Axes>` repr would become a second figure
    assert "#|" in cell.source  # the original notebook is not modified


def test_other_cell_options_become_tags():
    cell = new_code_cell("#| output: false\n#| warning: false\n#| code-fold: true\nx = 1")
    [out] = build_book.translate_code_cell(cell)
    assert out.metadata["tags"] == ["hide-input", "remove-output", "remove-stderr"]
    hidden = build_book.translate_code_cell(new_code_cell("#| include: false\nx = 1"))[0]
    assert hidden.metadata["tags"] == ["remove-cell"]
    plain = new_code_cell("x = 1  # no options")
    assert build_book.translate_code_cell(plain) == [plain]


PANDAS_HTML = """<div><style scoped>.dataframe tbody tr th {vertical-align: top;}</style>
<table border="1" class="dataframe"><thead>
<tr style="text-align: right;"><th></th><th colspan="2" halign="left">score</th></tr>
<tr><th>model</th><th>mean</th><th>std_dev</th></tr></thead>
<tbody><tr><th rowspan="2" valign="top">gpt2</th><td>0.5</td><td>0.1</td></tr>
<tr><td>0.4</td><td>0.2</td></tr><tr><th>opt</th><td>&lt;1</td><td>*</td></tr></tbody></table></div>"""


def test_pandas_html_table_becomes_numbered_list_table():
    table = build_book.html_table_to_list_table(PANDAS_HTML, "Scores, see @fig-x", "tbl-scores")
    lines = table.splitlines()
    assert lines[:5] == [
        "~~~{list-table} Scores, see {numref}`fig-x`", ":header-rows: 2", ":name: tbl-scores", ":class: dataframe", "",
    ]
    rows = "\n".join(lines[5:])
    assert "* -\n  - score\n  -\n" in rows  # colspan: the label once, then an empty cell
    assert "* - gpt2\n  - 0.5\n  - 0.1\n* -\n  - 0.4" in rows  # rowspan: the row below is shifted
    assert "  - std\\_dev" in rows and "  - \\<1\n  - \\*" in rows  # Markdown characters are escaped


def test_styler_bold_cells_stay_bold():
    html = """<style type="text/css">#T_ab_row1_col0 { font-weight: bold; }</style>
    <table id="T_ab"><thead><tr><th>x</th></tr></thead><tbody>
    <tr><td id="T_ab_row0_col0">1</td></tr><tr><td id="T_ab_row1_col0">2</td></tr></tbody></table>"""
    table = build_book.html_table_to_list_table(html, "c", "tbl-c")
    assert "* - 1\n* - **2**" in table


def test_table_cell_moves_its_output_into_a_numbered_table_cell():
    cell = new_code_cell('#| label: tbl-scores\n#| tbl-cap: "Scores"\nframe')
    cell.outputs = [
        new_output("stream", name="stdout", text="note\n"),
        new_output("execute_result", data={"text/html": PANDAS_HTML, "text/plain": "frame"}, execution_count=1),
    ]
    code, table = build_book.translate_code_cell(cell)
    assert [o.output_type for o in code.outputs] == ["stream"]
    assert table.cell_type == "markdown" and ":name: tbl-scores" in table.source
    assert table.id == "tbl-scores-table"  # fixed ids keep the translation byte-for-byte stable
    markdown = new_code_cell('#| label: tbl-md\n#| tbl-cap: "From Markdown"\nshow()')
    markdown.outputs = [new_output("display_data", data={"text/markdown": "| a |\n|---|\n| 1 |"})]
    assert build_book.translate_code_cell(markdown)[1].source.startswith("~~~{table} From Markdown\n:name: tbl-md")


def test_notebook_front_matter_becomes_title_and_markdown_is_translated():
    nb = new_notebook(cells=[
        nbformat.v4.new_raw_cell("---\ntitle: Toxic model\n---"),
        new_markdown_cell("Intro {#not-a-heading} and @fig-a"),
        nbformat.v4.new_code_cell("x = 1", execution_count=1),  # executed: no "not executed yet" notice
    ])
    build_book.stamp_executed(nb, core="abc")  # ... and by this source: no "stale" notice
    out = build_book.translate_notebook(nb)
    assert [c.source for c in out.cells[:2]] == ["# Toxic model", "Intro {#not-a-heading} and {numref}`fig-a`"]


# ================================================================================ project files
QUARTO = {
    "project": {"type": "book"},
    "book": {
        "title": "T",
        "author": [{"name": "A"}, "B"],
        "chapters": ["index.qmd", "a.qmd", {"part": "P", "chapters": ["nb/1.ipynb", "nb/2.ipynb"]}, "z.qmd"],
        "appendices": ["app.qmd"],
    },
    "crossref": {"fig-prefix": "Fig."},
}


def test_toc_and_config_from_quarto_yml():
    parts = build_book.book_parts(QUARTO)
    assert build_book.chapter_paths(QUARTO) == ["index.qmd", "a.qmd", "nb/1.ipynb", "nb/2.ipynb", "z.qmd", "app.qmd"]
    toc = build_book.jupyter_book_toc(parts)
    assert toc["root"] == "index" and toc["defaults"] == {"numbered": True}
    assert toc["parts"] == [
        {"chapters": [{"file": "a"}]},
        {"caption": "P", "chapters": [{"file": "nb/1"}, {"file": "nb/2"}]},
        {"chapters": [{"file": "z"}]},
        {"caption": "Appendices", "chapters": [{"file": "app"}]},
    ]
    config = build_book.jupyter_book_config(QUARTO, "mathjax/tex-mml-svg.js")
    assert config["author"] == "A, B" and config["execute"]["execute_notebooks"] == "off"
    assert config["sphinx"]["config"]["numfig_format"]["figure"] == "Fig. %s"
    assert config["sphinx"]["config"]["mathjax_path"] == "mathjax/tex-mml-svg.js"


def test_missing_chapters_are_left_out_with_a_warning(tmp_path, capsys):
    (tmp_path / "index.qmd").write_text("# I\n")
    parts = build_book.existing_parts(tmp_path, QUARTO)
    assert [p.chapters for p in parts] == [["index.qmd"]]
    assert "a.qmd, which does not exist yet" in capsys.readouterr().err


def test_repository_quarto_yml_is_a_book_with_the_planned_chapters():
    config = build_book.load_quarto_config(ROOT)
    chapters = build_book.chapter_paths(config)
    assert chapters[0] == "index.qmd"  # Quarto needs the index beside _quarto.yml; it includes book/_preface.qmd
    # Quarto reads a chapter's title and {.unnumbered} from the chapter's own file, before includes
    assert (ROOT / "index.qmd").read_text().startswith("# Preface {.unnumbered #sec-preface}")
    assert chapters[-4:] == ["notebooks/12_scorecard.ipynb", "book/paper-scale.qmd", "notebooks/13_compute.ipynb",
                             "book/answers.qmd"]
    notebooks = [c for c in chapters if c.endswith(".ipynb")]
    assert notebooks == sorted(notebooks), "notebook chapters run in the order of their numbers"
    assert chapters[1] == "notebooks/00_method.ipynb" and "notebooks/01_data.ipynb" in notebooks
    assert config["execute"]["enabled"] is False
    for chapter in chapters:
        assert (ROOT / chapter).exists(), f"_quarto.yml lists {chapter}, which does not exist"
    assert build_book.unlisted_notebooks(ROOT, config) == []


def test_mathjax_is_vendored_from_a_local_copy_or_falls_back(tmp_path, monkeypatch, capsys):
    es5 = tmp_path / "es5"
    (es5 / "output").mkdir(parents=True)
    (es5 / build_book.MATHJAX_SCRIPT).write_text("// mathjax")
    monkeypatch.setenv("UNIDETOX_MATHJAX_DIR", str(es5))
    assert build_book.vendor_mathjax(tmp_path / "jb") == "mathjax/tex-mml-svg.js"
    assert (tmp_path / "jb/_vendor/mathjax/tex-mml-svg.js").read_text() == "// mathjax"

    debian = tmp_path / "debian"
    debian.mkdir()
    (debian / "MathJax.js").write_text("// v2")
    monkeypatch.setattr(build_book, "DEBIAN_MATHJAX2", debian)
    assert build_book.vendor_mathjax(tmp_path / "jb2", use_npm=False).startswith("mathjax/MathJax.js?config=")
    config = build_book.jupyter_book_config(QUARTO, "mathjax/MathJax.js?config=TeX-AMS-MML_SVG")
    assert "math" in config["sphinx"]["config"]["mathjax2_config"]["tex2jax"]["processClass"]
    monkeypatch.setattr(build_book, "DEBIAN_MATHJAX2", tmp_path / "absent")
    assert build_book.vendor_mathjax(tmp_path / "jb3", use_npm=False) is None
    assert "math will load from a CDN" in capsys.readouterr().err


# ============================================================================ run_notebooks: caching
@pytest.fixture()
def chain(tmp_path) -> Path:
    root = tmp_path / "chain"
    shutil.copytree(FIXTURES / "chain", root)
    return root


def _edit_markdown(path: Path, text: str) -> None:
    nb = nbformat.read(path, as_version=4)
    nb.cells[0].source = text
    nbformat.write(nb, path)


def test_run_notebooks_executes_in_order_then_caches(chain, capsys):
    outcomes = run_notebooks.run_notebooks(chain)
    assert outcomes == [("notebooks/first.ipynb", "executed"), ("notebooks/second.ipynb", "executed")]
    log = capsys.readouterr().out
    assert re.search(r"\[1/2\] notebooks/first.ipynb: executed in [\d.]+ s", log)
    executed = nbformat.read(chain / "notebooks/second.ipynb", as_version=4)  # in place on the mini profile
    assert "second ran with mini" in executed.cells[-1].outputs[0]["text"]
    keys = run_notebooks.load_keys(chain / "results/mini/.notebook_keys.json")
    assert set(keys) == {"notebooks/first.ipynb", "notebooks/second.ipynb"} and keys["notebooks/first.ipynb"]["seconds"] > 0

    assert [o for _, o in run_notebooks.run_notebooks(chain)] == ["cached", "cached"]
    assert "cached (unchanged since" in capsys.readouterr().out

    # Editing the second chapter reruns only it; editing the first also reruns the second, which
    # declares no inputs and so depends on every chapter before it.
    _edit_markdown(chain / "notebooks/second.ipynb", "# Second, edited")
    assert [o for _, o in run_notebooks.run_notebooks(chain)] == ["cached", "executed"]
    _edit_markdown(chain / "notebooks/first.ipynb", "# First, edited")
    assert [o for _, o in run_notebooks.run_notebooks(chain, dry_run=True)] == ["would run", "would run"]
    # New parameters are a new key too.
    assert [o for _, o in run_notebooks.run_notebooks(chain, overrides={"x": 1}, dry_run=True)] == ["would run"] * 2


def test_declared_inputs_enter_the_key(chain):
    path = chain / "notebooks/second.ipynb"
    nb = nbformat.read(path, as_version=4)
    nb.metadata["unidetox"] = {"inputs": ["{results_dir}/numbers.csv"]}
    values = run_notebooks.profile_values("mini", {})
    inputs = run_notebooks.declared_inputs(nb, chain, values)
    assert inputs == [chain / "results/mini/numbers.csv"]

    def key():
        return run_notebooks.notebook_key(nb, {"profile": "mini"}, "core", run_notebooks.files_digest(inputs, chain))

    missing = key()
    inputs[0].parent.mkdir(parents=True)
    inputs[0].write_text("a\n1\n")
    first = key()
    inputs[0].write_text("a\n2\n")
    assert len({missing, first, key()}) == 3
    nb.cells[-1].outputs = [new_output("stream", name="stdout", text="outputs do not count")]
    assert key() == run_notebooks.notebook_key(nb, {"profile": "mini"}, "core", run_notebooks.files_digest(inputs, chain))


def test_other_profiles_write_beside_their_results_and_failures_leave_the_notebook(chain, capsys):
    original = (chain / "notebooks/first.ipynb").read_text()
    outcomes = run_notebooks.run_notebooks(chain, profile="tiny", only=["first"])
    assert outcomes == [("notebooks/first.ipynb", "executed")]
    assert (chain / "notebooks/first.ipynb").read_text() == original  # the committed chapter is untouched
    out = nbformat.read(chain / "results/tiny/notebooks/first.ipynb", as_version=4)
    assert "first ran with tiny" in out.cells[-1].outputs[0]["text"]

    broken = nbformat.read(chain / "notebooks/second.ipynb", as_version=4)
    broken.cells[-1].source = "raise ValueError('boom')"
    nbformat.write(broken, chain / "notebooks/second.ipynb")
    before = (chain / "notebooks/second.ipynb").read_text()
    import papermill

    with pytest.raises(papermill.PapermillExecutionError):
        run_notebooks.run_notebooks(chain, only=["second"])
    assert (chain / "notebooks/second.ipynb").read_text() == before
    assert (chain / "results/mini/failed/second.ipynb").exists()
    assert "notebooks/second.ipynb" not in run_notebooks.load_keys(chain / "results/mini/.notebook_keys.json")


def test_bad_profile_or_parameter_fails_before_running(chain):
    with pytest.raises(SystemExit, match="profile='huge' is unknown"):
        run_notebooks.run_notebooks(chain, profile="huge")
    with pytest.raises(SystemExit, match="distill_alpha"):
        run_notebooks.run_notebooks(chain, overrides={"distill_alpha": "high"})
    with pytest.raises(SystemExit, match="matches no chapter"):
        run_notebooks.run_notebooks(chain, only=["99"])
    assert run_notebooks.parse_overrides([["seeds", "[0, 1]"], ["distill_alpha", "0.05"], ["name", "x"]]) == {
        "seeds": [0, 1], "distill_alpha": 0.05, "name": "x",
    }


# ============================================================================== end to end build
class _Page(HTMLParser):
    """Links, images, element ids and caption numbers of one HTML page."""

    def __init__(self):
        super().__init__()
        self.links, self.images, self.ids = [], [], set()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if attrs.get("id"):
            self.ids.add(attrs["id"])
        if tag == "a" and attrs.get("href"):
            self.links.append(attrs["href"])
        if tag == "img":
            self.images.append(attrs.get("src", ""))


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def _admonition(page: str, kind: str, title: str) -> bool:
    """Whether ``page`` has an admonition of ``kind`` (its classes come in either order) titled ``title``."""
    pattern = rf'<div class="(?=[^"]*\b{kind}\b)(?=[^"]*\badmonition\b)[^"]*">\s*<p class="admonition-title">{title}</p>'
    return re.search(pattern, page) is not None


def test_another_profile_renders_its_own_executed_chapters(tmp_path):
    root = tmp_path / "book"
    shutil.copytree(FIXTURES / "book", root)
    assert build_book.stage_profile(root, "mini") == root
    with pytest.raises(SystemExit, match=r"--profile paper: 1 of 1 chapters were not executed.*make notebooks PROFILE=paper"):
        build_book.stage_profile(root, "paper")
    executed = root / "results" / "paper" / "notebooks"
    executed.mkdir(parents=True)
    notebook = nbformat.read(root / "notebooks" / "results.ipynb", as_version=4)
    notebook.cells.append(new_markdown_cell("PAPER-PROFILE-MARKER"))
    nbformat.write(notebook, executed / "results.ipynb")
    stage = build_book.stage_profile(root, "paper")
    assert stage == root / "_build" / "profiles" / "paper"
    assert "PAPER-PROFILE-MARKER" in (stage / "notebooks" / "results.ipynb").read_text()
    assert "PAPER-PROFILE-MARKER" not in (root / "notebooks" / "results.ipynb").read_text()
    assert (stage / "more" / "extra.qmd").read_bytes() == (root / "more" / "extra.qmd").read_bytes()
    index = (stage / "index.qmd").read_text()
    assert index.startswith("# Introduction {.unnumbered #sec-intro}\n") and "**paper** profile" in index
    assert build_book.quarto_chapter_numbers(stage, build_book.load_quarto_config(stage)) == \
        build_book.quarto_chapter_numbers(root, build_book.load_quarto_config(root))
    with pytest.raises(SystemExit, match="profile name"):
        build_book.stage_profile(root, "../x")


@pytest.fixture(scope="module")
def fixture_book(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("book") / "book"
    shutil.copytree(FIXTURES / "book", root)
    run_notebooks.run_notebooks(root)
    build_book.build_book(root, engine="jupyter-book")
    return root / "_build" / "html"


def test_fixture_book_numbers_figures_tables_and_equations(fixture_book):
    chapter = (fixture_book / "notebooks/results.html").read_text(encoding="utf-8")
    assert re.search(r'<span class="caption-number">Figure 1\.1 </span>', chapter)
    assert re.search(r'<span class="caption-number">Table 1\.1 </span>', chapter)
    assert "Squares by group" in chapter
    # Captions keep their cross-references as links (a table caption sits in a directive's first line).
    assert re.search(r'caption-text">Mean and maximum of y per group, from the points of\s*<a class="reference internal" href="#fig-scatter">', chapter)
    assert 'id="equation-eq-energy"' in chapter
    assert "<strong>81</strong>" in chapter  # the Styler's bold maximum
    assert "output of a cell whose code is hidden" in chapter and "HIDDEN-CODE-MARKER" not in chapter
    assert "REMOVED-OUTPUT-MARKER" not in chapter
    assert _admonition(chapter, "note", "Note")
    index = (fixture_book / "index.html").read_text(encoding="utf-8")
    assert "Figure 1.1" in index and "Table 1.1" in index and "Table 1" in index
    assert re.search(r'caption-text">A Markdown table with a caption that cites Equation\s*<a class="reference internal" href="#equation-eq-line">', index)
    assert _admonition(index, "warning", "Fixture warning") and _admonition(index, "tip", "Tip from a heading")


def test_fixture_book_links_and_images_resolve(fixture_book):
    pages = [fixture_book / "index.html", fixture_book / "notebooks/results.html"]
    expected = {"index.html": {"fig-scatter", "tbl-summary", "tbl-markdown", "equation-eq-line", "sec-results"},
                "results.html": {"fig-scatter", "tbl-summary", "equation-eq-energy", "equation-eq-line", "sec-intro"}}
    for page_path in pages:
        page = _parse(page_path)
        anchors = set()
        for href in page.links:
            if re.match(r"^[a-z]+:", href):
                continue
            target, _, anchor = href.partition("#")
            target_path = (page_path.parent / target).resolve() if target else page_path
            assert target_path.exists(), f"{page_path.name}: broken link {href}"
            if anchor:
                assert anchor in _parse(target_path).ids, f"{page_path.name}: missing anchor {href}"
                anchors.add(anchor)
        assert expected[page_path.name] <= anchors, f"{page_path.name} lacks links to {expected[page_path.name] - anchors}"
        for src in page.images:
            assert (page_path.parent / src).is_file(), f"{page_path.name}: missing image {src}"
    assert _parse(pages[1]).images, "the seaborn figure is missing"


def test_fixture_book_has_no_raw_quarto_syntax_and_offline_math(fixture_book):
    assert build_book.raw_syntax_leftovers(fixture_book) == []
    for page in ("index.html", "notebooks/results.html"):
        assert build_book.unresolved_references((fixture_book / page).read_text(encoding="utf-8")) == []
    broken = '<code class="xref std std-numref docutils literal notranslate"><span class="pre">fig-gone</span></code>'
    assert build_book.unresolved_references(broken) == ["fig-gone"]
    assert (fixture_book / "_static/mathjax/tex-mml-svg.js").is_file()
    scripts = re.findall(r'<script[^>]+src="([^"]+)"', (fixture_book / "index.html").read_text(encoding="utf-8"))
    assert len([s for s in scripts if "mathjax" in s.lower()]) == 1  # one MathJax, not each of its components
    assert not re.search(r'<script[^>]+src="https?://', (fixture_book / "index.html").read_text(encoding="utf-8"))


def test_unchanged_book_is_not_rebuilt(fixture_book, capsys):
    root = fixture_book.parents[1]
    started = time.perf_counter()
    build_book.build_book(root, engine="jupyter-book")
    assert "up to date" in capsys.readouterr().out
    assert time.perf_counter() - started < 10


def test_a_notebook_that_has_not_run_says_so():
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# Chapter {#sec-c}\n\nSee @fig-x."), nbformat.v4.new_code_cell("x = 1")]
    translated = build_book.translate_notebook(nb)
    assert build_book.PENDING_MARKER in translated.cells[1].source
    nb.cells[1].execution_count = 1
    build_book.stamp_executed(nb, core="abc")
    assert all(build_book.PENDING_MARKER not in c.source for c in build_book.translate_notebook(nb).cells)


def test_a_notebook_edited_after_it_ran_says_its_outputs_are_stale():
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# Chapter"), nbformat.v4.new_code_cell("x = 1", execution_count=1)]
    assert build_book.is_stale(nb)  # executed, but by a run that did not stamp it
    build_book.stamp_executed(nb, core="abc")
    assert not build_book.is_stale(nb) and not build_book.is_stale(nb, core="abc")
    assert build_book.is_stale(nb, core="def")  # the library changed since
    assert all(build_book.STALE_MARKER not in c.source for c in build_book.translate_notebook(nb).cells)
    nb.cells[1].source = "x = 2"  # edited after the run
    assert build_book.is_stale(nb)
    translated = build_book.translate_notebook(nb)
    assert build_book.STALE_MARKER in translated.cells[1].source
    assert build_book.is_pending_page(f"<p>{build_book.STALE_MARKER}</p>")


def test_injected_parameters_cell_is_hidden_only_when_it_repeats_the_defaults():
    """papermill's injected cell (``profile = "mini"``) adds nothing on a default run: the runner gives
    it the cell option ``include: false``, which both renderers honour; with other values it stays,
    so the page shows what the chapter ran with."""
    def chapter(injected: str):
        nb = nbformat.v4.new_notebook()
        params = nbformat.v4.new_code_cell('profile = "mini"  # which world\nseeds = None', execution_count=1)
        params.metadata["tags"] = ["parameters"]
        inject = nbformat.v4.new_code_cell(injected, execution_count=2)
        inject.metadata["tags"] = ["injected-parameters"]
        nb.cells = [nbformat.v4.new_markdown_cell("# C"), params, inject, nbformat.v4.new_code_cell("x = 1", execution_count=3)]
        return nb

    default_run = chapter('# Parameters\nprofile = "mini"\n')
    assert build_book.hide_redundant_injected_parameters(default_run)
    assert default_run.cells[2].source == '#| include: false\n# Parameters\nprofile = "mini"\n'
    assert build_book.hide_redundant_injected_parameters(default_run)  # again: the option is not doubled
    assert default_run.cells[2].source.count("include: false") == 1
    same = build_book.translate_notebook(default_run)
    shown = [c for c in same.cells if c.cell_type == "code" and "remove-cell" not in c.metadata.get("tags", [])]
    assert [c.source for c in shown] == ['profile = "mini"  # which world\nseeds = None', "x = 1"]
    for other in ('# Parameters\nprofile = "paper"\n', "# Parameters\nseeds = [0, 1]\n", "# Parameters\nx = f(1)\n"):
        nb = chapter(other)
        assert not build_book.hide_redundant_injected_parameters(nb), other
        kept = build_book.translate_notebook(nb)
        assert not any("remove-cell" in c.metadata.get("tags", []) for c in kept.cells), other
    assert build_book.literal_assignments('a = 1\nb = "x"  # c') == {"a": 1, "b": "x"}
    assert build_book.literal_assignments("a = f()") is None and build_book.literal_assignments("import os") is None


def test_an_empty_frame_still_becomes_a_numbered_table():
    """An empty DataFrame (a record not written yet) renders its header and a row of dashes, so
    references to its label still resolve."""
    import pandas as pd

    table = build_book.html_table_to_list_table(pd.DataFrame(columns=["step", "time"]).to_html(), "cap", "tbl-x")
    assert ":name: tbl-x" in table and ":header-rows: 1" in table
    assert table.splitlines()[-4:-1] == ["* - —", "  - —", "  - —"]


def test_quarto_pages_load_the_local_mathjax_from_every_folder():
    """Quarto writes html-math-method's url into each page as given, so a chapter one folder down needs
    its folder's _metadata.yml to climb back to the copy that _quarto.yml's resources put in the book."""
    config = build_book.load_quarto_config(ROOT)
    es5 = "cache/mathjax/node_modules/mathjax/es5/"
    assert config["project"]["resources"] == [es5]
    assert build_book.MATHJAX_CACHE.as_posix() + "/node_modules/mathjax/es5/" == es5
    for chapter in build_book.chapter_paths(config):
        url = build_book.quarto_math_url(ROOT, chapter)
        page_folder = Path(chapter).parent
        target = os.path.normpath(page_folder / url)
        assert target == es5 + build_book.MATHJAX_SCRIPT, f"{chapter}: {url} resolves to {target}"
    # the render list keeps Quarto away from the Markdown inside npm's package
    assert all(not pattern.startswith("cache") for pattern in config["project"]["render"])


def test_fixture_book_numbers_chapters_as_quarto_does(fixture_book):
    """Quarto's rules (quarto_chapter_numbers) and the Jupyter Book build agree: the unnumbered index
    takes no number, and a chapter in a second part continues the count -- in its heading, its table
    caption and its equation."""
    root = fixture_book.parents[1]
    config = build_book.load_quarto_config(root)
    expected = {"index.qmd": None, "notebooks/results.ipynb": "1", "more/extra.qmd": "2"}
    assert build_book.quarto_chapter_numbers(root, config) == expected
    assert build_book.jupyter_book_chapter_numbers(config) == expected
    for chapter, number in expected.items():
        page = (fixture_book / chapter).with_suffix(".html").read_text(encoding="utf-8")
        heading = re.findall(r"<h1>(.*?)</h1>", page, re.S)[-1]  # the chapter's, after the theme's header
        if number is None:
            assert "section-number" not in heading
            continue
        assert f'<span class="section-number">{number}. </span>' in heading
        for numbered in re.findall(r'caption-number">(?:Figure|Table) ([\w.]+) ', page) + re.findall(r'class="eqno">\(([\w.]+)\)', page):
            assert numbered.startswith(f"{number}."), f"{chapter}: {numbered}"
    extra = (fixture_book / "more/extra.html").read_text(encoding="utf-8")
    assert "Table 2.1" in extra and 'class="eqno">(2.1)' in extra


def test_repository_book_numbers_chapters_as_quarto_does():
    """The book's own _quarto.yml: the numbers Quarto gives its chapters are the Jupyter Book build's
    (no appendices -- Quarto letters them, Jupyter Book cannot -- and only the preface unnumbered)."""
    config = build_book.load_quarto_config(ROOT)
    assert "appendices" not in config["book"], "the Jupyter Book build cannot letter appendices: use a part"
    assert build_book.quarto_chapter_numbers(ROOT, config) == build_book.jupyter_book_chapter_numbers(config)
    assert build_book.quarto_chapter_numbers(ROOT, config)["notebooks/00_method.ipynb"] == "1"


def test_markdown_a_cell_displays_is_translated_like_a_markdown_cell():
    nb = new_notebook(cells=[new_markdown_cell("# T {#sec-t}"), new_code_cell("show()", outputs=[
        new_output("display_data", data={"text/markdown": "::: {.callout-warning}\n## Changed\nSee @sec-t.\n:::"})])])
    out = build_book.translate_notebook(nb)
    code = next(c for c in out.cells if c.cell_type == "code")
    shown = code.outputs[0]["data"]["text/markdown"]
    assert "{.callout-warning}" not in shown and ":class: warning" in shown and "{ref}`sec-t`" in shown, shown


def test_run_times_are_written_in_minutes_and_seconds_without_a_60():
    assert run_notebooks.format_seconds(12.34) == "12.3 s"
    assert run_notebooks.format_seconds(1079.6) == "18 min 00 s"
    assert run_notebooks.format_seconds(61.2) == "1 min 01 s"


def test_executed_notebooks_record_paths_relative_to_the_repository(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.metadata["papermill"] = {"input_path": "/some/machine/notebooks/a.ipynb",
                                "output_path": "/some/machine/notebooks/.a.ipynb.tmp/a.ipynb"}
    run_notebooks.record_paths(nb, ROOT / "notebooks/a.ipynb", tmp_path / "elsewhere" / "a.ipynb")
    assert nb.metadata["papermill"] == {"input_path": "notebooks/a.ipynb", "output_path": "a.ipynb"}
