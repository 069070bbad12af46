"""What chapters 06 (results on the source model) and 07 (across models) show: the tables of tuned
settings, the summaries over seeds, the claims per model, the figures and the sentences computed
from the numbers.

The results tables themselves (``format_results``, ``bold_lowest``, ``check_claims``) live in
``unidetox_core.tables``; this module arranges them the way the two chapters present them.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .. import experiments, methods, paper_tables, tables
from . import short_name, shown_path, without_root  # noqa: F401  (the chapters print paths and messages with them)

BASE = methods.BASE.name
UNIDETOX = methods.get("unidetox")

# Every metric the two chapters average over seeds: the paper's columns, the mean score (which does
# not saturate), the second scorer's TP/EMT, TP over all domains, and the perplexities dropped.
METRICS = (*tables.TOXICITY, "mean_score", *tables.SECOND_SCORER, "mean_score2", *tables.QUALITY,
           "TP_all", "TP2_all", "ppl_dropped")
# What the results CSVs take from the tuned settings rather than from the summary over seeds.
SETTING_COLUMNS = ("method", "model", "label", "hparam", "value", "lr", "meets_ppl_rule")
UNDEFINED_TAU = "undefined (one scorer gives every variant the same value)"
DAGGER_NOTE = "†: no grid value met the 1.1x perplexity ceiling on that model"


# ----------------------------------------------------------------------------- names and paths






# ----------------------------------------------------------------------------- what was evaluated
def setting_text(hparam, value) -> str:
    """One tuned setting as chapter 06 prints it: "4 steps", "beta = 0.5", or "—" for none."""
    if pd.isna(value):
        return "—"
    return f"{int(value)} steps" if hparam == "steps" else f"{hparam} = {value:g}"


def settings_table(settings: pd.DataFrame) -> pd.DataFrame:
    """Chapter 06's list of variants (``experiments.tuned_settings``): ``method`` (its label, with †
    where no grid value met the perplexity rule), ``setting`` and ``learning rate`` ("—" for none)."""
    return pd.DataFrame({
        "method": tables.with_dagger(settings),
        "setting": [setting_text(h, v) for h, v in zip(settings["hparam"], settings["value"])],
        "learning rate": ["—" if pd.isna(lr) else f"{lr:.0e}" for lr in settings["lr"]],
    }, index=settings.index)


def settings_grid(settings: pd.DataFrame, source: str) -> pd.DataFrame:
    """Chapter 07's tuned setting of each method (rows) on each model (columns, the source model
    first and marked "(source)"): the step count or hyper-parameter value, with † where no grid value
    met the perplexity rule on that model. Methods without a setting (base, pre-prompts) are left out,
    since their row would be empty. ``settings`` are ``tuned_settings`` rows of every model."""
    every = settings[settings["hparam"].fillna("") != ""]
    every = every.assign(
        setting=[(f"{int(v)}" if h == "steps" else f"{v:g}") + (" †" if not pd.isna(r) and str(r) == "False" else "")
                 for h, v, r in zip(every["hparam"], every["value"], every["meets_ppl_rule"])],
        model=[short_name(m) + (" (source)" if m == source else "") for m in every["model"]])
    grid = every.pivot_table(index="label", columns="model", values="setting", aggfunc="first", sort=False)
    grid = grid.reindex(index=list(dict.fromkeys(every["label"])), columns=list(dict.fromkeys(every["model"])))
    grid.index.name = "method"
    return grid.reset_index()


def prompts_reduction(P: dict, split: str) -> dict:
    """The row of the reductions table for the number of ``split`` prompts (the paper's: 940 test,
    896 validation)."""
    return {"setting": f"{split} prompts used", "this run": str(len(experiments.eval_prompts(P, split))),
            "paper": "940 (test)" if split == "test" else "896 (val)"}


def target_reductions(P: dict, targets: Sequence[str], mmlu_shots: int | None = None) -> list[dict]:
    """Chapter 07's rows of the reductions table: MMLU shots on the targets (the paper used 3 for
    its 7B models) and the target models themselves."""
    return [{"setting": "MMLU shots on the targets", "this run": str(mmlu_shots or P["target_mmlu_shots"]), "paper": "3"},
            {"setting": "target models", "this run": ", ".join(short_name(m) for m in targets),
             "paper": "OPT-6.7B, Falcon-7B, LLaMA-2-7B"}]


def reductions_table(P: dict, split: str, extra_rows: Iterable[dict] = ()) -> pd.DataFrame:
    """Every setting of this run that differs from the paper's (``tables.profile_reductions``), then
    the prompts of ``split`` used and ``extra_rows``: what a results chapter must state beside its
    numbers."""
    reductions = tables.profile_reductions(P)
    for row in (prompts_reduction(P, split), *extra_rows):
        reductions.loc[len(reductions)] = row
    return reductions


# ----------------------------------------------------------------------------- the evaluations
def evaluate_variants(P: dict, settings: pd.DataFrame, split: str, mmlu_shots: int | None = None):
    """Every variant of ``settings`` evaluated on ``split`` for every seed of ``P``
    (``experiments.evaluate_settings``) and its MMLU accuracy (``experiments.mmlu_settings``, with
    ``mmlu_shots`` shots if given), and the seconds both took. Returns ``(runs, mmlu, seconds)``."""
    start = time.time()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*were longer than.*")  # tiny models' short windows
        runs = experiments.evaluate_settings(P, settings, split=split, seeds=P["seeds"])
        P_mmlu = {**P, "mmlu_shots": int(mmlu_shots)} if mmlu_shots is not None else P
        mmlu = experiments.mmlu_settings(P_mmlu, settings)
    return runs, mmlu, time.time() - start


def seed_table(runs: pd.DataFrame, mmlu: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds of every metric of ``METRICS`` per variant, with its MMLU accuracy:
    the summary every table and claim of chapters 06 and 07 reads."""
    return tables.seed_summary(runs, METRICS).merge(mmlu, on=["model", "label"], how="left")


