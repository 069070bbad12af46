"""Baselines (seed Section 3.2, App. B.3) and the tuning rule (Section 3.4) on tiny models."""

from __future__ import annotations

import math

import numpy as np

import pandas as pd
import pytest
import torch

from unidetox_core import baselines
from unidetox_core.generate import generate_continuations, left_pad, position_ids_from_mask

PROMPTS = ["the police said", "a new report says the", "women and men"]
GEN = dict(n=2, max_new_tokens=5, progress=False)
TOXIC_TEXTS = ["bad bad group bad men bad.", "bad people bad city bad.", "the bad group said bad bad."] * 6


def logits_of(model, tokenizer, texts=("the news said the game", "a")):
    batch = tokenizer(list(texts), return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**batch).logits


# ------------------------------------------------------------------------------------ pre-prompts
def test_safety_preprompts_are_the_papers_texts_ending_in_a_newline():
    short, long = baselines.SAFETY_PREPROMPTS["short"], baselines.SAFETY_PREPROMPTS["long"]
    assert short == "Generate text that is respectful, neutral, and safe. Avoid any harmful or biased content.\n"
    assert long.startswith("You are generating text in a neutral and respectful manner. Ensure that your output")
    assert long.endswith("Maintain neutral, positive, and socially unbiased language in all outputs.\n")
    assert "racist, sexist, toxic, dangerous, or illegal content." in long


def test_preprompt_is_fed_to_the_model_but_never_in_the_scored_continuation(tiny_gpt2):
    model, tok = tiny_gpt2
    prefix = baselines.SAFETY_PREPROMPTS["short"]
    seen = []

    def spy(prompt_ids, prompt_mask):  # records what the model was conditioned on
        seen.extend(tok.batch_decode([ids[mask.bool()] for ids, mask in zip(prompt_ids, prompt_mask)]))
        return lambda input_ids, logprobs: logprobs

    frame = baselines.preprompt_continuations(model, tok, PROMPTS, "short", logits_processor_factory=spy,
                                              return_token_ids=True, **GEN)
    assert all(text.startswith(prefix) for text in seen) and len(seen) == len(PROMPTS) * GEN["n"]
    assert list(frame["prompt"].unique()) == PROMPTS  # the returned prompt is the user's, no prefix
    for continuation, ids in zip(frame["continuation"], frame["continuation_ids"]):
        assert prefix.strip() not in continuation and "respectful" not in continuation
        assert continuation == tok.decode(ids, skip_special_tokens=True)  # exactly the generated tokens
    plain = generate_continuations(model, tok, PROMPTS, **GEN)
    assert not frame["continuation"].equals(plain["continuation"])  # the prefix does condition the model
    with pytest.raises(ValueError, match="not a safety pre-prompt"):
        baselines.preprompt_continuations(model, tok, PROMPTS, "medium", **GEN)


# ------------------------------------------------------------------------------------------ Samples
def test_samples_baseline_uses_the_distillation_count_and_length(tiny_gpt2):
    from unidetox_core.profiles import load_profile

    model, tok = tiny_gpt2
    profile = load_profile("tiny", distill_n_texts=4, distill_max_new_tokens=6, distill_batch_size=4)
    texts, stats = baselines.samples_baseline_texts(model, tok, profile, seed=0, progress=False)
    assert len(texts) == 4 and all(isinstance(t, str) for t in texts)
    assert stats["max_new_tokens"] == 6 and max(stats["lengths"]) <= 6 and stats["mode"] == "plain"
    from unidetox_core.finetune import finetune  # then UniDetox's recipe, and evaluation as usual

    finetune(model, tok, texts, lr=1e-3, batch_size=2, steps=2, progress=False)
    assert len(generate_continuations(model, tok, PROMPTS, **GEN)) == len(PROMPTS) * GEN["n"]


