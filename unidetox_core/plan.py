"""``make plan``: what a profile's book will compute, and roughly what it costs, before anything trains.

    python -m unidetox_core.plan --profile paper                 # the plan on 8 A100-80GB
    python -m unidetox_core.plan --profile paper --gpu H100-80GB --gpus 4

**Counts are exact**: they come from the profile and from the chapters' own job lists
(``views.tuning.grid_jobs``, ``views.distillation.text_kinds``), so the plan counts what the chapters
will run. **Costs are estimates**, made before any GPU was used (nothing here has one): the models'
parameter counts are computed from their public configurations on the meta device (no download),
and a stage's GPU time is a roofline -- the larger of its arithmetic at a stated share of the GPU's
peak and, for token-by-token decoding, of reading the weights at a stated share of its memory
bandwidth. The shares, the GPUs' vendor figures and the token lengths the data do not fix here are
in ``UTILISATION``, ``GPUS`` and ``ASSUMED``, printed with every plan; calibrate them with a measured
run when a GPU is at hand. Token lengths are upper bounds (texts padded to the profile's maximum),
so the totals lean high.
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
from pathlib import Path

import pandas as pd

GIB = 1024**3

# The paper's models, as their config.json on the hub describes them: enough to count parameters.
ARCHITECTURES = {
    "openai-community/gpt2-xl": ("GPT2Config", dict(n_embd=1600, n_layer=48, n_head=25, vocab_size=50257,
                                                    n_positions=1024)),
    "facebook/opt-6.7b": ("OPTConfig", dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                                            ffn_dim=16384, vocab_size=50272, max_position_embeddings=2048,
                                            word_embed_proj_dim=4096)),
    "tiiuae/falcon-7b": ("FalconConfig", dict(hidden_size=4544, num_hidden_layers=32, num_attention_heads=71,
                                              multi_query=True, parallel_attn=True, new_decoder_architecture=False,
                                              bias=False, vocab_size=65024, alibi=False)),
    "meta-llama/Llama-2-7b-hf": ("LlamaConfig", dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                                                     num_key_value_heads=32, intermediate_size=11008,
                                                     vocab_size=32000, max_position_embeddings=4096,
                                                     tie_word_embeddings=False)),
    # the small profile's
    "openai-community/gpt2": ("GPT2Config", dict(n_embd=768, n_layer=12, n_head=12, vocab_size=50257,
                                                 n_positions=1024)),
    "openai-community/gpt2-large": ("GPT2Config", dict(n_embd=1280, n_layer=36, n_head=20, vocab_size=50257,
                                                       n_positions=1024)),
    "facebook/opt-125m": ("OPTConfig", dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                            ffn_dim=3072, vocab_size=50272, max_position_embeddings=2048,
                                            word_embed_proj_dim=768)),
    "HuggingFaceTB/SmolLM2-135M": ("LlamaConfig", dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9,
                                                       num_key_value_heads=3, intermediate_size=1536,
                                                       vocab_size=49152, max_position_embeddings=8192,
                                                       tie_word_embeddings=True)),
}
# Vendor figures (dense bf16 tensor-core peak, TF32 peak, memory, memory bandwidth): not measured here.
# A T4 has no bf16: the code computes in float32 there, so its float32 peak stands in for both.
GPUS = {
    "A100-80GB": dict(bf16_tflops=312.0, tf32_tflops=156.0, memory_gib=80.0, bandwidth_tb_s=2.039),
    "H100-80GB": dict(bf16_tflops=989.0, tf32_tflops=494.0, memory_gib=80.0, bandwidth_tb_s=3.35),
    "H200": dict(bf16_tflops=989.0, tf32_tflops=494.0, memory_gib=141.0, bandwidth_tb_s=4.8),
    "T4-16GB": dict(bf16_tflops=8.1, tf32_tflops=8.1, memory_gib=16.0, bandwidth_tb_s=0.32),
}
# Shares of the peak a stage is assumed to reach (sharded training of 7 B models; batched forward
# passes; the weights read once per decoding step).
UTILISATION = dict(train=0.40, forward=0.50, bandwidth=0.60)
# What the data do not fix here (the hub sets are not readable offline): assumed, and printed.
ASSUMED = dict(
    toxic_texts=20168,  # DGHS texts after the train-split filter: the official toxic checkpoint-15126 = 3 x 5,042 steps x 4
    val_prompts=896,  # ToxiGen annotated: 10% of its 8,960 train rows (dataset card); filters may drop some
    test_prompts=940,  # ToxiGen annotated test rows (dataset card)
    prompt_tokens=48,  # a ToxiGen statement, with room to spare
    mmlu_questions=14042,  # MMLU test questions (the mirror has them all)
    mmlu_tokens_per_shot=120,  # one question with its four choices and answer
)
RUNTIME_GIB = 4.0  # CUDA context, allocator slack and activations beside the weights, per GPU (assumed)
PPL_BATCH_ROWS = 64  # continuations per batch of metrics.conditional_perplexity (its default)
TRAINING_FLOPS_PER_TOKEN = 8  # forward 2 + backward 4 + the forward again under gradient checkpointing 2
MASTER_BYTES = 16  # float32 weights 4 + gradients 4 + AdamW's two moments 8, per parameter (sharded)


# --------------------------------------------------------------------------------------- models
def parameters(name: str) -> int:
    """The parameter count of ``name`` (a key of ``ARCHITECTURES``), from its configuration on the
    meta device: no weights are downloaded or allocated."""
    import torch
    import transformers

    if name not in ARCHITECTURES:
        raise ValueError(f"model {name!r} has no configuration here; use one of {sorted(ARCHITECTURES)}.")
    config_class, values = ARCHITECTURES[name]
    config = getattr(transformers, config_class)(**values)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------- counts
def model_config(name: str):
    """The ``transformers`` configuration of ``name`` (a key of ``ARCHITECTURES``), built offline."""
    import transformers

    config_class, values = ARCHITECTURES[name]
    return getattr(transformers, config_class)(**values)


def eval_rows(P: dict, model: str, gpu: str, dexperts: bool = False) -> int:
    """Rows of one decoding batch: the profile's ``eval_batch_size``, or (0) the rows that fit the GPU
    (``generate.rows_that_fit``, as the evaluation computes them) beside the bf16 weights an evaluation
    keeps there -- the model, DExperts' toxic copy, the evaluator -- and ``RUNTIME_GIB``. DExperts
    decodes two models, so its rows hold two KV caches."""
    from .generate import CPU_BATCH_ROWS, rows_that_fit

    if P["eval_batch_size"]:
        return int(P["eval_batch_size"])
    if gpu == CPU:
        return CPU_BATCH_ROWS
    resident = 2 * (parameters(model) * (2 if dexperts else 1) + parameters(P["evaluator_model"]))
    free = GPUS[gpu]["memory_gib"] * GIB - resident - RUNTIME_GIB * GIB
    rows = rows_that_fit(model_config(model), ASSUMED["prompt_tokens"] + P["eval_max_new_tokens"], max(free, 0))
    return max(1, rows // 2) if dexperts else rows


def stage_counts(P: dict, gpu: str = "A100-80GB", gpus: int = 8) -> pd.DataFrame:
    """What the chapters of profile ``P`` will compute, one row per kind of stage: ``stage``,
    ``chapter``, ``model``, ``runs``, and per run the ``tokens`` it trains on or reads (``train`` /
    ``forward``) or the decoding ``steps`` of ``rows`` rows it generates (``decode``), with the
    ``checkpoints`` each run writes and those ``kept`` (all runs together) once the steps are chosen,
    and ``parallel``: how many GPUs the stage's work runs on at once on ``gpus`` GPUs (a sharded
    fine-tune: all of them; evaluations: one each, ``eval_workers`` at a time). Only what costs GPU
    time is counted; a prompt is counted once per batch it appears in, as the code reads it (its KV
    cache is copied to its continuations)."""
    from .views import distillation, tuning

    if gpu not in GPUS and gpu != CPU:
        raise ValueError(f"gpu={gpu!r} is not known; use one of {sorted(GPUS)}.")
    source, targets = P["source_model"], list(P["target_models"])
    models = [source, *targets]
    grid_seeds, samples_lrs, full = tuning.grid_parameters(P)
    n_toxic = P["toxic_max_texts"] or ASSUMED["toxic_texts"]
    sharded = gpus if P["finetune_engine"] else 1
    side_by_side = max(1, min(P["eval_workers"] or gpus, gpus))
    rows = []

    def add(stage, chapter, model, runs, kind, **amount):
        amount.setdefault("kept", runs * amount.get("checkpoints", 0))
        amount.setdefault("parallel", side_by_side if kind != "train" else sharded)
        rows.append(dict(stage=stage, chapter=chapter, model=model, runs=runs, kind=kind, **amount))

    toxic_steps = P["toxic_epochs"] * math.ceil(n_toxic / P["toxic_batch_size"])
    for model in models:  # DExperts and Task Arithmetic need every model's toxic copy; distillation the source's
        add("toxic model", "03, 05", model, 1, "train", tokens=toxic_steps * P["toxic_batch_size"] * P["toxic_max_length"],
            checkpoints=1)
        lmsteer_batches = P["lmsteer_steps"] or P["lmsteer_epochs"] * math.ceil(n_toxic / P["lmsteer_batch_size"])
        add("LM-Steer matrix", "05", model, 1, "forward",
            tokens=lmsteer_batches * P["lmsteer_batch_size"] * P["toxic_max_length"], checkpoints=0, parallel=1)

    kinds = distillation.text_kinds(P, P["distill_alpha"] / 2, 50)
    texts = len(kinds) + 2 * (len(P["seeds"]) - 1)  # chapter 4's texts, UniDetox and Samples at every seed
    batches = math.ceil(P["distill_n_texts"] / P["distill_batch_size"])
    add("distillation (base + toxic, float32)", "04", source, texts, "decode",
        steps=batches * P["distill_max_new_tokens"], rows=P["distill_batch_size"], models_per_step=2,
        bytes_per_parameter=4, checkpoints=0)

    tuned = models if full else [source]
    detox_tokens = max(P["detox_steps"]) * P["detox_batch_size"] * P["detox_max_length"]
    per_model_runs = len(P["detox_lrs"]) + len(samples_lrs)
    pruned = P["prune_checkpoints"]
    for model in tuned:  # pruned: only the chosen UniDetox and Samples checkpoints stay
        add("UniDetox and Samples fine-tuning", "05", model, per_model_runs, "train", tokens=detox_tokens,
            checkpoints=len(P["detox_steps"]), **({"kept": 2} if pruned else {}))
    if not full:
        for model in targets:  # the chosen UniDetox and Samples settings, trained only to the chosen step
            add("UniDetox and Samples fine-tuning (chosen, at most)", "07", model, 2, "train", tokens=detox_tokens,
                checkpoints=1)
    other_texts = len(kinds) - 2 + 1  # alpha, top-k and cut-only texts, and the clean news
    add("control fine-tuning", "04", source, other_texts, "train", tokens=detox_tokens,
        checkpoints=len(P["detox_steps"]), **({"kept": 0} if pruned else {}))

    # Validation: chapter 5's grid at its seeds (per model, as grid_jobs lists it) and chapter 4's
    # controls on the source model at one seed; test: each model's tuned settings at every seed.
    # DExperts runs its anti-expert beside the model at every step.
    evals = {}
    for method, model, _, _ in tuning.grid_jobs(P, samples_lrs, full):
        key = ("val", model, method == "dexperts")
        evals[key] = evals.get(key, 0) + len(grid_seeds)
    evals[("val", source, False)] += 1 + other_texts * len(P["detox_steps"])
    per_model_settings = 3 + len(P["detox_lrs"]) + len(samples_lrs) + 3  # base, 2 pre-prompts, fine-tunes, 3 baselines
    for model in models:
        evals[("test", model, False)] = (per_model_settings - 1) * len(P["seeds"])
        evals[("test", model, True)] = len(P["seeds"])
    for (split, model, dexperts), runs in evals.items():
        prompts = P[f"n_{split}_prompts"] or ASSUMED[f"{split}_prompts"]
        continuations = prompts * P["eval_n_continuations"]
        chapter = "04, 05" if split == "val" else "06, 07"
        batch = eval_rows(P, model, gpu, dexperts)
        batches = math.ceil(continuations / batch)
        add(f"evaluation: generate ({split}{', DExperts' if dexperts else ''})", chapter, model, runs, "decode",
            steps=batches * P["eval_max_new_tokens"], rows=batch, models_per_step=2 if dexperts else 1,
            bytes_per_parameter=2, prefill_tokens=(prompts + batches) * ASSUMED["prompt_tokens"], checkpoints=0)
        scored = prompts * min(P["eval_ppl_samples"] or P["eval_n_continuations"], P["eval_n_continuations"])
        contexts = prompts + math.ceil(scored / PPL_BATCH_ROWS)  # each prompt once per batch it appears in
        add(f"evaluation: perplexity ({split})", chapter, P["evaluator_model"], runs, "forward",
            tokens=contexts * ASSUMED["prompt_tokens"] + scored * P["eval_max_new_tokens"], checkpoints=0)

    for model in models:
        shots = P["mmlu_shots"] if model == source else P["target_mmlu_shots"]
        questions = P["mmlu_max_questions"] or ASSUMED["mmlu_questions"]
        add("MMLU", "06, 07", model, per_model_settings, "forward",
            tokens=questions * (shots + 1) * ASSUMED["mmlu_tokens_per_shot"], checkpoints=0)
    amounts = ["tokens", "steps", "rows", "models_per_step", "bytes_per_parameter", "prefill_tokens", "kept"]
    frame = pd.DataFrame(rows)
    return frame.assign(**{c: frame[c].fillna(0) if c in frame else 0 for c in amounts})


# ----------------------------------------------------------------------------------------- costs
def stage_costs(counts: pd.DataFrame, gpu: str = "A100-80GB", gpus: int = 8,
                parameter_counts: dict[str, int] | None = None, rates: dict | None = None) -> pd.DataFrame:
    """``counts`` with the estimated ``gpu_hours`` of work (all runs of the row), the ``wall_hours``
    they take on the node (``gpu_hours`` over the row's ``parallel`` GPUs), the ``peak_gib`` per GPU of
    one run, and the ``disk_gib`` its checkpoints take when written and ``kept_gib`` once the steps are
    chosen, on ``gpus`` GPUs of kind ``gpu``. With ``rates`` (model -> ``measure_rates``) a model's
    time comes from its measured seconds per token and per decoding step instead of the roofline."""
    if gpu not in GPUS and not rates:
        raise ValueError(f"gpu={gpu!r} is not known; use one of {sorted(GPUS)}.")
    if gpus < 1:
        raise ValueError(f"gpus={gpus} must be at least 1.")
    spec = GPUS.get(gpu, GPUS["A100-80GB"])  # measured rates need no vendor figures
    rates = rates or {}
    sizes = dict(parameter_counts or {})
    for name in counts["model"].unique():
        if name not in sizes:
            sizes[name] = parameters(name)
    flops_per_s = spec["bf16_tflops"] * 1e12
    bytes_per_s = spec["bandwidth_tb_s"] * 1e12 * UTILISATION["bandwidth"]
    out = []
    for row in counts.to_dict("records"):
        n = sizes[row["model"]]
        parallel = row.get("parallel", 1)
        parallel = 1 if pd.isna(parallel) else max(1, int(parallel))
        if row["kind"] == "train":
            seconds = TRAINING_FLOPS_PER_TOKEN * n * row["tokens"] / (flops_per_s * UTILISATION["train"])
            peak = MASTER_BYTES * n / parallel / GIB  # sharded over the engine's GPUs, or whole on one
        elif row["kind"] == "forward":
            seconds = 2 * n * row["tokens"] / (flops_per_s * UTILISATION["forward"])
            peak = 2 * n / GIB
        else:  # decoding: each step reads the weights once and computes every row's next token
            peak_flops = spec["tf32_tflops"] * 1e12 if row["bytes_per_parameter"] == 4 else flops_per_s
            per_step = max(2 * n * row["rows"] * row["models_per_step"] / (peak_flops * UTILISATION["forward"]),
                           row["bytes_per_parameter"] * n * row["models_per_step"] / bytes_per_s)
            prefill = 2 * n * row["models_per_step"] * row["prefill_tokens"] / (flops_per_s * UTILISATION["forward"])
            seconds = per_step * row["steps"] + prefill
            peak = row["bytes_per_parameter"] * n * row["models_per_step"] / GIB
        if row["model"] in rates:  # measured: seconds per token (train, forward) and per decoding step
            rate = rates[row["model"]]
            if row["kind"] in ("train", "forward"):
                seconds = rate[row["kind"]] * row["tokens"]
            else:
                step_s = rate["decode_base"] + rate["decode_per_row"] * row["rows"]
                seconds = row["models_per_step"] * (step_s * row["steps"] + rate["forward"] * row["prefill_tokens"])
        hours = row["runs"] * seconds / 3600
        out.append({**row, "parameters": n, "gpu_hours": hours, "wall_hours": hours / parallel, "peak_gib": peak,
                    "disk_gib": row["runs"] * row["checkpoints"] * 4 * n / GIB,
                    "kept_gib": (row["runs"] * row["checkpoints"] if pd.isna(row.get("kept", float("nan")))
                                 else row["kept"]) * 4 * n / GIB})
    return pd.DataFrame(out)


def plan_table(P: dict, gpu: str = "A100-80GB", gpus: int = 8, rates: dict | None = None,
               parameter_counts: dict[str, int] | None = None) -> pd.DataFrame:
    """``stage_costs`` of ``stage_counts``, one readable row per stage and model, and a total row
    (``disk_gib``: every checkpoint written; ``kept_gib``: what stays once the steps are chosen)."""
    costs = stage_costs(stage_counts(P, gpu, gpus), gpu, gpus, parameter_counts, rates)
    table = costs[["stage", "chapter", "model", "runs", "rows", "tokens", "steps", "gpu_hours", "wall_hours",
                   "peak_gib", "disk_gib", "kept_gib"]].copy()
    total = {"stage": "total", "chapter": "", "model": "", "runs": int(table["runs"].sum()), "rows": 0,
             "tokens": table["tokens"].sum(), "steps": table["steps"].sum(), "gpu_hours": table["gpu_hours"].sum(),
             "wall_hours": table["wall_hours"].sum(), "peak_gib": table["peak_gib"].max(),
             "disk_gib": table["disk_gib"].sum(), "kept_gib": table["kept_gib"].sum()}
    return pd.concat([table, pd.DataFrame([total])], ignore_index=True)


# What the code did when the paper profile's cost was first read (issue 18): one evaluation at a time
# on the first GPU, batches of 64 rows, every checkpoint kept, the targets trained to the last step.
AS_FIRST_READ = dict(eval_workers=1, eval_batch_size=64, prune_checkpoints=False)


def totals(P: dict, gpu: str = "A100-80GB", gpus: int = 8) -> dict:
    """The plan's totals: GPU-hours of work, hours on the node, GPU-hours held (the node's GPUs for
    those hours), and the disk written and kept."""
    total = plan_table(P, gpu, gpus).iloc[-1]
    return {"GPU-hours of work": total["gpu_hours"], "hours on the node": total["wall_hours"],
            "GPU-hours held": total["wall_hours"] * gpus, "disk written (GiB)": total["disk_gib"],
            "disk kept (GiB)": total["kept_gib"]}


def comparison(P: dict, gpu: str = "A100-80GB", gpus: int = 8) -> pd.DataFrame:
    """``totals`` of profile ``P`` beside those of the same profile run as the code ran it when its
    cost was first read (``AS_FIRST_READ``), counted by the same cost model."""
    before = totals({**dict(P), **AS_FIRST_READ}, gpu, gpus)
    now = totals(P, gpu, gpus)
    return pd.DataFrame({"as first read": before, "now": now}).rename_axis(f"{gpus} x {gpu}").reset_index()


# ------------------------------------------------------------------------------ measured rates
CPU = "cpu"  # the "GPU" of a plan whose rates were measured on this machine's CPU


def measure_rates(model, length: int = 64, rows: int = 8, decode_rows: tuple[int, int] = (8, 256),
                  repeats: int = 5) -> dict:
    """Seconds this machine takes with ``model``, on its device: per token of a forward pass and of a
    training step (forward, backward, AdamW on float32 weights), both over ``rows`` x ``length``
    tokens; and per decoding step as ``decode_base + decode_per_row * rows``, fitted to one step on a
    ``length``-token cache at the two ``decode_rows`` (the second is the rows a CPU evaluation decodes,
    so it is measured, not extrapolated). The best of ``repeats`` timings each: a busy machine only
    slows a timing down. On a CPU
    at the smoke sizes they are what ``make plan PROFILE=smoke`` costs the stages with; on a GPU, with
    randomly initialised models of the real configurations, they are the paper plan's calibration."""
    import copy
    import time

    import torch

    device = next(model.parameters()).device
    vocab = model.config.vocab_size
    generator = torch.Generator().manual_seed(0)

    def ids(n_rows: int, n_tokens: int):
        return torch.randint(vocab, (n_rows, n_tokens), generator=generator).to(device)

    def best(run) -> float:
        times = []
        for _ in range(repeats + 1):  # the first call warms up
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            run()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - start)
        return min(times[1:])

    batch = ids(rows, length)
    with torch.inference_mode():
        forward = best(lambda: model(batch)) / (rows * length)
    trainee = copy.deepcopy(model).float().train()
    optimizer = torch.optim.AdamW(trainee.parameters(), lr=1e-5)

    def train_step():
        trainee(batch, labels=batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    train = best(train_step) / (rows * length)
    del trainee, optimizer
    steps = {}
    with torch.inference_mode():
        for n_rows in decode_rows:
            cache = model(ids(n_rows, length), use_cache=True).past_key_values
            token = ids(n_rows, 1)
            steps[n_rows] = best(lambda: model(token, past_key_values=copy.deepcopy(cache), use_cache=True))
    (r1, t1), (r2, t2) = sorted(steps.items())
    per_row = max(0.0, (t2 - t1) / (r2 - r1))
    return {"forward": forward, "train": train, "decode_base": max(0.0, t1 - per_row * r1), "decode_per_row": per_row}


RUN_LOG_STAGES = {  # the run log's stage of each plan stage (stages.timed records one line per stage)
    "toxic model": "toxic", "LM-Steer matrix": "lmsteer", "distillation": "distilled", "control fine-tuning": "detox",
    "UniDetox and Samples fine-tuning": "detox", "evaluation": "eval", "MMLU": "mmlu",
}


def against_the_run_log(table: pd.DataFrame, runs: pd.DataFrame, profile: str) -> pd.DataFrame:
    """Planned hours beside the hours a run of ``profile`` recorded (``stages.run_log``), per stage of
    the run log. An evaluation's recorded time also holds the two toxicity scorers, which the plan
    does not count; a stage computed more than once counts with its last time; stages cached before
    the run are missing from its log."""
    planned = table[table["stage"] != "total"].assign(
        log_stage=lambda t: t["stage"].str.replace(r" \(.*| ?:.*", "", regex=True).map(RUN_LOG_STAGES))
    planned = planned.groupby("log_stage")["gpu_hours"].sum()
    ran = runs[runs["profile"] == profile].drop_duplicates("folder", keep="last")  # a stage computed anew: its last time
    ran = ran.groupby("stage")["seconds"].sum() / 3600
    out = pd.DataFrame({"planned hours": planned, "recorded hours": ran}).fillna(0.0)
    out["recorded / planned"] = out["recorded hours"] / out["planned hours"].where(out["planned hours"] > 0)
    return out.rename_axis("stage").reset_index()


# ------------------------------------------------------------------------------------- refusals
GATED = ("meta-llama/Llama-2-7b-hf", "toxigen/toxigen-data")  # need an accepted licence and a token


def gated_repositories(P: dict) -> list[str]:
    """The gated models and data sets that profile ``P`` reads."""
    named = {P["source_model"], *P["target_models"], P["evaluator_model"]}
    if P["eval_prompts"] == "toxigen_annotated":
        named.add("toxigen/toxigen-data")
    return [repo for repo in GATED if repo in named]


def refusals(table: pd.DataFrame, gpu: str, cache_dir: str | Path, *, free_disk_gib: float | None = None,
             gpu_memory_gib: list[float] | None = None, access_check=None, gated=GATED) -> list[str]:
    """Why the plan cannot run here, one line each (empty: it can): too little disk under
    ``cache_dir`` for the kept checkpoints, no GPU or one with less memory than the largest stage
    needs per GPU, or a gated model or data set that the hub token may not read. The measurements
    default to this machine's (``shutil.disk_usage``, ``torch.cuda``, ``huggingface_hub.auth_check``)."""
    problems = []
    total = table[table["stage"] == "total"].iloc[0]
    if free_disk_gib is None:
        folder = Path(cache_dir)
        while not folder.exists():
            folder = folder.parent
        free_disk_gib = shutil.disk_usage(folder).free / GIB
    if free_disk_gib < total["disk_gib"]:
        problems.append(f"disk: {total['disk_gib']:.0f} GiB of checkpoints planned under {cache_dir}, "
                        f"{free_disk_gib:.0f} GiB free; point cache_dir at a larger disk.")
    if gpu_memory_gib is None:
        gpu_memory_gib = _gpu_memory_gib()
    if not gpu_memory_gib:
        problems.append(f"GPU: none found; the plan assumes {gpu}s (CUDA).")
    elif min(gpu_memory_gib) < total["peak_gib"]:
        problems.append(f"GPU memory: the largest stage needs {total['peak_gib']:.0f} GiB per GPU, the smallest "
                        f"GPU here has {min(gpu_memory_gib):.0f} GiB; use more or larger GPUs (--gpus).")
    check = access_check or _hub_access
    for repo in gated:
        reason = check(repo)
        if reason:
            problems.append(f"access: {repo}: {reason}")
    return problems


def _gpu_memory_gib() -> list[float]:
    import torch

    if not torch.cuda.is_available():
        return []
    return [torch.cuda.get_device_properties(i).total_memory / GIB for i in range(torch.cuda.device_count())]


def _hub_access(repo: str) -> str | None:
    """``None`` when the hub token may read ``repo``; otherwise why not."""
    try:
        from huggingface_hub import auth_check

        auth_check(repo, repo_type="dataset" if repo.startswith("toxigen/") else "model")
    except Exception as error:  # gated, unknown, or the hub unreachable: all stop a paper run
        return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else 'no detail'}"
    return None


