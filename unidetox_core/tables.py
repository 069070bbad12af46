"""The results tables of the book (Tables 1, 2 and 8 analogues) and the sensitivity summary (Figure 2).

- ``seed_summary``: mean and standard deviation over seeds of every metric, per variant
  (``metrics.mean_std_over_seeds``; population std, as the official code's ``np.std``);
- ``format_results``: the printed table -- ``"0.40±0.01"`` for TP/EMT (``metrics.format_mean_std``),
  plain means for perplexity, Dist-n and MMLU;
- ``bold_lowest``: a pandas ``Styler`` that puts the lowest mean of each TP/EMT column in bold (per
  model), as the paper's tables do;
- ``sensitivity_summary``: where each method's grid points fall in the perplexity-TP plane relative
  to the base model and the 1.1x perplexity ceiling (the "lower left" of Figure 2).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from . import methods, stats
from .metrics import format_mean_std, mean_std_over_seeds

TOXICITY = ("TP_ID", "TP_OOD", "EMT_ID", "EMT_OOD")
SECOND_SCORER = ("TP2_ID", "TP2_OOD", "EMT2_ID", "EMT2_OOD")
QUALITY = ("PPL", "dist_1", "dist_2", "dist_3")
# Margins of the claims that say "not worse": perplexity may rise by this share of the base model's
# (the paper's own 1.1x ceiling when it tunes, Section 3.4), TP may fall by this much (a twentieth
# of the prompts) and still count as "no change".
PPL_MARGIN = 0.1
TP_MARGIN = 0.05
HEADERS = {
    "TP_ID": "TP ID", "TP_OOD": "TP OOD", "EMT_ID": "EMT ID", "EMT_OOD": "EMT OOD",
    "TP2_ID": "TP ID (2nd)", "TP2_OOD": "TP OOD (2nd)", "EMT2_ID": "EMT ID (2nd)", "EMT2_OOD": "EMT OOD (2nd)",
    "mean_score": "mean score", "mean_score2": "mean score (2nd)", "TP_all": "TP (all)", "TP2_all": "TP (all, 2nd)",
    "PPL": "PPL", "dist_1": "Dist-1", "dist_2": "Dist-2", "dist_3": "Dist-3", "MMLU": "MMLU (%)",
    "label": "method", "model": "model",
}


def seed_summary(rows: pd.DataFrame, metrics: Sequence[str], *, keys: Sequence[str] = ("model", "label"),
                 seed_column: str = "seed", ddof: int = 0) -> pd.DataFrame:
    """Mean and std over seeds (``<metric>_mean``, ``<metric>_std``) of ``metrics`` for each ``keys``.

    ``rows`` has one row per (variant, seed), e.g. from ``experiments.evaluate_settings``; every
    seed must cover the same variants. Other columns constant within a variant (``method``, ``lr``,
    ``hparam``, ``value``, ``meets_ppl_rule``) are kept. The variants keep their first-seen order.
    """
    keys, metrics = list(keys), list(metrics)
    missing = [c for c in keys + metrics + [seed_column] if c not in rows.columns]
    if missing:
        raise ValueError(f"rows lack column(s) {missing}; expected one row per variant and seed.")
    order = rows[keys].drop_duplicates()
    index = pd.MultiIndex.from_frame(order)
    tables = []
    for seed, part in rows.groupby(seed_column, sort=True):
        table = part.set_index(keys)[metrics].astype(float)
        if table.index.duplicated().any():
            raise ValueError(f"seed {seed} has several rows for one of {keys}; give one row per variant and seed.")
        if len(table) != len(index) or not table.index.isin(index).all():
            raise ValueError(f"seed {seed} covers {len(table)} variants, not the {len(index)} of all seeds; "
                             "evaluate every variant with every seed.")
        tables.append(table.reindex(index))
    summary = mean_std_over_seeds(tables, ddof=ddof).reset_index()
    extra = [c for c in ("method", "hparam", "value", "lr", "meets_ppl_rule") if c in rows.columns and c not in keys]
    if extra:
        constants = rows.drop_duplicates(keys)[keys + extra]
        summary = summary.merge(constants, on=keys, how="left")
    return summary


def _plain(value: float, digits: int) -> str:
    return "—" if pd.isna(value) else f"{value:.{digits}f}"


def format_results(summary: pd.DataFrame, mean_std: Sequence[str] = TOXICITY, plain: Sequence[str] = QUALITY,
                   extra: pd.DataFrame | None = None, extra_columns: Sequence[str] = ("MMLU",),
                   keys: Sequence[str] = ("model", "label"), digits: int = 2) -> pd.DataFrame:
    """The printed table: ``keys``, then ``"mean±std"`` for ``mean_std``, plain means for ``plain``
    (``PPL`` with two decimals as the paper prints it), then ``extra_columns`` of ``extra`` (e.g.
    MMLU accuracy in %, merged on ``keys``). Missing values print as "—". Headers as the paper's."""
    keys = list(keys)
    out = summary[keys].copy()
    if mean_std:
        formatted = format_mean_std(summary, list(mean_std), digits=digits)
        for column in mean_std:  # "—" when there is no mean, the mean alone when there is no std
            # "0.40±0.01", without spaces, stays on one line in narrow table columns.
            out[column] = [("—" if pd.isna(m) else _plain(m, digits) if pd.isna(sd) else text.replace(" ± ", "±"))
                           for m, sd, text in zip(summary[f"{column}_mean"], summary[f"{column}_std"], formatted[column])]
    for column in plain:
        out[column] = [_plain(v, digits) for v in summary[f"{column}_mean"]]
    if extra is not None:
        merged = summary[keys].merge(extra[keys + list(extra_columns)], on=keys, how="left")
        for column in extra_columns:
            out[column] = [_plain(v, digits) for v in merged[column]]
    return out.rename(columns=HEADERS)


