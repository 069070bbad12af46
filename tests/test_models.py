import pytest
import torch

from unidetox_core import models


@pytest.mark.parametrize("arch", models.ARCHITECTURES)
def test_each_family_saves_and_reloads_bit_identical(arch, bpe_tokenizer, tmp_path):
    model = models.build_small_model(arch, bpe_tokenizer, seed=7, d_model=32, n_layer=2, n_head=2, max_positions=64)
    models.save_model(model, bpe_tokenizer, tmp_path / arch)
    loaded, tok = models.load_model(str(tmp_path / arch), device="cpu")
    assert type(loaded).__name__ == type(model).__name__
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    assert tok.padding_side == "left" and tok.pad_token_id is not None
    batch = tok(["the news", "a"], return_tensors="pt", padding=True)
    assert loaded(**batch).logits.shape == (2, batch.input_ids.shape[1], len(tok))


def test_tokenizer_schemes_differ_and_round_trip(bpe_tokenizer, unigram_tokenizer):
    text = "the police said the game was very good."
    for tok in (bpe_tokenizer, unigram_tokenizer):
        assert tok.decode(tok(text).input_ids) == text
    assert bpe_tokenizer.get_vocab() != unigram_tokenizer.get_vocab()
    assert models.same_tokenizer(bpe_tokenizer, bpe_tokenizer)
    assert not models.same_tokenizer(bpe_tokenizer, unigram_tokenizer)
    # GPT-2 convention: one <|endoftext|> is BOS, EOS and pad; LLaMA's scheme has distinct ones.
    assert bpe_tokenizer.bos_token_id == bpe_tokenizer.eos_token_id == bpe_tokenizer.pad_token_id
    assert len({unigram_tokenizer.bos_token_id, unigram_tokenizer.eos_token_id, unigram_tokenizer.pad_token_id}) == 3


def test_parameter_count_counts_tied_embeddings_once(bpe_tokenizer):
    model = models.build_small_model("gpt2", bpe_tokenizer, d_model=32, n_layer=1, n_head=2, max_positions=64)
    # wte (V*d) + wpe (64*d) + 1 block + final LN; lm_head tied to wte.
    v, d = len(bpe_tokenizer), 32
    block = 2 * 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * 4 * d + 4 * d) + (4 * d * d + d)
    assert models.count_parameters(model) == v * d + 64 * d + block + 2 * d


def test_missing_folder_and_missing_files_give_clear_errors(tmp_path):
    with pytest.raises(models.ModelNotFoundError, match=r"model='.*nowhere' does not exist"):
        models.load_model(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(models.ModelNotFoundError, match="lacks config.json, model weights"):
        models.load_model(str(tmp_path / "empty"))


def test_unknown_hub_id_offline_names_the_model_and_the_way_out(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(models.ModelNotFoundError, match="no-such-org/no-such-model.*local folder"):
        models.load_model("no-such-org/no-such-model")


def test_bad_sizes_and_names_are_rejected(bpe_tokenizer):
    with pytest.raises(ValueError, match="arch='bert'"):
        models.build_small_model("bert", bpe_tokenizer)
    with pytest.raises(ValueError, match="divisible"):
        models.build_small_model("gpt2", bpe_tokenizer, d_model=30, n_head=4)
    with pytest.raises(ValueError, match="kind='wordpiece'"):
        models.train_tokenizer(["a b"], "wordpiece")


def test_same_tokenizer_ignores_remembered_truncation_and_padding(bpe_tokenizer, tmp_path):
    bpe_tokenizer.save_pretrained(tmp_path / "a")
    from transformers import AutoTokenizer

    copy = AutoTokenizer.from_pretrained(tmp_path / "a")
    copy(["a b c", "a"], truncation=True, max_length=2, padding=True)  # leaves state in the backend
    assert models.same_tokenizer(bpe_tokenizer, copy)


def test_unigram_training_is_deterministic(corpus):
    """Two trainings on the same text give the same tokenizer, byte for byte (the ``tokenizers``
    Unigram trainer did not: the world's LLaMA model changed with every build), with the special
    tokens at ids 0-3 and every character of the corpus a piece (no unknown token)."""
    first, second = (models.train_tokenizer(corpus, "unigram", vocab_size=120) for _ in range(2))
    assert first.backend_tokenizer.to_str() == second.backend_tokenizer.to_str()
    assert [first.bos_token_id, first.eos_token_id, first.unk_token_id, first.pad_token_id] == [0, 1, 2, 3]
    ids = first(" ".join(corpus[:5]), add_special_tokens=False)["input_ids"]
    assert first.unk_token_id not in ids and first.decode(ids) == " ".join(corpus[:5])
