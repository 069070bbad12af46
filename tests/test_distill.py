"""Contrastive decoding (Eq. 1-3) and plain sampling: exactness, distributions, files, errors."""

import copy
import json
import math

import pandas as pd
import pytest
import torch

from unidetox_core import distill, models


# ------------------------------------------------------------------------------------ helpers
def bias_token(model, token_id: int, amount: float):
    """Add ``amount`` to one output logit (a bias on the LM head), e.g. to make EOS frequent."""
    old = model.lm_head
    head = torch.nn.Linear(old.in_features, old.out_features, bias=True)
    head.weight = old.weight
    with torch.no_grad():
        head.bias.zero_()
        head.bias[token_id] = amount
    model.lm_head = head
    return model


@torch.no_grad()
def reference_decode(base, toxic, *, n, max_new_tokens, start, eos, generator, alpha, temperature, top_k):
    """Brute force: every step recomputes both models on each sequence's full prefix, no cache, no
    batching, then samples with the same function and random stream as the decoder."""
    seqs = [[start] for _ in range(n)]
    done = [False] * n
    for _ in range(max_new_tokens):
        rows = []
        for b in range(n):
            if done[b]:  # its scores cannot matter: the noise does not depend on them
                rows.append(torch.zeros(distill.output_vocab_size(base)))
                continue
            ids = torch.tensor([seqs[b]])
            lp_base = torch.log_softmax(base(input_ids=ids).logits[0, -1].float(), -1)
            if toxic is None:
                rows.append(lp_base)
            else:
                lp_toxic = torch.log_softmax(toxic(input_ids=ids).logits[0, -1].float(), -1)
                rows.append(distill.contrastive_scores(lp_base, lp_toxic, alpha))
        chosen = distill.gumbel_sample(distill.keep_top_k(torch.stack(rows), top_k), generator, temperature)
        for b in range(n):
            if not done[b]:
                seqs[b].append(int(chosen[b]))
                done[b] = int(chosen[b]) == eos
        if all(done):
            break
    return [s[1:] for s in seqs]


# --------------------------------------------------------------------------- Eq. 1 and 3 by hand
def test_plausibility_mask_matches_a_hand_computed_example():
    base = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    toxic = torch.log(torch.tensor([0.25, 0.25, 0.25, 0.25]))
    # alpha = 0.2: cutoff 0.2 * 0.5 = 0.1 keeps 0.5, 0.3, 0.15 and drops 0.05.
    scores = distill.contrastive_scores(base, toxic, 0.2)
    expected = torch.tensor([math.log(2.0), math.log(1.2), math.log(0.6), -math.inf])
    assert torch.allclose(scores[:3], expected[:3], atol=1e-6)
    assert scores[3] == -math.inf
    # alpha = 0.5: cutoff 0.25 keeps only 0.5 and 0.3.
    assert distill.contrastive_scores(base, toxic, 0.5).isfinite().tolist() == [True, True, False, False]


def test_alpha_zero_keeps_every_token_and_alpha_one_only_the_mode():
    torch.manual_seed(0)
    base = torch.log_softmax(torch.randn(5, 300) * 4, -1)
    toxic = torch.log_softmax(torch.randn(5, 300) * 4, -1)
    assert distill.contrastive_scores(base, toxic, 0.0).isfinite().all()
    kept = distill.contrastive_scores(base, toxic, 1.0).isfinite()
    assert kept.sum(-1).tolist() == [1] * 5
    assert torch.equal(kept.float().argmax(-1), base.argmax(-1))


def test_toxic_model_ruling_out_a_token_gives_no_nan():
    base = torch.log(torch.tensor([0.6, 0.4]))
    toxic = torch.tensor([0.0, -math.inf])
    scores = distill.contrastive_scores(base, toxic, 0.1)
    assert not scores.isnan().any() and scores.argmax() == 1


def test_top_k_matches_hugging_face_warper():
    from transformers.generation.logits_process import TopKLogitsWarper

    torch.manual_seed(1)
    scores = torch.randn(4, 50)
    scores[0, :10] = -math.inf
    ours = distill.keep_top_k(scores, 5)
    theirs = TopKLogitsWarper(top_k=5)(None, scores.clone())
    assert torch.equal(ours.isfinite(), theirs.isfinite())
    assert torch.equal(distill.keep_top_k(scores, 0), scores)


