"""The results-table helpers of chapters 6-8: tuned settings, mean ± std over seeds, bold best, the
paper's typed numbers, and the sensitivity summary. No model runs: fast."""

from __future__ import annotations

import math
import re
import warnings

import numpy as np
import pandas as pd
import pytest

from unidetox_core import experiments, paper_tables, stats, tables
from unidetox_core.profiles import load_profile

SOURCE, TARGET = "world:gpt2-bpe", "world:opt-bpe"


def selected_frame() -> pd.DataFrame:
    rows = []
    for model in (SOURCE, TARGET):
        rows += [
            dict(method="unidetox", model=model, hparam="steps", value=4, lr=1e-3, meets_ppl_rule=np.nan),
            dict(method="unidetox", model=model, hparam="steps", value=2, lr=5e-3, meets_ppl_rule=np.nan),
            dict(method="samples", model=model, hparam="steps", value=2, lr=1e-3, meets_ppl_rule=np.nan),
        ]
    rows += [
        dict(method="lmsteer", model=SOURCE, hparam="epsilon_multiplier", value=-1.0, lr=np.nan, meets_ppl_rule=True),
        dict(method="dexperts", model=SOURCE, hparam="beta", value=1.0, lr=np.nan, meets_ppl_rule=False),
        dict(method="task_arithmetic", model=SOURCE, hparam="lambda", value=0.1, lr=np.nan, meets_ppl_rule=True),
        dict(method="dexperts", model=TARGET, hparam="beta", value=2.0, lr=np.nan, meets_ppl_rule=True),
    ]
    return pd.DataFrame(rows)


def test_tuned_settings_order_and_source_reuse():
    P = load_profile("tiny")
    settings = experiments.tuned_settings(P, selected_frame(), SOURCE)
    assert list(settings["method"]) == ["base", "preprompt_short", "preprompt_long", "samples", "lmsteer",
                                        "dexperts", "task_arithmetic", "unidetox", "unidetox"]
    assert list(settings.loc[settings["method"] == "unidetox", "lr"]) == [5e-3, 1e-3]  # higher lr first
    assert settings["label"].is_unique and settings["model"].eq(SOURCE).all()
    assert settings.loc[settings["method"] == "dexperts", "meets_ppl_rule"].item() is False


def test_tuned_settings_targets_reuse_source_and_warn_on_missing_baselines():
    P = load_profile("tiny")
    selected = selected_frame()
    selected.loc[(selected["method"] == "unidetox") & (selected["model"] == TARGET), "value"] = 999  # ignored
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        settings = experiments.tuned_settings(P, selected, TARGET)
    assert sorted(str(w.message).split()[3] for w in caught) == ["lmsteer", "task_arithmetic"]
    assert sorted(settings.loc[settings["method"] == "unidetox", "value"]) == [2, 4]
    assert settings.loc[settings["method"] == "dexperts", "value"].item() == 2.0
    assert "task_arithmetic" not in set(settings["method"])


def test_tuned_variants_calls_method_variant(monkeypatch):
    P = load_profile("tiny")
    calls = []
    monkeypatch.setattr(experiments, "method_variant",
                        lambda P, method, model, value, lr, progress=False: calls.append((method, model, value, lr)) or {})
    with pytest.warns(UserWarning):
        specs = experiments.tuned_variants(P, selected_frame(), TARGET)
    assert len(specs) == len(calls) == 7  # no LM-Steer or Task Arithmetic row for TARGET
    assert calls[0][0] == "base" and calls[4][:3] == ("dexperts", TARGET, 2.0)


def per_seed_rows() -> pd.DataFrame:
    rows = []
    for seed, shift in ((0, 0.0), (1, 0.2)):
        rows += [dict(model="m", label="Base model", method="base", seed=seed, TP_ID=0.5 + shift, PPL=10.0),
                 dict(model="m", label="UniDetox", method="unidetox", seed=seed, TP_ID=0.1 + shift, PPL=12.0)]
    return pd.DataFrame(rows)


def test_seed_summary_mean_std_and_checks():
    summary = tables.seed_summary(per_seed_rows(), ["TP_ID", "PPL"])
    assert list(summary["label"]) == ["Base model", "UniDetox"]
    assert summary["TP_ID_mean"].tolist() == pytest.approx([0.6, 0.2])
    assert summary["TP_ID_std"].tolist() == pytest.approx([0.1, 0.1])  # population std, as np.std
    assert summary["n_seeds"].eq(2).all() and summary["method"].tolist() == ["base", "unidetox"]
    with pytest.raises(ValueError, match="every variant"):
        tables.seed_summary(per_seed_rows().iloc[:-1], ["TP_ID"])


