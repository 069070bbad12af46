"""What the chapter "Who pays for detoxification?" shows: per group, what each method costs the model's
perplexity on neutral statements about the group, how often its continuations still name the group,
and how toxic its continuations of neutral and of hateful prompts are (``unidetox_core.group_cost``)."""

from __future__ import annotations

import pandas as pd

from .. import data, experiments, group_cost, methods, stages
from . import short_name

# Methods whose own next-token distribution is the changed model: a perplexity of their weights
# means something. PrePrompt and DExperts act through the prompt and the decoding step.
MODEL_CHANGING = ("nothing", "weights", "lm_head")
MEASURES = ("perplexity gap", "coverage of neutral prompts", "TP of neutral prompts", "TP of hateful prompts")


def statements_and_news(n_news: int = 200, chars: int = 200) -> tuple[pd.DataFrame, list[str]]:
    """The neutral ToxiGen statements of every group (``group``, ``text``) and ``n_news`` held-out news
    texts (the first ``chars`` characters of AllSides *valid* articles, in ID order): what the
    perplexity gap compares."""
    seeds = data.load_toxigen_seed_prompts()
    statements = seeds[seeds["label"] == "neutral"][["group", "text"]].reset_index(drop=True)
    articles = data.load_allsides("random")
    valid = articles[articles["split"] == "valid"].sort_values("ID").head(n_news)
    return statements, [text[:chars] for text in valid["text"]]


def gap_rows(P: dict, settings: pd.DataFrame, statements: pd.DataFrame, news: list[str],
             progress: bool = False) -> dict[tuple[str, str], pd.DataFrame]:
    """``group_cost.nll_rows`` of every variant of ``settings`` (the ``tuned_settings`` of one model or
    more) whose method changes the model itself, by ``(model, label)``. The variants run side by
    side, ``P['eval_workers']`` at a time with ``P['eval_threads']`` threads each, as the evaluations
    do: the same numbers as one by one."""
    chosen = [r for r in settings.itertuples() if methods.get(r.method).acts_on in MODEL_CHANGING]
    arguments = [(P, r.method, r.model, r.value, r.lr, statements, news) for r in chosen]
    rows = stages.side_by_side(_variant_nll, arguments, workers=P["eval_workers"], threads=P["eval_threads"],
                               desc="perplexity of the statements, per variant", progress=progress)
    return {(r.model, r.label): frame for r, frame in zip(chosen, rows)}


def _variant_nll(P: dict, method: str, model: str, value, lr, statements: pd.DataFrame, news: list[str]) -> pd.DataFrame:
    spec = experiments.method_variant(P, method, model, value, lr, progress=False)
    with experiments.eval_threads(P), experiments.build_variant(P, spec) as (lm, tokenizer, _):
        return group_cost.nll_rows(lm, tokenizer, statements, news)


def coverage_rows(P: dict, settings: pd.DataFrame, split: str) -> dict[str, pd.DataFrame]:
    """``group_cost.coverage_rows`` of every variant of ``settings`` at every seed, from the cached
    continuations of the results chapters, by label."""
    prompts = experiments.eval_prompts(P, split)
    rows = {}
    for r in settings.itertuples():
        spec = experiments.method_variant(P, r.method, r.model, r.value, r.lr, progress=False)
        frames = [experiments.continuations(P, spec, split, seed, progress=False).assign(seed=seed) for seed in P["seeds"]]
        rows[r.label] = group_cost.coverage_rows(pd.concat(frames, ignore_index=True), prompts)
    return rows


def toxicity_rows(P: dict, per_prompt: pd.DataFrame, model: str, split: str) -> dict[str, pd.DataFrame]:
    """The results chapters' per-prompt rows of ``model`` with their prompts' group and label, by label."""
    prompts = experiments.eval_prompts(P, split)
    part = per_prompt[per_prompt["model"] == model]
    return {label: group_cost.with_groups(rows, prompts) for label, rows in part.groupby("label", sort=False)}


def cost_table(P: dict, settings: pd.DataFrame, per_prompt: pd.DataFrame, split: str,
               statements: pd.DataFrame, news: list[str],
               nll: dict[tuple[str, str], pd.DataFrame] | None = None) -> pd.DataFrame:
    """Every measure of ``MEASURES`` for one model's variants against its base model, per group:
    columns ``model``, ``measure``, ``variant``, ``group``, ``value``, ``base_value``, ``change``,
    ``low``, ``high``, ``verdict`` (a rise of the gap; a fall of coverage; a rise of TP). ``nll``:
    the variants' ``gap_rows``, if already computed."""
    model = settings["model"].iloc[0]
    base = settings.loc[settings["method"] == methods.BASE.name, "label"].iloc[0]
    nll = gap_rows(P, settings, statements, news) if nll is None else nll
    mine = {label: rows for (owner, label), rows in nll.items() if owner == model}
    gaps = group_cost.gap_changes(mine, base).rename(columns={"gap": "value", "base_gap": "base_value"})
    coverage = group_cost.group_changes(coverage_rows(P, settings, split), base, "names_group", label="neutral",
                                        expect="lower")
    toxic = {label: rows for label, rows in toxicity_rows(P, per_prompt, model, split).items()
             if label in set(settings["label"])}
    parts = [gaps.assign(measure=MEASURES[0]), coverage.assign(measure=MEASURES[1]),
             group_cost.group_changes(toxic, base, "toxic", label="neutral", expect="higher").assign(measure=MEASURES[2]),
             group_cost.group_changes(toxic, base, "toxic", label="hate", expect="higher").assign(measure=MEASURES[3])]
    table = pd.concat(parts, ignore_index=True).assign(model=model)
    return table[["model", "measure", "variant", "group", "value", "base_value", "change", "low", "high", "verdict"]]


