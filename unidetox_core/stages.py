"""Cached stages: every expensive step of the book is one folder, named by what made it.

- ``folder(cache_dir, stage, label, config)`` is ``<cache_dir>/<stage>/<label>-<key>``, the key a
  hash of ``config`` (``stage_key``: paths inside the cache enter it relative to the cache): a
  changed setting makes a new folder and leaves the old one, so going back to a setting finds its
  results again.
- ``timed(...)`` wraps the computation of a stage that is not in the cache yet. When it finishes it
  writes ``manifest.json`` into the folder (stage, label, config, seconds, what it produced) and
  appends the same record as one line to ``<cache_dir>/runs.jsonl``, the run log.
- ``run_log(cache_dir)`` reads that log as a table: the compute appendix reads it directly.

The world's steps (``world``), toxic models, distilled texts, fine-tuning runs, LM-Steer matrices,
evaluations and MMLU runs all go through here. A stage found in the cache is neither run nor logged
again, so the log holds what computing the cache cost.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import time
from pathlib import Path
from typing import Any, Iterator

from .cache import config_key, write_json_atomic

RUN_LOG = "runs.jsonl"
MANIFEST = "manifest.json"


def slug(name: str) -> str:
    """A short file-system-safe label for a model name, hub id or path (``world:gpt2-bpe`` -> ``gpt2-bpe``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(name).split("world:")[-1].rstrip("/").split("/")[-1])[:60]


def stage_key(cache_dir, config: dict[str, Any]) -> str:
    """The key of ``config`` as if ``cache_dir`` were elsewhere: paths inside the cache (a model a
    stage built, a text it sampled) enter the key relative to it, so a cache moved to another
    checkout or machine is found again rather than recomputed."""
    return config_key(_relative_to(config, str(Path(cache_dir).resolve())))


def _relative_to(value: Any, root: str) -> Any:
    if isinstance(value, dict):
        return {k: _relative_to(v, root) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_relative_to(v, root) for v in value]
    if isinstance(value, (str, Path)) and os.path.isabs(str(value)):
        path = str(value)
        if path == root or path.startswith(root + os.sep):
            return "<cache>/" + os.path.relpath(path, root).replace(os.sep, "/")
    return value


def folder(cache_dir, stage: str, label: str, config: dict[str, Any]) -> Path:
    """Where the stage ``stage`` made from ``config`` lives: ``<cache_dir>/<stage>/<label>-<key>``."""
    return Path(cache_dir) / stage / f"{slug(label)}-{stage_key(cache_dir, config)}"


@contextlib.contextmanager
def timed(cache_dir, stage: str, label: str, config: dict[str, Any], where: Path | None = None,
          manifest: bool = True, profile: str | None = None) -> Iterator[dict]:
    """Time the block that computes a stage; on success record it (manifest and run log).

    Yields a dict the block may fill with facts worth keeping (tokens, steps, a resumed run's
    starting step). ``where`` is the stage's folder or file (default ``folder(cache_dir, stage,
    label, config)``); the manifest is written into that folder unless ``manifest=False`` (the
    world's steps keep their own ``world.json``). ``profile`` names the profile that ran it (profiles
    share one cache). Nothing is recorded when the block raises.
    """
    where = Path(where) if where is not None else folder(cache_dir, stage, label, config)
    inside = where.resolve().is_relative_to(Path(cache_dir).resolve())
    facts: dict[str, Any] = {}
    started, cpu_started = time.perf_counter(), time.process_time()
    load_start = os.getloadavg()[0]
    yield facts
    record = {
        "stage": stage, "label": label, "profile": profile, "key": stage_key(cache_dir, config),
        "folder": os.path.relpath(where, cache_dir) if inside else str(where),
        "seconds": round(time.perf_counter() - started, 3),
        "cpu_seconds": round(time.process_time() - cpu_started, 3),
        "load_avg_start": round(load_start, 2), "load_avg_end": round(os.getloadavg()[0], 2),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "host": socket.gethostname().split(".")[0],
        "pid": os.getpid(), **facts, "config": config,
    }
    if manifest:
        where.mkdir(parents=True, exist_ok=True)
        write_json_atomic(where / MANIFEST, record)
    log_run(cache_dir, record)


