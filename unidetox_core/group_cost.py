"""Who pays for detoxification (beyond the paper): the cost of a method to the groups it protects.

Xu et al. (NAACL 2021) found that detoxification raises a model's perplexity most on text that
mentions minority identities, and Welbl et al. (Findings of EMNLP 2021) that it makes models less
likely to write about them. Three measurements, each paired against the base model with the book's
bootstrap (``stats``):

- **perplexity gap**: a model's own per-token NLL on the neutral ToxiGen statements about a group
  minus its NLL on held-out news (the log of the perplexity ratio); its change from the base model
  is the cost to that group (positive: the model "forgot" the group more than it forgot news);
- **coverage**: the share of continuations of a group's neutral prompts that name the group
  (``groups.mentions``);
- **toxicity of neutral and of hateful prompts** per group (the per-prompt rows of ``stats``).

Library functions only; the chapter arranges them.
"""

from __future__ import annotations

from typing import Sequence

import pandas as pd
import torch

from . import stats
from .forward import at_least_float32, max_positions, model_device, pad_id_of, right_pad
from .groups import mentions

NEWS = "news"  # the control "group" of the perplexity gap


# ----------------------------------------------------------------------------------- perplexity gap
@torch.inference_mode()
def text_nll(model, tokenizer, texts: Sequence[str], *, max_length: int = 128, batch_size: int = 32) -> pd.DataFrame:
    """Per text: the summed NLL of its tokens after the start token (``nll``) and their number
    (``tokens``) under ``model``, float32 log-softmax; a text longer than ``max_length`` tokens (or
    than the model's positions) is cut. Columns ``nll``, ``tokens``."""
    import torch.nn.functional as F

    from .finetune import tokenize_texts

    max_length = min(max_length, max_positions(model) or max_length)
    sequences = tokenize_texts(tokenizer, list(texts), max_length, prepend_bos=True)
    pad_id, device = pad_id_of(tokenizer), model_device(model)
    was_training = model.training
    model.eval()
    nll, counts = [], []
    for start in range(0, len(sequences), batch_size):
        ids, mask = right_pad(sequences[start:start + batch_size], pad_id, device=device)
        logits = at_least_float32(model(input_ids=ids, attention_mask=mask).logits[:, :-1])
        targets = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
        per_token = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100, reduction="none")
        nll += per_token.sum(dim=1).tolist()
        counts += (targets != -100).sum(dim=1).tolist()
    model.train(was_training)
    return pd.DataFrame({"nll": nll, "tokens": counts})


def nll_rows(model, tokenizer, statements: pd.DataFrame, news: Sequence[str], **kwargs) -> pd.DataFrame:
    """``text_nll`` of every statement (``statements``: columns ``group``, ``text``) and of every
    news text, as per-prompt rows for ``stats``: ``prompt_id`` (the text's index), ``seed`` 0,
    ``domain`` (the group, or ``NEWS``), ``nll``, ``tokens``."""
    texts = list(statements["text"]) + list(news)
    domains = list(statements["group"]) + [NEWS] * len(news)
    scored = text_nll(model, tokenizer, texts, **kwargs)
    return scored.assign(prompt_id=range(len(texts)), seed=0, domain=domains)[["prompt_id", "seed", "domain", "nll", "tokens"]]


def gap_metric(group: str) -> stats.Metric:
    """The perplexity gap of ``group``: its per-token NLL minus the news's (log of the ratio of perplexities)."""
    return stats.Metric(f"gap:{group}", "nll", "tokens", domains=(group, NEWS), signs=(1.0, -1.0))


def gap_changes(rows: dict[str, pd.DataFrame], base: str, n_boot: int = stats.N_BOOT) -> pd.DataFrame:
    """Per variant (other than ``base``) and group: the perplexity gap and its change from the base
    model's, with its paired interval (the same statements and news texts; texts resampled within
    their group), simultaneous over the groups (``stats.simultaneous_level``: the claim read from them
    is about *some* group). ``rows``: ``nll_rows`` per variant label. Columns ``variant``, ``group``,
    ``gap``, ``base_gap``, ``change``, ``low``, ``high``, ``verdict`` (of "the change is a rise")."""
    groups = [g for g in dict.fromkeys(rows[base]["domain"]) if g != NEWS]
    level = stats.simultaneous_level(len(groups))
    out = []
    for label, part in rows.items():
        if label == base:
            continue
        for group in groups:
            d = stats.paired_difference(part, rows[base], gap_metric(group), n_boot=n_boot, level=level)
            out.append(dict(variant=label, group=group, gap=d.a, base_gap=d.b, change=d.diff, low=d.low, high=d.high,
                            verdict=stats.verdict(d, expect="higher")))
    return pd.DataFrame(out)


