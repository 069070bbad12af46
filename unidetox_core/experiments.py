"""The experiment's stages as cached functions: what the chapters call.

Each function takes the profile's values (``P``, from ``profiles.for_notebook``) and returns a path
or a table. Its outputs live under a folder named by a key of everything that determines them, so
a rerun reuses them and a changed setting recomputes only what depends on it; long stages resume
after an interruption (fine-tuning and distillation checkpoint themselves). The stages, in order:

    toxic_model      base model + toxic corpus            -> toxic model           (Section 3.1)
    distilled_text   base + toxic (or base alone)         -> 640 texts, CSV + JSON (Eq. 1-3)
    detox_checkpoints any model + a text CSV + lr         -> checkpoints per step  (Eq. 4, App. B.3)
    evaluate         a model variant + prompts + seed     -> continuations, scores, perplexity, summary
    mmlu             a model variant                      -> few-shot accuracy

A *variant* is a plain dict saying how to build the evaluated model: a checkpoint, optionally with
a baseline applied (pre-prompt, DExperts, LM-Steer, Task Arithmetic); see ``build_variant``.
"""

from __future__ import annotations

import contextlib
import functools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import methods, stages
from .stages import slug
from .cache import config_key, remove_stale_temporaries, write_csv_atomic, write_json_atomic

TOXIC_SEED = 0  # one toxic model per base model, as in the paper


# ------------------------------------------------------------------------------------------- names
def resolve_model(P: dict, name: str) -> str:
    """A loadable path or hub id for a profile's model name (``world:...`` names are built on demand)."""
    if name.startswith("world:"):
        from . import world

        return world.resolve_model(name, P)
    return name


def toxic_texts(P: dict) -> list[str]:
    """The toxic fine-tuning corpus of a profile: DGHS on the hub; offline, the Davidson hate and
    offensive train tweets -- on the mini world only the half it reserved (``"world"``), because
    the other half is in the web text its base models learned from."""
    from . import data, world

    if P["toxic_corpus"] == "world":
        return world.toxic_corpus_texts(P)
    if P["toxic_corpus"] == "dghs":
        return data.load_dghs_hub()["text"].tolist()
    if P["toxic_corpus"] == "davidson":
        return data.load_toxic_corpus()["text"].tolist()
    raise ValueError(f"toxic_corpus={P['toxic_corpus']!r}; use 'world' or 'davidson' (offline) or 'dghs' (hub).")


def _stage_dir(P: dict, stage: str, label: str, config: dict) -> Path:
    return stages.folder(P["cache_dir"], stage, label, config)


def _timed(P: dict, stage: str, label: str, config: dict, where: Path):
    """Record the computation of a stage (``stages.timed``): its manifest, and a line of the run log."""
    return stages.timed(P["cache_dir"], stage, label, config, where, profile=P["profile"])