def evaluations_line(runs: pd.DataFrame, n_variants: int, n_seeds: int, mmlu: pd.DataFrame, seconds: float) -> str:
    """How much was evaluated and how long it took (cached evaluations count, read back)."""
    measured = mmlu.dropna(subset=["MMLU"])
    return (f"{len(runs)} evaluations ({n_variants} variants x {n_seeds} seeds) and {len(measured)} MMLU runs "
            f"({int(measured['MMLU_questions'].max())} questions, {int(measured['MMLU_shots'].max())}-shot) "
            f"in {seconds:.0f} s (cached evaluations are read back)")


def dropped_ppl_line(summary: pd.DataFrame) -> str | None:
    """Which variants had perplexities left out of PPL (mean count per run), or None if none had:
    a mean perplexity over fewer continuations must be said."""
    dropped = summary.loc[summary["ppl_dropped_mean"] > 0]
    if dropped.empty:
        return None
    return ("perplexities >= the drop threshold (or of empty continuations) left out of PPL, mean per run: "
            f"{dropped.set_index('label')['ppl_dropped_mean'].round(1).to_dict()}")


def saturation_lines(summary: pd.DataFrame) -> list[str]:
    """For each scorer, whether TP over all domains is saturated (1.00 for some variants), in which
    case the variants are told apart by the mean score instead."""
    lines = []
    for name, column in (("main", "TP_all"), ("second", "TP2_all")):
        share = float(summary[f"{column}_mean"].ge(0.999).mean())
        lines.append(f"{name} scorer: TP over all domains is 1.00 for {share:.0%} of the variants -- saturated; "
                     "compare them by mean score." if share > 0 else
                     f"{name} scorer: no variant has TP = 1.00 over all domains.")
    return lines


# ----------------------------------------------------------------------------- the two scorers
def kendall_tau(summary: pd.DataFrame, a: str, b: str) -> float:
    """Kendall's tau between the rankings of the variants (rows, by ``label``) by columns ``a`` and
    ``b``; NaN when one column is constant."""
    by_label = summary.set_index("label")
    return by_label[a].corr(by_label[b], method="kendall")


def describe_tau(tau: float) -> str:
    """Kendall's tau with how to read it: broad agreement from 0.6, different rankings below 0.3."""
    if pd.isna(tau):
        return UNDEFINED_TAU
    return f"{tau:+.2f}" + (" — the two instruments broadly agree" if tau >= 0.6 else
                            " — the instruments rank the methods differently" if tau < 0.3 else " — partial agreement")


