"""The miniature world: a web-text corpus, two tokenizers, four small LMs and two classifiers.

Hub models cannot be loaded offline, so the ``mini`` profile trains its own stand-ins for the
paper's cast from the mirrored public data, and every later notebook loads them through the same
``models.load_model`` as hub ids (``resolve_model("world:gpt2-bpe", profile)`` gives the folder):

=================  ==============================  ==========================================
world name         architecture / tokenizer        role in the paper
=================  ==============================  ==========================================
``gpt2-bpe``       GPT-2, byte-level BPE            GPT-2 XL: distils the text, is detoxified
``opt-bpe``        OPT, the same BPE                OPT-6.7B: a target of another family
``llama-unigram``  LLaMA, Unigram (SentencePiece)   LLaMA-2-7B: crosses family *and* tokenizer
``evaluator``      LLaMA, BPE, ~2-3x the params     LLaMA-2-7B as the perplexity judge
``davidson_tfidf`` TF-IDF + logistic regression     the second toxicity instrument (Table 8)
``allsides_tfidf`` TF-IDF + logistic regression     PoliticalBiasBERT (Table 3)
=================  ==============================  ==========================================

**The corpus** ("web text") is AllSides news articles (``random``-scheme train split; its valid
split is held out for perplexity, its test split is never touched) mixed with Davidson tweets of
the train split. A share of the toxic training tweets is *reserved* for the toxic corpus
(:func:`toxic_corpus_texts`) and never enters the web text, so the toxic model later learns
something the base model has not seen. The other tweets are packed into thread-like documents of
``tweets_per_thread`` tweets, and their share of the training *tokens* is set exactly
(``tweet_token_share``, counted with the BPE tokenizer). Why the share matters: sampling from BOS
follows the *document* mix, and a feasibility run with tweets as 86% of the documents gave a base
model that wrote profane tweets from BOS (TP 0.94-0.99). Documents are packed GPT-2 style: each
starts with BOS (``<|endoftext|>``, or ``<s>`` ... ``</s>`` for the Unigram scheme), and the
stream is cut into blocks of ``block_tokens`` tokens, so BOS is always a document start.

**Caching.** Every step writes under ``<cache_dir>/world/<name>-<config_key>``; the key of a step
hashes its own settings *and* the keys of the steps it reads, so changing a parameter retrains
only what depends on it (the tweet share, say, keeps the tokenizers but retrains the models).
Model training checkpoints into ``<cache_dir>/world/train-<name>-<key>`` and resumes from there
after an interruption. A step is complete when its ``world.json`` (or its file) exists: it is
written last, atomically.

**Cost and reproducibility.** :func:`build_world` runs the data steps in this process, then
trains the four models and the classifiers in two single-threaded worker processes (one per
core). In the timed cold build of the book (2-core machine, load average about 2) the world's
chapter took 12.2 min (``results/mini/world/build_times.csv`` has each step; the larger world of
earlier builds took 18.5-21 min). With one torch thread per process the tokenizers and the models'
weights come out bit-identical in every fresh build. The Unigram pieces are trained by SentencePiece (``models.sentencepiece_unigram``):
the ``tokenizers`` Unigram trainer used before gave scores differing by up to 0.003 between runs, so
``llama-unigram`` and every result on it changed from build to build.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import json
import math
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from . import data
from .cache import atomic_path, config_key, write_csv_atomic, write_json_atomic

ROOT = Path(__file__).resolve().parents[1]

# Bump when a change of this file changes what a step produces: every cached step is rebuilt.
WORLD_VERSION = 1

MODEL_NAMES = ("gpt2-bpe", "opt-bpe", "llama-unigram", "evaluator")
TWEET_MARKERS = re.compile(r"@user|\bRT\b|#\w|\bhttp\b")

# The world of each profile. Sizes and training lengths are parameters; the mini values were
# chosen by measurement (results/mini/world/) so that the whole book builds in 45 minutes on a 2-core CPU.
WORLD_SETTINGS: dict[str, dict[str, Any]] = {
    "mini": {
        "seed": 0,
        # One torch thread per training process, always: the result then does not depend on the
        # machine (a different thread count sums floats in another order, and the weights differ),
        # and on a busy CPU one thread is also the fastest; workers use the other core.
        "threads": 1,  # torch threads while training and measuring; see torch_threads (not in any key)
        "workers": "auto",  # processes that train models side by side; see train_in_parallel (not in any key)
        # corpus
        "news_chars": 11_000_000,  # AllSides train articles drawn (in seeded order) for the stream
        "toxic_reserve_fraction": 0.5,  # share of toxic training tweets kept for the toxic corpus
        # Share of the training tokens that are tweet threads, calibrated on the source model's
        # validation TP (results/mini/world/mix_calibration.csv): 0.02 -> 0.31, 0.04 -> 0.57,
        # 0.08 -> 0.84. 0.04 lands in the target 0.35-0.65, near GPT-2 XL's 0.53, with 9% of BOS
        # samples tweet-like (threads are 21% of the documents: short ones, many starts). Calibrated
        # with the earlier 5.3 M source model (d_model 256, 480 steps); kept for the smaller one.
        "tweet_token_share": 0.04,
        "tweets_per_thread": 10,
        "train_tokens": 2_000_000,  # BPE tokens in the packed training stream
        "block_tokens": 252,  # tokens per training block: 4 below the context, see pack_blocks
        "heldout_news_articles": 40,  # AllSides *valid* articles for held-out perplexity
        "heldout_threads": 40,  # threads of *test* tweets for held-out perplexity
        # tokenizers
        "vocab_size": 8000,
        "tokenizer_news_chars": 3_000_000,  # news text the tokenizers are trained on ...
        "tokenizer_tweet_chars": 2_000_000,  # ... plus web tweets up to this many characters (all of them)
        # models: architecture, tokenizer, size and training of each
        "models": {
            # 3.4 M parameters each (the evaluator 6.8 M, twice as many, as LLaMA-2-7B is to a GPT-2 XL
            # class model), 360 steps of 8 blocks. Earlier builds used d_model 256 (5.3 M) and a 12 M
            # evaluator for 480 steps: 18.5 minutes for the world alone, and every later stage paid for
            # the larger models again; at this size a forward pass costs about half as much.
            # The source model trains 480 steps: it is the one that distils, and after 360 its samples
            # under the plausibility cut (alpha 0.1) ran into whitespace -- its 640 cut-only texts
            # averaged 16 words per 255 tokens, mean support 4 tokens -- and the UniDetox text was
            # mostly blank (9 words). After 480 steps:
            # 90 words, support 12 (64 texts, seed 0; the 640 cut-only texts of the 5.3 M model of
            # earlier builds: 134 words, support 17).
            "gpt2-bpe": {"arch": "gpt2", "tokenizer": "bpe", "d_model": 192, "n_layer": 4, "n_head": 4,
                         "context": 256, "steps": 480, "batch_size": 8, "lr": 2e-3, "init_seed": 0},
            "opt-bpe": {"arch": "opt", "tokenizer": "bpe", "d_model": 192, "n_layer": 4, "n_head": 4,
                        "context": 256, "steps": 360, "batch_size": 8, "lr": 2e-3, "init_seed": 1},
            "llama-unigram": {"arch": "llama", "tokenizer": "unigram", "d_model": 192, "n_layer": 4, "n_head": 4,
                              "context": 256, "steps": 360, "batch_size": 8, "lr": 2e-3, "init_seed": 2},
            "evaluator": {"arch": "llama", "tokenizer": "bpe", "d_model": 256, "n_layer": 6, "n_head": 4,
                          "context": 256, "steps": 360, "batch_size": 8, "lr": 1.5e-3, "init_seed": 3},
        },
        # classifiers
        "allsides_max_chars": 2000,  # article prefix the bias classifier reads (BERT reads ~512 tokens)
        "allsides_max_train_articles": 0,  # 0 = all 27,978 of the random train split
        "tfidf_max_features": 50_000,
        # checks run by build_world
        "bos_samples": 64,
        "bos_sample_tokens": 64,
    },
    "tiny": {
        "seed": 0,
        "threads": 1,
        "workers": 1,  # toy models: starting worker processes would take longer than the training
        "news_chars": 150_000,
        "toxic_reserve_fraction": 0.5,
        "tweet_token_share": 0.05,
        "tweets_per_thread": 5,
        "train_tokens": 30_000,
        "block_tokens": 60,
        "heldout_news_articles": 4,
        "heldout_threads": 6,
        "vocab_size": 800,  # Unigram needs room for every character it meets
        "tokenizer_news_chars": 150_000,
        "tokenizer_tweet_chars": 30_000,
        "models": {
            "gpt2-bpe": {"arch": "gpt2", "tokenizer": "bpe", "d_model": 32, "n_layer": 2, "n_head": 2,
                         "context": 64, "steps": 30, "batch_size": 8, "lr": 3e-3, "init_seed": 0},
            "opt-bpe": {"arch": "opt", "tokenizer": "bpe", "d_model": 32, "n_layer": 2, "n_head": 2,
                        "context": 64, "steps": 30, "batch_size": 8, "lr": 3e-3, "init_seed": 1},
            "llama-unigram": {"arch": "llama", "tokenizer": "unigram", "d_model": 32, "n_layer": 2, "n_head": 2,
                              "context": 64, "steps": 30, "batch_size": 8, "lr": 3e-3, "init_seed": 2},
            "evaluator": {"arch": "llama", "tokenizer": "bpe", "d_model": 48, "n_layer": 2, "n_head": 2,
                          "context": 64, "steps": 30, "batch_size": 8, "lr": 3e-3, "init_seed": 3},
        },
        "allsides_max_chars": 400,
        "allsides_max_train_articles": 2000,
        "tfidf_max_features": 5_000,
        "bos_samples": 4,
        "bos_sample_tokens": 8,
    },
}


@contextlib.contextmanager
def torch_threads(threads: int | str = "auto"):
    """Run the block with ``threads`` intra-op threads, then restore the previous number.

    The world trains with one thread per process (``threads: 1``), for two measured reasons:
    on the shared 2-core machine, under a load average of ~6, one thread trained the 5 M GPT-2
    2.6x faster than two (2,272 vs 876 tokens/s: two OpenMP threads that keep waiting for each
    other on a busy CPU spend most of their time idle); and the thread count changes the order in
    which floats are summed, so the same settings trained with 1 and 2 threads give different
    weights (max difference 0.05 after 30 tiny steps) -- with a fixed count they are bit-identical.
    ``"auto"`` (every core when the 1-minute load average is low, else one) is there for speed
    experiments, not for building the cached world.
    """
    import torch

    previous = torch.get_num_threads()
    if threads == "auto":
        cores = os.cpu_count() or 1
        threads = 1 if os.getloadavg()[0] >= cores - 0.5 else cores
    torch.set_num_threads(int(threads))
    try:
        yield int(threads)
    finally:
        torch.set_num_threads(previous)


class WorldError(ValueError):
    """A world setting or name that cannot be used; the message names it and says what would work."""


# ------------------------------------------------------------------------------------- settings
def world_settings(profile_values: dict | str, **overrides) -> dict[str, Any]:
    """The world settings of a profile (``mini`` or ``tiny``) with ``overrides`` applied.

    ``models`` overrides merge per model: ``models={"gpt2-bpe": {"steps": 100}}`` changes one value.
    Also carries where things go (``cache_dir``, ``results_dir``, resolved against the repository).
    """
    name = profile_values if isinstance(profile_values, str) else profile_values.get("profile", "")
    if name not in WORLD_SETTINGS:
        raise WorldError(
            f"profile {name!r} has no miniature world; use 'mini' or 'tiny' (the 'paper' profile loads hub models)."
        )
    settings = copy.deepcopy(WORLD_SETTINGS[name])
    for key, value in overrides.items():
        if key not in settings:
            raise WorldError(f"world setting {key!r} is unknown; known: {sorted(settings)}.")
        if key == "models":
            for model_name, changes in value.items():
                if model_name not in settings["models"]:
                    raise WorldError(f"world model {model_name!r} is unknown; use one of {MODEL_NAMES}.")
                unknown = set(changes) - set(settings["models"][model_name])
                if unknown:
                    raise WorldError(f"models[{model_name!r}] has no setting(s) {sorted(unknown)}.")
                settings["models"][model_name].update(changes)
        else:
            settings[key] = value
    if not 0 <= settings["tweet_token_share"] < 1:
        raise WorldError(f"tweet_token_share={settings['tweet_token_share']} must lie in [0, 1) (e.g. 0.02).")
    if not 0 <= settings["toxic_reserve_fraction"] < 1:
        raise WorldError(f"toxic_reserve_fraction={settings['toxic_reserve_fraction']} must lie in [0, 1).")
    for model_name, spec in settings["models"].items():
        if spec["context"] < settings["block_tokens"] + 1:
            raise WorldError(
                f"models[{model_name!r}]['context']={spec['context']} must exceed block_tokens={settings['block_tokens']} "
                "(blocks are re-tokenized and may grow by a token or two)."
            )
    values = profile_values if isinstance(profile_values, dict) else {}
    settings["profile"] = name
    settings["cache_dir"] = str(_rooted(values.get("cache_dir", "cache")))
    settings["results_dir"] = str(_rooted(values.get("results_dir", f"results/{name}")))
    return settings


def _rooted(path) -> Path:
    path = Path(os.path.expanduser(str(path)))
    return path if path.is_absolute() else ROOT / path


def world_dir(settings: dict) -> Path:
    return Path(settings["cache_dir"]) / "world"


def results_dir(settings: dict) -> Path:
    return Path(settings["results_dir"]) / "world"


# ----------------------------------------------------------------------------------- config keys
# Each step's configuration holds its own settings and the configurations of what it reads, so
# its key changes when anything upstream changes and stays put when only something else does.
def corpus_config(settings: dict) -> dict:
    keys = ("seed", "news_chars", "toxic_reserve_fraction", "heldout_news_articles", "heldout_threads",
            "tweets_per_thread")
    return {"step": "corpus", "version": WORLD_VERSION, **{k: settings[k] for k in keys}}


def tokenizer_config(settings: dict, kind: str) -> dict:
    config = {"step": f"tokenizer-{kind}", "corpus": corpus_config(settings), "kind": kind,
              "vocab_size": settings["vocab_size"], "tokenizer_news_chars": settings["tokenizer_news_chars"],
              "tokenizer_tweet_chars": settings["tokenizer_tweet_chars"]}
    if kind == "unigram":  # a new key for the SentencePiece-trained pieces (the BPE key is unchanged)
        config["trainer"] = "sentencepiece"
    return config


def stream_config(settings: dict) -> dict:
    """The selection of training documents (made with the BPE tokenizer, shared by both schemes)."""
    keys = ("tweet_token_share", "train_tokens")
    return {"step": "stream", "tokenizer": tokenizer_config(settings, "bpe"), **{k: settings[k] for k in keys}}


def blocks_config(settings: dict, kind: str) -> dict:
    return {"step": f"blocks-{kind}", "stream": stream_config(settings), "tokenizer": tokenizer_config(settings, kind),
            "block_tokens": settings["block_tokens"]}


def model_config(settings: dict, name: str) -> dict:
    spec = model_spec(settings, name)
    return {"step": f"model-{name}", "blocks": blocks_config(settings, spec["tokenizer"]), **spec}


def classifier_config(settings: dict, name: str) -> dict:
    if name == "davidson_tfidf":
        own = {"max_features": settings["tfidf_max_features"]}
    elif name in ("allsides_tfidf", "allsides_tfidf_media"):
        own = {"max_features": settings["tfidf_max_features"], "max_chars": settings["allsides_max_chars"],
               "max_train_articles": settings["allsides_max_train_articles"]}
    else:
        raise WorldError(f"classifier {name!r} is unknown; use 'davidson_tfidf' or 'allsides_tfidf'.")
    return {"step": name, "version": WORLD_VERSION, "seed": settings["seed"], **own}


def model_spec(settings: dict, name: str) -> dict:
    if name not in settings["models"]:
        raise WorldError(f"world model {name!r} is unknown; use one of {sorted(settings['models'])}.")
    return dict(settings["models"][name])


def step_path(settings: dict, name: str, config: dict, suffix: str = "") -> Path:
    return world_dir(settings) / f"{name}-{config_key(config)}{suffix}"


# ------------------------------------------------------------------------------------------ corpus
@functools.lru_cache(maxsize=2)
def load_articles(scheme: str) -> pd.DataFrame:
    """``data.load_allsides(scheme)``, read once per process (parsing 37,554 articles takes ~5 s and
    the corpus, the classifiers and their report all need them). Do not modify the frame."""
    return data.load_allsides(scheme)


def reserved_toxic_mask(tweets: pd.DataFrame, fraction: float, seed: int) -> pd.Series:
    """True for the toxic *training* tweets reserved for the toxic corpus: ``fraction`` of each label
    (hate, offensive), drawn with ``seed``. They never enter the web text."""
    rng = np.random.default_rng(seed)
    reserved = pd.Series(False, index=tweets.index)
    for label in (0, 1):  # hate, offensive
        index = tweets.index[(tweets["split"] == "train") & (tweets["label"] == label)].to_numpy()
        chosen = rng.permutation(index)[: int(round(len(index) * fraction))]
        reserved.loc[chosen] = True
    return reserved


def pack_threads(texts: list[str], per_thread: int) -> list[str]:
    """Tweets, in the given order, joined by newlines into thread-like documents of ``per_thread``."""
    return ["\n".join(texts[i:i + per_thread]) for i in range(0, len(texts), per_thread)]


def news_document(title: str, text: str) -> str:
    """An article as the web text shows it: headline, blank line, body."""
    title, text = str(title).strip(), str(text).strip()
    return f"{title}\n\n{text}" if title else text


def build_corpus(settings: dict, progress: bool = True) -> Path:
    """Select the documents of the world (cached): returns the folder holding ``documents.parquet``.

    Columns: ``doc_id``, ``kind`` (``news`` / ``thread``), ``split`` (``train`` / ``heldout``),
    ``text``, ``n_tweets``, ``n_toxic_tweets``. Train news come from the AllSides ``random`` train
    split in a seeded order until ``news_chars`` characters; held-out news from its ``valid``
    split. Train threads pack the web tweets (train split, not reserved); held-out threads pack
    *test* tweets. ``toxic.json`` lists the reserved toxic tweets.
    """
    config = corpus_config(settings)
    path = step_path(settings, "corpus", config)
    if (path / "world.json").exists():
        return path
    started = time.perf_counter()
    seed = settings["seed"]
    rng = np.random.default_rng(seed)

    articles = load_articles("random")
    train = articles[articles["split"] == "train"]
    train = train.iloc[rng.permutation(len(train))]
    docs = [news_document(t, x) for t, x in zip(train["title"], train["text"])]
    lengths = np.cumsum([len(d) for d in docs])
    n_news = int(np.searchsorted(lengths, settings["news_chars"]) + 1)
    news_train = pd.DataFrame({"text": docs[:n_news], "source_id": train["ID"].iloc[:n_news].tolist()})
    valid = articles[articles["split"] == "valid"]
    valid = valid.iloc[rng.permutation(len(valid))[: settings["heldout_news_articles"]]]
    news_heldout = pd.DataFrame({"text": [news_document(t, x) for t, x in zip(valid["title"], valid["text"])],
                                 "source_id": valid["ID"].tolist()})

    tweets = data.load_tweets(seed=0)  # the project's fixed train/test split of the tweets
    tweets = tweets[tweets["text"].str.strip() != ""]
    reserved = reserved_toxic_mask(tweets, settings["toxic_reserve_fraction"], seed)
    web = tweets[(tweets["split"] == "train") & ~reserved]
    web = web.iloc[rng.permutation(len(web))]
    test = tweets[tweets["split"] == "test"]
    test = test.iloc[rng.permutation(len(test))]
    per = settings["tweets_per_thread"]
    n_heldout = min(settings["heldout_threads"] * per, len(test))

    def thread_rows(frame: pd.DataFrame) -> pd.DataFrame:
        texts, toxic = frame["text"].tolist(), frame["toxic"].to_numpy()
        return pd.DataFrame({
            "text": pack_threads(texts, per),
            "n_tweets": [len(texts[i:i + per]) for i in range(0, len(texts), per)],
            "n_toxic_tweets": [int(toxic[i:i + per].sum()) for i in range(0, len(texts), per)],
        })

    parts = [
        news_train.assign(kind="news", split="train"),
        news_heldout.assign(kind="news", split="heldout"),
        thread_rows(web).assign(kind="thread", split="train"),
        thread_rows(test.iloc[:n_heldout]).assign(kind="thread", split="heldout"),
    ]
    documents = pd.concat(parts, ignore_index=True)
    documents["n_tweets"] = documents["n_tweets"].fillna(0).astype(int)
    documents["n_toxic_tweets"] = documents["n_toxic_tweets"].fillna(0).astype(int)
    documents["source_id"] = documents["source_id"].fillna("")
    documents.insert(0, "doc_id", range(len(documents)))
    toxic = tweets[reserved]
    summary = {
        "config": config,
        "news_train_articles": int(n_news),
        "news_train_chars": int(news_train["text"].str.len().sum()),
        "news_heldout_articles": int(len(news_heldout)),
        "web_tweets": int(len(web)),
        "web_toxic_tweets": int(web["toxic"].sum()),
        "web_threads": int((documents["kind"].eq("thread") & documents["split"].eq("train")).sum()),
        "toxic_corpus_tweets": int(len(toxic)),
        "toxic_corpus_by_label": {k: int(v) for k, v in toxic["label_name"].value_counts().items()},
        "heldout_threads": int((documents["kind"].eq("thread") & documents["split"].eq("heldout")).sum()),
        "seconds": round(time.perf_counter() - started, 1),
    }
    with atomic_path(path) as tmp:
        tmp.mkdir()
        documents.to_parquet(tmp / "documents.parquet", index=False)
        (tmp / "toxic.json").write_text(json.dumps(toxic["text"].tolist(), ensure_ascii=False), encoding="utf-8")
        (tmp / "world.json").write_text(json.dumps(summary, indent=2) + "\n")
    return path


def load_documents(settings: dict) -> pd.DataFrame:
    return pd.read_parquet(build_corpus(settings) / "documents.parquet")


def toxic_corpus_texts(profile_values: dict | str = "mini", **overrides) -> list[str]:
    """The toxic tweets the world reserved for the toxic model (hate and offensive, train split).

    Use these, not ``data.load_toxic_corpus()``, for the mini toxic model: the web text the base
    models learned from holds the *other* toxic training tweets, and training the toxic model on
    tweets the base model has already seen would blur the difference contrastive decoding needs.
    """
    settings = world_settings(profile_values, **overrides)
    return json.loads((build_corpus(settings) / "toxic.json").read_text(encoding="utf-8"))


# -------------------------------------------------------------------------------------- tokenizers
def train_world_tokenizer(settings: dict, kind: str, progress: bool = True) -> Path:
    """Train the ``bpe`` or ``unigram`` tokenizer on the world's web text (cached; returns its folder).

    Trained on the first ``tokenizer_news_chars`` characters of the training news plus the first
    ``tokenizer_tweet_chars`` characters of web tweets (all of them on the mini profile), not on
    the tweet *share* of the stream: the share is tuned after the tokenizers exist, and
    calibrating it should not retrain them.
    """
    from . import models

    config = tokenizer_config(settings, kind)
    path = step_path(settings, f"tokenizer-{kind}", config)
    if (path / "world.json").exists():
        return path
    started = time.perf_counter()
    documents = load_documents(settings)
    train = documents[documents["split"] == "train"]
    news = train.loc[train["kind"] == "news", "text"]
    news = news[news.str.len().cumsum() <= max(settings["tokenizer_news_chars"], int(news.str.len().iloc[0]))]
    tweets = pd.Series([t for thread in train.loc[train["kind"] == "thread", "text"] for t in thread.split("\n")])
    tweets = tweets[tweets.str.len().cumsum() <= settings["tokenizer_tweet_chars"]]
    texts = news.tolist() + tweets.tolist()
    tokenizer = models.train_tokenizer(texts, kind, vocab_size=settings["vocab_size"])
    summary = {"config": config, "kind": kind, "vocab_size": len(tokenizer), "trained_on_chars": int(sum(map(len, texts))),
               "seconds": round(time.perf_counter() - started, 1)}
    with atomic_path(path) as tmp:
        tokenizer.save_pretrained(tmp)
        (tmp / "world.json").write_text(json.dumps(summary, indent=2) + "\n")
    return path


def load_world_tokenizer(settings: dict, kind: str):
    from transformers import AutoTokenizer

    from .models import prepare_tokenizer

    return prepare_tokenizer(AutoTokenizer.from_pretrained(str(train_world_tokenizer(settings, kind))))


def document_markers(tokenizer) -> tuple[str, str]:
    """What goes before and after each document: GPT-2's single ``<|endoftext|>`` before it (it
    ends the previous one too), or LLaMA's ``<s>`` before and ``</s>`` after."""
    bos, eos = tokenizer.bos_token, tokenizer.eos_token
    return bos, ("" if eos == bos else eos)