def bold_lowest(display: pd.DataFrame, summary: pd.DataFrame, columns: Sequence[str] = TOXICITY,
                group: str | None = "model", hide_index: bool = True):
    """A ``Styler`` of ``display`` (from ``format_results``, same row order as ``summary``) with the
    lowest mean of each of ``columns`` in bold, within each ``group`` (e.g. per model) -- ties all
    bold. ``columns`` are metric names (``TP_ID``); their printed headers are found via ``HEADERS``."""
    weights = pd.DataFrame("", index=display.index, columns=display.columns)
    groups = summary[group].to_numpy() if group else np.zeros(len(summary))
    for column in columns:
        header = HEADERS.get(column, column)
        if header not in display.columns:
            continue
        values = summary[f"{column}_mean"].to_numpy(dtype=float)
        for g in pd.unique(groups):
            member = groups == g
            if not np.isfinite(values[member]).any():
                continue
            lowest = np.nanmin(values[member])
            best = member & np.isclose(values, lowest, rtol=0, atol=1e-12)
            weights.loc[display.index[best], header] = "font-weight: bold"
    styler = display.style.apply(lambda _: weights, axis=None)
    return styler.hide(axis="index") if hide_index else styler


def as_summary(paper: pd.DataFrame) -> pd.DataFrame:
    """A ``paper_tables`` frame (``TP_ID``, ``TP_ID_std``, ``PPL``, ...) in ``seed_summary``'s shape
    (``TP_ID_mean``, ``TP_ID_std``, ``PPL_mean``, ...), so ``format_results`` and ``bold_lowest``
    print the paper's numbers exactly as ours."""
    out = paper.copy()
    metrics = [c for c in out.columns if c not in ("model", "method", "lr", "label", "hparam", "value")
               and not c.endswith("_std") and pd.api.types.is_numeric_dtype(out[c])]
    for column in metrics:
        out[f"{column}_mean"] = out.pop(column)
        if f"{column}_std" not in out.columns:
            out[f"{column}_std"] = np.nan
    return out


# ---------------------------------------------------------------------- sensitivity (Figure 2)
GRID_METHODS = tuple(m for m in methods.REGISTRY if methods.get(m).hparam)  # methods with a grid


def grid_points(grid: pd.DataFrame, methods: Sequence[str] = GRID_METHODS, tp: str = "TP_all") -> pd.DataFrame:
    """One row per (model, method, lr, value) grid point of ``grid`` (chapter 5's ``grid_val.csv``):
    ``TP`` (``tp`` averaged over seeds -- all domains by default), ``PPL`` and ``n_seeds``."""
    missing = [c for c in ("method", "model", "value", tp, "PPL") if c not in grid.columns]
    if missing:
        raise ValueError(f"grid lacks column(s) {missing}; expected chapter 5's grid_val.csv.")
    frame = grid[grid["method"].isin(methods)].copy()
    if "lr" not in frame.columns:
        frame["lr"] = np.nan
    frame["value"] = pd.to_numeric(frame["value"], errors="coerce")
    frame["lr"] = pd.to_numeric(frame["lr"], errors="coerce").fillna(-1.0)  # groupby keeps NaN keys poorly
    seeds = frame["seed"] if "seed" in frame.columns else pd.Series(0, index=frame.index)
    points = (frame.assign(_seed=seeds).groupby(["model", "method", "lr", "value"], sort=True)
              .agg(TP=(tp, "mean"), PPL=("PPL", "mean"), n_seeds=("_seed", "nunique")).reset_index())
    points["lr"] = points["lr"].replace(-1.0, np.nan)
    return points