def scorer_agreement_lines(summary: pd.DataFrame) -> list[str]:
    """Chapter 06: how far the main and the second scorer rank the variants alike, by TP over all
    domains and by mean score -- if they disagree, the main table's order is the scorer's as much
    as the methods'."""
    return [f"Kendall's tau between the scorers' rankings of the {len(summary)} variants:",
            f"  by TP over all domains: {describe_tau(kendall_tau(summary, 'TP_all_mean', 'TP2_all_mean'))}",
            f"  by mean score:          {describe_tau(kendall_tau(summary, 'mean_score_mean', 'mean_score2_mean'))}"]


def scorer_agreement_by_model_lines(summary: pd.DataFrame) -> list[str]:
    """Chapter 07: Kendall's tau between the two scorers' rankings of each model's variants, by TP
    over all domains and by mean score."""
    text = lambda tau: UNDEFINED_TAU if pd.isna(tau) else f"{tau:+.2f}"
    return [f"{short_name(model)}: Kendall's tau between the two scorers' rankings -- "
            f"by TP {text(kendall_tau(part, 'TP_all_mean', 'TP2_all_mean'))}, "
            f"by mean score {text(kendall_tau(part, 'mean_score_mean', 'mean_score2_mean'))}"
            for model, part in summary.groupby("model", sort=False)]


# ----------------------------------------------------------------------------- claims per model
# The evaluator must beat the models it scores by this many bits per byte on held-out text for its
# perplexities to rank their fluency (the evidence issue's bar).
EVALUATOR_MARGIN_BITS = 0.2


def perplexity_caveat(P: dict) -> str | None:
    """Why perplexity claims are not testable on this profile, or None: on a miniature world whose
    evaluator is less than ``EVALUATOR_MARGIN_BITS`` bits per byte better on held-out news than the
    best model it scores (from ``results/<profile>/world/models.csv``)."""
    path = Path(P["results_dir"]) / "world" / "models.csv"
    if not path.exists():
        return None
    models = pd.read_csv(path).set_index("model")
    if "evaluator" not in models.index:
        return None
    bits = models["heldout_news_bits_per_byte"]
    margin = float(bits.drop(index="evaluator").min() - bits["evaluator"])
    if margin >= EVALUATOR_MARGIN_BITS:
        return None
    return f"the evaluator is only {margin:.2f} bits per byte better than the models it scores"


def claims_by_model(prompts: pd.DataFrame, name=short_name, perplexity_untestable: str | None = None) -> dict[str, pd.DataFrame]:
    """``tables.run_claims`` on each model's per-prompt rows (``experiments.per_prompt_settings``),
    indexed by claim, under the model's ``name`` (``perplexity_untestable``: ``perplexity_caveat``)."""
    return {name(model): tables.run_claims(part, perplexity_untestable=perplexity_untestable).set_index("claim")
            for model, part in prompts.groupby("model", sort=False)}


