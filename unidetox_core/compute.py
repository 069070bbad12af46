"""What the book's computations cost (Appendix B.5, Table 9), from the records the stages keep.

Nothing here runs a stage: every table is read from the run log (``stages.run_log``, through
``analysis.stage_times``), from ``tools/run_notebooks.py``'s chapter records and from
``tools/time_book.py``'s timed runs of ``make book``. The compute appendix shows them.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from . import analysis, methods

STAGE_NAMES = {"world": "world step", "toxic": "toxic model", "distilled": "distillation", "detox": "fine-tuning",
               "lmsteer": "LM-Steer matrix", "eval": "evaluation", "mmlu": "MMLU run"}


def hms(seconds) -> str:
    """12.3 s, 4 min 05 s or 2 h 03 min; a dash for a missing time."""
    if seconds is None or not np.isfinite(seconds):
        return "—"
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {seconds % 60:02.0f} s"
    return f"{int(seconds // 3600)} h {seconds % 3600 / 60:02.0f} min"


def log_note(P: dict) -> str:
    """A sentence for a profile whose cache holds no run log yet: the tables below are then empty."""
    if not analysis.stage_times(P).empty:
        return ""
    return ("*This cache holds no record of a stage of this profile: the chapters shown were computed in "
            "another cache, or before the run log existed. `make book` from an empty `cache/` fills the "
            "tables below.*")


def stage_summary(P: dict) -> pd.DataFrame:
    """Per kind of stage: how many ran and their summed, median and longest time (seconds)."""
    times = analysis.stage_times(P)
    if times.empty:
        return pd.DataFrame(columns=["stage", "runs", "seconds", "median_s", "longest_s"])
    grouped = times.groupby("stage", sort=False)["seconds"]
    out = pd.DataFrame({"runs": grouped.size(), "seconds": grouped.sum(), "median_s": grouped.median(),
                        "longest_s": grouped.max()}).reset_index()
    out["stage"] = out["stage"].map(lambda s: STAGE_NAMES.get(s, s))
    return out


def table9(P: dict) -> pd.DataFrame:
    """The analogue of the paper's Table 9 on this profile: per method, the seconds of the toxic
    model(s) it needs, of distilling its text (seed 0 at the profile's alpha; UniDetox and Samples)
    and of fine-tuning on that text, summed over the stages that ran (NaN: not needed or not run)."""
    times = analysis.stage_times(P)
    source, models = P["source_model"], [P["source_model"], *P["target_models"]]

    def select(stage, **where):
        rows = times[times["stage"] == stage]
        for column, value in where.items():
            rows = rows[rows[column].isin(value if isinstance(value, list) else [value])]
        return rows

    def total(stage, **where):
        rows = select(stage, **where)
        return (float(rows["seconds"].sum()) if len(rows) else np.nan), len(rows)

    rows = []
    for name in methods.names():
        m = methods.get(name)
        if not m.hparam:
            continue
        toxic = total("toxic", model=source if m.name == "unidetox" else models) if (
            m.name == "unidetox" or "toxic_model" in m.needs) else (np.nan, 0)
        main_text = dict(text=m.text, seed=0)
        if m.name == "unidetox":
            main_text.update(alpha=P["distill_alpha"], top_k=P["distill_top_k"])
        distilled = total("distilled", **main_text) if m.fine_tuned else (np.nan, 0)
        text_folders = select("distilled", **main_text)["folder"] if m.fine_tuned else []
        tuned = total("detox", text=[Path(f).name for f in text_folders]) if m.fine_tuned else (np.nan, 0)
        steering = total("lmsteer") if "steering_matrix" in m.needs else (np.nan, 0)
        rows.append({"method": m.label, "toxic_s": toxic[0], "toxic_runs": toxic[1], "distill_s": distilled[0],
                     "distill_runs": distilled[1], "finetune_s": tuned[0], "finetune_runs": tuned[1],
                     "steering_s": steering[0], "steering_runs": steering[1]})
    return pd.DataFrame(rows)


def table9_view(table: pd.DataFrame) -> pd.DataFrame:
    """``table9`` for reading: each cell a time and its number of runs, a dash where none ran."""
    def cell(seconds, runs):
        return f"{hms(seconds)} ({runs} run{'s' if runs > 1 else ''})" if runs else "—"

    view = pd.DataFrame({"method": table["method"]})
    for stage, title in (("toxic", "toxic model(s)"), ("steering", "LM-Steer matrices"),
                         ("distill", "distillation"), ("finetune", "fine-tuning")):
        view[title] = [cell(s, n) for s, n in zip(table[f"{stage}_s"], table[f"{stage}_runs"])]
    return view


def paper_table9() -> pd.DataFrame:
    """Paper reports, Table 9: GPU hours on one A100 80GB."""
    return pd.DataFrame(analysis.PAPER_TABLE9).rename(columns={
        "toxic_model_fine_tuning_h": "paper reports: toxic model fine-tuning (h)",
        "fine_tuning_h": "paper reports: fine-tuning (h)"}).astype(object).fillna("—")


def world_steps(P: dict) -> pd.DataFrame:
    """The world's build steps as they ran (seconds), with a readable time."""
    steps = analysis.world_times(P)
    return steps.assign(time=steps["seconds"].map(hms))[["step", "time", "seconds", "cpu_seconds"]]


def append_run(path: Path, notebook: str, record: dict, key: str) -> None:
    """One line per successful execution of a chapter (``tools/run_notebooks.py``) or of the world's
    build (``python -m unidetox_core.world``, as ``world``) in ``notebook_runs.csv``, kept (and
    committed) for this chapter: the runner's keys file holds only each chapter's *last* run, which
    after a cached rerun says nothing about the run that computed its stages. The load average is
    there because the machine is shared. ``record``: ``seconds`` and ``finished``."""
    new = not path.exists()
    with open(path, "a", encoding="utf-8") as out:
        if new:
            out.write("notebook,seconds,finished,load_avg_1min,key\n")
        out.write(f"{notebook},{record['seconds']},{record['finished']},{os.getloadavg()[0]:.2f},{key[:12]}\n")


def chapter_times(P: dict) -> pd.DataFrame:
    """Each chapter's run time: in the last timed cold ``make book`` (``cold``, when one was timed)
    and in its last run (``last``); from ``<results_dir>/notebook_runs.csv`` and ``book_times.csv``."""
    results = Path(P["results_dir"])
    runs_path, book_path = results / "notebook_runs.csv", results / "book_times.csv"
    if not runs_path.exists():
        return pd.DataFrame(columns=["chapter", "cold", "last"])
    runs = pd.read_csv(runs_path)
    runs["chapter"] = runs["notebook"].map(lambda p: Path(p).stem)
    runs["finished_at"] = pd.to_datetime(runs["finished"].astype(str).str.replace(" UTC", ""), errors="coerce")
    out = runs.groupby("chapter", sort=True)["seconds"].last().rename("last").to_frame()
    book = pd.read_csv(book_path) if book_path.exists() else pd.DataFrame(columns=["label", "exit_code"])
    colds = book[(book["label"] == "cold") & (book["exit_code"] == 0)]
    if len(colds):
        start = pd.Timestamp(colds.iloc[-1]["started_utc"])
        end = start + pd.Timedelta(seconds=float(colds.iloc[-1]["wall_seconds"]) + 60)
        window = runs[(runs["finished_at"] >= start) & (runs["finished_at"] <= end)]
        out["cold"] = window.groupby("chapter")["seconds"].first()
    return out.reset_index().reindex(columns=["chapter", "cold", "last"])


def book_runs(P: dict) -> pd.DataFrame:
    """The timed runs of ``make book`` (``tools/time_book.py``): label, commit, wall and CPU time, success."""
    path = Path(P["results_dir"]) / "book_times.csv"
    if not path.exists():
        return pd.DataFrame(columns=["label", "commit", "wall", "cpu", "cores", "succeeded"])
    runs = pd.read_csv(path)
    return pd.DataFrame({"label": runs["label"], "commit": runs["commit"], "wall": runs["wall_seconds"].map(hms),
                         "cpu": runs["cpu_seconds"].map(hms), "cores": runs["cores"],
                         "succeeded": runs["exit_code"] == 0})


def benchmark_table(P: dict) -> pd.DataFrame:
    """``benchmarks/``' figures for this profile (``benchmark.csv``, written by ``make bench``)."""
    path = Path(P["results_dir"]) / "benchmark.csv"
    if not path.exists():
        return pd.DataFrame(columns=["figure", "what", "measured", "ratio", "goal", "met"])
    bench = pd.read_csv(path)
    return bench[[c for c in ("figure", "what", "measured", "baseline", "ratio", "goal", "met", "unit", "cpu_model")
                  if c in bench]]


def idiomatic_table(P: dict) -> pd.DataFrame:
    """``benchmarks/bench_idiomatic.py``'s figures for this profile (``benchmark_idiomatic.csv``): each
    side of each hot path -- ours and the idiomatic Hugging Face route -- with its rate, its ratio to
    the idiomatic reference (median over the repeats), the decode efficiency and the keep rule's
    verdict (a speed-up stays only at 1.5x the idiomatic route or more)."""
    path = Path(P["results_dir"]) / "benchmark_idiomatic.csv"
    columns = ["figure", "what", "side", "setting", "rate", "unit", "ratio_vs_idiomatic_median",
               "decode_efficiency_median", "keep_rule", "reference", "cpu_model"]
    if not path.exists():
        return pd.DataFrame(columns=columns)
    bench = pd.read_csv(path)
    bench = bench[bench["side"].notna()] if "side" in bench else bench
    return bench[[c for c in columns if c in bench]].rename(columns={
        "ratio_vs_idiomatic_median": "ratio to the idiomatic route", "decode_efficiency_median": "decode efficiency"})


def prompt_costs(P: dict, detectable: dict[str, float] | None = None) -> pd.DataFrame:
    """What the evaluation prompts cost this build, per split, from the run log: the evaluations that
    ran, their summed time, the prompts of the split (an evaluation's continuations over
    ``eval_n_continuations``), the seconds each prompt
    cost across all evaluations, and the build's wall minutes they took (evaluations run
    ``eval_workers`` at a time). With ``detectable`` (split -> the smallest TP difference detected
    at 80% power now), the one at twice the prompts: it falls as one over the square root of the
    prompts, while the evaluations' time doubles."""
    times = analysis.stage_times(P)
    evals = times[(times["stage"] == "eval") & times["split"].notna()]
    rows = []
    for split, part in evals.groupby("split", sort=True):
        prompts = int(round(part["continuations"].median() / P["eval_n_continuations"]))
        seconds = float(part["seconds"].sum())
        row = {"split": split, "evaluations": len(part), "prompts": prompts, "seconds": seconds,
               "seconds per prompt": seconds / prompts,
               "build minutes": seconds / max(1, int(P["eval_workers"])) / 60}
        if detectable and split in detectable:
            row["detectable difference (80% power)"] = detectable[split]
            row["at twice the prompts"] = detectable[split] / math.sqrt(2)
        rows.append(row)
    return pd.DataFrame(rows)


def cost_sentence(table: pd.DataFrame) -> str:
    """One sentence comparing the toxic fine-tunes of the per-model methods with UniDetox's one."""
    t = table.set_index("method")
    unidetox, dexperts = t.loc["UniDetox", "toxic_s"], t.loc["DExperts", "toxic_s"]
    if not (math.isfinite(unidetox) and math.isfinite(dexperts)) or unidetox <= 0:
        return "Too few stages have run on this profile to compare the methods."
    return (f"The toxic fine-tunes that DExperts and Task Arithmetic need took {dexperts / unidetox:.1f} times as "
            f"long as UniDetox's one ({int(t.loc['DExperts', 'toxic_runs'])} models; paper reports: 23.5 h vs "
            "2.5 h, 9.4 times, with 7 B-parameter targets).")