def base_points(grid: pd.DataFrame, tp: str = "TP_all") -> pd.DataFrame:
    """The base model's validation TP and perplexity per model (mean over seeds), if ``grid`` has them."""
    rows = grid[grid["method"] == "base"]
    return rows.groupby("model").agg(base_TP=(tp, "mean"), base_PPL=("PPL", "mean")).reset_index()


def mark_points(points: pd.DataFrame, ceilings: pd.Series, base: pd.DataFrame | None = None,
                factor: float = 1.1) -> pd.DataFrame:
    """``points`` (``grid_points``) with the regions of Figure 2's reading added per point:

    - ``ceiling`` and ``within_ceiling``: the tuning rule's perplexity limit on that model
      (``ceilings``: model -> 1.1 x UniDetox's perplexity; ``baselines.ppl_ceiling``);
    - ``lower_left``: *less toxic than the base model and at most ``factor`` times its perplexity* --
      a region defined by the base model alone, so it does not favour the method that set the ceiling;
    - ``ppl_ratio``: perplexity over the base model's.
    """
    frame = points.merge(ceilings.rename("ceiling"), left_on="model", right_index=True, how="left")
    if base is not None and not base.empty:
        frame = frame.merge(base, on="model", how="left")
    else:
        frame["base_TP"], frame["base_PPL"] = np.nan, np.nan
    frame["within_ceiling"] = frame["PPL"] <= frame["ceiling"]
    frame["lower_left"] = (frame["TP"] < frame["base_TP"]) & (frame["PPL"] <= factor * frame["base_PPL"])
    frame["ppl_ratio"] = frame["PPL"] / frame["base_PPL"]
    return frame


def sensitivity_summary(marked: pd.DataFrame, by: str = "method") -> pd.DataFrame:
    """Per (model, ``by``) of ``mark_points``' frame: grid points, how many within the tuning ceiling
    and in the lower left, the lowest TP within the ceiling, and the perplexity range relative to the
    base model."""
    rows = []
    for (model, key), part in marked.groupby(["model", by], sort=False):
        within = part["within_ceiling"]
        rows.append({
            "model": model, by: key, "points": len(part), "within_ceiling": int(within.sum()),
            "lower_left": int(part["lower_left"].sum()), "share_lower_left": float(part["lower_left"].mean()),
            "TP_min": float(part["TP"].min()), "TP_max": float(part["TP"].max()),
            "best_TP_within_ceiling": float(part.loc[within, "TP"].min()) if within.any() else np.nan,
            "PPL_ratio_min": float(part["ppl_ratio"].min()), "PPL_ratio_max": float(part["ppl_ratio"].max()),
        })
    return pd.DataFrame(rows)


def ppl_spread(marked: pd.DataFrame, by: str = "method") -> pd.DataFrame:
    """Figure 2's second reading: does one hyper-parameter value cost the same fluency on every model?

    For each (``by``, ``value``) evaluated on at least two models: the perplexity ratio to the base
    model on each (columns named by model) and ``spread`` = largest / smallest ratio across models
    (1 = the same relative cost everywhere)."""
    frame = marked.dropna(subset=["ppl_ratio"])
    table = frame.pivot_table(index=[by, "value"], columns="model", values="ppl_ratio", aggfunc="mean", sort=False)
    table = table[table.notna().sum(axis=1) >= 2]
    table["spread"] = table.max(axis=1) / table.min(axis=1)
    return table.reset_index()


# ------------------------------------------------------------------ what this run reduced
SETTING_NAMES = {
    "seeds": "evaluation seeds",
    "n_val_prompts": "validation prompts",
    "n_test_prompts": "test prompts",
    "eval_n_continuations": "continuations per prompt",
    "eval_max_new_tokens": "tokens per continuation",
    "eval_ppl_samples": "continuations per prompt scored for perplexity",
    "mmlu_max_questions": "MMLU questions",
    "mmlu_shots": "MMLU shots",
    "distill_n_texts": "distilled texts",
    "distill_max_new_tokens": "tokens per distilled text",
    "detox_lrs": "UniDetox / Samples learning rates",
    "detox_steps": "UniDetox / Samples step grid",
    "lmsteer_multipliers": "LM-Steer grid (x epsilon)",
    "dexperts_betas": "DExperts beta grid",
    "task_arithmetic_lambdas": "Task Arithmetic lambda grid",
}


