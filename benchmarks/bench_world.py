"""Training throughput of the mini world's model sizes: bf16 autocast vs float32, 1 vs 2 threads.

    python benchmarks/bench_world.py [--steps 6] [--out results/mini/world/bench_training.csv]

Times ``finetune``'s own train step (batch 8 x 252 tokens, the mini recipe) on random token blocks,
so it needs no world. The CPU is shared: every row records the 1-minute load average at its start,
and a number is only comparable with rows measured under a similar load.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from unidetox_core import models  # noqa: E402
from unidetox_core.finetune import accumulate_gradients  # noqa: E402

SIZES = {
    "gpt2 (5 M)": ("gpt2", dict(d_model=256, n_layer=4, n_head=4)),
    "opt (5 M)": ("opt", dict(d_model=256, n_layer=4, n_head=4)),
    "llama (5 M)": ("llama", dict(d_model=256, n_layer=4, n_head=4)),
    "evaluator llama (12 M)": ("llama", dict(d_model=384, n_layer=5, n_head=6)),
}


class _Vocab:
    """Just enough of a tokenizer for ``small_model_config``: 8,000 ids, id 0 as BOS/EOS/pad."""

    bos_token_id = eos_token_id = pad_token_id = 0

    def __len__(self):
        return 8000


def time_steps(arch: str, sizes: dict, threads: int, bf16: bool, steps: int, batch: int = 8, length: int = 252) -> float:
    torch.set_num_threads(threads)
    model = models.build_small_model(arch, _Vocab(), seed=0, max_positions=256, **sizes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    seqs = torch.randint(1, 8000, (batch, length), generator=generator).tolist()
    times = []
    for _ in range(steps + 1):  # the first step warms up the allocator and oneDNN kernels
        started = time.perf_counter()
        accumulate_gradients(model, seqs, 0, 1, torch.device("cpu"), bf16)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - started)
    return batch * length / (sum(times[1:]) / steps)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--out", default="results/mini/world/bench_training.csv")
    args = parser.parse_args(argv)
    rows = []
    for label, (arch, sizes) in SIZES.items():
        for threads in (1, 2):
            for bf16 in (False, True):
                load = os.getloadavg()[0]
                rate = time_steps(arch, sizes, threads, bf16, args.steps)
                rows.append({"model": label, "threads": threads, "bf16_autocast": bf16,
                             "tokens_per_s": round(rate, 1), "load_avg_1min_start": round(load, 2)})
                print(rows[-1], flush=True)
    frame = pd.DataFrame(rows)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.out, index=False)
    print(frame.to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
