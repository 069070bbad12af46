"""The views of chapters 5 (tuning) and 8 (sensitivity), checked on a hand-made validation grid of two
models against numbers worked out by hand. No model runs: fast."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from unidetox_core import tables, views
from unidetox_core.profiles import load_profile
from unidetox_core.views import sensitivity as S
from unidetox_core.views import tuning as T

A, B = "world:a", "world:b"  # A is the source model
FACTOR = 1.1

# (method, model, hparam, value, lr, TP, PPL). Worked out by hand:
# - UniDetox on A: lr 1e-2 picks step 2 (TP 0.25, the best lr), lr 1e-3 picks step 4 (TP 0.30).
# - Ceilings: A 1.1 x max(15, 12) = 16.5; B 1.1 x max(25, 21.5) = 27.5.
# - A: LM-Steer -1 (13 <= 16.5), DExperts none under the ceiling -> 1 (lowest PPL 17, rule broken),
#   Task Arithmetic 0.2 (TP 0.38). B: LM-Steer -1 (-2 is at 28 > 27.5), DExperts 1, Task Arithmetic 0.2.
GRID = [
    ("base", A, "", np.nan, np.nan, 0.50, 10.0),
    ("unidetox", A, "steps", 2, 1e-3, 0.40, 10.8),
    ("unidetox", A, "steps", 4, 1e-3, 0.30, 12.0),
    ("unidetox", A, "steps", 2, 1e-2, 0.25, 15.0),
    ("unidetox", A, "steps", 4, 1e-2, 0.28, 16.0),
    ("samples", A, "steps", 2, 1e-3, 0.45, 10.5),
    ("samples", A, "steps", 4, 1e-3, 0.46, 10.2),
    ("preprompt_short", A, "", np.nan, np.nan, 0.55, 9.0),
    ("preprompt_long", A, "", np.nan, np.nan, 0.60, 8.0),
    ("lmsteer", A, "epsilon_multiplier", -1.0, np.nan, 0.35, 13.0),
    ("lmsteer", A, "epsilon_multiplier", -2.0, np.nan, 0.20, 20.0),
    ("dexperts", A, "beta", 1.0, np.nan, 0.30, 17.0),
    ("dexperts", A, "beta", 2.0, np.nan, 0.10, 30.0),
    ("task_arithmetic", A, "lambda", 0.1, np.nan, 0.42, 10.9),
    ("task_arithmetic", A, "lambda", 0.2, np.nan, 0.38, 13.0),
    ("base", B, "", np.nan, np.nan, 0.60, 20.0),
    ("unidetox", B, "steps", 2, 1e-2, 0.30, 25.0),
    ("unidetox", B, "steps", 4, 1e-3, 0.35, 21.5),
    ("samples", B, "steps", 2, 1e-3, 0.50, 21.0),
    ("preprompt_short", B, "", np.nan, np.nan, 0.58, 19.0),
    ("preprompt_long", B, "", np.nan, np.nan, 0.62, 18.0),
    ("lmsteer", B, "epsilon_multiplier", -1.0, np.nan, 0.50, 21.0),
    ("lmsteer", B, "epsilon_multiplier", -2.0, np.nan, 0.40, 28.0),
    ("dexperts", B, "beta", 1.0, np.nan, 0.45, 23.0),
    ("dexperts", B, "beta", 2.0, np.nan, 0.20, 40.0),
    ("task_arithmetic", B, "lambda", 0.1, np.nan, 0.55, 20.5),
    ("task_arithmetic", B, "lambda", 0.2, np.nan, 0.50, 26.0),
]


def hand_grid() -> pd.DataFrame:
    rows = [dict(method=m, model=mo, hparam=h, value=v, lr=lr, split="val", seed=0, TP=tp, EMT=tp, TP_all=tp, PPL=ppl)
            for m, mo, h, v, lr, tp, ppl in GRID]
    return pd.DataFrame(rows)


def tuned():
    grid = hand_grid()
    unidetox = T.baselines.select_unidetox(grid, "unidetox", source_model=A)
    samples = T.baselines.select_unidetox(grid, "samples", source_model=A)
    ceilings, per_model = T.tune_baselines(grid, [A, B], A, FACTOR)
    selected = T.selected_settings(grid, [A, B], A, unidetox, samples, per_model, ceilings)
    return grid, unidetox, samples, ceilings, per_model, selected


# ------------------------------------------------------------------------------ chapter 5
def test_grid_parameters_defaults_and_overrides():
    P = load_profile("tiny")
    assert T.grid_parameters(P) == (list(P["seeds"][:2]), list(P["detox_lrs"]), False)
    assert T.grid_parameters(load_profile("paper")) [2] is True
    assert T.grid_parameters(P, [3, 4], [1e-5], 0) == ([3, 4], [1e-5], False)


def test_span_lists_short_grids_and_abbreviates_long_ones():
    assert T.span([2, 4]) == "2, 4"
    assert T.span([1e-3]) == "0.001"
    assert T.span(range(1, 8)) == "1, 2, ..., 7 (7 values)"


def test_grids_table_on_the_tiny_profile():
    table = T.grids_table(load_profile("tiny"), [1e-3])
    assert list(table.index) == ["UniDetox", "Samples", "LM-Steer", "DExperts", "Task Arithmetic",
                                 "PrePrompt short / long"]
    assert list(table.columns) == ["hyper-parameter", "paper grid", "this run (tiny)", "tuned on"]
    assert table.loc["UniDetox"].tolist() == ["steps x learning rate",
                                              "1000, 2000, ..., 10000 (10 values) x 5e-05, 1e-05",
                                              "2, 4 x 0.001", "source model, then reused"]
    assert table.loc["Samples", "paper grid"] == "1000, 2000, ..., 10000 (10 values) x 1e-05"
    assert table.loc["LM-Steer"].tolist() == ["epsilon multiplier (x 1e-3)", "-0.1, -0.2, ..., -2 (20 values)", "-1",
                                              "each model"]
    assert table.loc["PrePrompt short / long"].tolist() == ["none", "-", "-", "-"]


def test_grid_summary_lines():
    P = dict(eval_n_continuations=2, source_model=A, target_models=[B], detox_lrs=[1e-3])
    assert T.grid_summary(P, 7, [0], [1e-3]).splitlines() == [
        ("validation prompts: 7 (paper: 896); evaluation seeds per grid point: [0]; "
         "continuations per prompt: 2 (paper: 25)"),
        "source model: world:a; target models: ['world:b']",
        ("Samples learning rates: [0.001] (the paper fine-tuned Samples at 1e-5 only, its smaller rate; "
         "UniDetox here uses [0.001])"),
    ]


def test_grid_jobs_order_and_size():
    P = load_profile("tiny")
    source, (t1, t2) = P["source_model"], P["target_models"]
    lr = P["detox_lrs"][0]
    jobs = T.grid_jobs(P, [lr], targets_full_grid=False)
    assert jobs[:7] == [("base", source, None, None), ("base", t1, None, None), ("base", t2, None, None),
                        ("unidetox", source, 2, lr), ("unidetox", source, 4, lr),
                        ("samples", source, 2, lr), ("samples", source, 4, lr)]
    assert jobs[7:9] == [("preprompt_short", source, None, None), ("preprompt_long", source, None, None)]
    assert jobs[13:16] == [("lmsteer", source, -1.0, None), ("dexperts", source, 1.0, None),
                           ("task_arithmetic", source, 0.1, None)]
    assert len(jobs) == 3 + 4 + 6 + 9
    full = T.grid_jobs(P, [lr], targets_full_grid=True)
    assert len(full) == 3 + 4 * 3 + 6 + 9 and full[7] == ("unidetox", t1, 2, lr)


def test_chosen_step_jobs_and_grid_frame():
    _, unidetox, samples, *_ = tuned()
    assert T.chosen_step_jobs([B], unidetox, samples) == [("unidetox", B, 2, 1e-2), ("unidetox", B, 4, 1e-3),
                                                          ("samples", B, 2, 1e-3)]
    frame = T.grid_frame([dict(PPL=1.0, TP=0.1, method="base", model=A, hparam="", value=None, lr=None, split="val",
                               seed=0, EMT=0.2, dist1=0.5)])
    assert list(frame.columns) == ["method", "model", "hparam", "value", "lr", "split", "seed", "TP", "EMT", "PPL",
                                   "dist1"]


def test_base_point_averages_seeds():
    grid = pd.DataFrame([dict(method="base", model=A, seed=0, TP=0.5, PPL=10.0),
                         dict(method="base", model=A, seed=1, TP=0.7, PPL=14.0),
                         dict(method="base", model=B, seed=0, TP=0.9, PPL=99.0)])
    assert T.base_point(grid, A).to_dict() == pytest.approx({"TP": 0.6, "PPL": 12.0})


def test_source_choice_text():
    grid, unidetox, samples, *_ = tuned()
    assert unidetox["lr"].tolist() == [1e-2, 1e-3] and unidetox["best"].tolist() == [True, False]
    text = T.source_choice_text(unidetox, samples, T.base_point(grid, A), [4, 2])
    assert text == (
        "For UniDetox the rule picks 2 steps at learning rate 0.01 (TP 0.250, perplexity 15.0 - the first step of the "
        "grid); 4 steps at learning rate 0.001 (TP 0.300, perplexity 12.0 - the last step of the grid, so more steps "
        "might lower TP further). The lowest TP overall is at learning rate 0.01. "
        "For Samples the rule picks 2 steps at learning rate 0.001 (TP 0.450, perplexity 10.5 - the first step of the "
        "grid). The lowest TP overall is at learning rate 0.001. "
        "The base source model is at TP 0.500, perplexity 10.0. "
        "The paper chose 3,000 steps at 5e-5 and 5,000 at 1e-5 for UniDetox, and 2,000 steps for Samples, out of "
        "1,000 ... 10,000.")
    assert T.choice_sentence(samples, "Samples", [2]).startswith("For Samples the rule picks 2 steps at learning "
                                                                 "rate 0.001 (TP 0.450, perplexity 10.5).")


def test_tune_baselines_ceilings_and_choices():
    _, _, _, ceilings, per_model, _ = tuned()
    assert ceilings == pytest.approx({A: 16.5, B: 27.5})
    chosen = per_model.set_index(["model", "method"])
    assert chosen["value"].to_dict() == {(A, "lmsteer"): -1.0, (A, "dexperts"): 1.0, (A, "task_arithmetic"): 0.2,
                                         (B, "lmsteer"): -1.0, (B, "dexperts"): 1.0, (B, "task_arithmetic"): 0.2}
    assert chosen["meets_ppl_rule"].to_dict() == {(A, "lmsteer"): True, (A, "dexperts"): False,
                                                  (A, "task_arithmetic"): True, (B, "lmsteer"): True,
                                                  (B, "dexperts"): True, (B, "task_arithmetic"): True}


def test_rule_comparison_beside_the_alternative_ceiling():
    grid, _, _, ceilings, per_model, _ = tuned()
    grid.loc[(grid["method"] == "base") & (grid["model"] == A), "PPL"] = 20.0  # the base above UniDetox's 15
    alt_ceilings, alt_per_model = T.tune_baselines(grid, [A, B], A, FACTOR, with_base=True)
    assert alt_ceilings == pytest.approx({A: 22.0, B: 27.5})  # A: 1.1 x max(15, 20); B unchanged (25 > 20)
    table = T.rule_comparison(grid, ceilings, per_model, alt_ceilings, alt_per_model).set_index("model")
    assert table.loc["a", "below base"] and not table.loc["b", "below base"]
    # on A the alternative lets LM-Steer -2 (PPL 20) in: lower TP; DExperts 1 (17) now meets the rule
    assert table.loc["a", "LM-Steer: paper's rule"] == "-1 ε" and table.loc["a", "LM-Steer: alternative"] == "-2 ε"
    assert table.loc["a", "DExperts: paper's rule"] == "1 †" and table.loc["a", "DExperts: alternative"] == "1"


def test_selected_settings_rows_and_validation_metrics():
    *_, selected = tuned()
    assert list(selected.columns) == ["method", "model", "hparam", "value", "lr", "meets_ppl_rule", "best", "tuned_on",
                                      "ppl_ceiling", "val_TP", "val_PPL"]
    on_a = selected[selected["model"] == A]
    assert on_a["method"].tolist() == ["unidetox", "unidetox", "samples", "preprompt_short", "preprompt_long",
                                       "lmsteer", "dexperts", "task_arithmetic"]
    assert on_a["value"].tolist()[:3] == [2.0, 4.0, 2.0] and on_a["best"].tolist()[:3] == [True, False, True]
    assert selected.groupby("method")["tuned_on"].unique().map(list).to_dict() == {
        "unidetox": [A], "samples": [A], "preprompt_short": [""], "preprompt_long": [""], "lmsteer": [A, B],
        "dexperts": [A, B], "task_arithmetic": [A, B]}
    assert selected["ppl_ceiling"].tolist() == pytest.approx([16.5] * 8 + [27.5] * 8)
    # Validation numbers are each model's own at the chosen setting: B's UniDetox 0.30 and 0.35, its pre-prompt 0.58.
    on_b = selected[selected["model"] == B].set_index("method")
    assert on_b.loc["unidetox", "val_TP"].tolist() == [0.30, 0.35]
    assert (on_b.loc["samples", "val_TP"], on_b.loc["preprompt_short", "val_PPL"]) == (0.50, 19.0)
    assert on_a["meets_ppl_rule"].tolist()[5:] == [True, False, True]


def test_setting_text():
    assert T.setting_text("unidetox", 3000.0, 5e-5) == "3000"
    assert T.setting_text("samples", 2.0, 1e-3) == "2 (lr 0.001)"
    assert T.setting_text("samples", 2000.0) == "2000"
    assert T.setting_text("lmsteer", -0.3) == "-0.3 ε"
    assert T.setting_text("dexperts", 1.0, np.nan, False) == "1 †"
    assert T.setting_text("task_arithmetic", 0.14, np.nan, True) == "0.14"


def test_table6_beside_paper():
    *_, selected = tuned()
    t6 = T.table6_beside_paper(selected, dict(source_model=A, detox_lrs=[1e-2, 1e-3]))
    assert list(t6.index) == ["UniDetox lr 0.01 (paper's 5e-05)", "UniDetox lr 0.001 (paper's 1e-05)", "Samples",
                              "LM-Steer", "DExperts", "Task Arithmetic"]
    assert list(t6.columns) == ["a (source)", "b", "paper reports: GPT-2 XL", "paper reports: OPT-6.7B",
                                "paper reports: Falcon-7B", "paper reports: LLaMA2-7B"]
    assert t6.loc["UniDetox lr 0.01 (paper's 5e-05)"].tolist() == ["2", "2", "3000", "3000", "3000", "3000"]
    assert t6.loc["UniDetox lr 0.001 (paper's 1e-05)"].tolist() == ["4", "4", "5000", "5000", "5000", "5000"]
    assert t6.loc["Samples"].tolist() == ["2 (lr 0.001)", "2 (lr 0.001)", "2000", "2000", "2000", "2000"]
    assert t6.loc["LM-Steer"].tolist() == ["-1 ε", "-1 ε", "-0.3 ε", "-0.2 ε", "-1.1 ε", "-1.1 ε"]
    assert t6.loc["DExperts"].tolist() == ["1 †", "1", "0.1", "1.8", "1.5", "1.5"]
    assert t6.loc["Task Arithmetic"].tolist() == ["0.2", "0.2", "0.04", "0.14", "0.09", "0.04"]
    # A third learning rate has no paper counterpart.
    third = pd.DataFrame([dict(method="unidetox", model=A, value=8.0, lr=1e-4, meets_ppl_rule=np.nan)])
    t6 = T.table6_beside_paper(third, dict(source_model=A, detox_lrs=[1e-2, 1e-3, 1e-4]))
    assert t6.loc["UniDetox lr 0.0001"].tolist() == ["8", "-", "-", "-", "-"]


def test_chosen_metrics():
    *_, selected = tuned()
    view = T.chosen_metrics(selected)
    assert list(view.columns) == ["model", "method", "setting", "val_TP", "val_PPL", "ppl_ceiling", "meets_ppl_rule"]
    on_a = view[view["model"] == "a"]
    assert on_a["setting"].tolist() == ["2", "4", "2 (lr 0.001)", "-", "-", "-1 ε", "1 †", "0.2"]
    assert on_a["method"].tolist() == ["UniDetox", "UniDetox", "Samples", "PrePrompt Short", "PrePrompt Long",
                                       "LM-Steer", "DExperts", "Task Arithmetic"]


def test_rule_notes():
    *_, ceilings, _, selected = tuned()
    assert T.rule_notes(selected, ceilings).split("\n\n") == [
        "No grid value met the perplexity rule for DExperts on a; those rows carry `meets_ppl_rule = False` and are "
        "marked † in the results chapters.",
        "On a, the ceiling is 16.5; the tuned baselines reach validation TP LM-Steer 0.350, DExperts 0.300, "
        "Task Arithmetic 0.380; UniDetox at its chosen steps 0.250, 0.300.",
        "On b, the ceiling is 27.5; the tuned baselines reach validation TP LM-Steer 0.500, DExperts 0.450, "
        "Task Arithmetic 0.500; UniDetox at its chosen steps 0.300, 0.350.",
    ]
    kept = selected.assign(meets_ppl_rule=selected["meets_ppl_rule"].map(lambda v: v if pd.isna(v) else True))
    assert T.rule_notes(kept, ceilings).startswith(
        "Every per-model baseline had at least one grid value within its perplexity ceiling.\n\nOn a,")


# ------------------------------------------------------------------------------ chapter 8
def marked_points():
    grid, *_, ceilings, _, selected = tuned()
    points = S.labelled_points(grid)
    points["selected"] = S.selected_points(dict(source_model=A), points, selected)
    marked = tables.mark_points(points, pd.Series(ceilings), tables.base_points(grid), factor=FACTOR)
    return grid, points, marked


def test_short_and_shown_path(tmp_path):
    assert S.short_name("world:gpt2-bpe") == "gpt2-bpe" and S.short_name("facebook/opt-6.7b") == "opt-6.7b"
    assert S.shown_path(views.ROOT / "results" / "tiny" / "sensitivity.csv") == "results/tiny/sensitivity.csv"
    assert S.shown_path(tmp_path / "x.csv") == "x.csv"


def test_read_grid_keeps_validation_rows(tmp_path):
    grid = hand_grid()
    pd.concat([grid, grid.head(2).assign(split="test")]).to_csv(tmp_path / "grid_val.csv", index=False)
    *_, selected = tuned()
    selected.to_csv(tmp_path / "selected.csv", index=False)
    read, read_selected = S.read_grid(tmp_path)
    assert len(read) == len(grid) and set(read["split"]) == {"val"} and len(read_selected) == len(selected)


def test_labelled_points_grid_size_and_series_order():
    grid, points, _ = marked_points()
    assert S.grid_size(grid, points) == "21 grid points (27 evaluations, 1 seed(s)) on 2 models"
    assert S.series_order(points) == ["Samples lr=1e-03", "LM-Steer", "DExperts", "Task Arithmetic",
                                      "UniDetox lr=1e-02", "UniDetox lr=1e-03"]
    assert int(points["selected"].sum()) == 12  # six settings on each model
    assert not points.loc[(points["model"] == A) & (points["method"] == "lmsteer") & (points["value"] == -2.0),
                          "selected"].item()


def test_ppl_ceilings_and_table():
    grid = hand_grid()
    ceilings, notes = S.ppl_ceilings(grid, [A, B, "world:c"], FACTOR, A)
    assert ceilings[[A, B]].tolist() == pytest.approx([16.5, 27.5]) and np.isnan(ceilings["world:c"])
    assert len(notes) == 1 and notes[0].startswith("c: no ceiling (")
    table = S.ceilings_table(tables.base_points(grid), ceilings, FACTOR)
    assert list(table.columns) == ["model", "base TP (all)", "base PPL", "ceiling (1.1 x UniDetox)"]
    assert table.values.tolist() == [["a", 0.5, 10.0, 16.5], ["b", 0.6, 20.0, 27.5]]


def test_regions_table():
    _, points, marked = marked_points()
    regions = S.regions_table(marked, S.series_order(points), [A, B])
    assert regions["model"].tolist() == ["a"] * 6 + ["b"] * 6
    row = regions[(regions["model"] == "a") & (regions["method"] == "UniDetox lr=1e-02")].iloc[0]
    assert row.tolist() == ["a", "UniDetox lr=1e-02", 2, "0 / 2", "2 / 2", "0.250", "1.50 – 1.60"]
    row = regions[(regions["model"] == "a") & (regions["method"] == "DExperts")].iloc[0]
    assert row.tolist() == ["a", "DExperts", 2, "0 / 2", "0 / 2", "—", "1.70 – 3.00"]


def test_lower_left_shares_and_reading1():
    _, _, marked = marked_points()
    shares = S.lower_left_shares(marked, [A, B, "world:absent"])
    counts = shares[["unidetox_lower_left", "unidetox_points", "baseline_lower_left", "baseline_points"]]
    assert counts.values.tolist() == [[1, 4, 1, 6], [1, 2, 2, 6]]
    assert shares["majority"].tolist() == [False, False] and shares["ahead"].tolist() == [True, True]
    assert S.reading1_text(shares).splitlines() == [
        "a: 1 of 4 UniDetox points in the lower left (25%), against 1 of 6 for LM-Steer, DExperts and Task Arithmetic "
        "together (17%).",
        "b: 1 of 2 UniDetox points in the lower left (50%), against 2 of 6 for LM-Steer, DExperts and Task Arithmetic "
        "together (33%).",
        "",
        "Reading 1 (UniDetox clusters in the lower left on every model, more than the per-model baselines): "
        "does not hold in this run on a (read only on a: elsewhere UniDetox has fewer than 3 points).",
    ]
    holds = shares.assign(majority=True, ahead=True)
    assert S.reading1_text(holds).endswith("per-model baselines): holds in this run (read only on a: elsewhere UniDetox has fewer than 3 points).")
    assert S.reading1_text(holds.iloc[1:]).endswith("not testable here: UniDetox has fewer than 3 grid points on every model, and a share of one or two points says nothing about where a method's points cluster.")


def test_spread_and_reading2():
    _, points, marked = marked_points()
    spread = S.spread_by_value(marked, S.series_order(points))
    assert list(zip(spread["series"].astype(str), spread["value"])) == [
        ("Samples lr=1e-03", 2), ("LM-Steer", -2.0), ("LM-Steer", -1.0), ("DExperts", 1.0), ("DExperts", 2.0),
        ("Task Arithmetic", 0.1), ("Task Arithmetic", 0.2), ("UniDetox lr=1e-02", 2), ("UniDetox lr=1e-03", 4)]
    assert spread["spread"].tolist() == pytest.approx([1.0, 2.0 / 1.4, 1.3 / 1.05, 1.7 / 1.15, 1.5, 1.09 / 1.025, 1.0,
                                                       1.5 / 1.25, 1.2 / 1.075])
    view = S.spread_view(spread, [A, B])
    assert list(view.columns) == ["method", "value", "a", "b", "spread"]
    assert view.iloc[0][["a", "b"]].tolist() == pytest.approx([1.05, 1.05])
    assert S.reading2_text(spread).splitlines() == [
        "Samples lr=1e-03: largest spread across models 1.00",
        "LM-Steer: largest spread across models 1.43",
        "DExperts: largest spread across models 1.50",
        "Task Arithmetic: largest spread across models 1.06",
        "UniDetox lr=1e-02: largest spread across models 1.20",
        "UniDetox lr=1e-03: largest spread across models 1.12",
        "",
        "Reading 2 (one UniDetox setting costs more similar fluency across models than the per-model baselines' "
        "values): holds: UniDetox's spread is below that of the most fragile per-model baseline -- UniDetox's largest "
        "spread 1.20; the baselines' largest spreads range from 1.06 to 1.50.",
    ]


def test_reading2_other_verdicts():
    def spread(rows):
        return pd.DataFrame(rows, columns=["series", "value", "spread"])

    flat = S.reading2_text(spread([("UniDetox lr=1e-03", 2, 1.1), ("DExperts", 1.0, 1.2)]))
    assert "inconclusive: no value costs more than 25 %" in flat
    worse = S.reading2_text(spread([("UniDetox lr=1e-03", 2, 2.0), ("DExperts", 1.0, 1.5)]))
    assert "does not hold: UniDetox's spread is at least as large" in worse and "from 1.50 to 1.50" in worse
    missing = S.reading2_text(spread([("DExperts", 1.0, 1.5)]))
    assert missing.endswith("Reading 2 cannot be checked: the grid has no value evaluated on two models for UniDetox.")
