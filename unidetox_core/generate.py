"""Continuations for evaluation: nucleus sampling from any causal LM, batched with the KV cache.

The seed's Section 3.3: for every ToxiGen prompt, 25 continuations of at most 20 new tokens, nucleus
sampling with p = 0.9 (Holtzman et al., 2020), temperature 1. The continuation is what the model
*generated*: its tokens decoded, with the prompt removed by token count -- never by ``str.replace``
as the official code did (which also deletes any repetition of the prompt inside the generation).

Why a sampling loop of our own rather than ``model.generate``:

- each prompt is run through the model **once** and its KV cache copied to its ``n`` samples
  (prompts are 30-100 tokens, continuations 20, so the prompt would otherwise dominate the cost);
- every sample draws its random numbers from its own ``torch.Generator`` seeded by
  ``(seed, prompt_id, sample)``, so a continuation depends on the seed and the model only -- not on
  the batch size, the batch it landed in, or the other prompts evaluated with it;
- a logits-processor hook sees log-probabilities *before* temperature and nucleus filtering, the
  order DExperts needs: ``(1+beta) log p_base - beta log p_toxic``, then the nucleus;
- the KV cache is written in place (``DynamicCache`` would copy itself whole at every step) and,
  on a CPU, read by an attention of our own for one-token steps (``fast_decoding``);
- the nucleus is found by sorting only the tokens that can be in it, values only, with numpy: a
  small model's nucleus holds thousands of tokens, and ``torch.sort`` of 256 x 8,000 took longer
  than the forward pass (the tokens drawn are those of a full stable sort; a test checks it).

Measured on the mini models (issue 7, ``benchmarks/bench_all.py``): 25 x 20-token continuations of
24 prompts ran ~4x faster than ``generate`` per prompt on one CPU thread.

The helpers at the bottom (device, autocast, cache keyword, position ids) are shared with
``metrics.py``, which runs the same kind of batched, cached forward passes.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import types
import warnings
import weakref
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from .models import start_token_id

LogitsProcessor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
LogitsProcessorFactory = Callable[[torch.Tensor, torch.Tensor], LogitsProcessor]

CONTINUATION_COLUMNS = ["prompt_id", "prompt", "sample", "continuation", "seed", "n_new_tokens"]


# --------------------------------------------------------------------------------------- validation
def check_generation_args(prompts, n, max_new_tokens, top_p, temperature, batch_size, seed) -> list[str]:
    """Return ``prompts`` as a list of strings, or raise a ``ValueError`` naming the bad parameter."""
    if isinstance(prompts, str):
        raise ValueError("prompts must be a list of strings, not one string; wrap it: prompts=[text].")
    prompts = list(prompts) if prompts is not None else []
    if not prompts:
        raise ValueError("prompts is empty; pass at least one prompt string (e.g. the ToxiGen test prompts).")
    bad = [i for i, p in enumerate(prompts) if not isinstance(p, str)]
    if bad:
        raise ValueError(
            f"prompts[{bad[0]}] is {type(prompts[bad[0]]).__name__} {prompts[bad[0]]!r}, not a string; "
            "drop or fill missing prompts first (e.g. frame.prompt.fillna(''))."
        )
    for name, value in dict(n=n, max_new_tokens=max_new_tokens, batch_size=batch_size).items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
            raise ValueError(f"{name}={value!r} must be a positive integer (the paper uses n=25, max_new_tokens=20).")
    if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
        raise ValueError(f"top_p={top_p!r} must be in (0, 1]; the paper samples with top_p=0.9, 1.0 turns the nucleus off.")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or temperature < 0:
        raise ValueError(f"temperature={temperature!r} must be >= 0 (1.0 in the paper; 0 means greedy decoding).")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed={seed!r} must be a non-negative integer (the paper runs seeds 0-4).")
    return prompts


# ------------------------------------------------------------------------------------------ sampling
def sample_seed(seed: int, prompt_id: int, sample: int) -> int:
    """The generator seed of one continuation: a hash of ``(seed, prompt_id, sample)``.

    A hash (numpy's SeedSequence), not ``seed + sample``, so that neighbouring seeds never share
    streams: seed 1 / sample 0 must not replay seed 0 / sample 1.
    """
    return int(np.random.SeedSequence([int(seed), int(prompt_id), int(sample)]).generate_state(1, np.uint64)[0])


def sample_uniforms(seed: int, prompt_ids: Sequence[int], samples: Sequence[int], steps: int) -> torch.Tensor:
    """A ``(rows, steps)`` float64 tensor of U[0, 1) numbers, row ``i`` from its own seeded generator."""
    generator = torch.Generator(device="cpu")
    rows = []
    for prompt_id, sample in zip(prompt_ids, samples):
        generator.manual_seed(sample_seed(seed, prompt_id, sample))
        rows.append(torch.rand(steps, generator=generator, dtype=torch.float64))
    return torch.stack(rows)


def sample_next_tokens(
    logprobs: torch.Tensor, uniforms: torch.Tensor, temperature: float = 1.0, top_p: float = 1.0
) -> torch.Tensor:
    """Draw one token per row: temperature, then nucleus (top-p) filtering, then inverse-CDF sampling.

    The nucleus is the smallest set of most likely tokens whose probability reaches ``top_p``
    (Holtzman et al., 2020); the token that crosses ``top_p`` is kept, as in ``transformers``.
    Sampling by inverse CDF with a given uniform per row makes the draw a pure function of the
    probabilities and that number: the CDF runs over the tokens in order of decreasing probability,
    tokens of equal probability by increasing id (a stable sort). ``temperature == 0`` is greedy
    decoding. ``_inverse_cdf`` over a full stable ``torch.sort`` is the reference; a test checks
    that the CPU path below draws the same tokens.

    On a CPU the rows are not sorted whole: a small model's nucleus holds thousands of its 8,000
    tokens (no top-k shortcut applies) and ``torch.sort`` of 256 x 8,000 took longer than the model's
    forward pass. ``_sorted_head`` sorts, with numpy and values only, just the tokens that can lie in
    the nucleus, and the drawn position is mapped back to its token.
    """
    if temperature == 0:
        return logprobs.argmax(dim=-1)
    probs = torch.softmax(logprobs.float() / temperature, dim=-1)
    top_p = min(float(top_p), 1.0)
    if probs.device.type != "cpu":  # a GPU sorts fast; the stable sort breaks ties as the CPU path does
        return _inverse_cdf(*probs.sort(dim=-1, descending=True, stable=True), uniforms, top_p)
    probs_np = probs.numpy()
    head, width = _sorted_head(probs_np, top_p)
    picks = _inverse_cdf_numpy(head, uniforms.double().cpu().numpy(), top_p)
    return torch.from_numpy(_ids_at_positions(probs_np, head, picks, width))


def _sorted_head(probs: np.ndarray, top_p: float) -> tuple[np.ndarray, np.ndarray]:
    """Each row's largest probabilities in descending order, as many as can be in its nucleus.

    Tokens are bucketed by the top bits of their float32 pattern (a monotone key of the value);
    the buckets of lowest probability whose total stays below ``1 - top_p`` (less a margin far above
    rounding) lie beyond the nucleus, and only the rest is sorted. Returns ``(head, width)``: a
    ``(rows, k)`` float32 array zero-padded on the right and the number of real entries per row.
    """
    rows, vocab = probs.shape
    limit = (1.0 - top_p) - 1e-3
    if limit <= 0 or vocab < 512:
        head = np.sort(probs, axis=-1)[:, ::-1]
        return np.ascontiguousarray(head), np.full(rows, vocab)
    keys = probs.view(np.uint32) >> 20  # sign 0, exponent, 3 mantissa bits: < 1024 for p <= 1
    offsets = (np.arange(rows, dtype=np.uint32) * 1024)[:, None]
    mass = np.bincount((keys + offsets).ravel(), weights=probs.ravel(), minlength=rows * 1024).reshape(rows, 1024)
    cut = (np.cumsum(mass, axis=1) <= limit).sum(axis=1).astype(np.uint32)  # keys below cut: tail mass <= limit
    candidate = keys >= cut[:, None]
    counts = candidate.sum(axis=1)
    parts = np.split(probs[candidate], np.cumsum(counts)[:-1])  # row by row, in order
    for part in parts:
        part.sort()
    width = np.array([len(part) for part in parts])
    head = np.zeros((rows, int(width.max())), dtype=np.float32)
    for row, part in enumerate(parts):
        head[row, : len(part)] = part[::-1]
    return head, width


def _inverse_cdf_numpy(head: np.ndarray, uniforms: np.ndarray, top_p: float) -> np.ndarray:
    """``_inverse_cdf``'s positions, computed as torch does it -- ``cumsum`` of float32 accumulates in
    float64 and rounds each sum to float32, the mask compares in float32, the CDF is float64 -- with
    one cumulative sum: the kept tokens are a prefix of the row (checked), whose CDF is that sum."""
    cumulative = np.cumsum(head, axis=-1, dtype=np.float64)
    rows, width = head.shape
    kept = np.full(rows, width)
    if top_p < 1.0:
        masked = (cumulative.astype(np.float32) - head) >= np.float32(top_p)
        kept = width - masked.sum(axis=1)
        first = np.where(masked.any(axis=1), masked.argmax(axis=1), width)
        for row in np.flatnonzero(first != kept):  # rounding made the mask no prefix: the reference's way
            cumulative[row] = np.cumsum(np.where(masked[row], np.float32(0.0), head[row]), dtype=np.float64)
            kept[row] = width
    total = cumulative[np.arange(rows), kept - 1]
    targets = uniforms * total
    # searchsorted(right=True) of [cumulative[:kept], total, total, ...]: the count of entries <= target
    below = (cumulative <= targets[:, None]).sum(axis=1)
    return np.where(total <= targets, width, np.minimum(below, kept))


def _inverse_cdf(sorted_probs, sorted_ids, uniforms, top_p: float) -> torch.Tensor:
    """Keep the nucleus of each row of descending probabilities, then pick by inverse CDF.

    Returns ``sorted_ids`` at the picked positions, or the positions when ``sorted_ids`` is None.
    """
    if top_p < 1.0:
        mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
        sorted_probs = sorted_probs.masked_fill(mass_before >= top_p, 0.0)
    cumulative = sorted_probs.double().cumsum(dim=-1)
    targets = uniforms.to(cumulative.device, torch.float64) * cumulative[:, -1]
    picks = torch.searchsorted(cumulative, targets.unsqueeze(-1), right=True).clamp_(max=sorted_probs.shape[-1] - 1)
    return picks.squeeze(-1) if sorted_ids is None else sorted_ids.gather(-1, picks).squeeze(-1)


def _ids_at_positions(probs: np.ndarray, descending: np.ndarray, positions: np.ndarray,
                      width: np.ndarray | None = None) -> np.ndarray:
    """The token at ``positions`` of each row's stable descending order, from the sorted values alone:
    the position holds value ``v``; the tokens before it are those above ``v`` and, among tokens equal
    to ``v``, those of smaller id -- so it is the ``(position - #above)``-th token equal to ``v``.
    ``descending`` may hold only the first ``width`` values of a row; a position past them (the
    reference's search can run off the end when the draw lands on the total) is the row's last token."""
    rows = np.arange(len(positions))
    vocab = probs.shape[1]
    if width is None:
        width = np.full(len(positions), descending.shape[1])
    past = positions >= width
    positions = np.where(past, np.minimum(width, vocab) - 1, np.minimum(positions, vocab - 1))
    value = descending[rows, positions][:, None]
    equal = probs == value
    ids = equal.argmax(axis=1)  # the first token of that value: right unless an equal one comes before
    rank = positions - (probs > value).sum(axis=1)
    for row in np.flatnonzero(rank > 0):
        ids[row] = np.flatnonzero(equal[row])[rank[row]]
    for row in np.flatnonzero(past & (width < vocab)):  # the last of the stable descending order
        low = probs[row] == probs[row].min()
        ids[row] = np.flatnonzero(low)[-1]
    return ids.astype(np.int64)


# ---------------------------------------------------------------------------------------- generation
@torch.inference_mode()
def generate_continuations(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    n: int = 25,
    max_new_tokens: int = 20,
    top_p: float = 0.9,
    temperature: float = 1.0,
    seed: int = 0,
    batch_size: int = 256,
    prefix: str = "",
    logits_processor_factory: LogitsProcessorFactory | None = None,
    progress: bool = True,
    prompt_ids: Sequence[int] | None = None,
    return_token_ids: bool = False,
) -> pd.DataFrame:
    """``n`` sampled continuations of each prompt (Section 3.3: n=25, 20 tokens, top-p 0.9).

    Returns a frame with one row per continuation -- ``prompt_id``, ``prompt``, ``sample``
    (0..n-1), ``continuation``, ``seed``, ``n_new_tokens`` (plus ``continuation_ids`` when
    ``return_token_ids``) -- ordered by prompt then sample, whatever order the batches ran in.

    - ``batch_size`` counts sequences (prompt x sample rows) per forward pass. Prompts are sorted by
      length so a batch holds prompts of similar length (little padding); each prompt in a batch is
      run once and its KV cache copied to its samples.
    - ``prefix`` (a safety pre-prompt, App. B.3) is put in front of every prompt's text for
      generation; it is never part of the returned ``prompt`` or ``continuation``. Include its
      separator yourself (e.g. end it with a space or a newline).
    - ``logits_processor_factory(prompt_input_ids, prompt_attention_mask)`` is called once per batch
      with that batch's left-padded prompt ids (prefix included, one row per sample, rows of a
      prompt adjacent). The callable it returns is called at every step as
      ``processor(input_ids, logprobs) -> logprobs`` where ``input_ids`` is the prompt plus what
      was generated so far ``(rows, prompt_len + t)`` and ``logprobs`` the model's log-softmax
      next-token scores ``(rows, vocab)``, *before* temperature and nucleus filtering.
    - A continuation ends at EOS (not included) or after ``max_new_tokens`` tokens.
    - ``prompt_ids`` (default ``0..len-1``) name the prompts in the output and seed their samples:
      the same ``(seed, prompt_id, sample)`` gives the same continuation in any batch.
    - A prompt that does not fit the model's positions with ``max_new_tokens`` is cut from the left
      (a warning says how many were cut). An empty prompt (with an empty prefix) starts from BOS
      (EOS for GPT-2), like unconditional sampling.
    """
    prompts = check_generation_args(prompts, n, max_new_tokens, top_p, temperature, batch_size, seed)
    if prompt_ids is None:
        prompt_ids = list(range(len(prompts)))
    prompt_ids = [int(i) for i in prompt_ids]
    if len(prompt_ids) != len(prompts):
        raise ValueError(f"prompt_ids has {len(prompt_ids)} ids for {len(prompts)} prompts; give one id per prompt.")
    if not isinstance(prefix, str):
        raise ValueError(f"prefix={prefix!r} must be a string ('' for none).")

    device = model_device(model)
    eos_id = tokenizer.eos_token_id
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id
    max_prompt_tokens = prompt_token_budget(model, max_new_tokens)
    encoded, n_cut = encode_prompts(tokenizer, [prefix + p for p in prompts], max_prompt_tokens)
    if n_cut:
        warnings.warn(
            f"{n_cut} prompt(s) were longer than {max_prompt_tokens} tokens (model positions minus "
            f"max_new_tokens={max_new_tokens}) and were cut from the left.",
            stacklevel=2,
        )

    # Longest prompts first: similar lengths share a batch, and memory trouble shows on batch one.
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    rows = [(i, s) for i in order for s in range(n)]
    batches = [rows[start : start + batch_size] for start in range(0, len(rows), batch_size)]

    results: dict[tuple[int, int], list[int]] = {}
    bar = _progress(total=len(batches), enabled=progress, desc="generate")
    for batch_rows in batches:
        generated = _sample_batch(
            model, [encoded[i] for i, _ in batch_rows], [prompt_ids[i] for i, _ in batch_rows],
            [s for _, s in batch_rows], seed=seed, max_new_tokens=max_new_tokens, top_p=top_p,
            temperature=temperature, eos_id=eos_id, pad_id=pad_id, device=device,
            logits_processor_factory=logits_processor_factory,
        )
        for (i, s), tokens in zip(batch_rows, generated):
            results[(i, s)] = tokens
        bar.update(1)
    bar.close()

    keys = [(i, s) for i in range(len(prompts)) for s in range(n)]
    texts = decode_continuations(tokenizer, [encoded[i] for i, _ in keys], [results[k] for k in keys])
    frame = pd.DataFrame(
        {
            "prompt_id": [prompt_ids[i] for i, _ in keys],
            "prompt": [prompts[i] for i, _ in keys],
            "sample": [s for _, s in keys],
            "continuation": texts,
            "seed": int(seed),
            "n_new_tokens": [len(results[k]) for k in keys],
        }
    )
    if return_token_ids:
        frame["continuation_ids"] = [results[k] for k in keys]
    return frame


def _sample_batch(
    model, prompt_tokens, prompt_ids, samples, *, seed, max_new_tokens, top_p, temperature, eos_id, pad_id,
    device, logits_processor_factory,
) -> list[list[int]]:
    """Sample one batch of rows; returns each row's generated token ids (EOS and after removed)."""
    # Run each distinct prompt once, then copy its KV cache to its samples.
    unique_keys = list(dict.fromkeys(tuple(t) for t in prompt_tokens))
    unique_index = {key: j for j, key in enumerate(unique_keys)}
    row_to_unique = torch.tensor([unique_index[tuple(t)] for t in prompt_tokens], device=device)
    ids, mask = left_pad([list(k) for k in unique_keys], pad_id, device)
    positions = position_ids_from_mask(mask)
    with autocast_context(model):
        out = forward_cached(model, ids, mask, positions, cache=None, last_only=True)
    cache = out_cache(out)
    logits = out.logits[:, -1, :].float()
    if len(unique_keys) != len(prompt_tokens):
        logits = logits.index_select(0, row_to_unique)
    ids, mask = ids.index_select(0, row_to_unique), mask.index_select(0, row_to_unique)
    next_position = positions.index_select(0, row_to_unique)[:, -1] + 1
    preallocate_cache(cache, max_new_tokens, rows=row_to_unique if len(unique_keys) != len(prompt_tokens) else None)

    rows, prompt_len = ids.shape
    processor = logits_processor_factory(ids, mask) if logits_processor_factory is not None else None
    uniforms = sample_uniforms(seed, prompt_ids, samples, max_new_tokens).to(device)
    sequence = torch.cat([ids, torch.full((rows, max_new_tokens), pad_id, dtype=ids.dtype, device=device)], 1)
    attention = torch.cat([mask, torch.ones((rows, max_new_tokens), dtype=mask.dtype, device=device)], 1)
    finished = torch.zeros(rows, dtype=torch.bool, device=device)
    with fast_decoding(model):
        steps_done = _decode_steps(model, logits, cache, processor, uniforms, sequence, attention, finished,
                                   next_position, prompt_len, max_new_tokens, temperature, top_p, eos_id, pad_id)
    generated = sequence[:, prompt_len : prompt_len + steps_done].tolist()
    return [tokens[: tokens.index(eos_id)] if eos_id in tokens else tokens for tokens in generated]


def _decode_steps(model, logits, cache, processor, uniforms, sequence, attention, finished, next_position,
                  prompt_len, max_new_tokens, temperature, top_p, eos_id, pad_id) -> int:
    steps_done = 0
    for step in range(max_new_tokens):
        logprobs = torch.log_softmax(logits, dim=-1)
        if processor is not None:
            logprobs = processor(sequence[:, : prompt_len + step], logprobs)
        tokens = sample_next_tokens(logprobs, uniforms[:, step], temperature, top_p)
        tokens = tokens.masked_fill(finished, pad_id)
        sequence[:, prompt_len + step] = tokens
        steps_done = step + 1
        if eos_id is not None:
            finished |= tokens == eos_id
        if bool(finished.all()) or step == max_new_tokens - 1:
            break
        with autocast_context(model):
            out = forward_cached(
                model, tokens[:, None], attention[:, : prompt_len + step + 1],
                (next_position + step)[:, None], cache=cache, last_only=False,
            )
        cache = out_cache(out)
        logits = out.logits[:, -1, :].float()
    return steps_done


# ------------------------------------------------------------------------------------- tokenization
def encode_prompts(tokenizer, texts: Sequence[str], max_tokens: int | None = None) -> tuple[list[list[int]], int]:
    """Token ids of each text (special tokens as the tokenizer adds them, e.g. LLaMA's BOS).

    An empty encoding becomes ``[BOS]`` (EOS for GPT-2) so that there is something to condition
    on; encodings over ``max_tokens`` keep their last ``max_tokens``. Returns ``(ids, n_cut)``.
    """
    encoded = tokenizer(list(texts), add_special_tokens=True)["input_ids"]
    start = None
    n_cut = 0
    result = []
    for ids in encoded:
        if not ids:
            start = start_token_id(tokenizer) if start is None else start
            ids = [start]
        if max_tokens is not None and len(ids) > max_tokens:
            ids = ids[-max_tokens:]
            n_cut += 1
        result.append(list(ids))
    return result, n_cut


def decode_continuations(tokenizer, prompt_tokens: Sequence[list[int]], generated: Sequence[list[int]]) -> list[str]:
    """Text of the generated tokens, exactly as they read after their prompt.

    Decoding the generated tokens alone would drop the leading space of a SentencePiece word
    (``"▁world"`` decodes to ``"world"`` at the start of a text), so we decode prompt + generated
    tokens and cut the decoded prompt tokens off the front -- a cut by tokens, not a search for the
    prompt string. Falls back to decoding the generated tokens alone in the rare case where the
    decoded prompt is not a prefix (e.g. a byte-level token split inside a character).
    """
    distinct = list(dict.fromkeys(tuple(p) for p in prompt_tokens))
    decoded = dict(zip(distinct, batch_decode(tokenizer, [list(p) for p in distinct])))
    prompt_texts = [decoded[tuple(p)] for p in prompt_tokens]
    full_texts = batch_decode(tokenizer, [list(p) + list(g) for p, g in zip(prompt_tokens, generated)])
    texts = []
    for prompt_text, full_text, tokens in zip(prompt_texts, full_texts, generated):
        if not tokens:
            texts.append("")
        elif full_text.startswith(prompt_text):
            texts.append(full_text[len(prompt_text) :])
        else:
            texts.append(batch_decode(tokenizer, [list(tokens)])[0])
    return texts


def batch_decode(tokenizer, sequences: Sequence[list[int]]) -> list[str]:
    """``tokenizer.batch_decode(sequences, skip_special_tokens=True, clean_up_tokenization_spaces=False)``.

    For a fast tokenizer that decodes as ``transformers``' own fast class does, the Rust tokenizer
    decodes the whole batch directly: the same strings, without the per-id Python checks that cost
    5% of a 5 M model's generation.
    """
    if not sequences:
        return []
    fast = _fast_tokenizer_class()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if fast is not None and backend is not None and isinstance(tokenizer, fast) and type(tokenizer)._decode is fast._decode:
        return backend.decode_batch([list(map(int, s)) for s in sequences], skip_special_tokens=True)
    return tokenizer.batch_decode([list(s) for s in sequences], skip_special_tokens=True,
                                  clean_up_tokenization_spaces=False)


@functools.lru_cache(maxsize=None)
def _fast_tokenizer_class():
    try:
        from transformers import PreTrainedTokenizerFast
    except ImportError:
        return None
    return PreTrainedTokenizerFast


# --------------------------------------------------------------------------- shared forward helpers
def model_device(model) -> torch.device:
    """The device of the model's input embeddings (the first shard under ``device_map='auto'``)."""
    try:
        return model.get_input_embeddings().weight.device
    except AttributeError:
        return next(model.parameters()).device


def autocast_context(model):
    """bf16 autocast for a float32 model on a CUDA GPU that supports it; otherwise nothing.

    A model already loaded in bf16/fp16 (``models.load_model`` does that on GPU) runs as it is. On
    CPU float32 stays by default although bf16 is faster there for the mini models (measured on the
    2-core AMX EPYC: generation 1.3x, perplexity 1.7-1.9x, contrastive decoding 1.6x): with the
    flat distributions of small models a bf16 rounding of the logits moves nearly every
    inverse-CDF draw, so continuations would differ from float32 ones (and from the cached ones)
    throughout. A caller who wants the speed wraps the call in ``torch.autocast("cpu",
    dtype=torch.bfloat16)``, which every forward pass here honours.
    """
    device = model_device(model)
    if device.type == "cuda" and getattr(model, "dtype", None) == torch.float32 and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def max_positions(model) -> int | None:
    """The model's position limit (``n_positions`` for GPT-2, ``max_position_embeddings`` otherwise)."""
    config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def prompt_token_budget(model, max_new_tokens: int) -> int | None:
    limit = max_positions(model)
    if limit is None:
        return None
    if max_new_tokens >= limit:
        raise ValueError(
            f"max_new_tokens={max_new_tokens} leaves no room for a prompt in the model's {limit} positions; "
            "use fewer new tokens."
        )
    return limit - max_new_tokens


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ``(ids, attention_mask)`` tensors: the last column is every row's last token."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            ids[row, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
            mask[row, width - len(seq) :] = 1
    return ids.to(device), mask.to(device)


def right_pad(sequences: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``(ids, attention_mask)`` tensors: every row starts in column 0."""
    width = max(1, max(len(s) for s in sequences))
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[row, : len(seq)] = 1
    return ids.to(device), mask.to(device)


def position_ids_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Positions 0, 1, ... counted over real tokens only, so left padding does not shift them."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def _forward_parameters(model) -> set[str]:
    cached = getattr(model, "_unidetox_forward_parameters", None)
    if cached is None:
        cached = set(inspect.signature(model.forward).parameters)
        try:
            model._unidetox_forward_parameters = cached
        except Exception:  # a model that refuses new attributes just pays the inspection again
            pass
    return cached


def forward_cached(model, ids, mask, positions, *, cache, last_only: bool):
    """One forward pass that keeps the KV cache; ``last_only`` asks for the last position's logits only.

    ``transformers`` 5 calls the cache argument ``cache``; 4.x called it ``past_key_values``.
    """
    params = _forward_parameters(model)
    kwargs = dict(input_ids=ids, attention_mask=mask, use_cache=True)
    if "position_ids" in params:
        kwargs["position_ids"] = positions
    if cache is not None:
        kwargs["cache" if "cache" in params else "past_key_values"] = cache
    if last_only and "logits_to_keep" in params:
        kwargs["logits_to_keep"] = 1
    return model(**kwargs)


CACHE_CHUNK = 16  # KV-cache capacity grows in steps of this many positions (see preallocate_cache)
# The live buffers of converted caches by address: attention finds the dense buffer behind a view
# with it (``Tensor._base`` is not kept under ``torch.inference_mode``).
_BUFFERS: "weakref.WeakValueDictionary[int, torch.Tensor]" = weakref.WeakValueDictionary()


def preallocate_cache(cache, extra_positions: int, rows: torch.Tensor | None = None) -> bool:
    """Let every layer of a ``DynamicCache`` take ``extra_positions`` more tokens, written in place.

    ``DynamicCache`` concatenates each step's keys and values onto the whole cache, which copies
    all of it every step: on a CPU that copy cost more than the model itself (40% of the time of
    a 3 M-parameter model at 200 rows). Here each layer's tensors become views into zero-filled
    buffers whose capacity grows in chunks (``CACHE_CHUNK`` positions, or an eighth of the length
    when that is more: a copy every 16+ steps, at most 1/8 unused), up to ``extra_positions`` more
    than now, and its ``update`` writes the new step into the buffer. ``fast_decoding`` then lets
    attention read the buffer whole (a dense tensor) instead of the strided view, which CPU matrix
    products read 2-3x slower. ``rows`` (optional) selects and repeats batch rows on the way, as
    ``cache.batch_select_indices(rows)`` would, without a second copy. Layers of another kind
    (sliding windows, quantised, older ``transformers`` without ``cache.layers``) keep their own
    ``update`` (and get ``rows`` selected the usual way); returns whether every layer was converted.
    """
    try:
        from transformers.cache_utils import DynamicLayer
    except ImportError:  # transformers 4.x: tuples of tensors, concatenation stays
        if rows is not None:
            cache.batch_select_indices(rows)
        return False
    layers = getattr(cache, "layers", None)
    if not layers:
        if rows is not None:
            cache.batch_select_indices(rows)
        return False
    converted = 0
    for layer in layers:
        if type(layer) is not DynamicLayer or not getattr(layer, "is_initialized", False) or layer.keys.dim() != 4:
            if rows is not None:
                layer.batch_select_indices(rows)
            continue
        length = layer.keys.shape[-2]
        layer._unidetox_limit = length + max(int(extra_positions), 0)
        _reserve(layer, length, length, rows)
        layer.update = types.MethodType(_update_in_place, layer)
        converted += 1
    return converted == len(layers)


def _reserve(layer, length: int, needed: int, rows: torch.Tensor | None = None) -> None:
    """Move the first ``length`` positions of ``layer`` (its ``rows``, default all) into buffers with
    room for ``needed``."""
    keys, values = layer.keys, layer.values
    batch = keys.shape[0] if rows is None else len(rows)
    chunk = max(CACHE_CHUNK, needed // 8)
    capacity = max(needed, min(-(-needed // chunk) * chunk, layer._unidetox_limit))
    key_buffer = keys.new_empty(batch, keys.shape[1], capacity, keys.shape[-1])
    value_buffer = values.new_empty(batch, values.shape[1], capacity, values.shape[-1])
    for target, source in ((key_buffer, keys), (value_buffer, values)):
        _copy_rows(target[:, :, :length], source[:, :, :length], rows)
        target[:, :, length:] = 0  # never read unmasked, but 0 * garbage could be NaN in attention
    _BUFFERS[key_buffer.data_ptr()] = key_buffer  # see _capacity_attention
    _BUFFERS[value_buffer.data_ptr()] = value_buffer
    layer.keys, layer.values = key_buffer[:, :, :length], value_buffer[:, :, :length]
    layer._unidetox_buffers = (key_buffer, value_buffer)


def _copy_rows(target: torch.Tensor, source: torch.Tensor, rows: torch.Tensor | None) -> None:
    """``target[:] = source[rows]``, as broadcast copies of each run of equal rows (the samples of one
    prompt are adjacent), without the intermediate tensor ``source[rows]`` would be."""
    if rows is None:
        target.copy_(source)
        return
    index = rows.tolist()
    start = 0
    while start < len(index):
        end = start + 1
        while end < len(index) and index[end] == index[start]:
            end += 1
        target[start:end].copy_(source[index[start] : index[start] + 1].expand(end - start, *source.shape[1:]))
        start = end


def _update_in_place(layer, key_states, value_states, *args, **kwargs):
    key_buffer, value_buffer = layer._unidetox_buffers
    start = layer.keys.shape[-2]
    end = start + key_states.shape[-2]
    if layer.keys.data_ptr() != key_buffer.data_ptr() or layer.values.data_ptr() != value_buffer.data_ptr():
        # The cache was re-indexed (its tensors replaced): back to plain concatenation.
        del layer.update, layer._unidetox_buffers
        return layer.update(key_states, value_states, *args, **kwargs)
    if end > key_buffer.shape[-2]:
        layer._unidetox_limit = max(layer._unidetox_limit, end)
        _reserve(layer, start, end)
        key_buffer, value_buffer = layer._unidetox_buffers
    key_buffer[:, :, start:end] = key_states
    value_buffer[:, :, start:end] = value_states
    layer.keys, layer.values = key_buffer[:, :, :end], value_buffer[:, :, :end]
    return layer.keys, layer.values


# ------------------------------------------------------------------------ attention over the buffers
FAST_ATTENTION = "unidetox_sdpa"


@contextlib.contextmanager
def fast_decoding(*models):
    """Within the block, models on CPU with ``sdpa`` attention use ``_capacity_attention``.

    One-token decoding steps against a cache made by ``preallocate_cache`` then multiply with
    the dense buffers (masking the positions not yet written) instead of the strided views the
    cache hands out: 3x less time in attention on a CPU, where ``sdpa`` for one query token also
    loses against two plain batched products. Every other call -- prompts, several tokens, GPUs,
    other caches -- goes to ``sdpa`` unchanged. The setting is restored on exit.
    """
    switched = []
    try:
        for model in models:
            config = getattr(model, "config", None)
            if (config is None or model_device(model).type != "cpu"
                    or getattr(config, "_attn_implementation", None) != "sdpa" or not _register_fast_attention()):
                continue
            config._attn_implementation = FAST_ATTENTION
            switched.append(config)
        yield
    finally:
        for config in switched:
            config._attn_implementation = "sdpa"


@functools.lru_cache(maxsize=None)
def _register_fast_attention() -> bool:
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    except ImportError:
        return False
    AttentionInterface.register(FAST_ATTENTION, _capacity_attention)
    AttentionMaskInterface.register(FAST_ATTENTION, sdpa_mask)
    return True


def _capacity_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """Attention of one query token over the whole KV buffer behind ``key``/``value`` (see above)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    key_buffer, value_buffer = _BUFFERS.get(key.data_ptr()), _BUFFERS.get(value.data_ptr())
    batch, heads, q_len, dim = query.shape
    usable = (
        q_len == 1 and not dropout and key_buffer is not None and value_buffer is not None
        and key.stride() == key_buffer.stride() and value.stride() == value_buffer.stride()
        and key_buffer.shape[:2] == key.shape[:2] and key_buffer.shape[-1] == key.shape[-1]
        and value_buffer.shape[:2] == value.shape[:2] and heads % key.shape[1] == 0
        and all(kwargs.get(name) is None for name in ("softcap", "sliding_window", "s_aux", "sinks", "position_bias"))
        and (attention_mask is None or (attention_mask.dim() == 4 and attention_mask.shape[1] == 1
                                        and attention_mask.shape[-1] == key.shape[-2]))
    )
    if not usable:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    length, kv_heads = key.shape[-2], key.shape[1]
    groups = heads // kv_heads
    scale = scaling if scaling is not None else dim ** -0.5
    grouped = query.reshape(batch, kv_heads, groups, dim)  # query head h reads key head h // groups
    scores = torch.matmul(grouped, key_buffer.transpose(-1, -2)).float().mul_(scale)  # (batch, kv, groups, cap)
    scores[..., length:] = -math.inf
    if attention_mask is not None:
        visible = attention_mask[:, :, -1:, :]  # (batch, 1, 1, length)
        if visible.dtype == torch.bool:
            scores[..., :length].masked_fill_(~visible, -math.inf)
        else:
            scores[..., :length].add_(visible.float())
    weights = torch.softmax(scores, dim=-1).to(value_buffer.dtype)
    out = torch.matmul(weights, value_buffer)  # (batch, kv, groups, dim)
    return out.reshape(batch, heads, 1, dim).transpose(1, 2), None


def out_cache(out):
    """The KV cache of a model output (``cache`` in transformers 5, ``past_key_values`` before)."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)


def _progress(total: int, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc=desc, leave=False)
