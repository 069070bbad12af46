"""The five baselines of the seed's Section 3.2 / Appendix B.3, and the tuning rule of Section 3.4.

- **PrePrompt Short / Long**: a safety instruction put in front of every prompt
  (``SAFETY_PREPROMPTS``, passed as ``prefix=`` to ``generate.generate_continuations``); only the
  continuation is scored.
- **Samples** (the ablation): the source model's *plain* samples, fine-tuned with UniDetox's recipe
  and step grid -- ``distill.sample_plain`` + ``finetune.finetune``; ``samples_baseline_texts``
  below only fixes the count and length to those of the distilled text.
- **LM-Steer** (Han et al., 2024): a learned matrix ``W`` steers the LM head's input,
  ``h -> h + eps * W h``; ``train_lm_steer`` learns ``W`` on the toxic corpus, ``apply_lm_steer``
  steers a model with ``eps < 0`` at evaluation.
- **DExperts, anti-expert only** (Liu et al., 2021): next-token scores
  ``(1 + beta) log p_base - beta log p_toxic``, then the same nucleus sampling;
  ``dexperts_processor_factory`` plugs into ``generate_continuations``' logits-processor hook.
- **Task Arithmetic** (Ilharco et al., 2023): ``theta_base - lambda (theta_toxic - theta_base)``;
  ``task_arithmetic`` returns the edited copy.

LM-Steer, DExperts and Task Arithmetic each need a toxic version (or module) of **every** target
model; UniDetox and Samples reuse one text everywhere -- the book's point.

Tuning (Section 3.4): ``select_unidetox`` picks UniDetox's (and Samples') step count per learning
rate on the *source* model; ``ppl_ceiling`` and ``select_baseline`` pick each other baseline's value
*per model*, lowest validation TP among values whose perplexity stays within 1.1 x UniDetox's.
Every evaluated grid point stays in the results table (``RESULT_COLUMNS``), from which the
sensitivity figure is drawn.
"""

from __future__ import annotations

import copy
import math
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from . import methods
from .cache import atomic_path
from .forward import forward_cached, inference_autocast, model_device, out_cache, pad_id_of, position_ids_from_mask, right_pad

# ------------------------------------------------------------------------------------------ names
# The methods' names (``methods.REGISTRY``), as in the results table's ``method`` column.
UNIDETOX = methods.UNIDETOX.name
SAMPLES = methods.SAMPLES.name
PREPROMPT_SHORT = methods.PREPROMPT_SHORT.name
PREPROMPT_LONG = methods.PREPROMPT_LONG.name
LMSTEER = methods.LMSTEER.name
DEXPERTS = methods.DEXPERTS.name
TASK_ARITHMETIC = methods.TASK_ARITHMETIC.name
BASE = methods.BASE.name
PER_MODEL_METHODS = tuple(methods.names(tuned_on="each"))  # tuned per model under the perplexity rule

RESULT_COLUMNS = ["method", "model", "hparam", "value", "TP", "EMT", "PPL", "dist1", "dist2", "dist3", "split", "seed"]
"""Columns of the results table: one row per (method, model, grid point, split, seed).

Optional columns: ``lr`` (UniDetox / Samples: the fine-tuning learning rate; their ``hparam`` is
``"steps"``) and ``domain`` (per-domain rows; see ``aggregate_results``). ``TP`` is the toxicity
probability averaged over all domains unless a ``domain`` column says otherwise.
"""

# ------------------------------------------------------------------------------ safety pre-prompts
SAFETY_PREPROMPTS = {
    "short": "Generate text that is respectful, neutral, and safe. Avoid any harmful or biased content.\n",
    "long": (
        "You are generating text in a neutral and respectful manner. Ensure that your output is safe and "
        "free from any harmful, unethical, racist, sexist, toxic, dangerous, or illegal content. Avoid "
        "generating text that contains biased, offensive, or harmful language. Maintain neutral, "
        "positive, and socially unbiased language in all outputs.\n"
    ),
}
"""The two safety pre-prompts of the seed's Appendix B.3, verbatim, each ending in a newline.

The paper prints the long one ending in ``\\n`` and the short one ending in a stray `` n`` -- a
backslash lost in typesetting; we read both as ending in a newline, which also separates the
instruction from the ToxiGen prompt that follows. Used as ``prefix=`` of
``generate.generate_continuations``, which feeds ``prefix + prompt`` to the model and returns only
the generated tokens as the continuation, so the pre-prompt is never scored.
"""


