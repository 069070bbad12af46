"""What the distillation chapter shows: its texts, their statistics and toxicity, and the controls.

The controls are texts that differ from UniDetox's in one respect each (Samples, a looser alpha,
top-k, the cut alone, clean news), fine-tuned and evaluated the same way at one learning rate; the
functions here build those texts and evaluations from ``experiments`` and turn them into the
chapter's tables, figures and sentences.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from .. import baselines as B
from .. import experiments as E
from .. import stats as S
from ..tables import TP_MARGIN

# The settings of the paper's Appendix B.3, by the profile keys that hold them.
RECIPE = [("texts", "distill_n_texts"), ("max new tokens per text", "distill_max_new_tokens"),
          ("alpha (plausibility cut)", "distill_alpha"), ("batch size", "distill_batch_size"),
          ("temperature", "distill_temperature"), ("top-k (0 = off)", "distill_top_k")]

# Texts whose key is also the name of the method that trains on them: their checkpoints are built
# as the tuning chapter builds them (``experiments.method_variant``), so the two chapters share one
# cache; the other texts are fine-tuned here from their CSV.
METHOD_TEXTS = (B.UNIDETOX, B.SAMPLES)

# Table 3 of the paper: Detoxify's mean score of the distilled text, +- std over five seeds.
PAPER_TABLE3 = {"unidetox": "0.003 ± 0.001", "samples": "0.008 ± 0.002"}

CONTROL_COLUMNS = {"steps": "steps", "TP_ID": "TP ID", "TP_OOD": "TP OOD", "EMT_all": "EMT",
                   "mean_score": "mean score", "TP2_all": "TP2", "mean_score2": "mean score 2", "PPL": "PPL",
                   "dist_1": "Dist-1", "dist_3": "Dist-3"}

# A checkpoint counts as keeping its diversity when its Dist-1 is at least this share of the base model's.
DIVERSITY_FLOOR = 0.9


# ------------------------------------------------------------------------------------ the texts
def comparison_settings(P: dict, alt_top_k, control_lr, control_steps):
    """``(alt_top_k, control_lr, control_steps)`` with the chapter's defaults filled in where a
    parameter is None: top-k 50 when the profile samples without top-k (what the official code did),
    else 0; the profile's first learning rate; its whole step grid (sorted either way)."""
    alt_top_k = (50 if P["distill_top_k"] == 0 else 0) if alt_top_k is None else alt_top_k
    control_lr = P["detox_lrs"][0] if control_lr is None else control_lr
    control_steps = sorted(P["detox_steps"]) if control_steps is None else sorted(control_steps)
    return alt_top_k, control_lr, control_steps


def recipe_table(P: dict, paper: dict) -> pd.DataFrame:
    """The distillation settings the paper reports beside this profile's, one row per setting, as
    text (so that 0.1 and 128 sit in one column without a common dtype)."""
    return pd.DataFrame([(name, str(paper[k]), str(P[k])) for name, k in RECIPE],
                        columns=["setting", "paper reports", f"this run ({P['profile']})"]).set_index("setting")


def text_kinds(P: dict, alt_alpha: float, alt_top_k: int) -> dict[str, tuple[str, dict]]:
    """The generated texts of the chapter: ``{key: (label, arguments of experiments.distilled_text)}``,
    UniDetox first; the labels name the setting that differs, since the tables show only labels."""
    return {
        "unidetox": ("UniDetox", dict(kind="unidetox")),
        "samples": ("Samples", dict(kind="samples")),
        "unidetox_alpha": (f"UniDetox, alpha = {alt_alpha}", dict(kind="unidetox", alpha=alt_alpha)),
        "unidetox_topk": (f"UniDetox, top-k = {alt_top_k}", dict(kind="unidetox", top_k=alt_top_k)),
        "cut_only": (f"cut only, alpha = {P['distill_alpha']}", dict(kind="cut_only")),
    }


def text_labels(kinds: dict[str, tuple[str, dict]]) -> dict[str, str]:
    """``{key: label}`` of the generated texts of ``kinds`` and of the clean news."""
    return {key: label for key, (label, _) in kinds.items()} | {"clean_news": "clean news"}


