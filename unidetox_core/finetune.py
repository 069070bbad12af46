"""Causal-LM fine-tuning: one function for the toxic model, detox fine-tuning and pre-training.

The paper fine-tunes three times with the same recipe, AdamW (beta1 0.9, beta2 0.999):

- the **toxic model** (Section 3.1): GPT-2 XL on DGHS, 3 epochs, batch 4, lr 1e-5, max length 512;
- **detox fine-tuning** on the distilled text ``x*`` (Eq. 4, App. B.3): batch 8, lr 5e-5 or 1e-5,
  checkpoints every 1,000 steps up to 10,000, max length 256;
- (here also) the mini world's small base models.

Eq. 4 is one step of gradient *ascent* on ``log p_theta(x*)``; ``finetune`` takes many AdamW steps on
the mean negative log-likelihood of the real tokens, which is the same direction.

Differences from the official code (``EminLU/UniDetox``, Hugging Face ``Trainer``), on purpose:

- **Loss only on real tokens.** The official code pads every text to the longest one and sets
  ``labels = input_ids``, so for GPT-2 (pad == EOS) it also trains on the padding EOS tokens.
  Here padding is masked out of the loss through the *attention mask* -- never by token id, because
  GPT-2's pad id is its EOS id and a real EOS inside a text must still count.
- **A start token is prepended** (BOS, or EOS for GPT-2) when the tokenizer does not add one itself,
  so the first token of each text is also trained: ``log p(x)`` in Eq. 4 is the probability of the
  whole text, the same quantity the distillation sampled from BOS/EOS (Eq. 1-2). The official
  GPT-2 and Falcon runs did not train the first token. ``prepend_bos=False`` switches this off.
- **The official runs' recipe is ``RECIPE``**, which every fine-tune of the pipeline passes
  (``experiments.toxic_model``, ``experiments.detox_checkpoints``): ``Trainer``'s defaults -- a
  linear decay of the learning rate to zero over the run and gradient clipping at norm 1.0 -- and
  an EOS token at the end of every training text, so a fine-tuned model learns where a text stops
  (the official runs padded with EOS and trained on it; here the one real EOS is trained and the
  padding is not). A checkpoint at step 3,000 of a 10,000-step run is then what ``Trainer`` saved
  at step 3,000, not a 3,000-step run. The function's own defaults (constant rate, no clipping, no
  EOS) are the plain optimiser of Eq. 4, kept for the world's pre-training and the toy chapters.

``batch_size`` is the number of texts per optimizer step (the paper's number); ``grad_accum`` splits
it into that many micro-batches when it does not fit in memory, with the loss normalised by the
real tokens of the *whole* batch, so the update is the same with or without accumulation.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F

from .cache import atomic_path, config_key
from .forward import at_least_float32, autocast, model_device, pad_id_of, right_pad, training_bf16

CHECKPOINT_PATTERN = re.compile(r"^step-(\d+)$")
# The recipe of the official runs (Hugging Face ``Trainer`` defaults, and texts that end with EOS).
RECIPE = {"lr_schedule": "linear", "max_grad_norm": 1.0, "append_eos": True}
TRAINING_STATE = "training_state.pt"  # optimizer + RNG + history, beside the save_pretrained files


# ------------------------------------------------------------------------------------------ inputs
def load_texts_csv(path, column: str = "Text") -> list[str]:
    """The ``Text`` column of a CSV (the format of the authors' released detoxifying text).

    Empty cells (a sequence that ended at once) come back as empty strings, not NaN.
    """
    import pandas as pd

    frame = pd.read_csv(path, keep_default_na=False)
    if column not in frame.columns:
        raise ValueError(f"{str(path)!r} has no column {column!r} (columns: {list(frame.columns)}); "
                         f"pass column= to read another one.")
    return [str(t) for t in frame[column].tolist()]


def tokenize_texts(tokenizer, texts: Sequence[str], max_length: int, prepend_bos: bool = True,
                   append_eos: bool = False) -> list[list[int]]:
    """Token ids per text, truncated to ``max_length`` (start token included), without padding.

    With ``prepend_bos`` every sequence starts with the start token (BOS, or EOS where there is no
    BOS, as in GPT-2), added here only when the tokenizer did not add it already (LLaMA's does).
    With ``append_eos`` every text ends with the EOS token, unless truncation cut the text (then
    it did not end there).
    """
    from .models import start_token_id

    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, not one string; wrap it: [text].")
    # Cut here rather than with truncation=True: a fast tokenizer keeps (and saves) the truncation
    # setting of its last call, which would make two copies of one tokenizer compare unequal.
    encoded = tokenizer(list(texts), add_special_tokens=True, truncation=False)["input_ids"]
    start = start_token_id(tokenizer) if prepend_bos else None
    eos = tokenizer.eos_token_id if append_eos else None
    if append_eos and eos is None:
        raise ValueError("append_eos=True, but the tokenizer has no eos_token; set one or pass append_eos=False.")
    sequences = []
    for ids in encoded:
        if start is not None and (not ids or ids[0] != start):
            ids = [start] + ids
        if eos is not None and (not ids or ids[-1] != eos):
            ids = ids + [eos]
        sequences.append(ids[:max_length])  # truncation keeps the start; long documents are cut
    return sequences


# -------------------------------------------------------------------------------------------- loss
def summed_token_nll(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Sum of ``-log p(x_t | x_<t)`` over the real target tokens, and how many there are.

    A target counts when it is a real token (``attention_mask`` 1); its context always is, because
    padding sits on the right. Summing (not averaging) lets gradient accumulation divide by the
    token count of the whole batch.
    """
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1]
    labels = input_ids[:, 1:].masked_fill(attention_mask[:, 1:] == 0, -100)
    nll = F.cross_entropy(at_least_float32(logits).reshape(-1, logits.shape[-1]), labels.reshape(-1),
                          ignore_index=-100, reduction="sum")
    return nll, int((labels != -100).sum())


def use_gradient_checkpointing(setting, model, device: torch.device) -> bool:
    """``True``/``False`` as given; ``"auto"``: on CUDA for models over a billion parameters."""
    if setting in (True, False):
        return setting
    if setting != "auto":
        raise ValueError(f"gradient_checkpointing={setting!r}; use True, False or 'auto'.")
    if device.type != "cuda" or not getattr(model, "supports_gradient_checkpointing", False):
        return False
    return sum(p.numel() for p in model.parameters()) > 1_000_000_000


# ---------------------------------------------------------------------------------------- data order
def epoch_order(n_texts: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffled order of epoch ``epoch``: a pure function of (seed, epoch), so a resumed run
    needs nothing but the step number to see the same batches as an uninterrupted one."""
    generator = torch.Generator().manual_seed(derived_seed(seed, "epoch", epoch))
    return torch.randperm(n_texts, generator=generator)


def batch_indices(step: int, n_texts: int, batch_size: int, seed: int) -> torch.Tensor:
    """Indices of the texts in optimizer step ``step`` (0-based).

    Each epoch is a fresh shuffle cut into batches of ``batch_size``; the last batch of an epoch is
    smaller when ``batch_size`` does not divide the number of texts (as with ``Trainer``).
    """
    per_epoch = math.ceil(n_texts / batch_size)
    epoch, index = divmod(step, per_epoch)
    return epoch_order(n_texts, seed, epoch)[index * batch_size:(index + 1) * batch_size]


def derived_seed(seed: int, *parts) -> int:
    """A 63-bit seed derived from ``seed`` and labels, independent for every combination."""
    blob = ":".join(str(p) for p in (seed, *parts)).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "little") >> 1


# ------------------------------------------------------------------------------------- checkpoints
def weights_fingerprint(model) -> str:
    """A cheap identity of a model's current weights (name, size and per-tensor sums)."""
    with torch.no_grad():
        sums = [round(float(p.detach().float().sum()), 4) for p in model.parameters()]
    return config_key({"name": str(getattr(model, "name_or_path", "")), "n": len(sums), "sums": sums})


def list_checkpoints(output_dir) -> dict[int, Path]:
    """Complete ``step-N`` checkpoints under ``output_dir`` by step (atomic writes: a folder with
    that name is always complete)."""
    folder = Path(output_dir)
    found = {}
    if folder.is_dir():
        for child in folder.iterdir():
            match = CHECKPOINT_PATTERN.match(child.name)
            if match and child.is_dir():
                found[int(match.group(1))] = child
    return dict(sorted(found.items()))


def load_weights_into(model, folder) -> None:
    """Copy the weights saved in ``folder`` into ``model`` in place (the caller's object stays the
    one being trained). Loads on CPU first, so it needs one extra copy of the weights in RAM."""
    from transformers import AutoModelForCausalLM

    saved = AutoModelForCausalLM.from_pretrained(str(folder), dtype=next(model.parameters()).dtype)
    model.load_state_dict(saved.state_dict())
    del saved


def save_checkpoint(model, tokenizer, optimizer, path: Path, state: dict) -> None:
    """``save_pretrained`` model and tokenizer plus the optimizer/RNG state, atomically."""
    with atomic_path(path) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        torch.save({**state, "optimizer": optimizer.state_dict()}, tmp / TRAINING_STATE)
        (tmp / "training_args.json").write_text(json.dumps(state["settings"], indent=2, sort_keys=True) + "\n")


# -------------------------------------------------------------------------------------- fine-tuning
def finetune(
    model,
    tokenizer,
    texts: Sequence[str],
    *,
    lr: float,
    batch_size: int,
    steps: int | None = None,
    epochs: int | None = None,
    max_length: int = 256,
    seed: int = 0,
    save_steps: Iterable[int] = (),
    output_dir=None,
    grad_accum: int = 1,
    bf16="auto",
    weight_decay: float = 0.0,
    progress: bool = True,
    lr_schedule: str = "constant",
    max_grad_norm: float | None = None,
    prepend_bos: bool = True,
    append_eos: bool = False,
    keep_optimizer: str = "last",
    on_step: Callable[[int, float], None] | None = None,
    gradient_checkpointing="auto",
    stop_after: int | None = None,
) -> dict:
    """Fine-tune ``model`` in place on ``texts`` with AdamW (beta1 0.9, beta2 0.999); return the history.

    Give exactly one of ``steps`` (optimizer steps) or ``epochs``. At every step in ``save_steps``
    a checkpoint ``output_dir/step-{n}`` is written atomically: ``save_pretrained`` model and
    tokenizer (load it with ``models.load_model``) plus the optimizer and RNG state. The step grid
    1,000...10,000 of App. B.3 is one call: ``steps=10_000, save_steps=range(1000, 10_001, 1000)``.

    Calling again with the same ``output_dir`` resumes from the latest complete checkpoint made with
    the same settings and the same starting weights, and ends with the same weights as an
    uninterrupted run (exactly, on CPU): the data order is a pure function of ``seed`` and the step,
    and the dropout RNG is restored. A run that is already complete returns at once. With the
    constant schedule a longer run may continue a shorter one.

    ``batch_size`` counts texts per optimizer step; ``grad_accum`` only splits it (same update).
    ``bf16="auto"`` autocasts to bf16 on CUDA and on CPUs where it measurably helps (``forward.training_bf16``).
    ``lr_schedule``, ``max_grad_norm``, ``prepend_bos`` and ``append_eos`` are explained in the module
    docstring (``RECIPE`` holds the official runs' values).
    ``keep_optimizer="last"`` keeps the (large: 2x the weights) optimizer state only in the newest
    checkpoint; ``"all"`` keeps it in each. ``on_step(step, loss)`` is called after every step.
    ``stop_after`` ends the run after that step while the learning-rate schedule still spans ``steps``:
    the weights are those the whole run has at that step, and a later call continues from there.
    ``gradient_checkpointing="auto"`` recomputes activations in the backward pass for models of
    over a billion parameters on a GPU (a 7 B model's activations at batch 8 x 256 tokens would not
    fit beside its weights and AdamW state otherwise); it is switched off again afterwards.

    Returns a dict with ``step``, ``loss`` (mean per-token NLL of each step's batch), ``lr``,
    ``tokens`` (real tokens seen), ``tokens_per_s``, ``wall_time_s``, ``checkpoints``,
    ``resumed_from``, ``bf16`` and ``settings``.
    """
    check_float32_masters(model)
    texts = list(texts)
    save_steps = sorted(set(int(s) for s in save_steps))
    total_steps = _check_finetune_args(texts, lr, batch_size, steps, epochs, max_length, save_steps,
                                       output_dir, grad_accum, weight_decay, lr_schedule, max_grad_norm,
                                       keep_optimizer)
    device = model_device(model)
    bf16_on = training_bf16(bf16, model)
    sequences = tokenize_texts(tokenizer, texts, max_length, prepend_bos, append_eos)
    pad_id = pad_id_of(tokenizer)
    settings = {
        "lr": lr, "batch_size": batch_size, "total_steps": total_steps if lr_schedule == "linear" else None,
        "max_length": max_length, "seed": seed, "weight_decay": weight_decay, "betas": [0.9, 0.999],
        "lr_schedule": lr_schedule, "max_grad_norm": max_grad_norm, "prepend_bos": prepend_bos,
        **({"append_eos": True} if append_eos else {}),  # only when on, so earlier checkpoints still resume
        "texts": config_key({"texts": texts}, 16), "start_weights": weights_fingerprint(model),
    }
    history = {"step": [], "loss": [], "lr": [], "tokens": 0, "wall_time_s": 0.0, "checkpoints": [],
               "resumed_from": None, "bf16": bf16_on, "settings": {**settings, "steps": total_steps}}

    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8,
                                  weight_decay=weight_decay)
    was_training = model.training
    checkpointing = use_gradient_checkpointing(gradient_checkpointing, model, device)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    devices = [device.index or 0] if device.type == "cuda" else []
    # fork_rng: dropout draws from the global RNG; seed it here without disturbing the caller's.
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        start = 0
        if output_dir is not None:
            start = _resume(model, optimizer, output_dir, settings, total_steps, history, device)
        end = total_steps if stop_after is None else min(int(stop_after), total_steps)
        bar = _progress_bar(progress and start < end, end, min(start, end), "fine-tune")
        started = time.perf_counter()
        try:
            model.train()
            steps_run = training_steps(model, optimizer, sequences, batch_size=batch_size, seed=seed, pad_id=pad_id,
                                       start=start, total_steps=total_steps, end=end, grad_accum=grad_accum, bf16=bf16_on,
                                       lr_at=lambda step: lr * _lr_factor(lr_schedule, step, total_steps),
                                       max_grad_norm=max_grad_norm)
            for step, loss, n_tokens in steps_run:
                history["step"].append(step)
                history["loss"].append(loss)
                history["lr"].append(optimizer.param_groups[0]["lr"])
                history["tokens"] += n_tokens
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}")
                if on_step is not None:
                    on_step(step, loss)
                if step in save_steps:
                    history["wall_time_s"] += time.perf_counter() - started
                    started = time.perf_counter()
                    _save(model, tokenizer, optimizer, Path(output_dir), step, settings, history, keep_optimizer)
            history["wall_time_s"] += time.perf_counter() - started
        finally:
            bar.close()
            model.train(was_training)
            if checkpointing:  # generation after fine-tuning wants the KV cache back
                model.gradient_checkpointing_disable()
    return _finish(history)


