"""The miniature world at tiny sizes: the mix, the cache keys, training, saving, the classifiers.

One tiny world is built per test session into a temporary cache (about 20-40 s on the shared
2-core machine, most of it reading the AllSides articles); the tests then read what it made.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from unidetox_core import data, experiments, models, world
from unidetox_core.cache import config_key
from unidetox_core.profiles import load_profile

pytestmark = pytest.mark.skipif(
    not (data.RAW_DIR / "allsides" / "articles.jsonl.gz").exists(),
    reason="data/raw is not fetched (python -m unidetox_core.data fetch)",
)


@pytest.fixture(scope="module")
def profile(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    return load_profile("tiny", cache_dir=str(root / "cache"), results_dir=str(root / "results"))


@pytest.fixture(scope="module")
def settings(profile):
    return world.world_settings(profile)


@pytest.fixture(scope="module")
def source_path(settings):
    return world.train_world_model(settings, "gpt2-bpe", progress=False)


# --------------------------------------------------------------------------------------- the mix
def test_stream_has_the_designed_tweet_token_share(settings):
    stream = json.loads((world.build_stream(settings, progress=False) / "world.json").read_text())
    bpe = json.loads((world.build_blocks(settings, "bpe", progress=False) / "world.json").read_text())
    unigram = json.loads((world.build_blocks(settings, "unigram", progress=False) / "world.json").read_text())
    designed = settings["tweet_token_share"]
    # Exact with the tokenizer that selects the documents; close with the other scheme.
    assert stream["thread_token_share"] == pytest.approx(designed, abs=1e-9)
    assert sum(stream["tokens"].values()) == settings["train_tokens"]
    assert bpe["thread_token_share"] == pytest.approx(designed, abs=1e-9)
    assert unigram["thread_token_share"] == pytest.approx(designed, abs=0.02)
    # Blocks fit the context after re-tokenization.
    for summary in (bpe, unigram):
        assert summary["max_block_tokens_retokenized"] <= min(m["context"] for m in settings["models"].values())


def test_blocks_start_documents_with_bos_and_partition_the_stream(settings):
    tokenizer = world.load_world_tokenizer(settings, "bpe")
    docs = ["first document here.", "second one, a bit longer than the first.", "third."]
    blocks = world.pack_blocks(tokenizer, docs, block_tokens=5)
    assert "".join(blocks) == "".join(tokenizer.bos_token + d for d in docs)
    assert all(len(tokenizer(b)["input_ids"]) <= 7 for b in blocks)
    unigram = world.load_world_tokenizer(settings, "unigram")
    joined = "".join(world.pack_blocks(unigram, docs, block_tokens=5))
    assert joined.count(unigram.bos_token) == joined.count(unigram.eos_token) == 3


def test_held_out_and_reserved_text_stay_out_of_the_web_text(settings, profile):
    documents = world.load_documents(settings)
    stream = json.loads((world.build_stream(settings, progress=False) / "stream.json").read_text())
    chosen = documents.set_index("doc_id").loc[[d["doc_id"] for d in stream]]
    assert (chosen["split"] == "train").all()
    web_tweets = {t for thread in documents.loc[documents["kind"] == "thread", "text"] for t in thread.split("\n")}
    toxic = world.toxic_corpus_texts(profile)
    assert len(toxic) > 1000
    tweets = data.load_tweets()
    train_toxic = tweets[(tweets["split"] == "train") & tweets["toxic"]]
    assert len(toxic) == pytest.approx(len(train_toxic) * settings["toxic_reserve_fraction"], abs=2)
    # A reserved tweet may share its *text* with a web tweet only when the data set has duplicates.
    overlap = set(toxic) & web_tweets
    assert len(overlap) < 0.02 * len(toxic)
    # The profile's toxic corpus ("world") is this reserved half, not every toxic tweet.
    assert profile["toxic_corpus"] == "world" and experiments.toxic_texts(profile) == toxic
    held_out_news = set(documents.loc[(documents["kind"] == "news") & (documents["split"] == "heldout"), "source_id"])
    articles = world.load_articles("random").set_index("ID")
    assert set(articles.loc[list(held_out_news), "split"]) == {"valid"}


# ------------------------------------------------------------------------------------ cache keys
def all_step_keys(settings: dict, profile: dict) -> dict[str, str]:
    keys = {"corpus": config_key(world.corpus_config(settings)), "stream": config_key(world.stream_config(settings))}
    for kind in ("bpe", "unigram"):
        keys[f"tokenizer-{kind}"] = config_key(world.tokenizer_config(settings, kind))
        keys[f"blocks-{kind}"] = config_key(world.blocks_config(settings, kind))
    for name in settings["models"]:
        keys[name] = config_key(world.model_config(settings, name))
    for name in ("davidson_tfidf", "allsides_tfidf", "allsides_tfidf_media"):
        keys[name] = config_key(world.classifier_config(settings, name))
    keys["source_check"] = config_key(world.check_config(settings, profile))
    return keys


def changed(key, value):
    """Another valid value of a setting."""
    if isinstance(value, bool):
        return not value
    if key == "block_tokens":  # must stay below every model's context
        return value - 1
    if isinstance(value, float) and 0 < value < 1:  # shares and fractions
        return value / 2
    if isinstance(value, (int, float)):
        return value * 2 + 1
    if isinstance(value, str):
        return value + "x"
    raise TypeError(value)


def test_every_parameter_changes_a_cache_key(settings, profile):
    base = all_step_keys(settings, profile)
    for key, value in settings.items():
        if key in ("profile", "cache_dir", "results_dir", "models", "threads", "workers"):  # speed only
            continue
        other = all_step_keys(world.world_settings(profile, **{key: changed(key, value)}), profile)
        assert other != base, f"changing {key} changes no cache key"
    for name, spec in settings["models"].items():
        for key, value in spec.items():
            other = all_step_keys(world.world_settings(profile, models={name: {key: changed(key, value)}}), profile)
            differs = {step for step in base if base[step] != other[step]}
            # A model's own setting retrains that model (and the source check for the source) only.
            assert differs and differs <= {name, "source_check"}, (name, key, differs)


def test_changing_the_share_keeps_the_tokenizers_but_retrains_the_models(settings, profile):
    base = all_step_keys(settings, profile)
    other = all_step_keys(world.world_settings(profile, tweet_token_share=0.1), profile)
    assert other["tokenizer-bpe"] == base["tokenizer-bpe"] and other["corpus"] == base["corpus"]
    assert all(other[name] != base[name] for name in settings["models"])
    assert other["davidson_tfidf"] == base["davidson_tfidf"]


def test_unknown_settings_and_names_are_rejected(profile):
    with pytest.raises(world.WorldError, match="tweet_share"):
        world.world_settings(profile, tweet_share=0.1)
    with pytest.raises(world.WorldError, match="gpt3"):
        world.world_settings(profile, models={"gpt3": {"steps": 1}})
    with pytest.raises(world.WorldError, match=r"\[0, 1\)"):
        world.world_settings(profile, tweet_token_share=1.5)
    with pytest.raises(world.WorldError, match="paper"):
        world.world_settings(load_profile("paper"))
    with pytest.raises(world.WorldError, match="world:gpt2-bpe"):
        world.resolve_model("gpt2-bpe", profile)
    assert world.resolve_model("openai-community/gpt2-xl", profile) == "openai-community/gpt2-xl"


# ------------------------------------------------------------------------------------- training
def test_training_lowers_held_out_loss(source_path):
    summary = json.loads((source_path / "world.json").read_text())
    assert summary["heldout_news"]["loss"] < summary["heldout_news_untrained"]["loss"] - 0.2
    assert summary["loss_curve"][-1] < summary["loss_curve"][0]


def test_saved_models_reload_bit_identical(settings, tmp_path):
    model, tokenizer, summary = world.pretrain_world_model(settings, "llama-unigram", progress=False)
    models.save_model(model, tokenizer, tmp_path / "m")
    loaded, loaded_tokenizer = models.load_model(str(tmp_path / "m"), device="cpu")
    state, reloaded = model.state_dict(), loaded.state_dict()
    assert state.keys() == reloaded.keys()
    for name in state:
        assert torch.equal(state[name], reloaded[name]), name
    assert loaded_tokenizer.get_vocab() == tokenizer.get_vocab()
    blocks = world.load_blocks(settings, "unigram", "heldout_news")
    again = world.heldout_loss(loaded, loaded_tokenizer, blocks, settings["models"]["llama-unigram"]["context"])
    assert again["loss"] == summary["heldout_news"]["loss"]
    assert summary["heldout_news"]["loss"] < summary["heldout_news_untrained"]["loss"]


def test_resolve_model_builds_once_and_loads_like_a_hub_model(profile, source_path):
    path = world.resolve_model("world:gpt2-bpe", profile, progress=False)
    assert path == str(source_path)
    stamp = (source_path / "world.json").stat().st_mtime_ns
    assert world.resolve_model("world:gpt2-bpe", profile, progress=False) == path
    assert (source_path / "world.json").stat().st_mtime_ns == stamp  # cached, not retrained
    model, tokenizer = models.load_model(path, device="cpu")
    assert type(model).__name__ == "GPT2LMHeadModel"
    assert tokenizer.bos_token == "<|endoftext|>"


# ----------------------------------------------------------------------------------- classifiers
def test_toxicity_classifier_beats_chance_on_held_out_tweets(settings):
    from sklearn.metrics import roc_auc_score

    from unidetox_core.scorers import get_toxicity_scorer

    scorer = get_toxicity_scorer("davidson_tfidf", path=world.train_classifier(settings, "davidson_tfidf"))
    tweets = data.load_tweets()
    test = tweets[tweets["split"] == "test"]
    assert roc_auc_score(test["toxic"], scorer(test["text"].tolist())) > 0.8
    # trained with news as negatives and balanced weights, it does not call held-out news toxic
    news = world.classifiers.news_snippets(settings, "valid", 100)
    assert len(news) > 100 and (scorer(news) > 0.5).mean() <= 0.10


def test_bias_classifier_beats_chance_on_held_out_articles(settings):
    from unidetox_core.scorers import get_bias_scorer

    scorer = get_bias_scorer("allsides_tfidf", path=world.train_classifier(settings, "allsides_tfidf"))
    articles = world.load_articles("random")
    test = articles[articles["split"] == "test"]
    predicted = np.array(data.LEANINGS)[scorer(world.allsides_texts(test, settings["allsides_max_chars"])).argmax(1)]
    accuracy = (predicted == test["leaning"].to_numpy()).mean()
    majority = test["leaning"].value_counts(normalize=True).iloc[0]
    assert accuracy > majority + 0.03


# ------------------------------------------------------------------------------------ build times
def test_a_cached_step_keeps_the_time_of_the_call_that_built_it(tmp_path):
    from unidetox_core.world.build import merge_build_times

    path = tmp_path / "build_times.csv"
    row = {"load_avg_1min_start": 1.0, "load_avg_1min_end": 1.0}
    first = merge_build_times([{"step": "corpus", "seconds": 30.0, "cpu_seconds": 29.0, "computed": True, **row},
                               {"step": "source_check", "seconds": 40.0, "cpu_seconds": 39.0, "computed": True, **row}],
                              path)
    assert "computed" not in first.columns
    first.to_csv(path, index=False)
    # the runner's build: corpus found in the cache, a model trained, no checks run
    second = merge_build_times([{"step": "corpus", "seconds": 0.2, "cpu_seconds": 0.1, "computed": False, **row},
                                {"step": "evaluator", "seconds": 0.5, "cpu_seconds": 0.5, "computed": True, **row}], path)
    assert second.set_index("step")["seconds"].to_dict() == {"corpus": 30.0, "evaluator": 0.5, "source_check": 40.0}
    # a step computed again, however quickly, replaces its old row
    third = merge_build_times([{"step": "corpus", "seconds": 0.4, "cpu_seconds": 0.4, "computed": True, **row}], path)
    assert third.set_index("step").loc["corpus", "seconds"] == 0.4


def test_unbuilt_steps_lists_what_the_cache_lacks(profile, source_path, tmp_path):
    everything = ["corpus", "tokenizer-bpe", "tokenizer-unigram", "stream", "blocks-bpe", "blocks-unigram",
                  *world.MODEL_NAMES, *world.CLASSIFIERS]
    assert world.unbuilt_steps({**profile, "cache_dir": str(tmp_path)}) == everything
    missing = world.unbuilt_steps(profile)
    assert "gpt2-bpe" not in missing and "corpus" not in missing and "blocks-bpe" not in missing  # the fixture's
