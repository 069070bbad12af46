"""The statistics module against hand computations, the tables' own functions and a brute-force bootstrap."""

import itertools

import numpy as np
import pandas as pd
import pytest

from unidetox_core import metrics, stats
from unidetox_core.metrics import ID_DOMAINS, OOD_DOMAINS

DOMAINS = (*ID_DOMAINS, *OOD_DOMAINS)


def continuations(seed=0, n_prompts=12, n=4, shift=0.0, seeds=(0, 1)):
    """Scored continuations of one made-up variant: every category, several seeds."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in seeds:
        for p in range(n_prompts):
            for k in range(n):
                words = " ".join(rng.choice(["a", "b", "c", "d"], size=rng.integers(0, 5)))
                rows.append(dict(seed=s, prompt_id=p, domain=DOMAINS[p % 4], sample=k, continuation=words,
                                 score=float(np.clip(rng.beta(1, 3) + shift, 0, 1)), score2=float(rng.random()),
                                 ppl=float(rng.choice([20.0, 50.0, 2e4])) if words else np.nan))
    return pd.DataFrame(rows)


def test_per_prompt_by_hand():
    frame = pd.DataFrame(dict(
        prompt_id=[0, 0, 0, 1, 1, 1], domain=["religion"] * 3 + ["disability"] * 3,
        continuation=["a b", "a a", "", "x y z", "x", "y"],
        score=[0.2, 0.7, 0.1, 0.5, 0.3, 0.4], ppl=[10.0, 2e4, np.nan, 30.0, 50.0, 70.0]))
    rows = stats.per_prompt(frame).set_index("prompt_id")
    assert rows.loc[0, "max_score"] == 0.7 and rows.loc[0, "toxic"] == 1.0
    assert rows.loc[1, "max_score"] == 0.5 and rows.loc[1, "toxic"] == 0.0  # strictly above 0.5
    assert rows.loc[0, "ppl_sum"] == 10.0 and rows.loc[0, "ppl_n"] == 1  # 2e4 dropped, empty has none
    assert rows.loc[1, "ppl_sum"] == 150.0 and rows.loc[1, "ppl_n"] == 3
    assert rows.loc[0, "dist_1"] == pytest.approx(2 / 4)  # {a, b} over 4 words
    assert rows.loc[1, "dist_2"] == pytest.approx(2 / 5)  # (x y), (y z) over 5 words
    only_first = stats.per_prompt(frame, ppl_rows=pd.Series([True, False] * 3)).set_index("prompt_id")
    assert only_first.loc[1, "ppl_n"] == 1 and only_first.loc[1, "ppl_sum"] == 50.0  # row 4 only


def test_values_match_the_tables():
    """At the point estimate the module reproduces toxicity_table, the perplexity mean and Dist-n,
    per seed and then averaged over seeds, as the results tables compute them."""
    frame = continuations()
    rows = stats.per_prompt(frame)
    per_seed = []
    for _, part in frame.groupby("seed"):
        table = metrics.toxicity_table(part.drop(columns="seed"))
        ppl = part["ppl"][part["ppl"] < 1e4]
        per_seed.append(dict(TP_ID=table.loc["ID", "TP"], EMT_OOD=table.loc["OOD", "EMT"], TP_all=table.loc["all", "TP"],
                             PPL=ppl.mean(), dist_2=metrics.dist_n(part, 2)))
    expected = pd.DataFrame(per_seed).mean()
    for name, want in expected.items():
        assert stats.value(rows, name) == pytest.approx(want, abs=1e-12), name


def resampled_frame(frame, picks):
    """The continuations with prompt ``picks[i]`` copied in as a new prompt ``i`` (every seed)."""
    parts = [frame[frame["prompt_id"] == p].assign(prompt_id=i) for i, p in enumerate(picks)]
    return pd.concat(parts, ignore_index=True)


def test_bootstrap_statistic_equals_recomputing_on_resampled_prompts():
    """A bootstrap draw's value is the table's number on the data set the draw describes."""
    frame = continuations(seed=3)
    rows = stats.per_prompt(frame)
    prompts, seeds = pd.Index(sorted(rows["prompt_id"].unique())), [0, 1]
    rng = np.random.default_rng(0)
    for name in ("TP_ID", "EMT_all", "PPL", "dist_1"):
        m = stats.metric(name)
        arrays = stats._arrays(rows, m, prompts, seeds)
        weights = stats._prompt_weights(stats._strata(rows, prompts), len(prompts), 3, rng)
        values = stats._statistic(arrays, weights)
        for w, got in zip(weights, values):
            picks = np.repeat(prompts.to_numpy(), w.astype(int))
            again = stats.value(stats.per_prompt(resampled_frame(frame, picks)), name)
            assert got == pytest.approx(again, abs=1e-12), name


def test_weights_resample_within_category():
    rows = stats.per_prompt(continuations())
    prompts = pd.Index(sorted(rows["prompt_id"].unique()))
    strata = stats._strata(rows, prompts)
    weights = stats._prompt_weights(strata, len(prompts), 50, np.random.default_rng(1))
    for members in strata:  # each category keeps its number of prompts in every draw
        assert (weights[:, members].sum(axis=1) == len(members)).all()


def test_paired_interval_against_exact_bootstrap():
    """Two categories of two prompts: all 4 x 4 resamples are equally likely, so the bootstrap
    distribution of the difference is known exactly; 4,000 draws must match its mean and spread."""
    a = pd.DataFrame(dict(prompt_id=[0, 1, 2, 3], seed=0, domain=["religion", "religion", "disability", "disability"],
                          toxic=[1.0, 0.0, 1.0, 1.0]))
    b = a.assign(toxic=[0.0, 0.0, 1.0, 0.0])
    m = stats.Metric("TP", "toxic", domains=("religion", "disability"))
    exact = []
    for r in itertools.product([0, 1], repeat=2):
        for d in itertools.product([2, 3], repeat=2):
            picks = list(r) + list(d)
            da = a.set_index("prompt_id").loc[picks, "toxic"].to_numpy()
            db = b.set_index("prompt_id").loc[picks, "toxic"].to_numpy()
            exact.append((da[:2].mean() + da[2:].mean()) / 2 - (db[:2].mean() + db[2:].mean()) / 2)
    d = stats.paired_difference(a, b, m, n_boot=4000, seed=0)
    assert d.diff == pytest.approx((0.5 + 1.0) / 2 - (0.0 + 0.5) / 2)
    assert d.se == pytest.approx(np.std(exact), abs=0.01)
    assert (d.low, d.high) == (min(exact), max(exact))  # every value of the 16 is drawn; 2.5/97.5% hit the ends
    assert stats.paired_difference(a, b, m, n_boot=4000, seed=0) == d  # same seed, same interval


def test_pairing_narrows_the_interval():
    """A shared prompt effect cancels in a paired difference."""
    base = continuations(seed=5, n_prompts=40)
    shifted = base.assign(score=np.clip(base["score"] + 0.05, 0, 1))
    d = stats.paired_difference(stats.per_prompt(shifted), stats.per_prompt(base), "EMT_all", n_boot=500)
    assert 0 < d.low <= d.diff <= d.high and d.high - d.low < 0.05


def test_scale_tests_a_ratio():
    rows = stats.per_prompt(continuations())
    d = stats.paired_difference(rows, rows, "dist_1", scale=0.8, n_boot=200)
    assert d.diff == pytest.approx(0.2 * stats.value(rows, "dist_1"))


def test_unpaired_rows_are_refused():
    rows = stats.per_prompt(continuations())
    with pytest.raises(ValueError, match="same prompts and seeds"):
        stats.paired_difference(rows, rows[rows["seed"] == 0], "TP_ID")
    with pytest.raises(ValueError, match="metric='TP'"):
        stats.paired_difference(rows, rows, "TP")
    with pytest.raises(ValueError, match="n_boot"):
        stats.paired_difference(rows, rows, "TP_ID", n_boot=10)


def constant(diff, n=8):
    """Per-prompt rows of one category in which every prompt has the same value: no prompt noise."""
    rows = pd.DataFrame(dict(prompt_id=range(n), seed=0, domain="religion", max_score=0.5))
    return rows.assign(max_score=0.5 + diff), rows


def test_hierarchical_interval_carries_the_spread_between_replicates():
    m = stats.Metric("EMT", "max_score", domains=("religion",))
    agree = stats.hierarchical_difference([constant(0.2), constant(0.2), constant(0.2)], m, n_boot=500)
    assert (agree.diff, agree.low, agree.high) == pytest.approx((0.2, 0.2, 0.2))
    split = stats.hierarchical_difference([constant(0.3), constant(-0.1), constant(0.1)], m, n_boot=2000)
    assert split.diff == pytest.approx(0.1) and split.n_replicates == 3
    assert split.low == pytest.approx(-0.1) and split.high == pytest.approx(0.3)  # all three drawn alike
    assert stats.verdict(split, expect="higher") == "inconclusive"


def test_verdict_rule():
    v = stats.verdict
    assert v((-0.3, -0.1), expect="lower") == "holds"
    assert v((0.1, 0.3), expect="lower") == "does not hold"
    assert v((-0.1, 0.0), expect="lower") == "inconclusive"  # the boundary is in the interval
    assert v((0.1, 0.3), expect="higher") == "holds"
    assert v((0.1, 0.3), expect="lower", boundary=0.5) == "holds"  # non-inferiority with a margin
    assert v((-0.04, 0.03), expect="equal", margin=0.05) == "holds"
    assert v((-0.04, 0.08), expect="equal", margin=0.05) == "inconclusive"
    assert v((0.06, 0.2), expect="equal", margin=0.05) == "does not hold"
    assert v((-0.3, -0.1), expect="lower", not_testable="at chance") == "not testable here"
    assert v(None, expect="lower") == "not testable here"
    with pytest.raises(ValueError, match="margin"):
        v((0, 0), expect="equal")
    with pytest.raises(ValueError, match="expect="):
        v((0, 0), expect="less")


def test_all_of():
    assert stats.all_of(["holds", "holds"]) == "holds"
    assert stats.all_of(["holds", "inconclusive"]) == "inconclusive"
    assert stats.all_of(["inconclusive", "does not hold"]) == "does not hold"
    assert stats.all_of(["holds", "not testable here"]) == "not testable here"
    with pytest.raises(ValueError, match="unknown verdict"):
        stats.all_of(["yes"])


def test_detectable_difference():
    assert stats.detectable_difference(0.1) == pytest.approx(0.2802, abs=1e-4)


def test_unpaired_difference():
    x, y = np.array([1.0, 2.0, 3.0, 4.0]), np.array([0.0, 0.0, 1.0])
    d = stats.unpaired_difference(x, y, n_boot=4000)
    assert d.diff == pytest.approx(2.5 - 1 / 3)
    # the bootstrap standard error of a mean is the population std over sqrt(n)
    assert d.se == pytest.approx(np.sqrt(x.var() / 4 + y.var() / 3), rel=0.05)
    assert d.low < d.diff < d.high
    with pytest.raises(ValueError, match="at least 2"):
        stats.unpaired_difference([1.0], y)


def test_unpaired_difference_of_a_statistic_of_labels():
    gap = lambda labels: 100 * abs(np.mean(labels == "left") - np.mean(labels == "right"))
    x = np.array(["left", "right", "center", "left"])  # gap 25
    y = np.array(["left", "left", "left", "center"])  # gap 75
    d = stats.unpaired_difference(x, y, statistic=gap, n_boot=300)
    assert (d.a, d.b, d.diff) == (25.0, 75.0, -50.0) and d.low <= d.diff <= d.high


def test_a_signed_contrast_of_two_categories():
    rows = pd.DataFrame(dict(prompt_id=range(4), seed=0, domain=["religion", "religion", "news", "news"],
                             nll=[4.0, 6.0, 2.0, 2.0], tokens=[2.0, 2.0, 1.0, 1.0]))
    m = stats.Metric("gap", "nll", "tokens", domains=("religion", "news"), signs=(1.0, -1.0))
    assert stats.value(rows, m) == pytest.approx(10 / 4 - 4 / 2)  # per-token NLL of religion minus news
    with pytest.raises(ValueError, match="one sign per domain"):
        stats.value(rows, stats.Metric("bad", "nll", "tokens", domains=("religion", "news"), signs=(1.0,)))


def test_simultaneous_level_widens_the_interval():
    assert stats.simultaneous_level(1) == pytest.approx(0.95) and stats.simultaneous_level(10) == pytest.approx(0.995)
    rows = stats.per_prompt(continuations(seed=2, n_prompts=40))
    other = stats.per_prompt(continuations(seed=3, n_prompts=40))
    narrow = stats.paired_difference(other, rows, "EMT_all", n_boot=1000)
    wide = stats.paired_difference(other, rows, "EMT_all", n_boot=1000, level=stats.simultaneous_level(10))
    assert wide.low <= narrow.low and wide.high >= narrow.high and wide.diff == narrow.diff
    with pytest.raises(ValueError, match="level"):
        stats.paired_difference(other, rows, "EMT_all", level=1.0)
