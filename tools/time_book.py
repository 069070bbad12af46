"""Time the book's main command and record the result for the compute chapter.

    python tools/time_book.py --label cold --checkout ../fresh      # a fresh clone: empty cache
    python tools/time_book.py --label warm                           # this checkout, everything cached

Runs ``make book`` (or the command after ``--``) in ``--checkout``, streams its output to
``<checkout>/book_build.log``, and appends one row to ``results/<profile>/book_times.csv`` of *this*
repository: the label, wall and CPU seconds (this process's children), the load average before and
after (the machine is shared, so a time means little without it), the checkout's commit and whether
the command succeeded. Nothing is timed that was not run: a failed command is recorded as failed.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def commit_of(checkout: Path) -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=checkout, capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def time_command(command: list[str], checkout: Path, label: str) -> dict:
    log = checkout / "book_build.log"
    started = datetime.now(timezone.utc)
    load_start = os.getloadavg()
    cpu_start, wall_start = children_cpu_seconds(), time.perf_counter()
    with open(log, "w", encoding="utf-8") as out:
        code = subprocess.call(command, cwd=checkout, stdout=out, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - wall_start
    return {
        "label": label, "command": " ".join(command), "wall_seconds": round(wall, 1),
        "cpu_seconds": round(children_cpu_seconds() - cpu_start, 1),
        "load_avg_1min_start": round(load_start[0], 2), "load_avg_1min_end": round(os.getloadavg()[0], 2),
        "cores": os.cpu_count(), "commit": commit_of(checkout), "exit_code": code,
        "started_utc": started.strftime("%Y-%m-%d %H:%M"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--label", required=True, help="what kind of run: cold (empty cache) or warm (all cached)")
    parser.add_argument("--checkout", default=str(ROOT), help="the checkout to run in (default: this one)")
    parser.add_argument("--profile", default="mini", help="results/<profile>/book_times.csv receives the row")
    parser.add_argument("command", nargs="*", help="the command (default: make book)")
    args = parser.parse_args(argv)
    checkout = Path(args.checkout).resolve()
    if not (checkout / "Makefile").exists():
        parser.error(f"--checkout {checkout} holds no Makefile; pass a clone of this repository")
    row = time_command(args.command or ["make", "book"], checkout, args.label)
    out = ROOT / "results" / args.profile / "book_times.csv"
    table = pd.read_csv(out) if out.exists() else pd.DataFrame()
    pd.concat([table, pd.DataFrame([row])], ignore_index=True).to_csv(out, index=False)
    print(f"{args.label}: {row['wall_seconds'] / 60:.1f} min wall, exit {row['exit_code']} -> {out}")
    return 0 if row["exit_code"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
