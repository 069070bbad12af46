"""How much language modelling the world's CPU minutes buy: held-out loss against CPU-seconds.

The world's models are tiny and trained briefly, so their size is a budget decision. This sweep
trains the source model's architecture (GPT-2, BPE) at several widths, depths, vocabulary sizes and
step counts, one thread each, and measures held-out news in **bits per byte** (comparable across
vocabulary sizes) against the CPU-seconds the training took. Chapter 02 plots it; the world's
settings are read off its frontier. Each finished configuration is appended to the CSV at once, so
an interrupted sweep resumes where it stopped.

    python -m unidetox_core.world.sweep --profile mini      # writes results/<profile>/world/sweep.csv
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import pandas as pd

from ..cache import write_csv_atomic
from .corpus import build_blocks, build_corpus, build_stream, train_world_tokenizer
from .settings import results_dir, torch_threads, world_settings

# (vocabulary size, d_model, n_layer, steps) of the source model's architecture; the mini world's
# setting is the first. Batch 8 blocks of block_tokens tokens, linear decay, as the world trains.
MINI_GRID = (
    (8000, 192, 4, 480),
    (8000, 192, 4, 960),
    (4000, 192, 4, 480),
    (8000, 128, 4, 960),
    (4000, 128, 4, 960),
    (8000, 128, 2, 960),
    (8000, 128, 4, 480),
)
TINY_GRID = ((800, 32, 2, 10), (400, 32, 2, 20))
COLUMNS = ("vocab_size", "d_model", "n_layer", "steps", "parameters", "train_tokens_seen", "cpu_seconds",
           "heldout_news_bits_per_byte", "heldout_threads_bits_per_byte", "heldout_news_ppl", "final_train_loss",
           "load_avg_1min_start")


KEYS = ["vocab_size", "d_model", "n_layer", "steps"]


def _measured(path: Path) -> set[tuple]:
    if not path.exists():
        return set()
    return {tuple(int(v) for v in row) for row in pd.read_csv(path)[KEYS].to_numpy()}


def sweep_path(profile: str | dict) -> Path:
    return results_dir(world_settings(profile)) / "sweep.csv"


def sweep_point(profile: str | dict, vocab_size: int, d_model: int, n_layer: int, steps: int,
                model: str = "gpt2-bpe", progress: bool = False) -> dict:
    """Train one configuration in memory (its data steps are cached as the world's are) and return
    its row: sizes, CPU-seconds of the training alone, held-out bits per byte."""
    from .pretrain import pretrain_world_model, training_dir

    n_head = max(2, d_model // 48)
    settings = world_settings(profile, vocab_size=vocab_size,
                              models={model: {"d_model": d_model, "n_layer": n_layer, "n_head": n_head, "steps": steps}})
    build_corpus(settings, progress)
    train_world_tokenizer(settings, "bpe", progress)
    build_stream(settings, progress)
    build_blocks(settings, "bpe", progress)
    with torch_threads(1):
        _, _, summary = pretrain_world_model(settings, model, progress)
    shutil.rmtree(training_dir(settings, model), ignore_errors=True)  # its checkpoints only serve an interruption
    return {"vocab_size": vocab_size, "d_model": d_model, "n_layer": n_layer, "steps": steps,
            "parameters": summary["parameters"], "train_tokens_seen": summary["train_tokens_seen"],
            "cpu_seconds": summary["train_cpu_seconds"],
            "heldout_news_bits_per_byte": summary["heldout_news"]["bits_per_byte"],
            "heldout_threads_bits_per_byte": summary["heldout_threads"]["bits_per_byte"],
            "heldout_news_ppl": summary["heldout_news"]["ppl"], "final_train_loss": summary["final_train_loss"],
            "load_avg_1min_start": summary["load_avg_1min_start"]}


def run_sweep(profile: str | dict = "mini", grid=None, progress: bool = True) -> pd.DataFrame:
    """Every configuration of ``grid`` (default: the profile's) not yet in ``sweep.csv``, appended one
    by one; returns the whole table."""
    from tqdm.auto import tqdm

    name = profile if isinstance(profile, str) else profile["profile"]
    grid = grid if grid is not None else (MINI_GRID if name == "mini" else TINY_GRID)
    path = sweep_path(profile)
    for point in tqdm(list(grid), desc="world sweep", disable=not progress):
        if tuple(point) in _measured(path):  # measured before, or meanwhile by another sweep process
            continue
        started = time.time()
        row = sweep_point(profile, *point)
        # read again before appending: another sweep process may have added its points meanwhile
        done = pd.read_csv(path) if path.exists() else pd.DataFrame(columns=list(COLUMNS))
        done = pd.concat([done, pd.DataFrame([row])], ignore_index=True) if len(done) else pd.DataFrame([row])
        done = done.drop_duplicates(KEYS, keep="first")  # a point two processes measured counts once
        write_csv_atomic(done[list(COLUMNS)], path)
        if progress:
            print(f"{point}: {row['heldout_news_bits_per_byte']:.3f} bits/byte in {row['cpu_seconds']:.0f} CPU s "
                  f"({time.time() - started:.0f} s)", flush=True)
    return pd.read_csv(path) if path.exists() else pd.DataFrame(columns=list(COLUMNS))


def frontier(sweep: pd.DataFrame) -> pd.DataFrame:
    """The configurations no other beats on both CPU-seconds and held-out bits per byte, cheapest first."""
    ordered = sweep.sort_values(["cpu_seconds", "heldout_news_bits_per_byte"]).reset_index(drop=True)
    best, keep = float("inf"), []
    for i, row in ordered.iterrows():
        if row["heldout_news_bits_per_byte"] < best:
            best = row["heldout_news_bits_per_byte"]
            keep.append(i)
    return ordered.loc[keep].reset_index(drop=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="mini", choices=["mini", "tiny"])
    parser.add_argument("--reverse", action="store_true", help="take the grid from its end (a second process)")
    args = parser.parse_args(argv)
    grid = list(MINI_GRID if args.profile == "mini" else TINY_GRID)
    print(run_sweep(args.profile, grid[::-1] if args.reverse else grid).to_string())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
