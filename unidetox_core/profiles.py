"""The three profiles as plain values: ``paper``, ``mini`` (the default) and ``tiny`` (tests only).

Every value is flat (``distill_alpha``, not ``distill.alpha``) so that a papermill parameter or a
keyword argument can override any one of them by name. ``load_profile`` checks names and types
before anything heavy runs.

- ``paper``: the seed's setting -- GPT-2 XL distils, OPT-6.7B / Falcon-7B / LLaMA-2-7B are detoxified,
  Detoxify scores, LLaMA-2-7B measures perplexity. Needs a GPU machine with hub access.
- ``mini``: a miniature world trained by this project from the mirrored public data (see
  ``world.py``), run offline on a 2-core CPU. Its numbers are *mini results*, never the paper's.
- ``tiny``: the same code path with toy sizes, so tests and CI finish in seconds.
"""

from __future__ import annotations

import copy
import difflib
from typing import Any

DEFAULT_PROFILE = "mini"

# Values shared by all profiles unless a profile says otherwise (the seed's Section 3 and App. B).
_COMMON: dict[str, Any] = {
    "profile": "",
    "seeds": [0, 1, 2, 3, 4],  # five evaluation runs, mean and std (Tables 1-2)
    # data
    "data_source": "mirror",  # "hub" (datasets.load_dataset) or "mirror" (the offline stand-ins)
    "toxic_corpus": "davidson",  # "dghs" on the paper profile
    "eval_prompts": "toxigen_seed",  # "toxigen_annotated" on the paper profile
    "n_val_prompts": 0,  # 0 = all prompts of the split
    "n_test_prompts": 0,
    # models
    "source_model": "",  # distils the text and is tuned on (GPT-2 XL's role)
    "target_models": [],  # detoxified with the same text and hyper-parameters
    "evaluator_model": "",  # conditional perplexity (LLaMA-2-7B's role)
    "toxicity_scorer": "profanity_check",
    "second_toxicity_scorer": "davidson_tfidf",  # the Table 8 role: a second instrument
    "bias_scorer": "allsides_tfidf",
    # toxic model (Section 3.1): 3 epochs, batch 4, lr 1e-5, AdamW
    "toxic_epochs": 3,
    "toxic_batch_size": 4,
    "toxic_lr": 1e-5,
    "toxic_max_length": 512,
    "toxic_max_texts": 0,  # 0 = the whole toxic corpus; the tiny profile takes a few texts
    # distillation (Eq. 1-3, App. B.3): 640 texts of <= 256 tokens, alpha 0.1, 5 x 128
    "distill_n_texts": 640,
    "distill_max_new_tokens": 256,
    "distill_alpha": 0.1,
    "distill_batch_size": 128,
    "distill_temperature": 1.0,
    "distill_top_k": 0,  # 0 = off, the paper's formula; 50 = what the official code did via HF defaults
    # detox fine-tuning (App. B.3): AdamW, batch 8, two learning rates, steps 1,000...10,000
    "detox_batch_size": 8,
    "detox_lrs": [5e-5, 1e-5],
    "detox_steps": [1000, 2000, 3000, 4000, 5000, 6000, 7000, 8000, 9000, 10000],
    "detox_max_length": 256,
    # evaluation (Section 3.3): 25 continuations of <= 20 tokens, nucleus p = 0.9
    "eval_n_continuations": 25,
    "eval_max_new_tokens": 20,
    "eval_top_p": 0.9,
    "eval_batch_size": 256,
    "ppl_drop_threshold": 1e4,  # the official code drops perplexities >= 1e4 before averaging
    "mmlu_shots": 1,  # 1 for GPT-2-size models, 3 for the larger ones
    "mmlu_max_questions": 0,  # 0 = all 14,042
    # baselines (App. B.3)
    "lmsteer_epsilon": 1e-3,
    "lmsteer_multipliers": [round(-0.1 * i, 1) for i in range(1, 21)],
    "dexperts_betas": [round(0.1 * i, 1) for i in range(1, 21)],
    "task_arithmetic_lambdas": [round(0.01 * i, 2) for i in range(1, 21)],
    "ppl_rule_factor": 1.1,  # baselines may not exceed 1.1 x UniDetox's highest perplexity
    # hardware: "" keeps a model on one device; "auto" shards 7 B models over the GPUs (accelerate)
    "device_map": "",
    # where things go
    "cache_dir": "cache",
    "results_dir": "results/mini",
}

