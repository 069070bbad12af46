"""Replicates of the whole pipeline: the unit of replication behind the core claims.

One build of the miniature world is one draw: another initialisation of the source model, another
order of its training data, and every later stage -- its toxic model, the distilled text, the
fine-tuning, the evaluation -- comes out different. A claim that rests on one build rests on one
draw. So the core claims on the source model are measured on ``P["replicates"]`` independent
builds of that pipeline (``world:gpt2-bpe``, ``world:gpt2-bpe~r1``, ...; see
``world.settings.replicate_overrides``), each with the settings the main run chose on its
validation prompts, and decided on the spread across replicates as well as across prompts
(``stats.hierarchical_difference``). The instruments -- tokenizers, corpus, classifiers and
evaluator -- are shared: they are the measuring device, not the thing measured.
"""

from __future__ import annotations

import pandas as pd

from . import experiments as E
from . import stats
from .world.settings import REPLICATE_MARK

CLAIM_COLUMNS = ["claim", "a", "b", "metric", "replicates", "verdict", "diff", "low", "high", "per_replicate",
                 "directions_agree", "detail"]
PROMPT_COLUMNS = ["replicate", "variant", "prompt_id", "seed", "domain"]
# (a, b, claim, expect): "lower" claims a's TP is below b's, "higher" above it.
CORE_CLAIMS = (
    ("toxic", "base", "The toxic model is more toxic than the base model", "higher"),
    ("unidetox", "base", "UniDetox lowers the source model's TP", "lower"),
    ("unidetox", "samples", "UniDetox lowers TP more than Samples", "lower"),
    ("unidetox", "cut_only", "The contrast with the toxic model, not the plausibility cut alone, detoxifies", "lower"),
)


def replicate_profile(P: dict, replicate: int) -> dict:
    """The profile of replicate ``replicate`` (0: ``P`` itself): the same settings with the source
    model replaced by its replicate, so every later stage is keyed, cached and built anew."""
    if replicate == 0:
        return P
    source = P["source_model"]
    if not source.startswith("world:"):
        raise ValueError(f"replicates={P['replicates']}: only a world source model can be rebuilt; "
                         f"{source!r} was pre-trained once, by others. Use replicates=1 on this profile.")
    return {**P, "source_model": f"{source}{REPLICATE_MARK}{replicate}"}


def chosen_setting(selected: pd.DataFrame, method: str, source: str) -> pd.Series:
    """The setting chapter 05 chose for ``method`` on the main source model: the best learning rate's row."""
    rows = selected[(selected["method"] == method) & (selected["model"] == source)]
    if rows.empty:
        raise ValueError(f"selected.csv has no {method} row for {source}; run the tuning chapter first.")
    best = rows[rows["best"].astype(str) == "True"] if "best" in rows.columns else rows
    return (best if len(best) else rows).iloc[0]


def core_variants(P: dict, replicate: int, selected: pd.DataFrame, progress: bool = False) -> dict[str, dict]:
    """The variants of one replicate, by name: its base model, its toxic model, and the model
    fine-tuned on its own UniDetox text, its Samples text and its cut-only text at the steps and
    learning rates the main run chose (``selected``). Builds what is missing."""
    Pr = replicate_profile(P, replicate)
    source = Pr["source_model"]
    uni, sam = chosen_setting(selected, "unidetox", P["source_model"]), chosen_setting(selected, "samples", P["source_model"])
    steps, lr = int(uni["value"]), float(uni["lr"])
    cut_text = E.distilled_text(Pr, "cut_only", progress=progress)
    return {
        "base": E.method_variant(Pr, "base", source),
        "toxic": E.variant("toxic", source, E.toxic_model(Pr, source, progress=progress)),
        "unidetox": E.method_variant(Pr, "unidetox", source, steps, lr, progress=progress),
        "samples": E.method_variant(Pr, "samples", source, int(sam["value"]), float(sam["lr"]), progress=progress),
        "cut_only": E.variant("cut_only", source, E.detox_checkpoints(Pr, source, cut_text, lr, progress=progress, upto=steps)[steps],
                              "steps", steps, lr=lr),
    }


