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


@torch.no_grad()
def relative_change(base, toxic) -> float:
    """``|theta_toxic - theta_base| / |theta_base|`` over all parameters: how far the toxic fine-tuning
    moved the weights, the size on which a first-order expansion (Eq. 5) depends."""
    diff = sum(float((t.float() - b.float()).pow(2).sum()) for b, t in zip(base.parameters(), toxic.parameters()))
    norm = sum(float(b.float().pow(2).sum()) for b in base.parameters())
    return (diff / norm) ** 0.5


# ------------------------------------------------------------- one real step of the world's models


def shown_token(tokenizer, token_id: int, scorer=None) -> str:
    """A token as a reader sees it: a leading space as ``␣``, a newline as ``⏎``, and (given a toxicity
    ``scorer``) a token the scorer flags masked after its first letter, as the book never prints slurs."""
    text = tokenizer.decode([token_id])
    if scorer is not None and text.strip() and float(scorer([text.strip()])[0]) > 0.5:
        word = text.strip()
        text = text.replace(word, word[0] + "*" * (len(word) - 1))
    return text.replace(" ", "␣").replace("\n", "⏎")


@torch.inference_mode()
def real_step_table(base, toxic, tokenizer, *, prefix: str = "", alpha: float = 0.1, top: int = 8,
                    seed: int = 0, scorer=None) -> tuple[pd.DataFrame, str, int]:
    """One contrastive decoding step of two real models after the start token (and ``prefix``):
    the base model's ``top`` favourite tokens and the three tokens of largest ratio anywhere in the
    vocabulary, with both probabilities, the score of Eq. 1, the cut of Eq. 3 and the sampling
    probability of Eq. 2; the token the decoder's own sampler (``distill.gumbel_sample``) draws; and
    the support, the number of tokens in the whole vocabulary that pass the cut.

    Scores come from ``distill.contrastive_scores`` on float32 log-probabilities, as in distillation."""
    ids = [models.start_token_id(tokenizer)] + tokenizer(prefix, add_special_tokens=False)["input_ids"]
    x = torch.tensor([ids])
    mask = torch.ones_like(x)
    log_base = torch.log_softmax(base(input_ids=x, attention_mask=mask).logits[0, -1].float(), dim=-1)
    log_toxic = torch.log_softmax(toxic(input_ids=x, attention_mask=mask).logits[0, -1].float(), dim=-1)
    scores = distill.contrastive_scores(log_base, log_toxic, alpha=alpha)
    sampled = int(distill.gumbel_sample(scores[None], torch.Generator().manual_seed(seed))[0])
    ratio = log_base - log_toxic
    p_sample = torch.softmax(scores, dim=-1)
    chosen = {int(i): "base favourite" for i in log_base.topk(top).indices}
    for i in ratio.topk(3).indices:
        chosen.setdefault(int(i), "largest ratio")
    chosen.setdefault(sampled, "sampled")
    rows = [{
        "token": shown_token(tokenizer, i, scorer),
        "why shown": role,
        "p_base": float(log_base[i].exp()),
        "p_toxic": float(log_toxic[i].exp()),
        "s = log p_base - log p_toxic": float(ratio[i]),
        "plausible": bool(torch.isfinite(scores[i])),
        "p_sample": float(p_sample[i]),
    } for i, role in chosen.items()]
    return pd.DataFrame(rows), shown_token(tokenizer, sampled, scorer), int(torch.isfinite(scores).sum())


# ----------------------------------------------------------------------------- the pipeline figure
PIPELINE_BOXES = {  # name: (x, y, text) on a 10 x 4 canvas
    "base": (1.0, 3.0, "base model\n$\\theta_{base}$"),
    "toxic": (1.0, 1.0, "toxic model\n$\\theta_{toxic}$"),
    "decode": (4.0, 2.0, "contrastive decoding\n(Eq. 1-3)"),
    "text": (6.6, 2.0, "distilled text\n640 texts, from BOS"),
    "detox_base": (9.0, 3.2, "detoxified\nbase model"),
    "detox_other": (9.0, 0.8, "any other model,\nany tokenizer,\ndetoxified"),
}
PIPELINE_ARROWS = [  # (from, to, label)
    ("base", "toxic", "fine-tune on\ntoxic text"),
    ("base", "decode", "$\\log p_{base}$"),
    ("toxic", "decode", "$\\log p_{toxic}$"),
    ("decode", "text", "sample"),
    ("text", "detox_base", "fine-tune (Eq. 4)"),
    ("text", "detox_other", "the same text,\nsteps and lr"),
]


def plot_pipeline():
    """The method in one picture (the paper's Figure 1): two models, one text, many models detoxified."""
    fig, ax = plt.subplots(figsize=(10, 4))
    ax.set(xlim=(-0.2, 10.3), ylim=(0, 4))
    ax.axis("off")
    for x, y, text in PIPELINE_BOXES.values():
        ax.text(x, y, text, ha="center", va="center", fontsize=10,
                bbox=dict(boxstyle="round,pad=0.4", facecolor="#eef3fa", edgecolor="#4c72b0"))
    for start, end, label in PIPELINE_ARROWS:
        (x0, y0, _), (x1, y1, _) = PIPELINE_BOXES[start], PIPELINE_BOXES[end]
        ax.annotate("", xy=(x1, y1), xytext=(x0, y0),
                    arrowprops=dict(arrowstyle="-|>", color="#555555", shrinkA=38, shrinkB=38))
        if x0 == x1:  # a vertical arrow: its label beside it, not across it
            ax.text(x0 + 0.12, (y0 + y1) / 2, label, ha="left", va="center", fontsize=8, color="#333333")
        else:
            ax.text((x0 + x1) / 2, (y0 + y1) / 2 + 0.12, label, ha="center", va="bottom", fontsize=8, color="#333333")
    plt.tight_layout()
    return fig


# ------------------------------------------------------------------------------ the baselines


def baseline_grid_table(P, paper) -> pd.DataFrame:
    """Each baseline's hyper-parameter and the values tried, the paper's beside this profile's."""
    def listed(values) -> str:
        values = [str(v) for v in values]
        return ", ".join(values) if len(values) <= 4 else f"{values[0]}, {values[1]}, …, {values[-1]} ({len(values)} values)"

    def values(key):
        return lambda profile: listed(profile[key])

    rows = [
        ("PrePrompt Short / Long", "the instruction's text", lambda p: "two fixed instructions"),
        ("Samples", "fine-tuning steps (and lr)", lambda p: f"{listed(p['detox_steps'])} at lr {listed(p['samples_lrs'])}"),
        ("LM-Steer", "steering strength ε (× 10⁻³)", values("lmsteer_multipliers")),
        ("DExperts (anti-expert only)", "anti-expert weight β", values("dexperts_betas")),
        ("Task Arithmetic", "scaling λ of the toxic vector", values("task_arithmetic_lambdas")),
    ]
    return pd.DataFrame([{"method": m, "hyper-parameter": h, "paper": f(paper), "this run": f(P)} for m, h, f in rows])
