"""The fast paths of decoding, sampling and scoring give what their plain versions give.

Each speed-up of issue 7 that claims equality is checked here against the straightforward code:
the numpy Gumbel stream against ``Tensor.exponential_``, the partial-sort nucleus against a full
stable ``torch.sort``, the in-place KV cache and its attention against ``DynamicCache`` and ``sdpa``,
length-grouped completion scoring against one padded batch, and the Rust batch decode against
``tokenizer.batch_decode``.
"""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from unidetox_core import distill, fast, forward, generate, metrics, models


# ------------------------------------------------------------------------------- Gumbel noise
@pytest.mark.parametrize("seed", [0, 7, 2**62 + 11])
def test_numpy_stream_draws_exactly_the_torch_exponentials(seed):
    generator = torch.Generator().manual_seed(seed)
    bitgen = fast._bitgen_from(generator)
    expected = torch.empty(50_001).exponential_(generator=generator).numpy()
    words = bitgen.random_raw(2 * 50_001)
    assert np.array_equal(fast._exponential_from_words(words[0::2], words[1::2]), expected)
    # Written back, the torch generator continues exactly where the numpy stream stopped.
    other = torch.Generator().manual_seed(seed)  # (the state also records the initial seed)
    fast._write_bitgen_state(other, bitgen)
    assert torch.equal(other.get_state(), generator.get_state())
    assert fast._numpy_stream_matches_torch()


def test_exponentials_near_a_float32_rounding_boundary_use_the_c_library():
    # Words whose double result sits within a few ulps of a float32 midpoint are recomputed with
    # math.log1p; forcing every number through that branch must not change any value.
    words = np.random.default_rng(0).integers(0, 2**32, size=2 * 2000, dtype=np.uint64)
    bulk = fast._exponential_from_words(words[0::2], words[1::2])
    u = (((words[0::2] << np.uint64(32)) | words[1::2]) & fast._MASK_53).astype(np.float64) * 2.0**-53
    slow = np.array([np.float32(-math.log1p(-x)) for x in u])
    assert np.array_equal(bulk, slow)


@pytest.mark.parametrize("top_k, temperature, alpha", [(0, 1.0, 0.1), (5, 0.7, 0.02), (0, 1.3, 0.0)])
def test_gumbel_sampler_picks_the_tokens_of_gumbel_sample(top_k, temperature, alpha):
    gen_a, gen_b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert fast.GumbelSampler.usable(gen_b)
    sampler = fast.GumbelSampler(gen_b)
    data = torch.Generator().manual_seed(4)
    for step in range(6):
        base = torch.log_softmax(torch.randn(16, 300, generator=data) * 3, -1)
        toxic = torch.log_softmax(torch.randn(16, 300, generator=data) * 3, -1)
        scores = distill.keep_top_k(distill.contrastive_scores(base, toxic, alpha), top_k)
        live = torch.ones(16, dtype=torch.bool)
        live[step] = False  # a finished row: its noise is drawn, its token unused
        expected = distill.gumbel_sample(scores, gen_a, temperature)
        got = sampler(scores, temperature, scores.isfinite() & live[:, None])
        assert torch.equal(got[live], expected[live])
    dense = torch.log_softmax(torch.randn(16, 300, generator=data), -1)  # every token finite: torch's own path
    assert torch.equal(sampler(dense, temperature, dense.isfinite()), distill.gumbel_sample(dense, gen_a, temperature))
    sampler.close()
    assert torch.equal(gen_a.get_state(), gen_b.get_state())


def test_gumbel_sampler_refuses_a_stream_it_cannot_replay(monkeypatch):
    monkeypatch.setattr(fast, "_numpy_stream_matches_torch", lambda: False)  # as in another torch build
    generator = torch.Generator().manual_seed(0)
    assert not fast.GumbelSampler.usable(generator)
    with pytest.raises(ValueError, match="gumbel_sample"):
        fast.GumbelSampler(generator)


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
    distill.decode_batch(model, None, batch_size=3, max_new_tokens=10, start_id=0, eos_id=-1,
                         generator=torch.Generator().manual_seed(0), alpha=0.0)
    layers = model.config.n_layer
    # Every step goes through the fast attention; only the first (no cache yet) falls back to sdpa.
    assert calls["fast"] == 10 * layers and calls["sdpa"] == layers


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


def test_decode_batch_is_unchanged_by_its_speed_ups(tiny_gpt2, tiny_gpt2_toxic):
    """The whole decoder against the plain loop it replaced: DynamicCache, sdpa, torch's noise."""
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

    plain = distill.decode_batch(base, toxic, generator=torch.Generator().manual_seed(9), fast=False, **kwargs)
    assert all(torch.equal(torch.as_tensor(plain[k]), torch.as_tensor(quick[k])) for k in quick)


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