def replicate_prompts(P: dict, selected: pd.DataFrame, replicates: int | None = None, split: str = "test",
                      seeds=None, progress: bool = True) -> pd.DataFrame:
    """Per-prompt results (``stats.per_prompt``) of every core variant of every replicate on ``split``
    at every seed: columns ``replicate``, ``variant``, ``split`` and the per-prompt ones. Replicate 0
    is the main run (its evaluations are the results chapter's, read back from the cache)."""
    replicates = P["replicates"] if replicates is None else replicates
    seeds = list(P["seeds"] if seeds is None else seeds)
    if replicates < 1:
        raise ValueError(f"replicates={replicates} must be at least 1 (1 = the main run only).")
    # The replicates are independent pipelines: they run side by side, one per worker. Most of a
    # replicate (pre-training, distillation) is single-threaded, so one after the other they would
    # leave a core of the 2-core machine idle.
    E.run_side_by_side(P, build_replicate, [(P, r, selected, split, seeds) for r in range(1, replicates)],
                       desc="replicates", progress=progress)
    parts = []
    for r in range(replicates):
        Pr = replicate_profile(P, r)
        variants = core_variants(P, r, selected, progress=progress)
        E.evaluate_specs(Pr, [(spec, split, seed) for spec in variants.values() for seed in seeds],
                         progress=progress, desc=f"replicate {r}")
        for name, spec in variants.items():
            for seed in seeds:
                parts.append(E.per_prompt_rows(Pr, spec, split, seed).assign(replicate=r, variant=name, split=split))
    return pd.concat(parts, ignore_index=True)


def build_replicate(P: dict, replicate: int, selected: pd.DataFrame, split: str, seeds: list[int]) -> None:
    """Build replicate ``replicate`` -- its world model, toxic model, texts, fine-tunes -- and evaluate
    its core variants on ``split``, all in this process with ``P['eval_threads']`` torch threads:
    the same numbers whether it runs here or in a worker beside another replicate."""
    Pr = {**replicate_profile(P, replicate), "eval_workers": 1}
    with E.eval_threads(P):
        variants = core_variants(P, replicate, selected)
        E.evaluate_specs(Pr, [(spec, split, int(seed)) for spec in variants.values() for seed in seeds],
                         progress=False)


def replicate_claims(prompts: pd.DataFrame, metric: str = "TP_all", *, n_boot: int = stats.N_BOOT,
                     seed: int = 0) -> pd.DataFrame:
    """``CORE_CLAIMS`` decided over the replicates of ``prompts`` (``replicate_prompts``): the mean
    difference with its two-stage bootstrap interval (replicates, then prompts within each) and the
    verdict, each replicate's own difference, and whether their directions agree."""
    missing = [c for c in ("replicate", "variant", "prompt_id", "seed", "domain") if c not in prompts.columns]
    if missing:
        raise ValueError(f"prompts lacks column(s) {missing}; pass replicates.replicate_prompts rows.")
    rows = []
    for a, b, claim, expect in CORE_CLAIMS:
        pairs = [(part[part["variant"] == a], part[part["variant"] == b]) for _, part in prompts.groupby("replicate")]
        pairs = [(x, y) for x, y in pairs if len(x) and len(y)]
        if not pairs:
            continue
        d = stats.hierarchical_difference(pairs, metric, n_boot=n_boot, seed=seed)
        each = [stats.value(x, metric) - stats.value(y, metric) for x, y in pairs]
        signs = {(v > 0) - (v < 0) for v in each}
        agree = len(signs) == 1
        rows.append(dict(claim=claim, a=a, b=b, metric=metric, replicates=len(pairs),
                         verdict=stats.verdict(d, expect=expect), diff=d.diff, low=d.low, high=d.high,
                         per_replicate=", ".join(f"{v:+.2f}" for v in each), directions_agree=agree,
                         detail=f"{metric} {a} - {b}: {d.interval()} over {len(pairs)} replicates (each: "
                                + ", ".join(f"{v:+.2f}" for v in each) + ")"
                                + ("" if agree else "; the direction differs between replicates")))
    return pd.DataFrame(rows, columns=CLAIM_COLUMNS)
