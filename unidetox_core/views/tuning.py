"""Chapter 5, tuning on validation: the grids it evaluates, the two tuning rules applied to them, and
the tables, figures and sentences that show the chosen settings.

The rules themselves are ``baselines.select_unidetox`` (UniDetox and Samples, once on the source
model) and ``baselines.select_baseline`` under ``baselines.ppl_ceiling`` (the per-model baselines);
this module runs them over the chapter's grid and lays out what they chose.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from .. import baselines, experiments, methods, paper_tables
from ..profiles import PROFILES
from ..stages import slug

UNIDETOX, SAMPLES, BASE = methods.UNIDETOX.name, methods.SAMPLES.name, methods.BASE.name
PREPROMPTS = methods.names(acts_on="prompt")
PER_MODEL = methods.names(tuned_on="each")

# How the grids table names each registry hyper-parameter; LM-Steer's values multiply epsilon = 1e-3.
HPARAM_TEXT = {"steps": "steps x learning rate", "epsilon_multiplier": "epsilon multiplier (x 1e-3)",
               "beta": "beta", "lambda": "lambda"}


# ------------------------------------------------------------------------------ the grids
def grid_parameters(P: dict, grid_seeds=None, samples_lrs=None, targets_full_grid=None) -> tuple[list, list, bool]:
    """``(grid_seeds, samples_lrs, targets_full_grid)``: the chapter's parameters, each ``None`` replaced
    by its default from profile ``P`` -- the profile's first two seeds (a choice made on one seed's
    continuations picks, among near-equal settings, the luckiest draw), the profile's ``samples_lrs``
    (the paper tunes Samples at 1e-5 only), and the profile's ``targets_full_grid`` (set on the paper
    profile, where Figure 2 plots every point)."""
    seeds = list(P["seeds"][:2]) if grid_seeds is None else list(grid_seeds)
    lrs = list(P["samples_lrs"]) if samples_lrs is None else list(samples_lrs)
    full = P["targets_full_grid"] if targets_full_grid is None else bool(targets_full_grid)
    return seeds, lrs, full


def span(values, fmt: str = "{:g}") -> str:
    """A grid as text: up to six values listed, a longer one as its first two values, "...", its last
    and its size -- the paper's 20-value grids would not fit in a table cell."""
    values = list(values)
    if len(values) <= 6:
        return ", ".join(fmt.format(v) for v in values)
    return f"{fmt.format(values[0])}, {fmt.format(values[1])}, ..., {fmt.format(values[-1])} ({len(values)} values)"


def paper_lrs(method: str) -> list[float]:
    """The learning rates the paper reports ``method`` at (its Table 6), in the paper's order."""
    table = paper_tables.table6()
    return list(dict.fromkeys(table.loc[table["method"] == method, "lr"]))


def grids_table(P: dict, samples_lrs) -> pd.DataFrame:
    """What is tuned, one row per method: the hyper-parameter, the paper's grid (App. B.3), this run's,
    and the model it is tuned on. UniDetox comes first, as the method the others are measured against;
    the pre-prompts close the table with nothing to tune."""
    paper = PROFILES["paper"]
    tuned = sorted((m for m in methods.REGISTRY.values() if m.hparam), key=lambda m: m.name != UNIDETOX)
    rows = []
    for m in tuned:
        if m.fine_tuned:
            lrs = P["detox_lrs"] if m.name == UNIDETOX else samples_lrs
            paper_grid = f"{span(paper[m.grid])} x {span(paper_lrs(m.name))}"
            this_run = f"{span(sorted(P[m.grid]))} x {span(lrs)}"
        else:
            paper_grid, this_run = span(paper[m.grid]), span(P[m.grid])
        tuned_on = "source model, then reused" if m.tuned_on == "source" else "each model"
        rows.append((m.label, HPARAM_TEXT[m.hparam], paper_grid, this_run, tuned_on))
    prompts = " / ".join(methods.get(name).preprompt for name in PREPROMPTS)
    rows.append((f"PrePrompt {prompts}", "none", "-", "-", "-"))
    columns = ["method", "hyper-parameter", "paper grid", f"this run ({P['profile']})", "tuned on"]
    return pd.DataFrame(rows, columns=columns).set_index("method")