# -------------------------------------------------------------------------------- Eq. 2 sampling
def chi_square(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = probs * counts.sum()
    return float(((counts - expected) ** 2 / expected).sum())


def test_gumbel_sampling_follows_the_softmax():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    scores = torch.log(probs).expand(20000, 4) + 3.0  # a constant shift must not matter
    gen = torch.Generator().manual_seed(0)
    counts = torch.bincount(distill.gumbel_sample(scores, gen), minlength=4).float()
    assert chi_square(counts, probs) < 16.3  # chi^2, 3 d.o.f., p = 0.001
    hot = torch.bincount(distill.gumbel_sample(scores, gen, temperature=0.5), minlength=4).float()
    assert chi_square(hot, torch.softmax(torch.log(probs) / 0.5, -1)) < 16.3


def test_toxic_equal_to_base_samples_uniformly_over_the_plausible_set(tiny_gpt2):
    base, tok = tiny_gpt2
    start = models.start_token_id(tok)
    with torch.no_grad():
        lp = torch.log_softmax(base(input_ids=torch.tensor([[start]])).logits[0, -1], -1)
    ordered = lp.sort(descending=True).values
    # alpha between the 8th and 9th most likely token keeps exactly 8 (s = 0 on them, -inf elsewhere).
    alpha = math.exp(float(ordered[7] + ordered[8]) / 2 - float(ordered[0]))
    plausible = set((lp >= ordered[7]).nonzero().flatten().tolist())
    assert len(plausible) == 8
    texts, stats = distill.contrastive_decode(base, base, tok, n_texts=4000, max_new_tokens=1, alpha=alpha,
                                              batch_size=4000, seed=3, progress=False)
    firsts = torch.tensor([ids[0] for ids in stats["token_ids"]])
    assert set(firsts.tolist()) <= plausible
    counts = torch.bincount(firsts, minlength=len(lp))[sorted(plausible)].float()
    assert chi_square(counts, torch.full((8,), 1 / 8)) < 24.3  # chi^2, 7 d.o.f., p = 0.001
    assert stats["mean_support"] == 8


# ------------------------------------------------------------- the decoder against brute force
@pytest.mark.parametrize(
    "toxic_kind, alpha, temperature, top_k",
    [("opt", 0.02, 1.0, 0), ("gpt2-bigger", 0.1, 0.7, 5), ("none", None, 1.0, 0)],
    ids=["gpt2-vs-opt", "gpt2-vs-bigger-gpt2-topk", "plain-sampling"],
)
def test_cached_batched_decoder_picks_the_same_tokens_as_full_prefix_recomputation(
    tiny_gpt2, tiny_opt, bpe_tokenizer, toxic_kind, alpha, temperature, top_k
):
    base, tok = tiny_gpt2
    eos, start = tok.eos_token_id, models.start_token_id(tok)
    bias_token(base, eos, 2.5)  # EOS ~4 % per step, so some sequences stop early
    if toxic_kind == "opt":
        toxic = tiny_opt[0]  # another architecture, same tokenizer
    elif toxic_kind == "gpt2-bigger":
        toxic = models.build_small_model("gpt2", bpe_tokenizer, seed=5, d_model=48, n_layer=3, n_head=3,
                                         max_positions=64).eval()
    else:
        toxic = None
    n, batch_size, max_new = 10, 6, 12  # two batches, the second one smaller
    kwargs = dict(n_texts=n, max_new_tokens=max_new, batch_size=batch_size, seed=11, temperature=temperature,
                  top_k=top_k, progress=False)
    if toxic is None:
        texts, stats = distill.sample_plain(base, tok, **kwargs)
    else:
        texts, stats = distill.contrastive_decode(base, toxic, tok, alpha=alpha, **kwargs)

    expected = []
    for index in range(2):
        size = min(batch_size, n - index * batch_size)
        expected += reference_decode(base, toxic, n=size, max_new_tokens=max_new, start=start, eos=eos,
                                     generator=distill.batch_generator(11, index, torch.device("cpu")),
                                     alpha=alpha, temperature=temperature, top_k=top_k)
    assert stats["token_ids"] == expected
    ended = [bool(ids) and ids[-1] == eos for ids in expected]
    assert stats["ended_with_eos"] == ended and any(ended)
    assert stats["lengths"] == [len(ids) - e for ids, e in zip(expected, ended)]
    assert all(eos not in ids[:-1] for ids in expected)  # nothing after EOS
    assert texts == [tok.decode(ids[:n_], skip_special_tokens=True) for ids, n_ in zip(expected, stats["lengths"])]
    assert stats["generated_tokens"] == sum(map(len, expected)) and stats["tokens_per_s"] > 0


def test_same_seed_same_texts_other_seed_other_texts(tiny_gpt2, tiny_gpt2_toxic):
    (base, tok), (toxic, _) = tiny_gpt2, tiny_gpt2_toxic
    kw = dict(n_texts=4, max_new_tokens=6, batch_size=4, alpha=0.1, progress=False)
    a = distill.contrastive_decode(base, toxic, tok, seed=1, **kw)[0]
    assert a == distill.contrastive_decode(base, toxic, tok, seed=1, **kw)[0]
    assert a != distill.contrastive_decode(base, toxic, tok, seed=2, **kw)[0]


# ----------------------------------------------------------------------- files and resumption
def test_run_distillation_writes_text_csv_and_metadata(tiny_gpt2_path, tiny_gpt2_toxic_path, tmp_path):
    out = tmp_path / "distilled.csv"
    texts, stats = distill.run_distillation(tiny_gpt2_path, tiny_gpt2_toxic_path, out, device="cpu", n_texts=5,
                                            max_new_tokens=6, batch_size=2, seed=4, alpha=0.1, top_k=50,
                                            progress=False)
    frame = pd.read_csv(out, keep_default_na=False)
    assert list(frame.columns) == ["Text"] and frame["Text"].tolist() == texts and len(texts) == 5
    meta = json.loads(out.with_suffix(".json").read_text())
    for key in ("base_model", "toxic_model", "alpha", "seed", "top_k", "temperature", "lengths",
                "tokens_per_s", "wall_time_s", "max_new_tokens", "n_texts"):
        assert key in meta, key
    assert meta["alpha"] == 0.1 and meta["top_k"] == 50 and meta["toxic_model"] == str(tiny_gpt2_toxic_path)
    assert not out.with_name(out.name + ".batches").exists()  # removed once complete
    plain, _ = distill.run_distillation(tiny_gpt2_path, None, tmp_path / "samples.csv", device="cpu", n_texts=3,
                                        max_new_tokens=4, batch_size=3, progress=False)
    assert json.loads((tmp_path / "samples.json").read_text())["mode"] == "plain" and len(plain) == 3


def test_interrupted_distillation_resumes_at_the_last_finished_batch(tiny_gpt2, tiny_gpt2_toxic, tmp_path,
                                                                     monkeypatch):
    (base, tok), (toxic, _) = tiny_gpt2, tiny_gpt2_toxic
    kw = dict(max_new_tokens=5, batch_size=3, alpha=0.1, seed=7, progress=False)
    whole, _ = distill.contrastive_decode(base, toxic, tok, n_texts=8, **kw)

    calls = []
    real = distill.decode_batch

    def failing_on_third_batch(*args, **kwargs):
        calls.append(kwargs["batch_size"])
        if len(calls) == 3:
            raise KeyboardInterrupt  # the run is killed while decoding batch 2
        return real(*args, **kwargs)

    monkeypatch.setattr(distill, "decode_batch", failing_on_third_batch)
    with pytest.raises(KeyboardInterrupt):
        distill.contrastive_decode(base, toxic, tok, n_texts=8, batch_dir=tmp_path / "b", **kw)
    calls.clear()
    monkeypatch.setattr(distill, "decode_batch", lambda *a, **k: (calls.append(k["batch_size"]), real(*a, **k))[1])
    resumed, stats = distill.contrastive_decode(base, toxic, tok, n_texts=8, batch_dir=tmp_path / "b", **kw)
    assert calls == [2]  # only the unfinished last batch (of 2 texts) was decoded again
    assert resumed == whole and stats["n_texts"] == 8
    with pytest.raises(ValueError, match="other settings.*alpha"):
        distill.contrastive_decode(base, toxic, tok, n_texts=8, batch_dir=tmp_path / "b", **{**kw, "alpha": 0.2})


# ------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "override, message",
    [
        (dict(alpha=-0.1), r"alpha=-0.1 must lie in \[0, 1\]"),
        (dict(alpha=1.5), r"alpha=1.5 must lie in \[0, 1\]"),
        (dict(alpha=float("nan")), r"alpha=nan must lie in \[0, 1\]"),
        (dict(n_texts=0), "n_texts=0 must be a positive integer"),
        (dict(max_new_tokens=-3), "max_new_tokens=-3 must be a positive integer"),
        (dict(batch_size=0), "batch_size=0 must be a positive integer"),
        (dict(temperature=0.0), "temperature=0.0 must be a positive number"),
        (dict(top_k=-1), "top_k=-1 must be an integer >= 0"),
        (dict(max_new_tokens=500), "does not fit the base model's 128 positions.*<= 127"),
    ],
)
def test_bad_decoding_arguments_fail_before_any_compute(tiny_gpt2, tiny_gpt2_toxic, override, message, monkeypatch):
    (base, tok), (toxic, _) = tiny_gpt2, tiny_gpt2_toxic
    monkeypatch.setattr(distill, "decode_batch", lambda *a, **k: pytest.fail("decoded despite bad input"))
    kw = dict(n_texts=2, max_new_tokens=4, batch_size=2, alpha=0.1, progress=False)
    with pytest.raises(ValueError, match=message):
        distill.contrastive_decode(base, toxic, tok, **{**kw, **override})


