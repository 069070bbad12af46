"""Fine-tuning: it learns, padding is invisible, runs are deterministic and resumable, bad input fails."""

import pandas as pd
import pytest
import torch

from unidetox_core import finetune, forward, models


@pytest.fixture()
def texts(corpus):
    return corpus[:24]


def same_weights(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def padded(sequences, pad_id, length=None) -> dict:
    ids, mask = forward.right_pad(sequences, pad_id, length=length)
    return {"input_ids": ids, "attention_mask": mask}


def fresh(path):
    return models.load_model(str(path), device="cpu")


def mean_nll(model, tok, texts) -> float:
    seqs = finetune.tokenize_texts(tok, texts, 64)
    with torch.no_grad():
        nll, n = finetune.summed_token_nll(model.eval(), **padded(seqs, tok.pad_token_id))
    return float(nll) / n


# ------------------------------------------------------------------------------------- learning
def test_finetuning_lowers_the_loss_on_its_texts(tiny_gpt2, texts):
    model, tok = tiny_gpt2
    before = mean_nll(model, tok, texts)
    history = finetune.finetune(model, tok, texts, lr=3e-3, batch_size=8, steps=15, max_length=64, progress=False)
    assert mean_nll(model, tok, texts) < before - 0.2
    assert len(history["loss"]) == 15 and history["step"][-1] == 15
    assert history["tokens"] > 0 and history["tokens_per_s"] > 0 and history["wall_time_s"] > 0
    assert history["bf16"] is False  # hidden size 32: float32 on CPU ("auto")
    assert not model.training  # left in the mode it came in (load_model: eval)


def test_start_token_is_prepended_once_and_truncation_keeps_it(bpe_tokenizer, unigram_tokenizer):
    for tok in (bpe_tokenizer, unigram_tokenizer):
        start = models.start_token_id(tok)
        seqs = finetune.tokenize_texts(tok, ["the police said", "a " * 100], max_length=10)
        assert all(s[0] == start and s.count(start) == 1 for s in seqs)
        assert len(seqs[1]) == 10
        assert finetune.tokenize_texts(tok, ["the"], 10, prepend_bos=False)[0][0] != start


def test_eos_ends_every_text_that_truncation_did_not_cut(bpe_tokenizer, unigram_tokenizer):
    for tok in (bpe_tokenizer, unigram_tokenizer):
        eos = tok.eos_token_id
        short, cut = finetune.tokenize_texts(tok, ["the police said", "a " * 100], max_length=40, append_eos=True)
        plain = finetune.tokenize_texts(tok, ["the police said"], max_length=40)[0]
        assert short == plain + [eos] and len(short) < 40  # one EOS after the text
        assert len(cut) == 40 and cut[-1] != eos  # a cut text did not end
        assert finetune.tokenize_texts(tok, [""], 10, append_eos=True)[0][-1] == eos  # an empty text is just its end


def test_the_recipe_decays_the_rate_clips_and_trains_the_eos(tiny_gpt2, texts):
    model, tok = tiny_gpt2
    history = finetune.finetune(model, tok, texts, lr=1e-3, batch_size=8, steps=4, max_length=64, progress=False,
                                **finetune.RECIPE)
    assert history["lr"] == pytest.approx([1e-3, 7.5e-4, 5e-4, 2.5e-4])  # Trainer's linear decay towards 0
    assert history["settings"]["max_grad_norm"] == 1.0 and history["settings"]["append_eos"] is True
    plain, with_eos = finetune.tokenize_texts(tok, texts, 64), finetune.tokenize_texts(tok, texts, 64, append_eos=True)
    assert all(e == (p + [tok.eos_token_id] if len(p) < 64 else p) for p, e in zip(plain, with_eos))


# ------------------------------------------------------------------------------------- padding
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_padding_changes_neither_loss_nor_gradients(family, tiny_gpt2, tiny_llama, texts):
    model, tok = tiny_gpt2 if family == "gpt2" else tiny_llama
    seqs = finetune.tokenize_texts(tok, texts[:4], 64)

    def loss_and_grads(batch):
        model.zero_grad()
        nll, n = finetune.summed_token_nll(model, **batch)
        nll.backward()
        return float(nll.detach()), n, [p.grad.clone() for p in model.parameters()]

    tight = loss_and_grads(padded(seqs, tok.pad_token_id))
    loose = loss_and_grads(padded(seqs, tok.pad_token_id, length=max(map(len, seqs)) + 9))
    alone = [loss_and_grads(padded([s], tok.pad_token_id)) for s in seqs]
    assert tight[1] == loose[1] == sum(len(s) - 1 for s in seqs) == sum(a[1] for a in alone)
    assert tight[0] == pytest.approx(loose[0], rel=1e-6) == pytest.approx(sum(a[0] for a in alone), rel=1e-6)
    for i, (g1, g2) in enumerate(zip(tight[2], loose[2])):
        g3 = sum(a[2][i] for a in alone)
        assert torch.allclose(g1, g2, atol=1e-6, rtol=1e-5) and torch.allclose(g1, g3, atol=1e-6, rtol=1e-4)


def test_a_real_eos_inside_a_text_counts_though_pad_is_eos(bpe_tokenizer):
    # GPT-2 convention: pad == EOS, so padding must be found by the attention mask, not by id.
    eos = bpe_tokenizer.eos_token_id
    assert bpe_tokenizer.pad_token_id == eos
    seqs = [[eos, 5, eos, 7], [eos, 5]]
    batch = padded(seqs, eos)
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    model = models.build_small_model("gpt2", bpe_tokenizer, d_model=16, n_layer=1, n_head=2, max_positions=16)
    assert finetune.summed_token_nll(model, **batch)[1] == 3 + 1


def test_gradient_accumulation_gives_the_update_of_the_whole_batch(tiny_gpt2, texts):
    model, tok = tiny_gpt2
    model.eval()  # no dropout: the comparison is of the arithmetic only
    seqs = finetune.tokenize_texts(tok, texts[:6], 64)
    grads = []
    for accum in (1, 3):
        model.zero_grad()
        loss, n = finetune.accumulate_gradients(model, seqs, tok.pad_token_id, accum, torch.device("cpu"), False)
        grads.append((loss, n, [p.grad.clone() for p in model.parameters()]))
    assert grads[0][0] == pytest.approx(grads[1][0], rel=1e-6) and grads[0][1] == grads[1][1]
    assert all(torch.allclose(a, b, atol=1e-6, rtol=1e-5) for a, b in zip(grads[0][2], grads[1][2]))


# --------------------------------------------------------------------- determinism and resuming
def test_same_seed_same_weights_other_seed_other_weights(tiny_gpt2_path, texts):
    kw = dict(lr=1e-3, batch_size=4, steps=4, max_length=32, progress=False)
    runs = []
    for seed in (0, 0, 1):
        model, tok = fresh(tiny_gpt2_path)
        finetune.finetune(model, tok, texts, seed=seed, **kw)
        runs.append(model)
    assert same_weights(runs[0], runs[1]) and not same_weights(runs[0], runs[2])


def test_data_order_is_a_fresh_shuffle_each_epoch():
    order = [finetune.batch_indices(s, 10, 4, seed=3).tolist() for s in range(6)]
    assert [len(b) for b in order] == [4, 4, 2, 4, 4, 2]  # last batch of an epoch is smaller
    assert sorted(sum(order[:3], [])) == list(range(10)) == sorted(sum(order[3:], []))
    assert order[:3] != order[3:]


def test_epochs_mode_runs_epochs_times_batches_per_epoch(tiny_gpt2, texts):
    model, tok = tiny_gpt2
    history = finetune.finetune(model, tok, texts[:10], lr=1e-3, batch_size=4, epochs=2, max_length=32,
                                progress=False)
    assert history["step"][-1] == 2 * 3
    linear = finetune.finetune(model, tok, texts[:10], lr=1e-3, batch_size=4, steps=4, max_length=32,
                               lr_schedule="linear", max_grad_norm=1.0, progress=False)
    assert linear["lr"] == pytest.approx([1e-3, 7.5e-4, 5e-4, 2.5e-4])  # Trainer's default decay


def test_resume_after_interruption_gives_the_weights_of_an_uninterrupted_run(tiny_gpt2_path, texts, tmp_path):
    kw = dict(lr=1e-3, batch_size=4, max_length=32, seed=5, progress=False)
    reference, tok = fresh(tiny_gpt2_path)
    full = finetune.finetune(reference, tok, texts, steps=6, **kw)

    # (1) killed at step 5 of a run that saves at 2, 4 and 6; rerun the same call.
    model, _ = fresh(tiny_gpt2_path)

    def crash(step, loss):
        if step == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune.finetune(model, tok, texts, steps=6, save_steps=(2, 4, 6), output_dir=tmp_path / "a", on_step=crash, **kw)
    model, _ = fresh(tiny_gpt2_path)
    resumed = finetune.finetune(model, tok, texts, steps=6, save_steps=(2, 4, 6), output_dir=tmp_path / "a", **kw)
    assert resumed["resumed_from"] == 4 and same_weights(model, reference)
    assert resumed["loss"] == pytest.approx(full["loss"], rel=1e-6)  # the history covers the whole run
    # only the newest checkpoint keeps the (large) optimizer state
    states = {s: torch.load(p / finetune.TRAINING_STATE, weights_only=True)
              for s, p in finetune.list_checkpoints(tmp_path / "a").items()}
    assert ["optimizer" in states[s] for s in (2, 4, 6)] == [False, False, True]
    # every checkpoint loads like any model folder
    step6, _ = models.load_model(str(tmp_path / "a" / "step-6"), device="cpu")
    assert same_weights(step6, reference)

    # (2) a shorter run continued by a longer one (constant learning rate)
    model, _ = fresh(tiny_gpt2_path)
    finetune.finetune(model, tok, texts, steps=3, save_steps=(3,), output_dir=tmp_path / "b", **kw)
    model, _ = fresh(tiny_gpt2_path)
    longer = finetune.finetune(model, tok, texts, steps=6, save_steps=(3, 6), output_dir=tmp_path / "b", **kw)
    assert longer["resumed_from"] == 3 and same_weights(model, reference)

    # (3) a finished run returns at once with its weights
    model, _ = fresh(tiny_gpt2_path)
    again = finetune.finetune(model, tok, texts, steps=6, save_steps=(3, 6), output_dir=tmp_path / "b", **kw)
    assert again["resumed_from"] == 6 and same_weights(model, reference)

    # (4) other settings in the same folder: refuse rather than mix two runs
    with pytest.raises(ValueError, match="other settings.*lr: 0.001 -> 0.002.*another output_dir"):
        finetune.finetune(model, tok, texts, steps=6, save_steps=(6,), output_dir=tmp_path / "b",
                          **{**kw, "lr": 2e-3})


def test_a_run_stopped_early_has_the_whole_runs_weights_and_continues(tiny_gpt2_path, texts, tmp_path):
    """``stop_after`` ends a linear-schedule run at a grid step with the weights the whole run has there
    (the rate still decays over all its steps); a later call continues it to the end."""
    kw = dict(lr=1e-3, batch_size=4, max_length=32, seed=5, progress=False, steps=6, save_steps=(2, 4, 6),
              **finetune.RECIPE)
    reference, tok = fresh(tiny_gpt2_path)
    full = finetune.finetune(reference, tok, texts, output_dir=tmp_path / "full", **kw)
    model, _ = fresh(tiny_gpt2_path)
    early = finetune.finetune(model, tok, texts, output_dir=tmp_path / "early", stop_after=4, **kw)
    assert early["step"] == [1, 2, 3, 4] and early["lr"] == full["lr"][:4]  # the rate of a 6-step run
    assert sorted(finetune.list_checkpoints(tmp_path / "early")) == [2, 4]
    step4, _ = models.load_model(str(tmp_path / "full" / "step-4"), device="cpu")
    assert same_weights(model, step4)
    model, _ = fresh(tiny_gpt2_path)
    rest = finetune.finetune(model, tok, texts, output_dir=tmp_path / "early", **kw)
    assert rest["resumed_from"] == 4 and same_weights(model, reference)


def test_load_texts_csv_keeps_empty_texts(tmp_path):
    path = tmp_path / "t.csv"
    pd.DataFrame({"Text": ["a b", "", "c"]}).to_csv(path, index=False)
    assert finetune.load_texts_csv(path) == ["a b", "", "c"]
    with pytest.raises(ValueError, match="no column 'Txt'"):
        finetune.load_texts_csv(path, column="Txt")


# ------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "override, message",
    [
        (dict(steps=0), "steps=0 must be a positive integer"),
        (dict(steps=-5), "steps=-5 must be a positive integer"),
        (dict(steps=None), "exactly one of steps= .* or epochs="),
        (dict(epochs=2), "exactly one of steps= .* or epochs="),
        (dict(lr=0), "lr=0 must be a positive number"),
        (dict(batch_size=0), "batch_size=0 must be a positive integer"),
        (dict(max_length=-1), "max_length=-1 must be a positive integer"),
        (dict(save_steps=(3, 20)), r"save_steps \[20\] lie outside 1..10"),
        (dict(save_steps=(5,)), "save_steps needs output_dir="),
        (dict(grad_accum=0), "grad_accum=0 must be a positive integer"),
        (dict(lr_schedule="cosine"), "lr_schedule='cosine' must be 'constant' or 'linear'"),
    ],
)
def test_bad_finetuning_arguments_fail_before_any_compute(tiny_gpt2, texts, override, message):
    model, tok = tiny_gpt2
    kw = dict(lr=1e-3, batch_size=4, steps=10, progress=False)
    with pytest.raises(ValueError, match=message):
        finetune.finetune(model, tok, texts, **{**kw, **override})
    with pytest.raises(ValueError, match="texts is empty"):
        finetune.finetune(model, tok, [], **kw)


