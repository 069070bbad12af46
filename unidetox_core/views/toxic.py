"""The tables, figures and sentences of the toxic-model chapter: how the toxic copy is made, and how
much more toxic it is than the base model on the validation prompts."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from IPython.display import Markdown

from .. import experiments, paper_tables
from ..data import DGHS_TARGETS
from . import shown_path  # noqa: F401  (the chapter prints the CSV it writes with it)
from .world import warnings_without_paths  # noqa: F401  (the chapter runs models, whose warnings name files)

# What Appendix B.1 and Section 3.3 of the paper report, as far as the library does not hold it:
# the size of the filtered DGHS corpus and the number of validation prompts.
PAPER_DGHS_TEXTS = 25_150
PAPER_VAL_PROMPTS = 896

# The two toxicity scorers' column tags in an evaluation row: TP_ID is the main scorer's, TP2_ID the second's.
SCORER_TAGS = {"": "toxicity_scorer", "2": "second_toxicity_scorer"}


# ------------------------------------------------------------------------------------------ the recipe


def toxic_texts_used(P: dict, n_texts: int) -> int:
    """How many toxic texts the fine-tuning reads: all, or the profile's ``toxic_max_texts`` if set and smaller."""
    return min(n_texts, P["toxic_max_texts"]) if P["toxic_max_texts"] else n_texts


def recipe_table(P: dict, paper: dict, n_texts: int) -> pd.DataFrame:
    """The paper's toxic-model recipe beside this profile's, one row per setting (all as text, so
    that numbers and names can share a column)."""
    paper_corpus = f"DGHS, hate, {len(DGHS_TARGETS)} targets ({PAPER_DGHS_TEXTS:,} texts)"
    return pd.DataFrame(
        [
            ("base model", paper_tables.MODELS[0], P["source_model"]),
            ("toxic corpus", paper_corpus, f"{P['toxic_corpus']} ({toxic_texts_used(P, n_texts):,} texts)"),
            ("epochs", paper["toxic_epochs"], P["toxic_epochs"]),
            ("batch size", paper["toxic_batch_size"], P["toxic_batch_size"]),
            ("learning rate (AdamW)", paper["toxic_lr"], P["toxic_lr"]),
            ("max tokens per text", "not stated", P["toxic_max_length"]),
        ],
        columns=["setting", "paper reports", f"this run ({P['profile']})"],
    ).astype(str).set_index("setting")


# ------------------------------------------------------------------------- base and toxic continuations


def base_and_toxic(source: str, base_path, toxic_path) -> dict[str, dict]:
    """The two evaluated variants of the source model, by name: the base model and its toxic copy."""
    return {"base": experiments.variant("base", source, base_path),
            "toxic": experiments.variant("toxic", source, toxic_path)}


def validation_runs(P: dict, variants: dict[str, dict]) -> pd.DataFrame:
    """One evaluation row per variant and evaluation seed on the validation prompts (variants in
    the given order, seeds inner), with ``model_version`` naming the variant."""
    pairs = [(name, seed) for name in variants for seed in P["seeds"]]
    evaluated = experiments.evaluate_specs(P, [(variants[name], "val", seed) for name, seed in pairs], progress=False)
    return pd.DataFrame([{**row, "model_version": name} for row, (name, _) in zip(evaluated, pairs)])


def run_size_lines(P: dict, paper: dict, n_prompts: int) -> list[str]:
    """This run's evaluation size beside the paper's: prompts, continuations, tokens and seeds."""
    this_run = (f"this run: {n_prompts} validation prompts x {P['eval_n_continuations']} continuations of <= "
                f"{P['eval_max_new_tokens']} tokens, {len(P['seeds'])} seeds {P['seeds']}")
    in_paper = (f"paper:    {PAPER_VAL_PROMPTS} validation prompts x {paper['eval_n_continuations']} continuations "
                f"of <= {paper['eval_max_new_tokens']} tokens, {len(paper['seeds'])} seeds")
    return [this_run, in_paper]


def mean_std_text(values: pd.Series) -> str:
    """``"0.12 ± 0.03"`` (population std, as the paper's code) over several seeds; the mean alone
    for one seed, where a std of 0 would claim a spread that was never measured."""
    values = values.astype(float)
    if len(values) > 1:
        return f"{values.mean():.2f} ± {values.std(ddof=0):.2f}"
    return f"{values.mean():.2f}"


def runs_table(runs: pd.DataFrame, P: dict) -> pd.DataFrame:
    """Per variant and toxicity scorer: TP and EMT on ID and OOD prompts and the mean score, each
    as mean ± std over the evaluation seeds."""
    table = []
    for name, group in runs.groupby("model_version", sort=False):
        for tag, scorer_key in SCORER_TAGS.items():
            table.append({
                "model": name, "scorer": P[scorer_key],
                **{f"{m} {d}": mean_std_text(group[f"{m}{tag}_{d}"]) for m in ("TP", "EMT") for d in ("ID", "OOD")},
                "mean score": mean_std_text(group[f"mean_score{tag}"]),
            })
    return pd.DataFrame(table)


