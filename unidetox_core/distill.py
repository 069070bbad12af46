"""Distilling detoxifying text by contrastive decoding (Section 2.1, Eq. 1-3) and plain sampling.

Read next to the paper:

- Eq. 1, per token: ``s(x_t | x_<t) = log p_base(x_t | x_<t) - log p_toxic(x_t | x_<t)``
- Eq. 3, the adaptive plausibility constraint: ``s' = s`` where
  ``p_base(x_t | x_<t) >= alpha * max_x' p_base(x' | x_<t)``, and ``-inf`` elsewhere
- Eq. 2: ``x_t ~ softmax(s')`` -- sampled one token at a time from the start token (BOS, or EOS for
  GPT-2, which has no BOS), until EOS or ``max_new_tokens``.

``contrastive_scores`` is Eq. 1 + 3, ``gumbel_sample`` is Eq. 2, ``decode_batch`` is the loop,
``contrastive_decode`` runs it over batches (the paper: 640 texts = 5 x 128, <= 256 tokens, alpha 0.1)
and ``sample_plain`` is the paper's "GPT-2 Samples" baseline (the same loop without the toxic model).
``run_distillation`` writes the CSV (column ``Text``, the authors' release format) and a JSON of
metadata, resumable batch by batch.

Differences from the official code (``EminLU/UniDetox``, ``DetoxifiedGPT2LMHeadModel`` driven by
Hugging Face ``generate``), on purpose:

- **Separate KV caches.** The official forward passed the *base* model's ``past_key_values`` to the
  toxic model as well. With tuple caches the toxic model then attended to the base model's keys and
  values of the prefix instead of its own; with an in-place ``DynamicCache`` both models appended to
  one cache and each attended to the other's entries. Either way ``log p_toxic`` (and possibly
  ``log p_base``) was not the model's probability given the prefix. Here each model keeps its own
  cache; a test checks every token against a reference that recomputes both models on the full
  prefix. (The official run also loaded the base in bf16 and the toxic model in float32.)
- **No hidden top-k.** ``generate(do_sample=True)`` applied its default ``top_k=50`` *to the
  contrastive scores* (after the plausibility mask), which the paper's formula does not have.
  ``top_k=0`` (default) is the paper's Eq. 2; ``top_k=50`` reproduces the official behaviour.
- **Length.** The official ``max_length=256`` counted the start token, i.e. 255 new tokens;
  ``max_new_tokens`` here counts generated tokens only.
- The official code compared raw logits (``logit_base - logit_toxic``, cutoff on logits); this
  differs from log-probabilities by one constant per position, which softmax and the cutoff ignore,
  so it is the same distribution.

Sampling uses the Gumbel-max trick with an explicit ``torch.Generator``: one ``[batch, vocab]`` draw
per step, for every row, finished or not. So the random stream depends only on the seed, the batch
index and the batch size -- which makes the decoder testable against a brute-force reference and a
resumed run identical to an uninterrupted one. (CPU and CUDA generators give different streams.)
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Sequence

import torch

from .cache import write_json_atomic
from .finetune import derived_seed, weights_fingerprint
from .forward import autocast, check_positions, model_device, next_token_logits, training_bf16
from .models import same_tokenizer, start_token_id


# ------------------------------------------------------------------------------------ Eq. 1 and 3
def contrastive_scores(base_logprobs: torch.Tensor, toxic_logprobs: torch.Tensor, alpha: float) -> torch.Tensor:
    """Eq. 1 with the plausibility constraint of Eq. 3, over the last dimension (the vocabulary).

    ``s = log p_base - log p_toxic``; set to ``-inf`` where ``p_base < alpha * max p_base``, tested in
    log space as ``log p_base < log alpha + max log p_base``. ``alpha = 0`` keeps every token the base
    model can produce; ``alpha = 1`` keeps only its most likely token(s).
    """
    # A token the toxic model rules out entirely would score +inf and break softmax; cap it at the
    # largest finite score instead (it still wins against any ordinary token).
    toxic_logprobs = toxic_logprobs.clamp_min(torch.finfo(toxic_logprobs.dtype).min)
    scores = base_logprobs - toxic_logprobs
    if alpha > 0:  # a finite cutoff, below which -inf lies too
        implausible = base_logprobs < math.log(alpha) + base_logprobs.max(dim=-1, keepdim=True).values
    else:
        implausible = torch.isneginf(base_logprobs)
    return scores.masked_fill(implausible, -math.inf)


def plausible_only(base_logprobs: torch.Tensor, alpha: float) -> torch.Tensor:
    """Eq. 3's cut applied to ``log p_base`` itself, without the contrast: the control that asks
    whether the plausibility constraint alone, rather than the toxic model, does the detoxifying."""
    cutoff = math.log(alpha) + base_logprobs.max(dim=-1, keepdim=True).values
    return base_logprobs.masked_fill(base_logprobs < cutoff, -math.inf)


# ------------------------------------------------------------------------------------------ Eq. 2
def keep_top_k(scores: torch.Tensor, top_k: int) -> torch.Tensor:
    """Keep the ``top_k`` highest scores per row (ties at the boundary kept), ``-inf`` the rest --
    what Hugging Face's ``TopKLogitsWarper`` does. ``top_k = 0`` keeps everything (the paper)."""
    if top_k <= 0 or top_k >= scores.shape[-1]:
        return scores
    kth = torch.topk(scores, top_k, dim=-1).values[..., -1:]
    return scores.masked_fill(scores < kth, -math.inf)