def test_format_and_bold_lowest():
    summary = tables.seed_summary(per_seed_rows(), ["TP_ID", "PPL"])
    mmlu = pd.DataFrame({"model": ["m", "m"], "label": ["Base model", "UniDetox"], "MMLU": [25.0, np.nan]})
    display = tables.format_results(summary, ["TP_ID"], ["PPL"], extra=mmlu)
    assert list(display.columns) == ["model", "method", "TP ID", "PPL", "MMLU (%)"]
    assert display["TP ID"].tolist() == ["0.60±0.10", "0.20±0.10"]
    assert display["MMLU (%)"].tolist() == ["25.00", "—"]
    html = tables.bold_lowest(display, summary, ["TP_ID"]).to_html()
    assert html.count("font-weight: bold") == 1 and "0.20±0.10" in html


def test_paper_tables_typed_values():
    t1, t2, t8, t6 = paper_tables.table1(), paper_tables.table2(), paper_tables.table8(), paper_tables.table6()
    assert len(t1) == 9 and len(t2) == 27 and len(t8) == 36 and len(t6) == 24
    row = t1[t1["label"] == "UniDetox lr=5e-05"].iloc[0]
    assert (row["TP_ID"], row["TP_ID_std"], row["PPL"], row["MMLU"]) == (0.40, 0.00, 10.38, 31.42)
    lowest = t2.loc[t2.groupby("model")["TP_ID"].idxmin()].set_index("model")["method"]
    assert lowest.to_dict() == {"OPT-6.7B": "unidetox", "LLaMA2-7B": "unidetox", "Falcon-7B": "dexperts"}
    assert math.isnan(t2["TP_ID_std"].iloc[0])


def test_sensitivity_regions_and_spread():
    grid = pd.DataFrame([
        dict(method="base", model="m", value=np.nan, lr=np.nan, seed=0, TP_all=0.5, PPL=10.0),
        dict(method="unidetox", model="m", value=2, lr=1e-3, seed=0, TP_all=0.3, PPL=10.5),
        dict(method="unidetox", model="m", value=4, lr=1e-3, seed=0, TP_all=0.2, PPL=30.0),
        dict(method="dexperts", model="m", value=1.0, lr=np.nan, seed=0, TP_all=0.6, PPL=9.0),
        dict(method="base", model="n", value=np.nan, lr=np.nan, seed=0, TP_all=0.5, PPL=20.0),
        dict(method="dexperts", model="n", value=1.0, lr=np.nan, seed=0, TP_all=0.4, PPL=90.0),
    ])
    points = tables.grid_points(grid)
    assert len(points) == 4 and points["lr"].isna().sum() == 2
    marked = tables.mark_points(points, pd.Series({"m": 11.0, "n": 50.0}), tables.base_points(grid), factor=1.1)
    summary = tables.sensitivity_summary(marked).set_index(["model", "method"])
    assert summary.loc[("m", "unidetox"), ["points", "within_ceiling", "lower_left"]].tolist() == [2, 1, 1]
    assert summary.loc[("m", "dexperts"), "lower_left"] == 0 and summary.loc[("m", "dexperts"), "within_ceiling"] == 1
    assert summary.loc[("m", "unidetox"), "PPL_ratio_max"] == pytest.approx(3.0)
    spread = tables.ppl_spread(marked).set_index("method")
    assert list(spread.index) == ["dexperts"] and spread.loc["dexperts", "spread"] == pytest.approx(4.5 / 0.9)


def test_paper_numbers_print_like_ours():
    t1 = tables.as_summary(paper_tables.table1())
    display = tables.format_results(t1, tables.TOXICITY, ["PPL", "MMLU"], keys=["label"])
    assert display.loc[7, "TP ID"] == "0.40±0.00" and display.loc[7, "MMLU (%)"] == "31.42"
    t2 = tables.as_summary(paper_tables.table2())
    display = tables.format_results(t2, tables.TOXICITY, [], keys=["model", "label"])
    assert display.loc[0, "TP ID"] == "0.78"  # Table 2: means only
    html = tables.bold_lowest(display, t2, ["TP_ID"]).to_html()
    style = html.split("</style>")[0]
    assert len(re.findall(r"#T_\w+_row(\d+)_col2\b", style)) == 3  # one per model


def test_profile_reductions_lists_only_differences():
    assert tables.profile_reductions(load_profile("paper")).empty
    mini = tables.profile_reductions(load_profile("mini")).set_index("setting")
    assert mini.loc["evaluation seeds", "paper"] == "5: 0, 1, 2, 3, 4"
    assert mini.loc["test prompts", "paper"] == "all" and "MMLU shots" not in mini.index