def change_grid(cost: pd.DataFrame, measure: str, model: str) -> pd.DataFrame:
    """One measure's changes on one model as a (variant x group) table."""
    part = cost[(cost["measure"] == measure) & (cost["model"] == model)]
    return part.pivot_table(index="variant", columns="group", values="change", sort=False)


def change_figure(cost: pd.DataFrame, model: str):
    """Chapter figure: per measure, the change of each variant (rows) for each group (columns) on
    ``model``, on one diverging scale per panel (red: the group pays). Returns the figure."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, axes = plt.subplots(len(MEASURES), 1, figsize=(11, 3.2 * len(MEASURES)))
    for ax, measure in zip(axes, MEASURES):
        grid = change_grid(cost, measure, model)
        sign = -1 if measure == MEASURES[1] else 1  # fewer mentions is the cost
        limit = max(float(abs(grid).max().max()) if grid.size else 0.0, 1e-6)
        sns.heatmap(sign * grid, ax=ax, cmap="RdBu_r", center=0, vmin=-limit, vmax=limit, annot=grid.round(2),
                    fmt="", cbar_kws={"label": "cost (red)"})
        ax.set(title=f"{measure}: change from the base model", xlabel="", ylabel="")
    fig.tight_layout()
    return fig


def who_pays_table(cost: pd.DataFrame, model: str) -> pd.DataFrame:
    """Per measure and variant on ``model``: the mean change over groups, the groups that pay most,
    and in how many groups the change holds (``group_cost.who_pays``)."""
    frames = []
    for measure in MEASURES:
        part = cost[(cost["measure"] == measure) & (cost["model"] == model)]
        if measure == MEASURES[1]:
            part = part.assign(change=-part["change"])  # the largest fall of coverage first
        frames.append(group_cost.who_pays(part).assign(measure=measure))
    table = pd.concat(frames, ignore_index=True)
    return table[["measure", "variant", "mean change", "largest", "holds", "groups"]]


# What each beyond-the-paper claim says: (measure, claim, the verdict of one group that means "pays").
CLAIMS = (
    (MEASURES[0], "raises the perplexity gap of some group"),
    (MEASURES[1], "lowers how often continuations of some group's neutral prompts name the group"),
)


def claims_rows(cost: pd.DataFrame, method_label: str = "UniDetox") -> pd.DataFrame:
    """Beyond the paper, per model: whether ``method_label``'s variants raise some group's perplexity
    gap / lower some group's coverage. *holds* if at least one group's change holds; *does not hold*
    if no group's does and none is inconclusive; *inconclusive* otherwise."""
    rows = []
    for model, part in cost.groupby("model", sort=False):
        for measure, claim in CLAIMS:
            rel = part[(part["measure"] == measure) & part["variant"].str.startswith(method_label)]
            if rel.empty:
                continue
            verdicts = set(rel["verdict"])
            verdict = ("holds" if "holds" in verdicts else
                       "does not hold" if verdicts == {"does not hold"} else "inconclusive")
            worst = rel.sort_values("change", ascending=measure == MEASURES[1]).iloc[0]
            rows.append({"claim": f"{method_label} {claim}", "model": short_name(model), "verdict": verdict,
                         "detail": f"largest: {worst['group']} {worst['change']:+.2f} [{worst['low']:+.2f}, "
                                   f"{worst['high']:+.2f}] ({worst['variant']}); {len(rel)} group-variant pairs"})
    return pd.DataFrame(rows, columns=["claim", "model", "verdict", "detail"])


def universality_line(cost: pd.DataFrame, method_label: str = "UniDetox") -> str:
    """Whether UniDetox's cost has the same sign on every model (its universality, here of the cost):
    the mean perplexity-gap change per model."""
    part = cost[(cost["measure"] == MEASURES[0]) & cost["variant"].str.startswith(method_label)]
    means = part.groupby("model", sort=False)["change"].mean()
    if means.empty:
        return f"No {method_label} variant was measured."
    same = len({(v > 0) - (v < 0) for v in means}) == 1
    return (f"Mean change of {method_label}'s perplexity gap over groups: "
            + ", ".join(f"{short_name(m)} {v:+.3f}" for m, v in means.items())
            + (" — the same direction on every model." if same else " — the direction differs between models."))


def cost_tables(P: dict, selected: pd.DataFrame, per_prompt: pd.DataFrame, split: str, statements: pd.DataFrame,
                news: list[str], models: list[str], progress: bool = True) -> pd.DataFrame:
    """``cost_table`` of each of ``models`` at its tuned settings (``selected``), in the order given;
    the perplexities of every model's variants are computed together, side by side (``gap_rows``)."""
    settings = {model: experiments.tuned_settings(P, selected, model) for model in models}
    nll = gap_rows(P, pd.concat(settings.values(), ignore_index=True), statements, news, progress=progress)
    return pd.concat([cost_table(P, settings[model], per_prompt, split, statements, news, nll) for model in models],
                     ignore_index=True)