def grid_summary(P: dict, n_val: int, grid_seeds, samples_lrs) -> str:
    """Three lines on the scale of this run's grid beside the paper's: validation prompts (``n_val``),
    seeds, continuations, the models, and Samples' learning rates (the paper used its smaller one only)."""
    paper = PROFILES["paper"]
    return "\n".join([
        f"validation prompts: {n_val} (paper: 896); evaluation seeds per grid point: {grid_seeds}; "
        f"continuations per prompt: {P['eval_n_continuations']} (paper: {paper['eval_n_continuations']})",
        f"source model: {P['source_model']}; target models: {list(P['target_models'])}",
        f"Samples learning rates: {samples_lrs} (the paper fine-tuned Samples at 1e-5 only, its smaller rate; "
        f"UniDetox here uses {P['detox_lrs']})",
    ])


def build_grid_needs(P: dict, tuned_models, samples_lrs) -> None:
    """Builds (or finds in the cache) what the grid evaluates: every model's toxic copy and LM-Steer
    matrix, and the UniDetox and Samples checkpoints of ``tuned_models`` at each learning rate. Done
    here, one after the other, so that the evaluations after it only read them."""
    from tqdm.auto import tqdm

    models = [P["source_model"], *P["target_models"]]
    texts = {UNIDETOX: experiments.distilled_text(P, "unidetox"), SAMPLES: experiments.distilled_text(P, "samples")}
    needs = ([("toxic model", m, None) for m in models] + [("LM-Steer matrix", m, None) for m in models]
             + [(UNIDETOX, m, lr) for m in tuned_models for lr in P["detox_lrs"]]
             + [(SAMPLES, m, lr) for m in tuned_models for lr in samples_lrs])
    for what, model, lr in tqdm(needs, desc="toxic models, LM-Steer matrices, fine-tuning"):
        if what == "toxic model":
            experiments.toxic_model(P, model, progress=False)
        elif what == "LM-Steer matrix":
            experiments.steering_matrix(P, model, progress=False)
        else:
            experiments.detox_checkpoints(P, model, texts[what], lr, progress=False)


def grid_jobs(P: dict, samples_lrs, targets_full_grid: bool) -> list[tuple]:
    """Every grid point to evaluate, as ``(method, model, value, lr)``: the base models, UniDetox's and
    Samples' step grids on the source model first (the baselines' perplexity limit depends on the
    steps chosen there), on the targets too when ``targets_full_grid``, then the pre-prompts and every
    value of the per-model baselines on every model. The order is the row order of ``grid_val.csv``."""
    source, targets = P["source_model"], list(P["target_models"])
    models = [source, *targets]
    steps = sorted(P["detox_steps"])
    fine_tuned = {UNIDETOX: P["detox_lrs"], SAMPLES: samples_lrs}

    def step_grid(on):
        return [(method, model, s, lr)
                for model in on for method, lrs in fine_tuned.items() for lr in lrs for s in steps]

    jobs = [(BASE, m, None, None) for m in models]
    jobs += step_grid([source]) + (step_grid(targets) if targets_full_grid else [])
    jobs += [(pp, m, None, None) for m in models for pp in PREPROMPTS]
    jobs += [(method, m, v, None) for m in models for method, (_, grid) in baselines.baseline_grid(P).items()
             for v in grid]
    return jobs


def chosen_step_jobs(models, *choices: pd.DataFrame) -> list[tuple]:
    """``(method, model, steps, lr)`` of each setting in ``choices`` (``baselines.select_unidetox``
    frames) on each of ``models``: what the targets need when they do not get the full step grid."""
    return [(r.method, m, r.value, r.lr) for m in models for choice in choices for r in choice.itertuples()]


