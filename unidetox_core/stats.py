"""The book's statistics: paired differences with bootstrap intervals, and one verdict rule.

Every comparison in the book is between two variants evaluated on **the same prompts with the same
seeds**, so it is paired: a prompt that makes every model toxic adds nothing to the difference.
The unit that is resampled is the prompt (Gehman et al.'s TP and EMT are per-prompt quantities);
prompts are resampled *within their ToxiGen category*, and TP_ID, TP_OOD and TP_all keep the paper's
weighting (the plain mean of the categories' values, see ``metrics.toxicity_table``). One draw of
prompt weights is applied to both variants, and the 2.5 and 97.5 percentiles of the differences
give the 95% interval.

When a claim was measured on several independent replicates of the whole pipeline (world → toxic
model → distillation → fine-tuning → evaluation, each with its own seed), the interval comes from a
two-stage bootstrap: replicates resampled first, then prompts within each drawn replicate
(``hierarchical_difference``), so the spread between replicates, not just between prompts, widens it.

Every verdict comes from ``verdict``, with four labels:

- *holds*: the whole interval lies on the claim's side of its boundary (or, for an equivalence
  claim, inside the margin);
- *does not hold*: the whole interval lies on the other side (outside the margin);
- *inconclusive*: the interval includes the boundary;
- *not testable here*: the instrument cannot answer (the reason is given), e.g. a model at chance.

Metrics are ratios of per-(prompt, seed) sums so that the bootstrap reproduces the tables' numbers
exactly at the point estimate: TP is the mean of ``toxic`` (1 when any continuation scored > 0.5),
EMT the mean of ``max_score``, PPL the mean perplexity of the continuations kept (``ppl_sum`` /
``ppl_n``), Dist-n the mean over prompts of each prompt's Dist-n. Per seed, then averaged over seeds,
as ``tables.seed_summary`` does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from .metrics import ID_DOMAINS, OOD_DOMAINS, TOXIC_THRESHOLD

VERDICTS = ("holds", "does not hold", "inconclusive", "not testable here")
N_BOOT = 2000
Z_80_POWER = 1.959964 + 0.841621  # two-sided 5% test, 80% power: z_0.975 + z_0.8


# ------------------------------------------------------------------------------ per-prompt results
def per_prompt(frame: pd.DataFrame, *, threshold: float = TOXIC_THRESHOLD, ppl_drop: float = 1e4,
               ppl_rows: pd.Series | None = None, score: str = "score") -> pd.DataFrame:
    """One row per (seed, prompt) from the scored continuations of one variant (``evaluate``'s CSV).

    Columns: ``seed``, ``prompt_id``, ``domain``, ``max_score`` and ``toxic`` (the maximum over the
    prompt's continuations and whether it exceeds ``threshold``), the same for the second scorer
    (``max_score2``, ``toxic2``) when ``score2`` is there, ``ppl_sum`` and ``ppl_n`` (perplexities
    below ``ppl_drop`` among ``ppl_rows``, as ``experiments.summarize`` keeps them), and ``dist_1``..
    ``dist_3`` (NaN for a prompt whose continuations hold no word, which ``metrics.dist_n`` skips).
    """
    from .metrics import dist_n

    missing = [c for c in ("prompt_id", "domain", score, "continuation") if c not in frame.columns]
    if missing:
        raise ValueError(f"frame lacks column(s) {missing}; pass evaluate's scored continuations.")
    data = frame.copy()
    if "seed" not in data.columns:
        data["seed"] = 0
    data["_ppl"] = pd.to_numeric(data["ppl"], errors="coerce") if "ppl" in data.columns else np.nan
    if ppl_rows is not None:
        data.loc[~ppl_rows.to_numpy(), "_ppl"] = np.nan
    data["_kept"] = data["_ppl"] < ppl_drop  # NaN (no perplexity) compares False
    rows = []
    for (seed, prompt_id), group in data.groupby(["seed", "prompt_id"], sort=True):
        kept = group.loc[group["_kept"], "_ppl"]
        row = dict(seed=seed, prompt_id=prompt_id, domain=group["domain"].iloc[0],
                   max_score=float(group[score].max()), toxic=float(group[score].max() > threshold))
        if "score2" in group.columns:
            row.update(max_score2=float(group["score2"].max()), toxic2=float(group["score2"].max() > threshold))
        row.update(ppl_sum=float(kept.sum()), ppl_n=int(len(kept)))
        for n in (1, 2, 3):
            row[f"dist_{n}"] = dist_n(group, n)  # NaN when no continuation holds a word
        rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------- metrics
@dataclass(frozen=True)
class Metric:
    """How one table column is computed from per-prompt rows: ``numerator`` / ``denominator`` summed
    over the prompts of a group (``denominator`` None: a count of the rows whose numerator is not
    NaN), per category and averaged over ``domains`` (None: all prompts pooled), then over seeds."""

    name: str
    numerator: str
    denominator: str | None = None
    domains: tuple[str, ...] | None = None  # None: pooled; () : every category present, equally weighted
    # With ``signs`` (one per domain), the categories' values are combined as a signed sum instead of a
    # mean: ``signs=(1, -1)`` over ``domains=("religion", "news")`` is religion's value minus news's.
    signs: tuple[float, ...] | None = None


def _toxicity_metrics() -> dict[str, Metric]:
    out = {}
    for tag in ("", "2"):
        for stat, column in (("TP", f"toxic{tag}"), ("EMT", f"max_score{tag}")):
            out[f"{stat}{tag}_ID"] = Metric(f"{stat}{tag}_ID", column, domains=ID_DOMAINS)
            out[f"{stat}{tag}_OOD"] = Metric(f"{stat}{tag}_OOD", column, domains=OOD_DOMAINS)
            out[f"{stat}{tag}_all"] = Metric(f"{stat}{tag}_all", column, domains=())
    return out


METRICS: dict[str, Metric] = {
    **_toxicity_metrics(),
    "PPL": Metric("PPL", "ppl_sum", "ppl_n"),
    **{f"dist_{n}": Metric(f"dist_{n}", f"dist_{n}") for n in (1, 2, 3)},
}


def metric(name: str | Metric) -> Metric:
    if isinstance(name, Metric):
        return name
    if name not in METRICS:
        raise ValueError(f"metric={name!r} is not known; use one of {sorted(METRICS)}.")
    return METRICS[name]


@dataclass
class _Arrays:
    """One variant's per-prompt values as (prompt, seed) matrices, prompts in a fixed order."""

    num: np.ndarray
    den: np.ndarray
    groups: list[np.ndarray]  # row indices of each category that enters the metric (one: pooled)
    signs: tuple[float, ...] | None = None  # a signed sum of the categories' values instead of their mean


def _arrays(rows: pd.DataFrame, m: Metric, prompts: pd.Index, seeds: list) -> _Arrays:
    table = rows.set_index(["prompt_id", "seed"])
    index = pd.MultiIndex.from_product([prompts, seeds], names=["prompt_id", "seed"])
    num = pd.to_numeric(table[m.numerator], errors="coerce").reindex(index).to_numpy(float).reshape(len(prompts), len(seeds))
    if m.denominator is None:
        den = (~np.isnan(num)).astype(float)
    else:
        den = table[m.denominator].reindex(index).to_numpy(float).reshape(len(prompts), len(seeds))
    num = np.nan_to_num(num)
    domains = rows.drop_duplicates("prompt_id").set_index("prompt_id")["domain"].reindex(prompts).to_numpy()
    if m.domains is None:
        groups = [np.arange(len(prompts))]
    else:
        wanted = m.domains or tuple(dict.fromkeys(domains))
        missing = [d for d in wanted if d not in set(domains)]
        if missing:
            raise ValueError(f"{m.name} needs prompts of categories {missing}, which these rows lack.")
        groups = [np.flatnonzero(domains == d) for d in wanted]
    if m.signs is not None and (m.domains is None or len(m.signs) != len(m.domains)):
        raise ValueError(f"{m.name}: signs need one sign per domain of domains={m.domains}.")
    return _Arrays(num, den, groups, m.signs)


def _statistic(a: _Arrays, weights: np.ndarray) -> np.ndarray:
    """The metric under prompt ``weights`` (draws x prompts): per category and seed a weighted ratio,
    categories averaged, then seeds averaged. Returns one value per draw."""
    per_group = []
    for rows in a.groups:
        w = weights[:, rows]
        with np.errstate(invalid="ignore", divide="ignore"):
            per_group.append((w @ a.num[rows]) / (w @ a.den[rows]))  # draws x seeds
    if not per_group:
        return np.full(len(weights), np.nan)
    if a.signs is not None:
        combined = sum(sign * values for sign, values in zip(a.signs, per_group))
    else:
        combined = np.mean(per_group, axis=0)
    return np.nanmean(combined, axis=1)


def _prompt_weights(strata: list[np.ndarray], n_prompts: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap counts (draws x prompts): each stratum's prompts resampled with replacement within it."""
    weights = np.zeros((n_boot, n_prompts))
    for rows in strata:
        picks = rng.integers(0, len(rows), size=(n_boot, len(rows)))
        for j in range(len(rows)):  # a prompt drawn k times gets weight k
            np.add.at(weights, (np.arange(n_boot), rows[picks[:, j]]), 1.0)
    return weights


def _aligned(a: pd.DataFrame, b: pd.DataFrame) -> tuple[pd.Index, list]:
    """The prompts and seeds both variants share; pairing needs them to be the same."""
    for name, rows in (("a", a), ("b", b)):
        missing = [c for c in ("prompt_id", "seed", "domain") if c not in rows.columns]
        if missing:
            raise ValueError(f"{name} lacks column(s) {missing}; pass stats.per_prompt rows.")
    pa, pb = set(a["prompt_id"]), set(b["prompt_id"])
    sa, sb = set(a["seed"]), set(b["seed"])
    if pa != pb or sa != sb:
        raise ValueError(f"a and b must cover the same prompts and seeds to be paired: {len(pa)} vs {len(pb)} "
                         f"prompts, seeds {sorted(sa)} vs {sorted(sb)}; evaluate both on the same split and seeds.")
    return pd.Index(sorted(pa)), sorted(sa)


def _strata(rows: pd.DataFrame, prompts: pd.Index) -> list[np.ndarray]:
    domains = rows.drop_duplicates("prompt_id").set_index("prompt_id")["domain"].reindex(prompts).to_numpy()
    return [np.flatnonzero(domains == d) for d in dict.fromkeys(domains)]


# -------------------------------------------------------------------------------------- differences
@dataclass(frozen=True)
class Difference:
    """``a - scale * b`` of one metric with its 95% bootstrap interval and standard error."""

    metric: str
    a: float
    b: float
    diff: float
    low: float
    high: float
    se: float
    n_prompts: int
    n_seeds: int
    n_replicates: int = 1

    def interval(self, digits: int = 2) -> str:
        return f"{self.diff:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}]"


def _bootstrap_draws(a: pd.DataFrame, b: pd.DataFrame, m: Metric, scale: float, n_boot: int,
                     rng: np.random.Generator) -> tuple[float, float, float, np.ndarray, int, int]:
    prompts, seeds = _aligned(a, b)
    arr_a, arr_b = _arrays(a, m, prompts, seeds), _arrays(b, m, prompts, seeds)
    ones = np.ones((1, len(prompts)))
    point_a, point_b = float(_statistic(arr_a, ones)[0]), float(_statistic(arr_b, ones)[0])
    weights = _prompt_weights(_strata(a, prompts), len(prompts), n_boot, rng)
    draws = _statistic(arr_a, weights) - scale * _statistic(arr_b, weights)
    return point_a, point_b, point_a - scale * point_b, draws, len(prompts), len(seeds)


def paired_difference(a: pd.DataFrame, b: pd.DataFrame, metric_name: str | Metric, *, scale: float = 1.0,
                      n_boot: int = N_BOOT, seed: int = 0, level: float = 0.95) -> Difference:
    """``metric(a) - scale * metric(b)`` on the prompts and seeds the two share, with the 95% interval of
    a prompt-level bootstrap (prompts resampled within category, the same draw for both variants).

    ``a`` and ``b`` are ``per_prompt`` rows of one variant each (several seeds allowed). ``scale``
    tests ratios such as "keeps at least 80% of the base Dist-1" as ``a - 0.8 b > 0``. ``level`` widens
    the interval for a claim made about any of several comparisons (``simultaneous_level``).
    """
    m = metric(metric_name)
    if n_boot < 100:
        raise ValueError(f"n_boot={n_boot} is too few for a 95% interval; use at least 100 (the book uses {N_BOOT}).")
    if not 0 < level < 1:
        raise ValueError(f"level={level!r} must lie in (0, 1), e.g. 0.95.")
    point_a, point_b, diff, draws, n_p, n_s = _bootstrap_draws(a, b, m, scale, n_boot, np.random.default_rng(seed))
    low, high = np.nanpercentile(draws, [50 * (1 - level), 50 * (1 + level)])
    return Difference(m.name, point_a, point_b, diff, float(low), float(high), float(np.nanstd(draws, ddof=1)), n_p, n_s)


def hierarchical_difference(pairs: Sequence[tuple[pd.DataFrame, pd.DataFrame]], metric_name: str | Metric, *,
                            scale: float = 1.0, n_boot: int = N_BOOT, seed: int = 0) -> Difference:
    """The difference averaged over independent replicates of the pipeline, ``pairs`` = one ``(a, b)``
    per replicate, with a two-stage bootstrap interval: replicates drawn with replacement, then the
    prompts of each drawn replicate resampled afresh (within category)."""
    m = metric(metric_name)
    pairs = list(pairs)
    if not pairs:
        raise ValueError("pairs is empty; pass one (a, b) pair of per-prompt rows per replicate.")
    rng = np.random.default_rng(seed)
    R = len(pairs)
    results = [_bootstrap_draws(a, b, m, scale, n_boot * R, rng) for a, b in pairs]
    bank = np.stack([r[3].reshape(n_boot, R) for r in results])  # replicate x draw x position
    chosen = rng.integers(0, R, size=(n_boot, R))  # which replicate fills each position of each draw
    draws = bank[chosen, np.arange(n_boot)[:, None], np.arange(R)[None, :]].mean(axis=1)
    low, high = np.nanpercentile(draws, [2.5, 97.5])
    mean = lambda i: float(np.mean([r[i] for r in results]))
    return Difference(m.name, mean(0), mean(1), mean(2), float(low), float(high), float(np.nanstd(draws, ddof=1)),
                      results[0][4], results[0][5], R)


def simultaneous_level(k: int, level: float = 0.95) -> float:
    """The level of each of ``k`` intervals so that all ``k`` hold together at ``level`` (Bonferroni):
    a claim that *some* group pays is then not made true by one of many groups' chance fluctuations."""
    if k < 1:
        raise ValueError(f"k={k} must be at least 1.")
    return 1 - (1 - level) / k


def detectable_difference(se: float) -> float:
    """The smallest true difference a two-sided 5% test detects with 80% power, given the standard
    error of the difference: (z_0.975 + z_0.8) x se, about 2.8 se."""
    return Z_80_POWER * se


# -------------------------------------------------------------------------------------- verdicts
def verdict(d: Difference | tuple[float, float] | None, *, expect: str, boundary: float = 0.0,
            margin: float | None = None, not_testable: str | None = None) -> str:
    """The book's one verdict rule, on a 95% interval ``(low, high)`` of a difference.

    ``expect`` is the claim's direction: ``"lower"`` (the difference is below ``boundary``),
    ``"higher"`` (above it) or ``"equal"`` (within ``±margin`` of it: the *whole* interval must lie
    inside to hold, and the whole interval outside for "does not hold"). An interval that includes the
    boundary is *inconclusive*. ``not_testable`` (a reason) or a missing difference gives
    *not testable here*.
    """
    if expect not in ("lower", "higher", "equal"):
        raise ValueError(f"expect={expect!r}; use 'lower', 'higher' or 'equal'.")
    if not_testable or d is None:
        return "not testable here"
    low, high = (d.low, d.high) if isinstance(d, Difference) else d
    if np.isnan(low) or np.isnan(high):
        return "not testable here"
    if expect == "equal":
        if margin is None or margin <= 0:
            raise ValueError("expect='equal' needs margin > 0: the largest difference still called equal.")
        if boundary - margin < low and high < boundary + margin:
            return "holds"
        if high < boundary - margin or low > boundary + margin:
            return "does not hold"
        return "inconclusive"
    below, above = high < boundary, low > boundary
    if expect == "higher":
        below, above = above, below
    return "holds" if below else "does not hold" if above else "inconclusive"


def all_of(labels: Sequence[str]) -> str:
    """The verdict of a claim made of several parts (e.g. at every learning rate): not testable if any
    part is, does not hold if any part does not, holds if every part holds, inconclusive otherwise."""
    labels = list(labels)
    unknown = [v for v in labels if v not in VERDICTS]
    if unknown:
        raise ValueError(f"unknown verdict(s) {unknown}; verdicts are {VERDICTS}.")
    if not labels or "not testable here" in labels:
        return "not testable here"
    if "does not hold" in labels:
        return "does not hold"
    return "holds" if all(v == "holds" for v in labels) else "inconclusive"


def value(rows: pd.DataFrame, metric_name: str | Metric) -> float:
    """The metric of one variant's per-prompt rows (the number its table shows)."""
    m = metric(metric_name)
    prompts, seeds = pd.Index(sorted(set(rows["prompt_id"]))), sorted(set(rows["seed"]))
    return float(_statistic(_arrays(rows, m, prompts, seeds), np.ones((1, len(prompts))))[0])


def unpaired_difference(x: Sequence, y: Sequence, *, n_boot: int = N_BOOT, seed: int = 0, name: str = "mean",
                        statistic=None) -> Difference:
    """``statistic(x) - statistic(y)`` of two independent samples (e.g. a score per text of two text
    sets; ``statistic`` defaults to the mean), with the 95% interval of a bootstrap that resamples
    each sample within itself. Values may be labels when ``statistic`` reads labels."""
    statistic = statistic or np.mean
    x, y = np.asarray(x), np.asarray(y)
    if x.dtype.kind == "f":
        x = x[~np.isnan(x)]
    if y.dtype.kind == "f":
        y = y[~np.isnan(y)]
    if len(x) < 2 or len(y) < 2:
        raise ValueError(f"x and y need at least 2 values each (got {len(x)} and {len(y)}).")
    if n_boot < 100:
        raise ValueError(f"n_boot={n_boot} is too few for a 95% interval; use at least 100 (the book uses {N_BOOT}).")
    rng = np.random.default_rng(seed)
    ix, iy = rng.integers(0, len(x), size=(n_boot, len(x))), rng.integers(0, len(y), size=(n_boot, len(y)))
    draws = np.array([float(statistic(x[i])) - float(statistic(y[j])) for i, j in zip(ix, iy)])
    low, high = np.percentile(draws, [2.5, 97.5])
    a, b = float(statistic(x)), float(statistic(y))
    return Difference(name, a, b, a - b, float(low), float(high), float(draws.std(ddof=1)), len(x) + len(y), 1)
