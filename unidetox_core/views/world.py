"""The tables, figures and sentences of the miniature-world chapter, read from the tables that
``world.build_world`` writes to ``results/<profile>/world/``."""

from __future__ import annotations

import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from IPython.display import Markdown

from .. import world
from . import shown_path

# The two toxicity instruments and the two datasets whose ROC-AUC the chapter compares.
MAIN_SCORER, SECOND_SCORER = "profanity_check", "davidson_tfidf"
TWEETS_AUC = "tweets: hate+offensive vs neither"
TOXIGEN_AUC = "ToxiGen seeds: hate vs neutral"

# A gap (in ROC-AUC or accuracy) below this is read as "about the same" in the chapter's sentences.
NOTABLE_GAP = 0.05

# Rows of the mix table, in the order shown, with the reader's name for each column of mix.csv.
MIX_LABELS = {
    "tweet_token_share_designed": "tweet-thread share of training tokens (designed)",
    "tweet_token_share_bpe": "tweet-thread share of training tokens (measured, BPE)",
    "thread_document_share": "tweet threads among training documents",
    "train_tokens": "training tokens (BPE)",
    "news_documents": "news documents", "thread_documents": "tweet-thread documents",
    "tweets_in_stream": "tweets in the web text", "toxic_tweets_in_stream": "of them hate or offensive",
    "toxic_reserve_fraction": "share of toxic training tweets reserved",
    "toxic_corpus_tweets": "tweets reserved for the toxic corpus",
    "source_val_TP": "source model: validation TP", "source_val_EMT": "source model: validation EMT",
    "bos_tweet_like_share": "source model: tweet-like BOS samples",
    "bos_mean_score": "source model: mean toxicity of BOS samples",
    "n_val_prompts": "validation prompts",
}

CALIBRATION_COLUMNS = ["tweet_token_share", "thread_document_share", "steps", "val_TP", "val_EMT",
                       "bos_tweet_like_share", "heldout_news_ppl", "heldout_tweets_ppl", "n_val_prompts"]

MODEL_COLUMNS = ["model", "arch", "tokenizer", "parameters", "d_model", "n_layer", "steps", "train_tokens_seen",
                 "train_seconds", "tokens_per_s", "heldout_news_ppl_untrained", "heldout_news_ppl",
                 "heldout_news_bits_per_byte", "heldout_tweets_ppl", "heldout_tweets_bits_per_byte"]


# ---------------------------------------------------------------------------------- the chapter's setup


def _category_and_message(message, category, filename, lineno, line=None) -> str:
    return f"{category.__name__}: {message}\n"


def warnings_without_paths() -> None:
    """Print warnings as ``Category: message`` from now on, in this process.

    Python's default format starts with the source file of the warning -- a path on the machine
    that ran the chapter -- which the book must not show; the message itself is what the reader needs."""
    warnings.formatwarning = _category_and_message


def has_world(P: dict) -> bool:
    """Whether the profile has a miniature world (mini, tiny); the paper profile uses hub models."""
    return P["profile"] in world.WORLD_SETTINGS


def build_world(P: dict) -> tuple[dict, Path, str]:
    """Build the profile's world (or find it in the cache), and return its settings, the folder of
    its tables and a one-line report that names that folder relative to the repository."""
    settings = world.world_settings(P)
    paths = world.build_world(P, progress=False)  # cached: builds only what is missing, then writes the tables
    out = world.results_dir(settings)
    report = (f"{P['profile']} world: {len(paths)} steps built or found in the cache; "
              f"tables in {shown_path(out)}/")
    return settings, out, report


def skipped_note(P: dict) -> Markdown:
    """What the chapter says on a profile without a world: which hub models and instruments play the roles."""
    return Markdown(
        f"**Skipped:** the `{P['profile']}` profile has no miniature world. Its models "
        f"({P['source_model']}, {', '.join(P['target_models'])}) and instruments "
        f"({P['toxicity_scorer']}, {P['bias_scorer']}) come from their hubs; see the chapter on running at paper scale.")


# ------------------------------------------------------------------------------- the web text and its mix


def calibration_view(out: Path):
    """The mix calibration (``mix_calibration.csv``), rounded, or a note that none was run: the
    calibration is a separate command, so a profile may well have none."""
    path = out / "mix_calibration.csv"
    calibration = pd.read_csv(path) if path.exists() else pd.DataFrame()
    if not len(calibration):
        return Markdown("No calibration was run for this profile (`python -m unidetox_core.world --calibrate SHARE ...`).")
    return calibration[[c for c in CALIBRATION_COLUMNS if c in calibration.columns]].round(3)


