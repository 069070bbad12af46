"""Pre-training the world's four language models, and their held-out loss."""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np

from ..cache import config_key, write_json_atomic
from .corpus import document_markers, load_blocks, load_world_tokenizer
from .settings import (
    MODEL_NAMES,
    WorldError,
    model_config,
    model_spec,
    replicate_overrides,
    split_replicate,
    step_path,
    torch_threads,
    world_dir,
    world_settings,
)


# ---------------------------------------------------------------------------------------- models
def heldout_loss(model, tokenizer, blocks: list[str], max_length: int, batch_size: int = 16) -> dict:
    """Mean token NLL of ``blocks`` under ``model`` (float32, no dropout), with perplexity and bits
    per UTF-8 byte. Bits per byte compare models with *different tokenizers*; perplexity per token
    does not (a Unigram token is not a BPE token). The markers' characters are not counted as bytes."""
    import torch

    from ..finetune import summed_token_nll, tokenize_texts
    from ..forward import pad_id_of, right_pad

    was_training = model.training
    model.eval()
    sequences = tokenize_texts(tokenizer, blocks, max_length, prepend_bos=False)
    pad_id = pad_id_of(tokenizer)
    nll_sum, n_tokens = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(sequences), batch_size):
            ids, mask = right_pad(sequences[start:start + batch_size], pad_id)
            nll, n = summed_token_nll(model, ids, mask)
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
    from .. import models
    from ..finetune import finetune

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
        max_length=spec["context"], seed=settings["seed"] + spec.get("order_seed", 0),
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
    from .. import models

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
    needs -- on first use, then returns the cached folder; ``"world:gpt2-bpe~r1"`` is its replicate 1
    (``settings.replicate_overrides``). A hub id such as ``"gpt2-xl"`` or a
    local folder is returned unchanged, so callers need not care which profile they run.
    """
    if not isinstance(name, str) or not name:
        raise WorldError(f"name={name!r} must be a model name such as 'world:gpt2-bpe' or a hub id.")
    if not name.startswith("world:"):
        if name in MODEL_NAMES:
            raise WorldError(f"name={name!r}: write 'world:{name}' for the world model, or give a hub id / folder.")
        return name
    settings = world_settings(profile_values, **overrides)
    base, replicate = split_replicate(name.split(":", 1)[1])
    if replicate:
        settings = world_settings(profile_values, **{**overrides, "models": replicate_overrides(settings, base, replicate)})
    return str(train_world_model(settings, base, progress=progress))
