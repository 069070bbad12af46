"""Analyses of text sets (Table 3, 10, 11) and the compute records (Table 9); gradient alignment
has its own file, test_alignment.py."""

from __future__ import annotations

import json

import numpy as np
import pytest

from unidetox_core import analysis, stages
from unidetox_core.cache import config_key
from unidetox_core.profiles import load_profile


# ------------------------------------------------------------------------------------------ words
def test_words_keep_negations_drop_clitics_and_split_on_punctuation():
    assert analysis.words("Don't STOP: it's 2013, e-mail U.S. news…") == [
        "dont", "stop", "it", "2013", "e", "mail", "u", "s", "news"]
    assert analysis.words("I\u2019m here_now") == ["i", "here", "now"]  # typographic apostrophe; _ separates
    # the debris of generated word salad: no new words made by gluing a clitic on
    assert analysis.words("also's said\u2019s has's Trump\u2019t isn't") == ["also", "said", "has", "trump", "isnt"]
    assert analysis.words("") == []


def test_containment_and_word_prefix():
    assert analysis.containment(["a b c d"], ["a x"]) == pytest.approx(1 / 4)
    assert analysis.containment([], ["a"]) == 0.0
    sample = analysis.word_prefix(["a b c", "d e", "f"], 4, seed=0)
    assert len(sample) == 1 and len(sample[0].split()) == 4
    assert analysis.word_prefix(["a b c", "d e", "f"], 4, seed=0) == sample  # seeded
    assert analysis.word_prefix(["a b"], 10) == ["a b"]  # fewer words than asked: all of them


def test_jaccard_of_unique_words():
    assert analysis.jaccard_similarity(["a b", "c"], ["b c d", "D!"]) == pytest.approx(2 / 4)
    assert analysis.jaccard_similarity(["same words"], ["Words, same."]) == 1.0
    assert analysis.jaccard_similarity(["x"], ["y"]) == 0.0
    assert analysis.jaccard_similarity([], []) == 0.0


def test_tfidf_keywords_rank_stop_words_and_ties():
    texts = ["the cat sat on the mat", "the dog sat", "a cat and a dog", "cat cat"]
    top = analysis.tfidf_keywords(texts, top=3)
    assert list(top.columns) == ["rank", "word", "score"]
    assert top["rank"].tolist() == [1, 2, 3]
    assert top["word"].iloc[0] == "cat"  # in three texts, twice in one
    assert "the" not in analysis.tfidf_keywords(texts, top=100)["word"].tolist()  # sklearn's stop list
    assert "the" in analysis.tfidf_keywords(texts, top=100, stop_words=None)["word"].tolist()
    assert "cat" not in analysis.tfidf_keywords(texts, top=100, stop_words={"cat"})["word"].tolist()
    assert (top["score"].diff().dropna() <= 0).all()
    tied = analysis.tfidf_keywords(["beta alpha"], top=2)  # equal scores: alphabetical
    assert tied["word"].tolist() == ["alpha", "beta"]
    assert analysis.tfidf_keywords(["a I", "the"], top=5).empty  # only stop words and single letters


def test_tfidf_score_is_mean_tfidf_over_documents():
    from sklearn.feature_extraction.text import TfidfVectorizer

    texts = ["red blue blue", "green red", "yellow green green"]
    ours = analysis.tfidf_keywords(texts, top=10).set_index("word")["score"]
    matrix = TfidfVectorizer().fit(texts)
    dense = matrix.transform(texts).toarray().mean(axis=0)
    expected = dict(zip(matrix.get_feature_names_out(), dense))
    for word, score in ours.items():
        assert score == pytest.approx(expected[word])


def test_tfidf_rejects_bad_arguments():
    with pytest.raises(ValueError, match="top"):
        analysis.tfidf_keywords(["a b"], top=0)
    with pytest.raises(ValueError, match="stop_words"):
        analysis.tfidf_keywords(["a b"], stop_words="german")


def test_leaning_shares_count_the_most_probable_class():
    probs = np.array([[0.5, 0.3, 0.2], [0.1, 0.2, 0.7], [0.1, 0.8, 0.1], [0.6, 0.2, 0.2]])
    assert analysis.leaning_shares(probs) == {"left": 50.0, "center": 25.0, "right": 25.0}
    assert sum(analysis.leaning_shares(np.random.default_rng(0).dirichlet([1, 1, 1], 50)).values()) == pytest.approx(100)
    with pytest.raises(ValueError, match="shape"):
        analysis.leaning_shares(np.ones((3, 2)))
    assert all(np.isnan(v) for v in analysis.leaning_shares(np.zeros((0, 3))).values())


