"""The fast paths of generation and scoring give what their plain versions give.

Each speed-up that claims equality is checked here against the straightforward code: the
partial-sort nucleus against a full stable ``torch.sort``, the in-place KV cache and its attention
against ``DynamicCache`` and ``sdpa``, the whole evaluation loop with and without them,
length-grouped completion scoring against one padded batch, and the Rust batch decode against
``tokenizer.batch_decode``. The distillation decoder has no fast path; it is checked against a
full-prefix recomputation in ``test_distill.py`` and against the plain step-by-step loop here.
"""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from unidetox_core import distill, fast, forward, generate, metrics, models


# ---------------------------------------------------------------------------------- nucleus
def reference_nucleus(logprobs, uniforms, temperature, top_p):
    probs = torch.softmax(logprobs.float() / temperature, -1)
    return generate._inverse_cdf(*probs.sort(dim=-1, descending=True, stable=True), uniforms, min(top_p, 1.0))


@pytest.mark.parametrize("scale", [0.3, 2.0, 8.0, 30.0])
@pytest.mark.parametrize("top_p", [0.5, 0.9, 1.0])
def test_partial_sort_nucleus_equals_a_full_stable_sort(scale, top_p):
    generator = torch.Generator().manual_seed(int(scale * 10) + int(top_p * 100))
    logprobs = torch.log_softmax(torch.randn(96, 4000, generator=generator) * scale, -1)
    uniforms = torch.rand(96, generator=generator, dtype=torch.float64)
    uniforms[:3] = 1.0 - 1e-17  # rounds to 1: the draw lands on the total, the search runs off the end
    for temperature in (1.0, 0.7):
        assert torch.equal(generate.nucleus_sample(logprobs, uniforms, temperature, top_p),
                           reference_nucleus(logprobs, uniforms, temperature, top_p))


def test_ties_are_broken_by_token_id_as_a_stable_sort_does():
    generator = torch.Generator().manual_seed(5)
    # Few distinct values: most tokens share their probability with others.
    logprobs = torch.log_softmax(torch.randint(0, 6, (64, 3000), generator=generator).float(), -1)
    uniforms = torch.rand(64, generator=generator, dtype=torch.float64)
    for top_p in (0.3, 0.9, 1.0):
        assert torch.equal(generate.nucleus_sample(logprobs, uniforms, 1.0, top_p),
                           reference_nucleus(logprobs, uniforms, 1.0, top_p))


# --------------------------------------------------------------------- KV cache and attention
@pytest.mark.parametrize("fixture", ["tiny_gpt2", "tiny_llama", "tiny_opt"])
def test_in_place_cache_and_its_attention_match_dynamic_cache_and_sdpa(fixture, request):
    """40 one-token steps (the capacity grows several times) with left padding: the logits of the
    fast path equal those of a plain ``DynamicCache`` under ``sdpa``."""
    model, tok = request.getfixturevalue(fixture)
    ids, mask = forward.left_pad([tok("the news report says").input_ids, tok("a").input_ids], tok.pad_token_id, "cpu")
    rows = torch.tensor([0, 0, 1, 1, 1])  # samples of a prompt share its cache, copied on the way
    generator = torch.Generator().manual_seed(0)
    steps = torch.randint(0, len(tok), (40, len(rows)), generator=generator)
    results = []
    for speedy in (False, True):
        with torch.inference_mode():
            positions = forward.position_ids_from_mask(mask)
            out = forward.forward_cached(model, ids, mask, positions, cache=None, last_only=True)
            cache = forward.out_cache(out)
            if speedy:
                assert fast.preallocate_cache(cache, steps.shape[0], rows=rows)
            else:
                cache.batch_select_indices(rows)
            attention = mask.index_select(0, rows)
            next_position = positions.index_select(0, rows)[:, -1] + 1
            logits = []
            with fast.in_place_attention(model) if speedy else torch.inference_mode():
                for step, tokens in enumerate(steps):
                    attention = torch.cat([attention, torch.ones((len(rows), 1), dtype=attention.dtype)], 1)
                    out = forward.forward_cached(model, tokens[:, None], attention, (next_position + step)[:, None],
                                                  cache=cache, last_only=False)
                    cache = forward.out_cache(out)
                    logits.append(out.logits[:, -1].float())
            results.append(torch.stack(logits))
    assert model.config._attn_implementation == "sdpa"  # restored
    torch.testing.assert_close(results[1], results[0], rtol=1e-4, atol=1e-4)


def test_fast_attention_is_used_for_decoding_steps(tiny_gpt2, monkeypatch):
    model, tok = tiny_gpt2
    calls = {"fast": 0, "sdpa": 0}
    real = fast._capacity_attention
    import transformers.integrations.sdpa_attention as sdpa

    real_sdpa = sdpa.sdpa_attention_forward

    def counting_sdpa(*args, **kwargs):
        calls["sdpa"] += 1
        return real_sdpa(*args, **kwargs)

    def counting(module, query, key, *args, **kwargs):
        calls["fast"] += 1
        return real(module, query, key, *args, **kwargs)

    monkeypatch.setattr(sdpa, "sdpa_attention_forward", counting_sdpa)
    from transformers import AttentionInterface

    assert fast._register_fast_attention()  # registered before the counting stand-in replaces it
    monkeypatch.setitem(AttentionInterface._global_mapping, fast.FAST_ATTENTION, counting)
    generate.generate_continuations(model, tok, ["the news"], n=3, max_new_tokens=10, top_p=1.0, seed=0,
                                    progress=False)
    layers = model.config.n_layer
    # Each of the 9 one-token steps after the prompt's pass goes through the fast attention, which
    # never has to fall back to sdpa (the prompt's pass runs before the switch, on sdpa itself).
    assert calls["fast"] == 9 * layers and calls["sdpa"] == 0