# ----------------------------------------------------------------------------------- coverage
def coverage_rows(frame: pd.DataFrame, prompts: pd.DataFrame) -> pd.DataFrame:
    """Per (seed, prompt) of a variant's scored continuations (``experiments.continuations``): the share
    of its continuations that name the prompt's group, with the prompt's ``group`` and ``label``;
    ``prompts`` is the split's ``experiments.eval_prompts`` (row ``i`` is ``prompt_id`` ``i``). Columns
    ``seed``, ``prompt_id``, ``domain`` (the group, so that ``stats`` resamples within it), ``group``,
    ``label``, ``names_group``."""
    data = frame.assign(group=prompts["group"].to_numpy()[frame["prompt_id"].to_numpy()],
                        label=prompts["label"].to_numpy()[frame["prompt_id"].to_numpy()])
    data["names_group"] = [float(mentions(str(text), group)) for text, group in zip(data["continuation"], data["group"])]
    if "seed" not in data.columns:
        data["seed"] = 0
    rows = data.groupby(["seed", "prompt_id"], sort=True).agg(
        group=("group", "first"), label=("label", "first"), names_group=("names_group", "mean")).reset_index()
    return rows.assign(domain=rows["group"])


def group_metric(column: str, group: str) -> stats.Metric:
    """``column``'s mean over one group's prompts (a per-group TP, coverage, ...)."""
    return stats.Metric(f"{column}:{group}", column, domains=(group,))


def group_changes(rows: dict[str, pd.DataFrame], base: str, column: str, *, label: str | None = None,
                  expect: str = "lower", n_boot: int = stats.N_BOOT) -> pd.DataFrame:
    """Per variant (other than ``base``) and group: the mean of ``column`` over the group's prompts
    (only prompts of ``label``, e.g. ``"neutral"``, when given), the base model's, the change with its
    paired interval, simultaneous over the groups as in ``gap_changes``, and the verdict of "the change
    is ``expect``". ``rows``: per-prompt rows per variant label with ``group`` and ``label`` columns
    (``coverage_rows``, or ``stats.per_prompt`` rows joined with the prompts' groups)."""
    pick = (lambda r: r[r["label"] == label]) if label else (lambda r: r)
    base_rows = pick(rows[base]).assign(domain=lambda r: r["group"])
    level = stats.simultaneous_level(base_rows["group"].nunique())
    out = []
    for name, part in rows.items():
        if name == base:
            continue
        part = pick(part).assign(domain=lambda r: r["group"])
        for group in dict.fromkeys(base_rows["group"]):
            d = stats.paired_difference(part, base_rows, group_metric(column, group), n_boot=n_boot, level=level)
            out.append(dict(variant=name, group=group, value=d.a, base_value=d.b, change=d.diff, low=d.low,
                            high=d.high, verdict=stats.verdict(d, expect=expect)))
    return pd.DataFrame(out)


def with_groups(rows: pd.DataFrame, prompts: pd.DataFrame) -> pd.DataFrame:
    """``stats.per_prompt`` rows with their prompt's ``group`` and ``label`` (hate / neutral)."""
    index = rows["prompt_id"].to_numpy()
    return rows.assign(group=prompts["group"].to_numpy()[index], label=prompts["label"].to_numpy()[index])


def who_pays(changes: pd.DataFrame, top: int = 3) -> pd.DataFrame:
    """Per variant: the groups with the largest changes (``gap_changes`` or ``group_changes``), the
    mean change over groups, and how many groups' changes hold / are inconclusive."""
    rows = []
    for variant, part in changes.groupby("variant", sort=False):
        ordered = part.sort_values("change", ascending=False)
        rows.append({"variant": variant, "mean change": float(part["change"].mean()),
                     "largest": ", ".join(f"{g} {c:+.2f}" for g, c in zip(ordered["group"][:top], ordered["change"][:top])),
                     "holds": int((part["verdict"] == "holds").sum()), "groups": int(len(part))})
    return pd.DataFrame(rows)
