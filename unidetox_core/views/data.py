"""The tables and figures of the data chapter: what each data set holds, counted, and a few examples."""

from __future__ import annotations


import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from .. import experiments
from ..data import load_allsides, load_release_text, load_tweets
from . import shown_path  # noqa: F401  (the chapter prints the CSV it writes with it)




def files_by_outcome(fetched: pd.DataFrame) -> dict[str, int]:
    """How many files ``data.fetch`` found present, copied from the mirror or downloaded, e.g.
    ``{"present": 188}``: one line that says whether this run had to get anything."""
    return fetched.groupby("how").size().to_dict()


# --------------------------------------------------------------------------------- evaluation prompts


def prompt_counts(prompts: pd.DataFrame) -> pd.DataFrame:
    """Prompts per domain and category (rows) and split (columns), with a ``total`` column."""
    return (
        prompts.groupby(["domain", "category", "split"]).size().unstack("split", fill_value=0)
        .assign(total=lambda t: t.sum(axis=1)).reset_index()
    )


def plot_prompt_groups(prompts: pd.DataFrame):
    """Horizontal bars of prompts per target group, largest group first, split by label."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    order = prompts.groupby("group").size().sort_values(ascending=False).index
    sns.countplot(data=prompts, y="group", hue="label", order=order, ax=ax)
    ax.set(xlabel="prompts", ylabel="target group")
    plt.tight_layout()
    return fig


def example_prompts(prompts: pd.DataFrame, n: int, seed: int = 0) -> pd.DataFrame:
    """``n`` random validation prompts of each category and label, sorted by category and label.

    Validation prompts only: the test prompts give every reported number, so the book does not
    dwell on them."""
    shuffled = prompts[prompts["split"] == "val"].sample(frac=1.0, random_state=seed)
    examples = shuffled.groupby(["category", "label"]).head(n).sort_values(["category", "label"])
    return examples[["category", "label", "text"]].reset_index(drop=True)


# --------------------------------------------------------------------------------- the toxic corpus


def tweet_label_counts(tweets: pd.DataFrame) -> pd.DataFrame:
    """Tweets per label (rows) and split (columns)."""
    return tweets.groupby(["label_name", "split"]).size().unstack("split").reset_index()


def toxic_corpus_counts(P: dict) -> tuple[pd.DataFrame, int]:
    """The table of the toxic-corpus section and the size of the profile's toxic corpus.

    Offline the corpus comes from the Davidson tweets, so the table counts all tweets by label and
    split (the reader sees what was left out); on the hub it is DGHS, and the table is one row."""
    toxic_n = len(experiments.toxic_texts(P))  # "world": the reserved half only
    if P["toxic_corpus"] in ("davidson", "world"):
        return tweet_label_counts(load_tweets()), toxic_n
    return pd.DataFrame({"corpus": ["DGHS (filtered)"], "examples": [toxic_n]}), toxic_n


# ----------------------------------------------------------------------- MMLU and the news articles


def allsides_articles(P: dict) -> pd.DataFrame:
    """The AllSides articles (``random`` scheme) where the profile reads the mirror; an empty frame
    with the counted columns on the hub profile, which does not use them."""
    if P["data_source"] == "mirror":
        return load_allsides("random")
    return pd.DataFrame(columns=["leaning", "split"])


def other_counts(mmlu_test: pd.DataFrame, mmlu_dev: pd.DataFrame, articles: pd.DataFrame) -> pd.DataFrame:
    """MMLU test and dev questions and subjects, then AllSides articles per leaning (most first):
    one row per count, columns ``set``, ``what``, ``count``."""
    rows = [
        ("MMLU", "test questions", len(mmlu_test)),
        ("MMLU", "dev questions (shots)", len(mmlu_dev)),
        ("MMLU", "subjects", mmlu_test["subject"].nunique()),
        *[("AllSides", f"{leaning} articles", n) for leaning, n in articles["leaning"].value_counts().items()],
    ]
    return pd.DataFrame(rows, columns=["set", "what", "count"])


# --------------------------------------------------------------------------- the authors' release


def release_texts(P: dict) -> pd.DataFrame:
    """The authors' released texts (column ``Text``) where the profile reads the mirror, else none."""
    return load_release_text() if P["data_source"] == "mirror" else pd.DataFrame({"Text": pd.Series(dtype=object)})


def words_per_text(texts: pd.Series) -> pd.Series:
    """Whitespace-separated words of each text: a unit that does not depend on any tokenizer."""
    return texts.str.split().str.len()


def plot_release_lengths(words: pd.Series):
    """Histogram of words per released text."""
    fig, ax = plt.subplots(figsize=(7, 3.5))
    sns.histplot(words, bins=30, ax=ax)
    ax.set(xlabel="words per text", ylabel="texts")
    plt.tight_layout()
    return fig


# ------------------------------------------------------------------------------ the chapter's record


def data_counts(prompt_counts: pd.DataFrame, other_counts: pd.DataFrame, toxic_n: int) -> pd.DataFrame:
    """Every count of the chapter in one long table (``domain``, ``category``, ``what``, ``count``,
    ``set``), for ``data_counts.csv``: prompts per domain, category and split (and total), the MMLU
    and AllSides counts, and the size of the toxic corpus."""
    return pd.concat(
        [
            prompt_counts.melt(id_vars=["domain", "category"], var_name="what", value_name="count").assign(set="prompts"),
            other_counts,
            pd.DataFrame([{"set": "toxic corpus", "what": "texts", "count": toxic_n}]),
        ],
        ignore_index=True,
    )