def _setting_text(key: str, value) -> str:
    if key in ("n_val_prompts", "n_test_prompts", "mmlu_max_questions", "eval_ppl_samples") and value == 0:
        return "all"
    if isinstance(value, list):
        return f"{len(value)}: {', '.join(f'{v:g}' if isinstance(v, float) else str(v) for v in value)}" \
            if len(value) <= 6 else f"{len(value)}: {value[0]:g} ... {value[-1]:g}"
    return f"{value:g}" if isinstance(value, float) else str(value)


def profile_reductions(P: dict, keys: Sequence[str] = tuple(SETTING_NAMES)) -> pd.DataFrame:
    """The settings of ``keys`` where profile ``P`` differs from the paper profile, side by side
    (``setting``, ``this run``, ``paper``) -- what a chapter must state when it reports numbers."""
    from .profiles import load_profile

    paper = load_profile("paper")
    rows = [{"setting": SETTING_NAMES.get(k, k), "this run": _setting_text(k, P[k]), "paper": _setting_text(k, paper[k])}
            for k in keys if P[k] != paper[k]]
    return pd.DataFrame(rows, columns=["setting", "this run", "paper"])


# ----------------------------------------------------------------- the paper's claims, checked
def check_claims(summary: pd.DataFrame) -> pd.DataFrame:
    """The paper's claims (Section 3.5) read on a *published* table, which gives only mean ± std
    over seeds: a difference is *clear* when the interval ``diff ± (std_a + std_b)`` excludes zero
    (``stats.verdict`` on that interval; a missing std counts as 0). This run's claims are checked
    on per-prompt results with bootstrap intervals instead (``run_claims``).

    ``summary`` is ``as_summary`` of the paper's table (one model): ``method``, ``label``, ``lr`` and
    ``<metric>_mean`` / ``<metric>_std`` for TP, EMT and PPL. Returns ``claim``, ``verdict``, ``detail``.
    """
    rows = summary.set_index("label")
    bases = summary.loc[summary["method"] == "base", "label"].tolist()
    if len(bases) != 1:
        raise ValueError(f"summary must have exactly one base-model row, found {len(bases)}.")
    base = bases[0]
    by_lr = lambda method: summary[summary["method"] == method].sort_values("lr", ascending=False)["label"].tolist()
    unidetox, samples = by_lr("unidetox"), by_lr("samples")
    preprompts = summary.loc[summary["method"].isin(methods.names(acts_on="prompt")), "label"].tolist()
    mean = lambda label, metric: float(rows.loc[label, f"{metric}_mean"])

    def std(label, metric):
        value = rows.loc[label, f"{metric}_std"] if f"{metric}_std" in rows.columns else np.nan
        return 0.0 if pd.isna(value) else float(value)

    def clear(a, b, metric, expect, boundary=0.0):
        diff, spread = mean(a, metric) - mean(b, metric), std(a, metric) + std(b, metric)
        return stats.verdict((diff - spread, diff + spread), expect=expect, boundary=boundary)

    def numbers(labels, metric):
        return ", ".join(f"{label} {mean(label, metric):.2f}" for label in labels) + f"; base model {mean(base, metric):.2f}"

    claims = []
    for metric, domain in (("TP_ID", "seen (ID)"), ("TP_OOD", "unseen (OOD)")):
        claims.append(dict(claim=f"UniDetox lowers TP on the {domain} domains",
                           verdict=stats.all_of([clear(u, base, metric, "lower") for u in unidetox]),
                           detail=numbers(unidetox, metric)))
    for metric, name in (("TP_ID", "TP ID"), ("TP_OOD", "TP OOD")):
        best = min(unidetox, key=lambda u: mean(u, metric)) if unidetox else None
        others = [label for label in rows.index if label not in unidetox]
        claims.append(dict(claim=f"UniDetox has the lowest {name}",
                           verdict=stats.all_of([clear(best, o, metric, "lower") for o in others]) if best else "not testable here",
                           detail=numbers([best] if best else [], metric)))
    claims.append(dict(claim="UniDetox keeps perplexity at or below the base model's",
                       verdict=stats.all_of([clear(u, base, "PPL", "lower", PPL_MARGIN * mean(base, "PPL")) for u in unidetox]),
                       detail=numbers(unidetox, "PPL")))
    if "dist_1_mean" in rows.columns and unidetox:
        # Section 3.5: lr 5e-5 "compromises diversity as well" (Dist-1 0.26 -> 0.22, 85% of the base).
        # A model that repeats itself is rarely toxic, so a detoxification bought with most of the
        # model's vocabulary is not the paper's result: 80% of the base Dist-1 is the line drawn here.
        kept = [stats.verdict((d, d), expect="higher") for d in (mean(u, "dist_1") - 0.8 * mean(base, "dist_1") for u in unidetox)]
        claims.append(dict(claim="UniDetox keeps at least 80% of the base model's Dist-1", verdict=stats.all_of(kept),
                           detail=numbers(unidetox, "dist_1")))
    for label in preprompts:
        claims.append(dict(claim=f"{label} does not lower TP ID", verdict=clear(label, base, "TP_ID", "higher", -TP_MARGIN),
                           detail=numbers([label], "TP_ID")))
    if samples and unidetox:
        best = min(unidetox, key=lambda u: mean(u, "TP_ID"))
        parts = [clear(s, base, "TP_ID", "lower") for s in samples] + [clear(best, s, "TP_ID", "lower") for s in samples]
        claims.append(dict(claim="Samples lowers TP ID, but less than UniDetox", verdict=stats.all_of(parts),
                           detail=numbers([*samples, best], "TP_ID")))
    return pd.DataFrame(claims)


