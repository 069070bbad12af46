"""Analyses of distilled text for the book's chapters.

Sections (each self-contained; add new ones below their own banner):

- gradient alignment -- the first-order claim of Eq. 5 (Section 2.2, Appendix A)
"""

from __future__ import annotations

from typing import Sequence

import torch

# =============================================================================================
# Gradient alignment (Eq. 5): does contrastive decoding pick texts whose gradient points along
# -tau_toxic = theta_base - theta_toxic?
# =============================================================================================


def toxic_direction(base, toxic) -> dict[str, torch.Tensor]:
    """``-tau_toxic = theta_base - theta_toxic`` per parameter name (Section 2.2), in float32 (or
    float64 for float64 models).

    Both models must have the same parameter names and shapes (the toxic model is a fine-tune of the
    base). Tied weights are counted once, as ``named_parameters`` lists them.
    """
    base_params = dict(base.named_parameters())
    toxic_params = dict(toxic.named_parameters())
    if base_params.keys() != toxic_params.keys() or any(
        base_params[n].shape != toxic_params[n].shape for n in base_params
    ):
        raise ValueError(
            "the base and toxic models do not have the same parameters; tau_toxic = theta_toxic - theta_base "
            "only exists when the toxic model is a fine-tune of the base model (same architecture and size)."
        )
    dtype = torch.promote_types(next(iter(base_params.values())).dtype, torch.float32)
    return {
        name: param.detach().to(dtype) - toxic_params[name].detach().to(param.device, dtype)
        for name, param in base_params.items()
    }


def gradient_alignment(base, toxic, tokenizer, texts: Sequence[str], *, max_length: int = 256,
                       batch_size: int = 8, prepend_bos: bool = True):
    """Per text, how well ``grad log p_base(x)`` aligns with ``-tau_toxic`` (Eq. 5), as a DataFrame.

    Eq. 5 (first-order Taylor expansion, Appendix A)::

        s(x) = log p_base(x) - log p_toxic(x)  ~=  (theta_base - theta_toxic)^T grad_theta log p_base(x)

    Columns, one row per text (tokenised like fine-tuning: start token prepended, truncated to
    ``max_length``, so ``log p(x)`` is the probability of the whole text):

    - ``logp_base``, ``logp_toxic``: ``log p(x)`` summed over the text's tokens;
    - ``contrastive_score``: ``s(x)`` of Eq. 1 (exact, left-hand side of Eq. 5);
    - ``grad_dot``: ``(theta_base - theta_toxic)^T grad log p_base(x)`` (right-hand side of Eq. 5);
    - ``grad_norm``, ``tau_norm`` and ``cosine`` = ``grad_dot / (grad_norm * tau_norm)``;
    - ``n_tokens``: predicted tokens.

    Gradients are taken over all parameters of the base model (eval mode, no dropout), one text at a
    time because the cosine needs each text's own gradient norm; ``batch_size`` batches the toxic
    model's forward passes. Neither model's ``.grad`` is touched.
    """
    import pandas as pd

    from .finetune import model_device, summed_token_nll, tokenize_texts

    if not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size={batch_size!r} must be a positive integer.")
    if not isinstance(max_length, int) or max_length < 2:
        raise ValueError(f"max_length={max_length!r} must be an integer >= 2.")
    direction = toxic_direction(base, toxic)
    tau_norm = float(torch.sqrt(sum((d.double() ** 2).sum() for d in direction.values())))
    names, params = zip(*base.named_parameters())
    sequences = tokenize_texts(tokenizer, texts, max_length, prepend_bos)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    base_was_training, toxic_was_training = base.training, toxic.training
    base.eval()
    toxic.eval()
    rows = []
    try:
        toxic_logp = []
        with torch.no_grad():
            for start in range(0, len(sequences), batch_size):
                toxic_logp += _sequence_logprobs(toxic, sequences[start:start + batch_size], pad_id)
        for seq, logp_toxic in zip(sequences, toxic_logp):
            ids = torch.tensor([seq], device=model_device(base))
            nll, n_tokens = summed_token_nll(base, ids, torch.ones_like(ids))
            logp_base = -nll
            grads = torch.autograd.grad(logp_base, params, allow_unused=True)
            dot = norm_sq = 0.0
            for name, grad in zip(names, grads):
                if grad is None:
                    continue
                grad = grad.to(direction[name].dtype)
                dot += float((grad * direction[name].to(grad.device)).sum())
                norm_sq += float((grad.double() ** 2).sum())
            grad_norm = norm_sq ** 0.5
            logp_base = float(logp_base.detach())
            rows.append({
                "n_tokens": n_tokens,
                "logp_base": logp_base,
                "logp_toxic": logp_toxic,
                "contrastive_score": logp_base - logp_toxic,
                "grad_dot": dot,
                "grad_norm": grad_norm,
                "tau_norm": tau_norm,
                "cosine": dot / (grad_norm * tau_norm) if grad_norm > 0 and tau_norm > 0 else float("nan"),
            })
    finally:
        base.train(base_was_training)
        toxic.train(toxic_was_training)
    frame = pd.DataFrame(rows)
    frame.insert(0, "text", list(texts))
    return frame


def _sequence_logprobs(model, sequences, pad_id) -> list[float]:
    """``log p(x)`` of each (unpadded) sequence, computed in one right-padded batch."""
    import torch.nn.functional as F

    from .finetune import at_least_float32, model_device, pad_right

    batch = {k: v.to(model_device(model)) for k, v in pad_right(sequences, pad_id).items()}
    logits = at_least_float32(model(**batch).logits[:, :-1])
    labels = batch["input_ids"][:, 1:].masked_fill(batch["attention_mask"][:, 1:] == 0, -100)
    nll = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")
    return (-nll.sum(dim=1)).tolist()


# ============================================================================ end gradient alignment
