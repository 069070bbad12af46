"""Settings of the miniature world per profile, their cache keys and where each step is kept."""

from __future__ import annotations

import contextlib
import copy
import os
import re
from pathlib import Path
from collections.abc import Mapping
from typing import Any

from .. import stages

ROOT = Path(__file__).resolve().parents[2]

# Bump when a change of this file changes what a step produces: every cached step is rebuilt.
WORLD_VERSION = 1

MODEL_NAMES = ("gpt2-bpe", "opt-bpe", "llama-unigram", "evaluator")
# Model settings a run may add (they enter the model's key only when given): ``order_seed`` shifts the
# seed of the pre-training data order, so a replicate of a model differs in its data order as well as
# in its initial weights (``init_seed``) -- see ``replicate_overrides``.
OPTIONAL_MODEL_KEYS = ("order_seed",)
REPLICATE_MARK = "~r"  # "world:gpt2-bpe~r1": replicate 1 of the world's gpt2-bpe (replicate 0 is the model itself)
CLASSIFIERS = ("davidson_tfidf", "allsides_tfidf", "allsides_tfidf_media")
TWEET_MARKERS = re.compile(r"@user|\bRT\b|#\w|\bhttp\b")

# The world of each profile. Sizes and training lengths are parameters; the mini values were
# chosen by measurement (results/mini/world/sweep.csv): the most held-out quality for the CPU time the
# book's budget allows on a 2-core machine (45 minutes aimed for the whole book, 75 the limit).
WORLD_SETTINGS: dict[str, dict[str, Any]] = {
    "mini": {
        "seed": 0,
        # One torch thread per training process, always: the result then does not depend on the
        # machine (a different thread count sums floats in another order, and the weights differ),
        # and on a busy CPU one thread is also the fastest; workers use the other core.
        "threads": 1,  # torch threads while training and measuring; see torch_threads (not in any key)
        "workers": "auto",  # processes that train models side by side; see train_in_parallel (not in any key)
        # corpus
        "news_chars": 22_000_000,  # AllSides train articles drawn (in seeded order) for the stream
        "toxic_reserve_fraction": 0.5,  # share of toxic training tweets kept for the toxic corpus
        # Share of the training tokens that are tweet threads, calibrated on the source model's
        # validation TP (results/mini/world/mix_calibration.csv): 0.02 -> 0.31, 0.04 -> 0.57,
        # 0.08 -> 0.84. 0.04 lands in the target 0.35-0.65, near GPT-2 XL's 0.53, with 9% of BOS
        # samples tweet-like (threads are 21% of the documents: short ones, many starts). Calibrated
        # with the earlier 5.3 M source model (d_model 256, 480 steps); kept for the smaller one.
        "tweet_token_share": 0.04,
        "tweets_per_thread": 10,
        "train_tokens": 4_000_000,  # BPE tokens in the packed training stream (the evaluator reads it once)
        "block_tokens": 252,  # tokens per training block: 4 below the context, see pack_blocks
        "heldout_news_articles": 40,  # AllSides *valid* articles for held-out perplexity
        "heldout_threads": 40,  # threads of *test* tweets for held-out perplexity
        # tokenizers
        "vocab_size": 8000,
        "tokenizer_news_chars": 3_000_000,  # news text the tokenizers are trained on ...
        "tokenizer_tweet_chars": 2_000_000,  # ... plus web tweets up to this many characters (all of them)
        # models: architecture, tokenizer, size and training of each
        "models": {
            # Chosen by the sweep (world/sweep.py, results/mini/world/sweep.csv, chapter 02): at equal
            # CPU-seconds, more training tokens buy more than width or depth, and d_model 128 with four
            # layers beats d_model 192 on held-out news (2.06 against 2.16 bits per byte after 480 steps)
            # at less cost -- and every later stage (distillation, fine-tuning, 25 continuations per
            # prompt) runs a model of half the size. 480 steps of 8 blocks: after 360 steps the source
            # model's samples under the plausibility cut ran into whitespace (an earlier world: 16
            # words per 255-token text), after 480 they read as text.
            "gpt2-bpe": {"arch": "gpt2", "tokenizer": "bpe", "d_model": 128, "n_layer": 4, "n_head": 4,
                         "context": 256, "steps": 480, "batch_size": 8, "lr": 2e-3, "init_seed": 0},
            "opt-bpe": {"arch": "opt", "tokenizer": "bpe", "d_model": 128, "n_layer": 4, "n_head": 4,
                        "context": 256, "steps": 480, "batch_size": 8, "lr": 2e-3, "init_seed": 1},
            "llama-unigram": {"arch": "llama", "tokenizer": "unigram", "d_model": 128, "n_layer": 4, "n_head": 4,
                              "context": 256, "steps": 480, "batch_size": 8, "lr": 2e-3, "init_seed": 2},
            # The evaluator must score better than the models it judges (the book asks for 0.2 bits per
            # byte): the sweep's best buy is a shallow model trained long, so it reads four times the
            # models' tokens (1,920 steps, one pass over the stream) with two layers.
            "evaluator": {"arch": "llama", "tokenizer": "bpe", "d_model": 128, "n_layer": 2, "n_head": 4,
                          "context": 256, "steps": 1920, "batch_size": 8, "lr": 2e-3, "init_seed": 3},
        },
        # classifiers
        "allsides_max_chars": 2000,  # article prefix the bias classifier reads (BERT reads ~512 tokens)
        "allsides_max_train_articles": 0,  # 0 = all 27,978 of the random train split
        "tfidf_max_features": 50_000,
        # AllSides train articles cut into news snippets that the toxicity classifier learns as
        # "not toxic": trained on tweets alone (83% of them toxic) it called 72% of neutral ToxiGen
        # sentences and 32% of news snippets toxic; with news as negatives and balanced class
        # weights, 5% and 0.1% (ROC-AUC on held-out tweets 0.98 either way).
        "davidson_news_negatives": 3000,
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
        "davidson_news_negatives": 200,
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
                unknown = set(changes) - set(settings["models"][model_name]) - set(OPTIONAL_MODEL_KEYS)
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
    values = profile_values if isinstance(profile_values, Mapping) else {}
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
        own = {"max_features": settings["tfidf_max_features"], "news_negatives": settings["davidson_news_negatives"],
               "class_weight": "balanced"}
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
    """Where the world's step ``name`` made from ``config`` lives (``stages.folder``, stage ``world``);
    ``suffix`` makes it a file (the classifiers' ``.joblib``)."""
    path = stages.folder(settings["cache_dir"], "world", name, config)
    return path.with_name(path.name + suffix)


def split_replicate(name: str) -> tuple[str, int]:
    """``"gpt2-bpe~r2"`` -> ``("gpt2-bpe", 2)``; a name without the mark is replicate 0."""
    base, mark, number = name.partition(REPLICATE_MARK)
    if not mark:
        return name, 0
    if not number.isdigit() or int(number) < 1:
        raise WorldError(f"model name {name!r}: a replicate is written '{base}{REPLICATE_MARK}<n>' with n >= 1.")
    return base, int(number)


def replicate_overrides(settings: dict, name: str, replicate: int) -> dict:
    """The ``models`` override that makes replicate ``replicate`` of world model ``name``: another
    initialisation and another order of the same training data (the tokenizers, the corpus, the
    classifiers and the evaluator are the instruments, shared by every replicate)."""
    spec = model_spec(settings, name)
    return {name: {"init_seed": spec["init_seed"] + 1000 * replicate, "order_seed": replicate}}