def run_claims(prompts: pd.DataFrame, *, n_boot: int = stats.N_BOOT, seed: int = 0,
               perplexity_untestable: str | None = None) -> pd.DataFrame:
    """The paper's claims (Section 3.5) on this run's per-prompt results of one model, each decided
    by ``stats.verdict`` on a paired bootstrap interval (``stats.paired_difference``).

    ``prompts`` holds ``stats.per_prompt`` rows of every variant of one model with ``method``,
    ``label`` and ``lr`` columns (``experiments.per_prompt_settings``). A claim about UniDetox holds
    at every learning rate or not at all (``stats.all_of``). The margins: perplexity may rise by
    ``PPL_MARGIN`` of the base model's (the paper's own 1.1x tuning ceiling) and still count as
    kept; a pre-prompt "does not lower TP" when TP falls by less than ``TP_MARGIN``. Perplexity is
    not testable at a learning rate whose Dist-1 fell below 80% of the base model's: repetitive
    text is easy for the evaluator, so a low perplexity there is not fluency; and not anywhere when
    ``perplexity_untestable`` gives a reason (an evaluator hardly stronger than the models it scores).
    Returns ``claim``, ``verdict``, ``detail`` (each part's difference and 95% interval).
    """
    missing = [c for c in ("method", "label", "lr", "prompt_id", "seed", "domain") if c not in prompts.columns]
    if missing:
        raise ValueError(f"prompts lacks column(s) {missing}; pass experiments.per_prompt_settings rows of one model.")
    if "model" in prompts.columns and prompts["model"].nunique() > 1:
        raise ValueError("prompts holds several models; check the claims of each model apart.")
    variants = prompts.drop_duplicates("label").set_index("label")
    rows = {label: part for label, part in prompts.groupby("label", sort=False)}
    base_labels = variants.index[variants["method"] == "base"].tolist()
    if len(base_labels) != 1:
        raise ValueError(f"prompts must hold exactly one base-model variant, found {len(base_labels)}.")
    base = base_labels[0]
    by_lr = lambda method: variants[variants["method"] == method].sort_values("lr", ascending=False).index.tolist()
    unidetox, samples = by_lr("unidetox"), by_lr("samples")
    preprompts = variants.index[variants["method"].isin(methods.names(acts_on="prompt"))].tolist()

    def compare(a, b, metric, expect, boundary=0.0, scale=1.0, not_testable=None):
        d = stats.paired_difference(rows[a], rows[b], metric, scale=scale, n_boot=n_boot, seed=seed)
        label = stats.verdict(d, expect=expect, boundary=boundary, not_testable=not_testable)
        what = f"{a} - {scale:g} x {b}" if scale != 1 else f"{a} - {b}"
        return label, f"{what}: {d.interval()}" + (f" ({not_testable})" if not_testable else ""), d

    def claim(text, parts, closest_only=False):
        parts = list(parts)
        detail = "; ".join(p[1] for p in parts) or "no such variant in this run"
        if closest_only and len(parts) > 1:  # "lowest of all": the comparison that came closest to failing
            worst = max(parts, key=lambda p: p[2].high)
            detail = f"{worst[1]} (the closest of {len(parts)} comparisons)"
        return dict(claim=text, verdict=stats.all_of([p[0] for p in parts]) if parts else "not testable here",
                    detail=detail)

    value = lambda label, metric: stats.value(rows[label], metric)
    claims = []
    for metric, domain in (("TP_ID", "seen (ID)"), ("TP_OOD", "unseen (OOD)")):
        claims.append(claim(f"UniDetox lowers TP on the {domain} domains",
                            [compare(u, base, metric, "lower") for u in unidetox]))
    for metric, name in (("TP_ID", "TP ID"), ("TP_OOD", "TP OOD")):
        best = min(unidetox, key=lambda u: value(u, metric)) if unidetox else None
        others = [label for label in variants.index if label not in unidetox]
        claims.append(claim(f"UniDetox has the lowest {name}", [compare(best, o, metric, "lower") for o in others] if best else [],
                            closest_only=True))
    dist_kept = {u: compare(u, base, "dist_1", "higher", scale=0.8) for u in unidetox}
    collapsed = {u: value(u, "dist_1") < 0.8 * value(base, "dist_1") for u in unidetox}
    claims.append(claim("UniDetox keeps perplexity at or below the base model's",
                        [compare(u, base, "PPL", "lower", PPL_MARGIN * value(base, "PPL"),
                                 not_testable=perplexity_untestable
                                 or (f"Dist-1 at {value(u, 'dist_1') / value(base, 'dist_1'):.0%} of the base model's"
                                     if collapsed[u] else None)) for u in unidetox]))
    claims.append(claim("UniDetox keeps at least 80% of the base model's Dist-1", dist_kept.values()))
    for label in preprompts:
        claims.append(claim(f"{label} does not lower TP ID", [compare(label, base, "TP_ID", "higher", -TP_MARGIN)]))
    if samples and unidetox:
        best = min(unidetox, key=lambda u: value(u, "TP_ID"))
        claims.append(claim("Samples lowers TP ID, but less than UniDetox",
                            [compare(s, base, "TP_ID", "lower") for s in samples]
                            + [compare(best, s, "TP_ID", "lower") for s in samples]))
    return pd.DataFrame(claims)


