"""The three profiles: ``paper``, ``mini`` (the default) and ``tiny`` (tests only).

A profile is a ``Profile``: typed, frozen settings whose defaults are the paper's; ``PROFILES`` holds
what each profile changes, with its reasons. Every setting is flat (``distill_alpha``, not
``distill.alpha``) so that a papermill parameter or a keyword argument can override any one of them
by name. ``load_profile`` checks names, types and ranges before anything heavy runs.

- ``paper``: the seed's setting -- GPT-2 XL distils, OPT-6.7B / Falcon-7B / LLaMA-2-7B are detoxified,
  Detoxify scores, LLaMA-2-7B measures perplexity. Needs a GPU machine with hub access.
- ``mini``: a miniature world trained by this project from the mirrored public data (see
  the ``world`` package), run offline on a 2-core CPU. Its numbers are *mini results*, never the paper's.
- ``tiny``: the same code path with toy sizes, so tests and CI finish in seconds.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

DEFAULT_PROFILE = "mini"

# The settings, typed, with the values shared by all profiles unless a profile says otherwise (the
# seed's Section 3 and App. B).
@dataclass(frozen=True, eq=False)
class Profile(Mapping):
    """The settings of one run of the book: typed, frozen, read as ``P["distill_alpha"]`` (a mapping,
    so ``dict(P)`` and ``{**P, "seeds": [0]}`` work) or ``P.distill_alpha``.

    Make one with ``load_profile`` (which checks every override's name, type and range) or
    ``for_notebook``. The defaults below are the paper's; the ``mini``, ``tiny`` and ``paper``
    profiles (``PROFILES``) change some of them, each change with its reason.
    """

    profile: str = ""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])  # five evaluation runs, mean and std (Tables 1-2)
    # Independent replicates of the source model's whole pipeline (its pre-training, toxic model,
    # distillation, fine-tuning, evaluation) behind the core claims; 1 = the main run only (the
    # paper's models are pre-trained once, by others).
    replicates: int = 1
    # data
    data_source: str = "mirror"  # "hub" (datasets.load_dataset) or "mirror" (the offline stand-ins)
    # "world": the Davidson hate/offensive train tweets the mini world reserved (never in its web
    # text, so the toxic model learns something the base has not seen); "davidson": all of them;
    # "dghs" on the paper profile.
    toxic_corpus: str = "world"
    eval_prompts: str = "toxigen_seed"  # "toxigen_annotated" on the paper profile
    n_val_prompts: int = 0  # 0 = all prompts of the split
    n_test_prompts: int = 0
    # models
    source_model: str = ""  # distils the text and is tuned on (GPT-2 XL's role)
    target_models: list[str] = field(default_factory=lambda: [])  # detoxified with the same text and hyper-parameters
    evaluator_model: str = ""  # conditional perplexity (LLaMA-2-7B's role)
    toxicity_scorer: str = "profanity_check"
    second_toxicity_scorer: str = "davidson_tfidf"  # the Table 8 role: a second instrument
    bias_scorer: str = "allsides_tfidf"
    # toxic model (Section 3.1): 3 epochs, batch 4, lr 1e-5, AdamW
    toxic_epochs: int = 3
    toxic_batch_size: int = 4
    toxic_lr: float = 1e-5
    toxic_max_length: int = 512
    toxic_max_texts: int = 0  # 0 = the whole toxic corpus; the tiny profile takes a few texts
    # distillation (Eq. 1-3, App. B.3): 640 texts of <= 256 tokens, alpha 0.1, 5 x 128
    distill_n_texts: int = 640
    distill_max_new_tokens: int = 256
    distill_alpha: float = 0.1
    distill_batch_size: int = 128
    distill_temperature: float = 1.0
    distill_top_k: int = 0  # 0 = off, the paper's formula; 50 = what the official code did via HF defaults
    # detox fine-tuning (App. B.3): AdamW, batch 8, two learning rates, steps 1,000...10,000
    detox_batch_size: int = 8
    detox_lrs: list[float] = field(default_factory=lambda: [5e-5, 1e-5])
    samples_lrs: list[float] = field(default_factory=lambda: [1e-5])  # the paper tunes Samples at 1e-5 only
    detox_steps: list[int] = field(default_factory=lambda: [1000, 2000, 3000, 4000, 5000, 6000, 7000, 8000, 9000, 10000])
    detox_max_length: int = 256
    # evaluation (Section 3.3): 25 continuations of <= 20 tokens, nucleus p = 0.9
    eval_n_continuations: int = 25
    eval_max_new_tokens: int = 20
    eval_top_p: float = 0.9
    eval_batch_size: int = 256  # rows per decoding batch; 0 = as many as fit the free GPU memory
    # Perplexity of the first k continuations of each prompt (0 = all 25, the paper's). The mean over
    # a random subset is unbiased; on a CPU the evaluator's pass costs as much as generating.
    eval_ppl_samples: int = 0
    # torch threads of each evaluation, MMLU run and distillation on a CPU (0 = torch's default, every
    # core). The thread count changes the order in which floats are summed, so a fixed count keeps the
    # numbers the same whatever else the machine runs; when set it joins those stages' cache keys.
    eval_threads: int = 0
    # Evaluations, MMLU runs and distillations that run at once, each in its own process (on GPUs,
    # each on its own GPU); 1 = one after the other in this process; 0 = one per GPU present. Where
    # to compute, not what: it never changes a number.
    eval_workers: int = 1
    # bf16 autocast for evaluations and MMLU runs on a CPU (a GPU evaluates float32 models in bf16
    # anyway, forward.inference_bf16). Distillation stays float32: its score is a small difference
    # of two log-probabilities. When set it joins the evaluations' and MMLU runs' cache keys.
    eval_bf16: bool = False
    ppl_drop_threshold: float = 1e4  # the official code drops perplexities >= 1e4 before averaging
    mmlu_shots: int = 1  # 1 for GPT-2-size models, 3 for the larger ones
    target_mmlu_shots: int = 3  # the paper's MMLU shots on its 7 B targets (OPT, Falcon, LLaMA-2)
    mmlu_max_questions: int = 0  # 0 = all 14,042
    # baselines (App. B.3)
    lmsteer_epsilon: float = 1e-3
    lmsteer_lr: float = 1e-2  # learning W: Adam, lr 1e-2, batch 32, 3 epochs on the toxic corpus
    lmsteer_batch_size: int = 32
    lmsteer_epochs: int = 3
    lmsteer_steps: int = 0  # > 0: this many optimizer steps instead of lmsteer_epochs (small profiles)
    lmsteer_multipliers: list[float] = field(default_factory=lambda: [round(-0.1 * i, 1) for i in range(1, 21)])
    dexperts_betas: list[float] = field(default_factory=lambda: [round(0.1 * i, 1) for i in range(1, 21)])
    task_arithmetic_lambdas: list[float] = field(default_factory=lambda: [round(0.01 * i, 2) for i in range(1, 21)])
    ppl_rule_factor: float = 1.1  # baselines may not exceed 1.1 x UniDetox's highest perplexity
    # UniDetox and Samples at every grid point on the targets too (Figure 2 plots every point), not only
    # at the steps chosen on the source model.
    targets_full_grid: bool = False
    # Once chapter 5 has chosen the steps, delete every fine-tuning checkpoint the chosen settings do not
    # use, and the optimizer states (experiments.prune_checkpoints): a 7 B checkpoint is 27 GB.
    prune_checkpoints: bool = False
    # hardware: "" keeps a model on one device; "auto" shards 7 B models over the GPUs (accelerate)
    device_map: str = ""
    # How fine-tunes train: "" in this process (finetune.finetune, resumable); an accelerate config file
    # (configs/accelerate/fsdp.yaml, deepspeed_zero3.yaml): each fine-tune one `accelerate launch` over
    # the GPUs, float32 masters and AdamW state sharded (distributed.py), the 7 B route.
    finetune_engine: str = ""
    # A folder of stand-ins for the hubs (unidetox_core.smoke), read instead of the network: HF_HOME,
    # TORCH_HOME and offline mode point there for the run. "" = the hubs and this machine's own caches.
    hub_stand_ins: str = ""
    # where things go
    cache_dir: str = "cache"
    results_dir: str = "results/mini"

    def __getitem__(self, key: str) -> Any:
        if key not in _FIELDS:
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self):
        return iter(_FIELDS)

    def __len__(self) -> int:
        return len(_FIELDS)


_FIELDS = tuple(f.name for f in dataclasses.fields(Profile))
_DEFAULTS = Profile()

# What each profile changes from the defaults above.
_CHANGES: dict[str, dict[str, Any]] = {
    "paper": {
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
        # Decoding batches as large as each GPU's free memory allows (generate.fitted_batch_size):
        # fewer, fuller steps than a fixed 64 rows; the continuations do not depend on it.
        "eval_batch_size": 0,
        "targets_full_grid": True,
        "prune_checkpoints": True,
        "device_map": "auto",
        # Every fine-tune sharded over the node's GPUs by FSDP; every evaluation on a GPU of its own.
        "finetune_engine": "configs/accelerate/fsdp.yaml",
        "eval_workers": 0,
        "results_dir": "results/paper",
    },
    # One GPU of 16 GB, or a laptop with a network: the paper's design, data and scorers at GPT-2
    # size -- GPT-2 (124 M) distils and is tuned on, OPT-125m (another family, the same tokenizer) and
    # SmolLM2-135M (LLaMA's architecture, its own tokenizer) are the targets, GPT-2 Large judges
    # perplexity. Fewer prompts, seeds and grid points than the paper, more than the mini world;
    # `make plan PROFILE=small` prints what it costs.
    "small": {
        "profile": "small",
        "data_source": "hub",
        "toxic_corpus": "dghs",
        "eval_prompts": "toxigen_annotated",
        "source_model": "openai-community/gpt2",
        "target_models": ["facebook/opt-125m", "HuggingFaceTB/SmolLM2-135M"],
        "evaluator_model": "openai-community/gpt2-large",
        "toxicity_scorer": "detoxify",
        "second_toxicity_scorer": "profanity_check",
        "bias_scorer": "political_bias_bert",
        "seeds": [0, 1, 2],
        # A fifth of the toxic corpus, cut at 128 tokens (DGHS entries are a sentence or two), one
        # LM-Steer epoch; fine-tuning to 400 steps of 128-token texts, where the paper goes to 10,000.
        "toxic_max_texts": 4000,
        "toxic_max_length": 128,
        "lmsteer_epochs": 1,
        "detox_steps": [100, 200, 400],
        "detox_max_length": 128,
        "n_val_prompts": 100,
        "n_test_prompts": 200,
        "eval_batch_size": 0,  # as many rows as the GPU holds (256 on a CPU)
        "prune_checkpoints": True,
        "eval_ppl_samples": 5,  # the evaluator reads 5 of the 25 continuations of each prompt
        "mmlu_max_questions": 1140,  # 20 per subject: models of this size answer near chance
        "target_mmlu_shots": 1,
        "lmsteer_multipliers": [-0.5, -1.0, -2.0],
        "dexperts_betas": [0.5, 1.0, 2.0],
        "task_arithmetic_lambdas": [0.05, 0.1, 0.2],
        "results_dir": "results/small",
    },
    "mini": {
        "profile": "mini",
        # Local folders built by the world package under cache_dir; same loader as hub ids.
        "source_model": "world:gpt2-bpe",
        "target_models": ["world:opt-bpe", "world:llama-unigram"],
        "evaluator_model": "world:evaluator",
        # Reductions for a 2-core CPU (each is stated in the chapter that uses it): 2 seeds, a
        # subsample of the toxic corpus and of the prompts, one learning rate, shorter step grids,
        # coarser baseline grids. Small models need larger learning rates and far fewer steps than
        # GPT-2 XL. Together with the world's sizes (world/settings.py) they are chosen for a cold build
        # of the whole book within the project's budget on the 2-core machine (45 minutes the aim, 75
        # the limit); the README and the compute chapter report what the last one took.
        # Two evaluation (and distillation) seeds, not the paper's five: on the 2-core machine each
        # seed of the results chapters costs about a quarter of an hour.
        "seeds": [0, 1],
        "toxic_epochs": 2,
        "toxic_batch_size": 16,
        "toxic_lr": 5e-4,
        "toxic_max_length": 128,
        "toxic_max_texts": 4000,
        # The session-2 grid (lr 5e-4 / 1e-4, 50-300 steps) drove validation TP to ~0 but kept only 55%
        # of the base model's Dist-1 at every point: too strong for 5 M-parameter models. This grid
        # reaches from a light touch to the first signs of that collapse, at a third of the cost.
        # One learning rate, not the paper's two: the second doubled every fine-tuning run and the
        # evaluations of UniDetox and Samples. In the builds that ran both, 1e-4 gave UniDetox the
        # lower validation TP on the source model (0.18 vs 0.29 at 5e-5).
        "detox_lrs": [1e-4],
        "samples_lrs": [1e-4],
        "detox_steps": [25, 50, 100],
        # The world's models have 256 positions and the start token takes one: 255 new tokens, where
        # GPT-2 XL (1,024 positions) takes the paper's 256.
        "distill_max_new_tokens": 255,
        # 50 + 70 of the 1,045 seed prompts (the paper: 896 + 940), in proportion to the groups. TP_ID
        # and TP_OOD average categories of a few prompts each, so their intervals are wide: every
        # comparison carries its paired bootstrap interval (stats), never a hand-computed error.
        "n_val_prompts": 50,
        "n_test_prompts": 70,
        # Three builds of the source model's pipeline: one build of the world is one draw, and the
        # core claims read the spread between draws (stats.hierarchical_difference).
        "replicates": 3,
        # The evaluator scores 5 of the 25 continuations of each prompt (600 per evaluation): on
        # the 2-core CPU its pass costs as much as generating all 25.
        "eval_ppl_samples": 5,
        # Two single-threaded evaluations side by side: 5 M-parameter models decoding 20 tokens give two
        # threads of one process too little work each (benchmarks/bench_workers.py: 1.45-1.6x the
        # throughput of one two-threaded process on the 2-core machine).
        "eval_threads": 1,
        "eval_workers": 2,
        # 1.28x faster per evaluation on a 2-core AVX512-BF16 machine (generation 1.26x, the
        # evaluator's perplexity 1.39x); the continuations differ from float32 ones draw by draw. Used
        # only on a CPU with native bf16 (experiments.eval_bf16): emulated, it costs 30 times float32.
        "eval_bf16": True,
        # About 2 per subject: a sample stratified by subject, in proportion, each share rounded (which
        # gives 115 questions). The world's models answer near chance anyway.
        "mmlu_max_questions": 114,
        "target_mmlu_shots": 1,  # the targets are as small as the source model here
        # One epoch of the toxic corpus for the LM-Steer matrix, not three (125 steps of batch 32).
        "lmsteer_epochs": 1,
        "lmsteer_multipliers": [-0.5, -1.0, -2.0],
        "dexperts_betas": [0.5, 1.0, 2.0],
        "task_arithmetic_lambdas": [0.05, 0.1, 0.2],
        "results_dir": "results/mini",
    },
    "tiny": {
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
        "samples_lrs": [1e-3],
        "detox_steps": [2, 4],
        "detox_max_length": 32,
        "eval_n_continuations": 3,
        "eval_max_new_tokens": 6,
        "eval_batch_size": 32,
        "n_val_prompts": 16,
        "n_test_prompts": 16,
        "replicates": 2,
        "mmlu_max_questions": 12,
        "target_mmlu_shots": 1,
        "lmsteer_multipliers": [-1.0],
        "dexperts_betas": [1.0],
        "task_arithmetic_lambdas": [0.1],
        "results_dir": "results/tiny",
    },
}

# The smoke profiles: a hub profile's code path -- its model ids, data sets, scorers, settings and
# branches -- at the tiny profile's sizes, reading stand-ins for the hubs built here (smoke.py), so
# that CI runs every chapter the way a GPU machine would run the paper. Their numbers mean nothing.
_SMOKE_SIZES = ("seeds", "toxic_epochs", "toxic_batch_size", "toxic_lr", "toxic_max_length", "toxic_max_texts",
                "distill_n_texts", "distill_max_new_tokens", "distill_batch_size", "detox_lrs", "detox_steps",
                "detox_max_length", "eval_n_continuations", "eval_max_new_tokens", "n_val_prompts",
                "n_test_prompts", "mmlu_max_questions", "lmsteer_multipliers", "dexperts_betas",
                "task_arithmetic_lambdas")
for _hub_profile, _smoke in (("paper", "smoke"), ("small", "smoke-small")):
    _CHANGES[_smoke] = {
        **_CHANGES[_hub_profile],
        **{k: _CHANGES["tiny"][k] for k in _SMOKE_SIZES},
        "samples_lrs": _CHANGES["tiny"]["detox_lrs"][:1],
        "profile": _smoke,
        "hub_stand_ins": "{cache_dir}/smoke/hubs",
        # FSDP needs GPUs: a smoke run trains in one process (tests/test_distributed.py runs the engine
        # route on CPU processes) and evaluates in this one.
        "finetune_engine": "",
        "eval_workers": 1,
        "results_dir": f"results/{_smoke}",
    }
PROFILES: dict[str, Profile] = {name: Profile(**changes) for name, changes in _CHANGES.items()}


class ProfileError(ValueError):
    """An unknown profile, an unknown parameter, or a parameter of the wrong type."""


def load_profile(name: str | None = None, **overrides: Any) -> Profile:
    """The values of profile ``name`` (default ``mini``) with ``overrides`` applied and checked.

    >>> load_profile("tiny", distill_alpha=0.05)["distill_alpha"]
    0.05
    """
    name = DEFAULT_PROFILE if name in (None, "") else name
    if name not in PROFILES:
        raise ProfileError(f"profile={name!r} is unknown; use one of {sorted(PROFILES)} (default {DEFAULT_PROFILE!r}).")
    values = copy.deepcopy(dict(PROFILES[name]))
    for key, value in overrides.items():
        if key not in values:
            close = difflib.get_close_matches(key, list(values), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ProfileError(f"parameter {key!r} is not a setting of the {name!r} profile.{hint}")
        values[key] = check_type(key, value, values[key])
    check_values(values, keys=overrides)
    values["profile"] = name
    return Profile(**values)


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


# What a setting may be, beyond its type: (test, what would work). Checked for every override, so a
# bad papermill parameter fails before the first model is loaded, not after the toxic model trained.
_POSITIVE = "must be a positive integer"
_RULES: dict[str, tuple[Any, str]] = {
    **{k: (lambda v: v > 0, f"{_POSITIVE} (e.g. {_DEFAULTS[k]})") for k in (
        "toxic_epochs", "toxic_batch_size", "toxic_max_length", "distill_n_texts", "distill_max_new_tokens",
        "distill_batch_size", "detox_batch_size", "detox_max_length", "eval_n_continuations",
        "eval_max_new_tokens", "lmsteer_batch_size", "lmsteer_epochs", "replicates")},
    **{k: (lambda v: v >= 0, "must be an integer >= 0 (0 = all / off)") for k in (
        "toxic_max_texts", "n_val_prompts", "n_test_prompts", "eval_ppl_samples", "eval_threads", "distill_top_k", "mmlu_shots", "target_mmlu_shots", "mmlu_max_questions",
        "lmsteer_steps")},
    **{k: (lambda v: v > 0 and v == v and v != float("inf"), f"must be a positive number (e.g. {_DEFAULTS[k]})")
       for k in ("toxic_lr", "distill_temperature", "ppl_drop_threshold", "ppl_rule_factor", "lmsteer_lr")},
    "eval_batch_size": (lambda v: v >= 0, "must be an integer >= 0 (rows per decoding batch; 0 = as many as fit the "
                        "free GPU memory, 256 on a CPU)"),
    "distill_alpha": (lambda v: 0.0 <= v <= 1.0, "must lie in [0, 1] (Eq. 3; the paper uses 0.1)"),
    "eval_top_p": (lambda v: 0.0 < v <= 1.0, "must lie in (0, 1] (the paper samples with 0.9)"),
    "seeds": (lambda v: len(v) > 0 and all(s >= 0 for s in v) and len(set(v)) == len(v),
              "must be a non-empty list of distinct integers >= 0 (e.g. [0, 1, 2])"),
    "detox_steps": (lambda v: len(v) > 0 and all(s > 0 for s in v),
                    "must be a non-empty list of positive step counts (e.g. [100, 200])"),
    "detox_lrs": (lambda v: len(v) > 0 and all(x > 0 for x in v), "must be a non-empty list of positive learning rates"),
    "samples_lrs": (lambda v: len(v) > 0 and all(x > 0 for x in v), "must be a non-empty list of positive learning rates"),
    "eval_workers": (lambda v: v >= 0, "must be an integer >= 0 (0 = one per GPU present, 1 on a CPU)"),
    "finetune_engine": (lambda v: v == "" or v.endswith((".yaml", ".yml")),
                        "must be '' (one process) or an accelerate config file such as configs/accelerate/fsdp.yaml"),
    "data_source": (lambda v: v in ("hub", "mirror"), "must be 'hub' (paper) or 'mirror' (offline)"),
    "toxic_corpus": (lambda v: v in ("dghs", "davidson", "world"),
                     "must be 'dghs' (hub), 'world' (the mini world's reserved toxic tweets) or 'davidson' (all of them)"),
    "eval_prompts": (lambda v: v in ("toxigen_annotated", "toxigen_seed"),
                     "must be 'toxigen_annotated' (hub) or 'toxigen_seed' (offline)"),
}


def check_values(values: dict[str, Any], keys=None) -> None:
    """Raise a ``ProfileError`` naming the first setting (of ``keys``, default all) out of its range."""
    for key in values if keys is None else keys:
        if key in _RULES and key in values:
            test, rule = _RULES[key]
            if not test(values[key]):
                raise ProfileError(f"parameter {key!r} {rule}; got {values[key]!r}.")


def profile_diff(values: dict[str, Any]) -> dict[str, Any]:
    """The settings of ``values`` that differ from its profile's defaults (what a results table records)."""
    base = PROFILES[values["profile"]]
    return {k: v for k, v in values.items() if base.get(k) != v}


SETTINGS_ENV = "UNIDETOX_SETTINGS"


def for_notebook(profile: str = DEFAULT_PROFILE, **params: Any) -> Profile:
    """A notebook's settings: its profile with the notebook's own papermill parameters applied.

    Parameters left at ``None`` keep the profile's value, so a notebook's parameters cell can list
    every setting it uses without fixing them. Settings the book's runner was given for every chapter
    (``tools/run_notebooks.py -p NAME VALUE``) arrive as JSON in the environment variable
    ``UNIDETOX_SETTINGS``; the notebook's own parameters win over them. The results folder is created.
    Paths are resolved against the repository root, so a notebook runs the same from ``notebooks/``
    or from papermill.
    """
    import json
    import os
    from pathlib import Path

    given = json.loads(os.environ.get(SETTINGS_ENV) or "{}")
    given.update({k: v for k, v in params.items() if v is not None})
    values = load_profile(profile, **given)
    root = Path(__file__).resolve().parents[1]
    rooted = {key: str(Path(values[key]) if Path(values[key]).is_absolute() else root / values[key])
              for key in ("cache_dir", "results_dir")}
    values = dataclasses.replace(values, **rooted)
    Path(values["results_dir"]).mkdir(parents=True, exist_ok=True)
    check_results_dir(values)
    return values


# ------------------------------------------------------------------- one configuration per folder
RESULTS_RECORD = "profile.json"
# Where things go and on which hardware: they do not change what a results table holds.
_NOT_RECORDED = ("cache_dir", "results_dir", "device_map", "eval_workers")


def results_record(values: dict[str, Any]) -> dict[str, Any]:
    """What ``profile.json`` of a results folder records: the profile, the settings that differ
    from its defaults (``overrides``), and every setting's value when it was written."""
    kept = {k: v for k, v in values.items() if k not in _NOT_RECORDED and k != "profile"}
    overrides = {k: v for k, v in profile_diff(values).items() if k not in _NOT_RECORDED}
    return {"profile": values["profile"], "overrides": overrides, "settings": kept}


def check_results_dir(values: dict[str, Any], results_dir=None, record: bool = True):
    """Refuse to mix results of two configurations in one folder; record this one (``profile.json``).

    A results folder belongs to the profile and overrides that first wrote ``profile.json`` there. A
    run of the same profile with the same overrides may write again -- also after a profile's
    defaults changed in the code, which reruns the chapters anyway (the record is then updated). A
    run with another profile or other overrides stops with the settings that differ and the fix:
    another ``results_dir``. A folder without ``profile.json`` is claimed. Returns the record's path.
    """
    import json
    from pathlib import Path

    from .cache import write_json_atomic

    folder = Path(results_dir if results_dir is not None else values["results_dir"])
    path = folder / RESULTS_RECORD
    new = json.loads(json.dumps(results_record(values), default=str))
    if path.exists():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
            old_profile, old_overrides = old["profile"], dict(old["overrides"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ProfileError(f"{path} is unreadable ({err.__class__.__name__}); it records which configuration "
                               "produced the results beside it. Restore it from git, or delete the folder's "
                               "results and the file to start over.") from None
        differences = _record_differences(old_profile, old_overrides, new)
        if differences:
            suggestion = folder.with_name(f"{folder.name}-{_slug(new, with_profile=old_profile != new['profile'])}")
            raise ProfileError(
                f"results_dir={str(folder)!r} holds results of another configuration ({path} records profile "
                f"{old_profile!r} with {_describe(old_overrides)}); this run differs in {'; '.join(differences)}. "
                f"Write these results elsewhere: pass results_dir={str(suggestion)!r} (papermill: -p results_dir "
                f"{suggestion}), or delete {folder} to start that folder over."
            )
        if old == new:
            return path
    if record:
        write_json_atomic(path, new)
    return path


def _record_differences(old_profile: str, old_overrides: dict, new: dict) -> list[str]:
    if old_profile != new["profile"]:
        return [f"profile: {old_profile!r} -> {new['profile']!r}"]
    defaults = PROFILES.get(new["profile"], {})
    out = []
    for key in sorted(set(old_overrides) | set(new["overrides"])):
        before = old_overrides.get(key, defaults.get(key))
        after = new["overrides"].get(key, defaults.get(key))
        if before != after:
            out.append(f"{key}: {before!r} -> {after!r}")
    return out


def _describe(overrides: dict) -> str:
    return "no overrides" if not overrides else "overrides " + ", ".join(f"{k}={v!r}" for k, v in sorted(overrides.items()))


def _slug(record: dict, with_profile: bool) -> str:
    import re

    parts = [record["profile"]] if with_profile else []
    parts += [f"{k}-{v}" for k, v in sorted(record["overrides"].items())]
    return re.sub(r"[^A-Za-z0-9.]+", "-", "-".join(parts)).strip("-")[:60] or "other"