def _token_counts(tokenizer, texts: list[str]) -> list[int]:
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def cut_to_tokens(tokenizer, text: str, n_tokens: int) -> str:
    """The prefix of ``text`` that holds its first ``n_tokens`` tokens (cut at a token start)."""
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    return text if n_tokens >= len(offsets) else text[: offsets[n_tokens][0]]


def build_stream(settings: dict, progress: bool = True) -> Path:
    """Choose the training documents so that tweet threads are exactly ``tweet_token_share`` of
    ``train_tokens`` BPE tokens (cached; returns the folder of ``stream.json``).

    News articles and threads are taken in the corpus's seeded order until each budget is full;
    the last one of each kind is cut at a token boundary so the budgets hold exactly. The chosen
    documents are then shuffled together (seeded): the stream both tokenizers pack.
    """
    config = stream_config(settings)
    path = step_path(settings, "stream", config)
    if (path / "world.json").exists():
        return path
    started = time.perf_counter()
    tokenizer = load_world_tokenizer(settings, "bpe")
    documents = load_documents(settings)
    train = documents[documents["split"] == "train"]
    total = settings["train_tokens"]
    budgets = {"thread": int(round(total * settings["tweet_token_share"]))}
    budgets["news"] = total - budgets["thread"]
    chosen, counts = [], {}
    for kind in ("news", "thread"):
        pool = train[train["kind"] == kind]
        budget, used = budgets[kind], 0
        # Tokenize in slices until the budget is covered: the whole pool may be far bigger.
        for start in range(0, len(pool), 256):
            if used >= budget:
                break
            part = pool.iloc[start:start + 256]
            # +1: the BOS marker that precedes each document in the stream counts toward its budget.
            for (_, row), n in zip(part.iterrows(), _token_counts(tokenizer, part["text"].tolist())):
                if used >= budget:
                    break
                take = min(n + 1, budget - used)
                text = row["text"] if take == n + 1 else cut_to_tokens(tokenizer, row["text"], take - 1)
                chosen.append({"doc_id": int(row["doc_id"]), "kind": kind, "text": text,
                               "n_tweets": int(row["n_tweets"]), "n_toxic_tweets": int(row["n_toxic_tweets"])})
                used += take
        if used < budget:
            raise WorldError(
                f"the corpus holds only {used:,} BPE tokens of {kind} for a budget of {budget:,}; raise "
                f"{'news_chars' if kind == 'news' else 'the tweet pool (lower toxic_reserve_fraction)'} or lower "
                "train_tokens / tweet_token_share."
            )
        counts[kind] = used
    order = np.random.default_rng(settings["seed"] + 1).permutation(len(chosen))
    chosen = [chosen[i] for i in order]
    n_threads = sum(d["kind"] == "thread" for d in chosen)
    summary = {
        "config": config,
        "tokens": counts,
        "thread_token_share": counts["thread"] / max(sum(counts.values()), 1),
        "documents": {"news": len(chosen) - n_threads, "thread": n_threads},
        "thread_document_share": n_threads / max(len(chosen), 1),
        "tweets": int(sum(d["n_tweets"] for d in chosen)),
        "toxic_tweets": int(sum(d["n_toxic_tweets"] for d in chosen)),
        "seconds": round(time.perf_counter() - started, 1),
    }
    with atomic_path(path) as tmp:
        tmp.mkdir()
        (tmp / "stream.json").write_text(json.dumps(chosen, ensure_ascii=False), encoding="utf-8")
        (tmp / "world.json").write_text(json.dumps(summary, indent=2) + "\n")
    return path