def make_texts(P: dict, kinds: dict[str, tuple[str, dict]], distill_seed: int) -> dict[str, Path]:
    """The CSV of every text of ``kinds`` at ``distill_seed``, and of the clean news, by key.

    Also samples UniDetox's and Samples' texts at the profile's other seeds, which the chapter on the
    text reads: all of them go to ``experiments.distilled_texts`` at once so that it can sample them
    side by side (``eval_workers`` at a time) instead of one after the other."""
    more_seeds = [dict(kind=kind, seed=seed) for kind in ("unidetox", "samples") for seed in P["seeds"]
                  if seed != distill_seed]
    made = E.distilled_texts(P, [dict(seed=distill_seed, **kwargs) for _, kwargs in kinds.values()] + more_seeds)
    paths = dict(zip(kinds, made))
    paths["clean_news"] = E.clean_text(P, seed=distill_seed)
    return paths


def text_metadata(paths: dict[str, Path]) -> dict[str, dict]:
    """The record each text was saved with (the JSON beside its CSV: settings, lengths, speed), by key."""
    return {key: json.loads(Path(path).with_suffix(".json").read_text()) for key, path in paths.items()}


def shorten(text, n: int = 300) -> str:
    """``text`` on one line, cut to ``n`` characters with an ellipsis: table cells stay readable."""
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[:n] + " …"


def example_table(texts: dict[str, list[str]], labels: dict[str, str], keys, n_examples: int) -> pd.DataFrame:
    """The first ``n_examples`` texts of each of ``keys``, shortened, with the text's label."""
    return pd.DataFrame([{"text": labels[k], "example": shorten(t)} for k in keys for t in texts[k][:n_examples]])


def text_stats(texts: dict[str, list[str]], meta: dict[str, dict], labels: dict[str, str]) -> pd.DataFrame:
    """One row per text (``text`` = key): its decoding settings, count, lengths, end-of-text share,
    sampling support and speed, from the saved records; NaN where a record has no such entry.

    The clean news was not generated, so it has no alpha or top-k; Samples has no cut, so its alpha
    (saved as 0 or None) shows as NaN rather than as a cut of zero."""
    rows = []
    for key, items in texts.items():
        m = meta[key]
        generated = key != "clean_news"
        rows.append({
            "text": key, "label": labels[key],
            "alpha": m.get("alpha") if generated and m.get("alpha") is not None else np.nan,
            "top_k": m.get("top_k", np.nan) if generated else np.nan,
            "n_texts": len(items),
            "mean_tokens": m.get("mean_length", np.nan),
            "mean_words": float(np.mean([len(t.split()) for t in items])),
            "eos_fraction": m.get("eos_fraction", np.nan),
            "mean_support": m.get("mean_support", np.nan),
            "tokens_per_s": m.get("tokens_per_s", np.nan),
            "wall_time_s": m.get("wall_time_s", np.nan),
        })
    return pd.DataFrame(rows)


def word_lengths(texts: dict[str, list[str]], labels: dict[str, str]) -> pd.DataFrame:
    """One row per text item: the text's label and the item's length in words."""
    return pd.DataFrame([{"text": labels[k], "words": len(t.split())} for k, items in texts.items() for t in items])


def plot_lengths(texts: dict[str, list[str]], labels: dict[str, str]):
    """Box plot of words per item, one box per text; returns the figure."""
    fig, ax = plt.subplots(figsize=(8, 3.5))
    sns.boxplot(data=word_lengths(texts, labels), y="text", x="words", ax=ax, color="lightsteelblue")
    ax.set(ylabel="", xlabel="words per text")
    plt.tight_layout()
    return fig