# ---------------------------------------------------------------------------------- scoring
def test_length_grouped_scoring_equals_one_padded_batch(tiny_gpt2, monkeypatch):
    model, tok = tiny_gpt2
    contexts = [tok("the news report says").input_ids, tok("a").input_ids, tok("people city state").input_ids]
    completions = [[tok(" " + w * k).input_ids for k, w in enumerate(("good ", "bad ", "young ", "old "), 1)]
                   for _ in contexts]
    completions[1].append([])  # an empty completion scores -inf
    completions[2] = completions[2][:1] + [tok(" x").input_ids[:1]]
    grouped = metrics.score_completions(model, contexts, completions, tok.pad_token_id)
    monkeypatch.setattr(metrics, "_length_groups", lambda rows, lengths, **kw: [sorted(rows)] if rows else [])
    single = metrics.score_completions(model, contexts, completions, tok.pad_token_id)
    assert grouped[1][-1] == single[1][-1] == -math.inf
    np.testing.assert_allclose(np.concatenate(grouped)[np.isfinite(np.concatenate(single))],
                               np.concatenate(single)[np.isfinite(np.concatenate(single))], rtol=1e-5)


def test_length_groups_bound_the_padding():
    lengths = [2, 3, 3, 4, 10, 11, 12, 40, 41, 2, 2, 2, 2, 2, 2, 2, 2]
    groups = metrics._length_groups(list(range(len(lengths))), lengths, waste=0.2, min_rows=2)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    for group in groups:
        real = sum(lengths[i] for i in group)
        assert max(lengths[i] for i in group) * len(group) <= 1.2 * real or len(group) <= 2


# ---------------------------------------------------------------------------------- decoding
@pytest.mark.parametrize("fixture", ["tiny_gpt2", "tiny_llama"])
def test_rust_batch_decode_equals_the_tokenizer(fixture, request):
    _, tok = request.getfixturevalue(fixture)
    generator = torch.Generator().manual_seed(0)
    sequences = [torch.randint(0, len(tok), (k,), generator=generator).tolist() for k in range(0, 40)]
    assert generate.batch_decode(tok, sequences) == tok.batch_decode(sequences, skip_special_tokens=True,
                                                                       clean_up_tokenization_spaces=False)


def test_decode_batch_is_the_plain_step_by_step_loop(tiny_gpt2, tiny_gpt2_toxic):
    """The whole decoder against the loop written out step by step: each model on its own cache,
    float32 log-softmax, Eq. 1 + 3, one Gumbel draw per step."""
    (base, tok), (toxic, _) = tiny_gpt2, tiny_gpt2_toxic
    kwargs = dict(batch_size=6, max_new_tokens=20, start_id=models.start_token_id(tok), eos_id=tok.eos_token_id,
                  alpha=0.05, temperature=0.9, top_k=0)
    quick = distill.decode_batch(base, toxic, generator=torch.Generator().manual_seed(9), **kwargs)

    generator = torch.Generator().manual_seed(9)
    ids = torch.full((6, 1), kwargs["start_id"])
    caches, finished, plain = [None, None], torch.zeros(6, dtype=torch.bool), []
    with torch.inference_mode():
        for _ in range(20):
            outs = [forward.next_token_logits(m, ids, c) for m, c in zip((base, toxic), caches)]
            caches = [c for _, c in outs]
            lp = [torch.log_softmax(logits.float(), -1) for logits, _ in outs]
            chosen = distill.gumbel_sample(distill.contrastive_scores(lp[0], lp[1], 0.05), generator, 0.9)
            chosen = chosen.masked_fill(finished, tok.eos_token_id)
            finished |= chosen == tok.eos_token_id
            plain.append(chosen)
            if bool(finished.all()):
                break
            ids = chosen[:, None]
    assert torch.equal(quick["ids"], torch.stack(plain, 1))



@pytest.mark.parametrize("fixture", ["tiny_gpt2", "tiny_llama"])
def test_continuations_are_unchanged_by_the_speed_ups(fixture, request):
    """The whole evaluation loop with and without ``fast``: in-place cache, its attention, the
    partial-sort nucleus against ``DynamicCache``, ``sdpa`` and a full sort."""
    model, tok = request.getfixturevalue(fixture)
    prompts = ["the news report says", "a", "people city state president police game team"]
    kwargs = dict(n=5, max_new_tokens=12, top_p=0.9, seed=3, batch_size=7, progress=False, return_token_ids=True)
    with_speedups = generate.generate_continuations(model, tok, prompts, **kwargs)
    plain = generate.generate_continuations(model, tok, prompts, fast=False, **kwargs)
    pd.testing.assert_frame_equal(with_speedups, plain)
