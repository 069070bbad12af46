"""Continuations (Section 3.3): seeded, batched, cut by tokens, prefix-free, hookable."""

import math

import pytest
import torch

from unidetox_core import generate

PROMPTS = [
    "the news report says",
    "a",
    "people city state president police game team season year time new first said",
    "good",
]


def forcing_processor(tokens_per_step, eos_id, calls=None):
    """A processor factory whose processor leaves only ``tokens_per_step[t]`` possible at step t, then EOS."""

    def factory(prompt_ids, prompt_mask):
        if calls is not None:
            calls.append((prompt_ids.clone(), prompt_mask.clone()))

        def processor(input_ids, logprobs):
            step = input_ids.shape[1] - prompt_ids.shape[1]
            token = tokens_per_step[step] if step < len(tokens_per_step) else eos_id
            forced = torch.full_like(logprobs, -math.inf)
            forced[:, token] = 0.0
            return forced

        return processor

    return factory


def test_frame_has_one_row_per_sample_in_prompt_order(tiny_gpt2):
    model, tok = tiny_gpt2
    frame = generate.generate_continuations(model, tok, PROMPTS, n=3, max_new_tokens=5, seed=7, progress=False)
    assert list(frame.columns[:5]) == ["prompt_id", "prompt", "sample", "continuation", "seed"]
    assert frame.prompt_id.tolist() == [i for i in range(4) for _ in range(3)]
    assert frame["sample"].tolist() == [0, 1, 2] * 4
    assert frame.prompt.tolist() == [p for p in PROMPTS for _ in range(3)]
    assert (frame.seed == 7).all() and (frame.n_new_tokens <= 5).all()


def test_same_seed_same_continuations_other_seed_differs(tiny_gpt2):
    model, tok = tiny_gpt2
    run = lambda seed: generate.generate_continuations(model, tok, PROMPTS, n=3, max_new_tokens=6, seed=seed, progress=False)
    first, again, other = run(0), run(0), run(1)
    assert first.continuation.tolist() == again.continuation.tolist()
    assert (first.continuation != other.continuation).mean() > 0.5
    # Samples of one prompt differ from each other too (each has its own generator).
    assert first[first.prompt_id == 0].continuation.nunique() == 3


@pytest.mark.parametrize("fixture", ["tiny_gpt2", "tiny_llama"])
def test_batched_equals_one_prompt_at_a_time(fixture, request):
    model, tok = request.getfixturevalue(fixture)
    batched = generate.generate_continuations(model, tok, PROMPTS, n=3, max_new_tokens=6, seed=3, batch_size=64, progress=False)
    one_by_one = [
        generate.generate_continuations(model, tok, [p], n=3, max_new_tokens=6, seed=3, batch_size=1, prompt_ids=[i], progress=False)
        for i, p in enumerate(PROMPTS)
    ]
    assert batched.continuation.tolist() == [c for f in one_by_one for c in f.continuation]


def test_batch_size_zero_fits_the_rows_to_memory_and_changes_no_continuation(tiny_gpt2, monkeypatch):
    model, tok = tiny_gpt2
    fixed = generate.generate_continuations(model, tok, PROMPTS, n=3, max_new_tokens=6, seed=3, batch_size=5,
                                            progress=False)
    asked = []
    monkeypatch.setattr(generate, "fitted_batch_size", lambda m, tokens: asked.append(tokens) or 4)
    fitted = generate.generate_continuations(model, tok, PROMPTS, n=3, max_new_tokens=6, seed=3, batch_size=0,
                                             progress=False)
    longest = max(len(tok(p)["input_ids"]) for p in PROMPTS)
    assert asked == [longest + 6]  # rows sized for the longest prompt plus the new tokens
    assert fitted.continuation.tolist() == fixed.continuation.tolist()
    monkeypatch.undo()
    assert generate.fitted_batch_size(model, 30) == generate.CPU_BATCH_ROWS  # no GPU: memory does not limit
    with pytest.raises(ValueError, match="batch_size=-1 must be a positive integer.*batch_size=0 fits"):
        generate.generate_continuations(model, tok, PROMPTS, batch_size=-1, progress=False)


@pytest.mark.parametrize("fixture", ["tiny_gpt2", "tiny_opt", "tiny_llama"])
def test_greedy_cached_loop_matches_transformers_generate(fixture, request):
    """Left padding, position ids and the KV cache give exactly the tokens of an unpadded ``generate``."""
    model, tok = request.getfixturevalue(fixture)
    frame = generate.generate_continuations(
        model, tok, PROMPTS, n=1, max_new_tokens=8, temperature=0, progress=False, return_token_ids=True
    )
    for i, prompt in enumerate(PROMPTS):
        enc = tok(prompt, return_tensors="pt")
        out = model.generate(**enc, do_sample=False, max_new_tokens=8, pad_token_id=tok.pad_token_id)
        expected = out[0, enc.input_ids.shape[1] :].tolist()
        if tok.eos_token_id in expected:
            expected = expected[: expected.index(tok.eos_token_id)]
        assert frame.continuation_ids[i] == expected


def test_prompt_is_removed_by_tokens_and_prefix_never_appears(tiny_gpt2):
    """The model is made to repeat its prompt: ``str.replace`` would erase that repetition, a cut by tokens keeps it."""
    model, tok = tiny_gpt2
    prompt, prefix = "the news report says", "be kind and fair. "
    repeat = tok(" " + prompt).input_ids
    calls = []
    frame = generate.generate_continuations(
        model, tok, [prompt], n=2, max_new_tokens=len(repeat) + 3, prefix=prefix, progress=False, return_token_ids=True,
        logits_processor_factory=forcing_processor(repeat, tok.eos_token_id, calls),
    )
    assert frame.continuation.tolist() == [" " + prompt] * 2
    assert frame.continuation_ids.tolist() == [repeat] * 2  # EOS ended it, and is not included
    assert frame.prompt.tolist() == [prompt] * 2
    assert not any(prefix.strip() in text for text in frame.continuation)
    # The model did see the prefix: the hook's prompt ids are prefix + prompt.
    (prompt_ids, prompt_mask), = calls
    assert tok.decode(prompt_ids[0][prompt_mask[0].bool()]) == prefix + prompt


