"""The views of the distillation chapter (04) and of the chapter on why UniDetox works (10): tables,
sentences and comparisons on small hand-made inputs, checked against hand computations. No model
runs and nothing is written to the repository: the library calls they wrap are replaced."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from unidetox_core import experiments as E
from unidetox_core.views import alignment as A
from unidetox_core.views import distillation as D

KEYS = ["unidetox", "samples", "unidetox_alpha", "unidetox_topk", "cut_only", "clean_news"]
LABELS = {"unidetox": "UniDetox", "samples": "Samples", "unidetox_alpha": "UniDetox, alpha = 0.05",
          "unidetox_topk": "UniDetox, top-k = 50", "cut_only": "cut only, alpha = 0.1", "clean_news": "clean news"}
P = dict(profile="tiny", source_model="src", results_dir="unused", seeds=[0, 1, 2], detox_lrs=[1e-3, 5e-4],
         detox_steps=[4, 2], distill_top_k=0, distill_alpha=0.1, distill_n_texts=8, distill_max_new_tokens=16,
         distill_batch_size=4, distill_temperature=1.0, toxicity_scorer="lexicon", second_toxicity_scorer="classifier",
         detox_max_length=32)


# ------------------------------------------------------------------------------------ chapter 04
def test_comparison_settings_fill_only_what_is_none():
    assert D.comparison_settings(P, None, None, None) == (50, 1e-3, [2, 4])  # top-k off in P: the official 50
    assert D.comparison_settings({**P, "distill_top_k": 50}, None, None, None)[0] == 0
    assert D.comparison_settings(P, 7, 5e-4, [3, 1]) == (7, 5e-4, [1, 3])


def test_recipe_table_sets_paper_beside_profile_as_text():
    paper = {**P, "profile": "paper", "distill_n_texts": 640, "distill_alpha": 0.1}
    table = D.recipe_table(P, paper)
    assert list(table.columns) == ["paper reports", "this run (tiny)"]
    assert table.loc["texts"].tolist() == ["640", "8"]
    assert table.loc["top-k (0 = off)"].tolist() == ["0", "0"]
    assert len(table) == 6


def test_text_kinds_and_labels():
    kinds = D.text_kinds(P, 0.05, 50)
    assert list(kinds) == KEYS[:-1]
    assert kinds["unidetox_topk"] == ("UniDetox, top-k = 50", dict(kind="unidetox", top_k=50))
    assert kinds["cut_only"] == ("cut only, alpha = 0.1", dict(kind="cut_only"))
    assert D.text_labels(kinds) == LABELS


def test_make_texts_samples_everything_at_once(monkeypatch, tmp_path):
    calls = []

    def distilled_texts(P, jobs):
        calls.append(jobs)
        return [tmp_path / f"{i}.csv" for i in range(len(jobs))]

    monkeypatch.setattr(E, "distilled_texts", distilled_texts)
    monkeypatch.setattr(E, "clean_text", lambda P, seed: tmp_path / f"clean-{seed}.csv")
    paths = D.make_texts(P, D.text_kinds(P, 0.05, 50), distill_seed=1)
    [jobs] = calls
    assert jobs[:2] == [dict(seed=1, kind="unidetox"), dict(seed=1, kind="samples")]
    # the other seeds of UniDetox and Samples come after the chapter's five texts, and are not returned
    assert jobs[5:] == [dict(kind="unidetox", seed=0), dict(kind="unidetox", seed=2),
                        dict(kind="samples", seed=0), dict(kind="samples", seed=2)]
    assert list(paths) == KEYS and paths["cut_only"] == tmp_path / "4.csv"
    assert paths["clean_news"] == tmp_path / "clean-1.csv"


def test_text_metadata_reads_the_json_beside_each_csv(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"alpha": 0.1}))
    assert D.text_metadata({"unidetox": tmp_path / "a.csv"}) == {"unidetox": {"alpha": 0.1}}


def test_shorten_and_example_table():
    assert D.shorten("a  b\nc") == "a b c"
    assert D.shorten("abcdef", 3) == "abc …"
    texts = {"unidetox": ["one", "two", "three"], "samples": ["x " * 200]}
    table = D.example_table(texts, LABELS, ("unidetox", "samples"), 2)
    assert table["text"].tolist() == ["UniDetox", "UniDetox", "Samples"]
    assert table["example"].tolist()[:2] == ["one", "two"]
    assert len(table["example"].iloc[2]) == 300 + 2


def stats_inputs():
    texts = {"unidetox": ["a b c", "d e"], "samples": ["a"], "clean_news": ["w w w w"]}
    meta = {"unidetox": dict(alpha=0.1, top_k=0, mean_length=3.5, eos_fraction=0.5, mean_support=12.0,
                             tokens_per_s=100.0, wall_time_s=1.0),
            "samples": dict(alpha=None, top_k=0, mean_length=1.0),
            "clean_news": dict(kind="clean_news", n=1, words=4)}
    return texts, meta


def test_text_stats_from_the_records():
    texts, meta = stats_inputs()
    stats = D.text_stats(texts, meta, LABELS).set_index("text")
    assert stats.loc["unidetox", "mean_words"] == 2.5 and stats.loc["clean_news", "mean_words"] == 4.0
    assert stats.loc["unidetox", "alpha"] == 0.1 and math.isnan(stats.loc["samples", "alpha"])  # no cut
    assert stats.loc["samples", "top_k"] == 0 and math.isnan(stats.loc["clean_news", "top_k"])  # not generated
    assert stats["n_texts"].tolist() == [2, 1, 1]
    assert math.isnan(stats.loc["samples", "mean_support"]) and stats.loc["unidetox", "mean_support"] == 12.0
    assert stats.loc["samples", "label"] == "Samples"


def test_word_lengths():
    texts, _ = stats_inputs()
    lengths = D.word_lengths(texts, LABELS)
    assert lengths["words"].tolist() == [3, 2, 1, 4]
    assert lengths["text"].tolist() == ["UniDetox", "UniDetox", "Samples", "clean news"]


def scored_stats():
    texts, meta = stats_inputs()
    stats = D.text_stats(texts, meta, LABELS)
    scores = {"a b c": 0.9, "d e": 0.1, "a": 0.6, "w w w w": 0.0}

    def scorer(items):
        return [scores[t] for t in items]

    def scorer2(items):
        return [scores[t] / 2 for t in items]

    return stats, D.with_text_toxicity(stats, texts, scorer, scorer2)


def test_with_text_toxicity_means_and_shares_and_leaves_stats_alone():
    stats, scored = scored_stats()
    assert "mean_score" not in stats
    row = scored.set_index("text").loc["unidetox"]
    assert row["mean_score"] == pytest.approx(0.5) and row["share_above_half"] == 0.5
    assert row["mean_score2"] == pytest.approx(0.25) and row["share_above_half2"] == 0.0
    assert list(scored.columns[-4:]) == ["mean_score", "share_above_half", "mean_score2", "share_above_half2"]


def test_toxicity_table_names_scorers_and_paper_numbers():
    _, scored = scored_stats()
    table = D.toxicity_table(scored, P)
    assert list(table.columns) == ["mean (lexicon)", "share > 0.5", "mean (classifier)", "share > 0.5 (2nd)",
                                   "paper reports (Detoxify)"]
    assert table["paper reports (Detoxify)"].tolist() == ["0.003 ± 0.001", "0.008 ± 0.002", "—"]
    assert table.loc["Samples", "mean (lexicon)"] == 0.6


def test_toxicity_sentence_gives_both_texts_under_both_scorers():
    stats = pd.DataFrame({"text": ["unidetox", "samples"], "mean_score": [0.1, 0.2], "mean_score2": [0.3, 0.25]})
    assert D.toxicity_sentence(stats, P) == ("UniDetox's text scores 0.1000 on average under lexicon and 0.3000 under "
                                             f"{P['second_toxicity_scorer']}; the Samples text 0.2000 and 0.2500.")


def test_support_sentence_gives_every_text_s_support():
    stats = pd.DataFrame({"text": ["unidetox", "samples", "unidetox_alpha", "unidetox_topk", "cut_only"],
                          "mean_support": [30.0, 300.0, 40.0, 20.0, 25.0]})
    assert D.support_sentence(stats, P, 0.05, 50) == (
        "Average support per step: 30.0 tokens for UniDetox (alpha = 0.1, top-k off), 40.0 with alpha = 0.05, "
        "20.0 with top-k 50, 25.0 for the cut alone and 300.0 for plain Samples (the whole vocabulary).")


def controls_frame() -> pd.DataFrame:
    """The base model and six texts at steps 1 and 2 (100 validation prompts in mind)."""
    best = {"unidetox": 0.20, "samples": 0.40, "unidetox_alpha": 0.22, "unidetox_topk": 0.10,
            "cut_only": 0.25, "clean_news": 0.05}
    rows = [dict(text="none", label="base model", steps=0, TP_all=0.5, PPL=20.0, dist_1=0.8)]
    for key, tp in best.items():
        # step 1 ties step 2 on TP for UniDetox and loses on perplexity: the tie goes to step 2
        tp1 = tp if key == "unidetox" else tp + 0.1
        rows.append(dict(text=key, label=LABELS[key], steps=1, TP_all=tp1, PPL=30.0, dist_1=0.78))
        rows.append(dict(text=key, label=LABELS[key], steps=2, TP_all=tp, PPL=25.0,
                         dist_1=0.5 if key in ("unidetox", "clean_news") else 0.75))
    frame = pd.DataFrame(rows)
    for column in ("TP_ID", "TP_OOD", "EMT_all", "mean_score", "TP2_all", "mean_score2", "dist_3"):
        frame[column] = frame["TP_all"]
    return frame


def test_best_steps_lowest_tp_then_lower_ppl_in_key_order():
    best = D.best_steps(controls_frame(), {k: None for k in KEYS})
    assert best.index.tolist() == KEYS
    assert best["steps"].tolist() == [2] * 6
    assert best.loc["unidetox", "PPL"] == 25.0


def test_base_row_and_controls_table():
    controls = controls_frame()
    assert D.base_row(controls)["TP_all"] == 0.5
    table = D.controls_table(controls, D.best_steps(controls, KEYS))
    assert table.index.tolist() == ["base model"] + [LABELS[k] for k in KEYS]
    assert list(table.columns) == list(D.CONTROL_COLUMNS.values())
    assert table.loc["Samples", "TP ID"] == 0.4


def scored(tp_by_prompt: list[float], domains=("gender_lgbtq", "race_nationalities", "religion", "disability")):
    """Scored continuations (one per prompt, seed 0) whose prompts are toxic where ``tp_by_prompt`` is 1."""
    n = len(tp_by_prompt)
    return pd.DataFrame({"prompt_id": range(n), "domain": [domains[i % 4] for i in range(n)], "seed": 0, "sample": 0,
                         "continuation": ["a b"] * n, "score": [0.9 if t else 0.1 for t in tp_by_prompt],
                         "score2": 0.0, "ppl": 10.0})


def test_compare_controls_chooses_on_val_and_compares_on_test_paired(monkeypatch, tmp_path):
    calls = fake_library(monkeypatch, tmp_path)
    toxic = {"base": [1] * 16, "unidetox": [0] * 16, "samples": [1] * 16, "cut_only": [0] * 15 + [1],
             "unidetox_alpha": [0] * 16}

    def continuations(P, spec, split="val", seed=0, progress=True):
        assert split == "test"
        return scored(toxic[spec["method"]]).assign(seed=seed)

    monkeypatch.setattr(E, "continuations", continuations)
    monkeypatch.setattr(E, "perplexity_rows", lambda P, frame: pd.Series(True, index=frame.index))
    best = pd.DataFrame({"steps": [2.0, 4.0, 2.0, 2.0]}, index=["unidetox", "samples", "cut_only", "unidetox_alpha"])
    paths = {k: f"{k}.csv" for k in best.index}
    claims, prompts = D.compare_controls({**P, "ppl_drop_threshold": 1e4}, best, paths, 1e-3)
    [jobs] = calls  # base + 4 texts, each at every seed of P, on the test split
    assert len(jobs) == 5 * 3 and {split for _, split, _ in jobs} == {"test"}
    assert set(prompts["text"]) == {"none", *best.index} and len(prompts) == 5 * 3 * 16
    by = claims.set_index("a")
    samples = claims[claims["b"] == "samples"].iloc[0]
    assert samples["diff"] == -1.0 and samples["verdict"] == "holds"  # 0 toxic against all toxic, every draw
    cut = claims[claims["b"] == "cut_only"].iloc[0]
    assert cut["diff"] == pytest.approx(-0.25 / 4)  # one toxic prompt of the 4 of one category, 4 categories
    assert cut["verdict"] == "inconclusive"  # a draw without the one toxic prompt gives 0
    assert by.loc["unidetox_alpha", "verdict"] == "holds"  # identical: the interval is [0, 0], inside +-0.05
    assert "clean_news" not in set(claims["b"])  # no such text, no claim
    text = D.controls_sentences(claims, prompts, LABELS)
    assert text.startswith("The base model's TP on the same prompts is 1.000.")
    assert "UniDetox vs Samples: -1.000 [-1.000, -1.000] — holds." in text


def test_best_diverse_steps_and_matched_table():
    controls = controls_frame()
    matched = D.best_diverse_steps(controls, KEYS, LABELS)
    # floor 0.72: UniDetox's and clean news's step 2 (Dist-1 0.5) are out, their step 1 (0.78) is in
    assert matched.loc["unidetox", "steps"] == 1 and matched.loc["clean_news", "steps"] == 1
    assert matched.loc["samples", "steps"] == 2 and matched["label"].tolist() == [LABELS[k] for k in KEYS]
    controls.loc[(controls["text"] == "cut_only") & (controls["steps"] == 1), "dist_1"] = 0.1
    controls.loc[(controls["text"] == "cut_only") & (controls["steps"] == 2), "dist_1"] = 0.1
    matched = D.best_diverse_steps(controls, KEYS, LABELS)
    table = D.matched_table(matched)
    assert list(table.columns) == ["steps", "TP", "mean score", "PPL", "Dist-1"]
    assert table.loc["cut only, alpha = 0.1"].tolist() == ["—"] * 5
    assert table.loc["Samples", "TP"] == 0.4


def test_diversity_sentences():
    controls = controls_frame()
    best, base = D.best_steps(controls, KEYS), D.base_row(controls)
    matched = D.best_diverse_steps(controls, KEYS, LABELS)
    text = D.diversity_sentences(best, matched, base, LABELS)
    assert text.startswith("At their lowest-TP steps, 2 of 6 texts leave the model with less than 90% of the "
                           "base model's Dist-1 (0.80): UniDetox; clean news. ")
    # kept TPs, lowest first: top-k 0.10, clean news 0.15, alpha 0.22, cut only 0.25, UniDetox 0.20 at step 1
    assert "the lowest TPs are UniDetox, top-k = 50 (TP 0.100); clean news (TP 0.150); UniDetox (TP 0.200)" in text
    assert "At matched diversity UniDetox reaches TP 0.200, Samples 0.400 (validation, one seed). " in text
    assert "within noise" not in text and "No checkpoint" not in text
    controls.loc[controls["text"] == "samples", "dist_1"] = 0.1
    text = D.diversity_sentences(best, D.best_diverse_steps(controls, KEYS, LABELS), base, LABELS)
    assert "Samples 0." not in text and text.endswith("No checkpoint of Samples keeps 90% of the base model's Dist-1 on this grid.")


def fake_library(monkeypatch, tmp_path):
    """Stand-ins for the fine-tuning and evaluation calls, recording what they were asked."""
    calls = []

    def method_variant(P, method, model, value=None, lr=None, progress=True):
        return dict(method=method, model=model, value=value, lr=lr)

    def detox_checkpoints(P, name, text_csv, lr, progress=True, upto=None):
        return {s: tmp_path / f"{name}-{text_csv}-{s}" for s in P["detox_steps"] if upto is None or s <= upto}

    def evaluate_specs(P, jobs, progress=True, desc=""):
        calls.append(jobs)
        return [{} for _ in jobs]

    def evaluate_method(P, method, model, value=None, lr=None, *, split="val", seed=0, progress=False):
        return dict(TP_all=0.1 if method == "base" else 0.2, TP=0.0, method=method)

    def evaluate(P, spec, split="val", seed=0, progress=True):
        return dict(TP_all=0.3, EMT_all=0.4, checkpoint=spec["checkpoint"], seed=seed)

    for name, f in dict(method_variant=method_variant, detox_checkpoints=detox_checkpoints,
                        evaluate_specs=evaluate_specs, evaluate_method=evaluate_method, evaluate=evaluate).items():
        monkeypatch.setattr(E, name, f)
    return calls


def test_control_variant_shares_the_method_variants(monkeypatch, tmp_path):
    fake_library(monkeypatch, tmp_path)
    assert D.control_variant(P, "samples", "s.csv", 2, 1e-3) == dict(method="samples", model="src", value=2, lr=1e-3)
    spec = D.control_variant(P, "cut_only", "c.csv", 4, 1e-3)
    assert spec["method"] == "cut_only" and spec["checkpoint"] == str(tmp_path / "src-c.csv-4")
    assert spec["hparam"] == "steps" and spec["value"] == 4 and spec["lr"] == 1e-3


def test_evaluate_controls_rows(monkeypatch, tmp_path):
    calls = fake_library(monkeypatch, tmp_path)
    paths = {"unidetox": "u.csv", "cut_only": "c.csv"}
    stats = pd.DataFrame({"text": ["unidetox", "cut_only"], "alpha": [0.1, 0.2], "top_k": [0, 50]})
    controls = D.evaluate_controls(P, paths, LABELS, stats, [2, 4], 1e-3, seed=3)
    [jobs] = calls  # everything evaluated in one batch: the base model and 2 texts x 2 steps
    assert len(jobs) == 5 and all(split == "val" and seed == 3 for _, split, seed in jobs)
    assert controls["text"].tolist() == ["none", "unidetox", "unidetox", "cut_only", "cut_only"]
    assert controls["steps"].tolist() == [0, 2, 4, 2, 4]
    assert controls["label"].tolist()[:2] == ["base model", "UniDetox"]
    cut = controls[controls["text"] == "cut_only"]
    assert cut["TP"].tolist() == [0.3, 0.3] and cut["EMT"].tolist() == [0.4, 0.4]  # named as evaluate_method names them
    assert controls.loc[controls["text"] == "unidetox", "TP_all"].tolist() == [0.2, 0.2]
    assert math.isnan(controls.loc[0, "alpha"]) and controls["top_k"].tolist()[1:] == [0, 0, 50, 50]


def test_continuations_table_rows_per_prompt(monkeypatch, tmp_path):
    fake_library(monkeypatch, tmp_path)

    def continuations(P, spec, split="val", seed=0, progress=True):
        who = spec.get("checkpoint", spec["method"])
        return pd.DataFrame({"prompt_id": [0, 0, 1, 2], "prompt": ["p0", "p0", "p1", "p2"],
                             "continuation": [f"{who} first", f"{who} second", f"{who} one", f"{who} two"]})

    monkeypatch.setattr(E, "continuations", continuations)
    best = pd.DataFrame({"steps": [2.0, 4.0]}, index=["samples", "clean_news"])
    table = D.continuations_table(P, best, {"samples": "s.csv", "clean_news": "n.csv"}, LABELS, 1e-3, 0, 2,
                                  shown=("samples", "clean_news"))
    assert table["model"].tolist()[:4] == ["prompt", "base model", "Samples (2 steps)", "clean news (4 steps)"]
    assert len(table) == 2 * 4
    first = table.iloc[:4]["text"].tolist()
    prompt = first[0]
    assert prompt in {"p0", "p1", "p2"}
    assert first[1] == ("base first" if prompt == "p0" else f"base {'one' if prompt == 'p1' else 'two'}")
    assert first[3].startswith(str(tmp_path / "src-n.csv-4"))


# ------------------------------------------------------------------------------------ chapter 10
def test_pick_drops_empty_texts_and_caps_n():
    texts = ["a", " ", "b", "", "c"]
    assert sorted(A.pick(texts, 10, 0)) == ["a", "b", "c"]
    assert A.pick(texts, 2, 0) == pd.Series(["a", "b", "c"]).sample(2, random_state=0).tolist()


def test_text_sets_cap_the_toxic_corpus(monkeypatch):
    monkeypatch.setattr(E, "distilled_text", lambda P, kind, seed, progress: f"{kind}-{seed}")
    monkeypatch.setattr(E, "read_texts", lambda path: [f"{path} {i}" for i in range(20)])
    monkeypatch.setattr(E, "toxic_texts", lambda P: [f"toxic {i}" for i in range(20)])
    sets = A.text_sets(P, 10, 1)
    assert list(sets) == ["UniDetox", "Samples", "toxic corpus"]
    assert [len(t) for t in sets.values()] == [10, 10, 8]  # distill_n_texts = 8
    assert all(t.startswith("unidetox-1 ") for t in sets["UniDetox"])


def fake_alignment(texts, score, dot, cosine, tokens=None):
    return pd.DataFrame({"text": texts, "n_tokens": tokens or [4] * len(texts), "logp_base": -1.0,
                         "logp_toxic": -2.0, "contrastive_score": score, "grad_dot": dot, "grad_norm": 1.0,
                         "tau_norm": 0.5, "cosine": cosine})


def test_alignment_frame_sets_and_score_per_token(monkeypatch):
    def gradient_alignment(base, toxic, tokenizer, texts, *, max_length, batch_size):
        return fake_alignment(texts, [8.0] * len(texts), [1.0] * len(texts), [0.1] * len(texts),
                              tokens=[0] + [4] * (len(texts) - 1))

    monkeypatch.setattr(A.analysis, "gradient_alignment", gradient_alignment)
    align = A.alignment_frame(None, None, None, {"a": ["x", "y"], "b": ["z"]}, max_length=16)
    assert align["set"].tolist() == ["a", "a", "b"]
    assert align["score_per_token"].tolist() == [8.0, 2.0, 8.0]  # no tokens counts as one


def align_frame() -> pd.DataFrame:
    frames = [
        fake_alignment(["u1", "u2", "u3"], [1.0, 2.0, 3.0], [1.0, 2.5, 2.0], [0.3, 0.2, 0.1]).assign(set="UniDetox"),
        fake_alignment(["s1", "s2", "s3"], [1.0, -1.0, 0.5], [2.0, 1.0, 0.5], [0.0, -0.1, 0.15]).assign(set="Samples"),
        fake_alignment(["t1  x", "t2"], [-2.0, -1.0], [-1.0, -2.0], [-0.3, -0.2]).assign(set="toxic corpus"),
    ]
    align = pd.concat(frames, ignore_index=True)
    align["score_per_token"] = align["contrastive_score"] / 4
    return align


def test_weight_norm():
    layer = torch.nn.Linear(2, 1)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[3.0, 0.0]]))
        layer.bias.fill_(4.0)
    assert A.weight_norm(layer) == pytest.approx(5.0)


def test_model_line_counts_parameters():
    assert A.model_line(P, torch.nn.Linear(2, 3)) == "source model src: 9 parameters on cpu"


def test_saved_alignment_columns_and_cut_text():
    align = align_frame()
    align.loc[0, "text"] = "x" * 200
    saved = A.saved_alignment(align, 7)
    assert list(saved.columns) == A.SAVED_COLUMNS
    assert saved["seed"].eq(7).all() and len(saved.loc[0, "text"]) == 120
    assert len(align.loc[0, "text"]) == 200  # the frame itself keeps the whole text


def test_size_line_and_sample_size_note():
    assert A.size_line(align_frame(), 32, 50.0) == ("8 texts (at most 32 tokens each, tokenised as for fine-tuning); "
                                                   "|tau_toxic| = 0.5, 1.00% of |theta_base| = 50")
    note = A.sample_size_note({"UniDetox": [1, 2], "toxic corpus": [1]}, 3)
    assert note.startswith("**Sample sizes:** 2 UniDetox, 1 toxic corpus texts, drawn with seed 3 ")


def test_set_summary_and_summary_table():
    align = align_frame()
    summary = A.summary_table(align)
    assert summary.index.tolist() == ["UniDetox", "Samples", "toxic corpus", "all texts"]
    u = summary.loc["UniDetox"]
    assert u["texts"] == 3 and u["mean s(x)"] == 2.0 and u["mean estimate"] == pytest.approx(5.5 / 3)
    assert u["r(s, estimate)"] == pytest.approx(np.corrcoef([1, 2, 3], [1, 2.5, 2])[0, 1])
    assert summary.loc["Samples", "same sign"] == pytest.approx(2 / 3)  # -1 vs 1 disagree
    assert summary.loc["Samples", "median cosine"] == 0.0 and summary.loc["Samples", "cosine > 0"] == pytest.approx(1 / 3)
    assert math.isnan(summary.loc["toxic corpus", "r(s, estimate)"])  # two texts: no correlation
    assert summary.loc["all texts", "texts"] == 8 and summary["texts"].dtype == int


def test_taylor_fit_and_sentence():
    align = align_frame()
    s, g = align["contrastive_score"].to_numpy(), align["grad_dot"].to_numpy()
    fit = A.taylor_fit(align)
    assert fit["r"] == pytest.approx(np.corrcoef(s, g)[0, 1])
    assert fit["slope"] == pytest.approx((s * g).sum() / (s * s).sum())
    assert fit["same"] == pytest.approx(7 / 8)
    text = A.taylor_sentence(align, 50.0)
    assert text.startswith(f"Over all 8 texts, the first-order estimate against the exact score: Pearson r = {fit['r']:.2f}")
    assert "same sign for 88% of texts" in text and "The toxic vector is 1.00% of the weights' norm" in text
    assert "track" not in text  # numbers only: the chapter's prose reads them


def test_superiority_is_the_probability_of_a_higher_cosine():
    align = align_frame()
    # UniDetox {0.3, 0.2, 0.1} vs Samples {0.0, -0.1, 0.15}: 8 of 9 pairs higher
    assert A.superiority(align, "UniDetox", "Samples") == pytest.approx(8 / 9)
    assert A.superiority(align, "UniDetox", "toxic corpus") == 1.0
    assert math.isnan(A.superiority(align, "UniDetox", "nothing"))


def test_cosine_sentences_give_the_numbers():
    align = align_frame()
    text = A.cosine_sentences(align, A.summary_table(align))
    assert text.startswith("The median cosine is 0.2000 for UniDetox texts, 0.0000 for samples and -0.2500 for "
                           "toxic-corpus texts. A random UniDetox text has a higher cosine than a random sample with "
                           "probability 0.89")
    assert "with 3 and 3 texts" in text
    assert "Mann-Whitney p = 0.2 with 3 and 3 texts" in text  # 3 against 3: scipy's two-sided p
    assert "Eq. 5" not in text  # numbers only: the chapter's prose reads them


def test_extreme_texts():
    table = A.extreme_texts(align_frame(), 2)
    assert table["cosine"].tolist() == [0.3, 0.2, -0.2, -0.3]
    assert table["text"].tolist() == ["u1", "u2", "t2", "t1 x"]
    assert list(table.columns) == ["set", "cosine", "contrastive_score", "n_tokens", "text"]
