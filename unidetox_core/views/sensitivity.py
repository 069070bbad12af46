"""Chapter 8, hyper-parameter sensitivity: the analogue of the paper's Figure 2 drawn from chapter 5's
grid, and the numbers that check the two readings the paper takes from it.

The grid-point arithmetic (points, regions, spreads, the figure) is in ``tables``; this module puts it
in the chapter's order and words: series in the paper's row order, models in the profile's, and the
sentences that state whether each reading holds in this run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .. import baselines, experiments, methods, paper_tables, tables
from . import short_name, shown_path  # noqa: F401  (the chapter prints the CSV it writes with it)

UNIDETOX = methods.UNIDETOX.name
PER_MODEL = methods.names(tuned_on="each")






def _and(words) -> str:
    words = list(words)
    return ", ".join(words[:-1]) + " and " + words[-1] if len(words) > 1 else "".join(words)


# ------------------------------------------------------------------------------ the grid
def read_grid(results) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(grid, selected)``: chapter 5's ``grid_val.csv`` and ``selected.csv`` from the folder ``results``,
    the grid cut to its validation rows (all of it when it has no ``split`` column) -- the figure shows
    what the tuning rules saw, never the test split."""
    grid = pd.read_csv(Path(results) / "grid_val.csv")
    selected = pd.read_csv(Path(results) / "selected.csv")
    return (grid[grid["split"] == "val"] if "split" in grid.columns else grid), selected


def labelled_points(grid: pd.DataFrame) -> pd.DataFrame:
    """``tables.grid_points`` of ``grid`` with ``series``: the method's row label, with the learning rate
    for UniDetox and Samples, since each learning rate is a curve of its own."""
    points = tables.grid_points(grid)
    points["series"] = [paper_tables.row_label(m, lr) for m, lr in zip(points["method"], points["lr"])]
    return points


def grid_size(grid: pd.DataFrame, points: pd.DataFrame) -> str:
    """One line: how many grid points, evaluations, seeds and models the chapter draws from."""
    seeds = grid["seed"].nunique() if "seed" in grid.columns else 1
    return f"{len(points)} grid points ({len(grid)} evaluations, {seeds} seed(s)) on {points['model'].nunique()} models"


# ------------------------------------------------------------------------------ the ceilings
def ppl_ceilings(grid: pd.DataFrame, models, factor: float, source: str) -> tuple[pd.Series, list[str]]:
    """``(ceilings, notes)``: the tuning rule's perplexity ceiling per model of ``models``
    (``baselines.ppl_ceiling`` on TP over all domains), NaN where UniDetox's chosen steps were not
    evaluated on a model, and one note per such model saying why it has none."""
    values, notes = {}, []
    for model in models:
        try:
            values[model] = baselines.ppl_ceiling(grid.assign(TP=grid["TP_all"]), model, factor=factor,
                                                  source_model=source)
        except ValueError as error:
            notes.append(f"{short_name(model)}: no ceiling ({error})")
            values[model] = np.nan
    return pd.Series(values), notes


def ceilings_table(base: pd.DataFrame, ceilings: pd.Series, factor: float) -> pd.DataFrame:
    """Per model: the base model's TP and perplexity (``tables.base_points``) beside its ceiling,
    rounded as the chapter shows them."""
    shown = base.assign(ceiling=base["model"].map(ceilings))
    shown["model"] = [short_name(m) for m in shown["model"]]
    return shown.round({"base_TP": 3, "base_PPL": 2, "ceiling": 2}).rename(
        columns={"base_TP": "base TP (all)", "base_PPL": "base PPL", "ceiling": f"ceiling ({factor:g} x UniDetox)"})