def test_paper_reports_are_complete():
    assert all(len(set(words)) == 100 for words in analysis.PAPER_TABLE11.values())
    for row in analysis.PAPER_TABLE3:
        assert row["left"] + row["right"] + row["center"] == pytest.approx(100, abs=0.01)


# -------------------------------------------------------------------------------- compute records
def _run(P, stage, label, config, seconds, **facts):
    """Record a run of ``stage`` as ``stages.timed`` does, with a chosen duration."""
    record = {"stage": stage, "label": label, "profile": P["profile"], "key": config_key(config),
              "folder": f"{stage}/{label}-{config_key(config)}", "seconds": seconds, "cpu_seconds": seconds,
              **facts, "config": config}
    stages.log_run(P["cache_dir"], record)


def test_stage_times_reads_the_run_log_of_the_profile(tmp_path):
    P = load_profile("paper", cache_dir=str(tmp_path / "cache"), results_dir=str(tmp_path / "results"))
    other = {**P, "profile": "tiny"}
    _run(P, "toxic", "gpt2-xl", {"lr": 1e-5}, 12.0, model="gpt2-xl", steps=6, tokens=600)
    _run(P, "distilled", "unidetox", {"seed": 0}, 5.0, text="unidetox", seed=0, alpha=0.1, top_k=0)
    _run(other, "distilled", "unidetox", {"seed": 0}, 1.0)  # another profile sharing the cache
    _run(P, "distilled", "unidetox", {"seed": 0}, 7.0, text="unidetox", seed=0, alpha=0.1, top_k=0)  # ran again
    times = analysis.stage_times(P)
    assert times["stage"].tolist() == ["toxic", "distilled"]
    assert times.loc[0, "seconds"] == 12.0 and times.loc[0, "steps"] == 6 and times.loc[0, "model"] == "gpt2-xl"
    assert times.loc[1, "seconds"] == 7.0 and times.loc[1, "alpha"] == 0.1  # its last run
    assert np.isnan(times.loc[1, "lr"])
    assert analysis.world_times(P).empty


def test_prompt_costs_sum_the_evaluations_of_each_split(tmp_path):
    from unidetox_core import compute

    P = load_profile("mini", cache_dir=str(tmp_path / "cache"), results_dir=str(tmp_path / "results"))
    _run(P, "eval", "base", {"s": 1}, 50.0, split="test", continuations=70 * 25)
    _run(P, "eval", "unidetox", {"s": 2}, 90.0, split="test", continuations=70 * 25)
    _run(P, "eval", "base", {"s": 3}, 40.0, split="val", continuations=50 * 25)
    _run(P, "toxic", "m", {"s": 4}, 500.0)
    costs = compute.prompt_costs(P, detectable={"test": 0.2})
    test = costs.set_index("split").loc["test"]
    assert costs["split"].tolist() == ["test", "val"] and test["evaluations"] == 2 and test["prompts"] == 70
    assert test["seconds"] == 140.0 and test["seconds per prompt"] == pytest.approx(2.0)
    assert test["build minutes"] == pytest.approx(140.0 / 2 / 60)  # two evaluations at a time on mini
    assert test["at twice the prompts"] == pytest.approx(0.2 / 2 ** 0.5)
    assert np.isnan(costs.set_index("split").loc["val", "at twice the prompts"])


def test_stage_keys_do_not_depend_on_where_the_cache_is(tmp_path):
    # A model the cache built enters a key relative to the cache: a cache moved to another checkout
    # keeps its keys. A path outside the cache stays as it is.
    here, there = tmp_path / "a" / "cache", tmp_path / "b" / "cache"
    config = lambda cache: {"base": str(cache / "world" / "gpt2-bpe-1"), "texts": [str(cache / "distilled" / "t.csv")],
                            "data": "/elsewhere/data.csv", "lr": 1e-4}
    assert stages.folder(here, "detox", "m", config(here)).name == stages.folder(there, "detox", "m", config(there)).name
    assert stages.stage_key(here, config(here)) == config_key({"base": "<cache>/world/gpt2-bpe-1", "lr": 1e-4,
                                                                "texts": ["<cache>/distilled/t.csv"],
                                                                "data": "/elsewhere/data.csv"})
    assert stages.stage_key(here, {"base": str(tmp_path / "a" / "cache2")}) == config_key({"base": str(tmp_path / "a" / "cache2")})