def check_float32_masters(model) -> None:
    """Refuse to train a model whose trainable weights are not float32: AdamW on bf16 weights rounds
    every update to bf16's 8 bits of mantissa, so at the paper's learning rates (1e-5) most weights
    never move. Load the model in float32 (``models.load_model(..., dtype="float32")``); bf16
    *autocast* (``bf16=``) still runs the matrix products in bf16, with float32 master weights and
    optimizer state."""
    wrong = sorted({str(p.dtype) for p in model.parameters() if p.requires_grad and p.dtype != torch.float32})
    if wrong:
        raise ValueError(f"the model's trainable weights are {', '.join(wrong)}, not float32: AdamW would lose small "
                         "updates to rounding. Load it with dtype='float32' (bf16 autocast stays on where it helps).")


def training_steps(model, optimizer, sequences: list[list[int]], *, batch_size: int, seed: int, pad_id: int,
                   total_steps: int, start: int = 0, grad_accum: int = 1, bf16: bool = False,
                   lr_at: Callable[[int], float] | None = None, max_grad_norm: float | None = None,
                   end: int | None = None):
    """The training loop of fine-tuning and of LM-Steer: for each optimizer step from ``start`` to
    ``total_steps`` (or ``end``, when the run stops early), the batch of that step (``batch_indices``), the mean token NLL backpropagated,
    an optional clip of the model's gradient norm, one optimizer step (at ``lr_at(step)`` when
    given, 0-based). Yields ``(step, loss, tokens)``
    after each step (1-based), so the caller saves, logs or stops as it likes; the optimizer decides
    what is trained (all weights for fine-tuning, the steering matrix for LM-Steer).
    """
    device = model_device(model)
    for step in range(start, total_steps if end is None else end):
        if lr_at is not None:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step)
        batch = [sequences[i] for i in batch_indices(step, len(sequences), batch_size, seed).tolist()]
        loss, n_tokens = accumulate_gradients(model, batch, pad_id, grad_accum, device, bf16)
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        yield step + 1, loss, n_tokens