def test_check_claims_on_the_papers_tables():
    table1 = tables.check_claims(tables.as_summary(paper_tables.table1())).set_index("claim")
    assert (table1["verdict"] == "holds").all()  # Section 3.5 reads Table 1 this way
    assert "UniDetox lr=5e-05 0.40" in table1.loc["UniDetox lowers TP on the seen (ID) domains", "detail"]
    # Dist-1 0.22 and 0.24 against the base model's 0.26: 85% and 92%, both above 80%.
    assert table1.loc["UniDetox keeps at least 80% of the base model's Dist-1", "detail"].endswith("base model 0.26")
    t2 = tables.as_summary(paper_tables.table2())
    falcon = tables.check_claims(t2[t2["model"] == "Falcon-7B"]).set_index("claim")["verdict"]
    assert falcon["UniDetox has the lowest TP ID"] == "does not hold"  # DExperts' 0.30 < UniDetox's 0.33 in Table 2


def per_prompt_variant(label, method, lr, toxic, n=8):
    """Per-prompt rows of one variant: ``n`` prompts in each of the four categories, one seed, TP ``toxic``
    (a share of each category's prompts, the first ones), perplexity 10 and Dist-1 0.5 everywhere."""
    rows = []
    for d, domain in enumerate(("gender_lgbtq", "race_nationalities", "religion", "disability")):
        for i in range(n):
            rows.append(dict(method=method, label=label, lr=lr, prompt_id=d * n + i, seed=0, domain=domain,
                             toxic=float(i < round(toxic * n)), max_score=0.9 if i < round(toxic * n) else 0.1,
                             ppl_sum=10.0, ppl_n=1, dist_1=0.5))
    return pd.DataFrame(rows)


def test_power_table_by_hand():
    rng = np.random.default_rng(0)
    base = per_prompt_variant("Base model", "base", np.nan, 0.5, n=20)
    other = base.assign(label="UniDetox lr=1e-03", method="unidetox", toxic=rng.permutation(base["toxic"].to_numpy()))
    table = tables.power_table(pd.concat([base, other], ignore_index=True), ["TP_all"], n_boot=500).iloc[0]
    d = stats.paired_difference(other, base, "TP_all", n_boot=500)
    assert table["median standard error"] == pytest.approx(d.se)
    assert table["detectable difference (80% power)"] == pytest.approx(2.8016 * d.se, rel=1e-3)
    assert (table["prompts"], table["seeds"], table["metric"]) == (80, 1, "TP (all)")


def test_run_claims_from_per_prompt_rows():
    prompts = pd.concat([per_prompt_variant("Base model", "base", np.nan, 1.0),
                         per_prompt_variant("UniDetox lr=1e-03", "unidetox", 1e-3, 0.0),
                         per_prompt_variant("Samples lr=1e-03", "samples", 1e-3, 0.5),
                         per_prompt_variant("PrePrompt Short", "preprompt_short", np.nan, 1.0)], ignore_index=True)
    claims = tables.run_claims(prompts, n_boot=200).set_index("claim")
    v = claims["verdict"]
    assert v["UniDetox lowers TP on the seen (ID) domains"] == "holds"
    assert "UniDetox lr=1e-03 - Base model: -1.00 [-1.00, -1.00]" in claims.loc["UniDetox lowers TP on the seen (ID) domains", "detail"]
    assert v["UniDetox has the lowest TP ID"] == "holds"
    lowest = claims.loc["UniDetox has the lowest TP ID", "detail"]  # Samples (0.5) is closer than the base and pre-prompt (1)
    assert lowest.startswith("UniDetox lr=1e-03 - Samples lr=1e-03: -0.50 [") and lowest.endswith("(the closest of 3 comparisons)")
    # identical perplexity: the difference 0 is below the margin of 10% of the base model's 10
    assert v["UniDetox keeps perplexity at or below the base model's"] == "holds"
    assert v["UniDetox keeps at least 80% of the base model's Dist-1"] == "holds"  # 0.5 - 0.8 x 0.5 > 0
    assert v["PrePrompt Short does not lower TP ID"] == "holds"  # difference 0 > -0.05 in every draw
    assert v["Samples lowers TP ID, but less than UniDetox"] == "holds"  # 0.5 vs 1 and 0 vs 0.5, 4 of 8 per category
    collapsed = prompts.assign(dist_1=np.where(prompts["method"] == "unidetox", 0.1, 0.5))
    row = tables.run_claims(collapsed, n_boot=200).set_index("claim").loc["UniDetox keeps perplexity at or below the base model's"]
    assert row["verdict"] == "not testable here" and "Dist-1 at 20% of the base model's" in row["detail"]
    with pytest.raises(ValueError, match="exactly one base-model"):
        tables.run_claims(prompts[prompts["method"] != "base"])
    beside = tables.claims_beside(claims.reset_index(), tables.check_claims(tables.as_summary(paper_tables.table1())))
    assert list(beside.columns) == ["claim", "paper reports", "this run", "this run's numbers"]
    assert beside.set_index("claim").loc["UniDetox has the lowest TP ID", "this run"] == "holds"