def test_timed_stages_write_a_manifest_and_a_line_of_the_log(tmp_path):
    cache = tmp_path / "cache"
    where = stages.folder(cache, "eval", "base-gpt2-bpe", {"seed": 1})
    assert where == cache / "eval" / f"base-gpt2-bpe-{config_key({'seed': 1})}"
    with stages.timed(cache, "eval", "base-gpt2-bpe", {"seed": 1}, profile="tiny") as record:
        record["continuations"] = 50
    manifest = stages.manifest(where)
    assert manifest["continuations"] == 50 and manifest["config"] == {"seed": 1} and manifest["seconds"] >= 0
    assert manifest["folder"] == f"eval/{where.name}" and manifest["profile"] == "tiny"
    with pytest.raises(RuntimeError), stages.timed(cache, "eval", "failed", {"seed": 2}):
        raise RuntimeError("a stage that fails is not recorded")
    log = stages.run_log(cache)
    assert log["label"].tolist() == ["base-gpt2-bpe"] and stages.manifest(stages.folder(cache, "eval", "failed",
                                                                                       {"seed": 2})) is None
    (cache / stages.RUN_LOG).open("a").write('{"stage": "cut')  # a line cut by a killed process is skipped
    assert len(stages.run_log(cache)) == 1


def test_stage_times_of_an_empty_cache_is_an_empty_table(tmp_path):
    P = load_profile("paper", cache_dir=str(tmp_path / "none"))
    times = analysis.stage_times(P)
    assert times.empty and "seconds" in times.columns


def test_notebook_times_without_runs_and_after_one(tmp_path):
    P = load_profile("paper", cache_dir=str(tmp_path), results_dir=str(tmp_path))
    assert analysis.world_times(P).empty
    assert analysis.notebook_times(P).empty
    (tmp_path / ".notebook_keys.json").write_text(json.dumps(
        {"notebooks/01_data.ipynb": {"seconds": 3.5, "finished": "today", "key": "k", "output": "o"}}))
    assert analysis.notebook_times(P).to_dict("records") == [
        {"notebook": "notebooks/01_data.ipynb", "seconds": 3.5, "finished": "today"}]


def test_table9_sums_each_methods_stages_from_the_run_log(tmp_path):
    from unidetox_core import compute

    P = load_profile("tiny", cache_dir=str(tmp_path / "cache"), results_dir=str(tmp_path / "results"))
    source, target = P["source_model"], P["target_models"][0]
    _run(P, "toxic", "gpt2-bpe", {"m": 1}, 10.0, model=source)
    _run(P, "toxic", "opt-bpe", {"m": 2}, 30.0, model=target)
    main = {"text": "unidetox", "seed": 0, "alpha": P["distill_alpha"], "top_k": P["distill_top_k"]}
    _run(P, "distilled", "unidetox", {"t": 1}, 4.0, **main)
    _run(P, "distilled", "unidetox", {"t": 2}, 99.0, **{**main, "seed": 1})  # an analysis, not the method's cost
    text_folder = f"unidetox-{config_key({'t': 1})}"
    _run(P, "detox", f"gpt2-bpe-{text_folder}", {"d": 1}, 5.0, text=text_folder)
    _run(P, "detox", f"opt-bpe-{text_folder}", {"d": 2}, 6.0, text=text_folder)
    _run(P, "lmsteer", "opt-bpe", {"l": 1}, 2.0)
    table = compute.table9(P).set_index("method")
    assert table.loc["UniDetox", "toxic_s"] == 10.0 and table.loc["UniDetox", "toxic_runs"] == 1
    assert table.loc["UniDetox", "distill_s"] == 4.0 and table.loc["UniDetox", "finetune_s"] == 11.0
    assert table.loc["DExperts", "toxic_s"] == 40.0 and table.loc["DExperts", "toxic_runs"] == 2
    assert table.loc["LM-Steer", "steering_s"] == 2.0 and np.isnan(table.loc["LM-Steer", "toxic_s"])
    assert table.loc["Samples", "distill_runs"] == 0 and np.isnan(table.loc["Samples", "distill_s"])
    view = compute.table9_view(compute.table9(P)).set_index("method")
    assert view.loc["UniDetox", "fine-tuning"] == "11.0 s (2 runs)" and view.loc["Samples", "distillation"] == "—"
    assert compute.hms(75) == "1 min 15 s" and compute.hms(7500) == "2 h 05 min" and compute.hms(float("nan")) == "—"
    assert "4.0 times" in compute.cost_sentence(compute.table9(P))


def test_the_compute_appendix_says_when_the_cache_has_no_run_log(tmp_path):
    from unidetox_core import compute

    P = load_profile("tiny", cache_dir=str(tmp_path / "cache"), results_dir=str(tmp_path / "results"))
    assert "no record" in compute.log_note(P) and compute.stage_summary(P).empty
    _run(P, "toxic", "gpt2-bpe", {"m": 1}, 10.0, model=P["source_model"])
    assert compute.log_note(P) == ""
    summary = compute.stage_summary(P)
    assert summary.to_dict("records") == [{"stage": "toxic model", "runs": 1, "seconds": 10.0, "median_s": 10.0,
                                           "longest_s": 10.0}]