def evaluate_grid(P: dict, jobs, grid_seeds, desc: str) -> list[dict]:
    """The validation rows of ``jobs`` (``(method, model, value, lr)``) at every seed of ``grid_seeds``,
    in the order of ``jobs``; ``P['eval_workers']`` evaluations at a time, cached ones read back."""
    return experiments.evaluate_methods(P, [(method, model, value, lr, "val", seed)
                                            for method, model, value, lr in jobs for seed in grid_seeds], desc=desc)


def grid_frame(rows: list[dict]) -> pd.DataFrame:
    """``grid_val.csv``: the evaluated rows, with the columns that name a grid point and its toxicity
    first so that the file reads left to right."""
    grid = pd.DataFrame(rows)
    first = ["method", "model", "hparam", "value", "lr", "split", "seed", "TP", "EMT"]
    return grid[first + [c for c in grid.columns if c not in first]]


# ---------------------------------------------------------------- UniDetox and Samples (source)
def base_point(grid: pd.DataFrame, model: str) -> pd.Series:
    """The base ``model``'s validation ``TP`` and ``PPL``, averaged over its rows (seeds): the dashed
    line the fine-tuned points are compared with."""
    return grid[(grid["model"] == model) & (grid["method"] == BASE)][["TP", "PPL"]].mean()


