"""Would two single-threaded evaluation workers beat one two-threaded process? (a benchmark, not a test)

Measured before the mini profile set ``eval_workers`` 2 and ``eval_threads`` 1: with one two-threaded
process the evaluation chapters kept the 2-core machine's load average near 1.3 (generating 20 tokens
at a time with a 5 M-parameter model gives two torch threads too little work each). This times one evaluation of the mini source model
(``--prompts`` validation prompts x 25 continuations, both scorers, the evaluator's perplexity):

- one process with 2 torch threads (what the chapters did before);
- one process with 1 thread;
- two 1-thread processes side by side, each with its own evaluation seed.

and prints the throughput of each in evaluations per minute. Each evaluation gets a fresh seed and a
scratch cache (the world is linked from ``cache/world``), so nothing is read back from a cache.
Needs the mini world (``make world``).

    python benchmarks/bench_workers.py --prompts 40

A thread count changes the order in which floats are summed, so 1-thread and 2-thread evaluations of
one seed are not guaranteed to be byte-identical: using workers would have to fix the thread count.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def evaluate_once(threads: int, seed: int, prompts: int, scratch: str) -> float:
    """Seconds for one uncached evaluation of the base source model with ``threads`` torch threads."""
    import torch

    torch.set_num_threads(threads)
    from unidetox_core import baselines as B
    from unidetox_core import experiments as E
    from unidetox_core.profiles import load_profile

    P = load_profile("mini", n_val_prompts=prompts, cache_dir=scratch, results_dir=str(Path(scratch) / "results"))
    spec = E.method_variant(P, B.BASE, P["source_model"], progress=False)
    E._load_cached(E.resolve_model(P, P["evaluator_model"]))  # model loading is not what is compared
    E._load_cached(spec["checkpoint"])
    start = time.perf_counter()
    E.evaluate(P, spec, "val", seed, progress=False)
    return time.perf_counter() - start


def _worker(args):
    return evaluate_once(*args)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=40, help="validation prompts per evaluation (default 40)")
    args = parser.parse_args(argv)
    world = ROOT / "cache" / "world"
    if not world.is_dir():
        parser.error(f"{world} does not exist: build the mini world first (make world)")
    with tempfile.TemporaryDirectory() as scratch:
        (Path(scratch) / "world").symlink_to(world)
        seeds = iter(range(1000, 1100))
        ctx = mp.get_context("spawn")
        rows = []
        for label, threads, workers in (("1 process, 2 threads", 2, 1), ("1 process, 1 thread", 1, 1),
                                        ("2 processes, 1 thread each", 1, 2)):
            jobs = [(threads, next(seeds), args.prompts, scratch) for _ in range(workers)]
            start = time.perf_counter()
            with ctx.Pool(workers) as pool:
                seconds = pool.map(_worker, jobs)
            wall = time.perf_counter() - start
            per_minute = 60 * workers / max(seconds)  # evaluations finished per minute of evaluating
            rows.append((label, seconds, per_minute))
            print(f"{label:28s} evaluation(s) took {', '.join(f'{s:.1f} s' for s in seconds)} "
                  f"(wall {wall:.1f} s with loading): {per_minute:.2f} evaluations/min")
    base = rows[0][2]
    for label, _, per_minute in rows[1:]:
        print(f"{label}: {per_minute / base:.2f}x the throughput of one 2-thread process")
    print(f"load average now {os.getloadavg()[0]:.2f} (the machine is shared: compare ratios, not rates)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