def gumbel_sample(scores: torch.Tensor, generator: torch.Generator, temperature: float = 1.0) -> torch.Tensor:
    """Eq. 2: one token per row from ``softmax(scores / temperature)``.

    Gumbel-max: ``argmax(scores / T + g)`` with ``g = -log(Exp(1))`` i.i.d. Gumbel noise is an exact
    sample from the softmax, and ``-inf`` scores are never chosen. The noise has the full shape
    ``[rows, vocab]`` whatever the scores are, so the random stream never depends on them.
    """
    noise = torch.empty(scores.shape, dtype=torch.float32, device=scores.device)
    gumbel = -torch.log(noise.exponential_(generator=generator))
    return (scores.float() / temperature + gumbel).argmax(dim=-1)


# ----------------------------------------------------------------------------------- the decoder
@torch.inference_mode()
def decode_batch(base, toxic, *, batch_size: int, max_new_tokens: int, start_id: int, eos_id: int,
                 generator: torch.Generator, alpha: float = 0.1, temperature: float = 1.0, top_k: int = 0,
                 bf16: bool = False) -> dict:
    """Sample ``batch_size`` sequences from the start token: contrastive (Eq. 1-3) when ``toxic`` is
    given, plain sampling from the base model (cut by Eq. 3 alone when ``alpha``) when it is None.

    Each step feeds the newest token to each model with *its own* KV cache, takes float32
    log-probabilities, scores them and samples. A finished row (EOS) keeps being fed EOS, so the
    batch stays rectangular; the loop ends when every row has finished. (No hand-written speed-up
    here: against ``generate`` with a logits processor that runs the toxic model on its own cache,
    the CPU speed-ups bought 1.2x, under the 1.5x that would pay for them; ``benchmarks/``.) Returns ``ids`` ``[batch, steps]`` (EOS after
    the end), ``lengths`` (tokens before EOS), ``ended`` (EOS seen), ``steps``, and ``support_sum``
    / ``support_count``: the tokens sampled from, summed over the live rows, and those rows.
    """
    device = model_device(base)
    models = {"base": base} if toxic is None else {"base": base, "toxic": toxic}
    caches = dict.fromkeys(models)
    next_ids = torch.full((batch_size, 1), start_id, dtype=torch.long, device=device)
    generated = torch.full((batch_size, max_new_tokens), eos_id, dtype=torch.long, device=device)
    finished = torch.zeros(batch_size, dtype=torch.bool, device=device)
    lengths = torch.zeros(batch_size, dtype=torch.long, device=device)
    support = torch.zeros(2, dtype=torch.long, device=device)
    for step in range(max_new_tokens):
        logprobs = {}
        for name, model in models.items():
            with autocast(device, bf16):
                logits, caches[name] = next_token_logits(model, next_ids.to(model_device(model)), caches[name])
            logprobs[name] = torch.log_softmax(logits.float(), dim=-1).to(device)
        if toxic is not None:
            scores = contrastive_scores(logprobs["base"], logprobs["toxic"], alpha)  # Eq. 1 + 3
        else:
            scores = plausible_only(logprobs["base"], alpha) if alpha else logprobs["base"]
        scores = keep_top_k(scores, top_k)
        chosen = gumbel_sample(scores, generator, temperature)  # Eq. 2
        live = ~finished
        support += torch.stack([(scores.isfinite() & live[:, None]).sum(), live.sum()])
        chosen = chosen.masked_fill(finished, eos_id)  # finished rows: noise drawn, token ignored
        lengths += (live & (chosen != eos_id)).long()
        finished |= chosen == eos_id
        generated[:, step] = chosen
        if bool(finished.all()):
            break
        next_ids = chosen[:, None]
    return {"ids": generated[:, : step + 1].cpu(), "lengths": lengths.cpu(), "ended": finished.cpu(),
            "support_sum": int(support[0]), "support_count": int(support[1]), "steps": step + 1}


