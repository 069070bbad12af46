"""What each chapter shows: its tables, figures and computed sentences, built from results and library calls.

One module per chapter topic (``method``, ``data``, ``world``, ``toxic``, ``distillation``,
``tuning``, ``results``, ``sensitivity``, ``texts``, ``alignment``, ``scorecard``); the helpers
below are shared by them.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def shown_path(path) -> str:
    """``path`` as the book may print it: relative to the repository root, or only its file name when
    it lies elsewhere -- an absolute path names one machine and means nothing to a reader."""
    path = Path(path).resolve()
    return path.relative_to(ROOT.resolve()).as_posix() if path.is_relative_to(ROOT.resolve()) else path.name


def without_root(text: str) -> str:
    """``text`` (an error message, say) with the repository root dropped from the paths it names."""
    return str(text).replace(f"{ROOT}/", "").replace(str(ROOT), ".")


def short_name(model: str) -> str:
    """A model's name without the ``world:`` prefix and the hub organisation ("world:opt-bpe" ->
    "opt-bpe", "facebook/opt-6.7b" -> "opt-6.7b")."""
    return model.split("world:")[-1].split("/")[-1]
