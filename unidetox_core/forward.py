"""Forward passes, one place for all: where a model's inputs go, in what precision it runs, how a
batch is padded and positioned, and one cached step.

Generation (``generate``), distillation (``distill``), scoring (``metrics``, DExperts in
``baselines``) and training (``finetune``, LM-Steer) all run the same kind of forward pass; they
call these helpers instead of keeping their own. The speed-ups that change *how* a pass is computed
on a CPU (in-place KV caches, an attention over them) live apart, in ``fast``.
"""

from __future__ import annotations

import contextlib
from typing import Sequence

import torch


# ------------------------------------------------------------------------------------ device, dtype
def model_device(model) -> torch.device:
    """Where the model's inputs go: the device of its input embeddings (under ``device_map='auto'``,
    the first shard)."""
    try:
        return model.get_input_embeddings().weight.device
    except AttributeError:
        return next(model.parameters()).device


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on ``device`` when ``enabled``, else nothing. Weights (and an optimizer's
    state) keep their own dtype: autocast only changes the precision of the matrix products."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def inference_bf16(model) -> bool:
    """Whether evaluation passes of ``model`` run under bf16 autocast by default: for a float32 model
    on a CUDA GPU with bf16, yes; elsewhere no.

    On a CPU float32 stays the default: with the flat distributions of small models a bf16 rounding
    of the logits moves many inverse-CDF draws, so continuations would differ from float32 ones. A
    caller who wants the speed wraps the call in ``torch.autocast("cpu", dtype=torch.bfloat16)``
    (the mini profile's ``eval_bf16`` does), which every pass here honours. A model loaded in
    bf16/fp16 runs as it is.
    """
    return (model_device(model).type == "cuda" and getattr(model, "dtype", None) == torch.float32
            and torch.cuda.is_bf16_supported())


def inference_autocast(model):
    """``autocast`` for an evaluation pass of ``model`` (see ``inference_bf16``)."""
    return autocast(model_device(model), inference_bf16(model))


def training_bf16(bf16, model) -> bool:
    """Resolve a training run's ``bf16`` setting: ``True``/``False`` as given; ``"auto"``: on for CUDA
    with bf16 support, and on CPUs with native bf16 for models with a hidden size of at least 64.

    Measured on this project's 2-core AVX512-BF16 EPYC (one GPT-2 train step, batch 8): bf16
    autocast was 2.6-4x faster at hidden size 128-256 (vocabulary 8,000), 1.4x at 64, and 3x
    *slower* at 32 (the tiny test models), where the casts cost more than the matmuls save.
    """
    if isinstance(bf16, bool):
        return bf16
    if bf16 != "auto":
        raise ValueError(f"bf16={bf16!r} must be True, False or 'auto'.")
    device = model_device(model)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    hidden = getattr(model.config, "hidden_size", None) or getattr(model.config, "n_embd", 0)
    return cpu_bf16_native() and hidden >= 64


def cpu_bf16_native() -> bool:
    """Whether this CPU computes bf16 matrix products natively (AVX512-BF16 or AMX). Elsewhere torch
    emulates them: measured on a 2-core AVX2 EPYC, a forward pass of a mini-world GPT-2 under bf16
    autocast took 30 times as long as in float32, so bf16 is only worth using where this is true."""
    return bool(getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)())


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 logits to float32 before a softmax (float64 stays float64, for exact checks)."""
    return x if x.dtype == torch.float64 else x.float()


# -------------------------------------------------------------------------------------- positions
def max_positions(model) -> int | None:
    """The model's position limit (``n_positions`` for GPT-2, ``max_position_embeddings`` otherwise)."""
    config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_positions(model, max_new_tokens: int, role: str) -> None:
    """Sampling from a start token: the start token plus ``max_new_tokens`` must fit the positions."""
    limit = max_positions(model)
    if limit is not None and max_new_tokens + 1 > limit:
        raise ValueError(f"max_new_tokens={max_new_tokens} does not fit the {role} model's {limit} positions "
                         f"(the start token takes one); use max_new_tokens <= {limit - 1}.")


def prompt_token_budget(model, max_new_tokens: int) -> int | None:
    """How many prompt tokens fit beside ``max_new_tokens`` generated ones (``None``: no limit)."""
    limit = max_positions(model)
    if limit is None:
        return None
    if max_new_tokens >= limit:
        raise ValueError(
            f"max_new_tokens={max_new_tokens} leaves no room for a prompt in the model's {limit} positions; "
            "use fewer new tokens."
        )
    return limit - max_new_tokens


def position_ids_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Positions 0, 1, ... counted over real tokens only, so left padding does not shift them."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


# ---------------------------------------------------------------------------------------- padding
def left_pad(sequences: Sequence[Sequence[int]], pad_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ``(ids, attention_mask)``: the last column is every row's last token (prompts)."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            ids[row, width - len(seq):] = torch.as_tensor(seq, dtype=torch.long)
            mask[row, width - len(seq):] = 1
    return ids.to(device), mask.to(device)


def right_pad(sequences: Sequence[Sequence[int]], pad_id: int, device=None,
              length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``(ids, attention_mask)``: every row starts in column 0 (training, scoring).

    Right padding keeps positions where they are: a causal model's real tokens never attend to the
    padding after them, so a loss over the real tokens does not depend on the padding.
    """
    width = max(1, max(len(s) for s in sequences)) if length is None else length
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            ids[row, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
            mask[row, : len(seq)] = 1
    return ids.to(device), mask.to(device)


def pad_id_of(tokenizer) -> int:
    """The tokenizer's pad id, or its EOS where it has none (GPT-2)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


# ------------------------------------------------------------------------------------- one pass
def _forward_parameters(model) -> set[str]:
    import inspect

    cached = getattr(model, "_unidetox_forward_parameters", None)
    if cached is None:
        cached = set(inspect.signature(model.forward).parameters)
        try:
            model._unidetox_forward_parameters = cached
        except Exception:  # a model that refuses new attributes just pays the inspection again
            pass
    return cached


def forward_cached(model, ids, mask=None, positions=None, *, cache=None, last_only: bool = False):
    """One forward pass that keeps the KV cache (``use_cache``) and returns the model's output.

    ``last_only`` asks for the last position's logits only. ``transformers`` 5 calls the cache
    argument ``cache``; 4.x called it ``past_key_values``: whichever the model takes is used.
    """
    params = _forward_parameters(model)
    kwargs = dict(input_ids=ids, use_cache=True)
    if mask is not None:
        kwargs["attention_mask"] = mask
    if positions is not None and "position_ids" in params:
        kwargs["position_ids"] = positions
    if cache is not None:
        kwargs["cache" if "cache" in params else "past_key_values"] = cache
    if last_only and "logits_to_keep" in params:
        kwargs["logits_to_keep"] = 1
    return model(**kwargs)


def out_cache(out):
    """The KV cache of a model output (``cache`` in transformers 5, ``past_key_values`` before)."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)


def next_token_logits(model, input_ids: torch.Tensor, cache):
    """One decoding step without padding: the next-token logits ``[batch, vocab]`` and the cache."""
    out = forward_cached(model, input_ids, cache=cache, last_only=True)
    return out.logits[:, -1], out_cache(out)