def change_phrase(before: float, after: float) -> str:
    """``"rose from 0.06 to 0.20"``, ``"fell from ..."`` or ``"stayed at 0.06"``, judged on the two
    printed decimals so that the words never contradict the numbers they show."""
    old, new = f"{before:.2f}", f"{after:.2f}"
    if old == new:
        return f"stayed at {old}"
    return f"{'rose' if after > before else 'fell'} from {old} to {new}"


def verdict(base: pd.Series, toxic: pd.Series) -> str:
    """Whether the toxic model is more toxic by the mean score under both scorers, one, or neither.

    The mean score, not TP, decides: TP saturates (a scorer that calls most prompts toxic for the
    base model cannot show an increase), the mean over all continuations still can."""
    rose = [toxic[column] > base[column] for column in ("mean_score", "mean_score2")]
    if all(rose):
        return "more toxic under both scorers"
    return "more toxic under one scorer only" if any(rose) else "not more toxic under either scorer"


def toxicity_change_sentence(runs: pd.DataFrame, P: dict) -> Markdown:
    """From base to toxic model, averaged over domains and seeds: how each scorer's TP and mean
    score moved, the verdict, and how the evaluator's perplexity of the continuations moved."""
    summary = runs.groupby("model_version")[["TP_all", "EMT_all", "mean_score", "TP2_all", "mean_score2", "PPL"]].mean()
    b, t = summary.loc["base"], summary.loc["toxic"]

    def change(metric: str) -> str:
        return change_phrase(b[metric], t[metric])

    return Markdown(
        f"Averaged over all domains and seeds, the main scorer's ({P['toxicity_scorer']}) TP {change('TP_all')} "
        f"and its mean score {change('mean_score')}; the second scorer's ({P['second_toxicity_scorer']}) TP "
        f"{change('TP2_all')} and its mean score {change('mean_score2')}. By the mean scores, the toxic model is "
        f"**{verdict(b, t)}**. The evaluator's perplexity of the continuations {change('PPL')}.")


# ------------------------------------------------------------------- per-prompt maxima and examples


def seed_continuations(P: dict, variants: dict[str, dict], seed: int) -> dict[str, pd.DataFrame]:
    """The scored validation continuations of each variant for one evaluation seed (from the cache)."""
    return {name: experiments.continuations(P, spec, "val", seed, progress=False) for name, spec in variants.items()}


def prompt_maxima(frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Per variant and prompt, the highest score of its continuations under each scorer (``score``,
    ``score2``), with the prompt's ``domain`` and the variant's name in ``model``: TP and EMT are
    functions of exactly these maxima."""
    return pd.concat([
        f.groupby("prompt_id")[["score", "score2"]].max().assign(model=name, domain=f.groupby("prompt_id")["domain"].first())
        for name, f in frames.items()
    ])


def plot_max_score_curves(maxima: pd.DataFrame, P: dict):
    """For each scorer, the share of prompts whose most toxic continuation scores above x, one
    curve per variant, with the 0.5 threshold of TP dashed."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for ax, (column, scorer) in zip(axes, (("score", P["toxicity_scorer"]), ("score2", P["second_toxicity_scorer"]))):
        sns.ecdfplot(data=maxima, x=column, hue="model", complementary=True, ax=ax, lw=2)
        ax.axvline(0.5, color="grey", ls="--", lw=1)
        # A margin on every side: a curve at share 1 (every prompt above x) must not hide in the frame.
        ax.set(title=scorer, xlabel="x: most toxic continuation's score", ylabel="share of prompts above x",
               xlim=(-0.03, 1.03), ylim=(-0.04, 1.06))
    plt.tight_layout()
    return fig


def worst_continuations(frame: pd.DataFrame) -> pd.DataFrame:
    """Each prompt's most toxic continuation by the main scorer (the one TP and EMT count), indexed
    by ``prompt_id``; the first such continuation on ties."""
    return frame.loc[frame.groupby("prompt_id")["score"].idxmax()].set_index("prompt_id")


def worst_examples(frames: dict[str, pd.DataFrame], n: int, seed: int) -> pd.DataFrame:
    """For ``n`` prompts drawn at random (seeded), the prompt and the most toxic continuation of
    the base and the toxic model, each with its main-scorer score (two decimals)."""
    base_worst, toxic_worst = worst_continuations(frames["base"]), worst_continuations(frames["toxic"])
    chosen = base_worst.sample(min(n, len(base_worst)), random_state=seed).index
    return pd.DataFrame({
        "prompt": base_worst.loc[chosen, "prompt"],
        "base continuation": base_worst.loc[chosen, "continuation"],
        "base score": base_worst.loc[chosen, "score"].round(2),
        "toxic continuation": toxic_worst.loc[chosen, "continuation"],
        "toxic score": toxic_worst.loc[chosen, "score"].round(2),
    }).reset_index(drop=True)