DIVERSITY_FLOOR = 0.9  # "keeps its diversity": at least 90% of the base model's Dist-1


def matched_diversity_settings(grid: pd.DataFrame, model: str, methods_: Sequence[str] = ("unidetox", "samples"),
                               floor: float = DIVERSITY_FLOOR) -> pd.DataFrame:
    """For each of ``methods_`` on ``model``, the grid point (chapter 05's ``grid_val.csv``, means over
    seeds) with the lowest validation TP among those whose Dist-1 keeps at least ``floor`` of the
    base model's -- the setting the tuning rule would choose if it could not buy toxicity with
    repetition. Ties go to the lower perplexity, then fewer steps. Rows ``method``, ``model``,
    ``hparam``, ``value``, ``lr``, ``label`` (``... at matched diversity``); a method with no such
    point is left out."""
    need = [c for c in ("method", "model", "value", "TP_all", "PPL", "dist_1") if c not in grid.columns]
    if need:
        raise ValueError(f"grid lacks column(s) {need}; pass chapter 05's grid_val.csv.")
    part = grid[grid["model"] == model]
    base = part.loc[part["method"] == "base", "dist_1"]
    if base.empty:
        raise ValueError(f"grid has no base-model row for {model!r}; evaluate the base model on the grid first.")
    limit = floor * float(base.mean())
    keys = ["method", "model", "hparam", "value", "lr"]
    means = part[part["method"].isin(methods_)].groupby(keys, dropna=False)[["TP_all", "PPL", "dist_1"]].mean().reset_index()
    kept = means[means["dist_1"] >= limit].sort_values(["TP_all", "PPL", "value"])
    chosen = kept.groupby("method", sort=False).head(1)
    order = {m: i for i, m in enumerate(methods_)}
    chosen = chosen.sort_values("method", key=lambda s: s.map(order)).reset_index(drop=True)
    chosen["label"] = [f"{methods.label(m)} at matched diversity" for m in chosen["method"]]
    return chosen[keys + ["label"]]


