"""The views of chapters 06, 07 (results), 09 (the detoxifying text) and 12 (the scorecard): each
function that computes numbers or sentences, on small hand-made inputs checked against a hand
computation. No model runs: fast."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from unidetox_core import data, experiments
from unidetox_core.profiles import load_profile
from unidetox_core import views
from unidetox_core.views import results as rv
from unidetox_core.views import scorecard as sc
from unidetox_core.views import texts as tv

S, T = "world:gpt2-bpe", "world:opt-bpe"
NAN = np.nan


# ================================================================================ results (06, 07)
def test_paths_are_shown_relative_to_the_repository(tmp_path):
    assert rv.shown_path(views.ROOT / "results" / "tiny" / "scorecard.csv") == "results/tiny/scorecard.csv"
    assert rv.shown_path(tmp_path / "elsewhere.csv") == "elsewhere.csv"  # outside: the name only
    assert rv.without_root(f"{views.ROOT}/data/raw/x.csv is missing") == "data/raw/x.csv is missing"


def test_short_name_drops_world_prefix_and_organisation():
    assert rv.short_name("world:opt-bpe") == "opt-bpe"
    assert rv.short_name("facebook/opt-6.7b") == "opt-6.7b"


def settings_frame() -> pd.DataFrame:
    return pd.DataFrame([
        ("base", S, "", NAN, NAN, NAN, "Base model"),
        ("unidetox", S, "steps", 4.0, 1e-3, NAN, "UniDetox lr=1e-03"),
        ("dexperts", S, "beta", 0.5, NAN, False, "DExperts"),
        ("unidetox", T, "steps", 4.0, 1e-3, NAN, "UniDetox lr=1e-03"),
        ("dexperts", T, "beta", 1.0, NAN, True, "DExperts"),
    ], columns=["method", "model", "hparam", "value", "lr", "meets_ppl_rule", "label"])


def test_settings_table_prints_steps_values_learning_rates_and_dagger():
    table = rv.settings_table(settings_frame().iloc[:3])
    assert table.columns.tolist() == ["method", "setting", "learning rate"]
    assert table.values.tolist() == [["Base model", "—", "—"], ["UniDetox lr=1e-03", "4 steps", "1e-03"],
                                     ["DExperts †", "beta = 0.5", "—"]]


def test_settings_grid_has_a_column_per_model_source_first_and_daggers():
    grid = rv.settings_grid(settings_frame(), S)
    assert grid.columns.tolist() == ["method", "gpt2-bpe (source)", "opt-bpe"]
    assert grid.values.tolist() == [["UniDetox lr=1e-03", "4", "4"], ["DExperts", "0.5 †", "1"]]  # no base row


def test_reductions_table_appends_prompts_and_target_rows(monkeypatch):
    P = load_profile("tiny")
    monkeypatch.setattr(experiments, "eval_prompts", lambda P, split: pd.DataFrame({"text": range(7)}))
    table = rv.reductions_table(P, "test", rv.target_reductions(P, [S, T], mmlu_shots=2))
    assert table.iloc[-3:].values.tolist() == [["test prompts used", "7", "940 (test)"],
                                               ["MMLU shots on the targets", "2", "3"],
                                               ["target models", "gpt2-bpe, opt-bpe", "OPT-6.7B, Falcon-7B, LLaMA-2-7B"]]
    assert rv.target_reductions({"target_mmlu_shots": 1}, [T])[0]["this run"] == "1"  # None: the profile's target shots
    assert rv.prompts_reduction(P, "val")["paper"] == "896 (val)"


def test_evaluate_variants_gives_mmlu_its_own_shots(monkeypatch):
    seen = {}
    monkeypatch.setattr(experiments, "evaluate_settings", lambda P, settings, split, seeds: pd.DataFrame({"seed": seeds}))
    monkeypatch.setattr(experiments, "mmlu_settings", lambda P, settings: seen.setdefault("shots", P["mmlu_shots"]))
    runs, mmlu, seconds = rv.evaluate_variants({"seeds": [0, 1], "mmlu_shots": 1}, settings_frame(), "test", mmlu_shots=3)
    assert runs["seed"].tolist() == [0, 1] and mmlu == 3 and seconds >= 0
    seen.clear()
    assert rv.evaluate_variants({"seeds": [0], "mmlu_shots": 1}, settings_frame(), "test")[1] == 1


def test_seed_table_averages_over_seeds_and_adds_mmlu():
    runs = pd.DataFrame([dict(model=S, label="Base model", method="base", seed=seed, **{m: float(seed) for m in rv.METRICS})
                         for seed in (0, 2)])
    mmlu = pd.DataFrame({"model": [S], "label": ["Base model"], "MMLU": [40.0]})
    summary = rv.seed_table(runs, mmlu)
    assert summary.loc[0, "TP_ID_mean"] == 1.0 and summary.loc[0, "TP_ID_std"] == 1.0  # population std of 0, 2
    assert summary.loc[0, "MMLU"] == 40.0


def test_evaluations_line_counts_runs_and_measured_mmlu():
    mmlu = pd.DataFrame({"MMLU": [50.0, NAN, 40.0], "MMLU_questions": [10, NAN, 12], "MMLU_shots": [1, NAN, 1]})
    line = rv.evaluations_line(pd.DataFrame(index=range(6)), 3, 2, mmlu, 3.4)
    assert line == ("6 evaluations (3 variants x 2 seeds) and 2 MMLU runs (12 questions, 1-shot) in 3 s "
                    "(cached evaluations are read back)")


def test_dropped_ppl_line_names_the_variants_that_dropped_perplexities():
    summary = pd.DataFrame({"label": ["a", "b"], "ppl_dropped_mean": [0.0, 1.26]})
    assert rv.dropped_ppl_line(summary).endswith("mean per run: {'b': 1.3}")
    assert rv.dropped_ppl_line(summary.assign(ppl_dropped_mean=0.0)) is None


def test_saturation_lines_share_of_variants_at_tp_one():
    summary = pd.DataFrame({"TP_all_mean": [1.0, 0.5, 0.9995, 0.2], "TP2_all_mean": [0.1, 0.2, 0.3, 0.99]})
    assert rv.saturation_lines(summary) == [
        "main scorer: TP over all domains is 1.00 for 50% of the variants -- saturated; compare them by mean score.",
        "second scorer: no variant has TP = 1.00 over all domains."]


def agreement_summary() -> pd.DataFrame:
    return pd.DataFrame({"model": [S, S, S], "label": ["a", "b", "c"], "TP_all_mean": [0.1, 0.2, 0.3],
                         "TP2_all_mean": [0.3, 0.2, 0.1], "mean_score_mean": [0.1, 0.2, 0.4],
                         "mean_score2_mean": [0.5, 0.5, 0.5]})


def test_kendall_tau_and_its_reading():
    summary = agreement_summary()
    assert rv.kendall_tau(summary, "TP_all_mean", "TP2_all_mean") == pytest.approx(-1.0)  # reversed order
    assert math.isnan(rv.kendall_tau(summary, "mean_score_mean", "mean_score2_mean"))  # one column constant
    assert rv.describe_tau(0.6) == "+0.60 — the two instruments broadly agree"
    assert rv.describe_tau(0.45) == "+0.45 — partial agreement"
    assert rv.describe_tau(-1.0) == "-1.00 — the instruments rank the methods differently"
    assert rv.describe_tau(NAN) == rv.UNDEFINED_TAU


def test_scorer_agreement_lines_overall_and_per_model():
    assert rv.scorer_agreement_lines(agreement_summary()) == [
        "Kendall's tau between the scorers' rankings of the 3 variants:",
        "  by TP over all domains: -1.00 — the instruments rank the methods differently",
        f"  by mean score:          {rv.UNDEFINED_TAU}"]
    assert rv.scorer_agreement_by_model_lines(agreement_summary()) == [
        f"gpt2-bpe: Kendall's tau between the two scorers' rankings -- by TP -1.00, by mean score {rv.UNDEFINED_TAU}"]


def claims_summary(model: str, uni_tp: float, std: float) -> pd.DataFrame:
    """A paper-style summary: a base model (TP 0.5) and one UniDetox row, each TP with ``std`` over seeds."""
    rows = []
    for method, label, lr, tp, ppl in (("base", "Base model", NAN, 0.5, 20.0), ("unidetox", "UniDetox lr=1e-03", 1e-3, uni_tp, 18.0)):
        rows.append({"model": model, "method": method, "label": label, "lr": lr, "TP_ID_mean": tp, "TP_ID_std": std,
                     "TP_OOD_mean": tp, "TP_OOD_std": std, "PPL_mean": ppl, "PPL_std": 0.0})
    return pd.DataFrame(rows)


def claims_prompts(model: str, uni_toxic: int) -> pd.DataFrame:
    """Per-prompt rows of a base model (every prompt toxic) and UniDetox (``uni_toxic`` of each
    category's 6 prompts toxic), one seed."""
    rows = []
    for method, label, lr, k in (("base", "Base model", NAN, 6), ("unidetox", "UniDetox lr=1e-03", 1e-3, uni_toxic)):
        for d, domain in enumerate(("gender_lgbtq", "race_nationalities", "religion", "disability")):
            for i in range(6):
                rows.append(dict(model=model, method=method, label=label, lr=lr, prompt_id=6 * d + i, seed=0, domain=domain,
                                 toxic=float(i < k), max_score=0.9 if i < k else 0.1, ppl_sum=10.0, ppl_n=1, dist_1=0.5))
    return pd.DataFrame(rows)


def test_claims_by_model_checks_each_model_apart():
    ours = rv.claims_by_model(pd.concat([claims_prompts(S, 0), claims_prompts(T, 5)], ignore_index=True))
    assert list(ours) == ["gpt2-bpe", "opt-bpe"]
    claim = "UniDetox lowers TP on the seen (ID) domains"
    assert ours["gpt2-bpe"].loc[claim, "verdict"] == "holds"  # 0 against 1 in every draw
    assert ours["opt-bpe"].loc[claim, "verdict"] == "inconclusive"  # 5 of 6 toxic: some draws give a difference of 0


def test_claims_verdict_grid_puts_paper_and_run_side_by_side():
    ours = rv.claims_by_model(pd.concat([claims_prompts(S, 0), claims_prompts(T, 5)], ignore_index=True))
    grid = rv.claims_verdict_grid(claims_summary("P1", 0.4, NAN), ours)
    assert grid.columns.tolist() == ["claim", "paper: P1", "this run: gpt2-bpe", "this run: opt-bpe"]
    row = grid.set_index("claim").loc["UniDetox lowers TP on the seen (ID) domains"]
    assert row.tolist() == ["holds", "holds", "inconclusive"]


def test_claims_lines_and_rows():
    ours = {"opt-bpe": pd.DataFrame({"verdict": ["holds", "inconclusive"], "detail": ["0.1 vs 0.5", "x"]},
                                    index=pd.Index(["c1", "c2"], name="claim"))}
    assert rv.claims_lines(ours) == ["opt-bpe:", "  c1: holds (0.1 vs 0.5)", "  c2: inconclusive (x)"]
    rows = rv.claims_rows(ours, "test")
    assert rows.columns.tolist() == ["claim", "verdict", "detail", "model", "split"]
    assert rows[["claim", "model", "split"]].values.tolist() == [["c1", "opt-bpe", "test"], ["c2", "opt-bpe", "test"]]


def test_results_rows_take_settings_from_settings_and_metrics_from_summary():
    settings = settings_frame().iloc[:2]
    summary = pd.DataFrame({"model": [S, S], "label": ["Base model", "UniDetox lr=1e-03"], "TP_ID_mean": [0.5, 0.2],
                            "method": ["ignored", "ignored"], "meets_ppl_rule": [True, True]})
    out = rv.results_rows(settings, summary, "test")
    assert out.columns.tolist() == ["method", "model", "label", "split", "hparam", "value", "lr", "meets_ppl_rule",
                                    "TP_ID_mean"]
    assert out["method"].tolist() == ["base", "unidetox"] and out["TP_ID_mean"].tolist() == [0.5, 0.2]
    assert out["split"].eq("test").all()


def test_paper_tp_all_weights_three_id_domains_and_one_ood():
    paper = rv.paper_tp_all()
    base = paper[(paper["model"] == "GPT-2 XL") & (paper["method"] == "base")].iloc[0]
    assert base["TP_all"] == pytest.approx((3 * 0.53 + 0.41) / 4)  # Table 1: TP ID 0.53, OOD 0.41


def change_frame() -> pd.DataFrame:
    return pd.DataFrame({
        "model": ["A", "A", "A", "B", "B"], "method": ["base", "x", "y", "base", "x"],
        "label": ["Base model", "X", "Y", "Base model", "X"], "TP_all": [0.5, 0.3, 0.6, 0.4, 0.1],
        "meets_ppl_rule": [NAN, "False", True, NAN, NAN]})


def test_tp_change_subtracts_each_models_base():
    change = rv.tp_change(change_frame())
    assert change.index.tolist() == ["X", "Y"] and change.columns.tolist() == ["A", "B"]
    assert change.loc["X"].tolist() == pytest.approx([-0.2, -0.3])
    assert change.loc["Y", "A"] == pytest.approx(0.1) and math.isnan(change.loc["Y", "B"])


def test_broke_ppl_rule_marks_the_dagger_cells():
    broke = rv.broke_ppl_rule(change_frame())
    assert broke.loc["X"].tolist() == [True, False] and broke.loc["Y"].tolist() == [False, False]
    assert rv.broke_ppl_rule(change_frame().drop(columns="meets_ppl_rule")) is None
    labels = rv._heatmap_labels(rv.tp_change(change_frame()), broke)
    assert labels.tolist() == [["-0.20 †", "-0.30"], ["+0.10", ""]]


def test_tp_change_figure_writes_daggers_and_their_note():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    change = rv.tp_change(change_frame())
    fig = rv.tp_change_figure(change, change, rv.broke_ppl_rule(change_frame()))
    texts = [t.get_text() for ax in fig.axes for t in ax.texts] + [t.get_text() for t in fig.texts]
    assert texts.count("-0.20 †") == 1 and "-0.20" in texts and rv.DAGGER_NOTE in texts
    plt.close(fig)


def test_run_tp_all_puts_source_rows_first_with_short_names(tmp_path):
    source_csv = tmp_path / "results_source.csv"
    pd.DataFrame({"model": [S], "method": ["base"], "label": ["Base model"], "TP_all_mean": [0.5],
                  "meets_ppl_rule": [NAN], "PPL_mean": [20.0]}).to_csv(source_csv, index=False)
    summary = pd.DataFrame({"model": [T], "method": ["dexperts"], "label": ["DExperts"], "TP_all_mean": [0.2],
                            "meets_ppl_rule": [False]})
    frame = rv.run_tp_all(summary, source_csv)
    assert frame.columns.tolist() == ["model", "method", "label", "TP_all", "meets_ppl_rule"]
    assert frame["model"].tolist() == ["gpt2-bpe", "opt-bpe"] and frame["TP_all"].tolist() == [0.5, 0.2]
    assert rv.run_tp_all(summary, tmp_path / "missing.csv")["model"].tolist() == ["opt-bpe"]


def test_transfer_lines_count_lowered_target_pairs_without_the_source():
    change = pd.DataFrame({"gpt2-bpe": [-0.1, -0.5], "opt-bpe": [-0.05, 0.1], "llama-uni": [0.02, 0.0]},
                          index=["UniDetox lr=1e-03", "DExperts"])
    assert rv.transfer_lines(change, S) == [
        "UniDetox lr=1e-03: change in TP (all domains) vs each base model: gpt2-bpe -0.10, opt-bpe -0.05, llama-uni +0.02",
        "UniDetox lowers TP on 1 of 2 (learning rate, target model) pairs of this run."]


# ================================================================================ texts (09)
NAMES = tv.set_names("gpt2-bpe")


class FakeScorer:
    """A scorer that looks each text up in ``table``."""

    def __init__(self, name, table):
        self.name, self.table = name, table

    def __call__(self, texts):
        return [self.table[t] for t in texts]


def test_set_names_and_reductions_note():
    assert NAMES == {"unidetox": "UniDetox gpt2-bpe (this run)", "samples": "Samples gpt2-bpe (this run)",
                     "release": "UniDetox GPT-2 XL (authors' release)"}
    small = {"profile": "tiny", "seeds": [0], "distill_n_texts": 8, "distill_max_new_tokens": 16}
    assert tv.reductions_note(small).startswith("**Reductions on the `tiny` profile:** 1 distillation seed(s) instead of")
    assert tv.reductions_note({**small, "seeds": list(range(5)), "distill_n_texts": 640, "distill_max_new_tokens": 256}) is None
    assert tv.distillation_line({**small, "source_model": S, "distill_alpha": 0.1}) == (
        "source model: world:gpt2-bpe; 1 distillation seeds [0] of 8 texts of at most 16 tokens; alpha = 0.1")


def test_load_text_sets_orders_seeds_then_release(monkeypatch):
    monkeypatch.setattr(experiments, "distilled_text", lambda P, kind, seed, progress: f"{kind}-{seed}")
    monkeypatch.setattr(experiments, "read_texts", lambda path: [path])
    monkeypatch.setattr(data, "load_release_text", lambda: pd.DataFrame({"Text": ["r1", "r2"]}))
    texts, missing = tv.load_text_sets({}, [0, 1])
    assert list(texts) == [("unidetox", 0), ("samples", 0), ("unidetox", 1), ("samples", 1), ("release", 0)]
    assert texts[("samples", 1)] == ["samples-1"] and missing is None

    def unavailable():
        raise data.DataError(f"{views.ROOT}/data/raw/release.csv is missing.")

    monkeypatch.setattr(data, "load_release_text", unavailable)
    texts, missing = tv.load_text_sets({}, [0])
    assert list(texts) == [("unidetox", 0), ("samples", 0)] and missing == "data/raw/release.csv is missing."


def test_counts_and_examples_tables():
    texts = {("unidetox", 1): ["a b", " ", "c"], ("release", 0): ["", "r s t"]}
    counts = tv.counts_table(texts, NAMES)
    assert counts[["texts", "empty", "mean words"]].values.tolist() == [[3, 1, 1.0], [2, 1, 1.5]]
    examples = tv.examples_table(texts, NAMES, seed=1, n=1)
    assert examples.values.tolist() == [[NAMES["unidetox"], "a b"], [NAMES["release"], "r s t"]]


def test_mean_pm():
    assert tv.mean_pm(0.5, NAN) == "0.5000"
    assert tv.mean_pm(0.5, 0.25, 2) == "0.50 ± 0.25"


def toxicity_texts():
    texts = {("unidetox", 0): ["u0a", "u0b"], ("unidetox", 1): ["u1a", "u1b"], ("samples", 0): ["s0a", "s0b"]}
    scores = {"u0a": 0.1, "u0b": 0.7, "u1a": 0.2, "u1b": 0.2, "s0a": 0.6, "s0b": 0.4}
    return texts, {"main": FakeScorer("tox", scores)}


def test_toxicity_summary_means_shares_and_population_std_over_seeds():
    texts, scorers = toxicity_texts()
    scored = tv.score_texts(texts, scorers, NAMES)
    assert len(scored) == 6 and set(scored["scorer"]) == {"tox"}
    tox = tv.toxicity_summary(scored).set_index("kind")
    # UniDetox: seed means 0.4 and 0.2, shares above 0.5 of 0.5 and 0.
    assert tox.loc["unidetox", ["mean_score", "mean_score_std", "share_above_half", "share_above_half_std"]].tolist() == \
        pytest.approx([0.3, 0.1, 0.25, 0.25])
    assert tox.loc["unidetox", ["n_seeds", "n_texts"]].tolist() == [2, 4]
    assert tox.loc["samples", "mean_score"] == pytest.approx(0.5) and math.isnan(tox.loc["samples", "mean_score_std"])
    table = tv.toxicity_table(tox.reset_index())
    assert table.loc[0, ["scorer", "mean score", "share > 0.5"]].tolist() == ["tox (main)", "0.3000 ± 0.1000", "0.250 ± 0.250"]
    assert table.iloc[-2:]["mean score"].tolist() == ["0.008 ± 0.002", "0.003 ± 0.001"]  # paper reports, Table 3


def test_toxicity_paragraph_compares_unidetox_with_samples():
    texts, scorers = toxicity_texts()
    tox = tv.toxicity_summary(tv.score_texts(texts, scorers, NAMES))
    assert tv.compare_sentence(tox, "mean_score", "mean score") == (
        "under tox, the UniDetox text's mean score is 0.3000, lower than the Samples text's 0.5000 "
        "(a difference larger than the seed-to-seed standard deviation, 0.1000)")
    paragraph = tv.toxicity_paragraph(tox, 2)
    assert paragraph.startswith("In this run (2 seed(s)), under tox") and paragraph.endswith("for the samples, under Detoxify.")
    assert tv.toxicity_paragraph(tox[tox["kind"] == "samples"], 2) is None


LEFT, CENTER, RIGHT = [1, 0, 0], [0, 1, 0], [0, 0, 1]


def leaning_inputs():
    texts = {("unidetox", 0): ["l", "r"], ("unidetox", 1): ["l", "l2"], ("samples", 0): ["c", "r2"]}
    scorer = FakeScorer("lean", {"l": LEFT, "l2": LEFT, "r": RIGHT, "r2": RIGHT, "c": CENTER})
    reference = [{"text set": "truth", "left": 30.0, "center": 40.0, "right": 30.0},
                 {"text set": "read", "left": 50.0, "center": 30.0, "right": 20.0}]
    return texts, scorer, reference


def test_leaning_summary_shares_over_seeds():
    texts, scorer, _ = leaning_inputs()
    lean = tv.leaning_summary(texts, NAMES, scorer).set_index("kind")
    # UniDetox: 50/0/50 then 100/0/0 percent.
    assert lean.loc["unidetox", ["left_mean", "left_std", "center_mean", "right_mean", "right_std"]].tolist() == \
        pytest.approx([75, 25, 0, 25, 25])
    assert lean.loc["unidetox", "n_seeds"] == 2 and lean.loc["unidetox", "scorer"] == "lean"
    assert lean.loc["samples", ["left_mean", "center_mean", "right_mean"]].tolist() == [0, 50, 50]
    assert math.isnan(lean.loc["samples", "left_std"])


def test_leaning_table_rows_and_paragraph():
    texts, scorer, reference = leaning_inputs()
    lean = tv.leaning_summary(texts, NAMES, scorer)
    table = tv.leaning_table(lean, reference)
    assert table.loc[0].tolist() == [NAMES["unidetox"], "75.0 ± 25.0", "0.0 ± 0.0", "25.0 ± 25.0"]
    assert table.loc[2].tolist() == ["truth", "30.0", "40.0", "30.0"]
    assert table.loc[4].tolist() == ["paper reports: Samples GPT-2 XL", "50.81", "25.88", "23.31"]
    paragraph = tv.leaning_paragraph(lean, reference)
    # Gaps: UniDetox 75 - 25 = +50, Samples 0 - 50 = -50: equally one-sided.
    assert paragraph.startswith("The left-minus-right gap is -50.0 points for this run's Samples and +50.0 for its")
    assert "paper" not in paragraph.split(").")[1] and "by up to 20.0 points" in paragraph  # numbers, no reading
    assert paragraph.endswith("vary by a standard deviation of up to 25.0 points.")
    rows = tv.leaning_rows(lean, reference)
    assert len(rows) == 4 and rows["scorer"].eq("lean").all()


def test_allsides_reference_true_and_read_shares(monkeypatch):
    articles = pd.DataFrame({"split": ["test"] * 4 + ["train"], "leaning": ["left", "left", "center", "right", "left"],
                             "title": ["a", "b", "c", "d", "e"], "text": ["x"] * 5})
    monkeypatch.setattr(data, "load_allsides", lambda scheme: articles)
    scorer = FakeScorer("lean", {f"{t}\n\nx": LEFT for t in "abcd"})
    reference, missing = tv.allsides_reference({"profile": "no such profile"}, scorer)
    assert missing is None
    assert reference[0] == {"text set": "AllSides test articles: true labels", "left": 50.0, "center": 25.0, "right": 25.0}
    assert reference[1] == {"text set": "AllSides test articles: lean", "left": 100.0, "center": 0.0, "right": 0.0}

    def unavailable(scheme):
        raise data.DataError(f"{views.ROOT}/data/raw/allsides is missing.")

    monkeypatch.setattr(data, "load_allsides", unavailable)
    assert tv.allsides_reference({"profile": "tiny"}, scorer) == ([], "data/raw/allsides is missing.")


def test_jaccard_per_set_summary_table_and_paragraph():
    texts = {("unidetox", 0): ["a b c"], ("unidetox", 1): ["a c"], ("samples", 0): ["c d"], ("release", 0): ["c"]}
    jaccard = tv.jaccard_per_set(texts, NAMES, ["c e"], "world")
    # Toxic words {c, e}: UniDetox {a, b, c} 1/4 and {a, c} 1/3; Samples {c, d} 1/3; release {c} 1/2.
    assert jaccard["jaccard_percent"].tolist() == pytest.approx([25, 100 / 3, 100 / 3, 50])
    assert jaccard[["words in set", "words in toxic corpus", "shared words"]].values.tolist()[0] == [3, 2, 1]
    summary = tv.jaccard_summary(jaccard).set_index("text set")
    assert summary.loc[NAMES["unidetox"], ["jaccard (%)", "std over seeds", "seeds"]].tolist() == \
        pytest.approx([175 / 6, 25 / 6, 2])
    assert math.isnan(summary.loc[NAMES["samples"], "std over seeds"])
    table = tv.jaccard_table(summary.reset_index())
    assert table["text set"].iloc[-2:].tolist() == ["paper reports: UniDetox GPT-2 XL", "paper reports: Samples GPT-2 XL"]
    assert table["jaccard (%)"].iloc[0] == 29.17
    # containment: UniDetox 1/3 and 1/2 of its own words are toxic words; matched size: the fewest
    # running words of any set is 1 (the release's "c"), so each set is cut to one word.
    assert jaccard["containment_percent"].tolist() == pytest.approx([100 / 3, 50, 50, 100])
    assert jaccard["matched_words"].unique().tolist() == [1] and jaccard["matched_vocabulary"].tolist() == [1, 1, 1, 1]
    paragraph = tv.jaccard_paragraph(summary.reset_index(), NAMES, "world")
    assert paragraph.startswith("By the paper's measure, this run's UniDetox text shares 29.17% of the combined "
                                "vocabulary with the toxic corpus and its Samples 33.33%")
    assert "by containment (the share of a set's own words found in the toxic corpus) 41.7% and 50.0%" in paragraph
    assert tv.jaccard_paragraph(summary.reset_index().iloc[[0]], NAMES, "world") is None
    assert tv.toxic_corpus_line("world", ["c e", "e f"]) == "toxic corpus: world, 2 texts, 3 unique words"


def test_keywords_lists_and_comparison():
    texts = {("unidetox", 1): ["apple banana", "apple cherry"], ("samples", 1): ["banana date"], ("release", 0): ["mr said"]}
    keywords = tv.top_keywords(texts, NAMES, seed=1, top=2)
    assert keywords.columns.tolist() == ["kind", "text set", "seed", "rank", "word", "score"]
    assert keywords.groupby("kind", sort=False)["seed"].first().to_dict() == {"unidetox": 1, "samples": 1, "release": 0}
    assert keywords.loc[keywords["kind"] == "unidetox", "word"].tolist()[0] == "apple"  # in both texts
    lists = tv.keyword_lists(keywords, top=2)
    assert lists["text set"].tolist() == [NAMES["unidetox"], NAMES["samples"], NAMES["release"],
                                          "paper reports: UniDetox GPT-2 XL", "paper reports: Samples GPT-2 XL"]
    assert lists["top words"].iloc[-2] == "mr, said"
    manual = pd.DataFrame({"kind": ["unidetox", "unidetox", "samples", "samples", "release", "release", "release"],
                           "word": ["w1", "w2", "w2", "w3", "mr", "said", "one"]})
    lines = tv.keyword_comparison(manual, top=100).split("\n")
    assert lines[0] == "- This run: 1 words are in both top lists. Only in UniDetox's: w1. Only in Samples': w3."
    assert lines[1].startswith("- Paper reports: ")
    # "mr", "said" and "one" are all in the paper's UniDetox list; "one" is a scikit-learn stop word.
    assert lines[2].startswith("- The authors' release against the paper's UniDetox list: 3 of the paper's 100 words")
    assert lines[2].endswith(", 2 are in ours.")


# ================================================================================ scorecard (12)
def test_read_result_and_spread_verdict(tmp_path):
    pd.DataFrame({"a": [1]}).to_csv(tmp_path / "x.csv", index=False)
    assert sc.read_result(tmp_path, "x.csv")["a"].tolist() == [1]
    assert sc.read_result(tmp_path, "missing.csv") is None
    assert sc.spread_verdict(0.1, 0.1, "higher") == "inconclusive"  # the interval [0, 0.2] touches 0
    assert sc.spread_verdict(-0.2, 0.1, "higher") == "does not hold" and sc.spread_verdict(-0.2, 0.1, "lower") == "holds"


def test_results_claims_rows():
    claims = pd.DataFrame({"claim": ["UniDetox has the lowest TP ID", "other"], "verdict": ["holds", "inconclusive"],
                           "detail": ["lowest: UniDetox", "x"], "model": [T, T]})
    rows = sc.results_claims_rows(claims, "results_across_models_claims.csv", "07 across models")
    assert rows[0] == {"claim": "UniDetox has the lowest TP ID [opt-bpe]",
                       "paper reports": "lowest TP of all methods on every model (Tables 1, 2)",
                       "this run shows": "one build: lowest: UniDetox", "verdict": "holds", "chapter": "07 across models"}
    assert rows[1]["verdict"] == "inconclusive" and rows[1]["paper reports"] == ""
    [missing] = sc.results_claims_rows(None, "x.csv", "06")
    assert missing["claim"] == "(claims of x.csv)" and missing["verdict"] == "not testable here"


def test_replicate_rows():
    rep = pd.DataFrame({"claim": ["UniDetox lowers the source model's TP", "The toxic model is more toxic than the base model"],
                        "a": ["unidetox", "toxic"], "b": ["base", "base"], "replicates": [3, 3],
                        "verdict": ["holds", "inconclusive"], "detail": ["d1", "d2"]})
    first, second = sc.replicate_rows(rep)
    assert first["claim"] == "UniDetox lowers the source model's TP [3 builds]" and first["verdict"] == "holds"
    assert first["paper reports"].startswith("GPT-2 XL: TP 0.53") and second["paper reports"].startswith("the toxic GPT-2 XL")
    assert sc.replicate_rows(None) == []


def test_sensitivity_rows_compare_lower_left_shares():
    sens = pd.DataFrame({"method": ["unidetox", "unidetox", "dexperts", "lmsteer"], "lower_left": [True, True, False, True]})
    [row] = sc.sensitivity_rows(sens)
    assert row["this run shows"] == "lower-left share: UniDetox 100%, baselines 50%" and row["verdict"] == "holds"
    assert sc.sensitivity_rows(sens[sens["method"] == "unidetox"])[0]["verdict"] == "not testable here"  # no baseline
    assert sc.sensitivity_rows(None)[0]["this run shows"] == "chapter not run yet"
    # one UniDetox point per model (a target evaluated at its chosen steps only): nothing to read
    per_model = sens.assign(model=["a", "b", "a", "b"])
    [row] = sc.sensitivity_rows(per_model)
    assert row["verdict"] == "not testable here" and "fewer than 3 grid points" in row["this run shows"]
    three = pd.DataFrame({"model": ["a"] * 5, "method": ["unidetox"] * 3 + ["dexperts", "lmsteer"],
                          "lower_left": [True, True, False, False, False]})
    assert sc.sensitivity_rows(three)[0]["this run shows"] == "lower-left share: UniDetox 67%, baselines 0%"


def test_text_toxicity_rows_against_the_sum_of_stds():
    tox = pd.DataFrame({"kind": ["unidetox", "samples", "unidetox"], "role": ["main", "main", "second"],
                        "mean_score": [0.01, 0.02, 0.5], "mean_score_std": [0.002, NAN, 0.0], "scorer": ["tox", "tox", "t2"]})
    [row] = sc.text_toxicity_rows(tox)
    assert row["this run shows"] == ("mean score 0.010 vs 0.020 (tox; interval: the difference ± the sum of the seed stds, 0.002)")
    assert row["verdict"] == "holds"  # 0.01 > 0.002
    close = tox.assign(mean_score_std=[0.006, 0.005, 0.0])
    assert sc.text_toxicity_rows(close)[0]["verdict"] == "inconclusive"  # 0.01 <= 0.011
    assert sc.text_toxicity_rows(tox[tox["kind"] == "unidetox"]) == [] and sc.text_toxicity_rows(None) == []


def test_text_leaning_rows_gap_and_its_spread():
    lean = pd.DataFrame({"kind": ["unidetox", "samples"], "left_mean": [40.0, 60.0], "right_mean": [30.0, 20.0],
                         "left_std": [3.0, NAN], "right_std": [4.0, NAN]})
    [row] = sc.text_leaning_rows(lean)
    assert row["this run shows"] == "left-right gap 10.0 vs 40.0 points (seed spread 5.0)" and row["verdict"] == "holds"
    assert sc.text_leaning_rows(lean.assign(left_mean=[40.0, 33.0]))[0]["verdict"] == "inconclusive"  # 10 vs 13


def test_text_jaccard_rows():
    jac = pd.DataFrame({"kind": ["unidetox", "unidetox", "samples"], "jaccard_percent": [20.0, 22.0, 25.0]})
    [row] = sc.text_jaccard_rows(jac)
    assert row["this run shows"] == "21.00% vs 25.00% (seed spread 1.00)" and row["verdict"] == "holds"
    assert sc.text_jaccard_rows(jac.assign(jaccard_percent=[20.0, 30.0, 25.5]))[0]["verdict"] == "inconclusive"


def test_alignment_rows_bootstrap_over_texts():
    align = pd.DataFrame({"set": ["UniDetox"] * 3 + ["Samples"] * 3, "cosine": [0.1, 0.5, 0.3, 0.0, 0.4, -0.1]})
    [row] = sc.alignment_rows(align)
    assert row["this run shows"].startswith("mean cosine 0.3000 vs 0.1000, difference +0.2000 [")
    assert row["verdict"] == "inconclusive"  # three texts each: the interval reaches below 0
    apart = align.assign(cosine=[0.5, 0.51, 0.49, 0.1, 0.11, 0.09])
    assert sc.alignment_rows(apart)[0]["verdict"] == "holds"
    assert sc.alignment_rows(align[align["set"] == "UniDetox"]) == [] and sc.alignment_rows(None) == []


def test_controls_rows_read_chapter_04s_claims():
    claims = pd.DataFrame({"claim": ["c"], "a": ["unidetox_alpha"], "b": ["unidetox"], "verdict": ["inconclusive"],
                           "detail": ["test TP 0.22 vs 0.20"]})
    [row] = sc.controls_rows(claims)
    assert row == {"claim": "c", "paper reports": "Table 5: similar in most cases", "this run shows": "test TP 0.22 vs 0.20",
                   "verdict": "inconclusive", "chapter": "04 distillation"}
    assert sc.controls_rows(None) == []


def test_verdict_counts():
    card = pd.DataFrame({"verdict": ["holds", "inconclusive", "holds"]})
    assert sc.verdict_counts(card).values.tolist() == [["holds", 2], ["inconclusive", 1]]


def test_text_rows_bootstrap_over_texts_when_per_text_values_are_kept():
    tox = pd.DataFrame({"kind": ["unidetox", "samples"], "role": ["main", "main"], "mean_score": [0.0, 0.0],
                        "mean_score_std": [0.0, 0.0], "scorer": ["tox", "tox"]})
    scores = pd.DataFrame({"kind": ["unidetox"] * 50 + ["samples"] * 50, "role": "main",
                           "score": [0.01] * 50 + [0.2] * 50})
    [row] = sc.text_toxicity_rows(tox, scores)
    assert row["verdict"] == "holds" and row["this run shows"].startswith("mean score 0.010 vs 0.200 (tox), difference -0.190")
    lean = pd.DataFrame({"kind": ["unidetox", "samples"], "left_mean": [0, 0], "right_mean": [0, 0],
                         "left_std": [0, 0], "right_std": [0, 0]})
    labels = pd.DataFrame({"kind": ["unidetox"] * 40 + ["samples"] * 40,
                           "leaning": ["left", "right"] * 20 + ["left"] * 36 + ["center"] * 4})
    [row] = sc.text_leaning_rows(lean, labels)
    assert row["verdict"] == "holds" and row["this run shows"].startswith("left-right gap 0.0 vs 90.0 points")


def test_perplexity_caveat_reads_the_evaluator_margin(tmp_path):
    P = {"results_dir": str(tmp_path)}
    assert rv.perplexity_caveat(P) is None  # no world: nothing to say
    (tmp_path / "world").mkdir()
    models = pd.DataFrame({"model": ["gpt2-bpe", "opt-bpe", "evaluator"], "heldout_news_bits_per_byte": [2.16, 2.10, 2.00]})
    models.to_csv(tmp_path / "world" / "models.csv", index=False)
    assert rv.perplexity_caveat(P) == "the evaluator is only 0.10 bits per byte better than the models it scores"
    models.assign(heldout_news_bits_per_byte=[2.16, 2.10, 1.80]).to_csv(tmp_path / "world" / "models.csv", index=False)
    assert rv.perplexity_caveat(P) is None
    prompts = claims_prompts(S, 0)
    ours = rv.claims_by_model(prompts, perplexity_untestable="weak evaluator")["gpt2-bpe"]
    assert ours.loc["UniDetox keeps perplexity at or below the base model's", "verdict"] == "not testable here"


def test_jaccard_difference_draws_texts_without_replacement_and_the_scorecard_reads_it():
    texts = {("unidetox", 0): ["a b", "a a"], ("unidetox", 1): ["b a"], ("samples", 0): ["c d", "c x"], ("samples", 1): ["d c"]}
    diff = tv.jaccard_difference(texts, ["c d e"], n_words=2, n_boot=100)
    # UniDetox's words {a, b} share nothing with {c, d, e}; Samples' two words are both toxic words
    assert diff["a"].iloc[0] == 0.0 and diff["b"].iloc[0] > 0 and diff["high"].iloc[0] < 0
    jac = pd.DataFrame({"kind": ["unidetox", "samples"], "matched_jaccard_percent": [0.0, 50.0], "jaccard_percent": [0, 40],
                        "containment_percent": [0, 100]})
    [row] = sc.text_jaccard_rows(jac, diff)
    assert row["verdict"] == "holds" and "(texts drawn in random orders); unmatched 0.00% vs 40.00%" in row["this run shows"]


def test_matched_jaccard_interval_contains_its_estimate_where_repeats_would_shrink_vocabularies():
    # Many one-word texts of distinct words: a with-replacement draw would repeat texts and lose words,
    # pulling every draw's Jaccard below the estimate; drawn without replacement, the estimate stays inside.
    toxic = [f"w{i}" for i in range(0, 400, 2)]  # every even word is also a toxic-corpus word
    texts = {("unidetox", 0): [f"w{i}" for i in range(200)], ("samples", 0): [f"w{i}" for i in range(200, 400)]}
    diff = tv.jaccard_difference(texts, toxic, n_words=100, n_boot=200).iloc[0]
    assert diff["low"] <= diff["diff"] <= diff["high"]
    assert abs(diff["a"] - 100 * 50 / 250) < 100 * 12 / 250 and abs(diff["b"] - 100 * 50 / 250) < 100 * 12 / 250


def test_group_cost_rows_are_beyond_the_paper():
    claims = pd.DataFrame({"claim": ["UniDetox raises the perplexity gap of some group"], "model": ["gpt2-bpe"],
                           "verdict": ["inconclusive"], "detail": ["largest: muslim +0.10"]})
    [row] = sc.group_cost_rows(claims)
    assert row["claim"].endswith("[gpt2-bpe] (beyond the paper)") and row["paper reports"] == "not measured in the paper"
    assert sc.group_cost_rows(None) == []