def detected_gpu(default: str = "A100-80GB") -> str:
    """The ``GPUS`` entry of this machine's first GPU, by its name; ``default`` when none matches."""
    import torch

    if not torch.cuda.is_available():
        return default
    name = torch.cuda.get_device_name(0).upper()
    for key in ("H200", "H100", "A100", "T4"):
        if key in name:
            return next(g for g in GPUS if g.startswith(key))
    return default


def print_plan(P: dict, table: pd.DataFrame, gpu: str, gpus: int) -> None:
    """The plan's table, its totals beside the code as first read, and what it assumed."""
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.float_format", "{:,.1f}".format):
        print(f"Plan of profile {P['profile']!r} on {gpus} x {gpu} (estimates; see python -m unidetox_core.plan "
              "--help)\n")
        print(table.to_string(index=False))
        print("\nTotals, beside the same plan as the code ran it when its cost was first read (one evaluation at a "
              "time on one GPU, 64-row batches, every checkpoint kept):\n")
        print(comparison(P, gpu, gpus).to_string(index=False))
    print(f"\nassumed: {UTILISATION} of the vendor peak {GPUS[gpu]}; runtime {RUNTIME_GIB} GiB per GPU; {ASSUMED}",
          flush=True)


def preflight(P: dict, gpu: str | None = None) -> list[str]:
    """The plan's refusals before a run of profile ``P`` whose models are all in ``ARCHITECTURES`` (the
    paper and small profiles), after the plan itself on the GPUs present (their kind by name, 8 assumed
    where there are none); empty for any other profile, whose stages this cost model does not describe."""
    named = [P["source_model"], *P["target_models"], P["evaluator_model"]]
    if not all(name in ARCHITECTURES for name in named):
        return []
    if P.get("hub_stand_ins"):  # a smoke run: tiny stand-ins on a CPU, which this cost model does not describe
        total = stage_counts(P)["runs"].sum()
        print(f"plan: {total} runs at the {P['profile']!r} profile's sizes, on stand-ins for the hubs: nothing is "
              f"checked against this machine (measured: make plan PROFILE={P['profile']}; the real plan: make plan "
              "PROFILE=paper)", flush=True)
        return []
    present = _gpu_memory_gib()
    gpu = gpu or detected_gpu()
    table = plan_table(P, gpu, len(present) or 8)
    print_plan(P, table, gpu, len(present) or 8)
    return refusals(table, gpu, P["cache_dir"], gpu_memory_gib=present, gated=gated_repositories(P))