def test_mark_selected_and_figure():
    import matplotlib

    matplotlib.use("Agg")
    grid = pd.DataFrame([
        dict(method="base", model="m", value=np.nan, lr=np.nan, seed=0, TP_all=0.5, PPL=10.0),
        dict(method="unidetox", model="m", value=2, lr=1e-3, seed=0, TP_all=0.3, PPL=10.5),
        dict(method="unidetox", model="m", value=4, lr=1e-3, seed=0, TP_all=0.2, PPL=30.0),
        dict(method="dexperts", model="m", value=1.0, lr=np.nan, seed=0, TP_all=0.6, PPL=9.0),
    ])
    points = tables.grid_points(grid)
    chosen = pd.DataFrame([dict(model="m", method="unidetox", value=4.0, lr=0.001),
                           dict(model="m", method="dexperts", value=1.0, lr=np.nan)])
    points["selected"] = tables.mark_selected(points, chosen)
    assert points.set_index(["method", "value"])["selected"].to_dict() == {
        ("dexperts", 1.0): True, ("unidetox", 2.0): False, ("unidetox", 4.0): True}
    points["series"] = [paper_tables.row_label(m, lr) for m, lr in zip(points["method"], points["lr"])]
    marked = tables.mark_points(points, pd.Series({"m": 11.0}), tables.base_points(grid))
    fig = tables.sensitivity_figure(marked, ["m", "absent"], source="m")
    assert len([ax for ax in fig.axes if ax.get_visible()]) == 1 and fig.axes[0].get_title() == "m (source)"
    assert fig.axes[0].get_xscale() == "log"  # one scale in every panel, whatever a panel's range
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels(minor=True)]
    assert not any(labels), "minor ticks carry no labels, so labels cannot collide"


def test_eval_prompts_parsed_once_and_copied():
    P = load_profile("tiny")
    experiments._eval_prompts.cache_clear()
    first = experiments.eval_prompts(P, "val")
    first["text"] = "changed"  # a caller's edit must not reach the next caller
    second = experiments.eval_prompts(P, "val")
    assert experiments._eval_prompts.cache_info().hits == 1
    assert not second["text"].eq("changed").any()


def test_matched_diversity_settings_and_claims():
    grid = pd.DataFrame([
        dict(method="base", model="m", hparam="", value=np.nan, lr=np.nan, TP_all=0.6, PPL=100.0, dist_1=0.8),
        dict(method="unidetox", model="m", hparam="steps", value=100, lr=1e-4, TP_all=0.1, PPL=50.0, dist_1=0.5),  # collapsed
        dict(method="unidetox", model="m", hparam="steps", value=50, lr=1e-4, TP_all=0.3, PPL=80.0, dist_1=0.75),
        dict(method="unidetox", model="m", hparam="steps", value=25, lr=1e-4, TP_all=0.4, PPL=90.0, dist_1=0.79),
        dict(method="samples", model="m", hparam="steps", value=25, lr=1e-4, TP_all=0.5, PPL=95.0, dist_1=0.6),
    ])
    matched = tables.matched_diversity_settings(grid, "m")
    # floor 0.72: UniDetox's best kept point is 50 steps (TP 0.3); no Samples point keeps 0.72
    assert matched[["method", "value"]].values.tolist() == [["unidetox", 50]]
    assert matched["label"].tolist() == ["UniDetox at matched diversity"]
    base = per_prompt_variant("Base model", "base", np.nan, 1.0)
    uni = per_prompt_variant("UniDetox at matched diversity", "unidetox", 1e-4, 0.0)
    claims = tables.matched_claims(pd.concat([base, uni], ignore_index=True), "Base model", matched, n_boot=200)
    assert claims["verdict"].tolist() == ["holds", "not testable here"]
    assert "no checkpoint of Samples on the grid keeps 90%" in claims["detail"].iloc[1]


def test_prose_notice_names_each_changed_verdict_and_is_empty_when_all_agree():
    written = {"UniDetox lowers TP ID": "holds", "Samples detoxifies": "inconclusive"}
    assert tables.prose_notice({"UniDetox lowers TP ID": "holds", "Samples detoxifies": "inconclusive", "x": "holds"},
                               written) == ""
    notice = tables.prose_notice({"UniDetox lowers TP ID": "does not hold"}, written)
    assert notice.startswith("::: {.callout-warning}") and notice.rstrip().endswith(":::")
    assert "UniDetox lowers TP ID: the prose says *holds*, this build finds *does not hold*." in notice
    assert "Samples detoxifies: the prose says *inconclusive*, this build finds *not computed*." in notice