# ------------------------------------------------------------------------------ the figure
def selected_points(P: dict, points: pd.DataFrame, selected: pd.DataFrame) -> pd.Series:
    """Which ``points`` are a setting chapter 5 chose (``selected.csv``) for their model, as the results
    chapters read it (``experiments.tuned_settings``): the points the figure circles."""
    chosen = pd.concat([experiments.tuned_settings(P, selected, model) for model in points["model"].unique()],
                       ignore_index=True)
    return tables.mark_selected(points, chosen[chosen["hparam"].fillna("") != ""])


def series_order(points: pd.DataFrame) -> list[str]:
    """The series of ``points`` in the paper's row order (the registry's), UniDetox and Samples from
    the higher learning rate down, so that colours and rows line up with the results tables."""
    rank = {name: i for i, name in enumerate(methods.REGISTRY)}
    ordered = (points.assign(rank=points["method"].map(rank), neg_lr=-points["lr"].fillna(0))
               .sort_values(["rank", "neg_lr"]))
    return list(dict.fromkeys(ordered["series"]))


# ------------------------------------------------------------------------------ reading 1
def regions_table(marked: pd.DataFrame, order, models) -> pd.DataFrame:
    """Per model and series (``tables.sensitivity_summary`` of ``mark_points``' frame), in the order of
    ``models`` and ``order``: the grid points, how many lie in the lower left and under the ceiling,
    the lowest TP under the ceiling and the perplexity range relative to the base model, as text."""
    regions = tables.sensitivity_summary(marked, by="series")
    regions["series"] = pd.Categorical(regions["series"], order, ordered=True)
    regions["model_order"] = regions["model"].map({m: i for i, m in enumerate(models)})
    regions = regions.sort_values(["model_order", "series"]).drop(columns="model_order")
    return pd.DataFrame({
        "model": [short_name(m) for m in regions["model"]],
        "method": regions["series"].astype(str),
        "points": regions["points"],
        "lower left": [f"{a} / {n}" for a, n in zip(regions["lower_left"], regions["points"])],
        "under ceiling": [f"{a} / {n}" for a, n in zip(regions["within_ceiling"], regions["points"])],
        "lowest TP under ceiling": ["—" if pd.isna(v) else f"{v:.3f}" for v in regions["best_TP_within_ceiling"]],
        "PPL / base PPL": [f"{a:.2f} – {b:.2f}" for a, b in zip(regions["PPL_ratio_min"], regions["PPL_ratio_max"])],
    })


# The fewest grid points of a method on a model for a reading of where its points cluster.
MIN_POINTS = 3


def lower_left_shares(marked: pd.DataFrame, models) -> pd.DataFrame:
    """Per model (of ``models`` with points): UniDetox's grid points and how many lie in the lower left,
    the same for the per-model baselines together, both shares, and whether UniDetox has a majority
    there (``majority``) and a larger share than the baselines (``ahead``) -- the paper's first reading."""
    rows = []
    for model in [m for m in models if m in set(marked["model"])]:
        part = marked[marked["model"] == model]
        ud = part[part["method"] == UNIDETOX]
        others = part[part["method"].isin(PER_MODEL)]
        rows.append(dict(
            model=model, unidetox_points=len(ud), unidetox_lower_left=int(ud["lower_left"].sum()),
            baseline_points=len(others), baseline_lower_left=int(others["lower_left"].sum()),
            unidetox_share=ud["lower_left"].mean() if len(ud) else np.nan,
            baseline_share=others["lower_left"].mean() if len(others) else np.nan,
        ))
    shares = pd.DataFrame(rows, columns=["model", "unidetox_points", "unidetox_lower_left", "baseline_points",
                                         "baseline_lower_left", "unidetox_share", "baseline_share"])
    shares["majority"] = shares["unidetox_share"] > 0.5
    shares["ahead"] = shares["unidetox_share"] > shares["baseline_share"]
    return shares