# ------------------------------------------------------------------------------------------ CLI
def main(argv: list[str] | None = None) -> int:
    """``python -m unidetox_core.plan [--profile paper] [--gpu A100-80GB] [--gpus 8]``"""
    from .profiles import load_profile

    parser = argparse.ArgumentParser(prog="python -m unidetox_core.plan", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="paper")
    parser.add_argument("--gpu", default="A100-80GB", choices=sorted(GPUS))
    parser.add_argument("--gpus", type=int, default=8)
    args = parser.parse_args(argv)
    P = load_profile(args.profile)
    if P["hub_stand_ins"]:
        return _measured_plan(P)
    if str(P["source_model"]).startswith("world:"):
        print(f"profile {args.profile!r} trains its own world on a CPU; the plan is for hub models on GPUs "
              "(--profile paper).")
        return 0
    table = plan_table(P, args.gpu, args.gpus)
    print_plan(P, table, args.gpu, args.gpus)
    problems = refusals(table, args.gpu, P["cache_dir"], gated=gated_repositories(P))
    for line in problems:
        print(f"would refuse: {line}")
    return 1 if problems else 0


def _measured_plan(P: dict) -> int:
    """A smoke profile's plan on this CPU from rates measured on its stand-ins, beside what its last
    run recorded in the run log."""
    from . import smoke

    smoke.activate(P)  # before transformers is imported: it reads HF_HOME once
    from . import models, stages

    names = list(dict.fromkeys([P["source_model"], *P["target_models"], P["evaluator_model"]]))
    rates, sizes = {}, {}
    for name in names:
        model, _ = models.load_model(name, device="cpu")
        rates[name], sizes[name] = measure_rates(model), models.count_parameters(model)
    table = plan_table(P, CPU, 1, rates=rates, parameter_counts=sizes)
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.float_format", "{:,.4f}".format):
        print(f"Plan of profile {P['profile']!r} on this CPU, from rates measured on its stand-ins (hours):\n")
        print(table.drop(columns=["wall_hours", "peak_gib"]).to_string(index=False))
        runs = stages.run_log(P["cache_dir"])
        if not runs.empty and (runs["profile"] == P["profile"]).any():
            print("\nBeside the stages its last run recorded (cache/runs.jsonl):\n")
            print(against_the_run_log(table, runs, P["profile"]).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
