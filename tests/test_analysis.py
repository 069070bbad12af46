"""Analyses of text sets (Table 3, 10, 11) and the compute records (Table 9); gradient alignment
has its own file, test_alignment.py."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from unidetox_core import analysis
from unidetox_core.profiles import load_profile


# ------------------------------------------------------------------------------------------ words
def test_words_lowercase_drop_apostrophes_and_split_on_punctuation():
    assert analysis.words("Don't STOP: it's 2013, e-mail U.S. news…") == [
        "dont", "stop", "its", "2013", "e", "mail", "u", "s", "news"]
    assert analysis.words("I\u2019m here_now") == ["im", "here", "now"]  # typographic apostrophe; _ separates
    assert analysis.words("") == []


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
def _history(steps, wall, tokens):
    return {"step": list(range(1, steps + 1)), "loss": [1.0] * steps, "lr": [1e-3] * steps, "checkpoints": [],
            "tokens": tokens, "wall_time_s": wall}


def _checkpoint(folder, step, wall, tokens, **settings):
    path = folder / f"step-{step}"
    path.mkdir(parents=True)
    torch.save({"step": step, "settings": settings, "history": _history(step, wall, tokens)}, path / "training_state.pt")


@pytest.fixture()
def fake_cache(tmp_path):
    """A cache with the folders the stages write, for a profile whose source model is ``base/A``."""
    P = load_profile("paper", cache_dir=str(tmp_path / "cache"), results_dir=str(tmp_path / "results"),
                     source_model="base/A", target_models=["base/B"], distill_n_texts=16, distill_max_new_tokens=24,
                     toxic_epochs=2, toxic_batch_size=4, toxic_max_texts=10, detox_batch_size=8, detox_max_length=32)
    cache = tmp_path / "cache"
    meta = {"base_model": "base/A", "n_texts": 16, "max_new_tokens": 24, "seed": 0, "alpha": 0.1, "top_k": 0,
            "wall_time_s": 12.0, "tokens_per_s": 30.0, "generated_tokens": 360}
    for name, extra in (("unidetox-aaa", {}), ("samples-bbb", {"alpha": 0.0}), ("unidetox-old", {"n_texts": 640}),
                        ("unidetox-other", {"base_model": "someone/else"})):
        (cache / "distilled" / name).mkdir(parents=True)
        (cache / "distilled" / name / "texts.json").write_text(json.dumps({**meta, **extra}))
    toxic = cache / "toxic" / "A-123"
    (toxic / "final").mkdir(parents=True)
    config = {"base": "base/A", "epochs": 2, "batch_size": 4, "lr": 1e-5, "max_length": 512, "max_texts": 10}
    (toxic / "config.json").write_text(json.dumps(config))
    _checkpoint(toxic / "checkpoints", 2, 4.0, 100)
    _checkpoint(toxic / "checkpoints", 4, 8.0, 200)  # 2 epochs x ceil(10 / 4) = 6 steps in all
    settings = {"lr": 5e-5, "batch_size": 8, "max_length": 32}
    _checkpoint(cache / "detox" / "B-unidetox-aaa-k1", 2, 1.0, 50, **settings)
    _checkpoint(cache / "detox" / "B-unidetox-aaa-k1", 4, 3.0, 100, **settings)
    _checkpoint(cache / "detox" / "A-unidetox-other-k2", 4, 3.0, 100, **settings)  # another profile's text
    return P


def test_stage_times_reads_what_each_stage_recorded(fake_cache):
    times = analysis.stage_times(fake_cache, n_toxic_texts=1000).set_index(["stage", "detail"])
    assert sorted(times.index.get_level_values("stage")) == ["detox fine-tuning", "distillation", "distillation", "toxic model"]
    distilled = times.loc[("distillation", "unidetox, seed 0, alpha 0.1")]
    assert distilled["seconds"] == 12.0 and distilled["tokens_per_s"] == 30.0 and distilled["model"] == "base/A"
    assert ("distillation", "samples, seed 0") in times.index
    assert distilled["text"] == "unidetox" and distilled["seed"] == 0 and distilled["alpha"] == 0.1
    toxic = times.xs("toxic model", level="stage").iloc[0]
    assert toxic["steps"] == 6 and toxic["seconds"] == pytest.approx(12.0)  # 2 s a step, 6 steps
    assert toxic["how"] == "estimated from step 4 of 6"
    detox = times.xs("detox fine-tuning", level="stage").iloc[0]
    assert detox["model"] == "base/B" and detox["steps"] == 4 and detox["seconds"] == 3.0
    assert detox["text"] == "unidetox" and detox["lr"] == 5e-5 and detox["seed"] == 0
    assert "unidetox, seed 0, alpha 0.1 text, lr 5e-05" == times.xs("detox fine-tuning", level="stage").index[0]
    assert detox["tokens_per_s"] == pytest.approx(100 / 3.0)


def test_stage_times_prefers_a_recorded_toxic_time(fake_cache, tmp_path):
    config_path = tmp_path / "cache" / "toxic" / "A-123" / "config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "wall_time_s": 99.0, "steps": 6}))
    toxic = analysis.stage_times(fake_cache, n_toxic_texts=1000).query("stage == 'toxic model'").iloc[0]
    assert toxic["seconds"] == 99.0 and toxic["how"] == "recorded"


def test_stage_times_of_an_empty_cache_is_an_empty_table(tmp_path):
    P = load_profile("paper", cache_dir=str(tmp_path / "none"))
    times = analysis.stage_times(P)
    assert times.empty and "seconds" in times.columns


def test_profile_model_paths_and_times_without_a_world(tmp_path):
    P = load_profile("paper", cache_dir=str(tmp_path), results_dir=str(tmp_path))
    assert analysis.profile_model_paths(P)["openai-community/gpt2-xl"] == "openai-community/gpt2-xl"
    assert analysis.world_times(P).empty
    assert analysis.notebook_times(P).empty
    (tmp_path / ".notebook_keys.json").write_text(json.dumps(
        {"notebooks/01_data.ipynb": {"seconds": 3.5, "finished": "today", "key": "k", "output": "o"}}))
    assert analysis.notebook_times(P).to_dict("records") == [
        {"notebook": "notebooks/01_data.ipynb", "seconds": 3.5, "finished": "today"}]


def test_profile_model_paths_of_a_world_profile_point_into_its_cache(tmp_path):
    P = load_profile("tiny", cache_dir=str(tmp_path / "cache"))
    paths = analysis.profile_model_paths(P)
    assert set(paths) == {"world:gpt2-bpe", "world:opt-bpe", "world:llama-unigram", "world:evaluator"}
    for name, path in paths.items():
        assert path.startswith(str(tmp_path / "cache" / "world" / name.split(":")[1]))
    assert not (tmp_path / "cache").exists()  # nothing was built
