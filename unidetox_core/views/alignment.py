"""What the chapter on why UniDetox works shows: Eq. 5 checked text by text on the source model.

For samples of three text sets (UniDetox's text, plain Samples, the toxic corpus) it computes
``analysis.gradient_alignment`` and turns the result into the chapter's tables, figures and
sentences: how well the first-order estimate tracks the exact contrastive score, and whether the
distilled texts' gradients point further from the toxic direction than those of plain samples.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from scipy.stats import mannwhitneyu
from sklearn.metrics import roc_auc_score

from .. import analysis, experiments, models

# The columns of alignment.csv, in order.
SAVED_COLUMNS = ["set", "seed", "n_tokens", "logp_base", "logp_toxic", "contrastive_score", "grad_dot",
                 "grad_norm", "tau_norm", "cosine", "text"]


def load_models(P: dict):
    """``(base, toxic, tokenizer)``: the profile's source model and its toxic model, in float32,
    because the check compares log-probabilities and dot products that half precision would blur."""
    source = experiments.resolve_model(P, P["source_model"])
    toxic_path = experiments.toxic_model(P, P["source_model"], progress=False)
    base, tokenizer = models.load_model(source, dtype="float32")
    toxic, _ = models.load_model(str(toxic_path), dtype="float32")
    return base, toxic, tokenizer


def model_line(P: dict, base) -> str:
    """One line naming the source model, its parameter count and its device."""
    return (f"source model {P['source_model']}: {models.count_parameters(base):,} parameters on "
            f"{next(base.parameters()).device}")


def pick(texts: list[str], n: int, seed: int) -> list[str]:
    """``n`` texts drawn without replacement with ``seed`` (all of them if fewer), leaving out empty
    ones, which have no gradient to compare."""
    texts = [t for t in texts if t.strip()]
    return pd.Series(texts).sample(min(n, len(texts)), random_state=seed).tolist()


def text_sets(P: dict, n_texts: int, seed: int) -> dict[str, list[str]]:
    """The three samples the chapter compares, by name: UniDetox's and Samples' texts of distillation
    seed ``seed``, and the toxic corpus (no more texts than a distilled text has, so that no set
    weighs more than the others)."""
    def distilled(kind):
        return experiments.read_texts(experiments.distilled_text(P, kind, seed=seed, progress=False))

    return {
        "UniDetox": pick(distilled("unidetox"), n_texts, seed),
        "Samples": pick(distilled("samples"), n_texts, seed),
        "toxic corpus": pick(experiments.toxic_texts(P), min(n_texts, P["distill_n_texts"]), seed),
    }


def alignment_frame(base, toxic, tokenizer, sets: dict[str, list[str]], max_length: int,
                    batch_size: int = 8) -> pd.DataFrame:
    """``analysis.gradient_alignment`` of every text of ``sets``, one row per text with its ``set``,
    plus ``score_per_token``: s(x) divided by the text's tokens (at least 1), since s(x) grows with length."""
    frames = [analysis.gradient_alignment(base, toxic, tokenizer, texts, max_length=max_length, batch_size=batch_size)
              .assign(set=name) for name, texts in sets.items()]
    align = pd.concat(frames, ignore_index=True)
    align["score_per_token"] = align["contrastive_score"] / align["n_tokens"].clip(lower=1)
    return align


def weight_norm(model) -> float:
    """The Euclidean norm of all of ``model``'s parameters together (in float64), the scale against
    which the size of tau_toxic is read."""
    with torch.no_grad():
        return float(torch.sqrt(sum((p.double() ** 2).sum() for p in model.parameters())))


def saved_alignment(align: pd.DataFrame, seed: int) -> pd.DataFrame:
    """What alignment.csv keeps of ``align``: the columns of ``SAVED_COLUMNS``, with the seed and each
    text cut to 120 characters (enough to recognise it; the whole text is in the distilled CSV)."""
    saved = align.assign(text=align["text"].str.slice(0, 120), seed=seed)
    return saved[SAVED_COLUMNS]


def size_line(align: pd.DataFrame, max_length: int, theta_norm: float) -> str:
    """One line: how many texts were checked, and |tau_toxic| absolute and relative to |theta_base|."""
    tau_norm = float(align["tau_norm"].iloc[0])
    return (f"{len(align)} texts (at most {max_length} tokens each, tokenised as for fine-tuning); "
            f"|tau_toxic| = {tau_norm:.3g}, {tau_norm / theta_norm:.2%} of |theta_base| = {theta_norm:.3g}")


def sample_size_note(sets: dict[str, list[str]], seed: int) -> str:
    """Markdown: the size of each sample and where it was drawn from, and that the paper has no
    figure to compare with."""
    return (f"**Sample sizes:** {', '.join(f'{len(t)} {name}' for name, t in sets.items())} texts, drawn with seed {seed} "
            "from distillation seed 0 and from the toxic corpus. The paper reports no such check, so there is no "
            "paper figure to set beside these.")


def plot_taylor(align: pd.DataFrame):
    """Each text's exact s(x) against its first-order estimate, by set, with the diagonal where the
    two would be equal; returns the figure."""
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    sns.scatterplot(data=align, x="contrastive_score", y="grad_dot", hue="set", style="set", ax=ax, alpha=0.8)
    lo = float(min(align["contrastive_score"].min(), align["grad_dot"].min()))
    hi = float(max(align["contrastive_score"].max(), align["grad_dot"].max()))
    ax.plot([lo, hi], [lo, hi], color="grey", lw=1, ls="--")
    ax.set(xlabel="s(x), exact (nats)", ylabel="(-tau)^T grad log p_base(x), first order")
    plt.tight_layout()
    return fig