# ---------------------------------------------------------------------------- toxicity of the text
def with_text_toxicity(stats: pd.DataFrame, texts: dict[str, list[str]], scorer, scorer2) -> pd.DataFrame:
    """``stats`` with each text's mean score and share of items scored above 0.5 under ``scorer``
    (``mean_score``, ``share_above_half``) and ``scorer2`` (the same with a 2); ``stats`` is left as it was."""
    stats = stats.copy()
    for key, items in texts.items():
        s1, s2 = np.asarray(scorer(items)), np.asarray(scorer2(items))
        i = stats.index[stats["text"] == key][0]
        stats.loc[i, ["mean_score", "share_above_half", "mean_score2", "share_above_half2"]] = [
            s1.mean(), (s1 > 0.5).mean(), s2.mean(), (s2 > 0.5).mean()]
    return stats


def toxicity_table(stats: pd.DataFrame, P: dict) -> pd.DataFrame:
    """The Table 3 analogue: each text's toxicity under both scorers (named in the columns), beside the
    paper's Detoxify numbers where the paper has one ("—" otherwise), rounded to 4 places."""
    toxicity = stats[["text", "label", "mean_score", "share_above_half", "mean_score2", "share_above_half2"]].copy()
    toxicity["paper reports (Detoxify)"] = toxicity["text"].map(PAPER_TABLE3).fillna("—")
    toxicity = toxicity.drop(columns="text").set_index("label").round(4)
    toxicity.columns = [f"mean ({P['toxicity_scorer']})", "share > 0.5", f"mean ({P['second_toxicity_scorer']})",
                        "share > 0.5 (2nd)", "paper reports (Detoxify)"]
    return toxicity


def toxicity_sentence(stats: pd.DataFrame, P: dict) -> str:
    """Markdown: UniDetox's and Samples' mean scores under both scorers (numbers only; the chapter
    reads them)."""
    t = stats.set_index("text")
    return (f"UniDetox's text scores {t.loc['unidetox', 'mean_score']:.4f} on average under {P['toxicity_scorer']} "
            f"and {t.loc['unidetox', 'mean_score2']:.4f} under {P['second_toxicity_scorer']}; the Samples text "
            f"{t.loc['samples', 'mean_score']:.4f} and {t.loc['samples', 'mean_score2']:.4f}.")


def support_sentence(stats: pd.DataFrame, P: dict, alt_alpha: float, alt_top_k: int) -> str:
    """Markdown: the average sampling support of every generated text (numbers only)."""
    support = stats.set_index("text")["mean_support"]
    return (f"Average support per step: {support['unidetox']:.1f} tokens for UniDetox (alpha = {P['distill_alpha']}, "
            f"top-k {P['distill_top_k'] or 'off'}), {support['unidetox_alpha']:.1f} with alpha = {alt_alpha}, "
            f"{support['unidetox_topk']:.1f} with top-k {alt_top_k or 'off'}, {support['cut_only']:.1f} for the cut "
            f"alone and {support['samples']:.1f} for plain Samples (the whole vocabulary).")


# ------------------------------------------------------------------- fine-tuning on every text
def control_variant(P: dict, key: str, path: Path, steps: int, lr: float) -> dict:
    """The source model fine-tuned for ``steps`` steps at ``lr`` on text ``key`` (saved at ``path``).

    UniDetox and Samples get the very variants the tuning chapter evaluates, so the two chapters
    share one cache; the other texts are fine-tuned from their CSV and named by their key."""
    source = P["source_model"]
    if key in METHOD_TEXTS:
        return E.method_variant(P, key, source, steps, lr, progress=False)
    checkpoint = E.detox_checkpoints(P, source, path, lr, progress=False, upto=steps)[steps]
    return E.variant(key, source, checkpoint, "steps", steps, lr=float(lr))


