"""Throughput of the evaluation stage, batched vs. the plain loops of the official code (not a test).

For tiny models built on the spot, prints per stage the batched implementation of
``unidetox_core`` next to a plain loop measured in the same run, and their ratio:

- continuations: tokens/s of ``generate.generate_continuations`` vs. one ``model.generate`` call
  per prompt with ``num_return_sequences=n`` (what the official pipeline did, prompt by prompt);
- scorer: texts/s of a scorer on a list vs. one text per call (the official code called
  Detoxify once per continuation);
- perplexity: continuation tokens/s of ``metrics.conditional_perplexity`` vs. one forward pass
  per row;
- MMLU: questions/s of ``metrics.mmlu_accuracy`` (prompt once, KV cache copied to the choices)
  vs. one forward pass per choice for ``P(c | prompt)`` and one per choice for ``P(c | "Answer:")``.

    python benchmarks/bench_eval.py                 # tiny GPT-2, defaults below
    python benchmarks/bench_eval.py --arch llama --prompts 32 --threads 2

Numbers are wall-clock on whatever the machine is doing: compare the ratio, not the absolute rate.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from unidetox_core import generate, metrics, models, scorers  # noqa: E402

WORDS = (
    "the a news report says people city state president police game team season year time new first "
    "said would could also will one two three market school women men group family world water day "
    "good bad great small big old young and or but with from into over after before because very"
).split()


def sentences(n: int, low: int, high: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high))) for _ in range(n)]


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


# ------------------------------------------------------------------------------------ plain loops
@torch.inference_mode()
def generate_per_prompt(model, tok, prompts, n, max_new_tokens, top_p):
    """The official pipeline's shape: one ``generate`` per prompt, its n samples in one call."""
    tokens = 0
    for prompt in prompts:
        enc = tok(prompt, return_tensors="pt").to(model.device)
        out = model.generate(**enc, do_sample=True, top_p=top_p, top_k=0, max_new_tokens=max_new_tokens,
                             num_return_sequences=n, pad_token_id=tok.pad_token_id)
        for row in out[:, enc.input_ids.shape[1]:].tolist():
            tokens += row.index(tok.eos_token_id) if tok.eos_token_id in row else len(row)
    return tokens


@torch.inference_mode()
def perplexity_per_row(model, tok, prompts, continuations):
    values = []
    for ids, n_context in metrics.split_continuation_tokens(tok, prompts, continuations):
        if len(ids) == n_context:
            values.append(float("nan"))
            continue
        logprobs = torch.log_softmax(model(torch.tensor([ids], device=model.device)).logits[0].float(), -1)
        targets = torch.tensor(ids[n_context:], device=model.device)
        values.append(float(torch.exp(-logprobs[n_context - 1 : len(ids) - 1].gather(-1, targets[:, None]).mean())))
    return np.array(values)


@torch.inference_mode()
def mmlu_per_choice(model, tok, questions, dev, k_shot):
    """One forward per choice with the prompt, one per choice with "Answer:" (both scores of the paper)."""

    def choice_logprob(context, choice):
        context_ids = tok(context).input_ids
        whole = tok(context + " " + choice).input_ids
        logprobs = torch.log_softmax(model(torch.tensor([whole], device=model.device)).logits[0].float(), -1)
        return sum(logprobs[t - 1, whole[t]].item() for t in range(len(context_ids), len(whole)))

    correct = 0
    for row in questions.itertuples():
        shots = [(r.question, r.choices[r.answer]) for r in dev[dev.subject == row.subject].itertuples()][:k_shot]
        prompt = metrics.mmlu_prompt(row.question, shots)
        scores = [choice_logprob(prompt, c) - choice_logprob("Answer:", c) for c in row.choices]
        correct += int(np.argmax(scores)) == row.answer
    return correct / len(questions)


