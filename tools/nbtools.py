"""Write chapter notebooks from plain Python lists of cells (keeps notebook sources reviewable).

    from nbtools import md, code, write_notebook
    write_notebook("notebooks/01_data.ipynb", [md("# Data"), code("x = 1", parameters=True)])
"""

from __future__ import annotations

import textwrap

import nbformat


def md(text: str):
    return nbformat.v4.new_markdown_cell(textwrap.dedent(text).strip("\n"))


def code(text: str, parameters: bool = False):
    cell = nbformat.v4.new_code_cell(textwrap.dedent(text).strip("\n"))
    if parameters:
        cell.metadata["tags"] = ["parameters"]
    return cell


def write_notebook(path: str, cells: list) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = cells
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    nbformat.write(nb, path)
