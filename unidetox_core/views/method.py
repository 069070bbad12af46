"""The tables and figures of the method chapter: one toy decoding step, and Eq. 5 on a small model."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
import torch

from .. import analysis, distill, finetune, models

# ------------------------------------------------------------------------- one toy decoding step


def toy_step_table(vocab: Sequence[str], p_base: torch.Tensor, p_toxic: torch.Tensor, alpha: float) -> pd.DataFrame:
    """One decoding step over ``vocab``, token by token: both models' probabilities, the raw contrastive
    score of Eq. 1, whether Eq. 3 keeps the token, and the resulting sampling probability.

    The last column comes from ``distill.contrastive_scores``, the function the decoder itself
    uses, so the table shows what distillation does rather than a re-derivation of it."""
    scores = distill.contrastive_scores(p_base.log(), p_toxic.log(), alpha=alpha)
    return pd.DataFrame({
        "token": list(vocab),
        "p_base": p_base.numpy(),
        "p_toxic": p_toxic.numpy(),
        "s = log p_base - log p_toxic": (p_base.log() - p_toxic.log()).numpy(),
        "plausible": (p_base >= alpha * p_base.max()).numpy(),
        "p_sample": torch.softmax(scores, dim=-1).numpy(),
    })


def alpha_sweep(vocab: Sequence[str], p_base: torch.Tensor, p_toxic: torch.Tensor,
                alphas: Sequence[float] = (0.0, 0.1, 0.5)) -> pd.DataFrame:
    """The sampling distribution of the toy step for each alpha, long-form (``alpha``, ``token``,
    ``probability``); ``alpha`` is a string so that seaborn colours it as a category."""
    rows = []
    for alpha in alphas:
        probs = torch.softmax(distill.contrastive_scores(p_base.log(), p_toxic.log(), alpha=alpha), dim=-1)
        rows += [{"alpha": str(alpha), "token": t, "probability": float(p)} for t, p in zip(vocab, probs)]
    return pd.DataFrame(rows)


def plot_alpha_sweep(sweep: pd.DataFrame):
    """Bars of ``alpha_sweep``: one group per token, one bar per alpha."""
    fig, ax = plt.subplots(figsize=(8, 3.5))
    sns.barplot(data=sweep, x="token", y="probability", hue="alpha", ax=ax)
    ax.set(xlabel="", ylabel="sampling probability")
    plt.tight_layout()
    return fig


# ------------------------------------------------------------------ Eq. 5 on a small model


def news_sentences(articles: pd.DataFrame, n_articles: int = 300, per_article: int = 4, min_words: int = 6,
                   limit: int = 800) -> list[str]:
    """Up to ``limit`` sentences from the first ``n_articles`` articles, at most ``per_article`` each.

    The toy base model should learn plain news prose quickly, so sentences of fewer than
    ``min_words`` words (headline fragments, bylines) are dropped. Sentences are cut at ". " and
    get their full stop back."""
    sentences = [s.strip() + "." for text in articles["text"].head(n_articles) for s in text.split(". ")[:per_article]
                 if len(s.split()) >= min_words]
    return sentences[:limit]


def toy_base_and_toxic(tokenizer, news: list[str], toxic_tweets: list[str], *, seed: int, quick: bool):
    """A small GPT-2-family base model trained on ``news``, and its toxic copy fine-tuned on
    ``toxic_tweets``; both returned in eval mode.

    The toxic copy gets a short, gentle fine-tune (lower learning rate, few steps) on purpose:
    Eq. 5 is a first-order expansion around the base weights, and it only holds while the toxic
    model stays close to them. ``quick`` (the tiny profile) trains less with the same code."""
    base = models.build_small_model("gpt2", tokenizer, seed=seed, d_model=64, n_layer=2, n_head=2, max_positions=128)
    finetune.finetune(base, tokenizer, news, lr=2e-3, batch_size=16, steps=20 if quick else 120, max_length=64,
                      seed=seed, progress=False)
    toxic = copy.deepcopy(base)
    finetune.finetune(toxic, tokenizer, toxic_tweets, lr=2e-4, batch_size=16, steps=5 if quick else 15,
                      max_length=64, seed=seed, progress=False)
    base.eval()
    toxic.eval()
    return base, toxic


def taylor_check(base, toxic, tokenizer, texts_by_kind: dict[str, list[str]], max_length: int = 64) -> pd.DataFrame:
    """``analysis.gradient_alignment`` of every text, with a ``text`` column naming its kind
    (e.g. "news", "toxic tweet"): both sides of Eq. 5 per text, ready to plot by kind."""
    texts = [t for group in texts_by_kind.values() for t in group]
    align = analysis.gradient_alignment(base, toxic, tokenizer, texts, max_length=max_length)
    align["text"] = [kind for kind, group in texts_by_kind.items() for _ in group]
    return align


def plot_taylor(align: pd.DataFrame):
    """Exact contrastive score against its first-order estimate, one point per text, with the
    diagonal where the two would be equal."""
    fig, ax = plt.subplots(figsize=(5, 5))
    sns.scatterplot(data=align, x="contrastive_score", y="grad_dot", hue="text", ax=ax)
    both = align[["contrastive_score", "grad_dot"]]
    lim = [both.min().min(), both.max().max()]
    ax.plot(lim, lim, color="grey", lw=1, ls="--")
    ax.set(xlabel="s(x), exact", ylabel="(-tau)^T grad log p_base(x)")
    plt.tight_layout()
    return fig


def taylor_correlation(align: pd.DataFrame) -> float:
    """Pearson correlation of the exact score with its first-order estimate across texts: Eq. 5
    needs the ranking and sign to agree, not the values, so a correlation is the fair summary."""
    return float(align["contrastive_score"].corr(align["grad_dot"]))


def mean_score_and_cosine(align: pd.DataFrame) -> pd.DataFrame:
    """Mean contrastive score and mean cosine per kind of text (rows: kinds)."""
    return align.groupby("text")[["contrastive_score", "cosine"]].mean()