def evaluate_controls(P: dict, paths: dict[str, Path], labels: dict[str, str], stats: pd.DataFrame,
                      steps, lr: float, seed: int) -> pd.DataFrame:
    """The base model and the source model fine-tuned on every text at each of ``steps``, evaluated on
    the validation prompts at ``seed``: one row per checkpoint (``text`` = key, ``"none"`` for the
    base model at step 0), with each text's ``alpha`` and ``top_k`` from ``stats``.

    Fine-tunes one text after the other, then evaluates side by side (``eval_workers`` at a time);
    the rows are then read back from the cache. TP and EMT repeat TP_all and EMT_all for every row,
    as ``experiments.evaluate_method`` names them."""
    from tqdm.auto import tqdm

    source = P["source_model"]
    jobs = [(key, s) for key in paths for s in steps]
    specs = [E.method_variant(P, B.BASE, source)] + [control_variant(P, key, paths[key], s, lr)
                                                       for key, s in tqdm(jobs, desc="fine-tuning")]
    _ = E.evaluate_specs(P, [(spec, "val", seed) for spec in specs], desc="controls (text x steps)")
    rows = [{**E.evaluate_method(P, B.BASE, source, seed=seed), "text": "none", "label": "base model", "steps": 0}]
    for key, s in jobs:
        if key in METHOD_TEXTS:
            row = E.evaluate_method(P, key, source, s, lr, seed=seed)
        else:
            row = E.evaluate(P, control_variant(P, key, paths[key], s, lr), "val", seed, progress=False)
            row.update(TP=row["TP_all"], EMT=row["EMT_all"])
        rows.append({**row, "text": key, "label": labels[key], "steps": s})
    controls = pd.DataFrame(rows)
    controls["alpha"] = controls["text"].map(stats.set_index("text")["alpha"])
    controls["top_k"] = controls["text"].map(stats.set_index("text")["top_k"])
    return controls


def base_row(controls: pd.DataFrame) -> pd.Series:
    """The base model's row of ``evaluate_controls``: the reference every text is read against."""
    return controls[controls["text"] == "none"].iloc[0]


def plot_controls(controls: pd.DataFrame, P: dict):
    """TP (main scorer), mean score (second scorer) and perplexity against fine-tuning steps, one line
    per text, the base model dashed; returns the figure."""
    tuned = controls[controls["text"] != "none"]
    base = base_row(controls)
    panels = [("TP_all", f"TP ({P['toxicity_scorer']})"), ("mean_score2", f"mean score ({P['second_toxicity_scorer']})"),
              ("PPL", "perplexity")]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, (column, name) in zip(axes, panels):
        sns.lineplot(data=tuned, x="steps", y=column, hue="label", style="label", markers=True, dashes=False, ax=ax,
                     legend=ax is axes[-1])
        ax.axhline(base[column], color="grey", ls="--", lw=1)
        ax.set(xlabel="fine-tuning steps", ylabel=name)
    axes[-1].legend(title="", bbox_to_anchor=(1.02, 1), loc="upper left")
    plt.tight_layout()
    return fig


def _lowest_tp(tuned: pd.DataFrame, keys) -> pd.DataFrame:
    # The paper's rule for tuning UniDetox: lowest validation TP; ties go to lower perplexity, then fewer steps.
    return (tuned.sort_values(["TP_all", "PPL", "steps"]).groupby("text", sort=False).head(1)
            .set_index("text").reindex(list(keys)))


def best_steps(controls: pd.DataFrame, keys) -> pd.DataFrame:
    """Each text's checkpoint with the lowest validation TP (ties: lower perplexity, then fewer steps),
    indexed by text key in the order of ``keys``."""
    return _lowest_tp(controls[controls["text"] != "none"], keys)


def controls_table(controls: pd.DataFrame, best: pd.DataFrame) -> pd.DataFrame:
    """The base model and each text at its best step, by label, with the columns the chapter compares
    (TP, EMT, the second scorer, perplexity, diversity), rounded to 3 places."""
    show = pd.concat([controls[controls["text"] == "none"].set_index("text"), best])
    return show.set_index("label")[list(CONTROL_COLUMNS)].rename(columns=CONTROL_COLUMNS).round(3)