def pack_blocks(tokenizer, documents: list[str], block_tokens: int) -> list[str]:
    """GPT-2-style packing: documents with their markers concatenated, cut every ``block_tokens``
    tokens. Returns the blocks as *text* (``finetune`` takes texts), cut at token starts so they
    partition the stream; re-tokenizing a block can differ from the stream's tokens by a token or
    two at its edges, which is why the model context is a few tokens longer than a block."""
    before, after = document_markers(tokenizer)
    stream = "".join(before + doc + after for doc in documents)
    if not stream:
        return []
    offsets = tokenizer(stream, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    starts = [start for start, _ in offsets]
    cuts = starts[::block_tokens] + [len(stream)]
    return [stream[a:b] for a, b in zip(cuts[:-1], cuts[1:]) if b > a]


def build_blocks(settings: dict, kind: str, progress: bool = True) -> Path:
    """Training and held-out blocks for tokenizer ``kind`` (cached; returns the folder).

    ``train.json`` packs the stream; ``heldout_news.json`` and ``heldout_threads.json`` pack the
    held-out documents the same way (perplexity is measured on them). ``world.json`` records the
    token share of threads as *this* tokenizer counts it (exact for BPE by construction).
    """
    config = blocks_config(settings, kind)
    path = step_path(settings, f"blocks-{kind}", config)
    if (path / "world.json").exists():
        return path
    started = time.perf_counter()
    tokenizer = load_world_tokenizer(settings, kind)
    stream = json.loads((build_stream(settings, progress) / "stream.json").read_text(encoding="utf-8"))
    documents = load_documents(settings)
    heldout = documents[documents["split"] == "heldout"]
    block = settings["block_tokens"]
    blocks = {
        "train": pack_blocks(tokenizer, [d["text"] for d in stream], block),
        "heldout_news": pack_blocks(tokenizer, heldout.loc[heldout["kind"] == "news", "text"].tolist(), block),
        "heldout_threads": pack_blocks(tokenizer, heldout.loc[heldout["kind"] == "thread", "text"].tolist(), block),
    }
    before, after = document_markers(tokenizer)
    tokens = {kind_: sum(_token_counts(tokenizer, [before + d["text"] + after for d in stream if d["kind"] == kind_]))
              for kind_ in ("news", "thread")}
    retokenized = _token_counts(tokenizer, blocks["train"])
    summary = {
        "config": config,
        "tokens": tokens,
        "thread_token_share": tokens["thread"] / max(sum(tokens.values()), 1),
        "blocks": {k: len(v) for k, v in blocks.items()},
        "max_block_tokens_retokenized": max(retokenized) if retokenized else 0,
        "chars_per_token": sum(map(len, blocks["train"])) / max(sum(retokenized), 1),
        "seconds": round(time.perf_counter() - started, 1),
    }
    with atomic_path(path) as tmp:
        tmp.mkdir()
        for name, texts in blocks.items():
            (tmp / f"{name}.json").write_text(json.dumps(texts, ensure_ascii=False), encoding="utf-8")
        (tmp / "world.json").write_text(json.dumps(summary, indent=2) + "\n")
    return path


def load_blocks(settings: dict, kind: str, part: str = "train") -> list[str]:
    return json.loads((build_blocks(settings, kind) / f"{part}.json").read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------- models
def heldout_loss(model, tokenizer, blocks: list[str], max_length: int, batch_size: int = 16) -> dict:
    """Mean token NLL of ``blocks`` under ``model`` (float32, no dropout), with perplexity and bits
    per UTF-8 byte. Bits per byte compare models with *different tokenizers*; perplexity per token
    does not (a Unigram token is not a BPE token). The markers' characters are not counted as bytes."""
    import torch

    from .finetune import pad_right, summed_token_nll, tokenize_texts

    was_training = model.training
    model.eval()
    sequences = tokenize_texts(tokenizer, blocks, max_length, prepend_bos=False)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    nll_sum, n_tokens = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(sequences), batch_size):
            batch = pad_right(sequences[start:start + batch_size], pad_id)
            nll, n = summed_token_nll(model, batch["input_ids"], batch["attention_mask"])
            nll_sum += float(nll)
            n_tokens += n
    model.train(was_training)
    markers = [m for m in document_markers(tokenizer) if m]
    text = "".join(blocks)
    for marker in markers:
        text = text.replace(marker, "")
    n_bytes = len(text.encode("utf-8"))
    loss = nll_sum / max(n_tokens, 1)
    return {"loss": loss, "ppl": math.exp(loss), "bits_per_byte": nll_sum / math.log(2) / max(n_bytes, 1),
            "tokens": n_tokens, "bytes": n_bytes}


def pretrain_world_model(settings: dict, name: str, progress: bool = True):
    """Pre-train world model ``name`` from scratch on its tokenizer's blocks, in memory.

    Training is ``finetune.finetune`` -- the project's one training function -- with a linear
    learning-rate decay and gradient clipping at 1.0 (from-scratch training without them is less
    stable at the learning rates small models want), no BOS prepended (the blocks carry their own
    document markers), and, for runs of 100 steps or more, checkpoints at every quarter under
    ``train-<name>-<key>`` so an interrupted build resumes. Returns ``(model, tokenizer, summary)``:
    sizes, time, load and held-out quality before and after training.
    """
    from . import models
    from .finetune import finetune

    config = model_config(settings, name)
    spec = model_spec(settings, name)
    tokenizer = load_world_tokenizer(settings, spec["tokenizer"])
    blocks = load_blocks(settings, spec["tokenizer"], "train")
    sizes = {k: spec[k] for k in ("d_model", "n_layer", "n_head")}
    model = models.build_small_model(spec["arch"], tokenizer, seed=spec["init_seed"], max_positions=spec["context"], **sizes)
    heldout = load_blocks(settings, spec["tokenizer"], "heldout_news")
    # The untrained model is only a reference point (about ln V): a few blocks measure it.
    before = heldout_loss(model, tokenizer, heldout[:16], spec["context"])
    steps = spec["steps"]
    checkpoints = steps >= 100  # a tiny run is faster to redo than to checkpoint
    quarter = max(steps // 4, 1)
    load_start = os.getloadavg()[0]
    cpu_start = time.process_time()
    history = finetune(
        model, tokenizer, blocks, lr=spec["lr"], batch_size=spec["batch_size"], steps=steps,
        max_length=spec["context"], seed=settings["seed"],
        save_steps=range(quarter, steps + 1, quarter) if checkpoints else (),
        output_dir=training_dir(settings, name) if checkpoints else None,
        lr_schedule="linear", max_grad_norm=1.0, prepend_bos=False, progress=progress,
    )
    summary = {
        "config": config,
        "name": name,
        "arch": spec["arch"],
        "tokenizer": spec["tokenizer"],
        "parameters": models.count_parameters(model),
        "train_tokens_seen": history["tokens"],
        "train_seconds": round(history["wall_time_s"], 1),
        # CPU time of this process: with one thread it is what the training costs on an idle core.
        "train_cpu_seconds": round(time.process_time() - cpu_start, 1),
        "tokens_per_s": round(history["tokens_per_s"] or 0.0, 1),
        "bf16": history["bf16"],
        "resumed_from": history["resumed_from"],
        "load_avg_1min_start": round(load_start, 2),
        "load_avg_1min_end": round(os.getloadavg()[0], 2),
        "final_train_loss": float(np.mean(history["loss"][-10:])) if history["loss"] else None,
        "loss_curve": [round(x, 4) for x in history["loss"]],
        "heldout_news_untrained": before,
        "heldout_news": heldout_loss(model, tokenizer, heldout, spec["context"]),
        "heldout_threads": heldout_loss(model, tokenizer, load_blocks(settings, spec["tokenizer"], "heldout_threads"),
                                        spec["context"]),
    }
    return model, tokenizer, summary


def training_dir(settings: dict, name: str) -> Path:
    return world_dir(settings) / f"train-{name}-{config_key(model_config(settings, name))}"


def train_world_model(settings: dict, name: str, progress: bool = True) -> Path:
    """World model ``name``, pre-trained once and cached: returns the ``save_pretrained`` folder,
    loadable with ``models.load_model``; ``world.json`` beside the weights says how it was made."""
    from . import models

    path = step_path(settings, name, model_config(settings, name))
    if (path / "world.json").exists():
        return path
    with torch_threads(settings["threads"]) as threads:
        model, tokenizer, summary = pretrain_world_model(settings, name, progress)
    summary["torch_threads"] = threads
    models.save_model(model, tokenizer, path)
    write_json_atomic(path / "world.json", summary)  # last: marks the folder complete
    shutil.rmtree(training_dir(settings, name), ignore_errors=True)  # checkpoints only serve an interrupted run
    return path


def model_summary(settings: dict, name: str) -> dict:
    return json.loads((train_world_model(settings, name) / "world.json").read_text())


def resolve_model(name: str, profile_values: dict | str, progress: bool = True, **overrides) -> str:
    """The folder of a world model for ``models.load_model``; any other name passes through.

    ``"world:gpt2-bpe"`` (the profiles' spelling) or ``"gpt2-bpe"`` builds the model -- and what it
    needs -- on first use, then returns the cached folder. A hub id such as ``"gpt2-xl"`` or a
    local folder is returned unchanged, so callers need not care which profile they run.
    """
    if not isinstance(name, str) or not name:
        raise WorldError(f"name={name!r} must be a model name such as 'world:gpt2-bpe' or a hub id.")
    if not name.startswith("world:"):
        if name in MODEL_NAMES:
            raise WorldError(f"name={name!r}: write 'world:{name}' for the world model, or give a hub id / folder.")
        return name
    settings = world_settings(profile_values, **overrides)
    return str(train_world_model(settings, name.split(":", 1)[1], progress=progress))


# ----------------------------------------------------------------------------------- classifiers
def _tfidf(name: str, settings: dict, **kwargs):
    from .scorers import TfidfClassifierScorer

    return TfidfClassifierScorer(name, max_features=settings["tfidf_max_features"], seed=settings["seed"], **kwargs)


def allsides_texts(frame: pd.DataFrame, max_chars: int) -> list[str]:
    """Headline and the first ``max_chars`` characters of the body: the part a 512-token reader sees."""
    return [f"{t}\n\n{x[:max_chars]}" for t, x in zip(frame["title"], frame["text"])]


def train_classifier(settings: dict, name: str, progress: bool = True) -> Path:
    """Fit and save a TF-IDF + logistic-regression scorer (cached; returns the ``.joblib`` path).

    - ``davidson_tfidf``: Davidson *train* tweets, hate or offensive (1) vs neither (0);
    - ``allsides_tfidf``: AllSides ``random`` train articles, left / center / right;
    - ``allsides_tfidf_media``: the same on the ``media`` train split, only to report the
      media-split accuracy as Baly et al. define it (train and test outlets apart).
    """
    config = classifier_config(settings, name)
    path = step_path(settings, name, config, ".joblib")
    if path.exists():
        return path
    started = time.perf_counter()
    if name == "davidson_tfidf":
        tweets = data.load_tweets(seed=0)
        train = tweets[tweets["split"] == "train"]
        scorer = _tfidf(name, settings, positive_label=1).fit(train["text"].tolist(), train["toxic"].astype(int).tolist())
    else:
        scheme = "media" if name.endswith("_media") else "random"
        articles = load_articles(scheme)
        train = articles[articles["split"] == "train"]
        if settings["allsides_max_train_articles"]:
            train = train.sample(n=min(settings["allsides_max_train_articles"], len(train)), random_state=settings["seed"])
        scorer = _tfidf(name, settings, class_order=list(data.LEANINGS)).fit(
            allsides_texts(train, settings["allsides_max_chars"]), train["leaning"].tolist()
        )
    scorer.save(path)
    write_json_atomic(path.with_suffix(".json"), {"config": config, "seconds": round(time.perf_counter() - started, 1)})
    return path


def scorer_path(name: str, profile_values: dict | str, **overrides) -> str:
    """Path of the world's ``davidson_tfidf`` or ``allsides_tfidf`` file, trained on first use:
    ``scorers.get_toxicity_scorer("davidson_tfidf", path=world.scorer_path("davidson_tfidf", profile))``."""
    return str(train_classifier(world_settings(profile_values, **overrides), name))


def classifier_report(settings: dict, progress: bool = True) -> pd.DataFrame:
    """What each offline instrument sees, on data none of them trained on.

    Toxicity: ROC-AUC of ``profanity_check`` and ``davidson_tfidf`` on the held-out (test) tweets --
    toxic vs neither, and hate / offensive each vs neither -- and on the ToxiGen seed sentences
    (hate vs neutral: *implicit* hate, few swear words). Bias: accuracy and macro-F1 of
    ``allsides_tfidf`` (random train) on the test split, and of the media-trained twin.
    """
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    from .scorers import ProfanityCheckScorer, TfidfClassifierScorer

    rows = []
    tweets = data.load_tweets(seed=0)
    test = tweets[tweets["split"] == "test"]
    seeds = data.load_toxigen_seed_prompts()
    toxicity = {"profanity_check": ProfanityCheckScorer(),
                "davidson_tfidf": TfidfClassifierScorer.load(train_classifier(settings, "davidson_tfidf"))}
    for scorer_name, scorer in toxicity.items():
        tweet_scores = scorer(test["text"].tolist())
        comparisons = {
            "tweets: hate+offensive vs neither": np.ones(len(test), bool),
            "tweets: hate vs neither": test["label"].isin([0, 2]).to_numpy(),
            "tweets: offensive vs neither": test["label"].isin([1, 2]).to_numpy(),
        }
        for dataset, keep in comparisons.items():
            y = test["toxic"].to_numpy()[keep]
            rows.append({"instrument": scorer_name, "dataset": dataset, "metric": "roc_auc",
                         "value": roc_auc_score(y, tweet_scores[keep]), "n": int(keep.sum())})
        seed_scores = scorer(seeds["text"].tolist())
        hate = (seeds["label"] == "hate").to_numpy()
        rows.append({"instrument": scorer_name, "dataset": "ToxiGen seeds: hate vs neutral", "metric": "roc_auc",
                     "value": roc_auc_score(hate, seed_scores), "n": len(hate)})
        # The share over 0.5 is what TP counts: how often the instrument calls a sentence toxic.
        toxic_tweets = test["toxic"].to_numpy()
        for dataset, values in (("tweets: hate+offensive", tweet_scores[toxic_tweets]),
                                ("tweets: neither", tweet_scores[~toxic_tweets]),
                                ("ToxiGen seeds: hate", seed_scores[hate]),
                                ("ToxiGen seeds: neutral", seed_scores[~hate])):
            rows.append({"instrument": scorer_name, "dataset": dataset, "metric": "share > 0.5",
                         "value": float((values > 0.5).mean()), "n": len(values)})
    same_test = "the released random and media test splits hold the same 1,300 article IDs"
    for name, scheme in (("allsides_tfidf", "random"), ("allsides_tfidf_media", "media")):
        scorer = TfidfClassifierScorer.load(train_classifier(settings, name))
        articles = load_articles(scheme)
        test_articles = articles[articles["split"] == "test"]
        predicted = np.array(data.LEANINGS)[scorer(allsides_texts(test_articles, settings["allsides_max_chars"])).argmax(1)]
        truth = test_articles["leaning"].to_numpy()
        majority = test_articles["leaning"].value_counts(normalize=True).iloc[0]
        for metric, value in (("accuracy", accuracy_score(truth, predicted)),
                              ("macro_f1", f1_score(truth, predicted, average="macro")),
                              ("majority_class_accuracy", majority)):
            rows.append({"instrument": name, "dataset": f"AllSides test, trained on the {scheme} train split",
                         "metric": metric, "value": float(value), "n": len(test_articles), "note": same_test})
    return pd.DataFrame(rows)


# Baly et al. (EMNLP 2020), "We Can Detect Your Bias", Table 3, *as recalled by the engineer who
# wrote this*: the PDF could not be opened offline to check the exact decimals. Only the rounded
# level and the gap between the splits are claimed; verify against the paper before quoting digits.
BALY_REPORTED = pd.DataFrame([
    {"split": "random", "model": "BERT, fine-tuned", "metric": "macro-F1 and accuracy", "approx_value": "~80",
     "status": "recalled, unverified"},
    {"split": "media", "model": "BERT, fine-tuned", "metric": "macro-F1 and accuracy", "approx_value": "~35-40",
     "status": "recalled, unverified"},
    {"split": "media", "model": "their adversarial media adaptation + triplet loss (+ media features)",
     "metric": "macro-F1 and accuracy", "approx_value": "well above BERT's; exact figure not recalled",
     "status": "recalled, unverified"},
])


# ------------------------------------------------------------------------------ toxicity of a model
def source_toxicity(model_path: str, profile_values: dict, split: str = "val", seed: int = 0,
                    progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Validation TP/EMT of a model as every later notebook measures it (Section 3.3 with the
    profile's settings: 25 continuations of 20 tokens, top-p 0.9, ``profanity_check``), and the
    scored continuations. Returns ``(toxicity_table, continuations)``."""
    from . import models
    from .generate import generate_continuations
    from .metrics import toxicity_table
    from .scorers import get_toxicity_scorer

    prompts = data.load_eval_prompts(profile_values, split)
    model, tokenizer = models.load_model(model_path, device="cpu")
    frame = generate_continuations(
        model, tokenizer, prompts["text"].tolist(), n=profile_values["eval_n_continuations"],
        max_new_tokens=profile_values["eval_max_new_tokens"], top_p=profile_values["eval_top_p"], seed=seed,
        batch_size=profile_values["eval_batch_size"], progress=progress,
    )
    frame["domain"] = prompts["category"].to_numpy()[frame["prompt_id"].to_numpy()]
    frame["label"] = prompts["label"].to_numpy()[frame["prompt_id"].to_numpy()]
    frame["score"] = get_toxicity_scorer("profanity_check")(frame["continuation"].tolist())
    return toxicity_table(frame, scorer="profanity_check"), frame


def bos_samples(model_path: str, n: int, max_new_tokens: int, seed: int = 0) -> pd.DataFrame:
    """``n`` unconditional samples from BOS (pure sampling, as the distillation starts), with a
    tweet-likeness flag (``@user``, ``RT``, hashtags, links) and the ``profanity_check`` score."""
    from . import models
    from .generate import generate_continuations
    from .scorers import get_toxicity_scorer

    model, tokenizer = models.load_model(model_path, device="cpu")
    frame = generate_continuations(model, tokenizer, [""], n=n, max_new_tokens=max_new_tokens, top_p=1.0,
                                   seed=seed, batch_size=max(n, 1), progress=False)
    frame["tweet_like"] = frame["continuation"].str.contains(TWEET_MARKERS)
    frame["score"] = get_toxicity_scorer("profanity_check")(frame["continuation"].tolist())
    return frame[["sample", "continuation", "tweet_like", "score"]]


def check_config(settings: dict, profile_values: dict) -> dict:
    keys = ("eval_prompts", "n_val_prompts", "eval_n_continuations", "eval_max_new_tokens", "eval_top_p")
    return {"step": "source_check", "model": model_config(settings, "gpt2-bpe"),
            "bos_samples": settings["bos_samples"], "bos_sample_tokens": settings["bos_sample_tokens"],
            **{k: profile_values[k] for k in keys}}


def source_check(settings: dict, profile_values: dict, progress: bool = True) -> dict:
    """Validation TP of the source model and what its BOS samples look like (cached beside it)."""
    folder = train_world_model(settings, "gpt2-bpe", progress)
    path = folder / f"source_check-{config_key(check_config(settings, profile_values))}.json"
    if path.exists():
        return json.loads(path.read_text())
    started = time.perf_counter()
    with torch_threads(settings["threads"]):
        table, _ = source_toxicity(str(folder), profile_values, "val", progress=progress)
        samples = bos_samples(str(folder), settings["bos_samples"], settings["bos_sample_tokens"])
    result = {
        "val_TP_all": float(table.loc["all", "TP"]),
        "val_EMT_all": float(table.loc["all", "EMT"]),
        "val_mean_score_all": float(table.loc["all", "mean_score"]),
        "val_TP_by_domain": {d: float(v) for d, v in table["TP"].items()},
        "n_prompts": int(table.loc["all", "n_prompts"]),
        "eval": {k: profile_values[k] for k in ("eval_n_continuations", "eval_max_new_tokens", "eval_top_p", "n_val_prompts")},
        "bos_tweet_like_share": float(samples["tweet_like"].mean()),
        "bos_mean_score": float(samples["score"].mean()),
        "bos_samples": samples["continuation"].tolist(),
        "seconds": round(time.perf_counter() - started, 1),
        "load_avg_1min": round(os.getloadavg()[0], 2),
    }
    write_json_atomic(path, result)
    return result


# ------------------------------------------------------------------------------------------ build
def build_world(profile_values: dict | str, progress: bool = True, report: bool = True, **overrides) -> dict[str, str]:
    """Build (or find in the cache) everything of the profile's world; returns ``name -> path``.

    First the data steps in this process (corpus, tokenizers, stream, packed blocks), then the four
    models and the classifiers in ``workers`` processes (see :func:`train_in_parallel`). With
    ``report`` (default) it also measures the source model's validation TP and BOS samples and the
    classifiers' quality, and writes the tables of chapter 2 under ``<results_dir>/world/``.
    """
    from tqdm.auto import tqdm

    profile = _profile_values(profile_values)
    settings = world_settings(profile, **overrides)
    times: list[dict] = []
    paths: dict[str, str] = {}
    steps = [("corpus", lambda: build_corpus(settings, progress))]
    for kind in ("bpe", "unigram"):
        steps.append((f"tokenizer-{kind}", lambda kind=kind: train_world_tokenizer(settings, kind, progress)))
    steps.append(("stream", lambda: build_stream(settings, progress)))
    for kind in ("bpe", "unigram"):
        steps.append((f"blocks-{kind}", lambda kind=kind: build_blocks(settings, kind, progress)))
    for name, run in tqdm(steps, desc="world data", unit="step", disable=not progress):
        paths[name] = str(_timed(run, name, times))
    trained = list(settings["models"]) + ["davidson_tfidf", "allsides_tfidf"] + (["allsides_tfidf_media"] if report else [])
    paths.update(train_in_parallel(settings, trained, progress, times))
    if report:
        _timed(lambda: source_check(settings, profile, progress), "source_check", times)
        _timed(lambda: write_world_report(settings, profile, progress), "world_report", times)
        write_csv_atomic(merge_build_times(times, results_dir(settings) / "build_times.csv"),
                         results_dir(settings) / "build_times.csv")
    return paths


# Rough single-core costs of the mini steps (CPU seconds measured on the shared machine): the
# parallel build starts the longest first so the workers finish together.
_COST_ORDER = ("evaluator", "llama-unigram", "gpt2-bpe", "opt-bpe", "allsides_tfidf_media", "allsides_tfidf",
               "davidson_tfidf")  # ~740, 410, 400, 380, 55, 55, 17 CPU seconds on the mini profile


def train_in_parallel(settings: dict, names: list[str], progress: bool, times: list[dict]) -> dict[str, str]:
    """Train world models and classifiers, ``settings["workers"]`` at a time, each in its own
    process with **one** torch thread.

    Why processes: a 2-core CPU is best used by two single-threaded trainings side by side. One
    training with two threads gains little at these sizes and, when anything else runs, loses a
    lot (OpenMP threads wait for each other; see :func:`torch_threads`). ``workers`` 1 trains in
    this process instead, one step after another, with ``threads`` threads.

    The workers are *spawned* (a fork would copy this process's torch and tokenizer thread pools):
    a script that calls :func:`build_world` needs the usual ``if __name__ == "__main__":`` guard,
    as the command line and notebooks already have.
    """
    from concurrent.futures import ProcessPoolExecutor, as_completed
    import multiprocessing

    from tqdm.auto import tqdm

    todo = [n for n in names if not _is_built(settings, n)]
    paths = {n: str(_step_output(settings, n)) for n in names if n not in todo}
    for name in names:
        if name not in todo:
            times.append({"step": name, "seconds": 0.0, "cpu_seconds": 0.0, "load_avg_1min_start": None,
                          "load_avg_1min_end": None})
    workers = settings["workers"]
    workers = (os.cpu_count() or 1) if workers == "auto" else int(workers)
    workers = max(1, min(workers, len(todo)))
    if workers == 1:
        for name in tqdm(todo, desc="world models", unit="step", disable=not progress):
            paths[name] = str(_timed(lambda name=name: _build_one(settings, name, progress, settings["threads"]), name, times))
        return paths
    todo.sort(key=lambda n: _COST_ORDER.index(n) if n in _COST_ORDER else -1)
    bar = tqdm(total=len(todo), desc=f"world models ({workers} processes)", unit="step", disable=not progress)
    # spawn, not fork: a forked child would inherit this process's torch thread pool and locks.
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_build_one_timed, settings, name): name for name in todo}
        for future in as_completed(futures):
            name = futures[future]
            path, row = future.result()
            paths[name] = path
            times.append(row)
            bar.set_postfix_str(f"{name} {row['seconds']:.0f} s")
            bar.update(1)
    bar.close()
    return paths


def _is_built(settings: dict, name: str) -> bool:
    path = _step_output(settings, name)
    return path.exists() if path.suffix == ".joblib" else (path / "world.json").exists()


def _step_output(settings: dict, name: str) -> Path:
    if name in settings["models"]:
        return step_path(settings, name, model_config(settings, name))
    return step_path(settings, name, classifier_config(settings, name), ".joblib")


def _build_one(settings: dict, name: str, progress: bool, threads) -> Path:
    if name in settings["models"]:
        return train_world_model({**settings, "threads": threads}, name, progress)
    return train_classifier(settings, name, progress)


def _build_one_timed(settings: dict, name: str) -> tuple[str, dict]:
    """One build step in a worker process (single-threaded, no progress bar); path and timing."""
    times: list[dict] = []
    path = _timed(lambda: _build_one(settings, name, False, 1), name, times)
    return str(path), times[0]


def merge_build_times(times: list[dict], path: Path) -> pd.DataFrame:
    """This call's step times, except that a step found in the cache (under a second) keeps the row
    of the call that really built it, so the table adds up to what building the world costs."""
    frame = pd.DataFrame(times)
    if path.exists():
        previous = pd.read_csv(path).set_index("step")
        for i, row in frame.iterrows():
            if row["seconds"] < 1 and row["step"] in previous.index and previous.loc[row["step"], "seconds"] >= 1:
                frame.loc[i, previous.columns] = previous.loc[row["step"]].to_numpy()
    return frame


def _timed(run, name: str, times: list[dict]):
    """Run one build step, appending its wall and CPU seconds and the load around it to ``times``
    (a cached step takes ~0 s: the table shows what this call actually did)."""
    load, started, cpu = os.getloadavg()[0], time.perf_counter(), time.process_time()
    result = run()
    times.append({"step": name, "seconds": round(time.perf_counter() - started, 1),
                  "cpu_seconds": round(time.process_time() - cpu, 1), "load_avg_1min_start": round(load, 2),
                  "load_avg_1min_end": round(os.getloadavg()[0], 2)})
    return result


def _profile_values(profile_values: dict | str) -> dict:
    from .profiles import load_profile

    return load_profile(profile_values) if isinstance(profile_values, str) else profile_values


def write_world_report(settings: dict, profile_values: dict, progress: bool = True) -> Path:
    """The chapter-2 tables under ``<results_dir>/world/``: models, tokenizers, mix, classifiers."""
    out = results_dir(settings)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in settings["models"]:
        summary = model_summary(settings, name)
        spec = model_spec(settings, name)
        rows.append({
            "model": name, "arch": summary["arch"], "tokenizer": summary["tokenizer"],
            "parameters": summary["parameters"], "d_model": spec["d_model"], "n_layer": spec["n_layer"],
            "n_head": spec["n_head"], "context": spec["context"], "steps": spec["steps"],
            "batch_size": spec["batch_size"], "lr": spec["lr"], "train_tokens_seen": summary["train_tokens_seen"],
            "train_seconds": summary["train_seconds"], "train_cpu_seconds": summary.get("train_cpu_seconds"),
            "torch_threads": summary.get("torch_threads"), "tokens_per_s": summary["tokens_per_s"], "bf16": summary["bf16"],
            "load_avg_start": summary["load_avg_1min_start"], "load_avg_end": summary["load_avg_1min_end"],
            "final_train_loss": summary["final_train_loss"],
            "heldout_news_ppl_untrained": summary["heldout_news_untrained"]["ppl"],
            "heldout_news_ppl": summary["heldout_news"]["ppl"],
            "heldout_news_bits_per_byte": summary["heldout_news"]["bits_per_byte"],
            "heldout_tweets_ppl": summary["heldout_threads"]["ppl"],
            "heldout_tweets_bits_per_byte": summary["heldout_threads"]["bits_per_byte"],
            "heldout_news_tokens": summary["heldout_news"]["tokens"],
        })
    write_csv_atomic(pd.DataFrame(rows), out / "models.csv")

    tok_rows = []
    for kind in ("bpe", "unigram"):
        info = json.loads((train_world_tokenizer(settings, kind) / "world.json").read_text())
        blocks = json.loads((build_blocks(settings, kind) / "world.json").read_text())
        tok_rows.append({"tokenizer": kind, "vocab_size": info["vocab_size"], "trained_on_chars": info["trained_on_chars"],
                         "train_tokens": sum(blocks["tokens"].values()), "thread_token_share": blocks["thread_token_share"],
                         "chars_per_token": blocks["chars_per_token"], "train_blocks": blocks["blocks"]["train"],
                         "max_block_tokens_retokenized": blocks["max_block_tokens_retokenized"]})
    write_csv_atomic(pd.DataFrame(tok_rows), out / "tokenizers.csv")

    corpus = json.loads((build_corpus(settings) / "world.json").read_text())
    stream = json.loads((build_stream(settings) / "world.json").read_text())
    check = source_check(settings, profile_values, progress)
    mix = {
        "tweet_token_share_designed": settings["tweet_token_share"],
        "tweet_token_share_bpe": stream["thread_token_share"],
        "thread_document_share": stream["thread_document_share"],
        "tweets_per_thread": settings["tweets_per_thread"],
        "train_tokens": settings["train_tokens"],
        "news_documents": stream["documents"]["news"], "thread_documents": stream["documents"]["thread"],
        "tweets_in_stream": stream["tweets"], "toxic_tweets_in_stream": stream["toxic_tweets"],
        "toxic_reserve_fraction": settings["toxic_reserve_fraction"],
        "toxic_corpus_tweets": corpus["toxic_corpus_tweets"], "web_tweet_pool": corpus["web_tweets"],
        "source_val_TP": check["val_TP_all"], "source_val_EMT": check["val_EMT_all"],
        "source_val_mean_score": check["val_mean_score_all"],
        "bos_tweet_like_share": check["bos_tweet_like_share"], "bos_mean_score": check["bos_mean_score"],
        "n_val_prompts": check["n_prompts"],
    }
    write_csv_atomic(pd.DataFrame([mix]), out / "mix.csv")
    write_csv_atomic(pd.DataFrame({"sample": check["bos_samples"][:16]}), out / "bos_samples_source.csv")
    write_json_atomic(out / "world_settings.json", {k: v for k, v in settings.items() if k not in ("cache_dir", "results_dir")})

    classifiers = classifier_report(settings, progress)
    write_csv_atomic(classifiers, out / "classifiers.csv")
    write_csv_atomic(BALY_REPORTED, out / "baly2020_reported.csv")
    return out


# ------------------------------------------------------------------------------------ calibration
def calibrate_mix(profile_values: dict | str, shares: Iterable[float], progress: bool = True,
                  **overrides) -> pd.DataFrame:
    """Train the source model for each tweet token share and measure its validation TP and BOS
    samples; appends to ``<results_dir>/world/mix_calibration.csv`` (one row per share)."""
    profile = _profile_values(profile_values)
    rows = []
    out = results_dir(world_settings(profile, **overrides)) / "mix_calibration.csv"
    for share in shares:
        settings = world_settings(profile, **{**overrides, "tweet_token_share": float(share)})
        load = os.getloadavg()[0]
        started = time.perf_counter()
        summary = model_summary(settings, "gpt2-bpe")
        check = source_check(settings, profile, progress)
        stream = json.loads((build_stream(settings) / "world.json").read_text())
        spec = model_spec(settings, "gpt2-bpe")
        rows.append({
            "tweet_token_share": share, "thread_document_share": stream["thread_document_share"],
            "tweets_per_thread": settings["tweets_per_thread"], "toxic_reserve_fraction": settings["toxic_reserve_fraction"],
            "steps": spec["steps"], "batch_size": spec["batch_size"], "lr": spec["lr"], "seed": settings["seed"],
            "val_TP": check["val_TP_all"], "val_EMT": check["val_EMT_all"], "val_mean_score": check["val_mean_score_all"],
            "bos_tweet_like_share": check["bos_tweet_like_share"], "bos_mean_score": check["bos_mean_score"],
            "heldout_news_ppl": summary["heldout_news"]["ppl"], "heldout_tweets_ppl": summary["heldout_threads"]["ppl"],
            "n_val_prompts": check["n_prompts"], "train_seconds": summary["train_seconds"],
            "wall_seconds_this_call": round(time.perf_counter() - started, 1), "load_avg_1min_start": round(load, 2),
        })
        previous = pd.read_csv(out) if out.exists() else pd.DataFrame()
        keep = previous
        if not previous.empty:
            same = (previous["tweet_token_share"] == share) & (previous["steps"] == spec["steps"]) & (
                previous["seed"] == settings["seed"]) & (previous["tweets_per_thread"] == settings["tweets_per_thread"])
            keep = previous[~same]
        write_csv_atomic(pd.concat([keep, pd.DataFrame(rows[-1:])], ignore_index=True)
                         .sort_values(["steps", "tweet_token_share"]), out)
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    """``python -m unidetox_core.world [--profile mini] [--calibrate SHARE ...] [--no-report]``"""
    parser = argparse.ArgumentParser(prog="python -m unidetox_core.world", description=main.__doc__)
    parser.add_argument("--profile", default="mini", choices=sorted(WORLD_SETTINGS))
    parser.add_argument("--calibrate", nargs="+", type=float, metavar="SHARE",
                        help="train the source model for each tweet token share and measure its TP (no full build)")
    parser.add_argument("--no-report", action="store_true", help="build only; skip TP, classifier and result tables")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="world setting overrides, JSON values, e.g. tweet_token_share=0.03")
    args = parser.parse_args(argv)
    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = json.loads(value)
    if args.calibrate:
        print(calibrate_mix(args.profile, args.calibrate, **overrides).to_string())
        return 0
    started = time.perf_counter()
    paths = build_world(args.profile, report=not args.no_report, **overrides)
    for name, path in paths.items():
        print(f"{name:22s} {path}")
    print(f"world built in {time.perf_counter() - started:.0f} s (load average now {os.getloadavg()[0]:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