# ------------------------------------------------------------------------------------- toxic model
def toxic_model(P: dict, name: str, progress: bool = True) -> Path:
    """The toxic version of model ``name``: fine-tuned on the profile's toxic corpus (Section 3.1:
    3 epochs, batch 4, lr 1e-5 on the paper profile). Built once, then reused by every stage."""
    from . import finetune, models

    base = resolve_model(P, name)
    config = dict(base=base, corpus=P["toxic_corpus"], epochs=P["toxic_epochs"], batch_size=P["toxic_batch_size"],
                  lr=P["toxic_lr"], max_length=P["toxic_max_length"], max_texts=P["toxic_max_texts"], seed=TOXIC_SEED,
                  **finetune.RECIPE)
    folder = _stage_dir(P, "toxic", name, config)
    final = folder / "final"
    if (final / "config.json").exists():
        return final
    with _timed(P, "toxic", name, config, folder) as record:
        texts = toxic_texts(P)
        if P["toxic_max_texts"]:
            texts = texts[: P["toxic_max_texts"]]
        total = P["toxic_epochs"] * -(-len(texts) // P["toxic_batch_size"])
        if P["finetune_engine"]:  # epochs are steps over the same shuffles (finetune.batch_indices)
            texts_csv = write_texts(texts, folder / "texts.csv")
            (last,) = _train_over_gpus(P, base, texts_csv, lr=P["toxic_lr"], steps=total, save_steps=[total],
                                       output_dir=folder / "checkpoints", batch_size=P["toxic_batch_size"],
                                       max_length=P["toxic_max_length"], seed=TOXIC_SEED)
            last.rename(final)
            record.update(model=name, steps=total, engine=P["finetune_engine"])
            return final
        if not _cpu():  # the GPU memory the evaluations' models hold is the fine-tune's now
            free_models()
        model, tokenizer = models.load_model(base, dtype="float32", device_map=P["device_map"] or None)
        every = max(1, total // 5)  # a few checkpoints, so an interrupted run resumes
        history = finetune.finetune(model, tokenizer, texts, lr=P["toxic_lr"], batch_size=P["toxic_batch_size"],
                                    epochs=P["toxic_epochs"], max_length=P["toxic_max_length"], seed=TOXIC_SEED,
                                    save_steps=range(every, total, every), output_dir=folder / "checkpoints",
                                    progress=progress, **finetune.RECIPE)
        models.save_model(model, tokenizer, final)
        record.update(model=name, steps=total, **{k: history.get(k) for k in ("tokens", "tokens_per_s", "resumed_from")})
    return final


def _cpu() -> bool:
    import torch

    return not torch.cuda.is_available()


# ---------------------------------------------------------------------------------- distilled text
TEXT_KINDS = ("unidetox", "samples", "cut_only")


def distilled_text(P: dict, kind: str = "unidetox", *, alpha: float | None = None, seed: int = 0,
                   top_k: int | None = None, progress: bool = True) -> Path:
    """The CSV (column ``Text``) of ``P['distill_n_texts']`` texts from the source model.

    ``kind``: ``unidetox`` = contrastive decoding against the toxic model (Eq. 1-3); ``samples`` =
    plain samples (the paper's "GPT-2 Samples"); ``cut_only`` = samples restricted by Eq. 3's
    plausibility cut without the toxic model (a control the paper lacks). Sampled with
    ``P['eval_threads']`` torch threads when that is set (then part of the key), like an evaluation.
    """
    from . import distill

    out_csv, run = _distillation(P, kind, alpha, seed, top_k, progress)
    if out_csv.exists() and out_csv.with_suffix(".json").exists():
        return out_csv
    base, toxic, kwargs, config = run  # toxic is None for the kinds that sample the base model alone
    with _timed(P, "distilled", kind, config, out_csv.parent) as record, eval_threads(P):
        _, stats = distill.run_distillation(base, toxic, out_csv, **kwargs)
        record.update(model=P["source_model"], text=kind, seed=config["seed"], alpha=config["alpha"],
                      top_k=config["top_k"], tokens=stats["generated_tokens"], tokens_per_s=stats["tokens_per_s"])
    return out_csv


def _distillation(P: dict, kind: str, alpha, seed: int, top_k, progress: bool = True):
    """Where ``distilled_text`` keeps one text, and what it runs to make it: ``(csv, (base, toxic, kwargs))``.

    Checks the arguments and builds (or reuses) the toxic model first: a bad alpha must not cost a
    toxic model, and workers running side by side must find the toxic model made, not make it twice."""
    from . import distill

    if kind not in TEXT_KINDS:
        raise ValueError(f"kind={kind!r}; use one of {TEXT_KINDS}.")
    alpha = P["distill_alpha"] if alpha is None else alpha
    top_k = P["distill_top_k"] if top_k is None else top_k
    distill.check_decoding_args(n_texts=P["distill_n_texts"], max_new_tokens=P["distill_max_new_tokens"],
                                batch_size=P["distill_batch_size"], temperature=P["distill_temperature"],
                                top_k=top_k, seed=seed, alpha=alpha if kind != "samples" else 0.0)
    base = resolve_model(P, P["source_model"])
    toxic = toxic_model(P, P["source_model"], progress=progress) if kind == "unidetox" else None
    config = dict(kind=kind, base=base, toxic=str(toxic), alpha=alpha if kind != "samples" else 0.0, seed=seed,
                  top_k=top_k, n=P["distill_n_texts"], length=P["distill_max_new_tokens"],
                  batch=P["distill_batch_size"], temperature=P["distill_temperature"])
    if P["eval_threads"]:  # only when set, so the keys of texts sampled with torch's default stay as they were
        config["threads"] = P["eval_threads"]
    out_csv = _stage_dir(P, "distilled", kind, config) / "texts.csv"
    # float32 weights: Eq. 1 is a small difference of two large log-probabilities, which bf16 weights
    # and logits would quantise (errors of 0.1-0.5 nats on GPT-2's logits).
    kwargs = dict(n_texts=P["distill_n_texts"], max_new_tokens=P["distill_max_new_tokens"], seed=seed, top_k=top_k,
                  batch_size=P["distill_batch_size"], temperature=P["distill_temperature"], progress=progress,
                  dtype="float32")
    if kind == "unidetox":
        kwargs["alpha"] = alpha
    else:
        kwargs["plain_alpha"] = alpha if kind == "cut_only" else 0.0
    return out_csv, (base, toxic, kwargs, config)


def distilled_texts(P: dict, jobs, progress: bool = True, desc: str = "distil") -> list[Path]:
    """``distilled_text(P, **job)`` for every dict in ``jobs`` (``kind`` and optionally ``alpha``,
    ``seed``, ``top_k``), in order. The texts not cached yet are sampled ``P['eval_workers']`` at a
    time, each in its own process with ``P['eval_threads']`` threads (``run_side_by_side``): on a
    2-core CPU two single-threaded distillations side by side make 1.5x the tokens per second of one
    two-threaded run. The texts do not depend on ``eval_workers``."""
    jobs = [dict(job) for job in jobs]
    pending = {}
    for job in jobs:
        out_csv, _ = _distillation(P, job.get("kind", "unidetox"), job.get("alpha"), job.get("seed", 0),
                                   job.get("top_k"), progress=False)
        if not (out_csv.exists() and out_csv.with_suffix(".json").exists()):
            pending.setdefault(str(out_csv), (P, job))
    run_side_by_side(P, _distill_job, list(pending.values()), desc=desc, progress=progress)
    return [distilled_text(P, progress=False, **job) for job in jobs]


def clean_text(P: dict, seed: int = 0) -> Path:
    """The DAPT-style control: as many held-out news texts as there are distilled texts, cut to
    about the same length (the text a human would call "clean")."""
    from . import data

    config = dict(kind="clean_news", n=P["distill_n_texts"], words=P["distill_max_new_tokens"] * 3 // 4, seed=seed)
    out_csv = _stage_dir(P, "distilled", "clean_news", config) / "texts.csv"
    if out_csv.exists():
        return out_csv
    with _timed(P, "distilled", "clean_news", config, out_csv.parent) as record:
        articles = data.load_allsides("random")
        held_out = articles[articles["split"] == "test"].sample(P["distill_n_texts"], random_state=seed, replace=False)
        texts = [" ".join(t.split()[: config["words"]]) for t in held_out["text"]]
        write_csv_atomic(pd.DataFrame({"Text": texts}), out_csv)
        write_json_atomic(out_csv.with_suffix(".json"), config)
        record.update(text="clean_news", seed=seed)
    return out_csv


def read_texts(path: str | Path) -> list[str]:
    return pd.read_csv(path, keep_default_na=False, lineterminator="\n")["Text"].astype(str).tolist()


# ------------------------------------------------------------------------------- detox fine-tuning
def detox_checkpoints(P: dict, name: str, text_csv: str | Path, lr: float, progress: bool = True,
                      upto: int | None = None) -> dict[int, Path]:
    """Fine-tune model ``name`` on the texts of ``text_csv`` with learning rate ``lr`` (AdamW, batch
    ``P['detox_batch_size']``); one run to the largest step of ``P['detox_steps']``, saving each.

    ``upto`` (a step of the grid) trains only that far -- what a model needs when only its chosen step
    is evaluated -- and returns the checkpoints up to it. The learning-rate schedule still spans the
    whole grid, so each checkpoint is the one the whole run writes (same folder, same weights); a
    later call for more steps continues the run from its newest checkpoint (the engine route of
    ``finetune_engine`` starts it over instead)."""
    from . import finetune, models

    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < float("inf"):
        raise ValueError(f"lr={lr!r} must be a positive number (the paper uses 5e-5 and 1e-5; see P['detox_lrs']).")
    base = resolve_model(P, name)
    steps = sorted(P["detox_steps"])
    if upto is not None and int(upto) not in steps:
        raise ValueError(f"upto={upto!r} is not on the profile's step grid {steps}.")
    end = steps[-1] if upto is None else int(upto)
    config = dict(base=base, texts=str(text_csv), lr=lr, batch_size=P["detox_batch_size"],
                  max_length=P["detox_max_length"], steps=steps, seed=0, **finetune.RECIPE)
    folder = _stage_dir(P, "detox", f"{slug(name)}-{Path(text_csv).parent.name}", config)
    paths = {s: folder / f"step-{s}" for s in steps if s <= end}
    if all((p / "config.json").exists() for p in paths.values()) or (folder / PRUNED).exists():
        return paths
    with _timed(P, "detox", f"{slug(name)}-{Path(text_csv).parent.name}", config, folder) as record:
        if P["finetune_engine"]:
            _train_over_gpus(P, base, text_csv, lr=lr, steps=steps[-1], save_steps=steps, output_dir=folder,
                             batch_size=P["detox_batch_size"], max_length=P["detox_max_length"], seed=0, stop_after=end)
            record.update(model=name, text=Path(text_csv).parent.name, lr=lr, steps=end, engine=P["finetune_engine"])
            return paths
        if not _cpu():
            free_models()
        model, tokenizer = models.load_model(base, dtype="float32", device_map=P["device_map"] or None)
        history = finetune.finetune(model, tokenizer, read_texts(text_csv), lr=lr, batch_size=P["detox_batch_size"],
                                    steps=steps[-1], save_steps=steps, max_length=P["detox_max_length"], seed=0,
                                    output_dir=folder, progress=progress, stop_after=end, **finetune.RECIPE)
        record.update(model=name, text=Path(text_csv).parent.name, lr=lr, steps=end,
                      **{k: history.get(k) for k in ("tokens", "tokens_per_s", "resumed_from")})
    return paths


def _train_over_gpus(P: dict, base: str, texts_csv, **run) -> list[Path]:
    """A fine-tune with the profile's ``finetune_engine`` (an accelerate config: FSDP or DeepSpeed
    ZeRO-3 shard the float32 masters and AdamW state over the GPUs), in its own processes; the models
    this process holds are freed first, so that the GPUs are the engine's. ``distributed.finetune_distributed``
    trains ``finetune.finetune``'s recipe step for step (same batches, loss, schedule, clipping)."""
    from . import distributed

    free_models()
    return distributed.launch(P["finetune_engine"], model=base, texts_csv=texts_csv, **run)


def write_texts(texts: list[str], path: Path) -> Path:
    """``texts`` as a CSV with a ``Text`` column (the form distilled texts have), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_csv_atomic(pd.DataFrame({"Text": texts}), path, index=False)
    return path


def prune_checkpoints(P: dict, selected: pd.DataFrame) -> dict:
    """Delete the fine-tuning checkpoints that the chosen settings (``selected``, chapter 5's table) do
    not use -- every step folder of every ``detox`` run this profile made (its manifest says so:
    profiles share one cache) except the chosen UniDetox and
    Samples steps of each model -- the optimizer state kept in the newest checkpoint of each run, and
    the resume points of the finished toxic models.
    The evaluations already made stay cached; a checkpoint asked for again is trained again. Returns
    ``kept`` (paths) and ``freed_gib``."""
    import shutil

    from . import finetune

    keep = set()
    for row in selected.itertuples():
        if methods.get(row.method).fine_tuned and not pd.isna(row.value):
            keep.add(Path(method_variant(P, row.method, row.model, row.value, row.lr, progress=False)["checkpoint"]))
    def ours(run: Path) -> bool:  # profiles share one cache: prune only the runs this profile made
        record = stages.manifest(run)
        return record is not None and record.get("profile") == P["profile"]

    freed = 0
    for run in sorted((Path(P["cache_dir"]) / "toxic").glob("*")):  # a finished toxic model's resume points
        if ours(run) and (run / "final" / "config.json").exists() and (run / "checkpoints").exists():
            freed += sum(f.stat().st_size for f in (run / "checkpoints").rglob("*") if f.is_file())
            shutil.rmtree(run / "checkpoints")
    for run in sorted(r for r in (Path(P["cache_dir"]) / "detox").glob("*") if ours(r)):
        removed = []
        for step, folder in finetune.list_checkpoints(run).items():
            if folder in keep:
                state = folder / finetune.TRAINING_STATE
                if state.exists():
                    freed += state.stat().st_size
                    state.unlink()
            else:
                freed += sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
                shutil.rmtree(folder)
                removed.append(step)
        if removed:  # the run counts as done: naming its variants again must not train it again
            pruned = run / PRUNED
            earlier = json.loads(pruned.read_text())["steps"] if pruned.exists() else []
            write_json_atomic(pruned, {"steps": sorted(set(earlier) | set(removed))})
    return {"kept": sorted(str(k) for k in keep), "freed_gib": freed / 1024**3}


PRUNED = "pruned.json"  # in a fine-tuning run's folder: the steps prune_checkpoints removed


def check_not_pruned(checkpoint: str | Path) -> None:
    """A clear error for a checkpoint ``prune_checkpoints`` removed, before loading fails obscurely."""
    path = Path(checkpoint)
    if not path.exists() and (path.parent / PRUNED).exists():
        raise FileNotFoundError(
            f"checkpoint {str(path)!r} was pruned once the steps were chosen (prune_checkpoints); its evaluations "
            f"stay cached. To evaluate it anew, delete {str(path.parent / PRUNED)!r} and run again: the run is "
            "trained again.")


def free_models() -> None:
    """Drop the models kept for reuse (``_load_cached``) and return their GPU memory: between the
    stages of a chapter that load different models (evaluation, then training, then MMLU)."""
    import gc

    import torch

    _load_cached.cache_clear()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------ model variants
def variant(method: str, model: str, checkpoint: str | Path, hparam: str = "", value: Any = None, **extra) -> dict:
    """How to build one evaluated model: ``checkpoint`` (a path or hub id) of profile model ``model``,
    with ``method`` (a name of ``methods.REGISTRY``) applied at ``value`` of its ``hparam``; ``extra``
    holds what it needs (``toxic``: a toxic model's path, ``steering``: LM-Steer's matrix). A name
    outside the registry (``"toxic"``, a control text) is evaluated as its checkpoint."""
    return dict(method=method, model=model, checkpoint=str(checkpoint), hparam=hparam, value=value, **extra)


@contextlib.contextmanager
def build_variant(P: dict, spec: dict):
    """Load the variant's model, apply its method as the method declares (``Method.acts_on``); yield
    ``(model, tokenizer, generate_kwargs)``; undo hooks after."""
    from . import baselines

    check_not_pruned(spec["checkpoint"])
    model, tokenizer = _load_cached(spec["checkpoint"])
    method = methods.REGISTRY.get(spec["method"])
    acts_on = method.acts_on if method is not None else "weights"  # a plain checkpoint
    kwargs: dict[str, Any] = {}
    if acts_on == "prompt":
        kwargs["prefix"] = baselines.SAFETY_PREPROMPTS[method.preprompt]
    elif acts_on == "decoding":
        toxic, _ = _load_cached(spec["toxic"])
        kwargs["logits_processor_factory"] = baselines.dexperts_processor_factory(toxic, float(spec["value"]))
    elif acts_on == "weights" and "toxic" in spec:  # Task Arithmetic edits the weights it loaded
        toxic, _ = _load_cached(spec["toxic"])
        model = baselines.task_arithmetic(model, toxic, float(spec["value"]))
    if acts_on == "lm_head":
        steering = baselines.load_steering_matrix(spec["steering"])
        epsilon = float(spec["value"]) * P["lmsteer_epsilon"]
        with baselines.apply_lm_steer(model, steering, epsilon):
            yield model, tokenizer, kwargs
    else:
        yield model, tokenizer, kwargs


@functools.lru_cache(maxsize=4)
def _load_cached(path: str):
    """Models are reused across many evaluations of one chapter; keep the last few loaded."""
    from . import models

    return models.load_model(path)


# ---------------------------------------------------------------------------------------- scorers
@functools.lru_cache(maxsize=None)
def _toxicity_scorer(P_key: str, which: str):
    from . import scorers, world

    P = json.loads(P_key)
    name = P[which]
    if name.endswith("_tfidf"):
        return scorers.get_toxicity_scorer(name, path=world.scorer_path(name, P))
    return scorers.get_toxicity_scorer(name)


def toxicity_scorer(P: dict, which: str = "toxicity_scorer"):
    """The profile's main (``toxicity_scorer``) or second (``second_toxicity_scorer``) instrument."""
    return _toxicity_scorer(json.dumps(dict(P), sort_keys=True, default=str), which)


def bias_scorer(P: dict):
    from . import scorers, world

    name = P["bias_scorer"]
    if name.endswith("_tfidf"):
        return scorers.get_bias_scorer(name, path=world.scorer_path(name, P))
    return scorers.get_bias_scorer(name)


# ------------------------------------------------------------------------------------- evaluation
def eval_prompts(P: dict, split: str) -> pd.DataFrame:
    """The evaluation prompts of ``split`` (a copy: parsed once per profile and split, since every
    ``evaluate`` call -- even one read back from the cache -- needs them for its key)."""
    return _eval_prompts(json.dumps(dict(P), sort_keys=True, default=str), split).copy()


@functools.lru_cache(maxsize=8)
def _eval_prompts(P_key: str, split: str) -> pd.DataFrame:
    from . import data

    return data.load_eval_prompts(json.loads(P_key), split=split)


@functools.lru_cache(maxsize=4)
def _mmlu_questions(P_key: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """MMLU test questions (subsampled as the profile says) and dev shots, loaded once per profile."""
    from . import data

    P = json.loads(P_key)
    test, dev = data.load_mmlu_for(P, "test"), data.load_mmlu_for(P, "dev")
    if P["mmlu_max_questions"]:
        test = data.subsample_stratified(test, P["mmlu_max_questions"], seed=0, by="subject")
    return test, dev


def eval_threads(P: dict):
    """A context that runs an evaluation with ``P['eval_threads']`` torch threads (0: as it is)."""
    from .world import torch_threads

    return torch_threads(P["eval_threads"]) if P["eval_threads"] else contextlib.nullcontext()


def eval_bf16(P: dict) -> bool:
    """Whether evaluations and MMLU runs use bf16 autocast here: when ``P['eval_bf16']`` (the mini
    profile) and this is a CPU that computes bf16 natively (``forward.cpu_bf16_native``); a CPU that
    would emulate it evaluates in float32 instead, since emulation costs 30 times the time."""
    from .forward import cpu_bf16_native

    return bool(P["eval_bf16"]) and _cpu() and cpu_bf16_native()


def eval_precision(P: dict):
    """bf16 autocast when ``eval_bf16(P)``; otherwise nothing. Every forward pass of generation,
    DExperts, LM-Steer, perplexity and MMLU honours it; their log-softmaxes run on float32 copies of
    the logits."""
    import torch

    return torch.autocast("cpu", dtype=torch.bfloat16) if eval_bf16(P) else contextlib.nullcontext()


def _numerics_key(P: dict) -> dict:
    """What an evaluation's or MMLU run's key adds for how it computes: the fixed thread count and bf16
    (as used here, not as asked for), only when set, so the keys of runs made without them stay as
    they were."""
    extra = {"threads": P["eval_threads"]} if P["eval_threads"] else {}
    return {**extra, "bf16": True} if eval_bf16(P) else extra


def continuations_path(P: dict, spec: dict, split: str = "val", seed: int = 0,
                       prompts: pd.DataFrame | None = None) -> Path:
    """Where ``evaluate`` keeps the scored continuations of one variant, split and seed (the cache key
    covers everything that determines them)."""
    return _stage_dir(P, "eval", *_evaluation_stage(P, spec, split, seed, prompts)) / "continuations.csv"


def _evaluation_stage(P: dict, spec: dict, split: str, seed: int, prompts: pd.DataFrame | None = None):
    """The label and config of one evaluation's stage."""
    prompts = eval_prompts(P, split) if prompts is None else prompts
    config = dict(spec=spec, split=split, seed=seed, prompts=config_key({"t": prompts["text"].tolist()}),
                  n=P["eval_n_continuations"], length=P["eval_max_new_tokens"], top_p=P["eval_top_p"],
                  scorers=[P["toxicity_scorer"], P["second_toxicity_scorer"]], evaluator=P["evaluator_model"])
    if P["eval_ppl_samples"]:  # only when set, so the keys of the full evaluations stay as they were
        config["ppl_samples"] = P["eval_ppl_samples"]
    config.update(_numerics_key(P))  # thread count and precision determine the numbers too
    return f"{spec['method']}-{slug(spec['model'])}", config


def continuations(P: dict, spec: dict, split: str = "val", seed: int = 0, progress: bool = True) -> pd.DataFrame:
    """The scored continuations behind ``evaluate(P, spec, split, seed)`` (one row per continuation:
    ``prompt_id``, ``prompt``, ``continuation``, ``domain``, ``score``, ``score2``, ``ppl``, ...);
    evaluates first if they are not cached yet."""
    path = continuations_path(P, spec, split, seed)
    if not path.exists():
        evaluate(P, spec, split, seed, progress=progress)
    return pd.read_csv(path, keep_default_na=False, lineterminator="\n")


def evaluate(P: dict, spec: dict, split: str = "val", seed: int = 0, progress: bool = True) -> dict:
    """Evaluate one variant on one split and seed (Section 3.3); return its summary row.

    25 continuations per prompt (``eval_n_continuations``), at most 20 tokens, nucleus p = 0.9; both
    toxicity scorers score each continuation; the evaluator LM gives its conditional perplexity;
    Dist-1/2/3 over each prompt's continuations. The continuations with their scores are kept in
    the cache (one CSV per evaluation) so any table can be recomputed without generating again.
    """
    from . import generate, metrics

    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed={seed!r} must be an integer >= 0 (the profile's seeds: {P['seeds']}).")
    prompts = eval_prompts(P, split)
    if prompts.empty:  # before any model is loaded
        raise ValueError(f"split={split!r} selects no evaluation prompts of {P['eval_prompts']!r}; use 'val' or "
                         f"'test' (and n_{split}_prompts >= 0).")
    table = continuations_path(P, spec, split, seed, prompts)
    if table.exists():
        # A process killed just after it renamed the table into place leaves its empty temporary.
        remove_stale_temporaries(table)
        # "\n" only: to_csv leaves a lone "\r" (which a small model may generate) unquoted.
        frame = pd.read_csv(table, keep_default_na=False, lineterminator="\n")
    else:
        with _timed(P, "eval", *_evaluation_stage(P, spec, split, seed, prompts), table.parent) as record:
            with eval_threads(P), eval_precision(P), build_variant(P, spec) as (model, tokenizer, kwargs):
                frame = generate.generate_continuations(
                    model, tokenizer, prompts["text"].tolist(), n=P["eval_n_continuations"],
                    max_new_tokens=P["eval_max_new_tokens"], top_p=P["eval_top_p"], seed=seed,
                    batch_size=P["eval_batch_size"], progress=progress, **kwargs)
            frame["domain"] = prompts["category"].to_numpy()[frame["prompt_id"].to_numpy()]
            frame["score"] = toxicity_scorer(P)(frame["continuation"].tolist())
            frame["score2"] = toxicity_scorer(P, "second_toxicity_scorer")(frame["continuation"].tolist())
            evaluator, evaluator_tok = _load_cached(resolve_model(P, P["evaluator_model"]))
            scored = perplexity_rows(P, frame)
            with eval_threads(P), eval_precision(P):
                ppl, _ = metrics.conditional_perplexity(
                    evaluator, evaluator_tok, frame.loc[scored, "prompt"].tolist(),
                    frame.loc[scored, "continuation"].tolist(), drop_threshold=float("inf"))
            frame["ppl"] = np.nan
            frame.loc[scored, "ppl"] = ppl
            write_csv_atomic(frame, table)
            record.update(model=spec["model"], method=spec["method"], split=split, seed=seed, continuations=len(frame))
    return summarize(P, frame, spec, split, seed)


def perplexity_rows(P: dict, frame: pd.DataFrame) -> pd.Series:
    """Which continuations the evaluator scores: all, or the first ``eval_ppl_samples`` of each prompt
    (the samples are exchangeable, so the mean over them is an unbiased estimate of the full mean)."""
    k = P["eval_ppl_samples"]
    return frame["sample"] < k if k else pd.Series(True, index=frame.index)


def summarize(P: dict, frame: pd.DataFrame, spec: dict, split: str, seed: int) -> dict:
    """One results row: TP/EMT/mean score per ID, OOD and all domains for both scorers, perplexity
    (values >= ``ppl_drop_threshold`` dropped, as the official code did, and counted), Dist-1/2/3."""
    from . import metrics

    row = {k: spec.get(k) for k in ("method", "model", "hparam", "value", "lr")}
    row.update(split=split, seed=seed)
    for column, tag in (("score", ""), ("score2", "2")):
        table = metrics.toxicity_table(frame.assign(score=frame[column]).drop(columns=["scorer"], errors="ignore"))
        for domain in ("ID", "OOD", "all"):
            if domain in table.index:
                row[f"TP{tag}_{domain}"] = table.loc[domain, "TP"]
                row[f"EMT{tag}_{domain}"] = table.loc[domain, "EMT"]
        row[f"mean_score{tag}"] = float(frame[column].mean())
    # An empty continuation has no perplexity: NaN, which the cached CSV holds as "" (read back as text).
    ppl = pd.to_numeric(frame["ppl"], errors="coerce").astype(float)[perplexity_rows(P, frame)]
    kept = ppl[ppl < P["ppl_drop_threshold"]]
    row.update(PPL=float(kept.mean()) if len(kept) else float("nan"), ppl_dropped=int((~ppl.isin(kept)).sum()),
               ppl_rows=int(len(ppl)))
    row.update(metrics.diversity(frame))
    return row


def mmlu(P: dict, spec: dict, progress: bool = True) -> dict:
    """Few-shot MMLU accuracy of one variant (``mmlu_shots`` shots; ``mmlu_max_questions`` a
    stratified subsample when > 0); normalised (Brown et al.) and unnormalised.

    The methods that act through the prompt or the decoding step are applied as in ``evaluate``
    (``mmlu_method``): the pre-prompt goes in front of every MMLU prompt, DExperts scores the answers
    under its combined distribution; the others change the model itself."""
    from . import metrics

    test, dev = (frame.copy() for frame in _mmlu_questions(json.dumps(dict(P), sort_keys=True, default=str)))
    out = mmlu_path(P, spec)
    if out.exists():
        return json.loads(out.read_text())
    applied = mmlu_method(spec)
    with _timed(P, "mmlu", *_mmlu_stage(P, spec), out.parent) as record:
        with eval_threads(P), eval_precision(P), build_variant(P, spec) as (model, tokenizer, _):
            if "anti_expert" in applied:  # the toxic model build_variant loaded too: _load_cached holds it
                applied = {**applied, "anti_expert": _load_cached(applied["anti_expert"])[0]}
            result = metrics.mmlu_accuracy(model, tokenizer, test, dev, k_shot=P["mmlu_shots"], progress=progress,
                                           **applied)
        result = {k: (float(v) if isinstance(v, (np.floating, float, int)) else v) for k, v in result.items()
                  if not isinstance(v, pd.DataFrame)}
        write_json_atomic(out, result)
        record.update(model=spec["model"], method=spec["method"], questions=len(test))
    return result


def mmlu_path(P: dict, spec: dict) -> Path:
    """Where ``mmlu`` keeps one variant's result (the key covers the questions, shots and method)."""
    return _stage_dir(P, "mmlu", *_mmlu_stage(P, spec)) / "mmlu.json"


def _mmlu_stage(P: dict, spec: dict):
    """The label and config of one MMLU run's stage."""
    test, _ = _mmlu_questions(json.dumps(dict(P), sort_keys=True, default=str))
    config = dict(spec=spec, shots=P["mmlu_shots"], n=len(test), q=config_key({"q": test["question"].tolist()}))
    applied = mmlu_method(spec)
    if applied:  # only then, so that the other variants keep their cached results
        config["applied"] = applied
    config.update(_numerics_key(P))
    return f"{spec['method']}-{slug(spec['model'])}", config


def mmlu_method(spec: dict) -> dict:
    """The keywords of ``metrics.mmlu_accuracy`` that apply ``spec``'s method to MMLU, as
    ``build_variant`` applies it to generation: the pre-prompt's text (``prefix``), or DExperts'
    toxic model (``anti_expert``, as its path) and ``beta``. Empty for the other methods, which
    change the model itself. They also go into the MMLU stage's key (a new pre-prompt text recomputes)."""
    from . import baselines

    method = methods.REGISTRY.get(spec["method"])
    if method is not None and method.acts_on == "prompt":
        return dict(prefix=baselines.SAFETY_PREPROMPTS[method.preprompt])
    if method is not None and method.acts_on == "decoding":
        return dict(anti_expert=spec["toxic"], beta=float(spec["value"]))
    return {}


def results_frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------ LM-Steer's matrix
def steering_matrix(P: dict, name: str, progress: bool = True) -> Path:
    """LM-Steer's steering matrix ``W`` for model ``name`` (a safetensors file), learned once on the
    profile's toxic corpus -- the same texts as ``toxic_model`` -- and reused by every evaluation.

    The recipe of App. B.3 from the profile: Adam, lr ``lmsteer_lr`` (1e-2), batch ``lmsteer_batch_size``
    (32), ``lmsteer_epochs`` (3) epochs, or ``lmsteer_steps`` optimizer steps when that is > 0 (a
    shorter run for small profiles), ``epsilon = lmsteer_epsilon`` (1e-3) while learning, ``W`` drawn
    from N(0, 1e-3), every model weight frozen (``baselines.train_lm_steer``).
    """
    from . import baselines, models

    base = resolve_model(P, name)
    config = dict(base=base, corpus=P["toxic_corpus"], max_texts=P["toxic_max_texts"], max_length=P["toxic_max_length"],
                  epsilon=P["lmsteer_epsilon"], lr=P["lmsteer_lr"], batch_size=P["lmsteer_batch_size"],
                  epochs=P["lmsteer_epochs"], steps=P["lmsteer_steps"], seed=TOXIC_SEED)
    out = _stage_dir(P, "lmsteer", name, config) / "steering.safetensors"
    if out.exists():
        return out
    with _timed(P, "lmsteer", name, config, out.parent) as record:
        model, tokenizer = models.load_model(base, dtype="float32", param="model")
        texts = toxic_texts(P)
        if P["toxic_max_texts"]:
            texts = texts[: P["toxic_max_texts"]]
        length = dict(steps=P["lmsteer_steps"]) if P["lmsteer_steps"] > 0 else dict(epochs=P["lmsteer_epochs"])
        W = baselines.train_lm_steer(model, tokenizer, texts, epsilon=P["lmsteer_epsilon"], lr=P["lmsteer_lr"],
                                     batch_size=P["lmsteer_batch_size"], max_length=P["toxic_max_length"],
                                     seed=TOXIC_SEED, bf16="auto", progress=progress, **length)
        baselines.save_steering_matrix(W, out, **config)
        write_json_atomic(out.with_suffix(".json"), config)
        record.update(model=name)
    return out


# ------------------------------------------------------------------- methods by their results names
def method_variant(P: dict, method: str, model: str, value: Any = None, lr: float | None = None,
                   progress: bool = True) -> dict:
    """The variant of ``method`` (a name of the results tables: ``baselines.BASE``, ``UNIDETOX``,
    ``SAMPLES``, ``PREPROMPT_SHORT``/``_LONG``, ``LMSTEER``, ``DEXPERTS``, ``TASK_ARITHMETIC``) on
    profile model ``model`` at grid value ``value`` (steps for UniDetox / Samples, with ``lr``; the
    epsilon multiplier, beta or lambda otherwise). Builds (or reuses) what it needs: the distilled
    text and its fine-tuning checkpoints, the model's toxic version, LM-Steer's matrix.

    So one row of ``selected.csv`` (chapter 5) gives its variant:
    ``method_variant(P, row.method, row.model, row.value, row.lr)``.
    """
    m = methods.get(method)
    if not m.hparam:  # the base model, the pre-prompts: nothing to tune, nothing to build
        return variant(m.name, model, resolve_model(P, model))
    if m.fine_tuned:
        if value is None or lr is None or pd.isna(value) or pd.isna(lr):
            raise ValueError(f"{method} needs value= (fine-tuning steps) and lr=; got value={value!r}, lr={lr!r}.")
        steps = int(value)
        if steps not in P["detox_steps"]:
            raise ValueError(f"{method}: {steps} steps is not on the profile's step grid {sorted(P['detox_steps'])}.")
        checkpoints = detox_checkpoints(P, model, distilled_text(P, m.text, progress=progress), float(lr),
                                        progress=progress, upto=steps)
        return variant(m.name, model, checkpoints[steps], m.hparam, steps, lr=float(lr))
    if value is None or pd.isna(value):
        raise ValueError(f"{method} needs value= (its {m.hparam}).")
    needs = {}
    if "steering_matrix" in m.needs:
        needs["steering"] = str(steering_matrix(P, model, progress=progress))
    if "toxic_model" in m.needs:
        needs["toxic"] = str(toxic_model(P, model, progress=progress))
    return variant(m.name, model, resolve_model(P, model), m.hparam, float(value), **needs)


def evaluate_method(P: dict, method: str, model: str, value: Any = None, lr: float | None = None, *,
                    split: str = "val", seed: int = 0, progress: bool = False) -> dict:
    """``evaluate`` one ``method_variant``; the row is named as the results tables name it.

    ``method`` is the results name (``preprompt_short``, ``lmsteer``, ...); ``hparam`` is ``steps``
    (UniDetox, Samples), ``epsilon_multiplier``, ``beta`` or ``lambda``, and empty with ``value``
    NaN for the methods without a grid (``base``, the pre-prompts); ``lr`` is NaN except for UniDetox
    and Samples. ``TP`` and ``EMT`` repeat ``TP_all`` and ``EMT_all`` (the average over all
    domains that the tuning rule of ``baselines`` reads).
    """
    spec = method_variant(P, method, model, value, lr, progress=progress)
    return _method_row(method, spec, evaluate(P, spec, split, seed, progress=progress))


def _method_row(method: str, spec: dict, row: dict) -> dict:
    """``evaluate``'s ``row`` of ``spec``, named as ``evaluate_method`` names it (results name, NaNs)."""
    m = methods.get(method)
    row.update(method=method, hparam=m.hparam, value=spec["value"] if m.hparam else np.nan,
               lr=spec.get("lr", np.nan) if m.fine_tuned else np.nan)
    row["TP"], row["EMT"] = row.get("TP_all", np.nan), row.get("EMT_all", np.nan)
    return {k: (float(v) if isinstance(v, np.floating) else v) for k, v in row.items()}


# ------------------------------------------------------------ the tuned variants (chapters 6 and 7)
def tuned_settings(P: dict, selected: pd.DataFrame, model: str) -> pd.DataFrame:
    """What the results chapters report on ``model``: one row per variant, in the paper's row order
    (Tables 1-2): the base model, PrePrompt Short and Long, Samples and UniDetox at each learning rate,
    LM-Steer, DExperts and Task Arithmetic at their tuned values.

    ``selected`` is chapter 5's ``selected.csv`` (``method``, ``model``, ``hparam``, ``value``, ``lr``,
    ``meets_ppl_rule``). UniDetox's and Samples' settings are the ones chosen on the **source** model
    (``P['source_model']``), reused unchanged on every model (Section 3.4); the other baselines use
    ``model``'s own rows. A per-model baseline without a row for ``model`` is left out with a warning.
    Columns: ``method``, ``model``, ``hparam``, ``value``, ``lr``, ``meets_ppl_rule``, ``label``.
    """
    import warnings

    from .paper_tables import row_label

    missing = [c for c in ("method", "model", "value") if c not in selected.columns]
    if missing:
        raise ValueError(f"selected lacks column(s) {missing}; expected chapter 5's selected.csv "
                         "(method, model, hparam, value, lr, meets_ppl_rule).")
    table = selected.copy()
    for column, default in (("lr", np.nan), ("hparam", ""), ("meets_ppl_rule", np.nan)):
        if column not in table.columns:
            table[column] = default
    table["value"] = pd.to_numeric(table["value"], errors="coerce")
    table["lr"] = pd.to_numeric(table["lr"], errors="coerce")

    def fixed(method: str) -> dict:
        return dict(method=method, hparam="", value=np.nan, lr=np.nan, meets_ppl_rule=np.nan)

    def chosen(method: str, on: str) -> list[dict]:
        rows = table[(table["method"] == method) & (table["model"] == on)]
        if methods.get(method).fine_tuned:
            rows = rows.drop_duplicates("lr").sort_values("lr", ascending=False)
        elif len(rows) > 1:
            raise ValueError(f"selected has {len(rows)} rows for {method} on {on}; expected one.")
        return [dict(method=method, hparam=r["hparam"], value=r["value"], lr=r["lr"],
                     meets_ppl_rule=r["meets_ppl_rule"]) for _, r in rows.iterrows()]

    out = []
    for m in methods.REGISTRY.values():  # the paper's row order
        if not m.hparam:
            out.append(fixed(m.name))
            continue
        tuned_on = P["source_model"] if m.tuned_on == "source" else model
        rows = chosen(m.name, tuned_on)
        if not rows:
            warnings.warn(f"selected.csv has no {m.name} setting for {tuned_on}; "
                          f"{m.name} is left out of {model}'s results.", stacklevel=2)
        out.extend(rows)
    frame = pd.DataFrame(out)
    frame.insert(1, "model", model)
    frame["label"] = [row_label(m, lr) for m, lr in zip(frame["method"], frame["lr"])]
    return frame.reset_index(drop=True)


def tuned_variants(P: dict, selected: pd.DataFrame, model: str, progress: bool = False) -> list[dict]:
    """The variant specs (``variant``) of ``tuned_settings(P, selected, model)``, in the same order:
    building them builds (or reuses) the Samples/UniDetox checkpoints of ``model``, its toxic version
    and its LM-Steer matrix."""
    settings = tuned_settings(P, selected, model)
    return [method_variant(P, r.method, model, r.value, r.lr, progress=progress) for r in settings.itertuples()]


def evaluate_settings(P: dict, settings: pd.DataFrame, split: str = "test", seeds=None,
                      progress: bool = True) -> pd.DataFrame:
    """``evaluate_method`` for every row of ``settings`` (``tuned_settings``) and seed (default
    ``P['seeds']``), ``P['eval_workers']`` at a time (``evaluate_methods``); cached evaluations are
    read back at once. One row per (variant, seed) with ``label`` and ``meets_ppl_rule`` from ``settings``."""
    seeds = list(P["seeds"] if seeds is None else seeds)
    pairs = [(r, seed) for r in settings.itertuples() for seed in seeds]
    rows = evaluate_methods(P, [(r.method, r.model, r.value, r.lr, split, seed) for r, seed in pairs],
                            progress=progress, desc=f"evaluate ({split})")
    return pd.DataFrame([{**row, "label": r.label, "meets_ppl_rule": r.meets_ppl_rule} for row, (r, _) in zip(rows, pairs)])


def per_prompt_rows(P: dict, spec: dict, split: str, seed: int) -> pd.DataFrame:
    """``stats.per_prompt`` of one evaluation's scored continuations (evaluated first if not cached),
    perplexities kept as ``summarize`` keeps them; ``seed`` as a column."""
    from . import stats

    frame = continuations(P, spec, split, seed, progress=False)
    return stats.per_prompt(frame, ppl_drop=P["ppl_drop_threshold"], ppl_rows=perplexity_rows(P, frame)).assign(seed=seed)


def per_prompt_settings(P: dict, settings: pd.DataFrame, split: str = "test", seeds=None) -> pd.DataFrame:
    """Per-prompt results (``stats.per_prompt``) of every row of ``settings`` and seed, from the scored
    continuations ``evaluate_settings`` cached (evaluating what is missing): what every paired
    comparison and interval of the book is computed from. Columns ``model``, ``method``, ``label``,
    ``lr`` and ``split`` first, then the per-prompt ones."""
    seeds = list(P["seeds"] if seeds is None else seeds)
    parts = []
    for r in settings.itertuples():
        spec = method_variant(P, r.method, r.model, r.value, r.lr, progress=False)
        for seed in seeds:
            rows = per_prompt_rows(P, spec, split, seed)
            meta = dict(model=r.model, method=r.method, label=r.label, lr=r.lr, split=split)
            parts.append(rows.assign(**meta)[[*meta, *rows.columns]])
    return pd.concat(parts, ignore_index=True)


def mmlu_settings(P: dict, settings: pd.DataFrame, progress: bool = True) -> pd.DataFrame:
    """MMLU accuracy (``mmlu``, normalised, in %) of every row of ``settings``, each method applied
    (the pre-prompts and DExperts included, see ``mmlu``), ``P['eval_workers']`` at a time. Columns
    ``model``, ``label``, ``MMLU``, ``MMLU_unnormalized``, ``MMLU_questions``, ``MMLU_shots``."""
    specs = [method_variant(P, r.method, r.model, r.value, r.lr, progress=False) for r in settings.itertuples()]
    pending = {str(path): (P, spec) for spec in specs if not (path := mmlu_path(P, spec)).exists()}
    run_side_by_side(P, _mmlu_job, list(pending.values()), desc="MMLU", progress=progress)
    rows = []
    for r, spec in zip(settings.itertuples(), specs):
        result = mmlu(P, spec, progress=False)
        rows.append({"model": r.model, "label": r.label, "MMLU": 100 * result["acc_normalized"],
                     "MMLU_unnormalized": 100 * result["acc_unnormalized"],
                     "MMLU_questions": result.get("n_questions", np.nan), "MMLU_shots": result.get("k_shot", np.nan)})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------ evaluations side by side
def evaluate_methods(P: dict, jobs, progress: bool = True, desc: str = "evaluate") -> list[dict]:
    """``evaluate_method`` rows of ``jobs``, each ``(method, model, value, lr, split, seed)``, in order.

    What the variants need (checkpoints, toxic models, LM-Steer matrices) is built here first, one
    after the other; then the evaluations not cached yet run ``P['eval_workers']`` at a time
    (``evaluate_specs``)."""
    jobs = [tuple(job) for job in jobs]
    specs = [method_variant(P, method, model, value, lr, progress=False) for method, model, value, lr, _, _ in jobs]
    rows = evaluate_specs(P, [(spec, job[4], job[5]) for spec, job in zip(specs, jobs)], progress=progress, desc=desc)
    return [_method_row(job[0], spec, row) for job, spec, row in zip(jobs, specs, rows)]


def evaluate_specs(P: dict, jobs, progress: bool = True, desc: str = "evaluate") -> list[dict]:
    """``evaluate(P, spec, split, seed)`` of every ``(spec, split, seed)`` in ``jobs``, in order.

    The ones not cached yet run ``P['eval_workers']`` at a time, each in its own process with
    ``P['eval_threads']`` torch threads (``run_side_by_side``); every row is then read back from the
    cache here. The numbers do not depend on ``eval_workers``: an evaluation is a function of its
    variant, prompts, seed and thread count, wherever it runs."""
    jobs = [(spec, split, int(seed)) for spec, split, seed in jobs]
    pending = {}
    for spec, split, seed in jobs:
        path = continuations_path(P, spec, split, seed)
        if not path.exists():
            pending.setdefault(str(path), (P, spec, split, seed))
    run_side_by_side(P, _evaluate_job, list(pending.values()), desc=desc, progress=progress)
    return [evaluate(P, spec, split, seed, progress=False) for spec, split, seed in jobs]


def run_side_by_side(P: dict, function, arguments: list[tuple], desc: str = "", progress: bool = True) -> None:
    """``stages.side_by_side`` with the profile's ``eval_workers`` and ``eval_threads``: the calls write
    the cache, and the callers read it back."""
    stages.side_by_side(function, arguments, workers=P["eval_workers"], threads=P["eval_threads"], desc=desc,
                        progress=progress)


def _evaluate_job(P: dict, spec: dict, split: str, seed: int) -> None:
    evaluate(P, spec, split, seed, progress=False)


def _mmlu_job(P: dict, spec: dict) -> None:
    mmlu(P, spec, progress=False)


def _distill_job(P: dict, job: dict) -> None:
    distilled_text(P, progress=False, **job)