def test_tokenizer_mismatch_is_a_clear_error(tiny_gpt2, tiny_llama):
    (base, tok), (llama, llama_tok) = tiny_gpt2, tiny_llama
    with pytest.raises(ValueError, match="different tokenizers.*Fine-tune the toxic model from the base"):
        distill.contrastive_decode(base, llama, tok, toxic_tokenizer=llama_tok, n_texts=1, max_new_tokens=1,
                                   progress=False)
    with pytest.raises(ValueError, match=f"predicts 300 tokens and the toxic model {len(llama_tok)}"):
        distill.contrastive_decode(base, llama, tok, n_texts=1, max_new_tokens=1, progress=False)


def test_tokenizer_copies_match_whatever_their_last_call_was(bpe_tokenizer, unigram_tokenizer):
    # A fast tokenizer keeps the truncation/padding of its last call (and saves it); that is no
    # difference in vocabulary.
    other = copy.deepcopy(bpe_tokenizer)
    other(["a b c"], truncation=True, max_length=3)
    assert models.same_tokenizer(bpe_tokenizer, other)
    assert not models.same_tokenizer(bpe_tokenizer, unigram_tokenizer)


def test_plausibility_cut_alone_with_alpha_one_is_greedy_decoding(tiny_gpt2):
    """alpha = 1 keeps only the base model's top token: plain sampling becomes greedy decoding."""
    model, tok = tiny_gpt2
    texts, stats = distill.sample_plain(model, tok, n_texts=3, max_new_tokens=8, batch_size=3, seed=0,
                                        alpha=1.0, progress=False)
    start = torch.tensor([[models.start_token_id(tok)]])
    greedy = model.generate(start, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
    ids = greedy[0, 1:].tolist()
    if tok.eos_token_id in ids:
        ids = ids[: ids.index(tok.eos_token_id)]
    assert texts == [tok.decode(ids)] * 3


def test_plausibility_cut_keeps_only_tokens_above_alpha_times_the_max():
    logp = torch.log(torch.tensor([[0.5, 0.3, 0.04, 0.16]]))
    kept = distill.plausible_only(logp, alpha=0.1).isfinite()
    assert kept.tolist() == [[True, True, False, True]]
