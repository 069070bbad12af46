"""Scorers: one interface (texts -> probabilities, with a name), batched, clear when unavailable."""

import numpy as np
import pytest

from unidetox_core import scorers

TOXIC = ["you are a stupid idiot", "shut up you dumb moron", "what an idiot, stupid and dumb", "dumb stupid people"]
CLEAN = ["have a nice day", "the weather is lovely today", "thank you for the help", "the team won the game"]


def test_profanity_check_scores_offline_and_batched_equals_one_by_one():
    scorer = scorers.get_toxicity_scorer("profanity_check")
    assert scorer.name == "profanity_check"
    texts = TOXIC[:2] + CLEAN[:2] + [None, ""]
    batched = scorer(texts)
    assert batched.shape == (6,) and ((batched >= 0) & (batched <= 1)).all()
    assert batched[:2].min() > batched[2:4].max()
    one_by_one = np.concatenate([scorers.ProfanityCheckScorer(batch_size=1)([t]) for t in texts])
    np.testing.assert_allclose(batched, one_by_one)
    assert scorer([]).shape == (0,)
    with pytest.raises(TypeError, match="not one string"):
        scorer("a single text")
    import pandas as pd

    scored = scorers.add_scores(pd.DataFrame({"continuation": texts}), scorer)
    np.testing.assert_allclose(scored.score, batched)
    assert (scored.scorer == "profanity_check").all()


def test_tfidf_binary_fit_save_load_and_factory(tmp_path):
    texts, labels = TOXIC + CLEAN, [1] * 4 + [0] * 4
    scorer = scorers.TfidfClassifierScorer("davidson_tfidf").fit(texts, labels)
    probe = ["stupid idiot", "a lovely day", "", "the game"]
    probs = scorer(probe)
    assert probs.shape == (4,) and probs[0] > 0.5 > probs[1]
    np.testing.assert_allclose(probs, np.concatenate([scorer([t]) for t in probe]))  # batch-independent

    path = scorer.save(tmp_path / "davidson.joblib")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["davidson.joblib"]  # no temporary left behind
    loaded = scorers.get_toxicity_scorer("davidson_tfidf", path=path)
    assert loaded.name == "davidson_tfidf"
    np.testing.assert_array_equal(loaded(probe), probs)
    with pytest.raises(ValueError, match="3-class"):
        scorers.get_bias_scorer("allsides_tfidf", path=path)


def test_tfidf_three_classes_in_left_center_right_order(tmp_path):
    texts = ["progressive climate justice"] * 3 + ["budget committee report"] * 3 + ["tax cuts border security"] * 3
    labels = ["left"] * 3 + ["center"] * 3 + ["right"] * 3
    scorer = scorers.TfidfClassifierScorer("allsides_tfidf", class_order=scorers.BIAS_LABELS).fit(texts, labels)
    probs = scorer(["climate justice", "committee report", "border security tax"])
    assert probs.shape == (3, 3)
    np.testing.assert_allclose(probs.sum(1), 1.0)
    assert probs.argmax(1).tolist() == [0, 1, 2]
    loaded = scorers.get_bias_scorer("allsides_tfidf", path=scorer.save(tmp_path / "allsides.joblib"))
    np.testing.assert_array_equal(loaded(["climate justice"]), probs[:1])
    assert loaded([]).shape == (0, 3)
    with pytest.raises(ValueError, match="binary"):
        scorers.get_toxicity_scorer("davidson_tfidf", path=tmp_path / "allsides.joblib")


