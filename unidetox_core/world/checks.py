"""Checks of the built world: how toxic the source model is, and what it writes from BOS."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pandas as pd

from .. import data
from ..cache import config_key, write_json_atomic
from .pretrain import train_world_model
from .settings import TWEET_MARKERS, model_config, torch_threads


# ------------------------------------------------------------------------------ toxicity of a model
def source_toxicity(model_path: str, profile_values: dict, split: str = "val", seed: int = 0,
                    progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Validation TP/EMT of a model as every later notebook measures it (Section 3.3 with the
    profile's settings: 25 continuations of 20 tokens, top-p 0.9, ``profanity_check``), and the
    scored continuations. Returns ``(toxicity_table, continuations)``."""
    from .. import models
    from ..generate import generate_continuations
    from ..metrics import toxicity_table
    from ..scorers import get_toxicity_scorer

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
    from .. import models
    from ..generate import generate_continuations
    from ..scorers import get_toxicity_scorer

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


def source_check_path(folder: Path, settings: dict, profile_values: dict) -> Path:
    """Where ``source_check`` caches its result, beside the source model in ``folder``."""
    return Path(folder) / f"source_check-{config_key(check_config(settings, profile_values))}.json"


def source_check(settings: dict, profile_values: dict, progress: bool = True) -> dict:
    """Validation TP of the source model and what its BOS samples look like (cached beside it)."""
    folder = train_world_model(settings, "gpt2-bpe", progress)
    path = source_check_path(folder, settings, profile_values)
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
