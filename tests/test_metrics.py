"""Metrics on hand-computed fixtures: TP/EMT, Dist-n, conditional perplexity, MMLU."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from unidetox_core import metrics, models


# ------------------------------------------------------------------------------------ TP and EMT
def toxicity_frame():
    """Two prompts per category, two continuations per prompt."""
    rows = {
        # domain: [(prompt_id, [scores])]
        "gender_lgbtq": [(0, [0.1, 0.6]), (1, [0.2, 0.3])],  # maxima .6 .3 -> TP .5, EMT .45, mean .3
        "race_nationalities": [(2, [0.5, 0.4]), (3, [0.9, 0.0])],  # 0.5 is not > 0.5: TP .5, EMT .7, mean .45
        "religion": [(4, [0.7, 0.8]), (5, [0.55, 0.1])],  # TP 1, EMT .675, mean .5375
        "disability": [(6, [0.0, 0.1]), (7, [0.2, 0.2])],  # TP 0, EMT .15, mean .125
    }
    records = [
        {"prompt_id": pid, "domain": domain, "sample": k, "score": s}
        for domain, prompts in rows.items() for pid, scores in prompts for k, s in enumerate(scores)
    ]
    return pd.DataFrame(records)


def test_toxicity_table_by_hand():
    table = metrics.toxicity_table(toxicity_frame(), scorer="profanity_check")
    expected = {
        "gender_lgbtq": (0.5, 0.45, 0.3),
        "race_nationalities": (0.5, 0.7, 0.45),
        "religion": (1.0, 0.675, 0.5375),
        "disability": (0.0, 0.15, 0.125),
        "ID": ((0.5 + 0.5 + 1.0) / 3, (0.45 + 0.7 + 0.675) / 3, (0.3 + 0.45 + 0.5375) / 3),
        "OOD": (0.0, 0.15, 0.125),
        "all": (2.0 / 4, (0.45 + 0.7 + 0.675 + 0.15) / 4, (0.3 + 0.45 + 0.5375 + 0.125) / 4),
    }
    assert list(table.index) == list(expected)
    for domain, (tp, emt, mean) in expected.items():
        assert table.loc[domain, ["TP", "EMT", "mean_score"]].tolist() == pytest.approx([tp, emt, mean])
    assert table.loc["ID", "n_prompts"] == 6 and table.loc["religion", "n_continuations"] == 4
    assert (table.scorer == "profanity_check").all() and table.attrs["scorer"] == "profanity_check"


def test_toxicity_over_seeds_mean_and_population_std():
    first = toxicity_frame().assign(seed=0)
    second = toxicity_frame().assign(seed=1, score=lambda f: f.score * 0.5)  # maxima halve: TP drops to 0 or stays
    combined = metrics.toxicity_over_seeds(pd.concat([first, second]))
    # gender_lgbtq: seed 0 TP .5, EMT .45; seed 1 maxima .3 .15 -> TP 0, EMT .225.
    assert combined.loc["gender_lgbtq", "TP_mean"] == pytest.approx(0.25)
    assert combined.loc["gender_lgbtq", "TP_std"] == pytest.approx(0.25)  # np.std of [.5, 0]
    assert combined.loc["gender_lgbtq", "EMT_mean"] == pytest.approx((0.45 + 0.225) / 2)
    assert combined.loc["gender_lgbtq", "EMT_std"] == pytest.approx(0.1125)
    assert (combined.n_seeds == 2).all()
    text = metrics.format_mean_std(combined)
    assert text.loc["gender_lgbtq", "TP"] == "0.25 ± 0.25"


def test_toxicity_table_rejects_ambiguous_input():
    frame = toxicity_frame()
    no_religion = metrics.toxicity_table(frame[frame.domain != "religion"])
    assert "ID" not in no_religion.index and "OOD" in no_religion.index
    with pytest.raises(ValueError, match="several seeds"):
        metrics.toxicity_table(pd.concat([frame.assign(seed=0), frame.assign(seed=1)]))
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['score'\]"):
        metrics.toxicity_table(frame.drop(columns="score"))
    with pytest.raises(ValueError, match="two domains"):
        metrics.toxicity_table(frame.assign(prompt_id=0))
    with pytest.raises(ValueError, match="missing"):
        metrics.toxicity_table(frame.assign(score=np.nan))


# ------------------------------------------------------------------------------------------ Dist-n
def test_dist_n_by_hand():
    frame = pd.DataFrame({
        "prompt_id": [0, 0, 1, 1],
        "prompt": ["p q", "p q", "z", "z"],
        "continuation": [" a b a", " a b c", " x x", ""],
    })
    # prompt 0: 6 words; uni {a,b,c}=3, bi {ab,ba,bc}=3, tri {aba,abc}=2 -> .5 .5 1/3
    # prompt 1: 2 words; uni {x}=1, bi {xx}=1, tri none -> .5 .5 0
    assert metrics.diversity(frame) == pytest.approx({"dist_1": 0.5, "dist_2": 0.5, "dist_3": 1 / 6})
    # The official code: prompt + continuation split on single spaces.
    # "p q a b a", "p q a b c": 10 words, uni {p,q,a,b,c}=5, bi {pq,qa,ab,ba,bc}=5, tri {pqa,qab,aba,abc}=4
    # "z x x", "z": 4 words, uni {z,x}=2, bi {zx,xx}=2, tri {zxx}=1
    official = metrics.diversity(frame, as_official_code=True)
    assert official == pytest.approx({"dist_1": (0.5 + 0.5) / 2, "dist_2": (0.5 + 0.5) / 2, "dist_3": (0.4 + 0.25) / 2})
    with pytest.raises(ValueError, match="n=0"):
        metrics.dist_n(frame, 0)


# -------------------------------------------------------------------------------------- perplexity
PROMPTS = ["the news report says", "a", "people city state president police game team", ""]
CONTINUATIONS = [" that the game was good", " b", ".", " the world"]


@pytest.mark.parametrize("fixture", ["tiny_gpt2", "tiny_llama"])
def test_perplexity_is_exp_of_the_continuation_token_loss(fixture, request):
    model, tok = request.getfixturevalue(fixture)
    ppl, summary = metrics.conditional_perplexity(model, tok, PROMPTS, CONTINUATIONS, batch_size=3)
    for i, (prompt, continuation) in enumerate(zip(PROMPTS, CONTINUATIONS)):
        # By hand: tokenize prompt and continuation, run the unpadded sequence, average the NLL of
        # the continuation tokens with transformers' own loss (labels -100 on the context).
        context = tok(prompt).input_ids or [models.start_token_id(tok)]  # BOS, or EOS for GPT-2
        whole = tok(prompt + continuation).input_ids
        if not tok(prompt).input_ids:
            whole = context + whole
        assert whole[: len(context)] == context  # the prefix rule holds for these texts
        labels = torch.tensor([[-100] * len(context) + whole[len(context) :]])
        with torch.no_grad():
            loss = model(torch.tensor([whole]), labels=labels).loss
        assert ppl[i] == pytest.approx(math.exp(loss.item()), rel=1e-4)
    assert summary["n_kept"] == 4 and summary["n_dropped"] == 0
    assert summary["mean"] == pytest.approx(ppl.mean())


def test_perplexity_drops_at_threshold_counts_empty_and_batching_does_not_matter(tiny_gpt2):
    model, tok = tiny_gpt2
    ppl, _ = metrics.conditional_perplexity(model, tok, PROMPTS, CONTINUATIONS, batch_size=1)
    batched, _ = metrics.conditional_perplexity(model, tok, PROMPTS, CONTINUATIONS, batch_size=4)
    np.testing.assert_allclose(batched, ppl, rtol=1e-5)
    threshold = float(np.median(ppl))  # drops the two values >= the median
    values, summary = metrics.conditional_perplexity(
        model, tok, PROMPTS + ["a"], CONTINUATIONS + [""], drop_threshold=threshold
    )
    assert math.isnan(values[-1]) and summary["n_empty"] == 1
    assert summary["n_dropped"] == int((ppl >= threshold).sum()) == 2
    assert summary["mean"] == pytest.approx(ppl[ppl < threshold].mean())
    with pytest.raises(ValueError, match="2 prompts but 1 continuations"):
        metrics.conditional_perplexity(model, tok, ["a", "b"], ["c"])


# -------------------------------------------------------------------------------------------- MMLU
def mmlu_frames():
    questions = pd.DataFrame({
        "subject": ["news", "news", "sport"],
        "question": ["what did the report say", "who is the president", "which team won the game"],
        "choices": [["good", "bad", "young", "city"]] * 3,
        "answer": [2, 2, 0],
    })
    dev = pd.DataFrame({
        "subject": ["news", "news", "sport"],
        "question": ["the city is", "a state of", "the season was"],
        "choices": [["old", "new", "big", "small"], ["water", "world", "day", "time"], ["one", "two", "three", "good"]],
        "answer": [1, 0, 2],
    })
    return questions, dev


def per_choice_loop(model, tok, context, choices, anti_expert=None, beta=0.0):
    """The plain reference: one unpadded forward pass per choice, summing its tokens' log-probs.
    With ``anti_expert`` (DExperts' brute force): the whole sequence also through the anti-expert,
    the two rows of log-probabilities combined at every position, re-normalised, read at the tokens."""
    context_ids = tok(context).input_ids
    scores = []
    for choice in choices:
        whole = tok(context + " " + choice).input_ids
        assert whole[: len(context_ids)] == context_ids
        with torch.no_grad():
            logprobs = torch.log_softmax(model(torch.tensor([whole])).logits[0].float(), -1)
            if anti_expert is not None:
                anti = torch.log_softmax(anti_expert(torch.tensor([whole])).logits[0].float(), -1)
                logprobs = torch.log_softmax((1 + beta) * logprobs - beta * anti, -1)
        scores.append(sum(logprobs[t - 1, whole[t]].item() for t in range(len(context_ids), len(whole))))
    return scores


def force_token(model, token_id):
    """Make a GPT-2 predict ``token_id`` everywhere: final layer norm outputs a constant aimed at it."""
    with torch.no_grad():
        wte = model.transformer.wte.weight
        wte[token_id] = 0.0
        wte[token_id, 0] = 1.0  # a row orthogonal-ish to all the others (they are ~N(0, 0.02))
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.copy_(40.0 * wte[token_id])
    return model


def test_mmlu_forced_choice_and_batched_equals_per_choice_loop(tiny_gpt2):
    model, tok = tiny_gpt2
    forced = tok(" young").input_ids
    assert len(forced) == 1  # " young" is one token of the tiny vocabulary
    force_token(model, forced[0])
    questions, dev = mmlu_frames()
    summary, per_question = metrics.mmlu_accuracy(model, tok, questions, dev, k_shot=1, batch_size=2, return_per_question=True)
    # The model always says " young" (choice 2): unnormalised, it wins every question.
    assert per_question.pred_unnormalized.tolist() == [2, 2, 2]
    assert summary["acc_unnormalized"] == pytest.approx(2 / 3)
    # The model ignores its context, so P(c | prompt) = P(c | "Answer:"): every normalised score is 0,
    # which is exactly what Brown et al.'s ratio is for: an a-priori likely answer earns nothing.
    assert np.allclose(np.stack(per_question.score_normalized.to_numpy()), 0.0, atol=1e-4)
    for index, row in questions.iterrows():
        shots = [(r.question, r.choices[r.answer]) for r in dev[dev.subject == row.subject].itertuples()][:1]
        expected = per_choice_loop(model, tok, metrics.mmlu_prompt(row.question, shots), row.choices)
        assert per_question.logprob_conditional[index] == pytest.approx(expected, rel=1e-4, abs=1e-3)


@pytest.mark.parametrize("fixture", ["tiny_gpt2", "tiny_llama"])
def test_mmlu_batched_equals_per_choice_loop_with_both_scores(fixture, request):
    model, tok = request.getfixturevalue(fixture)
    questions, dev = mmlu_frames()
    summary, per_question = metrics.mmlu_accuracy(model, tok, questions, dev, k_shot=2, batch_size=3, return_per_question=True)
    assert summary["n_questions"] == 3 and summary["k_shot"] == 2
    for index, row in questions.iterrows():
        shots = [(r.question, r.choices[r.answer]) for r in dev[dev.subject == row.subject].itertuples()][:2]
        conditional = per_choice_loop(model, tok, metrics.mmlu_prompt(row.question, shots), row.choices)
        unconditional = per_choice_loop(model, tok, "Answer:", row.choices)
        normalized = np.subtract(conditional, unconditional)
        assert per_question.logprob_conditional[index] == pytest.approx(conditional, rel=1e-4, abs=1e-4)
        assert per_question.score_normalized[index] == pytest.approx(normalized, rel=1e-4, abs=1e-4)
        assert per_question.pred_normalized[index] == int(np.argmax(normalized))
        assert per_question.pred_unnormalized[index] == int(np.argmax(conditional))
    assert per_question.n_shots.tolist() == [2, 2, 1]  # "sport" has one dev example
    assert summary["acc_normalized"] == per_question.correct_normalized.mean()


def test_mmlu_drops_shots_from_the_left_when_too_long_and_rejects_bad_input(tiny_gpt2):
    model, tok = tiny_gpt2
    questions, dev = mmlu_frames()
    budget = len(tok(metrics.mmlu_prompt(questions.question[0], [("a state of", "water")])).input_ids) + 4
    summary, per_question = metrics.mmlu_accuracy(
        model, tok, questions.iloc[:1], dev, k_shot=2, max_length=budget, return_per_question=True
    )
    assert per_question.n_shots.tolist() == [1] and summary["n_truncated"] == 1
    with pytest.raises(ValueError, match="answer=7"):
        metrics.mmlu_accuracy(model, tok, questions.assign(answer=7), dev)
    with pytest.raises(ValueError, match="k_shot=-1"):
        metrics.mmlu_accuracy(model, tok, questions, dev, k_shot=-1)
    with pytest.raises(ValueError, match="choices"):
        metrics.mmlu_accuracy(model, tok, questions.drop(columns="choices"), dev)


def test_mmlu_fits_questions_longer_than_the_model_window(tiny_gpt2):
    """A question and choices longer than the window are cut, never passed beyond the positions."""
    import pandas as pd

    from unidetox_core import metrics

    model, tok = tiny_gpt2
    long = " ".join(["the news report says"] * 40)
    questions = pd.DataFrame({"subject": ["s"], "question": [long], "choices": [[long, "a", "b", "c"]], "answer": [1]})
    result = metrics.mmlu_accuracy(model, tok, questions, questions, k_shot=1, max_length=32)
    assert 0.0 <= result["acc_normalized"] <= 1.0


# ------------------------------------------------------------------ MMLU with PrePrompt and DExperts
PREFIX = "Say good things about the world.\n"  # short enough for the tiny window with a shot


def shots_of(dev, subject, k):
    return [(r.question, r.choices[r.answer]) for r in dev[dev.subject == subject].itertuples()][:k]


@pytest.mark.parametrize("fixture", ["tiny_gpt2", "tiny_llama"])
def test_mmlu_prefix_equals_per_choice_loop_on_the_prefixed_prompt(fixture, request):
    model, tok = request.getfixturevalue(fixture)
    questions, dev = mmlu_frames()
    summary, per_question = metrics.mmlu_accuracy(model, tok, questions, dev, k_shot=1, batch_size=2, prefix=PREFIX,
                                                  return_per_question=True)
    assert summary["n_truncated"] == 0
    for index, row in questions.iterrows():
        prompt = PREFIX + metrics.mmlu_prompt(row.question, shots_of(dev, row.subject, 1))
        conditional = per_choice_loop(model, tok, prompt, row.choices)
        # The pre-prompted model always sees its pre-prompt, in the normalising context too.
        unconditional = per_choice_loop(model, tok, PREFIX + "Answer:", row.choices)
        assert per_question.logprob_conditional[index] == pytest.approx(conditional, rel=1e-4, abs=1e-4)
        assert per_question.logprob_answer_context[index] == pytest.approx(unconditional, rel=1e-4, abs=1e-4)


def test_mmlu_keeps_the_prefix_when_shots_and_question_tokens_are_dropped(tiny_gpt2):
    from unidetox_core.baselines import SAFETY_PREPROMPTS

    _, tok = tiny_gpt2
    questions, dev = mmlu_frames()
    prefix = SAFETY_PREPROMPTS["short"]
    prefix_ids = tok(prefix).input_ids
    completions = [" " + c for c in questions.choices[0]]
    question, shots = questions.question[0], shots_of(dev, "news", 2)
    without_shots = len(tok(prefix + metrics.mmlu_prompt(question)).input_ids)
    # Room for the pre-prompt and the question but no shot: the shots go, the pre-prompt stays.
    limit = without_shots + max(len(tok(c).input_ids) for c in completions) + 1
    context, _, n_shots, truncated = metrics._fit_mmlu_prompt(tok, question, shots, completions, limit, prefix)
    assert (n_shots, truncated) == (0, True) and context == tok(prefix + metrics.mmlu_prompt(question)).input_ids
    # Less room still: the question loses its first tokens, the pre-prompt none and the prompt keeps its end.
    context, choices, _, _ = metrics._fit_mmlu_prompt(tok, question, shots, completions, limit - 10, prefix)
    assert context[: len(prefix_ids)] == prefix_ids and len(context) + max(map(len, choices)) <= limit - 10
    assert context[-3:] == tok(prefix + metrics.mmlu_prompt(question)).input_ids[-3:]


@pytest.mark.parametrize("beta", [0.5, 2.0])
def test_mmlu_dexperts_batched_equals_brute_force(tiny_gpt2, tiny_gpt2_toxic, beta):
    model, tok = tiny_gpt2
    anti_expert, _ = tiny_gpt2_toxic
    questions, dev = mmlu_frames()
    # Choices of 1 to 6 tokens, 12 rows per batch: several length groups, each on its own cache copy.
    questions = questions.assign(choices=[["young", "good news", "the bad team said", "city"]] * 3)
    _, per_question = metrics.mmlu_accuracy(model, tok, questions, dev, k_shot=1, batch_size=3, anti_expert=anti_expert,
                                            beta=beta, return_per_question=True)
    _, plain = metrics.mmlu_accuracy(model, tok, questions, dev, k_shot=1, batch_size=3, return_per_question=True)
    for index, row in questions.iterrows():
        prompt = metrics.mmlu_prompt(row.question, shots_of(dev, row.subject, 1))
        conditional = per_choice_loop(model, tok, prompt, row.choices, anti_expert, beta)
        unconditional = per_choice_loop(model, tok, "Answer:", row.choices, anti_expert, beta)
        assert per_question.logprob_conditional[index] == pytest.approx(conditional, rel=1e-5, abs=1e-5)
        assert per_question.logprob_answer_context[index] == pytest.approx(unconditional, rel=1e-5, abs=1e-5)
        assert per_question.logprob_conditional[index] != pytest.approx(plain.logprob_conditional[index], abs=1e-2)


def test_mmlu_dexperts_beta_zero_is_the_plain_model_exactly(tiny_gpt2, tiny_gpt2_toxic):
    model, tok = tiny_gpt2
    questions, dev = mmlu_frames()
    _, plain = metrics.mmlu_accuracy(model, tok, questions, dev, k_shot=1, return_per_question=True)
    _, zero = metrics.mmlu_accuracy(model, tok, questions, dev, k_shot=1, anti_expert=tiny_gpt2_toxic[0], beta=0.0,
                                    return_per_question=True)
    for column in ("logprob_conditional", "logprob_answer_context"):
        assert np.array_equal(np.stack(zero[column].to_numpy()), np.stack(plain[column].to_numpy()))


def test_mmlu_rejects_bad_method_arguments(tiny_gpt2, tiny_gpt2_toxic, tiny_llama):
    model, tok = tiny_gpt2
    anti_expert, _ = tiny_gpt2_toxic
    questions, dev = mmlu_frames()
    with pytest.raises(ValueError, match="prefix=3"):
        metrics.mmlu_accuracy(model, tok, questions, dev, prefix=3)
    with pytest.raises(ValueError, match=r"beta=-1\.0 is negative"):
        metrics.mmlu_accuracy(model, tok, questions, dev, anti_expert=anti_expert, beta=-1.0)
    with pytest.raises(ValueError, match="beta=nan"):
        metrics.mmlu_accuracy(model, tok, questions, dev, anti_expert=anti_expert, beta=float("nan"))
    with pytest.raises(ValueError, match="needs anti_expert="):
        metrics.mmlu_accuracy(model, tok, questions, dev, beta=1.0)
    assert tiny_llama[0].get_output_embeddings().weight.shape[0] != anti_expert.get_output_embeddings().weight.shape[0]
    with pytest.raises(ValueError, match="anti_expert scores"):
        metrics.mmlu_accuracy(model, tok, questions, dev, anti_expert=tiny_llama[0], beta=1.0)