def set_summary(frame: pd.DataFrame) -> pd.Series:
    """One text set in numbers: its size and length, the mean exact score (total and per token) and
    estimate, how well the estimate tracks the score (Pearson r, NaN for fewer than 3 texts; share of
    the same sign), and the cosine to -tau_toxic (median, share positive)."""
    return pd.Series({
        "texts": len(frame),
        "mean tokens": frame["n_tokens"].mean(),
        "mean s(x)": frame["contrastive_score"].mean(),
        "mean s(x) per token": frame["score_per_token"].mean(),
        "mean estimate": frame["grad_dot"].mean(),
        "r(s, estimate)": frame["contrastive_score"].corr(frame["grad_dot"]) if len(frame) > 2 else np.nan,
        "same sign": (np.sign(frame["contrastive_score"]) == np.sign(frame["grad_dot"])).mean(),
        "median cosine": frame["cosine"].median(),
        "cosine > 0": (frame["cosine"] > 0).mean(),
    })


def summary_table(align: pd.DataFrame) -> pd.DataFrame:
    """``set_summary`` of each set, in the order they were checked, and of all texts together."""
    summary = align.groupby("set", sort=False).apply(set_summary, include_groups=False)
    summary.loc["all texts"] = set_summary(align)
    summary["texts"] = summary["texts"].astype(int)
    return summary


def taylor_fit(align: pd.DataFrame) -> dict[str, float]:
    """How well the estimate tracks the exact score over all texts: Pearson ``r``, Spearman ``rho``,
    the least-squares ``slope`` of estimate on score through the origin (1 for an exact expansion)
    and the share of texts where the two have the ``same`` sign."""
    s, g = align["contrastive_score"], align["grad_dot"]
    return dict(r=s.corr(g), rho=s.corr(g, method="spearman"), slope=float((s * g).sum() / (s ** 2).sum()),
                same=float((np.sign(s) == np.sign(g)).mean()))


def taylor_sentence(align: pd.DataFrame, theta_norm: float) -> str:
    """Markdown: the numbers of ``taylor_fit`` and the size of tau_toxic relative to the weights (the
    reading is the chapter's hand-written prose)."""
    fit = taylor_fit(align)
    tau_norm = float(align["tau_norm"].iloc[0])
    return (
        f"Over all {len(align)} texts, the first-order estimate against the exact score: Pearson r = {fit['r']:.2f}, "
        f"Spearman {fit['rho']:.2f}, same sign for {fit['same']:.0%} of texts, and a least-squares slope (through the "
        f"origin) of {fit['slope']:.2f} where an exact expansion would give 1. The toxic vector is "
        f"{tau_norm / theta_norm:.2%} of the weights' norm.")


def plot_cosines(align: pd.DataFrame):
    """The distribution of the cosine to -tau_toxic in each set (box and points), zero dashed; returns
    the figure."""
    fig, ax = plt.subplots(figsize=(7, 3.8))
    sns.boxplot(data=align, x="cosine", y="set", hue="set", ax=ax, fliersize=0, legend=False)
    sns.stripplot(data=align, x="cosine", y="set", color="black", size=2.5, alpha=0.5, ax=ax)
    ax.axvline(0, color="grey", lw=1, ls="--")
    ax.set(xlabel="cosine(grad log p_base(x), -tau_toxic)", ylabel="")
    plt.tight_layout()
    return fig


def superiority(align: pd.DataFrame, a: str, b: str) -> float:
    """Probability that a random text of set ``a`` has a higher cosine than one of set ``b`` (the
    ROC-AUC; ties count half); NaN when either set is empty."""
    x, y = align.loc[align["set"] == a, "cosine"], align.loc[align["set"] == b, "cosine"]
    return roc_auc_score(np.r_[np.ones(len(x)), np.zeros(len(y))], np.r_[x, y]) if len(x) and len(y) else np.nan


def cosine_sentences(align: pd.DataFrame, summary: pd.DataFrame) -> str:
    """Markdown: the median cosine per set and how often a UniDetox text beats a sample and a
    toxic-corpus text, with the Mann-Whitney p-value against samples (numbers only: the reading is the
    chapter's hand-written prose)."""
    med = summary["median cosine"]
    p_us = superiority(align, "UniDetox", "Samples")
    p_ut = superiority(align, "UniDetox", "toxic corpus")
    cos = {name: align.loc[align["set"] == name, "cosine"] for name in ("UniDetox", "Samples")}
    p_value = mannwhitneyu(cos["UniDetox"], cos["Samples"], alternative="two-sided").pvalue
    lines = [
        (f"The median cosine is {med['UniDetox']:.4f} for UniDetox texts, {med['Samples']:.4f} for samples and "
         f"{med['toxic corpus']:.4f} for toxic-corpus texts. A random UniDetox text has a higher cosine than a random "
         f"sample with probability {p_us:.2f} (0.5 = no difference; Mann-Whitney p = {p_value:.3g} with "
         f"{len(cos['UniDetox'])} and {len(cos['Samples'])} texts), and than a random toxic-corpus text with "
         f"probability {p_ut:.2f}.")
    ]
    return " ".join(lines)


def extreme_texts(align: pd.DataFrame, n: int = 3) -> pd.DataFrame:
    """The ``n`` texts with the highest and the ``n`` with the lowest cosine over all sets, highest
    first, each on one line cut to 160 characters, rounded to 4 places."""
    ranked = align.sort_values("cosine", ascending=False)
    extremes = pd.concat([ranked.head(n), ranked.tail(n)])
    return extremes.assign(text=extremes["text"].map(lambda t: " ".join(t.split())[:160]))[
        ["set", "cosine", "contrastive_score", "n_tokens", "text"]].round(4).reset_index(drop=True)