# ------------------------------------------------------------------------------- public sampling
def contrastive_decode(base, toxic, tokenizer, *, n_texts: int = 640, max_new_tokens: int = 256,
                       alpha: float = 0.1, batch_size: int = 128, seed: int = 0, temperature: float = 1.0,
                       top_k: int = 0, progress: bool = True, toxic_tokenizer=None, bf16="auto",
                       batch_dir=None) -> tuple[list[str], dict]:
    """Distil ``n_texts`` detoxifying texts by contrastive decoding (Eq. 1-3) of ``base`` against ``toxic``.

    The two models may differ in size and architecture but must share one tokenizer (checked: the
    ``toxic_tokenizer`` if given, and the size of both output layers). Batch ``i`` draws its noise
    from a generator seeded by ``(seed, i)``, so the same seed and ``batch_size`` give the same
    texts. With ``batch_dir`` each finished batch is saved there and a rerun continues from the last
    finished batch (see ``run_distillation``).

    Returns ``(texts, stats)``: the decoded texts (start token and EOS excluded) and a dict with
    the settings, ``token_ids`` (per text, EOS included when produced), ``lengths``, ``ended_with_eos``,
    ``mean_support`` (average number of tokens sampled from), ``generated_tokens``, ``wall_time_s``
    and ``tokens_per_s`` (generated tokens, EOS included, per second of decoding).

    ``bf16="auto"`` autocasts to bf16 on CUDA only: on CPU the scores stay float32 unless
    ``bf16=True``, since ``s`` is a small difference of two log-probabilities.
    """
    check_decoding_args(n_texts=n_texts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                        temperature=temperature, top_k=top_k, seed=seed, alpha=alpha)
    check_shared_tokenizer(base, toxic, tokenizer, toxic_tokenizer)
    check_positions(base, max_new_tokens, "base")
    check_positions(toxic, max_new_tokens, "toxic")
    return _decode_in_batches(base, toxic, tokenizer, n_texts=n_texts, max_new_tokens=max_new_tokens,
                              alpha=alpha, batch_size=batch_size, seed=seed, temperature=temperature,
                              top_k=top_k, progress=progress, bf16=bf16, batch_dir=batch_dir)