def test_tfidf_errors_say_what_to_do(tmp_path):
    with pytest.raises(ValueError, match="pass path="):
        scorers.get_toxicity_scorer("davidson_tfidf")
    with pytest.raises(scorers.ScorerUnavailableError, match="world"):
        scorers.get_bias_scorer("allsides_tfidf", path=tmp_path / "missing.joblib")
    with pytest.raises(ValueError, match="positive_label=1"):
        scorers.TfidfClassifierScorer("t").fit(["a", "b"], ["x", "y"])
    with pytest.raises(ValueError, match="missing"):
        scorers.TfidfClassifierScorer("b", class_order=scorers.BIAS_LABELS).fit(["a", "b"], ["left", "right"])
    with pytest.raises(RuntimeError, match="fit"):
        scorers.TfidfClassifierScorer("t")(["a"])
    with pytest.raises(ValueError, match="unknown; use one of"):
        scorers.get_toxicity_scorer("perspective")
    with pytest.raises(ValueError, match="unknown; use one of"):
        scorers.get_bias_scorer("perspective")


def test_detoxify_offline_names_the_checkpoint_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty torch.hub cache
    monkeypatch.setenv("UNIDETOX_OFFLINE", "1")
    monkeypatch.delenv("UNIDETOX_DETOXIFY_CHECKPOINT", raising=False)
    with pytest.raises(scorers.ScorerUnavailableError) as info:
        scorers.get_toxicity_scorer("detoxify", device="cpu")
    message = str(info.value)
    for needed in ("toxic_original-c1212f89.ckpt", "bert-base-uncased", "checkpoint=", "huggingface_config_path="):
        assert needed in message
    with pytest.raises(scorers.ScorerUnavailableError, match="is not a file"):
        scorers.get_toxicity_scorer("detoxify", checkpoint=tmp_path / "nope.ckpt", device="cpu")


def test_detoxify_scores_in_batches(tmp_path, monkeypatch):
    """The real ``Detoxify`` needs its checkpoint; a stand-in with its interface checks our batching."""
    import detoxify

    batches = []

    class FakeDetoxify:
        class_names = ["toxicity", "insult"]

        def __init__(self, model_type, checkpoint=None, device="cpu", huggingface_config_path=None):
            self.model_type, self.checkpoint = model_type, checkpoint

        def predict(self, texts):
            batches.append(list(texts))
            return {"toxicity": [len(t) / 100 for t in texts], "insult": [0.0 for _ in texts]}

    checkpoint = tmp_path / "toxic_original-c1212f89.ckpt"
    checkpoint.write_bytes(b"stand-in")
    monkeypatch.setattr(detoxify, "Detoxify", FakeDetoxify)
    scorer = scorers.get_toxicity_scorer("detoxify", checkpoint=checkpoint, batch_size=2, device="cpu")
    texts = ["a", "bb", "ccc", None, "eeeee"]
    np.testing.assert_allclose(scorer(texts), [0.01, 0.02, 0.03, 0.0, 0.05])
    assert scorer.name == "detoxify" and [len(b) for b in batches] == [2, 2, 1]
    assert list(scorer.score_all(["a"]).columns) == ["toxicity", "insult"]


def test_political_bias_bert_offline_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(scorers.ScorerUnavailableError, match="bucketresearch/politicalBiasBERT.*save_pretrained"):
        scorers.get_bias_scorer("political_bias_bert")


def test_political_bias_bert_code_path_on_a_tiny_local_bert(tmp_path, bpe_tokenizer):
    """The same loading and batching code as for the hub model, on a random 3-label BERT saved locally."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(bpe_tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64, num_labels=3,
                        pad_token_id=bpe_tokenizer.pad_token_id)
    BertForSequenceClassification(config).save_pretrained(tmp_path)
    bpe_tokenizer.save_pretrained(tmp_path)
    scorer = scorers.get_bias_scorer("political_bias_bert", model=str(tmp_path), device="cpu", batch_size=3)
    assert scorer.name == "political_bias_bert"
    texts = ["the president said", "a", "people city state president police game team", "", "good"]
    probs = scorer(texts)
    assert probs.shape == (5, 3)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-6)
    one_by_one = np.concatenate([scorer([t]) for t in texts])
    np.testing.assert_allclose(probs, one_by_one, atol=1e-5)
    assert scorer([]).shape == (0, 3)