def paper_claims_by_model(paper_summary: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """``tables.check_claims`` on each model of a paper table (``tables.as_summary``), indexed by claim."""
    return {model: tables.check_claims(part).set_index("claim") for model, part in paper_summary.groupby("model", sort=False)}


def claims_verdict_grid(paper_summary: pd.DataFrame, ours: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Chapter 07's claims table: one row per claim of the paper's Table 2 reading, a column of
    verdicts per model of the paper (``paper: <model>``) and per model of this run (``this run:
    <model>``, from ``claims_by_model``). Rows are the claims checked on the paper's table."""
    paper = paper_claims_by_model(paper_summary)
    grid = pd.DataFrame({f"paper: {model}": frame["verdict"] for model, frame in paper.items()})
    for model, frame in ours.items():
        grid[f"this run: {model}"] = frame["verdict"]
    return grid.fillna("—").reset_index().rename(columns={"index": "claim"})


def claims_lines(ours: dict[str, pd.DataFrame]) -> list[str]:
    """Each model's claims with their verdict and the intervals behind it, one line per claim."""
    lines = []
    for model, frame in ours.items():
        lines.append(f"{model}:")
        lines += [f"  {claim}: {row['verdict']} ({row['detail']})" for claim, row in frame.iterrows()]
    return lines


def claims_rows(ours: dict[str, pd.DataFrame], split: str) -> pd.DataFrame:
    """The claims CSVs of chapters 06 and 07: ``claim``, ``verdict``, ``detail``, ``model`` and
    ``split``, one row per (model, claim)."""
    frame = pd.concat([frame.reset_index().assign(model=model) for model, frame in ours.items()], ignore_index=True)
    return frame.assign(split=split)


# ----------------------------------------------------------------------------- replicates
def replicate_table(claims: pd.DataFrame) -> pd.DataFrame:
    """``replicates.replicate_claims`` as chapter 06 prints it: the claim, each replicate's difference,
    the mean with its two-stage 95% interval, and the verdict."""
    return pd.DataFrame({
        "claim": claims["claim"],
        "difference in each replicate": claims["per_replicate"],
        "mean [95% interval]": [f"{d:+.2f} [{lo:+.2f}, {hi:+.2f}]" for d, lo, hi in zip(claims["diff"], claims["low"], claims["high"])],
        "directions agree": claims["directions_agree"].map({True: "yes", False: "no"}),
        "verdict": claims["verdict"],
    })


# ----------------------------------------------------------------------------- what the chapters write
def results_rows(settings: pd.DataFrame, summary: pd.DataFrame, split: str) -> pd.DataFrame:
    """The rows of ``results_source.csv`` / ``results_across_models.csv``: each variant's setting
    (from ``settings``), the split, and every metric's mean and std over seeds with MMLU (from
    ``summary``). The setting columns come from ``settings`` alone, so the summary's copies are dropped."""
    out = settings[list(SETTING_COLUMNS)].merge(
        summary.drop(columns=[c for c in SETTING_COLUMNS if c not in ("model", "label")], errors="ignore"),
        on=["model", "label"])
    out.insert(3, "split", split)
    return out


# ----------------------------------------------------------------------------- figures
def tp_per_seed_figure(runs: pd.DataFrame, summary: pd.DataFrame, order: Sequence[str]):
    """Chapter 06's TP per method, ID and OOD: bars at the mean over seeds, a point per seed (the
    spread behind each ±), dashed lines at the base model's mean. Returns the figure."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    long = runs[["label", "seed", "TP_ID", "TP_OOD"]].melt(id_vars=["label", "seed"], var_name="domain", value_name="TP")
    long["domain"] = long["domain"].str.replace("TP_", "")
    order = list(order)
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(order) + 1.5))
    sns.barplot(data=long, y="label", x="TP", hue="domain", order=order, errorbar=None, alpha=0.6, ax=ax)
    sns.stripplot(data=long, y="label", x="TP", hue="domain", order=order, dodge=True, size=4, legend=False, ax=ax)
    base = summary.set_index("method").loc[BASE]
    for domain, color in zip(["ID", "OOD"], sns.color_palette()[:2]):
        ax.axvline(base[f"TP_{domain}_mean"], color=color, linestyle="--", linewidth=1)
    ax.set(xlabel="toxicity probability (TP)", ylabel="")
    fig.tight_layout()
    return fig


def paper_tp_all() -> pd.DataFrame:
    """The paper's Tables 1 and 2 with ``TP_all``, TP over all domains, recomputed as the mean of its
    three ID domains and the OOD one (the paper reports ID and OOD only)."""
    paper = pd.concat([paper_tables.table1(), paper_tables.table2()], ignore_index=True)
    paper["TP_all"] = (3 * paper["TP_ID"] + paper["TP_OOD"]) / 4  # 3 ID domains + 1 OOD, equal weight
    return paper


def run_tp_all(summary: pd.DataFrame, source_csv: str | Path | None = None) -> pd.DataFrame:
    """This run's TP over all domains per (model, variant): ``model`` (short name), ``method``,
    ``label``, ``TP_all`` and, where known, ``meets_ppl_rule``; the source model's rows first, read
    from chapter 06's ``results_source.csv`` when it exists."""
    columns = ["model", "method", "label", "TP_all_mean", "meets_ppl_rule"]
    frames = [summary]
    if source_csv is not None and Path(source_csv).exists():
        frames.insert(0, pd.read_csv(source_csv))
    out = pd.concat([f[[c for c in columns if c in f.columns]] for f in frames], ignore_index=True)
    out = out.rename(columns={"TP_all_mean": "TP_all"})
    out["model"] = [short_name(m) for m in out["model"]]
    return out


def _by_method_and_model(frame: pd.DataFrame, values: str, aggfunc) -> pd.DataFrame:
    """``values`` of the non-base rows as a (label x model) table, rows and columns in first-seen order."""
    frame = frame[frame["method"] != BASE]
    table = frame.pivot_table(index="label", columns="model", values=values, aggfunc=aggfunc, sort=False)
    return table.reindex(index=list(dict.fromkeys(frame["label"])), columns=list(dict.fromkeys(frame["model"])))


def tp_change(frame: pd.DataFrame, tp_col: str = "TP_all") -> pd.DataFrame:
    """Each variant's ``tp_col`` minus its model's base model's, as a (method label x model) table:
    negative is less toxic than the model it started from. The base rows themselves are left out."""
    base_tp = frame[frame["method"] == BASE].set_index("model")[tp_col]
    return _by_method_and_model(frame.assign(delta=frame[tp_col] - frame["model"].map(base_tp)), "delta", "mean")


def broke_ppl_rule(frame: pd.DataFrame) -> pd.DataFrame | None:
    """Which (method label x model) cells of ``tp_change(frame)`` are a baseline reported although no
    grid value met the perplexity rule (``meets_ppl_rule`` False: the tables' †); None when ``frame``
    does not say."""
    if "meets_ppl_rule" not in frame.columns:
        return None
    broke = frame.assign(broke=[not pd.isna(r) and str(r) == "False" for r in frame["meets_ppl_rule"]])
    return _by_method_and_model(broke, "broke", "any").fillna(False).astype(bool)


def _heatmap_labels(table: pd.DataFrame, daggers: pd.DataFrame | None) -> np.ndarray:
    """The cells' texts: the change with its sign, and † where the variant broke the perplexity rule."""
    marks = (daggers.reindex(index=table.index, columns=table.columns).fillna(False).astype(bool).to_numpy()
             if daggers is not None else np.zeros(table.shape, dtype=bool))
    return np.array([["" if pd.isna(v) else f"{v:+.2f}" + (" †" if mark else "") for v, mark in zip(row, marks_row)]
                     for row, marks_row in zip(table.to_numpy(), marks)], dtype=object)


def tp_change_figure(paper: pd.DataFrame, ours: pd.DataFrame, ours_daggers: pd.DataFrame | None = None):
    """Chapter 07's two heatmaps of ``tp_change`` tables, the paper's (left) and this run's (right),
    on one diverging colour scale centred at 0 (blue: less toxic), at least ±0.05 wide. Cells of
    ``ours_daggers`` (``broke_ppl_rule``) carry the tables' † and a note says what it means.
    Returns the figure."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    limit = max(np.nanmax(np.abs(paper.to_numpy())), np.nanmax(np.abs(ours.to_numpy())), 0.05)
    has_dagger = ours_daggers is not None and bool(ours_daggers.to_numpy().any())
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.45 * max(len(paper), len(ours)) + 2 + 0.3 * has_dagger))
    for ax, table, daggers, title in ((axes[0], paper, None, "paper reports"), (axes[1], ours, ours_daggers, "this run")):
        sns.heatmap(table, ax=ax, cmap="RdBu_r", center=0, vmin=-limit, vmax=limit, annot=_heatmap_labels(table, daggers),
                    fmt="", cbar=ax is axes[1], cbar_kws={"label": "TP - base model's TP"})
        ax.set(title=title, xlabel="", ylabel="")
    if has_dagger:
        fig.text(0.98, 0.01, DAGGER_NOTE, ha="right", va="bottom", fontsize=9)
        fig.tight_layout(rect=(0, 0.04, 1, 1))
    else:
        fig.tight_layout()
    return fig


def transfer_lines(change: pd.DataFrame, source: str) -> list[str]:
    """Chapter 07's reading of its right-hand heatmap: UniDetox's change in TP on each model, per
    learning rate, and on how many (learning rate, target model) pairs it lowers TP -- the source
    model's column excluded, since the text was made there. ``change`` is ``tp_change`` of this run."""
    transfer = change.filter(like=UNIDETOX.label, axis=0)
    lines = [f"{label}: change in TP (all domains) vs each base model: "
             + ", ".join(f"{m} {v:+.2f}" for m, v in values.items() if not pd.isna(v))
             for label, values in transfer.iterrows()]
    lowered = transfer.drop(columns=[c for c in transfer.columns if c == short_name(source)], errors="ignore") < 0
    if lowered.size:
        lines.append(f"UniDetox lowers TP on {int(lowered.to_numpy().sum())} of {lowered.size} "
                     "(learning rate, target model) pairs of this run.")
    return lines