def matched_claims(prompts: pd.DataFrame, base_label: str, matched: pd.DataFrame, *, n_boot: int = stats.N_BOOT) -> pd.DataFrame:
    """UniDetox against the base model and against Samples when each is taken at its best checkpoint
    that keeps its diversity (``matched_diversity_settings``), on TP over all domains, paired; a claim
    whose variant has no such checkpoint is *not testable here*."""
    rows = {label: part for label, part in prompts.groupby("label", sort=False)}
    label_of = dict(zip(matched["method"], matched["label"]))
    out = []
    for a, b, claim in (("unidetox", "base", "At matched diversity, UniDetox lowers TP"),
                        ("unidetox", "samples", "At matched diversity, UniDetox lowers TP more than Samples")):
        la, lb = label_of.get(a), base_label if b == "base" else label_of.get(b)
        if la is None or lb is None:
            missing = methods.label(a) if la is None else methods.label(b)
            out.append(dict(claim=claim, verdict="not testable here",
                            detail=f"no checkpoint of {missing} on the grid keeps {DIVERSITY_FLOOR:.0%} of the base model's Dist-1"))
            continue
        d = stats.paired_difference(rows[la], rows[lb], "TP_all", n_boot=n_boot)
        out.append(dict(claim=claim, verdict=stats.verdict(d, expect="lower"), detail=f"{la} - {lb}: {d.interval()}"))
    return pd.DataFrame(out)


def power_table(prompts: pd.DataFrame, metrics: Sequence[str] = ("TP_ID", "TP_OOD", "TP_all"), *,
                n_boot: int = stats.N_BOOT) -> pd.DataFrame:
    """What this design can detect: per metric, the standard error of each variant's paired difference
    from the base model (``stats.paired_difference``, one model's ``per_prompt_settings`` rows), its
    median over the variants, and the smallest true difference a two-sided 5% test detects with 80%
    power at that error (``stats.detectable_difference``, about 2.8 standard errors)."""
    base = prompts.loc[prompts["method"] == "base", "label"].unique()
    if len(base) != 1:
        raise ValueError(f"prompts must hold exactly one base-model variant, found {len(base)}.")
    rows = {label: part for label, part in prompts.groupby("label", sort=False)}
    out = []
    for metric in metrics:
        errors = [stats.paired_difference(part, rows[base[0]], metric, n_boot=n_boot).se
                  for label, part in rows.items() if label != base[0]]
        se = float(np.median(errors))
        out.append({"metric": HEADERS.get(metric, metric), "median standard error": se,
                    "detectable difference (80% power)": stats.detectable_difference(se),
                    "prompts": int(prompts["prompt_id"].nunique()), "seeds": int(prompts["seed"].nunique())})
    return pd.DataFrame(out)


def claims_beside(ours: pd.DataFrame, paper: pd.DataFrame) -> pd.DataFrame:
    """The verdicts of this run (``run_claims``) beside the paper's reading of its table
    (``check_claims``), one row per claim (outer join on the claim's text): ``claim``, ``paper
    reports``, ``this run``, ``this run's numbers``."""
    table = paper[["claim", "verdict"]].rename(columns={"verdict": "paper"}).merge(
        ours.rename(columns={"verdict": "ours"}), on="claim", how="outer", sort=False)
    order: dict[str, int] = {}
    for claim in list(paper["claim"]) + list(ours["claim"]):  # the paper's order, then this run's extras
        order.setdefault(claim, len(order))
    table = table.sort_values("claim", key=lambda s: s.map(order)).reset_index(drop=True)
    return pd.DataFrame({
        "claim": table["claim"],
        "paper reports": table["paper"].fillna("—"),
        "this run": table["ours"].fillna("—"),
        "this run's numbers": table["detail"].fillna("—"),
    })


def with_dagger(frame: pd.DataFrame) -> list[str]:
    """``label`` with " †" where ``meets_ppl_rule`` is False (a per-model baseline whose every grid
    value broke the 1.1 x perplexity ceiling, reported at its lowest-perplexity value)."""
    return [f"{label} †" if not pd.isna(rule) and str(rule) == "False" else label
            for label, rule in zip(frame["label"], frame["meets_ppl_rule"])]


def mark_selected(points: pd.DataFrame, chosen: pd.DataFrame) -> pd.Series:
    """Which of ``points`` (``grid_points``) are a tuned setting of ``chosen`` (rows of
    ``experiments.tuned_settings``: ``model``, ``method``, ``value``, ``lr``); a boolean Series."""
    def keys(frame):
        return list(zip(frame["model"], frame["method"], pd.to_numeric(frame["value"]).round(6),
                        pd.to_numeric(frame["lr"]).fillna(-1).round(12)))
    return pd.Series(keys(points), index=points.index).isin(set(keys(chosen)))