def log_run(cache_dir, record: dict[str, Any]) -> None:
    """Append ``record`` as one JSON line to the run log. One ``write`` of a line opened in append
    mode: processes running stages side by side never interleave their lines."""
    path = Path(cache_dir) / RUN_LOG
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, default=str, sort_keys=False) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def run_log(cache_dir):
    """The run log as a DataFrame, one row per computed stage in the order they finished (empty
    when nothing was computed). ``config`` stays a dict per row."""
    import pandas as pd

    path = Path(cache_dir) / RUN_LOG
    if not path.exists():
        return pd.DataFrame(columns=["stage", "label", "key", "folder", "seconds", "cpu_seconds", "config"])
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a killed process: the stage was not recorded
            continue
    return pd.DataFrame(rows)


def manifest(where) -> dict[str, Any] | None:
    """The manifest of a stage's folder, or ``None`` if the stage never finished there."""
    path = Path(where) / MANIFEST
    return json.loads(path.read_text()) if path.exists() else None


def side_by_side(function, arguments: list[tuple], *, workers: int, threads: int = 0, desc: str = "",
                 progress: bool = True) -> list:
    """``[function(*args) for args in arguments]``, ``workers`` calls at a time, each in a fresh
    ("spawn") process with ``threads`` torch threads (0: a fair share of the cores) and, on a GPU
    machine, a GPU of its own; here, one after another, when ``workers`` is 1 or there is one call.
    ``workers`` 0 is one per GPU (1 on a CPU). Returns the results in the order of ``arguments``. A
    failure stops the rest and is raised here; stages that finished stay cached.

    Why processes: on a 2-core CPU two single-threaded runs side by side do more than one run with
    two threads (whose OpenMP threads wait for each other on a busy machine), and a fixed thread
    count per run keeps its numbers the same wherever it runs.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from tqdm.auto import tqdm

    gpus = gpu_ids()
    workers = min(int(workers) or max(1, len(gpus)), len(arguments))
    results: list = [None] * len(arguments)
    with tqdm(total=len(arguments), desc=desc, disable=not progress or not arguments, leave=False) as bar:
        if workers <= 1:
            for i, args in enumerate(arguments):
                results[i] = function(*args)
                bar.update(1)
            return results
        # "spawn", not fork: a forked copy of a process that already ran torch's thread pools can hang.
        context = multiprocessing.get_context("spawn")
        started = context.Value("i", 0)
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_start,
                                 initargs=(int(threads), workers, gpus, started)) as pool:
            futures = {pool.submit(function, *args): i for i, args in enumerate(arguments)}
            try:
                for future in as_completed(futures):
                    results[futures[future]] = future.result()
                    bar.update(1)
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
    return results


def gpu_ids() -> list[str]:
    """The GPUs this process may use (``CUDA_VISIBLE_DEVICES``, else all CUDA devices); empty on a CPU."""
    import torch

    if not torch.cuda.is_available():
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        return [g.strip() for g in visible.split(",") if g.strip()]
    return [str(i) for i in range(torch.cuda.device_count())]


def _worker_start(threads: int, workers: int, gpus: list[str], started) -> None:
    """A worker's torch threads (``threads``, or a fair share of the cores when that is 0) and, on a
    GPU machine, its own GPU: the i-th worker started sees only GPU i mod n, so that evaluations
    spread over the GPUs instead of stacking on the first."""
    with started.get_lock():
        index = started.value
        started.value += 1
    if gpus:  # before CUDA starts in this fresh process
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]
    import torch

    torch.set_num_threads(threads or max(1, (os.cpu_count() or 1) // workers))