def reading1_text(shares: pd.DataFrame) -> str:
    """One line per model of ``lower_left_shares`` with its counts, then whether the first reading holds
    on every model, or on which it fails."""
    together = _and(methods.label(m) for m in PER_MODEL)
    lines = [f"{short_name(r.model)}: {r.unidetox_lower_left} of {r.unidetox_points} UniDetox points in the lower left "
             f"({r.unidetox_share:.0%}), against {r.baseline_lower_left} of {r.baseline_points} for {together} "
             f"together ({r.baseline_share:.0%})." for r in shares.itertuples()]
    testable = shares[shares["unidetox_points"] >= MIN_POINTS]
    failing = testable.loc[~(testable["majority"] & testable["ahead"]), "model"]
    few = shares.loc[shares["unidetox_points"] < MIN_POINTS, "model"]
    if testable.empty:
        verdict = (f"not testable here: UniDetox has fewer than {MIN_POINTS} grid points on every model, and a "
                   "share of one or two points says nothing about where a method's points cluster.")
    else:
        verdict = ("holds in this run" if failing.empty
                   else "does not hold in this run on " + ", ".join(short_name(m) for m in failing))
        verdict += (f" (read only on {', '.join(short_name(m) for m in testable['model'])}: elsewhere UniDetox has "
                    f"fewer than {MIN_POINTS} points)." if len(few) else ".")
    return "\n".join(lines + ["", "Reading 1 (UniDetox clusters in the lower left on every model, more than the "
                                  "per-model baselines): " + verdict])


# ------------------------------------------------------------------------------ reading 2
def spread_by_value(marked: pd.DataFrame, order) -> pd.DataFrame:
    """``tables.ppl_spread`` per series and value, series in ``order`` and values increasing."""
    spread = tables.ppl_spread(marked, by="series")
    spread["series"] = pd.Categorical(spread["series"], order, ordered=True)
    return spread.sort_values(["series", "value"])


def spread_view(spread: pd.DataFrame, models) -> pd.DataFrame:
    """``spread_by_value`` as the chapter shows it: method, value, the ratio on each model of ``models``
    that has one (short names) and the spread."""
    columns = [m for m in models if m in spread.columns]
    view = spread[["series", "value", *columns, "spread"]].rename(
        columns={"series": "method", **{m: short_name(m) for m in columns}})
    view["method"] = view["method"].astype(str)
    return view


def reading2_text(spread: pd.DataFrame) -> str:
    """Each series' largest spread across models (``spread_by_value``), then the second reading's
    verdict: UniDetox's largest spread against the per-model baselines'. Spreads all under 1.25 are
    called inconclusive -- no value costs a quarter more perplexity anywhere, too little to call any
    method fragile."""
    largest = spread.groupby("series", observed=True)["spread"].max()
    lines = [f"{series}: largest spread across models {value:.2f}" for series, value in largest.items()]
    method_of = {s: str(s).split(" lr=")[0] for s in largest.index}
    ud = largest[[s for s in largest.index if method_of[s] == methods.label(UNIDETOX)]]
    others = largest[[s for s in largest.index if method_of[s] in [methods.label(m) for m in PER_MODEL]]]
    if len(ud) and len(others):
        if largest.max() < 1.25:
            verdict = ("inconclusive: no value costs more than 25 % more perplexity on one model than on another, "
                       "for any method")
        elif ud.max() < others.max():
            verdict = "holds: UniDetox's spread is below that of the most fragile per-model baseline"
        else:
            verdict = "does not hold: UniDetox's spread is at least as large as every per-model baseline's"
        last = (f"Reading 2 (one UniDetox setting costs more similar fluency across models than the per-model "
                f"baselines' values): {verdict} -- UniDetox's largest spread {ud.max():.2f}; the baselines' largest "
                f"spreads range from {others.min():.2f} to {others.max():.2f}.")
    else:
        last = ("Reading 2 cannot be checked: the grid has no value evaluated on two models for "
                + ("UniDetox" if not len(ud) else "the per-model baselines") + ".")
    return "\n".join(lines + ["", last])