PROFILES: dict[str, dict[str, Any]] = {
    "paper": {
        **_COMMON,
        "profile": "paper",
        "data_source": "hub",
        "toxic_corpus": "dghs",
        "eval_prompts": "toxigen_annotated",
        "source_model": "openai-community/gpt2-xl",
        "target_models": ["facebook/opt-6.7b", "tiiuae/falcon-7b", "meta-llama/Llama-2-7b-hf"],
        "evaluator_model": "meta-llama/Llama-2-7b-hf",
        "toxicity_scorer": "detoxify",
        "second_toxicity_scorer": "profanity_check",
        "bias_scorer": "political_bias_bert",
        "eval_batch_size": 64,
        "device_map": "auto",
        "results_dir": "results/paper",
    },
    "mini": {
        **_COMMON,
        "profile": "mini",
        # Local folders built by world.py under cache_dir; same loader as hub ids.
        "source_model": "world:gpt2-bpe",
        "target_models": ["world:opt-bpe", "world:llama-unigram"],
        "evaluator_model": "world:evaluator",
        "seeds": [0, 1, 2],
        "toxic_epochs": 3,
        "toxic_lr": 5e-4,
        "detox_lrs": [5e-4, 1e-4],
        "detox_steps": [100, 200, 300, 400, 600, 800],
        "n_val_prompts": 240,
        "n_test_prompts": 240,
        "mmlu_max_questions": 570,
        "lmsteer_multipliers": [-0.5, -1.0, -1.5, -2.0],
        "dexperts_betas": [0.5, 1.0, 1.5, 2.0],
        "task_arithmetic_lambdas": [0.05, 0.1, 0.15, 0.2],
        "results_dir": "results/mini",
    },
    "tiny": {
        **_COMMON,
        "profile": "tiny",
        "source_model": "world:gpt2-bpe",
        "target_models": ["world:opt-bpe", "world:llama-unigram"],
        "evaluator_model": "world:evaluator",
        "seeds": [0, 1],
        "toxic_epochs": 1,
        "toxic_batch_size": 8,
        "toxic_lr": 1e-3,
        "toxic_max_length": 64,
        "toxic_max_texts": 64,
        "distill_n_texts": 16,
        "distill_max_new_tokens": 24,
        "distill_batch_size": 8,
        "detox_lrs": [1e-3],
        "detox_steps": [2, 4],
        "detox_max_length": 32,
        "eval_n_continuations": 3,
        "eval_max_new_tokens": 6,
        "eval_batch_size": 32,
        "n_val_prompts": 16,
        "n_test_prompts": 16,
        "mmlu_max_questions": 12,
        "lmsteer_multipliers": [-1.0],
        "dexperts_betas": [1.0],
        "task_arithmetic_lambdas": [0.1],
        "results_dir": "results/tiny",
    },
}


class ProfileError(ValueError):
    """An unknown profile, an unknown parameter, or a parameter of the wrong type."""


def load_profile(name: str | None = None, **overrides: Any) -> dict[str, Any]:
    """The values of profile ``name`` (default ``mini``) with ``overrides`` applied and checked.

    >>> load_profile("tiny", distill_alpha=0.05)["distill_alpha"]
    0.05
    """
    name = DEFAULT_PROFILE if name in (None, "") else name
    if name not in PROFILES:
        raise ProfileError(f"profile={name!r} is unknown; use one of {sorted(PROFILES)} (default {DEFAULT_PROFILE!r}).")
    values = copy.deepcopy(PROFILES[name])
    for key, value in overrides.items():
        if key not in values:
            close = difflib.get_close_matches(key, list(values), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ProfileError(f"parameter {key!r} is not a setting of the {name!r} profile.{hint}")
        values[key] = check_type(key, value, values[key])
    values["profile"] = name
    return values


def check_type(key: str, value: Any, default: Any) -> Any:
    """Return ``value`` if it has the type of ``default`` (ints pass for floats); else a clear error."""
    expected = type(default)
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, list):
        ok = isinstance(value, (list, tuple))
        if ok and default:
            item = default[0]
            value = [check_type(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
        value = list(value) if ok else value
    else:
        ok = isinstance(value, expected)
    if not ok:
        raise ProfileError(
            f"parameter {key!r} must be {expected.__name__} (like {default!r}), got {type(value).__name__} {value!r}."
        )
    return value


def profile_diff(values: dict[str, Any]) -> dict[str, Any]:
    """The settings of ``values`` that differ from its profile's defaults (what a results table records)."""
    base = PROFILES[values["profile"]]
    return {k: v for k, v in values.items() if base.get(k) != v}


def for_notebook(profile: str = DEFAULT_PROFILE, **params: Any) -> dict[str, Any]:
    """A notebook's settings: its profile with the notebook's own papermill parameters applied.

    Parameters left at ``None`` keep the profile's value, so a notebook's parameters cell can list
    every setting it uses without fixing them. The results folder is created. Paths are resolved
    against the repository root, so a notebook runs the same from ``notebooks/`` or from papermill.
    """
    from pathlib import Path

    values = load_profile(profile, **{k: v for k, v in params.items() if v is not None})
    root = Path(__file__).resolve().parents[1]
    for key in ("cache_dir", "results_dir"):
        path = Path(values[key])
        values[key] = str(path if path.is_absolute() else root / path)
    Path(values["results_dir"]).mkdir(parents=True, exist_ok=True)
    return values