# (text a, text b, claim, expect): "lower" claims a's TP is lower than b's, "equal" that the two are
# within TP_MARGIN of each other (the whole interval inside).
CONTROL_CLAIMS = (
    ("unidetox", "samples", "Distilled text detoxifies more than the model's plain samples", "lower"),
    ("unidetox", "cut_only", "The contrast with the toxic model, not the plausibility cut alone, detoxifies", "lower"),
    ("unidetox_alpha", "unidetox", f"alpha = 0.05 works about as well as alpha = 0.1 (within {TP_MARGIN} TP)", "equal"),
    ("unidetox_topk", "unidetox", f"The top-k setting changes TP by less than {TP_MARGIN}", "equal"),
    ("unidetox", "clean_news", "Distilled text detoxifies more than the same amount of clean news", "lower"),
)


def compare_controls(P: dict, best: pd.DataFrame, paths: dict[str, Path], lr: float, split: str = "test",
                     seeds=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Each text at the step chosen on the validation prompts (``best``), evaluated afresh on ``split``
    (the test prompts by default: choosing and comparing on the same prompts would favour whichever
    text's best step was luckiest) at every seed of ``seeds`` (default ``P['seeds']``), and the
    claims of ``CONTROL_CLAIMS`` decided on TP over all domains by paired bootstrap intervals
    (``stats.paired_difference``, ``stats.verdict``).

    Returns ``(claims, prompts)``: one row per claim (``claim``, ``a``, ``b``, ``verdict``, ``diff``,
    ``low``, ``high``, ``detail``) and the per-prompt rows behind them (``text`` = key, ``"none"`` for
    the base model)."""
    seeds = list(P["seeds"] if seeds is None else seeds)
    source = P["source_model"]
    specs = {"none": E.method_variant(P, B.BASE, source)}
    specs.update({key: control_variant(P, key, paths[key], int(best.loc[key, "steps"]), lr)
                  for key in best.index if not pd.isna(best.loc[key, "steps"])})
    _ = E.evaluate_specs(P, [(spec, split, seed) for spec in specs.values() for seed in seeds],
                         desc=f"controls at their best step ({split})")
    parts = []
    for key, spec in specs.items():
        for seed in seeds:
            parts.append(E.per_prompt_rows(P, spec, split, seed).assign(text=key, split=split))
    prompts = pd.concat(parts, ignore_index=True)
    rows = {key: part for key, part in prompts.groupby("text")}
    claims = []
    for a, b, claim, expect in CONTROL_CLAIMS:
        if a not in rows or b not in rows:
            continue
        d = S.paired_difference(rows[a], rows[b], "TP_all")
        claims.append(dict(claim=claim, a=a, b=b, verdict=S.verdict(d, expect=expect, margin=TP_MARGIN),
                           diff=d.diff, low=d.low, high=d.high,
                           detail=f"{split} TP {d.a:.2f} ({a}) vs {d.b:.2f} ({b}): {d.interval()}, {len(seeds)} seed(s)"))
    return pd.DataFrame(claims), prompts


def controls_sentences(claims: pd.DataFrame, prompts: pd.DataFrame, labels: dict[str, str]) -> str:
    """Markdown: one bullet per question of the chapter, with the paired difference, its 95% interval
    and the verdict (``compare_controls``'s claims and per-prompt rows)."""
    base_tp = S.value(prompts[prompts["text"] == "none"], "TP_all")
    lines = [f"The base model's TP on the same prompts is {base_tp:.3f}. Each difference below is the first text's TP "
             "minus the second's with its 95% interval (prompts resampled within category, paired):", ""]
    for row in claims.itertuples():
        lines.append(f"- **{row.claim}** {labels.get(row.a, row.a)} vs {labels.get(row.b, row.b)}: "
                     f"{row.diff:+.3f} [{row.low:+.3f}, {row.high:+.3f}] — {row.verdict}.")
    return "\n".join(lines)


# --------------------------------------------------------------------------- at matched diversity
def best_diverse_steps(controls: pd.DataFrame, keys, labels: dict[str, str]) -> pd.DataFrame:
    """Like ``best_steps``, but only among checkpoints that keep at least ``DIVERSITY_FLOOR`` of the base
    model's Dist-1 (a model that repeats itself also says few toxic words); a text with no such
    checkpoint gets a row of NaN. Carries each text's ``label``."""
    floor = DIVERSITY_FLOOR * float(base_row(controls)["dist_1"])
    tuned = controls[controls["text"] != "none"]
    matched = _lowest_tp(tuned[tuned["dist_1"] >= floor], keys)
    matched["label"] = [labels[k] for k in matched.index]
    return matched


def matched_table(matched: pd.DataFrame) -> pd.DataFrame:
    """``best_diverse_steps`` by label: steps, TP, mean score, perplexity and Dist-1, rounded to 3
    places, with a dash where a text has no checkpoint that keeps its diversity."""
    view = matched.set_index("label")[["steps", "TP_all", "mean_score", "PPL", "dist_1"]]
    view.columns = ["steps", "TP", "mean score", "PPL", "Dist-1"]
    return view.round(3).astype(object).where(view.notna(), "—")


def diversity_sentences(best: pd.DataFrame, matched: pd.DataFrame, base: pd.Series, labels: dict[str, str]) -> str:
    """Markdown: which texts lose diversity at their lowest-TP step, the lowest TPs among checkpoints
    that keep it, UniDetox's TP there beside Samples', the cut alone's and clean news's (numbers only:
    these are validation TPs of selected steps, one seed), and which texts have no such checkpoint on the grid."""
    keys = list(best.index)
    floor = DIVERSITY_FLOOR * float(base["dist_1"])
    collapsed = [labels[k] for k in keys if best.loc[k, "dist_1"] < floor]
    kept = matched["TP_all"].dropna().sort_values()
    if collapsed:
        text = (f"At their lowest-TP steps, {len(collapsed)} of {len(keys)} texts leave the model with less than 90% of the "
                f"base model's Dist-1 ({base['dist_1']:.2f}): {'; '.join(collapsed)}. ")
    else:
        text = "Every text keeps at least 90% of the base model's Dist-1 at its lowest-TP step. "
    if len(kept):
        text += ("Among the checkpoints that keep their diversity, the lowest TPs are "
                 + "; ".join(f"{labels[k]} (TP {v:.3f})" for k, v in kept.items()) + f" (base {base['TP_all']:.3f}). ")

    def matched_versus(a, c):
        if a not in kept or c not in kept:
            return ""
        return f"At matched diversity {labels[a]} reaches TP {kept[a]:.3f}, {labels[c]} {kept[c]:.3f} (validation, one seed). "

    text += "".join(matched_versus("unidetox", c) for c in ("samples", "cut_only", "clean_news"))
    missing = [labels[k] for k in keys if k not in kept]
    if missing:
        text += f"No checkpoint of {'; '.join(missing)} keeps 90% of the base model's Dist-1 on this grid."
    return text


def continuations_table(P: dict, best: pd.DataFrame, paths: dict[str, Path], labels: dict[str, str], lr: float,
                        seed: int, n_examples: int,
                        shown=("unidetox", "samples", "cut_only", "clean_news")) -> pd.DataFrame:
    """What the models write: for ``n_examples`` validation prompts drawn with ``seed``, the prompt and
    the first continuation (shortened to 120 characters) of the base model and of the model fine-tuned
    on each text of ``shown`` at its best step, one row per (prompt, model)."""
    source = P["source_model"]
    frames = {"base model": E.continuations(P, E.method_variant(P, B.BASE, source), "val", seed, progress=False)}
    for key in shown:
        step = int(best.loc[key, "steps"])
        spec = control_variant(P, key, paths[key], step, lr)
        frames[f"{labels[key]} ({step} steps)"] = E.continuations(P, spec, "val", seed, progress=False)
    first = {name: f.groupby("prompt_id").first() for name, f in frames.items()}
    ids = first["base model"].sample(n_examples, random_state=seed).index
    rows = []
    for i in ids:
        rows.append({"model": "prompt", "text": shorten(first["base model"].loc[i, "prompt"], 120)})
        rows += [{"model": name, "text": shorten(f.loc[i, "continuation"], 120)} for name, f in first.items()]
    return pd.DataFrame(rows)