def sample_plain(base, tokenizer, *, n_texts: int = 640, max_new_tokens: int = 256, batch_size: int = 128,
                 seed: int = 0, temperature: float = 1.0, top_k: int = 0, progress: bool = True, bf16="auto",
                 batch_dir=None, alpha: float = 0.0) -> tuple[list[str], dict]:
    """The "Samples" baseline: ancestral sampling from the base model alone, from the start token.

    Same interface, batching, random stream and outputs as ``contrastive_decode``; ``top_k=0`` and
    ``alpha=0`` (the defaults) are pure sampling from ``p_base``. ``alpha > 0`` keeps only the
    tokens that pass Eq. 3's plausibility cut and samples them in proportion to ``p_base`` -- the
    book's control for "does the cut alone detoxify?".
    """
    check_decoding_args(n_texts=n_texts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                        temperature=temperature, top_k=top_k, seed=seed, alpha=alpha)
    check_positions(base, max_new_tokens, "base")
    return _decode_in_batches(base, None, tokenizer, n_texts=n_texts, max_new_tokens=max_new_tokens,
                              alpha=alpha or None, batch_size=batch_size, seed=seed, temperature=temperature,
                              top_k=top_k, progress=progress, bf16=bf16, batch_dir=batch_dir)


def batch_generator(seed: int, batch_index: int, device: torch.device) -> torch.Generator:
    """The random stream of batch ``batch_index``: independent of every other batch."""
    return torch.Generator(device=device).manual_seed(derived_seed(seed, "distill-batch", batch_index))


def _decode_in_batches(base, toxic, tokenizer, *, n_texts, max_new_tokens, alpha, batch_size, seed,
                       temperature, top_k, progress, bf16, batch_dir) -> tuple[list[str], dict]:
    from tqdm.auto import tqdm

    device = model_device(base)
    bf16_on = training_bf16(bf16, base) if device.type == "cuda" else bool(bf16 is True)  # CPU: float32
    start_id, eos_id = start_token_id(tokenizer), tokenizer.eos_token_id
    settings = {
        "mode": "plain" if toxic is None else "contrastive", "alpha": alpha, "temperature": temperature,
        "top_k": top_k, "seed": seed, "batch_size": batch_size, "max_new_tokens": max_new_tokens,
        "device_type": device.type, "bf16": bf16_on,
        "base": weights_fingerprint(base), "toxic": None if toxic is None else weights_fingerprint(toxic),
    }
    store = _BatchStore(batch_dir, settings) if batch_dir is not None else None
    n_batches = math.ceil(n_texts / batch_size)
    bar = tqdm(total=n_batches * max_new_tokens, disable=not progress, unit="step",
               desc="contrastive decoding" if toxic is not None else "sampling")
    batches, reused = [], 0
    for index in range(n_batches):
        size = min(batch_size, n_texts - index * batch_size)
        done = store.load(index, size) if store is not None else None
        reused += done is not None
        if done is None:
            started = time.perf_counter()
            out = decode_batch(base, toxic, batch_size=size, max_new_tokens=max_new_tokens, start_id=start_id,
                               eos_id=eos_id, generator=batch_generator(seed, index, device), alpha=alpha,
                               temperature=temperature, top_k=top_k, bf16=bf16_on)
            done = _batch_record(out, tokenizer, size, time.perf_counter() - started)
            if store is not None:
                store.save(index, done)
        batches.append(done)
        bar.update(max_new_tokens)
        bar.set_postfix(tok_s=f"{_rate(batches):.0f}")
    bar.close()
    texts, stats = _merge_batches(batches, settings, n_texts)
    stats["reused_batches"] = reused  # finished in an earlier, interrupted run
    return texts, stats


def _batch_record(out: dict, tokenizer, size: int, wall_time_s: float) -> dict:
    """One batch as plain JSON-able values: texts, ids (EOS kept when produced), counts, timing."""
    token_ids, texts = [], []
    for row in range(size):
        n = int(out["lengths"][row])
        ids = out["ids"][row, : n + int(bool(out["ended"][row]))].tolist()
        token_ids.append(ids)
        texts.append(tokenizer.decode(ids[:n], skip_special_tokens=True))
    return {
        "size": size, "texts": texts, "token_ids": token_ids,
        "lengths": out["lengths"].tolist(), "ended": out["ended"].tolist(),
        "support_sum": out["support_sum"], "support_count": out["support_count"],
        "positions": size * out["steps"], "wall_time_s": wall_time_s,
    }