def accumulate_gradients(model, batch, pad_id, grad_accum, device, bf16) -> tuple[float, int]:
    """Backpropagate the batch's mean token NLL in ``grad_accum`` micro-batches; return (loss, tokens).

    Each micro-batch contributes ``sum NLL / tokens in the whole batch``, so the summed gradient is
    exactly the gradient of the batch mean, however the batch is split.
    """
    total_tokens = sum(max(len(s) - 1, 0) for s in batch)
    if total_tokens == 0:  # only empty texts in this batch: nothing to learn, skip the update
        return 0.0, 0
    loss_sum = 0.0
    chunks = [batch[i::grad_accum] for i in range(grad_accum)]
    for chunk in chunks:
        if not chunk:
            continue
        ids, mask = right_pad(chunk, pad_id, device)
        with autocast(device, bf16):
            nll, _ = summed_token_nll(model, ids, mask)
        (nll / total_tokens).backward()
        loss_sum += float(nll.detach())
    return loss_sum / total_tokens, total_tokens


def _lr_factor(schedule: str, step: int, total_steps: int) -> float:
    if schedule == "constant":
        return 1.0
    return 1.0 - step / total_steps  # "linear": Trainer's default, from lr at step 0 towards 0


def _resume(model, optimizer, output_dir, settings, total_steps, history, device) -> int:
    """Load the newest usable checkpoint; return the step to continue from (0 = from scratch)."""
    usable = {}
    for step, path in list_checkpoints(output_dir).items():
        state_file = path / TRAINING_STATE
        if step > total_steps or not state_file.exists():
            continue
        state = torch.load(state_file, map_location="cpu", weights_only=True)
        if state["settings"] != settings:
            raise ValueError(
                f"{str(path)!r} was made with other settings, texts or starting weights "
                f"({_settings_diff(state['settings'], settings)}). Use another output_dir, or delete "
                f"{str(output_dir)!r} to start over."
            )
        usable[step] = (path, state)
    if not usable:
        return 0
    step = max(usable)
    path, state = usable[step]
    if step < total_steps and "optimizer" not in state:
        return 0  # a weights-only checkpoint cannot be continued exactly; start over
    load_weights_into(model, path)
    if "optimizer" in state:
        optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["cpu_rng"])
    if device.type == "cuda" and state.get("cuda_rng") is not None:
        torch.cuda.set_rng_state(state["cuda_rng"], device)
    for key in ("step", "loss", "lr", "checkpoints"):
        history[key] = list(state["history"][key])
    history["tokens"] = state["history"]["tokens"]
    history["wall_time_s"] = state["history"]["wall_time_s"]
    history["resumed_from"] = step
    return step


