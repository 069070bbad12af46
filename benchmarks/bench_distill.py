"""How fast is contrastive decoding, and how far from the cost of just scoring the same text?

Prints, for one configuration:

1. distillation throughput of ``distill.contrastive_decode`` (base + toxic, Eq. 1-3): generated
   tokens per second, and positions per second (batch rows x decoding steps, finished rows included);
2. plain sampling throughput of ``distill.sample_plain`` (the "Samples" baseline, base only);
3. one teacher-forced forward pass of *both* models over the same sequences (same batch size and
   total length): the floor that a decoder cannot beat, since it must run both models on every
   position anyway. The ratio (3) / (1) is how much decoding overhead there is to win back.

Without model paths it builds two random tiny GPT-2 models (the test fixtures' size) in memory::

    python benchmarks/bench_distill.py
    python benchmarks/bench_distill.py --d-model 256 --n-layer 4          # wider random models
    python benchmarks/bench_distill.py --base cache/world/gpt2-bpe --toxic cache/toxic --n-texts 128 \\
        --batch-size 128 --max-new-tokens 256                             # real models (paper: 640 x 256)
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time

import torch

from unidetox_core import distill, models
from unidetox_core.forward import autocast, model_device

WORDS = (
    "the a news report says people city state president police game team season year time new first "
    "said would could also will one two three market school women men group family world water day "
    "good bad great small big old young and or but with from into over after before because very"
).split()


def random_models(d_model: int, n_layer: int, n_head: int, max_positions: int):
    """Two random GPT-2 models sharing a small BPE tokenizer (like tests/conftest.py)."""
    rng = random.Random(0)
    corpus = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 20))) + "." for _ in range(400)]
    tokenizer = models.train_tokenizer(corpus, "bpe", vocab_size=300)
    sizes = dict(d_model=d_model, n_layer=n_layer, n_head=n_head, max_positions=max_positions)
    base = models.build_small_model("gpt2", tokenizer, seed=0, **sizes).eval()
    toxic = models.build_small_model("gpt2", tokenizer, seed=1, **sizes).eval()
    return base, toxic, tokenizer


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def teacher_forced_rate(base, toxic, token_ids: list[list[int]], start_id: int, batch_size: int, bf16: bool):
    """Positions per second of one full-sequence forward of both models over ``token_ids``
    (each sequence prefixed by the start token, padded with EOS to the longest)."""
    device = model_device(base)
    width = 1 + max(len(ids) for ids in token_ids)
    rows = [[start_id] + ids + [start_id] * (width - 1 - len(ids)) for ids in token_ids]
    sync(device)
    started = time.perf_counter()
    for i in range(0, len(rows), batch_size):
        batch = torch.tensor(rows[i:i + batch_size], device=device)
        with autocast(device, bf16):
            mask = torch.ones_like(batch)  # the padding is counted as work, like the decoder's finished rows
            base(input_ids=batch, attention_mask=mask).logits.float().log_softmax(-1)
            toxic(input_ids=batch.to(model_device(toxic)), attention_mask=mask.to(model_device(toxic))).logits.float().log_softmax(-1)
    sync(device)
    seconds = time.perf_counter() - started
    positions = len(rows) * (width - 1)  # the positions the decoder predicted
    return positions / seconds, seconds


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", help="base model folder or hub id (default: random tiny GPT-2)")
    parser.add_argument("--toxic", help="toxic model folder or hub id (with --base)")
    parser.add_argument("--n-texts", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = leave as is)")
    parser.add_argument("--d-model", type=int, default=32, help="random models only")
    parser.add_argument("--n-layer", type=int, default=2, help="random models only")
    parser.add_argument("--n-head", type=int, default=2, help="random models only")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON line")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if (args.base is None) != (args.toxic is None):
        parser.error("give both --base and --toxic, or neither (random tiny models)")

    if args.base is None:
        base, toxic, tokenizer = random_models(args.d_model, args.n_layer, args.n_head, args.max_new_tokens + 1)
        device = models.pick_device(args.device)
        base.to(device), toxic.to(device)
        label = f"random GPT-2 d={args.d_model} L={args.n_layer} V={len(tokenizer)}"
    else:
        base, tokenizer = models.load_model(args.base, device=args.device, param="--base")
        toxic, _ = models.load_model(args.toxic, device=args.device, param="--toxic")
        label = f"{args.base} vs {args.toxic}"
    device = model_device(base)
    bf16 = device.type == "cuda" and next(base.parameters()).dtype == torch.float32

    kw = dict(n_texts=args.n_texts, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
              seed=args.seed, top_k=args.top_k, progress=False)
    distill.contrastive_decode(base, toxic, tokenizer, alpha=args.alpha, **{**kw, "n_texts": min(2, args.n_texts),
                                                                             "max_new_tokens": 2})  # warm-up
    _, stats = distill.contrastive_decode(base, toxic, tokenizer, alpha=args.alpha, **kw)
    _, plain = distill.sample_plain(base, tokenizer, **kw)
    forward_rate, forward_s = teacher_forced_rate(base, toxic, stats["token_ids"], models.start_token_id(tokenizer),
                                                  args.batch_size, bf16)
    figures = {
        "models": label, "device": str(device), "dtype": str(next(base.parameters()).dtype).replace("torch.", ""),
        "threads": torch.get_num_threads(), "n_texts": args.n_texts, "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens, "alpha": args.alpha, "top_k": args.top_k,
        "distill_tokens_per_s": stats["tokens_per_s"], "distill_positions_per_s": stats["positions_per_s"],
        "distill_wall_s": stats["wall_time_s"], "mean_length": stats["mean_length"],
        "plain_tokens_per_s": plain["tokens_per_s"], "plain_positions_per_s": plain["positions_per_s"],
        "teacher_forced_positions_per_s": forward_rate, "teacher_forced_wall_s": forward_s,
        "forward_over_decode": forward_rate / stats["positions_per_s"],
    }
    if args.json:
        print(json.dumps(figures))
    else:
        print(f"models            {label} on {figures['device']} ({figures['dtype']}, {figures['threads']} threads)")
        print(f"setting           {args.n_texts} texts x <= {args.max_new_tokens} tokens, batch {args.batch_size}, "
              f"alpha {args.alpha}, top_k {args.top_k}")
        print(f"distillation      {stats['tokens_per_s']:10.0f} tokens/s   {stats['positions_per_s']:10.0f} positions/s"
              f"   ({stats['wall_time_s']:.2f} s, mean length {stats['mean_length']:.1f})")
        print(f"plain sampling    {plain['tokens_per_s']:10.0f} tokens/s   {plain['positions_per_s']:10.0f} positions/s")
        print(f"teacher-forced    {'':10s}            {forward_rate:10.0f} positions/s   (both models, one pass, "
              f"{forward_s:.2f} s)")
        print(f"forward / decode  {figures['forward_over_decode']:.1f}x")
    return figures


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