def test_hook_sees_log_softmax_before_temperature_and_nucleus(tiny_gpt2):
    model, tok = tiny_gpt2
    seen, calls = [], []
    target = tok(" young").input_ids[0]

    def factory(prompt_ids, prompt_mask):
        calls.append(prompt_ids.shape)

        def processor(input_ids, logprobs):
            seen.append((input_ids.shape[1] - prompt_ids.shape[1], torch.logsumexp(logprobs, -1)))
            # Leave one token possible: temperature and top-p act on this output, so they must keep it.
            out = torch.full_like(logprobs, -1e9)
            out[:, target] = 0.0
            return out

        return processor

    frame = generate.generate_continuations(
        model, tok, PROMPTS[:3], n=2, max_new_tokens=4, top_p=0.05, temperature=5.0, batch_size=4,
        logits_processor_factory=factory, progress=False, return_token_ids=True,
    )
    assert len(calls) == 2  # 6 rows in batches of 4: once per batch
    assert all(ids == [target] * 4 for ids in frame.continuation_ids)
    assert [t for t, _ in seen] == [0, 1, 2, 3, 0, 1, 2, 3]  # input_ids grow by one token a step
    for _, norm in seen:  # what the hook receives is a normalised log-distribution
        assert torch.allclose(norm, torch.zeros_like(norm), atol=1e-5)


def test_generation_stops_at_eos(tiny_gpt2):
    model, tok = tiny_gpt2
    first_two = tok(" young young").input_ids[:2]
    frame = generate.generate_continuations(
        model, tok, ["a"], n=1, max_new_tokens=10, progress=False, return_token_ids=True,
        logits_processor_factory=forcing_processor(first_two, tok.eos_token_id),
    )
    assert frame.n_new_tokens.tolist() == [2] and frame.continuation_ids[0] == first_two


def test_nucleus_by_hand():
    logprobs = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log().repeat(4, 1)
    uniforms = torch.tensor([0.0, 0.6, 0.63, 0.99])
    # top_p=0.7 keeps {0.5, 0.3} (the token crossing 0.7 is kept): renormalised CDF 0.625, 1.0.
    assert generate.nucleus_sample(logprobs, uniforms, 1.0, 0.7).tolist() == [0, 0, 1, 1]
    # top_p=0.5 keeps only the first token; top_p=1 keeps all: CDF .5 .8 .95 1.
    assert generate.nucleus_sample(logprobs, uniforms, 1.0, 0.5).tolist() == [0, 0, 0, 0]
    assert generate.nucleus_sample(logprobs, uniforms, 1.0, 1.0).tolist() == [0, 1, 1, 3]
    assert generate.nucleus_sample(logprobs, uniforms, 0.0, 0.9).tolist() == [0, 0, 0, 0]


def test_empty_and_overlong_prompts(tiny_gpt2):
    model, tok = tiny_gpt2
    frame = generate.generate_continuations(model, tok, [""], n=2, max_new_tokens=3, progress=False)
    assert len(frame) == 2
    long_prompt = " ".join(["people"] * 300)  # far over the tiny model's 128 positions
    with pytest.warns(UserWarning, match="cut from the left"):
        frame = generate.generate_continuations(model, tok, [long_prompt], n=1, max_new_tokens=3, progress=False)
    assert frame.prompt[0] == long_prompt


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(prompts=[]), "prompts is empty"),
        (dict(prompts="one string"), "not one string"),
        (dict(prompts=["a", None]), r"prompts\[1\]"),
        (dict(n=0), "n=0 must be a positive integer"),
        (dict(max_new_tokens=-1), "max_new_tokens=-1"),
        (dict(top_p=0.0), r"top_p=0.0 must be in \(0, 1\]"),
        (dict(top_p=1.5), "top_p=1.5"),
        (dict(temperature=-1.0), "temperature=-1.0"),
        (dict(seed=-3), "seed=-3"),
        (dict(batch_size=-2), "batch_size=-2"),
        (dict(prompt_ids=[1, 2]), "prompt_ids has 2 ids for 1 prompts"),
        (dict(max_new_tokens=500), "no room for a prompt"),
    ],
)
def test_bad_arguments_say_what_to_do(tiny_gpt2, kwargs, message):
    model, tok = tiny_gpt2
    args = dict(prompts=["a"], n=1, max_new_tokens=2, progress=False) | kwargs
    with pytest.raises(ValueError, match=message):
        generate.generate_continuations(model, tok, args.pop("prompts"), **args)


@pytest.mark.parametrize("scale", [0.5, 4.0, 10.0])  # flat to peaked: full sort, top-512 and top-64 paths
def test_fast_nucleus_equals_a_full_sort(scale):
    generator = torch.Generator().manual_seed(0)
    logprobs = torch.log_softmax(torch.randn(64, 3000, generator=generator) * scale, -1)
    uniforms = torch.rand(64, generator=generator, dtype=torch.float64)
    probs = torch.softmax(logprobs / 0.8, -1)
    reference = generate._inverse_cdf(*probs.sort(dim=-1, descending=True, stable=True), uniforms, 0.9)
    assert torch.equal(generate.nucleus_sample(logprobs, uniforms, 0.8, 0.9), reference)