def _rate(batches: list[dict]) -> float:
    seconds = sum(b["wall_time_s"] for b in batches)
    return sum(len(ids) for b in batches for ids in b["token_ids"]) / seconds if seconds > 0 else 0.0


def _merge_batches(batches: list[dict], settings: dict, n_texts: int) -> tuple[list[str], dict]:
    texts = [t for b in batches for t in b["texts"]]
    lengths = [n for b in batches for n in b["lengths"]]
    ended = [e for b in batches for e in b["ended"]]
    generated = sum(len(ids) for b in batches for ids in b["token_ids"])
    wall = sum(b["wall_time_s"] for b in batches)
    support_count = sum(b["support_count"] for b in batches)
    stats = {
        **{k: v for k, v in settings.items() if k not in ("base", "toxic")},
        "n_texts": n_texts, "n_batches": len(batches),
        "token_ids": [ids for b in batches for ids in b["token_ids"]],
        "lengths": lengths, "ended_with_eos": ended,
        "mean_length": sum(lengths) / len(lengths), "eos_fraction": sum(ended) / len(ended),
        "mean_support": sum(b["support_sum"] for b in batches) / support_count if support_count else None,
        "generated_tokens": generated, "positions": sum(b["positions"] for b in batches),
        "wall_time_s": wall, "tokens_per_s": generated / wall if wall > 0 else None,
        "positions_per_s": sum(b["positions"] for b in batches) / wall if wall > 0 else None,
    }
    return texts, stats


class _BatchStore:
    """Finished batches under one folder (``batch-00003.json``), valid only for the same settings."""

    def __init__(self, folder, settings: dict):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        marker = self.folder / "settings.json"
        if marker.exists():
            saved = json.loads(marker.read_text())
            if saved != json.loads(json.dumps(settings)):
                changed = sorted(k for k in set(saved) | set(settings) if saved.get(k) != settings.get(k))
                raise ValueError(f"batch_dir={str(self.folder)!r} holds batches made with other settings "
                                 f"({', '.join(changed)} differ); delete it or choose another folder.")
        else:
            write_json_atomic(marker, settings)

    def load(self, index: int, size: int) -> dict | None:
        path = self.folder / f"batch-{index:05d}.json"
        if not path.exists():
            return None
        record = json.loads(path.read_text())
        return record if record["size"] == size else None

    def save(self, index: int, record: dict) -> None:
        write_json_atomic(self.folder / f"batch-{index:05d}.json", record)


# ------------------------------------------------------------------------------------------- files
def distill_to_files(texts: Sequence[str], stats: dict, out_csv, **extra_meta) -> tuple[Path, Path]:
    """Write ``texts`` as a CSV with the single column ``Text`` and ``stats`` (+ ``extra_meta``) as
    JSON beside it (same name, ``.json``), both atomically. Returns the two paths."""
    import pandas as pd

    from .cache import write_csv_atomic

    out_csv = Path(out_csv)
    write_csv_atomic(pd.DataFrame({"Text": list(texts)}), out_csv)
    meta = {k: v for k, v in stats.items() if k != "token_ids"}  # ids can be re-made by tokenizing
    meta.update(extra_meta)
    meta_path = write_json_atomic(out_csv.with_suffix(".json"), meta)
    return out_csv, meta_path


