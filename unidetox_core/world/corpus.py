"""The world's text: web-text corpus, tokenizers, token stream and packed training blocks."""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from .. import data
from ..cache import atomic_path
from .settings import (
    WorldError,
    blocks_config,
    corpus_config,
    step_path,
    stream_config,
    tokenizer_config,
    world_settings,
)


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
    from .. import models

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

    from ..models import prepare_tokenizer

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