def test_gradient_checkpointing_gives_the_same_update(tiny_gpt2_path):
    """Recomputing activations in the backward pass must not change the result (used at 7 B scale)."""
    from unidetox_core import models

    results = []
    for setting in (False, True):
        model, tok = models.load_model(str(tiny_gpt2_path), device="cpu")
        finetune.finetune(model, tok, ["the news report says", "a small team"], lr=1e-3, batch_size=2, steps=2,
                          max_length=16, progress=False, gradient_checkpointing=setting)
        results.append([p.detach().clone() for p in model.parameters()])
        assert not model.is_gradient_checkpointing
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="gradient_checkpointing='yes'"):
        finetune.finetune(model, tok, ["a"], lr=1e-3, batch_size=1, steps=1, gradient_checkpointing="yes")


def test_pure_bf16_weights_are_refused_and_small_updates_survive_autocast(tiny_gpt2_path, texts):
    """AdamW on bf16 weights rounds small updates away; the book trains float32 masters, with bf16
    autocast where it helps, and then (nearly) every weight moves at the paper's lr 1e-5."""
    kw = dict(lr=1e-5, batch_size=4, steps=3, max_length=32, progress=False)
    model, tok = fresh(tiny_gpt2_path)
    with pytest.raises(ValueError, match="not float32"):
        finetune.finetune(model.to(torch.bfloat16), tok, texts, **kw)

    def moved_share(bf16):
        model, tok = fresh(tiny_gpt2_path)
        before = [p.detach().clone() for p in model.parameters()]
        finetune.finetune(model, tok, texts, bf16=bf16, **kw)
        changed = sum(int((p.detach() != b).sum()) for p, b in zip(model.parameters(), before))
        return changed / sum(b.numel() for b in before)

    plain, autocast = moved_share(False), moved_share(True)
    assert plain > 0.9 and abs(autocast - plain) < 0.05
    # what the refused route would have done: the same updates applied to bf16 copies of the weights
    model, _ = fresh(tiny_gpt2_path)
    weights = [p.detach().to(torch.bfloat16) for p in model.parameters()]
    nudged = [(w.float() + 1e-5 * torch.sign(torch.randn_like(w.float()))).to(torch.bfloat16) for w in weights]
    lost = sum(int((n == w).sum()) for n, w in zip(nudged, weights)) / sum(w.numel() for w in weights)
    assert lost > 0.5  # most steps of 1e-5 vanish in bf16's rounding