def sensitivity_figure(marked: pd.DataFrame, models: Sequence[str], *, source: str | None = None,
                       factor: float = 1.1, series_order: Sequence[str] | None = None, ncols: int = 2,
                       name=lambda model: model.split("world:")[-1].split("/")[-1]):
    """Figure 2's analogue from ``mark_points``' frame (with ``series`` and ``selected`` columns):
    one panel per model, perplexity (x) against TP (y); one curve per series joining its grid values
    in increasing ``|value|``, the strongest value written beside its last point; circles on the
    selected settings, a star on the base model, a dashed line at the tuning ceiling, the lower-left
    region (TP below the base model's, perplexity <= ``factor`` x the base model's) shaded. A
    logarithmic x axis in every panel. Returns the figure."""
    import matplotlib.pyplot as plt
    import seaborn as sns
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    models = [m for m in models if m in set(marked["model"])]
    series_order = list(series_order or dict.fromkeys(marked["series"]))
    palette = dict(zip(series_order, sns.color_palette("tab10", len(series_order))))
    ncols = max(1, min(ncols, len(models)))
    nrows = -(-len(models) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 4.3 * nrows), squeeze=False)
    for ax, model in zip(axes.flat, models):
        part = marked[marked["model"] == model]
        base_tp, base_ppl, ceiling = (float(part[c].iloc[0]) for c in ("base_TP", "base_PPL", "ceiling"))
        if np.isfinite(base_ppl):
            ax.fill_between([0, factor * base_ppl], 0, base_tp, color="green", alpha=0.08, lw=0)
            ax.scatter([base_ppl], [base_tp], marker="*", s=220, color="black", zorder=5, label="base model")
        for series in series_order:
            line = part[part["series"] == series].assign(order=lambda f: f["value"].abs()).sort_values("order")
            if line.empty:
                continue
            ax.plot(line["PPL"], line["TP"], marker="o", ms=4, lw=1.2, color=palette[series], label=series)
            last = line.iloc[-1]
            ax.annotate(f"{last['value']:g}", (last["PPL"], last["TP"]), textcoords="offset points", xytext=(4, 3),
                        fontsize=7, color=palette[series])
            pick = line[line["selected"]]
            ax.scatter(pick["PPL"], pick["TP"], s=110, facecolors="none", edgecolors=palette[series], linewidths=1.8,
                       zorder=4)
        if np.isfinite(ceiling):
            ax.axvline(ceiling, color="gray", linestyle="--", lw=1)
        xs = [v for v in (*part["PPL"], base_ppl, ceiling) if np.isfinite(v)]
        # One scale in every panel -- logarithmic, as perplexity ratios multiply -- with ticks at 1, 2
        # and 5 per decade written out plainly, so that panels compare and tick labels do not collide.
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlim(min(xs) / 1.1, max(xs) * 1.1)
        ax.set_ylim(-0.02, max([*part["TP"], base_tp if np.isfinite(base_tp) else 0]) + 0.05)
        ax.set(title=name(model) + (" (source)" if model == source else ""), xlabel="perplexity (validation)",
               ylabel="TP, all domains")
    for ax in list(axes.flat)[len(models):]:
        ax.set_visible(False)
    handles, labels = [], []
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), frameon=False)
    fig.tight_layout(rect=(0, 0.06 + 0.02 * (len(labels) > 4), 1, 1))
    return fig


# ------------------------------------------------------------------ prose written for one build
def prose_notice(verdicts: dict[str, str], written_for: dict[str, str]) -> str:
    """A warning callout when this build's verdicts differ from those a chapter's hand-written prose
    was written for; ``""`` when they agree.

    The book's interpretation is written by hand for the committed build. A rebuild is a new draw,
    so a chapter states which verdict labels its prose assumes (``written_for``: claim -> label) and
    shows this notice, naming every claim whose label changed or disappeared, when they no longer hold."""
    changed = [(claim, label, verdicts.get(claim, "not computed")) for claim, label in written_for.items()
               if verdicts.get(claim) != label]
    if not changed:
        return ""
    lines = "\n".join(f"- {claim}: the prose says *{label}*, this build finds *{found}*." for claim, label, found in changed)
    return ("::: {.callout-warning}\n## The prose below was written for another build\n"
            "This build's verdicts differ from those the text of this section interprets; read the tables, "
            "not the prose, where they disagree.\n\n" + lines + "\n:::")