def source_tuning_figure(grid: pd.DataFrame, source: str, *choices: pd.DataFrame):
    """Validation TP and perplexity against fine-tuning steps on the ``source`` model, one line per
    method and learning rate, the settings of ``choices`` (``baselines.select_unidetox`` frames) circled
    and the base model dashed. Returns the figure."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    src = grid[(grid["model"] == source) & grid["method"].isin([UNIDETOX, SAMPLES])].copy()
    src = src.groupby(["method", "lr", "value"], as_index=False)[["TP", "PPL"]].mean()
    src["learning rate"] = src["lr"].map(lambda v: f"{v:g}")
    src["method"] = src["method"].map(methods.label)
    base, picks = base_point(grid, source), pd.concat(choices)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for ax, column in zip(axes, ("TP", "PPL")):
        sns.lineplot(data=src, x="value", y=column, hue="method", style="learning rate", markers=True, ax=ax,
                     legend=ax is axes[-1])
        ax.scatter(picks["value"], picks[column], s=160, facecolors="none", edgecolors="black", zorder=5)
        ax.axhline(base[column], color="grey", ls="--", lw=1)
        ax.set(xlabel="fine-tuning steps", ylabel="validation TP" if column == "TP" else "perplexity")
    axes[-1].legend(bbox_to_anchor=(1.02, 1), loc="upper left")
    plt.tight_layout()
    return fig


def choice_sentence(choice: pd.DataFrame, name: str, steps) -> str:
    """What the source-model rule picked for one method (``choice``: ``baselines.select_unidetox``),
    per learning rate, with a warning when the pick sits on an edge of the step grid ``steps`` --
    there the grid may have stopped short of the best step."""
    steps = sorted(steps)
    several = len(steps) > 1
    parts = []
    for r in choice.itertuples():
        edge = (" - the last step of the grid, so more steps might lower TP further" if several and r.value == steps[-1]
                else " - the first step of the grid" if several and r.value == steps[0] else "")
        parts.append(f"{int(r.value)} steps at learning rate {r.lr:g} (TP {r.TP:.3f}, perplexity {r.PPL:.1f}{edge})")
    best = choice[choice["best"]].iloc[0]
    return (f"For {name} the rule picks " + "; ".join(parts)
            + f". The lowest TP overall is at learning rate {best['lr']:g}.")


def source_choice_text(unidetox_choice: pd.DataFrame, samples_choice: pd.DataFrame, base: pd.Series, steps) -> str:
    """The paragraph under the source-model figure: both methods' picks (``choice_sentence``), the base
    source model's numbers (``base``: ``base_point``) and the paper's own picks for comparison."""
    return (choice_sentence(unidetox_choice, methods.label(UNIDETOX), steps) + " "
            + choice_sentence(samples_choice, methods.label(SAMPLES), steps)
            + f" The base source model is at TP {base['TP']:.3f}, perplexity {base['PPL']:.1f}. "
            "The paper chose 3,000 steps at 5e-5 and 5,000 at 1e-5 for UniDetox, and 2,000 steps for Samples, "
            "out of 1,000 ... 10,000.")


# ---------------------------------------------------------------- the per-model baselines
def tune_baselines(grid: pd.DataFrame, models, source: str, factor: float,
                   with_base: bool = False) -> tuple[dict, pd.DataFrame]:
    """``(ceilings, chosen)``: each model's perplexity ceiling (``baselines.ppl_ceiling``, ``factor`` x
    UniDetox's highest perplexity at the steps chosen on ``source``; with ``with_base``, x the larger
    of that and the base model's) and one row per (model, per-model baseline) chosen under it
    (``baselines.select_baseline``). The rule's warning for a method with no value under the ceiling
    is silenced: its row says so in ``meets_ppl_rule``, and the chapter tells."""
    ceilings, chosen = {}, []
    for model in models:
        ceilings[model] = baselines.ppl_ceiling(grid, model, factor=factor, source_model=source, with_base=with_base)
        for method in PER_MODEL:
            with warnings.catch_warnings(record=True):
                warnings.simplefilter("always")
                chosen.append(baselines.select_baseline(grid, method, model, ceilings[model]))
    return ceilings, pd.DataFrame(chosen)


def baseline_rule_figure(grid: pd.DataFrame, models, source: str, unidetox_choice: pd.DataFrame,
                         per_model: pd.DataFrame, ceilings: dict):
    """One panel per model: validation TP against perplexity of every grid value of the per-model
    baselines, UniDetox at the steps of ``unidetox_choice`` (crosses), the chosen value of each baseline
    (``per_model``, circled) and the model's perplexity ceiling (dotted). Returns the figure."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    agg = baselines.aggregate_results(grid)
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 4), squeeze=False)
    for ax, model in zip(axes[0], models):
        pts = agg[(agg["model"] == model) & agg["method"].isin(PER_MODEL)].copy()
        pts["method"] = pts["method"].map(methods.label)
        sns.scatterplot(data=pts, x="PPL", y="TP", hue="method", style="method", ax=ax, s=50,
                        legend=ax is axes[0][-1])
        ud = agg[(agg["model"] == model) & (agg["method"] == UNIDETOX)]
        ud = ud.merge(unidetox_choice[["lr", "value"]], on=["lr", "value"])
        ax.scatter(ud["PPL"], ud["TP"], marker="x", color="black", s=70, label="UniDetox (chosen steps)")
        sel = per_model[per_model["model"] == model]
        ax.scatter(sel["PPL"], sel["TP"], s=180, facecolors="none", edgecolors="black")
        ax.axvline(ceilings[model], color="black", ls=":", lw=1)
        ax.set(title=slug(model) + (" (source)" if model == source else ""), xlabel="perplexity",
               ylabel="validation TP")
    axes[0][-1].legend(bbox_to_anchor=(1.02, 1), loc="upper left")
    plt.tight_layout()
    return fig