# --------------------------------------------------------------------------------------- fixtures
def mmlu_frames(n_questions: int, seed: int):
    """MMLU from the data mirror when present (real question lengths), else made-up questions."""
    mirror = Path(__file__).resolve().parents[2] / "shared" / "data" / "mmlu"
    if (mirror / "test").is_dir():
        def read(split):
            frames = []
            for path in sorted((mirror / split).glob(f"*_{split}.csv"))[:4]:
                raw = pd.read_csv(path)
                frames.append(pd.DataFrame({
                    "subject": path.stem.rsplit("_", 1)[0], "question": raw.question.astype(str),
                    "choices": raw[[f"choice{i}" for i in range(4)]].astype(str).values.tolist(),
                    "answer": raw.answer.astype(int),
                }))
            return pd.concat(frames, ignore_index=True)

        test, dev = read("test"), read("dev")
        return test.sample(n=min(n_questions, len(test)), random_state=seed).reset_index(drop=True), dev, "mirror"
    rng = random.Random(seed)
    make = lambda k, subj: pd.DataFrame({
        "subject": [subj(i) for i in range(k)], "question": sentences(k, 8, 30, seed + k),
        "choices": [sentences(4, 1, 6, seed + i) for i in range(k)], "answer": [rng.randrange(4) for _ in range(k)],
    })
    return make(n_questions, lambda i: f"s{i % 4}"), make(8, lambda i: f"s{i % 4}"), "made-up"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="gpt2", choices=models.ARCHITECTURES)
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=400, help="tokenizer vocabulary (capped by the made-up corpus)")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--n", type=int, default=25)
    parser.add_argument("--max-new-tokens", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--texts", type=int, default=2000, help="texts for the scorer benchmark")
    parser.add_argument("--mmlu-questions", type=int, default=24)
    parser.add_argument("--k-shot", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="1 on a shared CPU: more threads contend")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    corpus = sentences(600, 5, 25, seed=0) + [" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))]
    tok = models.train_tokenizer(corpus, "unigram" if args.arch == "llama" else "bpe", vocab_size=args.vocab)
    model = models.build_small_model(args.arch, tok, seed=0, d_model=args.d_model, n_layer=args.layers,
                                     n_head=max(1, args.d_model // 32), max_positions=512).to(args.device).eval()
    print(f"model: {args.arch}, d_model={args.d_model}, {args.layers} layers, {models.count_parameters(model):,} "
          f"parameters, vocab {len(tok)}; device {args.device}, {args.threads} threads")
    prompts = sentences(args.prompts, 10, 40, seed=1)
    rows = []

    # Continuations (warm-up once so neither side pays first-call costs).
    generate.generate_continuations(model, tok, prompts[:2], n=2, max_new_tokens=2, progress=False)
    frame, t_batched = timed(generate.generate_continuations, model, tok, prompts, n=args.n,
                             max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, progress=False)
    loop_tokens, t_loop = timed(generate_per_prompt, model, tok, prompts, args.n, args.max_new_tokens, 0.9)
    rows.append(("continuations", "tokens/s", frame.n_new_tokens.sum() / t_batched, loop_tokens / t_loop,
                 f"{len(prompts)} prompts x {args.n}, <= {args.max_new_tokens} tokens; loop = model.generate per prompt"))

    # Scorers.
    texts = (frame.continuation.tolist() * (args.texts // len(frame) + 1))[: args.texts]
    for name, scorer in [("profanity_check", scorers.get_toxicity_scorer("profanity_check")),
                         ("tfidf (toy)", scorers.TfidfClassifierScorer("toy").fit(corpus, [i % 2 for i in range(len(corpus))]))]:
        _, t_batched = timed(scorer, texts)
        few = texts[: max(50, args.texts // 10)]
        _, t_loop = timed(lambda: [scorer([t]) for t in few])
        rows.append((f"scorer {name}", "texts/s", len(texts) / t_batched, len(few) / t_loop, "loop = one text per call"))

    # Conditional perplexity (the model scores its own continuations; any evaluator works).
    (ppl, summary), t_batched = timed(metrics.conditional_perplexity, model, tok, frame.prompt.tolist(),
                                      frame.continuation.tolist(), batch_size=64)
    loop_ppl, t_loop = timed(perplexity_per_row, model, tok, frame.prompt.tolist(), frame.continuation.tolist())
    agree = np.nanmax(np.abs(ppl - loop_ppl) / loop_ppl)
    rows.append(("perplexity", "tokens/s", summary["n_tokens"] / t_batched, summary["n_tokens"] / t_loop,
                 f"{len(frame)} rows, batch 64; loop = one forward per row; max rel. diff {agree:.1e}"))

    # MMLU.
    questions, dev, source = mmlu_frames(args.mmlu_questions, seed=0)
    result, t_batched = timed(metrics.mmlu_accuracy, model, tok, questions, dev, k_shot=args.k_shot, batch_size=8)
    loop_acc, t_loop = timed(mmlu_per_choice, model, tok, questions, dev, args.k_shot)
    rows.append(("MMLU", "questions/s", len(questions) / t_batched, len(questions) / t_loop,
                 f"{len(questions)} {source} questions, {args.k_shot}-shot; accuracy {result['acc_normalized']:.3f} "
                 f"batched vs {loop_acc:.3f} loop"))

    print(f"\n{'stage':<24}{'unit':<13}{'batched':>12}{'plain loop':>12}{'ratio':>8}  notes")
    for stage, unit, fast, slow, note in rows:
        print(f"{stage:<24}{unit:<13}{fast:>12.1f}{slow:>12.1f}{fast / slow:>7.1f}x  {note}")


if __name__ == "__main__":
    main()
