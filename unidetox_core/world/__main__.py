"""``python -m unidetox_core.world``: build the miniature world of a profile."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime, timezone

from ..compute import append_run
from .build import build_world, calibrate_mix, unbuilt_steps
from .settings import WORLD_SETTINGS, results_dir, world_settings


# ------------------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    """``python -m unidetox_core.world [--profile mini] [--calibrate SHARE ...] [--no-report]``"""
    parser = argparse.ArgumentParser(prog="python -m unidetox_core.world", description=main.__doc__)
    parser.add_argument("--profile", default="mini", choices=sorted(WORLD_SETTINGS))
    parser.add_argument("--calibrate", nargs="+", type=float, metavar="SHARE",
                        help="train the source model for each tweet token share and measure its TP (no full build)")
    parser.add_argument("--no-report", action="store_true", help="build only; skip TP, classifier and result tables")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="world setting overrides, JSON values, e.g. tweet_token_share=0.03")
    args = parser.parse_args(argv)
    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = json.loads(value)
    if args.calibrate:
        print(calibrate_mix(args.profile, args.calibrate, **overrides).to_string())
        return 0
    started = time.perf_counter()
    missing = unbuilt_steps(args.profile, **overrides)
    paths = build_world(args.profile, report=not args.no_report, **overrides)
    seconds = time.perf_counter() - started
    for name, path in paths.items():
        print(f"{name:22s} {path}")
    print(f"world built in {seconds:.0f} s (load average now {os.getloadavg()[0]:.2f})")
    if missing:  # a build, not a look into the cache: the compute chapter lists it beside the chapters
        finished = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        append_run(results_dir(world_settings(args.profile, **overrides)).parent / "notebook_runs.csv", "world",
                   {"seconds": round(seconds, 1), "finished": finished}, "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
