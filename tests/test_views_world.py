"""The views of chapters 0-3 (``unidetox_core.views.method``, ``data``, ``world``, ``toxic``): every
function that computes a number or a sentence, on small hand-made inputs checked by hand.

No data set is read and no world is built: loaders are replaced by small frames. Only the two
Eq. 5 tests train or run (tiny) models, a few seconds on the shared 2-core machine.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from unidetox_core import analysis, experiments, finetune, models, world
from unidetox_core.data import ROOT
from unidetox_core.views import data as data_views
from unidetox_core.views import method as method_views
from unidetox_core.views import toxic as toxic_views
from unidetox_core.views import world as world_views


def text_of(markdown) -> str:
    return markdown.data


# ==================================================================================== chapter 0


def test_toy_step_table_by_hand():
    # alpha = 0.5 keeps tokens with p_base >= 0.25: the first two. Ratios 2 and 0.5 -> 0.8 and 0.2.
    p_base, p_toxic = torch.tensor([0.5, 0.3, 0.2]), torch.tensor([0.25, 0.6, 0.15])
    table = method_views.toy_step_table(["a", "b", "c"], p_base, p_toxic, alpha=0.5)
    assert list(table["token"]) == ["a", "b", "c"]
    assert list(table["plausible"]) == [True, True, False]
    np.testing.assert_allclose(table["s = log p_base - log p_toxic"], [math.log(2), math.log(0.5), math.log(4 / 3)],
                               rtol=1e-6)
    np.testing.assert_allclose(table["p_sample"], [0.8, 0.2, 0.0], atol=1e-6)


def test_alpha_sweep_by_hand():
    p_base, p_toxic = torch.tensor([0.5, 0.3, 0.2]), torch.tensor([0.25, 0.6, 0.15])
    sweep = method_views.alpha_sweep(["a", "b", "c"], p_base, p_toxic, alphas=(0.0, 0.5))
    assert list(sweep["alpha"]) == ["0.0"] * 3 + ["0.5"] * 3
    # alpha = 0: the ratios 2, 0.5, 4/3 normalised; alpha = 0.5: as in the toy table.
    ratios = np.array([2, 0.5, 4 / 3])
    np.testing.assert_allclose(sweep["probability"][:3], ratios / ratios.sum(), rtol=1e-6)
    np.testing.assert_allclose(sweep["probability"][3:], [0.8, 0.2, 0.0], atol=1e-6)


def test_news_sentences_keeps_long_sentences_per_article_and_limit():
    articles = pd.DataFrame({"text": [
        "one two three four five six. too short here. seven eight nine ten eleven twelve",
        "a b c d e f. g h i j k l. m n o p q r",
    ]})
    assert method_views.news_sentences(articles) == [
        "one two three four five six.", "seven eight nine ten eleven twelve.", "a b c d e f.", "g h i j k l.",
        "m n o p q r."]
    assert method_views.news_sentences(articles, per_article=1) == ["one two three four five six.", "a b c d e f."]
    assert method_views.news_sentences(articles, n_articles=1, limit=1) == ["one two three four five six."]


def test_taylor_correlation_and_means_by_hand():
    align = pd.DataFrame({"contrastive_score": [1.0, 2.0, 3.0, -4.0], "grad_dot": [2.0, 4.0, 6.0, -8.0],
                          "cosine": [0.1, 0.3, 0.2, -0.5], "text": ["news", "news", "news", "toxic tweet"]})
    assert method_views.taylor_correlation(align) == pytest.approx(1.0)
    flipped = align.assign(grad_dot=-align["grad_dot"])
    assert method_views.taylor_correlation(flipped) == pytest.approx(-1.0)
    means = method_views.mean_score_and_cosine(align)
    assert means.loc["news", "contrastive_score"] == pytest.approx(2.0)
    assert means.loc["news", "cosine"] == pytest.approx(0.2)
    assert means.loc["toxic tweet", "contrastive_score"] == pytest.approx(-4.0)


def test_taylor_check_labels_each_text_with_its_kind(tiny_gpt2, tiny_gpt2_toxic):
    (base, tokenizer), (toxic, _) = tiny_gpt2, tiny_gpt2_toxic
    base.eval()
    toxic.eval()
    kinds = {"news": ["the news report says", "a game team season"], "toxic tweet": ["bad bad men"]}
    align = method_views.taylor_check(base, toxic, tokenizer, kinds, max_length=16)
    assert list(align["text"]) == ["news", "news", "toxic tweet"]
    direct = analysis.gradient_alignment(base, toxic, tokenizer, [t for g in kinds.values() for t in g], max_length=16)
    np.testing.assert_allclose(align["contrastive_score"], direct["contrastive_score"], rtol=1e-5, atol=1e-6)


def test_toy_base_and_toxic_trains_a_copy_and_leaves_the_base_alone(bpe_tokenizer, corpus):
    news, toxic_texts = corpus[:64], corpus[64:96]
    base, toxic = method_views.toy_base_and_toxic(bpe_tokenizer, news, toxic_texts, seed=0, quick=True)
    assert not base.training and not toxic.training
    # The base alone, trained by the same recipe: the toxic fine-tune must not have touched it.
    alone = models.build_small_model("gpt2", bpe_tokenizer, seed=0, d_model=64, n_layer=2, n_head=2, max_positions=128)
    finetune.finetune(alone, bpe_tokenizer, news, lr=2e-3, batch_size=16, steps=20, max_length=64, seed=0,
                      progress=False)
    for (name, p), q, t in zip(base.named_parameters(), alone.parameters(), toxic.parameters()):
        assert torch.equal(p, q), name
    assert any(not torch.equal(p, t) for p, t in zip(base.parameters(), toxic.parameters()))


# ==================================================================================== chapter 1


def test_shown_path_never_prints_a_machine_path(tmp_path):
    assert data_views.shown_path(ROOT / "results" / "tiny" / "data_counts.csv") == "results/tiny/data_counts.csv"
    assert data_views.shown_path(tmp_path / "elsewhere.csv") == "elsewhere.csv"


def test_files_by_outcome():
    fetched = pd.DataFrame({"how": ["present", "mirror", "present"]})
    assert data_views.files_by_outcome(fetched) == {"mirror": 1, "present": 2}


def prompts_frame() -> pd.DataFrame:
    return pd.DataFrame({
        "domain": ["ID", "ID", "ID", "OOD", "ID"],
        "category": ["religion", "religion", "religion", "disability", "religion"],
        "split": ["val", "val", "test", "test", "val"],
        "label": ["hate", "neutral", "hate", "hate", "hate"],
        "group": ["jewish", "muslim", "jewish", "physical_dis", "jewish"],
        "text": ["p1", "p2", "p3", "p4", "p5"],
    })


def test_prompt_counts_by_hand():
    counts = data_views.prompt_counts(prompts_frame())
    assert list(counts.columns) == ["domain", "category", "test", "val", "total"]
    by_category = counts.set_index("category")
    assert by_category.loc["religion", ["test", "val", "total"]].tolist() == [1, 3, 4]
    assert by_category.loc["disability", ["test", "val", "total"]].tolist() == [1, 0, 1]


def test_example_prompts_are_validation_prompts_n_per_category_and_label():
    examples = data_views.example_prompts(prompts_frame(), n=1)
    assert list(examples.columns) == ["category", "label", "text"]
    # Validation prompts only: religion/hate (p1 or p5) and religion/neutral (p2); disability has none.
    assert examples[["category", "label"]].values.tolist() == [["religion", "hate"], ["religion", "neutral"]]
    assert examples["text"].iloc[0] in ("p1", "p5") and examples["text"].iloc[1] == "p2"
    assert len(data_views.example_prompts(prompts_frame(), n=5)) == 3


def tweets_frame() -> pd.DataFrame:
    return pd.DataFrame({"label_name": ["hate", "hate", "neither", "offensive", "offensive", "offensive"],
                         "split": ["train", "test", "train", "train", "train", "test"]})


def test_tweet_label_counts_by_hand():
    counts = data_views.tweet_label_counts(tweets_frame()).set_index("label_name")
    assert counts.loc["hate", ["test", "train"]].tolist() == [1, 1]
    assert counts.loc["offensive", ["test", "train"]].tolist() == [1, 2]
    assert pd.isna(counts.loc["neither", "test"]) and counts.loc["neither", "train"] == 1


def test_toxic_corpus_counts_offline_and_on_the_hub(monkeypatch):
    monkeypatch.setattr(experiments, "toxic_texts", lambda P: ["a", "b", "c"])
    monkeypatch.setattr(data_views, "load_tweets", tweets_frame)
    table, n = data_views.toxic_corpus_counts({"toxic_corpus": "world"})
    assert n == 3 and list(table["label_name"]) == ["hate", "neither", "offensive"]
    table, n = data_views.toxic_corpus_counts({"toxic_corpus": "dghs"})
    assert n == 3 and table.to_dict("records") == [{"corpus": "DGHS (filtered)", "examples": 3}]


def test_other_counts_by_hand():
    mmlu_test = pd.DataFrame({"subject": ["algebra", "algebra", "law"]})
    mmlu_dev = pd.DataFrame({"subject": ["algebra", "law"]})
    articles = pd.DataFrame({"leaning": ["left", "right", "left"]})
    counts = data_views.other_counts(mmlu_test, mmlu_dev, articles)
    assert counts.values.tolist() == [
        ["MMLU", "test questions", 3], ["MMLU", "dev questions (shots)", 2], ["MMLU", "subjects", 2],
        ["AllSides", "left articles", 2], ["AllSides", "right articles", 1]]
    hub = data_views.other_counts(mmlu_test, mmlu_dev, data_views.allsides_articles({"data_source": "hub"}))
    assert len(hub) == 3


def test_release_texts_and_words_per_text():
    assert len(data_views.release_texts({"data_source": "hub"})) == 0
    words = data_views.words_per_text(pd.Series(["a b  c", " d ", ""]))
    assert words.tolist() == [3, 1, 0]


def test_data_counts_stacks_every_count():
    prompt_counts = data_views.prompt_counts(prompts_frame())
    other = pd.DataFrame([("MMLU", "subjects", 57)], columns=["set", "what", "count"])
    counts = data_views.data_counts(prompt_counts, other, toxic_n=9)
    # 2 categories x (test, val, total) + 1 + 1
    assert len(counts) == 8
    prompts = counts[counts["set"] == "prompts"]
    assert prompts.loc[(prompts["category"] == "religion") & (prompts["what"] == "total"), "count"].item() == 4
    assert counts.iloc[-1][["set", "what", "count"]].tolist() == ["toxic corpus", "texts", 9]


# ==================================================================================== chapter 2


def test_warnings_without_paths_formats_category_and_message():
    saved = warnings.formatwarning
    try:
        world_views.warnings_without_paths()
        assert warnings.formatwarning("3 prompts were cut", UserWarning, "/some/machine/file.py", 12) == \
            "UserWarning: 3 prompts were cut\n"
    finally:
        warnings.formatwarning = saved


def test_has_world_and_skipped_note():
    assert world_views.has_world({"profile": "tiny"}) and not world_views.has_world({"profile": "paper"})
    note = text_of(world_views.skipped_note({"profile": "paper", "source_model": "gpt2-xl", "target_models": ["a", "b"],
                                             "toxicity_scorer": "detoxify", "bias_scorer": "bert"}))
    assert "`paper` profile" in note and "(gpt2-xl, a, b)" in note and "(detoxify, bert)" in note


def test_build_world_reports_the_tables_relative_to_the_repository(monkeypatch):
    from unidetox_core.profiles import load_profile

    P = load_profile("tiny", results_dir=str(ROOT / "results" / "tiny"))
    monkeypatch.setattr(world, "build_world", lambda P, progress: {"corpus": "x", "stream": "y"})
    settings, out, report = world_views.build_world(P)
    assert out == world.results_dir(settings)
    assert report == "tiny world: 2 steps built or found in the cache; tables in results/tiny/world/"


def test_calibration_view_reads_known_columns_or_says_none(tmp_path):
    assert "No calibration" in text_of(world_views.calibration_view(tmp_path))
    pd.DataFrame({"steps": [10], "extra": [1], "val_TP": [0.12345], "tweet_token_share": [0.04]}).to_csv(
        tmp_path / "mix_calibration.csv", index=False)
    view = world_views.calibration_view(tmp_path)
    assert list(view.columns) == ["tweet_token_share", "steps", "val_TP"]
    assert view["val_TP"].item() == 0.123


def test_format_count_or_share():
    assert world_views.format_count_or_share(30000.0) == "30,000"
    assert world_views.format_count_or_share(0.0626) == "0.063"
    assert world_views.format_count_or_share(0) == "0"


def mix_row() -> pd.Series:
    return pd.Series({"source_val_TP": 0.0625, "train_tokens": 30000.0, "not_a_label": 1.0,
                      "tweet_token_share_bpe": 0.05, "thread_document_share": 5 / 9, "source_val_EMT": 0.094,
                      "n_val_prompts": 16.0, "bos_tweet_like_share": 0.25})


def test_mix_view_in_label_order_with_formatted_values():
    view = world_views.mix_view(mix_row())
    assert list(view.index) == ["tweet-thread share of training tokens (measured, BPE)",
                                "tweet threads among training documents", "training tokens (BPE)",
                                "source model: validation TP", "source model: validation EMT",
                                "source model: tweet-like BOS samples", "validation prompts"]
    assert view["value"].tolist() == ["0.050", "0.556", "30,000", "0.062", "0.094", "0.250", "16"]


def test_mix_sentence_by_hand():
    text = text_of(world_views.mix_sentence(mix_row()))
    assert text.startswith("Tweet threads are 5.0% of the training tokens but 55.6% of the documents")
    assert "toxicity probability is 0.06 (EMT 0.09, 16 prompts), and 25% of its unconditional samples" in text


def test_tokenization_lines(monkeypatch):
    class Splitter:
        def __init__(self, kind):
            self.kind = kind

        def tokenize(self, sentence):
            return sentence.split() if self.kind == "bpe" else list(sentence.replace(" ", ""))

    monkeypatch.setattr(world, "load_world_tokenizer", lambda settings, kind: Splitter(kind))
    assert world_views.tokenization_lines({}, "The cat") == ["bpe" + " " * 7 + "2 tokens: The | cat",
                                                             "unigram" + " " * 3 + "6 tokens: T | h | e | c | a | t"]


def models_frame() -> pd.DataFrame:
    row = {"arch": "gpt2", "tokenizer": "bpe", "d_model": 32, "n_layer": 2, "steps": 30, "train_tokens_seen": 100,
           "train_seconds": 1.0, "tokens_per_s": 100.0, "heldout_news_ppl_untrained": 792.53,
           "heldout_tweets_bits_per_byte": 4.0}
    return pd.DataFrame([
        dict(row, model="gpt2-bpe", parameters=53120, heldout_news_ppl=401.08, heldout_news_bits_per_byte=3.68,
             heldout_tweets_ppl=513.54),
        dict(row, model="llama-unigram", parameters=1_234_567, heldout_news_ppl=338.41, heldout_news_bits_per_byte=3.57,
             heldout_tweets_ppl=600.0),
    ])


def test_models_view_and_sentence_by_hand():
    view = world_views.models_view(models_frame())
    assert view.index.tolist() == ["gpt2-bpe", "llama-unigram"]
    assert view["parameters"].tolist() == ["0.05 M", "1.23 M"]
    assert view.columns.tolist() == world_views.MODEL_COLUMNS[1:]
    text = text_of(world_views.models_sentence(models_frame()))
    assert "(`gpt2-bpe`, 53,120 parameters) brought its held-out news perplexity from 793 untrained to 401.1 " \
           "(3.68 bits per byte); on held-out tweet threads it reaches 513.5." in text
    assert "`llama-unigram` models held-out news best (3.57 bits per byte)" in text


def test_loss_curves_number_steps_from_one(monkeypatch):
    frame = world_views.loss_curves_frame({"a": [3.0, 2.0], "b": [4.0]})
    assert frame[["step", "loss", "model"]].values.tolist() == [[1, 3.0, "a"], [2, 2.0, "a"], [1, 4.0, "b"]]
    monkeypatch.setattr(world, "model_summary", lambda settings, name: {"loss_curve": [1.0] * len(name)})
    assert len(world_views.loss_curves({"models": {"ab": {}, "abc": {}}})) == 5


def test_bos_sample_lines_number_collapse_and_cut(tmp_path):
    pd.DataFrame({"sample": ["a  b\n c", "x" * 10, "", "not shown"]}).to_csv(tmp_path / "bos_samples_source.csv",
                                                                             index=False)
    assert world_views.bos_sample_lines(tmp_path, 3, max_chars=4) == ["[1] a b ", "[2] xxxx", "[3] "]


def classifiers_frame(toxigen_auc=(0.70, 0.68)) -> pd.DataFrame:
    rows = [
        ("profanity_check", world_views.TWEETS_AUC, "roc_auc", 0.986, 2478),
        ("davidson_tfidf", world_views.TWEETS_AUC, "roc_auc", 0.98, 2478),
        ("profanity_check", world_views.TOXIGEN_AUC, "roc_auc", toxigen_auc[0], 1045),
        ("davidson_tfidf", world_views.TOXIGEN_AUC, "roc_auc", toxigen_auc[1], 1045),
        ("profanity_check", "tweets: neither", "share > 0.5", 0.065, 416),
        ("davidson_tfidf", "tweets: neither", "share > 0.5", 0.192, 416),
        ("allsides_tfidf", "allsides random test", "accuracy", 0.607, 100),
        ("allsides_tfidf", "allsides random test", "majority_class_accuracy", 0.461, 100),
        ("allsides_tfidf_media", "allsides media test", "accuracy", 0.466, 90),
        ("allsides_tfidf_media", "allsides media test", "majority_class_accuracy", 0.461, 90),
    ]
    return pd.DataFrame(rows, columns=["instrument", "dataset", "metric", "value", "n"])


def test_toxicity_view_by_hand():
    view = world_views.toxicity_view(classifiers_frame())
    assert view.index.tolist() == [(world_views.TWEETS_AUC, "roc_auc"), (world_views.TOXIGEN_AUC, "roc_auc"),
                                   ("tweets: neither", "share > 0.5")]
    assert view.loc[("tweets: neither", "share > 0.5"), "davidson_tfidf"] == 0.192
    assert view["n"].tolist() == [2478, 1045, 416]


def test_toxicity_sentence_warns_only_when_both_scorers_lose_on_toxigen():
    text = text_of(world_views.toxicity_sentence(classifiers_frame()))
    assert "ROC-AUC 0.99 (profanity_check) and 0.98 (davidson_tfidf)" in text and "statements, 0.70 and 0.68." in text
    assert "Read every TP and EMT" in text
    # profanity_check loses 0.045 <= 0.05 on ToxiGen: the smaller gap decides, so no warning.
    text = text_of(world_views.toxicity_sentence(classifiers_frame(toxigen_auc=(0.94, 0.70))))
    assert "Both instruments see ToxiGen's implicit hate about as well" in text


def test_bias_view_and_sentence_by_hand():
    view = world_views.bias_view(classifiers_frame())
    assert view.index.tolist() == ["random", "media"]
    assert view.loc["random", "accuracy"] == 0.607 and view.loc["media", "accuracy"] == 0.466
    text = text_of(world_views.bias_sentence(view))
    assert text.startswith("On the random split the classifier is right on 61% of test articles (majority class: "
                           "46%); on the media split, 47% (majority class: 46%).")
    assert "The drop from the random to the media split" in text
    even = view.copy()
    even.loc["media", "accuracy"] = 0.58  # 0.027 below random: not a notable drop
    assert "The drop" not in text_of(world_views.bias_sentence(even))


# ==================================================================================== chapter 3


def recipe_profile(**overrides) -> dict:
    return {"profile": "tiny", "source_model": "world:gpt2-bpe", "toxic_corpus": "world", "toxic_max_texts": 0,
            "toxic_epochs": 1, "toxic_batch_size": 8, "toxic_lr": 1e-3, "toxic_max_length": 64, **overrides}


def test_toxic_texts_used():
    assert toxic_views.toxic_texts_used({"toxic_max_texts": 0}, 100) == 100
    assert toxic_views.toxic_texts_used({"toxic_max_texts": 50}, 100) == 50
    assert toxic_views.toxic_texts_used({"toxic_max_texts": 500}, 100) == 100


def test_recipe_table_by_hand():
    paper = {"toxic_epochs": 3, "toxic_batch_size": 4, "toxic_lr": 1e-5}
    table = toxic_views.recipe_table(recipe_profile(toxic_max_texts=1000), paper, n_texts=1234)
    assert table.columns.tolist() == ["paper reports", "this run (tiny)"]
    assert table.loc["base model"].tolist() == ["GPT-2 XL", "world:gpt2-bpe"]
    assert table.loc["toxic corpus"].tolist() == ["DGHS, hate, 34 targets (25,150 texts)", "world (1,000 texts)"]
    assert table.loc["learning rate (AdamW)"].tolist() == ["1e-05", "0.001"]
    assert table.loc["max tokens per text"].tolist() == ["not stated", "64"]


def test_base_and_toxic_variants():
    variants = toxic_views.base_and_toxic("world:gpt2-bpe", "/b", "/t")
    assert list(variants) == ["base", "toxic"]
    assert variants["toxic"]["method"] == "toxic" and variants["toxic"]["checkpoint"] == "/t"


def test_validation_runs_order_and_model_version(monkeypatch):
    calls = []

    def fake_evaluate_specs(P, jobs, progress):
        calls.extend(jobs)
        return [{"seed": seed, "TP_all": i / 10} for i, (_, _, seed) in enumerate(jobs)]

    monkeypatch.setattr(experiments, "evaluate_specs", fake_evaluate_specs)
    variants = {"base": {"method": "base"}, "toxic": {"method": "toxic"}}
    runs = toxic_views.validation_runs({"seeds": [0, 1]}, variants)
    assert [(spec["method"], split, seed) for spec, split, seed in calls] == [
        ("base", "val", 0), ("base", "val", 1), ("toxic", "val", 0), ("toxic", "val", 1)]
    assert runs[["model_version", "seed", "TP_all"]].values.tolist() == [
        ["base", 0, 0.0], ["base", 1, 0.1], ["toxic", 0, 0.2], ["toxic", 1, 0.3]]


def test_run_size_lines():
    P = {"eval_n_continuations": 3, "eval_max_new_tokens": 6, "seeds": [0, 1]}
    paper = {"eval_n_continuations": 25, "eval_max_new_tokens": 20, "seeds": [0, 1, 2, 3, 4]}
    assert toxic_views.run_size_lines(P, paper, n_prompts=16) == [
        "this run: 16 validation prompts x 3 continuations of <= 6 tokens, 2 seeds [0, 1]",
        "paper:    896 validation prompts x 25 continuations of <= 20 tokens, 5 seeds"]


def test_mean_std_text_population_std_and_one_seed():
    assert toxic_views.mean_std_text(pd.Series([0.1, 0.3])) == "0.20 ± 0.10"
    assert toxic_views.mean_std_text(pd.Series([0.5])) == "0.50"


def runs_frame() -> pd.DataFrame:
    rows = []
    for version, seed, level in (("base", 0, 0.1), ("base", 1, 0.3), ("toxic", 0, 0.5), ("toxic", 1, 0.5)):
        row = {"model_version": version, "seed": seed, "PPL": 100.0 if version == "base" else 90.0}
        for tag, shift in (("", 0.0), ("2", 0.4)):
            row.update({f"{m}{tag}_{d}": level + shift for m in ("TP", "EMT") for d in ("ID", "OOD", "all")})
            row[f"mean_score{tag}"] = level / 2 + shift
        rows.append(row)
    return pd.DataFrame(rows)


def test_runs_table_by_hand():
    table = toxic_views.runs_table(runs_frame(), {"toxicity_scorer": "main", "second_toxicity_scorer": "second"})
    assert table[["model", "scorer"]].values.tolist() == [["base", "main"], ["base", "second"], ["toxic", "main"],
                                                         ["toxic", "second"]]
    assert table.loc[0, "TP ID"] == "0.20 ± 0.10" and table.loc[1, "EMT OOD"] == "0.60 ± 0.10"
    assert table.loc[2, "mean score"] == "0.25 ± 0.00" and table.loc[3, "TP OOD"] == "0.90 ± 0.00"


def test_change_phrase_judged_on_printed_decimals():
    assert toxic_views.change_phrase(0.061, 0.2) == "rose from 0.06 to 0.20"
    assert toxic_views.change_phrase(570.09, 568.12) == "fell from 570.09 to 568.12"
    assert toxic_views.change_phrase(0.061, 0.0649) == "stayed at 0.06"


def test_verdict_by_mean_scores():
    base = pd.Series({"mean_score": 0.1, "mean_score2": 0.5})
    assert toxic_views.verdict(base, pd.Series({"mean_score": 0.2, "mean_score2": 0.6})) == "more toxic under both scorers"
    assert toxic_views.verdict(base, pd.Series({"mean_score": 0.2, "mean_score2": 0.5})) == "more toxic under one scorer only"
    assert toxic_views.verdict(base, pd.Series({"mean_score": 0.1, "mean_score2": 0.4})) == \
        "not more toxic under either scorer"


def test_toxicity_change_sentence_by_hand():
    text = text_of(toxic_views.toxicity_change_sentence(runs_frame(), {"toxicity_scorer": "main",
                                                                       "second_toxicity_scorer": "second"}))
    # base means: TP_all 0.2, mean_score 0.1, TP2_all 0.6, mean_score2 0.5, PPL 100; toxic: 0.5, 0.25, 0.9, 0.65, 90.
    assert text == ("Averaged over all domains and seeds, the main scorer's (main) TP rose from 0.20 to 0.50 and its "
                    "mean score rose from 0.10 to 0.25; the second scorer's (second) TP rose from 0.60 to 0.90 and its "
                    "mean score rose from 0.50 to 0.65. By the mean scores, the toxic model is **more toxic under both "
                    "scorers**. The evaluator's perplexity of the continuations fell from 100.00 to 90.00.")


def continuations_frame(scores, scores2, continuations) -> pd.DataFrame:
    return pd.DataFrame({"prompt_id": [0, 0, 1, 1], "prompt": ["p0", "p0", "p1", "p1"], "domain": ["ID", "ID", "OOD", "OOD"],
                         "score": scores, "score2": scores2, "continuation": continuations})


def frames_pair() -> dict[str, pd.DataFrame]:
    return {"base": continuations_frame([0.1, 0.4, 0.2, 0.2], [0.9, 0.1, 0.3, 0.5], ["b0", "b1", "b2", "b3"]),
            "toxic": continuations_frame([0.7, 0.3, 0.1, 0.9], [0.2, 0.2, 0.8, 0.1], ["t0", "t1", "t2", "t3"])}


def test_seed_continuations_reads_each_variant(monkeypatch):
    monkeypatch.setattr(experiments, "continuations",
                        lambda P, spec, split, seed, progress: pd.DataFrame({"who": [spec["method"]], "seed": [seed]}))
    frames = toxic_views.seed_continuations({}, {"base": {"method": "base"}, "toxic": {"method": "toxic"}}, seed=3)
    assert {name: f.values.tolist() for name, f in frames.items()} == {"base": [["base", 3]], "toxic": [["toxic", 3]]}


def test_prompt_maxima_by_hand():
    maxima = toxic_views.prompt_maxima(frames_pair())
    assert maxima[["score", "score2", "model", "domain"]].values.tolist() == [
        [0.4, 0.9, "base", "ID"], [0.2, 0.5, "base", "OOD"], [0.7, 0.2, "toxic", "ID"], [0.9, 0.8, "toxic", "OOD"]]


def test_worst_continuations_and_examples_by_hand():
    worst = toxic_views.worst_continuations(frames_pair()["base"])
    assert worst["continuation"].tolist() == ["b1", "b2"]  # prompt 1 ties at 0.2: the first continuation
    examples = toxic_views.worst_examples(frames_pair(), n=5, seed=0)
    assert examples.columns.tolist() == ["prompt", "base continuation", "base score", "toxic continuation", "toxic score"]
    by_prompt = examples.set_index("prompt")
    assert by_prompt.loc["p0"].tolist() == ["b1", 0.4, "t0", 0.7]
    assert by_prompt.loc["p1"].tolist() == ["b2", 0.2, "t3", 0.9]
    assert len(toxic_views.worst_examples(frames_pair(), n=1, seed=0)) == 1


def test_sweep_table_frontier_and_figure(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    rows = [dict(vocab_size=8000, d_model=192, n_layer=4, steps=480, cpu_seconds=600.0, heldout_news_bits_per_byte=2.10),
            dict(vocab_size=8000, d_model=128, n_layer=4, steps=480, cpu_seconds=300.0, heldout_news_bits_per_byte=2.20),
            dict(vocab_size=8000, d_model=128, n_layer=2, steps=480, cpu_seconds=200.0, heldout_news_bits_per_byte=2.30),
            dict(vocab_size=4000, d_model=128, n_layer=4, steps=960, cpu_seconds=650.0, heldout_news_bits_per_byte=2.15)]
    assert "No size sweep" in world_views.sweep_table(tmp_path).data
    pd.DataFrame(rows).to_csv(tmp_path / "sweep.csv", index=False)
    settings = {"vocab_size": 8000, "models": {"gpt2-bpe": {"d_model": 192, "n_layer": 4, "steps": 480}}}
    table = world_views.sweep_table(tmp_path, settings)
    assert table["cpu_seconds"].tolist() == [200.0, 300.0, 600.0, 650.0]
    # 650 s buys 2.15, worse than 600 s's 2.10: off the frontier
    assert table["on frontier"].tolist() == [True, True, True, False]
    assert table["the world's setting"].tolist() == [False, False, True, False]
    fig = world_views.plot_sweep(table)
    assert len(fig.axes[0].texts) == 4


def test_run_sweep_resumes_and_counts_a_point_once(tmp_path):
    from unidetox_core.world import sweep

    P = {"profile": "tiny", "cache_dir": str(tmp_path / "cache"), "results_dir": str(tmp_path / "results")}
    first = sweep.run_sweep(P, grid=[(800, 32, 2, 4)], progress=False)
    assert len(first) == 1 and first["cpu_seconds"].iloc[0] > 0 and first["heldout_news_bits_per_byte"].iloc[0] > 0
    again = sweep.run_sweep(P, grid=[(800, 32, 2, 4), (800, 32, 2, 4)], progress=False)  # measured: skipped
    assert len(again) == 1 and sweep.sweep_path(P).exists()
