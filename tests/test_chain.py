"""The whole chain of chapters on the tiny profile: every notebook runs, in book order, and writes
the tables the next chapters read (the book issue asks for this in CI, within five minutes)."""

import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

from run_notebooks import chapter_notebooks  # noqa: E402

EXPECTED_TABLES = [
    "data_counts.csv", "toxic_model.csv", "distilled_texts.csv", "controls.csv", "grid_val.csv", "selected.csv",
    "results_source.csv", "results_across_models.csv", "sensitivity.csv", "detox_text_toxicity.csv",
    "detox_text_leaning.csv", "jaccard.csv", "tfidf_top100.csv", "alignment.csv", "scorecard.csv",
    "controls_claims.csv", "per_prompt_source.csv", "per_prompt_across_models.csv",
    "results_source_claims.csv", "results_across_models_claims.csv", "replicates.csv", "per_prompt_replicates.csv",
    "detox_text_scores.csv", "detox_text_leaning_texts.csv", "jaccard_difference.csv", "group_cost.csv",
    "group_cost_claims.csv",
]
VERDICTS = {"holds", "does not hold", "inconclusive", "not testable here"}


@pytest.mark.slow
def test_every_chapter_runs_on_the_tiny_profile(tmp_path):
    # Its own cache and results folder: the test writes nothing into the repository.
    results = tmp_path / "results"
    command = [sys.executable, "tools/run_notebooks.py", "--profile", "tiny",
               "-p", "cache_dir", str(tmp_path / "cache"), "-p", "results_dir", str(results)]
    started = time.perf_counter()
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1500)
    elapsed = time.perf_counter() - started
    print(run.stdout[-3000:], run.stderr[-3000:], f"\nchain: {elapsed:.0f} s", sep="\n")
    assert run.returncode == 0, run.stderr[-3000:]
    for chapter in chapter_notebooks(ROOT):
        executed = results / "notebooks" / Path(chapter).name
        nb = nbformat.read(executed, as_version=4)
        errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
        assert not errors, f"{chapter}: {errors[0]['ename']}: {errors[0]['evalue']}"
    missing = [name for name in EXPECTED_TABLES if not (results / name).exists()]
    assert not missing, f"chapters did not write {missing}"
    import pandas as pd

    card = pd.read_csv(results / "scorecard.csv")
    assert set(card["verdict"]) <= VERDICTS  # one rule, four labels, in every chapter's rows