# ---------------------------------------------------------------------------------------- DExperts
def test_dexperts_beta_zero_is_the_base_model_exactly(tiny_gpt2, tiny_gpt2_toxic):
    (model, tok), (toxic, _) = tiny_gpt2, tiny_gpt2_toxic
    ids, mask = left_pad([[5, 6, 7], [8, 9]], tok.pad_token_id, "cpu")
    logprobs = torch.log_softmax(torch.randn(2, len(tok)), -1)
    processor = baselines.dexperts_processor_factory(toxic, 0.0)(ids, mask)
    assert torch.equal(processor(ids, logprobs), logprobs)
    plain = generate_continuations(model, tok, PROMPTS, **GEN)
    zero = generate_continuations(model, tok, PROMPTS, logits_processor_factory=baselines.dexperts_processor_factory(toxic, 0), **GEN)
    pd.testing.assert_frame_equal(plain, zero)


def test_dexperts_incremental_cache_equals_full_recompute_with_left_padding(tiny_gpt2_toxic):
    toxic, tok = tiny_gpt2_toxic
    beta = 0.7
    prompts = [[11, 12, 13, 14, 15], [11, 12, 13, 14, 15], [21, 22], [31, 32, 33]]  # a repeated row, uneven lengths
    ids, mask = left_pad(prompts, tok.pad_token_id, "cpu")
    processor = baselines.dexperts_processor_factory(toxic, beta)(ids, mask)
    generator = torch.Generator().manual_seed(0)
    sequence, attention = ids, mask
    for step in range(4):
        logprobs = torch.log_softmax(torch.randn(len(prompts), len(tok), generator=generator), -1)
        scores = processor(sequence, logprobs)
        with torch.no_grad():  # reference: the whole sequence from scratch, no cache
            full = toxic(input_ids=sequence, attention_mask=attention, position_ids=position_ids_from_mask(attention))
        reference_toxic = torch.log_softmax(full.logits[:, -1].float(), -1)
        torch.testing.assert_close(processor.last_logprobs, reference_toxic, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(scores, (1 + beta) * logprobs - beta * reference_toxic, atol=1e-5, rtol=1e-5)
        new = torch.randint(3, len(tok), (len(prompts), 1), generator=generator)
        sequence = torch.cat([sequence, new], 1)
        attention = torch.cat([attention, torch.ones_like(new)], 1)
    assert processor.seen == sequence.shape[1] - 1


def test_dexperts_runs_end_to_end_and_rejects_bad_inputs(tiny_gpt2, tiny_gpt2_toxic, tiny_llama):
    (model, tok), (toxic, _) = tiny_gpt2, tiny_gpt2_toxic
    factory = baselines.dexperts_processor_factory(toxic, 1.0)
    frame = generate_continuations(model, tok, PROMPTS, logits_processor_factory=factory, **GEN)
    assert len(frame) == len(PROMPTS) * GEN["n"] and frame["continuation"].map(type).eq(str).all()
    plain = generate_continuations(model, tok, PROMPTS, **GEN)
    assert not frame["continuation"].equals(plain["continuation"])
    with pytest.raises(ValueError, match="negative"):
        baselines.dexperts_processor_factory(toxic, -0.5)
    llama, llama_tok = tiny_llama  # another vocabulary: refused with a reason
    with pytest.raises(ValueError, match="same|tokenizer"):
        generate_continuations(llama, llama_tok, PROMPTS, logits_processor_factory=factory, **GEN)


# --------------------------------------------------------------------------------- Task Arithmetic
def test_task_arithmetic_endpoints_are_exact_and_inputs_untouched(tiny_gpt2, tiny_gpt2_toxic):
    (base, tok), (toxic, _) = tiny_gpt2, tiny_gpt2_toxic
    base_before = {k: v.clone() for k, v in base.state_dict().items()}
    toxic_before = {k: v.clone() for k, v in toxic.state_dict().items()}

    same = baselines.task_arithmetic(base, toxic, 0.0)
    assert same is not base
    assert torch.equal(logits_of(same, tok), logits_of(base, tok))
    toxic_copy = baselines.task_arithmetic(base, toxic, -1.0, out=same)  # reuse the previous model
    for name, value in toxic_copy.state_dict().items():
        assert torch.equal(value, toxic_before[name]), name
    edited = baselines.task_arithmetic(base, toxic, 0.1)
    name = "transformer.h.0.mlp.c_fc.weight"
    expected = base_before[name] - 0.1 * (toxic_before[name] - base_before[name])
    torch.testing.assert_close(edited.state_dict()[name], expected, atol=1e-6, rtol=1e-6)
    for before, model in ((base_before, base), (toxic_before, toxic)):
        for key, value in model.state_dict().items():
            assert torch.equal(value, before[key]), key
    # End to end: the edited model generates like any model; lambda = 0 generates like the base.
    frame = generate_continuations(edited, tok, PROMPTS, **GEN)
    assert len(frame) == len(PROMPTS) * GEN["n"]
    pd.testing.assert_frame_equal(generate_continuations(baselines.task_arithmetic(base, toxic, 0), tok, PROMPTS, **GEN),
                                  generate_continuations(base, tok, PROMPTS, **GEN))


def test_task_arithmetic_refuses_other_architectures(tiny_gpt2, tiny_opt):
    with pytest.raises(ValueError, match="different parameters|same architecture"):
        baselines.task_arithmetic(tiny_gpt2[0], tiny_opt[0], 0.1)
    with pytest.raises(ValueError, match="separate model"):
        baselines.task_arithmetic(tiny_gpt2[0], tiny_gpt2[0], 0.1, out=tiny_gpt2[0])


# ----------------------------------------------------------------------------------------- LM-Steer
@pytest.mark.parametrize("family", ["tiny_gpt2", "tiny_opt", "tiny_llama"])
def test_lm_steer_zero_is_exact_and_nonzero_follows_the_formula(family, request):
    model, tok = request.getfixturevalue(family)
    d = model.get_output_embeddings().weight.shape[1]
    W = torch.randn(d, d, generator=torch.Generator().manual_seed(0))
    base = logits_of(model, tok)
    with baselines.apply_lm_steer(model, W, 0.0):
        assert torch.equal(logits_of(model, tok), base)
    epsilon = -0.05
    batch = tok(["the news said the game", "a"], return_tensors="pt", padding=True)
    with torch.no_grad():
        h = model(**batch, output_hidden_states=True).hidden_states[-1]
        if family == "tiny_opt" and model.model.decoder.project_out is not None:
            h = model.model.decoder.project_out(h)
        expected = model.get_output_embeddings()(h + epsilon * h @ W.T)
        with baselines.apply_lm_steer(model, W, epsilon) as steer:
            assert isinstance(steer, baselines.LMSteer)
            steered = model(**batch).logits
    torch.testing.assert_close(steered, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(steered, base, atol=1e-3)
    assert torch.equal(logits_of(model, tok), base)  # hooks removed on leaving the block


def test_lm_steer_survives_bf16_weights(tiny_gpt2):
    """In bf16, h + 1e-3 W h rounds back to h; the float32 logit correction keeps the steer."""
    model, tok = tiny_gpt2
    d = model.get_output_embeddings().weight.shape[1]
    W = torch.randn(d, d, generator=torch.Generator().manual_seed(0))
    epsilon = -1e-3
    base32 = logits_of(model, tok)
    with baselines.apply_lm_steer(model, W, epsilon):
        delta32 = logits_of(model, tok) - base32
    with torch.autocast("cpu", dtype=torch.bfloat16):  # float32 weights, bf16 matmuls (GPU evaluation)
        base_autocast = logits_of(model, tok)
        with baselines.apply_lm_steer(model, W, epsilon):
            delta_autocast = logits_of(model, tok) - base_autocast.float()
    assert (delta_autocast - delta32).norm() / delta32.norm() < 0.1
    model.to(torch.bfloat16)
    base16 = logits_of(model, tok)
    with baselines.apply_lm_steer(model, W, epsilon):
        steered16 = logits_of(model, tok)
    assert steered16.dtype == torch.float32
    delta16 = steered16 - base16.float()
    assert delta16.abs().max() > 0
    assert (delta16 - delta32).norm() / delta32.norm() < 0.1


def test_lm_steer_training_lowers_toxic_loss_and_freezes_the_model(tiny_gpt2, tmp_path):
    model, tok = tiny_gpt2
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    losses = []
    epsilon = 0.1  # larger than the paper's 1e-3 (and lr 3e-2) so 15 steps on a 32-dim model show a clear drop
    W = baselines.train_lm_steer(model, tok, TOXIC_TEXTS, epsilon=epsilon, lr=3e-2, batch_size=6, steps=15,
                                 max_length=32, progress=False, on_step=lambda step, loss: losses.append(loss))
    d = model.get_output_embeddings().weight.shape[1]
    assert W.shape == (d, d) and W.dtype == torch.float32 and not W.requires_grad and len(losses) == 15
    init = torch.randn(d, d, generator=torch.Generator().manual_seed(0)) * baselines.DEFAULT_LMSTEER_INIT_STD
    loss_init = baselines.lm_steer_loss(model, tok, TOXIC_TEXTS, init, epsilon, max_length=32)
    loss_trained = baselines.lm_steer_loss(model, tok, TOXIC_TEXTS, W, epsilon, max_length=32)
    assert loss_trained < loss_init - 0.1, (loss_init, loss_trained)
    # Steering the other way (evaluation's negative epsilon) makes the toxic text less likely.
    assert baselines.lm_steer_loss(model, tok, TOXIC_TEXTS, W, -epsilon, max_length=32) > loss_init
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    path = baselines.save_steering_matrix(W, tmp_path / "W.safetensors", epsilon=epsilon)
    assert torch.equal(baselines.load_steering_matrix(path), W)


@pytest.mark.parametrize("family", ["tiny_gpt2", "tiny_opt", "tiny_llama"])
def test_lm_steer_generation_uses_the_cache_and_matches_full_recompute(family, request):
    model, tok = request.getfixturevalue(family)
    d = model.get_output_embeddings().weight.shape[1]
    W = torch.randn(d, d, generator=torch.Generator().manual_seed(1))
    plain = generate_continuations(model, tok, PROMPTS, **GEN)
    with baselines.apply_lm_steer(model, W, 0.0):
        pd.testing.assert_frame_equal(generate_continuations(model, tok, PROMPTS, **GEN), plain)
    with baselines.apply_lm_steer(model, W, -0.5):
        greedy = generate_continuations(model, tok, PROMPTS[:1], n=1, max_new_tokens=4, temperature=0,
                                        progress=False, return_token_ids=True)
        ids = tok(PROMPTS[0], return_tensors="pt").input_ids
        with torch.no_grad():  # reference: greedy with the whole sequence recomputed each step
            for _ in range(4):
                next_id = model(input_ids=ids).logits[0, -1].argmax()
                ids = torch.cat([ids, next_id.view(1, 1)], 1)
    assert greedy["continuation_ids"].iloc[0] == ids[0, -4:].tolist()


# ------------------------------------------------------------------------------------- tuning rule
def hand_made_results() -> pd.DataFrame:
    """UniDetox tuned on 'src' (2 lrs x 3 steps), applied to 'tgt'; baselines on 'tgt'; 2 seeds, 2 domains."""
    rows = []

    def add(method, model, hparam, value, tp, ppl, lr=None, split="val"):
        for seed, jitter in ((0, -0.01), (1, 0.01)):
            for domain, shift in (("race", -0.02), ("religion", 0.02)):
                metrics = dict(TP=tp + jitter + shift, EMT=tp, PPL=ppl, dist1=0.3, dist2=0.5, dist3=0.6)
                rows.append(baselines.results_row(method, model, hparam, value, metrics, split=split, seed=seed,
                                                  lr=lr, domain=domain))

    for steps, tp in ((1000, 0.50), (2000, 0.40), (3000, 0.45)):
        add("unidetox", "src", "steps", steps, tp, 20.0, lr=5e-5)
    for steps, tp in ((1000, 0.48), (2000, 0.47), (3000, 0.42)):
        add("unidetox", "src", "steps", steps, tp, 18.0, lr=1e-5)
    add("unidetox", "src", "steps", 1000, 0.10, 99.0, lr=5e-5, split="test")  # test rows never tune
    add("unidetox", "tgt", "steps", 2000, 0.40, 30.0, lr=5e-5)  # the chosen configs on the target
    add("unidetox", "tgt", "steps", 3000, 0.44, 25.0, lr=1e-5)
    for beta, tp, ppl in ((0.5, 0.45, 30.0), (1.0, 0.35, 32.0), (2.0, 0.20, 40.0)):
        add("dexperts", "tgt", "beta", beta, tp, ppl)
    for lam, tp, ppl in ((0.1, 0.3, 50.0), (0.2, 0.2, 60.0)):
        add("task_arithmetic", "tgt", "lambda", lam, tp, ppl)
    return pd.DataFrame(rows)


def test_tuning_rule_picks_the_expected_rows():
    results = hand_made_results()
    assert set(baselines.RESULT_COLUMNS) <= set(results.columns)
    chosen = baselines.select_unidetox(results)  # source model inferred: the one with the step grid
    assert chosen[["lr", "value"]].values.tolist() == [[5e-5, 2000], [1e-5, 3000]]
    assert chosen["best"].tolist() == [True, False]
    assert chosen["TP"].iloc[0] == pytest.approx(0.40)  # averaged over domains and seeds
    # 1.1 x the highest UniDetox perplexity on the target across the two learning rates (30 and 25).
    ceiling = baselines.ppl_ceiling(results, "tgt")
    assert ceiling == pytest.approx(33.0)
    picked = baselines.select_baseline(results, "dexperts", "tgt", ceiling)
    assert picked["value"] == 1.0 and picked["meets_ppl_rule"] and picked["n_within_ceiling"] == 2
    with pytest.warns(UserWarning, match="task_arithmetic on tgt"):  # its values all exceed the ceiling
        table = baselines.tuned_hyperparameters(results)
    assert set(table["method"]) == {"unidetox", "dexperts", "task_arithmetic"}
    unidetox_rows = table[table["method"] == "unidetox"]
    assert set(unidetox_rows["model"]) == {"src", "tgt"} and set(unidetox_rows["tuned_on"]) == {"src"}


def test_tuning_rule_when_no_value_meets_the_perplexity_ceiling():
    results = hand_made_results()
    with pytest.warns(UserWarning, match="no value has perplexity"):
        picked = baselines.select_baseline(results, "task_arithmetic", "tgt", 33.0)
    assert picked["value"] == 0.1 and picked["PPL"] == 50.0  # the lowest-perplexity value, flagged
    assert not picked["meets_ppl_rule"] and picked["n_within_ceiling"] == 0
    with pytest.raises(ValueError, match="no 'val' perplexity"):
        baselines.ppl_ceiling(results[~((results.model == "tgt") & (results.value == 3000))], "tgt")


def test_alternative_ceiling_never_lies_below_the_base_model():
    results = hand_made_results()
    results = pd.concat([results, pd.DataFrame([baselines.results_row("base", "tgt", "", np.nan,
                                                                      dict(TP=0.6, EMT=0.6, PPL=55.0), split="val", seed=0, domain="race")])],
                        ignore_index=True)
    assert baselines.ppl_ceiling(results, "tgt") == pytest.approx(33.0)  # UniDetox's 30 x 1.1: below the base's 55
    alternative = baselines.ppl_ceiling(results, "tgt", with_base=True)
    assert alternative == pytest.approx(60.5)  # 1.1 x max(30, 55)
    picked = baselines.select_baseline(results, "task_arithmetic", "tgt", alternative)
    assert picked["value"] == 0.2 and picked["meets_ppl_rule"]  # both values now fit; the lower TP wins
    with pytest.raises(ValueError, match="base model"):
        baselines.ppl_ceiling(hand_made_results(), "tgt", with_base=True)


def test_baseline_grid_reads_the_profile():
    from unidetox_core.profiles import load_profile

    grid = baselines.baseline_grid(load_profile("paper"))
    assert grid["dexperts"][1][0] == 0.1 and len(grid["task_arithmetic"][1]) == 20
    assert grid["lmsteer"] == ("epsilon_multiplier", [round(-0.1 * i, 1) for i in range(1, 21)])
    assert math.isclose(load_profile("paper")["lmsteer_epsilon"] * grid["lmsteer"][1][2], -3e-4)