def rule_comparison(grid: pd.DataFrame, ceilings: dict, per_model: pd.DataFrame, alt_ceilings: dict,
                    alt_per_model: pd.DataFrame) -> pd.DataFrame:
    """Per model: the base model's validation perplexity, the paper's ceiling and whether it lies below
    it, the alternative ceiling (1.1 x the larger of UniDetox's and the base model's), and each
    baseline's choice under both rules (``setting_text``, † where no value met the ceiling)."""
    agg = baselines.aggregate_results(grid)
    rows = []
    for model, ceiling in ceilings.items():
        base_ppl = float(agg[(agg["model"] == model) & (agg["method"] == "base")]["PPL"].max())
        row = {"model": slug(model), "base PPL": round(base_ppl, 1), "paper's ceiling": round(ceiling, 1),
               "below base": ceiling < base_ppl, "alternative ceiling": round(alt_ceilings[model], 1)}
        for method in PER_MODEL:
            paper = per_model[(per_model["model"] == model) & (per_model["method"] == method)].iloc[0]
            alt = alt_per_model[(alt_per_model["model"] == model) & (alt_per_model["method"] == method)].iloc[0]
            row[f"{methods.label(method)}: paper's rule"] = setting_text(method, paper["value"], meets_ppl_rule=paper["meets_ppl_rule"])
            row[f"{methods.label(method)}: alternative"] = setting_text(method, alt["value"], meets_ppl_rule=alt["meets_ppl_rule"])
        rows.append(row)
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- the chosen settings
def selected_settings(grid: pd.DataFrame, models, source: str, unidetox_choice: pd.DataFrame,
                      samples_choice: pd.DataFrame, per_model: pd.DataFrame, ceilings: dict) -> pd.DataFrame:
    """``selected.csv``: one row per chosen setting and model -- UniDetox at each learning rate and
    Samples at its best one (both chosen on ``source``, the same on every model), the pre-prompts
    (nothing to choose) and each per-model baseline's choice -- with where it was tuned, the model's
    perplexity ceiling and the setting's own validation TP and perplexity on that model (empty where
    it was not evaluated there)."""
    steps = methods.get(UNIDETOX).hparam  # Samples tunes the same
    rows = []
    for model in models:
        for r in unidetox_choice.itertuples():
            rows.append(dict(method=UNIDETOX, model=model, hparam=steps, value=int(r.value), lr=float(r.lr),
                             meets_ppl_rule=np.nan, best=bool(r.best)))
        r = samples_choice[samples_choice["best"]].iloc[0]
        rows.append(dict(method=SAMPLES, model=model, hparam=steps, value=int(r["value"]), lr=float(r["lr"]),
                         meets_ppl_rule=np.nan, best=True))
        for pp in PREPROMPTS:
            rows.append(dict(method=pp, model=model, hparam="", value=np.nan, lr=np.nan, meets_ppl_rule=np.nan,
                             best=True))
        for r in per_model[per_model["model"] == model].itertuples():
            rows.append(dict(method=r.method, model=model, hparam=r.hparam, value=float(r.value), lr=np.nan,
                             meets_ppl_rule=bool(r.meets_ppl_rule), best=True))
    selected = pd.DataFrame(rows)
    selected["tuned_on"] = np.where(selected["method"].isin(methods.names(tuned_on="source")), source,
                                    np.where(selected["method"].isin(PER_MODEL), selected["model"], ""))
    selected["ppl_ceiling"] = selected["model"].map(ceilings)
    keys = ["method", "model", "value", "lr"]  # NaN matches NaN in a pandas merge (pre-prompts: no value, no lr)
    val = baselines.aggregate_results(grid)[keys + ["TP", "PPL"]].rename(columns={"TP": "val_TP", "PPL": "val_PPL"})
    return selected.astype({"value": float, "lr": float}).merge(val.astype({"value": float, "lr": float}),
                                                                on=keys, how="left")


def setting_text(method: str, value, lr=np.nan, meets_ppl_rule=np.nan) -> str:
    """A chosen setting as Table 6 prints it: steps for UniDetox and Samples (Samples with its learning
    rate when given, as it has no row of its own), "-0.3 ε" for LM-Steer, the plain value otherwise; " †" when
    no grid value met the perplexity rule."""
    if methods.get(method).hparam == "epsilon_multiplier":
        text = f"{value:g} ε"
    elif methods.get(method).fine_tuned:
        text = f"{int(value)}" + (f" (lr {lr:g})" if method == SAMPLES and not pd.isna(lr) else "")
    else:
        text = f"{value:g}"
    return text + (" †" if not pd.isna(meets_ppl_rule) and not bool(meets_ppl_rule) else "")