def _save(model, tokenizer, optimizer, output_dir: Path, step, settings, history, keep_optimizer) -> None:
    path = output_dir / f"step-{step}"
    history["checkpoints"].append(str(path))
    device = model_device(model)
    state = {
        "step": step, "settings": settings,
        "cpu_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "history": {k: history[k] for k in ("step", "loss", "lr", "checkpoints", "tokens", "wall_time_s")},
    }
    save_checkpoint(model, tokenizer, optimizer, path, state)
    if keep_optimizer == "last":  # resuming needs only the newest optimizer state
        for older_step, older in list_checkpoints(output_dir).items():
            if older_step < step and (older / TRAINING_STATE).exists():
                old_state = torch.load(older / TRAINING_STATE, map_location="cpu", weights_only=True)
                if "optimizer" in old_state:
                    old_state.pop("optimizer")
                    tmp = older / (TRAINING_STATE + ".tmp")
                    torch.save(old_state, tmp)
                    tmp.replace(older / TRAINING_STATE)


def _finish(history: dict) -> dict:
    history["tokens_per_s"] = history["tokens"] / history["wall_time_s"] if history["wall_time_s"] > 0 else None
    return history


def _progress_bar(enabled: bool, total: int, initial: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc=desc, unit="step")


def _settings_diff(old: dict, new: dict) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys)