def sweep_table(out: Path, settings: dict | None = None):
    """The world-size sweep (``sweep.csv``, ``world/sweep.py``) with each configuration's place on the
    frontier of held-out bits per byte against CPU-seconds, and the source model's present setting
    marked; or a note that none was run (it is a separate command, like the mix calibration)."""
    from ..world import sweep

    path = Path(out) / "sweep.csv"
    table = pd.read_csv(path) if path.exists() else pd.DataFrame()
    if not len(table):
        return Markdown("No size sweep was run for this profile (`python -m unidetox_core.world.sweep --profile mini`).")
    best = sweep.frontier(table)
    keys = ["vocab_size", "d_model", "n_layer", "steps"]
    table["on frontier"] = table[keys].apply(tuple, axis=1).isin(set(best[keys].apply(tuple, axis=1)))
    if settings is not None:
        spec = settings["models"]["gpt2-bpe"]
        now = (settings["vocab_size"], spec["d_model"], spec["n_layer"], spec["steps"])
        table["the world's setting"] = table[keys].apply(tuple, axis=1) == now
    return table.sort_values("cpu_seconds").reset_index(drop=True).round(3)


def plot_sweep(table: pd.DataFrame):
    """Held-out news bits per byte against CPU-seconds of training, one point per configuration,
    labelled with its vocabulary, width, depth and steps; the frontier joined by a line."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    sns.scatterplot(data=table, x="cpu_seconds", y="heldout_news_bits_per_byte", hue="vocab_size", style="n_layer",
                    s=70, ax=ax, palette="deep")
    front = table[table["on frontier"]].sort_values("cpu_seconds")
    ax.plot(front["cpu_seconds"], front["heldout_news_bits_per_byte"], color="grey", lw=1, ls="--", zorder=0)
    for r in table.itertuples():
        ax.annotate(f"d{r.d_model} x{r.n_layer}, {r.steps} st", (r.cpu_seconds, r.heldout_news_bits_per_byte),
                    textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set(xlabel="CPU-seconds of training (one thread)", ylabel="held-out news, bits per byte")
    fig.tight_layout()
    return fig


def read_mix(out: Path) -> pd.Series:
    """The one row of ``mix.csv``: the web text's mix and the source model's check."""
    return pd.read_csv(out / "mix.csv").iloc[0]


def format_count_or_share(value) -> str:
    """``"30,000"`` for whole numbers (counts), ``"0.050"`` otherwise (shares, TP, EMT)."""
    value = float(value)
    return f"{value:,.0f}" if value.is_integer() else f"{value:.3f}"


def mix_view(mix: pd.Series) -> pd.DataFrame:
    """The mix as a one-column table with readable row names (those of ``MIX_LABELS`` that mix.csv
    has), counts with thousands separators and shares with three decimals."""
    present = [key for key in MIX_LABELS if key in mix]
    values = [format_count_or_share(mix[key]) for key in present]
    return pd.DataFrame({"value": values}, index=[MIX_LABELS[key] for key in present])


def mix_sentence(mix: pd.Series) -> Markdown:
    """The sentence after the mix table: token share against document share, and what the source
    model does with this mix."""
    return Markdown(
        f"Tweet threads are {mix['tweet_token_share_bpe']:.1%} of the training tokens but "
        f"{mix['thread_document_share']:.1%} of the documents (a thread is short, an article long). "
        f"With this mix the source model's validation toxicity probability is {mix['source_val_TP']:.2f} "
        f"(EMT {mix['source_val_EMT']:.2f}, {int(mix['n_val_prompts'])} prompts), and "
        f"{mix['bos_tweet_like_share']:.0%} of its unconditional samples look like tweets.")


# ------------------------------------------------------------------------------------ two tokenizers


def tokenization_lines(settings: dict, sentence: str) -> list[str]:
    """How each world tokenizer cuts ``sentence``: one line per tokenizer, its token count and pieces."""
    lines = []
    for kind in ("bpe", "unigram"):
        pieces = world.load_world_tokenizer(settings, kind).tokenize(sentence)
        lines.append(f"{kind:8s} {len(pieces):2d} tokens: {' | '.join(pieces)}")
    return lines


# -------------------------------------------------------------------------------- the language models


def models_view(models_table: pd.DataFrame) -> pd.DataFrame:
    """The model table as shown: the chapter's columns, parameters in millions, indexed by model."""
    view = models_table[MODEL_COLUMNS].copy()
    view["parameters"] = view["parameters"].map(lambda n: f"{n / 1e6:.2f} M")
    return view.set_index("model")