def _paper_settings(method: str, lr=np.nan) -> list[str]:
    """The paper's Table 6 row of ``method`` (at ``lr`` for UniDetox), one text per paper model."""
    table = paper_tables.table6()
    rows = table[table["method"] == method]
    if method == UNIDETOX:
        rows = rows[rows["lr"] == lr]
    by_model = dict(zip(rows["model"], rows["value"]))
    return [setting_text(method, by_model[m]) for m in paper_tables.MODELS]


def table6_beside_paper(selected: pd.DataFrame, P: dict) -> pd.DataFrame:
    """The analogue of the paper's Table 6: one row per tuned method (UniDetox per learning rate, named
    with the paper's rate in the same position), this run's chosen setting per model (``setting_text``)
    and then the paper's, from ``paper_tables.table6()``."""
    source, rates = P["source_model"], paper_lrs(UNIDETOX)
    table = {}
    for r in selected[~selected["method"].isin(PREPROMPTS)].itertuples():
        if r.method == UNIDETOX:
            i = list(P["detox_lrs"]).index(r.lr)
            name = f"{methods.label(UNIDETOX)} lr {r.lr:g}" + (f" (paper's {rates[i]:g})" if i < len(rates) else "")
            paper_row = _paper_settings(UNIDETOX, rates[i]) if i < len(rates) else ["-"] * len(paper_tables.MODELS)
        else:
            name, paper_row = methods.label(r.method), _paper_settings(r.method)
        table.setdefault(name, {f"paper reports: {p}": v for p, v in zip(paper_tables.MODELS, paper_row)})
        table[name][slug(r.model) + (" (source)" if r.model == source else "")] = \
            setting_text(r.method, r.value, r.lr, r.meets_ppl_rule)
    t6 = pd.DataFrame.from_dict(table, orient="index")
    ours = [c for c in t6.columns if not c.startswith("paper")]
    t6 = t6[ours + [c for c in t6.columns if c.startswith("paper")]]
    t6.index.name = "method"
    return t6


def chosen_metrics(selected: pd.DataFrame) -> pd.DataFrame:
    """Every chosen setting on every model with its validation TP and perplexity, the model's ceiling
    and whether the setting met it; methods and models by their short names."""
    view = selected.copy()
    view["setting"] = [setting_text(r.method, r.value, r.lr, r.meets_ppl_rule) if methods.get(r.method).hparam else "-"
                       for r in view.itertuples()]
    view["model"] = view["model"].map(slug)
    view = view[["model", "method", "setting", "val_TP", "val_PPL", "ppl_ceiling", "meets_ppl_rule"]]
    return view.assign(method=view["method"].map(methods.label))


def rule_notes(selected: pd.DataFrame, ceilings: dict) -> str:
    """The paragraphs after the chosen settings: which per-model baselines broke the perplexity rule on
    which model (or that none did), then per model (in the order of ``ceilings``) its ceiling, the
    tuned baselines' validation TP and UniDetox's at its chosen steps."""
    per_model = selected[selected["method"].isin(PER_MODEL)]
    broken = per_model[per_model["meets_ppl_rule"].map(lambda v: not pd.isna(v) and not bool(v))]
    if len(broken):
        notes = ["No grid value met the perplexity rule for "
                 + ", ".join(f"{methods.label(r.method)} on {slug(r.model)}" for r in broken.itertuples())
                 + "; those rows carry `meets_ppl_rule = False` and are marked † in the results chapters."]
    else:
        notes = ["Every per-model baseline had at least one grid value within its perplexity ceiling."]
    for model, ceiling in ceilings.items():
        tuned = per_model[per_model["model"] == model]
        ud = selected[(selected["model"] == model) & (selected["method"] == UNIDETOX)]
        notes.append(f"On {slug(model)}, the ceiling is {ceiling:.1f}; the tuned baselines reach validation TP "
                     + ", ".join(f"{methods.label(r.method)} {r.val_TP:.3f}" for r in tuned.itertuples())
                     + "; UniDetox at its chosen steps " + ", ".join(f"{r.val_TP:.3f}" for r in ud.itertuples()) + ".")
    return "\n\n".join(notes)