def preprompt_continuations(model, tokenizer, prompts: Sequence[str], which: str = "short", **generate_kwargs):
    """PrePrompt Short / Long (seed Section 3.2, App. B.3): continuations of ``preprompt + prompt``.

    A thin wrapper over ``generate.generate_continuations(..., prefix=SAFETY_PREPROMPTS[which])``;
    the returned ``prompt`` and ``continuation`` columns never contain the pre-prompt.
    """
    from .generate import generate_continuations

    if which not in SAFETY_PREPROMPTS:
        raise ValueError(f"which={which!r} is not a safety pre-prompt; use one of {sorted(SAFETY_PREPROMPTS)}.")
    return generate_continuations(model, tokenizer, prompts, prefix=SAFETY_PREPROMPTS[which], **generate_kwargs)


# ------------------------------------------------------------------------------------------ Samples
def samples_baseline_texts(model, tokenizer, profile: dict, seed: int = 0, **sample_kwargs) -> tuple[list[str], dict]:
    """The Samples baseline's training text (seed Section 3.2, App. B.3): plain samples of the source model.

    ``distill.sample_plain`` with the distillation's settings from ``profile`` -- the same count
    (``distill_n_texts``, 640), length (``distill_max_new_tokens``, 256), batch size, temperature and
    top-k, started from BOS/EOS like the distilled text -- but without contrastive decoding, so
    comparing the two isolates what the toxic model contributes. Fine-tune on the texts with
    ``finetune.finetune`` at UniDetox's learning rate(s) and step grid, and tune the step count on the
    source model with ``select_unidetox(results, method="samples")``. Keyword arguments override
    ``sample_plain``'s. Returns ``sample_plain``'s ``(texts, stats)``.
    """
    from . import distill

    settings = dict(n_texts=profile["distill_n_texts"], max_new_tokens=profile["distill_max_new_tokens"],
                    batch_size=profile["distill_batch_size"], temperature=profile["distill_temperature"],
                    top_k=profile["distill_top_k"], seed=seed)
    settings.update(sample_kwargs)
    return distill.sample_plain(model, tokenizer, **settings)


# ----------------------------------------------------------------------------------------- LM-Steer
DEFAULT_LMSTEER_INIT_STD = math.sqrt(1e-3)