def loss_curves_frame(curves: dict[str, list[float]]) -> pd.DataFrame:
    """Long-form training curves (``step`` from 1, ``loss``, ``model``) from ``model -> losses``."""
    return pd.concat([pd.DataFrame({"step": range(1, len(losses) + 1), "loss": losses, "model": name})
                      for name, losses in curves.items()])


def loss_curves(settings: dict) -> pd.DataFrame:
    """The recorded training curve of every world model, long-form (see ``loss_curves_frame``)."""
    return loss_curves_frame({name: world.model_summary(settings, name)["loss_curve"] for name in settings["models"]})


def plot_loss_curves(curves: pd.DataFrame):
    """One line per model: training loss against optimizer step."""
    fig, ax = plt.subplots(figsize=(7, 3.8))
    sns.lineplot(data=curves, x="step", y="loss", hue="model", ax=ax)
    ax.set(xlabel="optimizer step", ylabel="training loss (nats per token)")
    plt.tight_layout()
    return fig


def models_sentence(models_table: pd.DataFrame, source: str = "gpt2-bpe") -> Markdown:
    """What the source model learned (held-out perplexity before and after training) and which
    model fits held-out news best. Bits per byte, not perplexity, picks the best, because it is
    the one measure that compares models with different tokenizers."""
    src = models_table.set_index("model").loc[source]
    best = models_table.loc[models_table["heldout_news_bits_per_byte"].idxmin()]
    return Markdown(
        f"The source model (`{source}`, {src['parameters']:,.0f} parameters) brought its held-out news "
        f"perplexity from {src['heldout_news_ppl_untrained']:,.0f} untrained to {src['heldout_news_ppl']:,.1f} "
        f"({src['heldout_news_bits_per_byte']:.2f} bits per byte); on held-out tweet threads it reaches "
        f"{src['heldout_tweets_ppl']:,.1f}. Of the four, `{best['model']}` models held-out news best "
        f"({best['heldout_news_bits_per_byte']:.2f} bits per byte). How fluent that is can be judged from the "
        "source model's samples in the next section.")


def bos_sample_lines(out: Path, n: int, max_chars: int = 300) -> list[str]:
    """The first ``n`` unconditional samples of the source model, numbered, whitespace collapsed
    and cut to ``max_chars`` so that one long sample cannot fill the page."""
    samples = pd.read_csv(out / "bos_samples_source.csv", keep_default_na=False)["sample"]
    return [f"[{i}] {' '.join(text.split())[:max_chars]}" for i, text in enumerate(samples.head(n), 1)]


# ------------------------------------------------------------------------------------ the instruments


