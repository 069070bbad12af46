"""Building the whole world (steps in order, models in parallel processes), its report and calibration."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Iterable

import pandas as pd

from .. import data, stages
from ..cache import write_csv_atomic, write_json_atomic
from .checks import source_check, source_check_path
from .classifiers import classifier_report, train_classifier
from .corpus import build_blocks, build_corpus, build_stream, train_world_tokenizer
from .pretrain import model_summary, train_world_model
from .settings import (
    CLASSIFIERS,
    blocks_config,
    classifier_config,
    corpus_config,
    model_config,
    model_spec,
    results_dir,
    step_path,
    stream_config,
    tokenizer_config,
    world_settings,
)


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
        paths[name] = str(_timed(run, name, times, settings))
    paths.update(train_in_parallel(settings, list(settings["models"]) + list(CLASSIFIERS), progress, times))
    if report:
        checked = source_check_path(_step_output(settings, "gpt2-bpe"), settings, profile).exists()
        _timed(lambda: source_check(settings, profile, progress), "source_check", times, settings, computed=not checked)
        _timed(lambda: write_world_report(settings, profile, progress), "world_report", times, settings)
    times_path = results_dir(settings) / "build_times.csv"
    times_path.parent.mkdir(parents=True, exist_ok=True)
    write_csv_atomic(merge_build_times(times, times_path), times_path)
    return paths


def unbuilt_steps(profile_values: dict | str, **overrides) -> list[str]:
    """The world's data steps, models and classifiers that are not in the cache yet (empty: all built)."""
    settings = world_settings(_profile_values(profile_values), **overrides)
    names = ["corpus", "tokenizer-bpe", "tokenizer-unigram", "stream", "blocks-bpe", "blocks-unigram",
             *settings["models"], *CLASSIFIERS]
    return [name for name in names if not _is_built(settings, name)]


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
    from tqdm.auto import tqdm

    todo = [n for n in names if not _is_built(settings, n)]
    paths = {n: str(_step_output(settings, n)) for n in names if n not in todo}
    for name in names:
        if name not in todo:
            times.append({"step": name, "seconds": 0.0, "cpu_seconds": 0.0, "load_avg_1min_start": None,
                          "load_avg_1min_end": None, "computed": False})
    workers = settings["workers"]
    workers = (os.cpu_count() or 1) if workers == "auto" else int(workers)
    workers = max(1, min(workers, len(todo)))
    if workers == 1:
        for name in tqdm(todo, desc="world models", unit="step", disable=not progress):
            paths[name] = str(_timed(lambda name=name: _build_one(settings, name, progress, settings["threads"]), name,
                                     times, settings))
        return paths
    todo.sort(key=lambda n: _COST_ORDER.index(n) if n in _COST_ORDER else -1)
    built = stages.side_by_side(_build_one_timed, [(settings, name) for name in todo], workers=workers, threads=1,
                                desc=f"world models ({workers} processes)", progress=progress)
    for name, (path, row) in zip(todo, built):
        paths[name] = path
        times.append(row)
    return paths


def _is_built(settings: dict, name: str) -> bool:
    path = _step_output(settings, name)
    return path.exists() if path.suffix == ".joblib" else (path / "world.json").exists()


def _step_config(settings: dict, name: str) -> dict | None:
    """The config (cache key) of the world's step ``name``; ``None`` for the checks and the report."""
    if name == "corpus":
        return corpus_config(settings)
    if name == "stream":
        return stream_config(settings)
    if name.startswith("tokenizer-"):
        return tokenizer_config(settings, name.split("-", 1)[1])
    if name.startswith("blocks-"):
        return blocks_config(settings, name.split("-", 1)[1])
    if name in settings["models"]:
        return model_config(settings, name)
    if name in CLASSIFIERS:
        return classifier_config(settings, name)
    return None


def _step_output(settings: dict, name: str) -> Path:
    return step_path(settings, name, _step_config(settings, name), ".joblib" if name in CLASSIFIERS else "")


def _build_one(settings: dict, name: str, progress: bool, threads) -> Path:
    if name in settings["models"]:
        return train_world_model({**settings, "threads": threads}, name, progress)
    return train_classifier(settings, name, progress)


def _build_one_timed(settings: dict, name: str) -> tuple[str, dict]:
    """One build step in a worker process (single-threaded, no progress bar); path and timing."""
    times: list[dict] = []
    path = _timed(lambda: _build_one(settings, name, False, 1), name, times, settings)
    return str(path), times[0]


def merge_build_times(times: list[dict], path: Path) -> pd.DataFrame:
    """This call's step times, except that a step it found in the cache keeps the row of the call
    that really built it (and a step it did not run keeps its row), so the table adds up to what
    building the world costs, whichever call -- `make world` or chapter 2 -- built it."""
    frame = pd.DataFrame(times)
    computed = frame.pop("computed").astype(bool) if "computed" in frame else pd.Series(True, index=frame.index)
    if not path.exists():
        return frame
    previous = pd.read_csv(path).drop(columns="computed", errors="ignore").set_index("step")
    for i, row in frame.iterrows():
        if not computed[i] and row["step"] in previous.index:
            frame.loc[i, previous.columns] = previous.loc[row["step"]].to_numpy()
    absent = previous[~previous.index.isin(frame["step"])].reset_index()
    return pd.concat([frame, absent], ignore_index=True) if len(absent) else frame


def _timed(run, name: str, times: list[dict], settings: dict, computed: bool | None = None):
    """Run one build step, appending its wall and CPU seconds, the load around it and whether it was
    computed here (not found in the cache; ``computed`` says so for a step with its own cache) to
    ``times``. A step computed here is also recorded in the run log (``stages.timed``); the report
    always runs."""
    config = _step_config(settings, name)
    load, started, cpu = os.getloadavg()[0], time.perf_counter(), time.process_time()
    if computed is None:
        computed = config is None or not _is_built(settings, name)
    if config is not None and computed:
        with stages.timed(settings["cache_dir"], "world", name, config, _step_output(settings, name), manifest=False,
                          profile=settings["profile"]):
            result = run()
    else:
        result = run()
    times.append({"step": name, "seconds": round(time.perf_counter() - started, 1),
                  "cpu_seconds": round(time.process_time() - cpu, 1), "load_avg_1min_start": round(load, 2),
                  "load_avg_1min_end": round(os.getloadavg()[0], 2), "computed": computed})
    return result


def _profile_values(profile_values: dict | str) -> dict:
    from ..profiles import load_profile

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

    prompts = set()
    if profile_values.get("eval_prompts") == "toxigen_seed":  # keep the report's sentences apart from the prompts
        for split in ("val", "test"):
            prompts |= set(data.load_eval_prompts(profile_values, split)["text"])
    classifiers = classifier_report(settings, progress, exclude=prompts)
    write_csv_atomic(classifiers, out / "classifiers.csv")
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