def _check_finetune_args(texts, lr, batch_size, steps, epochs, max_length, save_steps, output_dir,
                         grad_accum, weight_decay, lr_schedule, max_grad_norm, keep_optimizer) -> int:
    """Validate everything before any compute; return the total number of optimizer steps."""
    if not texts:
        raise ValueError("texts is empty; pass the list of training texts (e.g. finetune.load_texts_csv(path)).")
    if not all(isinstance(t, str) for t in texts):
        raise TypeError("texts must be strings; read a CSV with finetune.load_texts_csv(path).")
    if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not lr > 0 or not math.isfinite(lr):
        raise ValueError(f"lr={lr!r} must be a positive number (the paper uses 1e-5 and 5e-5).")
    for name, value in dict(batch_size=batch_size, max_length=max_length, grad_accum=grad_accum).items():
        _positive_int(name, value)
    if max_length < 2:
        raise ValueError(f"max_length={max_length} leaves nothing to predict; use at least 2 (paper: 256 or 512).")
    if (steps is None) == (epochs is None):
        raise ValueError("give exactly one of steps= (optimizer steps) or epochs=, e.g. steps=1000 or epochs=3.")
    if steps is not None:
        _positive_int("steps", steps)
        total = steps
    else:
        _positive_int("epochs", epochs)
        total = epochs * math.ceil(len(texts) / batch_size)
    if grad_accum > batch_size:
        raise ValueError(f"grad_accum={grad_accum} splits a batch of {batch_size} into empty micro-batches; "
                         f"use grad_accum <= batch_size.")
    if weight_decay < 0:
        raise ValueError(f"weight_decay={weight_decay} must be >= 0 (the paper's AdamW uses 0).")
    if lr_schedule not in ("constant", "linear"):
        raise ValueError(f"lr_schedule={lr_schedule!r} must be 'constant' or 'linear' (Trainer's default).")
    if max_grad_norm is not None and not max_grad_norm > 0:
        raise ValueError(f"max_grad_norm={max_grad_norm!r} must be positive or None (no clipping).")
    if keep_optimizer not in ("last", "all"):
        raise ValueError(f"keep_optimizer={keep_optimizer!r} must be 'last' or 'all'.")
    bad = [s for s in save_steps if not 1 <= s <= total]
    if bad:
        raise ValueError(f"save_steps {bad} lie outside 1..{total} (the run's steps); drop them or run longer.")
    if save_steps and output_dir is None:
        raise ValueError("save_steps needs output_dir= (where the step-N checkpoints go).")
    return total


def _positive_int(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name}={value!r} must be a positive integer.")