def toxicity_rows(classifiers: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``classifiers.csv`` that measure the two toxicity instruments."""
    return classifiers[classifiers["instrument"].isin([MAIN_SCORER, SECOND_SCORER])]


def toxicity_view(classifiers: pd.DataFrame) -> pd.DataFrame:
    """Each toxicity metric per dataset (rows, in file order) and instrument (columns), with the
    number of texts ``n`` it was measured on."""
    tox = toxicity_rows(classifiers)
    view = tox.pivot_table(index=["dataset", "metric"], columns="instrument", values="value", sort=False)
    view["n"] = tox.groupby(["dataset", "metric"], sort=False)["n"].first()
    return view


def toxicity_sentence(classifiers: pd.DataFrame) -> Markdown:
    """Both instruments' ROC-AUC on held-out tweets and on ToxiGen's statements, and -- when both
    lose more than ``NOTABLE_GAP`` on ToxiGen -- the warning that TP and EMT then undercount
    implicit hate."""
    tox = toxicity_rows(classifiers)
    auc = tox[tox["metric"] == "roc_auc"].set_index(["instrument", "dataset"])["value"]
    gap = min(auc[(MAIN_SCORER, TWEETS_AUC)] - auc[(MAIN_SCORER, TOXIGEN_AUC)],
              auc[(SECOND_SCORER, TWEETS_AUC)] - auc[(SECOND_SCORER, TOXIGEN_AUC)])
    text = (
        f"On held-out tweets the two scorers reach ROC-AUC {auc[(MAIN_SCORER, TWEETS_AUC)]:.2f} ({MAIN_SCORER}) "
        f"and {auc[(SECOND_SCORER, TWEETS_AUC)]:.2f} ({SECOND_SCORER}); on ToxiGen's hate vs neutral statements, "
        f"{auc[(MAIN_SCORER, TOXIGEN_AUC)]:.2f} and {auc[(SECOND_SCORER, TOXIGEN_AUC)]:.2f}. ")
    if gap > NOTABLE_GAP:
        text += ("Read every TP and EMT of this book with that in mind: this profile's instruments see the explicit toxicity "
                 "of tweets better than ToxiGen's implicit hate, so a continuation that is hateful without swearing "
                 "may count as non-toxic.")
    else:
        text += "Both instruments see ToxiGen's implicit hate about as well as the explicit toxicity of tweets."
    return Markdown(text)


def bias_view(classifiers: pd.DataFrame) -> pd.DataFrame:
    """The leaning classifier's metrics per split scheme (rows ``random``, ``media``)."""
    bias = classifiers[classifiers["instrument"].str.startswith("allsides_tfidf")].copy()
    # One classifier per split scheme: trained on the random (or media) train split, tested on its test split.
    bias["split"] = bias["instrument"].map(lambda name: "media" if name.endswith("_media") else "random")
    return bias.pivot_table(index="split", columns="metric", values="value").reindex(["random", "media"])


def bias_sentence(bias_view: pd.DataFrame) -> Markdown:
    """Accuracy against the majority class on both schemes, and -- when the media split is more
    than ``NOTABLE_GAP`` worse -- what that drop means."""
    r, m = bias_view.loc["random"], bias_view.loc["media"]
    text = (
        f"On the random split the classifier is right on {r['accuracy']:.0%} of test articles "
        f"(majority class: {r['majority_class_accuracy']:.0%}); on the media split, {m['accuracy']:.0%} "
        f"(majority class: {m['majority_class_accuracy']:.0%}). ")
    if r["accuracy"] - m["accuracy"] > NOTABLE_GAP:
        text += ("The drop from the random to the media split is what Baly et al. warn about: part of what a "
                 "leaning classifier learns from AllSides is the outlet's style, not the politics. ")
    text += ("The leaning shares of the chapter on the detoxifying text are the judgement of an instrument of this "
             "quality, used as the paper uses PoliticalBiasBERT: to compare text sets with each other.")
    return Markdown(text)


# ----------------------------------------------------------------------------- what the world is
# Radford et al. (2019), "Language Models are Unsupervised Multitask Learners", Table 3: GPT-2's
# smallest model (117M parameters), zero-shot, on enwik8 -- a real small LM's order of magnitude.
GPT2_SMALL_ENWIK8_BPB = 1.16


def world_facts(out: Path, source: str = "gpt2-bpe") -> Markdown:
    """The measured facts behind the chapter's "what this world is" callout, from the world's tables:
    the source model's size, training tokens and held-out bits per byte beside GPT-2 small's, the
    evaluator's margin over the models it scores, and one of the source model's BOS samples."""
    models = pd.read_csv(Path(out) / "models.csv").set_index("model")
    src = models.loc[source]
    evaluator = models.loc["evaluator", "heldout_news_bits_per_byte"] if "evaluator" in models.index else float("nan")
    scored = models.drop(index="evaluator", errors="ignore")["heldout_news_bits_per_byte"]
    margin = scored.min() - evaluator
    samples = bos_sample_lines(out, 1, max_chars=160)
    lines = [
        f"- The source model has {src['parameters'] / 1e6:.1f} M parameters and saw {src['train_tokens_seen'] / 1e6:.2f} M "
        f"training tokens; on held-out news it needs {src['heldout_news_bits_per_byte']:.2f} bits per byte "
        f"(perplexity {src['heldout_news_ppl']:.0f} per token). GPT-2's smallest model needs "
        f"{GPT2_SMALL_ENWIK8_BPB} bits per byte on enwik8, zero-shot (Radford et al., 2019, Table 3).",
        f"- The evaluator is {margin:.2f} bits per byte better on held-out news than the best model it scores"
        + (" — less than 0.2, so its perplexities rank fluent and disfluent text only roughly: read perplexity "
           "here as a coarse check, not as fluency." if margin < 0.2 else "."),
    ]
    if samples:
        lines.append(f"- What the source model writes from the start token: “{samples[0].split('] ', 1)[1]}”")
    return Markdown("\n".join(lines))