def run_distillation(base_path, toxic_path, out_csv, *, device: str | None = "auto", dtype="auto",
                     keep_batches: bool = False, **decode_kwargs) -> tuple[list[str], dict]:
    """Load the models, distil (or, with ``toxic_path=None``, plain-sample) and write the files.

    ``out_csv`` gets the column ``Text``; ``out_csv`` with suffix ``.json`` gets the metadata (model
    paths, alpha, seed, top_k, temperature, lengths, tokens/s, wall time). Batches are kept under
    ``<out_csv>.batches/`` while the run lasts, so an interrupted run resumes at the last finished
    batch and produces the same texts; the folder is removed at the end unless ``keep_batches``.
    ``decode_kwargs`` go to ``contrastive_decode`` / ``sample_plain``.
    """
    import shutil

    from .models import load_model

    out_csv = Path(out_csv)
    base, tokenizer = load_model(str(base_path), dtype=dtype, device=device, param="base_path")
    batch_dir = out_csv.with_name(out_csv.name + ".batches")
    if toxic_path is None:  # plain samples; ``plain_alpha`` > 0 gives the plausibility-cut-only control
        decode_kwargs.pop("alpha", None)
        plain_alpha = decode_kwargs.pop("plain_alpha", 0.0)
        texts, stats = sample_plain(base, tokenizer, batch_dir=batch_dir, alpha=plain_alpha, **decode_kwargs)
    else:
        toxic, toxic_tokenizer = load_model(str(toxic_path), dtype=dtype, device=device, param="toxic_path")
        texts, stats = contrastive_decode(base, toxic, tokenizer, toxic_tokenizer=toxic_tokenizer,
                                          batch_dir=batch_dir, **decode_kwargs)
    stats = {**stats, "base_model": str(base_path), "toxic_model": None if toxic_path is None else str(toxic_path),
             "dtype": str(next(base.parameters()).dtype).replace("torch.", "")}
    distill_to_files(texts, stats, out_csv)
    if not keep_batches:
        shutil.rmtree(batch_dir, ignore_errors=True)
    return texts, stats


# ------------------------------------------------------------------------------------- validation
def check_decoding_args(*, n_texts, max_new_tokens, batch_size, temperature, top_k, seed, alpha) -> None:
    """Fail before any compute, naming the parameter and a fix."""
    for name, value in dict(n_texts=n_texts, max_new_tokens=max_new_tokens, batch_size=batch_size).items():
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name}={value!r} must be a positive integer (the paper: n_texts=640, "
                             f"max_new_tokens=256, batch_size=128).")
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha!r} must lie in [0, 1] (Eq. 3; the paper uses 0.1, Table 5 also 0.05).")
    if not isinstance(temperature, (int, float)) or not temperature > 0 or not math.isfinite(temperature):
        raise ValueError(f"temperature={temperature!r} must be a positive number (1.0 = the paper's softmax).")
    if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 0:
        raise ValueError(f"top_k={top_k!r} must be an integer >= 0 (0 = off, the paper; 50 = the official code).")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed={seed!r} must be an integer.")


def output_vocab_size(model) -> int:
    """Rows of the model's output layer: the size of the distribution it predicts."""
    head = model.get_output_embeddings()
    return head.weight.shape[0] if head is not None else model.config.vocab_size


def check_shared_tokenizer(base, toxic, tokenizer, toxic_tokenizer=None) -> None:
    """Contrastive decoding subtracts log-probabilities token id by token id, so both models must
    use the same vocabulary; raise a clear error otherwise (they may differ in size)."""
    if toxic_tokenizer is not None and not same_tokenizer(tokenizer, toxic_tokenizer):
        raise ValueError(
            f"the base and toxic models use different tokenizers ({len(tokenizer)} vs {len(toxic_tokenizer)} "
            "tokens, or other merges): contrastive decoding compares the two models token by token. "
            "Fine-tune the toxic model from the base model (or any model with the base's tokenizer)."
        )
    base_vocab, toxic_vocab = output_vocab_size(base), output_vocab_size(toxic)
    if base_vocab != toxic_vocab:
        raise ValueError(
            f"the base model predicts {base_vocab} tokens and the toxic model {toxic_vocab}: they do not share "
            "a tokenizer. Fine-tune the toxic model from the base model (or any model with the base's tokenizer)."
        )