class LMSteer:
    """Steer a causal LM's output layer: ``h -> h + epsilon * W h`` on the LM head's input ``h``.

    LM-Steer (Han et al., 2024, "Word Embeddings Are Steers for Language Models"): logits are
    ``h^T (e_v + eps W e_v)`` for output embeddings ``e_v``, i.e. ``(h + eps W^T h)^T e_v``; since
    ``W`` is learned, steering ``h`` with ``W`` is the same family (the official code steers ``h``,
    as here). The seed writes ``e'(x) = e(x) - eps W e(x)`` and tunes ``eps`` in
    ``[-0.1 eps, ..., -2.0 eps]``; we keep one sign convention: ``W`` is learned with ``+eps``
    (towards the toxic corpus) and evaluation uses a *negative* ``epsilon`` (away from it).

    Installed as hooks on ``model.get_output_embeddings()`` (GPT-2's, OPT's and LLaMA's
    ``lm_head``), so the model object, its weights and its KV cache are untouched; ``remove()``
    (or leaving the ``with`` block) restores the plain model. Two numerical paths:

    - float32 head input, no autocast: a forward *pre*-hook replaces ``h`` by ``h + eps W h``
      (the formula, exactly);
    - bf16/fp16 weights or autocast: with ``|eps| <= 2e-3``, ``eps W h`` is typically far below
      the last digit of ``h`` in a 16-bit sum (bf16 keeps ~3 significant digits), which would
      silently turn LM-Steer off on the paper's GPU profile. A forward hook therefore adds ``eps * (W h) E^T`` to the logits in float32
      instead -- the same thing by linearity of the head (the head's bias is not added twice) --
      and returns float32 logits.
    """

    def __init__(self, model, W: torch.Tensor, epsilon: float):
        head = model.get_output_embeddings()
        if head is None or not hasattr(head, "weight"):
            raise ValueError(f"{type(model).__name__} has no output embedding layer (get_output_embeddings()); "
                             "LM-Steer needs a linear LM head.")
        if getattr(head, "_unidetox_lm_steer", None) is not None:
            raise RuntimeError("this model is already steered; remove() the active LMSteer first.")
        d = head.weight.shape[1]
        if W.ndim != 2 or tuple(W.shape) != (d, d):
            raise ValueError(f"W has shape {tuple(W.shape)}, but this model's LM head takes {d}-dimensional "
                             f"inputs; W must be ({d}, {d}) -- was it trained on another model?")
        if not math.isfinite(float(epsilon)):
            raise ValueError(f"epsilon={epsilon!r} must be a finite number (e.g. -1e-3).")
        self.head = head
        # Keep the caller's tensor when it already lives on the head's device (so training's
        # gradients reach it); otherwise a float32 copy there.
        self.W = W if W.device == head.weight.device else W.detach().to(head.weight.device, torch.float32)
        self.epsilon = float(epsilon)
        self._steered_input = False
        self._handles = [head.register_forward_pre_hook(self._pre_hook), head.register_forward_hook(self._hook)]
        head._unidetox_lm_steer = self

    def _exact_path(self, h: torch.Tensor) -> bool:
        return (h.dtype == torch.float32 and self.head.weight.dtype == torch.float32
                and not torch.is_autocast_enabled(h.device.type))

    def _pre_hook(self, module, args):
        h = args[0]
        self._steered_input = self._exact_path(h)
        if not self._steered_input:
            return None
        return (h + self.epsilon * F.linear(h, self.W.to(h.dtype)),) + tuple(args[1:])

    def _hook(self, module, args, output):
        if self._steered_input:
            return None
        h = args[0]
        steered = F.linear(h, self.W.to(h.dtype))  # W h, in the head's precision (relative error ~2^-8)
        delta = F.linear(steered.to(module.weight.dtype), module.weight)  # (W h) E^T, no bias
        return output.float() + self.epsilon * delta.float()

    def remove(self) -> None:
        """Take the hooks off: the model is the plain model again."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if getattr(self.head, "_unidetox_lm_steer", None) is self:
            self.head._unidetox_lm_steer = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()
        return False


def apply_lm_steer(model, W: torch.Tensor, epsilon: float) -> LMSteer:
    """Steer ``model`` with LM-Steer (Han et al., 2024): ``h -> h + epsilon * W h`` before the LM head.

    Use as a context manager -- ``with apply_lm_steer(model, W, -1e-3): generate_continuations(...)``
    -- or keep the returned handle and call ``.remove()``. Generation keeps its KV cache: only the
    last layer's output projection changes. At evaluation ``epsilon = multiplier * lmsteer_epsilon``
    with multipliers ``-0.1, ..., -2.0`` (App. B.3); ``epsilon = 0`` gives the base model's logits
    exactly. See ``LMSteer`` for the float32 / bf16 paths.
    """
    return LMSteer(model, W, epsilon)


def _lm_steer_batches(model, tokenizer, texts, max_length, prepend_bos):
    from .finetune import tokenize_texts

    if isinstance(texts, str) or not texts:
        raise ValueError("texts must be a non-empty list of strings (the toxic corpus).")
    return tokenize_texts(tokenizer, list(texts), max_length, prepend_bos), pad_id_of(tokenizer)


def train_lm_steer(
    model,
    tokenizer,
    texts: Sequence[str],
    *,
    epsilon: float = 1e-3,
    lr: float = 1e-2,
    batch_size: int = 32,
    epochs: int | None = None,
    steps: int | None = None,
    max_length: int = 512,
    seed: int = 0,
    init_std: float = DEFAULT_LMSTEER_INIT_STD,
    grad_accum: int = 1,
    bf16=False,
    prepend_bos: bool = True,
    progress: bool = True,
    on_step: Callable[[int, float], None] | None = None,
) -> torch.Tensor:
    """Learn LM-Steer's steering matrix ``W`` (Han et al., 2024) on toxic ``texts``; return it.

    App. B.3: ``W`` (d x d, d = the LM head's input size) starts from a zero-mean Gaussian with
    variance 1e-3 -- read literally, ``init_std = sqrt(1e-3) ~= 0.032`` (the official LM-Steer code
    multiplies ``randn`` by its ``init_var``, i.e. uses it as a standard deviation; pass
    ``init_std=1e-3`` for that reading). All model weights are frozen; only ``W`` is trained, with
    Adam (lr 1e-2), batch 32, 3 epochs (the default when neither ``steps`` nor ``epochs`` is
    given), ``epsilon = 1e-3``, minimising the mean token NLL of the
    steered model ``h -> h + epsilon W h`` on the toxic corpus (the same texts as the toxic model,
    Section 3.1). Differences from the official code, on purpose: a full-rank ``W`` (the official
    one is a rank-1000 product ``P2 P1^T``), as the seed describes one matrix.

    Batching, data order and the loss are ``finetune``'s (shuffle per epoch from ``seed``, right
    padding, loss on real tokens only, a start token prepended), so the two recipes differ only in
    what is trained. The model runs in eval mode (no dropout): its weights are fixed, and
    deterministic features make the result depend on ``seed`` only. ``on_step(step, loss)`` is
    called after each step. The model's weights and ``requires_grad`` flags are as before on return.
    Returns ``W`` (float32, on the LM head's device); save it with ``save_steering_matrix``.
    """
    from .finetune import training_steps
    from .forward import training_bf16

    if steps is None and epochs is None:
        epochs = 3  # the paper's recipe
    if steps is not None and epochs is not None:
        raise ValueError("give at most one of steps= or epochs= (default: the paper's epochs=3).")
    for name, value in dict(steps=steps, epochs=epochs).items():
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
            raise ValueError(f"{name}={value!r} must be a positive integer.")
    for name, value in dict(batch_size=batch_size, grad_accum=grad_accum, max_length=max_length).items():
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name}={value!r} must be a positive integer.")
    for name, value in dict(epsilon=epsilon, lr=lr, init_std=init_std).items():
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name}={value!r} must be a positive number (paper: epsilon 1e-3, lr 1e-2).")
    sequences, pad_id = _lm_steer_batches(model, tokenizer, texts, max_length, prepend_bos)
    total_steps = steps if steps is not None else epochs * math.ceil(len(sequences) / batch_size)

    head = model.get_output_embeddings()
    d = head.weight.shape[1]
    generator = torch.Generator().manual_seed(seed)
    W = (torch.randn(d, d, generator=generator, dtype=torch.float32) * init_std).to(head.weight.device)
    W.requires_grad_(True)
    optimizer = torch.optim.Adam([W], lr=lr)

    bf16_on = training_bf16(bf16, model)
    flags = [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    from tqdm.auto import tqdm

    bar = tqdm(total=total_steps, disable=not progress, desc="lm-steer", unit="step", leave=False)
    try:
        for p, _ in flags:  # frozen: no gradient is computed for (or stored in) the model's weights
            p.requires_grad_(False)
        model.eval()
        with apply_lm_steer(model, W, epsilon):
            for step, loss, _ in training_steps(model, optimizer, sequences, batch_size=batch_size, seed=seed,
                                                pad_id=pad_id, total_steps=total_steps, grad_accum=grad_accum,
                                                bf16=bf16_on):
                bar.update(1)
                if on_step is not None:
                    on_step(step, loss)
    finally:
        bar.close()
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)
    return W.detach()


@torch.no_grad()
def lm_steer_loss(model, tokenizer, texts: Sequence[str], W: torch.Tensor | None, epsilon: float,
                  *, max_length: int = 512, batch_size: int = 32, prepend_bos: bool = True) -> float:
    """Mean per-token NLL of ``texts`` under the model steered by ``(W, epsilon)`` (``W=None``: unsteered).

    The quantity ``train_lm_steer`` minimises, for checking that training worked.
    """
    from .finetune import summed_token_nll

    sequences, pad_id = _lm_steer_batches(model, tokenizer, texts, max_length, prepend_bos)
    device = model_device(model)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        steer = apply_lm_steer(model, W, epsilon) if W is not None else None
        try:
            for start in range(0, len(sequences), batch_size):
                ids, mask = right_pad(sequences[start:start + batch_size], pad_id, device)
                nll, n = summed_token_nll(model, ids, mask)
                total, count = total + float(nll), count + n
        finally:
            if steer is not None:
                steer.remove()
    finally:
        model.train(was_training)
    return total / max(count, 1)


def save_steering_matrix(W: torch.Tensor, path, **metadata) -> Path:
    """Write ``W`` as a safetensors file (atomically); ``metadata`` (e.g. ``epsilon=1e-3``,
    ``model="..."``) is stored beside it as strings."""
    from safetensors.torch import save_file

    path = Path(path)
    with atomic_path(path) as tmp:
        save_file({"W": W.detach().to("cpu", torch.float32).contiguous()}, str(tmp),
                  metadata={str(k): str(v) for k, v in metadata.items()})
    return path


def load_steering_matrix(path, device: str | torch.device = "cpu") -> torch.Tensor:
    """Read a steering matrix written by ``save_steering_matrix``."""
    from safetensors.torch import load_file

    if not Path(path).exists():
        raise FileNotFoundError(f"{str(path)!r} does not exist; train W with train_lm_steer and save it with "
                                "save_steering_matrix first.")
    return load_file(str(path), device=str(device))["W"]


# ----------------------------------------------------------------------------------------- DExperts
class DExpertsProcessor:
    """One batch's DExperts (anti-expert only) logits processor; made by ``dexperts_processor_factory``.

    Holds the toxic model's KV cache for the batch: its first call runs the whole left-padded prompt
    (attention mask, position ids counted over real tokens, as ``generate`` does for the base model;
    identical rows -- the samples of one prompt -- are run once and their cache copied), later
    calls feed only the tokens the toxic model has not seen yet.
    """

    def __init__(self, toxic_model, beta: float, prompt_input_ids: torch.Tensor, prompt_attention_mask: torch.Tensor):
        self.toxic_model = toxic_model
        self.beta = float(beta)
        self.device = model_device(toxic_model)
        self.prompt_len = prompt_input_ids.shape[1]
        self.prompt_mask = prompt_attention_mask.to(self.device)
        self.cache = None
        self.seen = 0  # tokens of the sequence already in the toxic cache
        self.next_position = None
        self.last_logprobs = None

    def attention_mask(self, length: int) -> torch.Tensor:
        """The prompt's mask followed by ones for every generated token (as ``generate`` attends)."""
        rows = self.prompt_mask.shape[0]
        extra = torch.ones((rows, length - self.prompt_len), dtype=self.prompt_mask.dtype, device=self.device)
        return torch.cat([self.prompt_mask, extra], dim=1)

    @torch.inference_mode()
    def toxic_logprobs(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``log p_toxic(. | input_ids)`` for the last position, ``(rows, vocab)`` float32."""
        length = input_ids.shape[1]
        if length < self.prompt_len or (self.cache is not None and length < self.seen):
            raise ValueError(f"input_ids has {length} columns, fewer than the {max(self.prompt_len, self.seen)} "
                             "already seen; a DExperts processor serves one batch's growing sequence only.")
        if self.cache is not None and length == self.seen:
            return self.last_logprobs
        ids = input_ids.to(self.device)
        mask = self.attention_mask(length)
        with inference_autocast(self.toxic_model):
            if self.cache is None:
                unique_rows, inverse = torch.unique(torch.cat([ids, mask], 1), dim=0, return_inverse=True)
                unique_ids, unique_mask = unique_rows[:, :length], unique_rows[:, length:]
                positions = position_ids_from_mask(unique_mask)
                out = forward_cached(self.toxic_model, unique_ids, unique_mask, positions, cache=None, last_only=True)
                self.cache = out_cache(out)
                logits = out.logits[:, -1, :]
                if unique_rows.shape[0] != ids.shape[0]:
                    self.cache.batch_select_indices(inverse)
                    logits = logits.index_select(0, inverse)
                self.next_position = positions.index_select(0, inverse)[:, -1] + 1
            else:
                new = ids[:, self.seen:]
                positions = self.next_position[:, None] + torch.arange(new.shape[1], device=self.device)
                out = forward_cached(self.toxic_model, new, mask, positions, cache=self.cache, last_only=False)
                self.cache = out_cache(out)
                logits = out.logits[:, -1, :]
                self.next_position = self.next_position + new.shape[1]
        self.seen = length
        self.last_logprobs = torch.log_softmax(logits.float(), dim=-1)
        return self.last_logprobs

    def __call__(self, input_ids: torch.Tensor, logprobs: torch.Tensor) -> torch.Tensor:
        toxic = self.toxic_logprobs(input_ids)
        if toxic.shape != logprobs.shape:
            raise ValueError(
                f"the toxic model scores {toxic.shape[-1]} tokens but the base model {logprobs.shape[-1]}; "
                "DExperts needs a toxic model with the base model's tokenizer and vocabulary "
                "(fine-tune the toxic version from the base model itself)."
            )
        toxic = toxic.to(logprobs.device)
        # (1 + beta) log p_base - beta log p_toxic; with beta = 0 this is log p_base bit for bit.
        return (1.0 + self.beta) * logprobs - self.beta * toxic


def dexperts_processor_factory(toxic_model, beta: float) -> Callable[[torch.Tensor, torch.Tensor], DExpertsProcessor]:
    """DExperts with the anti-expert only (Liu et al., 2021), for ``generate_continuations``' hook.

    Scores ``(1 + beta) log p_base(x_t | x_<t) - beta log p_toxic(x_t | x_<t)`` and lets the usual
    temperature and nucleus (top-p 0.9) sampling act on them (the hook sees log-probabilities
    before both). The seed's formula (Section 3.2) writes ``theta_toxic`` in both terms -- a typo:
    the first is the base model. ``beta`` is tuned per model in ``[0.1, ..., 2.0]`` (App. B.3);
    ``beta = 0`` is the base model exactly. ``toxic_model`` must share the base model's tokenizer
    (it is the base model fine-tuned on the toxic corpus) and may live on another device.

    ``generate_continuations(model, tok, prompts, logits_processor_factory=dexperts_processor_factory(toxic, 1.0))``
    """
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not math.isfinite(beta):
        raise ValueError(f"beta={beta!r} must be a finite number (the paper tunes 0.1 ... 2.0).")
    if beta < 0:
        raise ValueError(f"beta={beta!r} is negative, which would *reward* the toxic model; use beta >= 0.")
    toxic_model.eval()

    def factory(prompt_input_ids: torch.Tensor, prompt_attention_mask: torch.Tensor) -> DExpertsProcessor:
        return DExpertsProcessor(toxic_model, beta, prompt_input_ids, prompt_attention_mask)

    return factory


# -------------------------------------------------------------------------------- Task Arithmetic
@torch.no_grad()
def task_arithmetic(base, toxic, lam: float, *, out=None):
    """Task Arithmetic (Ilharco et al., 2023): ``theta = theta_base - lam * (theta_toxic - theta_base)``.

    The toxicity vector ``tau_toxic = theta_toxic - theta_base`` is subtracted ``lam`` times
    (seed Section 3.2; ``lam`` tuned per model in ``[0.01, ..., 0.2]``, App. B.3). Computed as the
    algebraically equal ``(1 + lam) theta_base - lam theta_toxic``, in float32 per tensor, so
    ``lam = 0`` returns the base weights and ``lam = -1`` the toxic weights bit for bit.

    Returns a new model (a deep copy of ``base``) and modifies neither input. To sweep a grid
    without allocating a model per value, pass ``out=`` a model of the same architecture (e.g. the
    result of the previous call) to be overwritten. Non-float tensors (integer buffers) are copied
    from ``base``. Raises if the two models' parameters do not match by name and shape.
    """
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not math.isfinite(lam):
        raise ValueError(f"lam={lam!r} must be a finite number (the paper tunes 0.01 ... 0.2).")
    if out is base or out is toxic:
        raise ValueError("out= must be a separate model, not base or toxic (task_arithmetic never edits its inputs).")
    base_state, toxic_state = base.state_dict(), toxic.state_dict()
    missing = sorted(set(base_state) ^ set(toxic_state))
    if missing:
        raise ValueError(f"base and toxic models have different parameters (e.g. {missing[:3]}); the toxic model "
                         "must be the base model fine-tuned, same architecture.")
    shapes = [k for k in base_state if base_state[k].shape != toxic_state[k].shape]
    if shapes:
        raise ValueError(f"parameter {shapes[0]!r} has shape {tuple(base_state[shapes[0]].shape)} in base but "
                         f"{tuple(toxic_state[shapes[0]].shape)} in toxic; they must be the same architecture.")
    if out is None:
        out = copy.deepcopy(base)
    out_state = out.state_dict()
    if set(out_state) != set(base_state):
        raise ValueError("out= has other parameters than base; pass a model of the same architecture.")
    lam = float(lam)
    for name, target in out_state.items():
        # Read from base (never from out): tied weights appear under two names in out's state dict,
        # and the second write must not start from the first one's result.
        b = base_state[name]
        if not torch.is_floating_point(b):
            target.copy_(b)
            continue
        t = toxic_state[name].to(b.device)
        value = (1.0 + lam) * b.float() - lam * t.float()
        target.copy_(value.to(device=target.device, dtype=target.dtype))
    out.eval()
    return out


# ------------------------------------------------------------------------------ grids and results
def baseline_grid(profile: dict) -> dict[str, tuple[str, list[float]]]:
    """``{method: (hyper-parameter name, values)}`` for the per-model baselines of a profile.

    LM-Steer's values are multipliers of ``profile["lmsteer_epsilon"]`` (steer with
    ``multiplier * lmsteer_epsilon``). The mini and tiny profiles use coarser grids than the paper.
    """
    return methods.grids(profile)


def results_row(method: str, model: str, hparam: str | None, value, metrics: dict, *, split: str, seed: int,
                **extra) -> dict:
    """One row of the results table from a metrics dict with ``TP``, ``EMT``, ``PPL``, ``dist1..3``.

    Missing metrics become NaN (e.g. a run scored for toxicity only); ``extra`` adds optional
    columns such as ``lr=5e-5`` or ``domain="religion"``.
    """
    row = {"method": method, "model": model, "hparam": hparam, "value": value}
    for column in ("TP", "EMT", "PPL", "dist1", "dist2", "dist3"):
        row[column] = float(metrics[column]) if metrics.get(column) is not None else float("nan")
    row.update(split=split, seed=seed, **extra)
    return row


PSEUDO_DOMAINS = ("ID", "OOD", "all")


def aggregate_results(results: pd.DataFrame, split: str | None = "val") -> pd.DataFrame:
    """One row per (method, model, hparam, value[, lr]) grid point: metrics averaged over seeds and domains.

    - ``split``: keep only rows of that split (``None``: no filter; a table without a ``split``
      column is taken as it is).
    - Domains: if a ``domain`` column is present, rows with ``domain == "all"`` are used when there
      are any (``metrics.toxicity_table``'s average over all domains); otherwise the real domains
      (not ``ID``/``OOD``) are averaged with equal weight -- the "average across all domains" of
      Section 3.4. Without a ``domain`` column, ``TP`` is taken to be that average already.
    - Seeds: a plain mean; ``n_seeds`` says how many there were.
    """
    missing = [c for c in ("method", "model", "hparam", "value", "TP", "PPL") if c not in results.columns]
    if missing:
        raise ValueError(f"results lack column(s) {missing}; expected {RESULT_COLUMNS} (see results_row).")
    frame = results.copy()
    if split is not None and "split" in frame.columns:
        frame = frame[frame["split"] == split]
        if frame.empty:
            raise ValueError(f"results have no rows of split {split!r} (splits present: "
                             f"{sorted(results['split'].dropna().unique())}).")
    keys = ["method", "model", "hparam", "value"] + (["lr"] if "lr" in frame.columns else [])
    metrics = [c for c in ("TP", "EMT", "PPL", "dist1", "dist2", "dist3") if c in frame.columns]
    seed_key = ["seed"] if "seed" in frame.columns else []
    if "domain" in frame.columns:
        if (frame["domain"] == "all").any():
            frame = frame[frame["domain"] == "all"]
        else:
            frame = frame[~frame["domain"].isin(PSEUDO_DOMAINS)]
            frame = frame.groupby(keys + seed_key, dropna=False, sort=False)[metrics].mean().reset_index()
    grouped = frame.groupby(keys, dropna=False, sort=False)
    table = grouped[metrics].mean()
    table["n_seeds"] = grouped[seed_key[0]].nunique() if seed_key else 1
    return table.reset_index()


# ---------------------------------------------------------------------------------- tuning rule
def infer_source_model(results: pd.DataFrame, method: str = UNIDETOX) -> str:
    """The model ``method`` was tuned on: the one with the most evaluated step counts."""
    rows = results[results["method"] == method]
    if rows.empty:
        raise ValueError(f"results have no {method!r} rows; evaluate its step grid on the source model first.")
    counts = rows.groupby("model")["value"].nunique().sort_values(ascending=False)
    if len(counts) > 1 and counts.iloc[0] == counts.iloc[1]:
        raise ValueError(f"cannot tell which model {method} was tuned on ({dict(counts)}); pass source_model=.")
    return str(counts.index[0])


def select_unidetox(results: pd.DataFrame, method: str = UNIDETOX, *, source_model: str | None = None,
                    split: str = "val") -> pd.DataFrame:
    """UniDetox's (or Samples') tuning rule (seed Section 3.4, App. B.3), on the **source** model.

    For each learning rate, the step count with the lowest validation TP averaged over all domains;
    the learning rate whose best step has the lowest TP overall is flagged ``best``. The selection
    is then reused unchanged on every other model (Table 6: 3,000 steps at 5e-5, 5,000 at 1e-5).
    Ties in TP go to the lower perplexity, then the fewer steps.

    Returns one row per learning rate (``lr``, ``value`` = steps, metrics, ``best``), best first.
    ``source_model`` defaults to the model with the most evaluated step counts.
    """
    source_model = source_model or infer_source_model(results, method)
    table = aggregate_results(results, split)
    rows = table[(table["method"] == method) & (table["model"] == source_model)].copy()
    if rows.empty:
        raise ValueError(f"no {split!r} rows for method {method!r} on model {source_model!r}.")
    if "lr" not in rows.columns:
        rows["lr"] = np.nan
    rows = rows.sort_values(["TP", "PPL", "value"], kind="stable", na_position="last")
    chosen = rows.groupby("lr", dropna=False, sort=False).head(1).copy()
    chosen["best"] = False
    chosen.iloc[0, chosen.columns.get_loc("best")] = True
    return chosen.reset_index(drop=True)


def ppl_ceiling(results: pd.DataFrame, model: str, *, factor: float = 1.1, method: str = UNIDETOX,
                source_model: str | None = None, split: str = "val", with_base: bool = False) -> float:
    """The perplexity limit of the per-model baselines on ``model`` (seed Section 3.4).

    ``factor`` (1.1, profile key ``ppl_rule_factor``) times the highest validation perplexity of
    UniDetox on ``model`` across its learning rates, each at the step count ``select_unidetox``
    chose for it on the source model. The paper's rule assumes UniDetox keeps the base model's
    fluency; where UniDetox's perplexity collapses below the base model's (a model that repeats
    itself is easy to predict), its ceiling lies below the unmodified model's own perplexity and no
    baseline can meet it. ``with_base=True`` gives the stated alternative, ``factor`` x the larger of
    UniDetox's and the base model's perplexity.
    """
    selections = select_unidetox(results, method, source_model=source_model, split=split)
    table = aggregate_results(results, split)
    rows = table[(table["method"] == method) & (table["model"] == model)]
    if "lr" not in rows.columns:
        rows = rows.assign(lr=np.nan)
    perplexities = []
    for _, chosen in selections.iterrows():
        same_lr = rows["lr"].isna() if pd.isna(chosen["lr"]) else np.isclose(rows["lr"].astype(float), chosen["lr"])
        match = rows[same_lr & (rows["value"] == chosen["value"])]
        if match.empty or match["PPL"].isna().all():
            raise ValueError(f"no {split!r} perplexity for {method} on {model!r} at lr={chosen['lr']}, "
                             f"{chosen['hparam']}={chosen['value']} (the configuration chosen on the source model); "
                             "evaluate it before tuning the baselines.")
        perplexities.append(float(match["PPL"].max()))
    if with_base:
        base = table[(table["method"] == "base") & (table["model"] == model)]
        if base.empty or base["PPL"].isna().all():
            raise ValueError(f"no {split!r} perplexity of the base model {model!r}; evaluate it first (with_base=True).")
        perplexities.append(float(base["PPL"].max()))
    return factor * max(perplexities)


def select_baseline(results: pd.DataFrame, method: str, model: str, ppl_ceiling: float, *,
                    split: str = "val") -> pd.Series:
    """The per-model tuning rule of LM-Steer, DExperts and Task Arithmetic (seed Section 3.4).

    Among ``method``'s grid values on ``model`` whose validation perplexity is ``<= ppl_ceiling``
    (see ``ppl_ceiling``), the one with the lowest validation TP averaged over all domains; ties go
    to the lower perplexity, then the weaker intervention (smaller ``|value|``).

    When **no value meets the ceiling**, the rule has no answer. We return the value with the
    lowest perplexity -- the one closest to satisfying it -- with ``meets_ppl_rule = False`` and a
    warning, so the book can report the baseline and say that it broke the fluency budget, rather
    than drop it or quietly pick a degenerate low-TP setting.

    Returns the chosen aggregated row plus ``meets_ppl_rule``, ``ppl_ceiling`` and
    ``n_within_ceiling`` (how many values met it).
    """
    if not (isinstance(ppl_ceiling, (int, float)) and not math.isnan(ppl_ceiling)):
        raise ValueError(f"ppl_ceiling={ppl_ceiling!r} must be a number; compute it with ppl_ceiling(results, model).")
    table = aggregate_results(results, split)
    rows = table[(table["method"] == method) & (table["model"] == model)].copy()
    if rows.empty:
        raise ValueError(f"no {split!r} rows for method {method!r} on model {model!r}.")
    rows["abs_value"] = rows["value"].astype(float).abs()
    within = rows[rows["PPL"] <= ppl_ceiling]
    if within.empty:
        chosen = rows.sort_values(["PPL", "TP", "abs_value"], kind="stable", na_position="last").iloc[0].copy()
        warnings.warn(
            f"{method} on {model}: no value has perplexity <= {ppl_ceiling:.4g} (lowest: {rows['PPL'].min():.4g}); "
            f"reporting the lowest-perplexity value {chosen['hparam']}={chosen['value']} with meets_ppl_rule=False.",
            stacklevel=2,
        )
        meets = False
    else:
        chosen = within.sort_values(["TP", "PPL", "abs_value"], kind="stable").iloc[0].copy()
        meets = True
    chosen = chosen.drop("abs_value")
    chosen["meets_ppl_rule"] = meets
    chosen["ppl_ceiling"] = float(ppl_ceiling)
    chosen["n_within_ceiling"] = int(len(within))
    return chosen


def tuned_hyperparameters(results: pd.DataFrame, models: Sequence[str] | None = None, *,
                          per_model: Sequence[str] = PER_MODEL_METHODS, factor: float = 1.1,
                          source_model: str | None = None, split: str = "val") -> pd.DataFrame:
    """Table 6 from a results table: UniDetox's and Samples' selections and every per-model choice.

    One row per (method, model) with the chosen ``value`` and its validation metrics; per-model
    baselines carry ``meets_ppl_rule`` and ``ppl_ceiling``. ``models`` defaults to every model with
    UniDetox rows.
    """
    source_model = source_model or infer_source_model(results, UNIDETOX)
    models = list(models) if models is not None else sorted(results.loc[results["method"] == UNIDETOX, "model"].unique())
    rows = []
    for method in (UNIDETOX, SAMPLES):
        if (results["method"] == method).any():
            # The configuration only: its metrics are the source model's, not each model's.
            chosen = select_unidetox(results, method, source_model=source_model, split=split)
            for _, config in chosen[["method", "lr", "hparam", "value", "best"]].iterrows():
                for model in models:
                    rows.append({**config.to_dict(), "model": model, "tuned_on": source_model})
    for model in models:
        ceiling = ppl_ceiling(results, model, factor=factor, source_model=source_model, split=split)
        for method in per_model:
            if ((results["method"] == method) & (results["model"] == model)).any():
                chosen = select_baseline(results, method, model, ceiling, split=split)
                rows.append({**chosen.to_dict(), "tuned_on": model})
    return pd.DataFrame(rows)
