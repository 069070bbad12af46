"""Full fine-tuning over several processes with ``accelerate``: the paper profile's 7 B route.

A 7 B model trained with AdamW needs 16 bytes a weight for float32 master weights, gradients and
the two moments -- about 110 GB for LLaMA-2-7B, more than one GPU holds. The remedy is an existing
engine that *shards* those float32 tensors over the GPUs: PyTorch FSDP or DeepSpeed ZeRO, both
driven by ``accelerate`` from a config file (``configs/accelerate/``). bf16 enters only as autocast
(``mixed_precision: bf16``): the matrix products run in bf16, the weights and AdamW state stay
float32 -- never pure-bf16 AdamW, which loses updates at lr 1e-5 (``finetune.check_float32_masters``).

The recipe is ``finetune.finetune``'s, step for step: the same tokenisation (start token, EOS),
the same batch of texts at each step (``finetune.batch_indices``), the loss normalised by the real
tokens of the whole batch, Trainer's linear decay and clipping at 1.0, checkpoints at the same
steps in the same ``save_pretrained`` form. Each process takes every ``world_size``-th text of the
step's batch; since the engines *average* gradients over processes, each process scales its share
of the summed NLL by ``world_size``, so the update is the one of the whole batch.
``tests/test_distributed.py`` checks that one process reproduces ``finetune.finetune`` and that two
CPU processes (gloo) reproduce one.

One command per fine-tune, for example UniDetox on LLaMA-2-7B over the GPUs of one node:

    accelerate launch --config_file configs/accelerate/fsdp.yaml -m unidetox_core.distributed \\
        --model meta-llama/Llama-2-7b-hf --texts cache/distilled/unidetox-<key>/texts.csv \\
        --lr 5e-5 --steps 3000 --save-steps 1000 2000 3000 --output-dir cache/detox/llama-2-7b-unidetox

(``configs/accelerate/deepspeed_zero3.yaml`` for DeepSpeed; ``--num_processes`` as the GPUs.)
Resuming, which ``finetune.finetune`` does exactly, is not offered here: an interrupted run starts
over from its first step.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

import torch

from . import finetune as F
from .forward import right_pad


def finetune_distributed(model, tokenizer, texts: Sequence[str], *, lr: float, batch_size: int, steps: int,
                         save_steps=(), output_dir=None, max_length: int = 256, seed: int = 0,
                         accelerator=None, lr_schedule: str = "linear", max_grad_norm: float | None = 1.0,
                         append_eos: bool = True, prepend_bos: bool = True, progress: bool = True,
                         stop_after: int | None = None) -> dict:
    """``finetune.finetune`` (AdamW, betas 0.9/0.999, no weight decay) run by ``accelerator`` (an
    ``accelerate.Accelerator``; one is made when ``None``, from the launch's config). Returns the
    history: ``step``, ``loss`` (this process's share), ``lr``, ``tokens``, ``wall_time_s``, ``checkpoints``."""
    from accelerate import Accelerator

    F.check_float32_masters(model)
    save_steps = sorted({int(s) for s in save_steps})
    F._check_finetune_args(list(texts), lr, batch_size, steps, None, max_length, save_steps, output_dir, 1, 0.0,
                           lr_schedule, max_grad_norm, "last")
    accelerator = accelerator or Accelerator()
    rank, world = accelerator.process_index, accelerator.num_processes
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != world:  # e.g. an FSDP config on a machine without GPUs: each process would train alone
        raise RuntimeError(f"the launcher started {launched} processes but accelerate sees {world} "
                           f"({accelerator.distributed_type}): FSDP and DeepSpeed need GPUs. On CPUs, launch with "
                           "`python -m torch.distributed.run --nproc_per_node N` (DDP over gloo) instead.")
    if batch_size % world:
        raise ValueError(f"batch_size={batch_size} must be a multiple of the {world} processes (each takes an "
                         "equal share of every batch).")
    sequences = F.tokenize_texts(tokenizer, list(texts), max_length, prepend_bos, append_eos)
    pad_id = F.pad_id_of(tokenizer)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    model, optimizer = accelerator.prepare(model, optimizer)
    end = steps if stop_after is None else min(int(stop_after), steps)  # the schedule still spans `steps`
    history = {"step": [], "loss": [], "lr": [], "tokens": 0, "wall_time_s": 0.0, "checkpoints": [],
               "engine": str(accelerator.distributed_type).split(".")[-1], "processes": world,
               "sharded": "FSDP" in type(model).__name__}  # FSDP1 wraps the model, FSDP2 renames its class
    torch.manual_seed(seed)
    model.train()
    bar = F._progress_bar(progress and accelerator.is_local_main_process, end, 0, "fine-tune")
    started = time.perf_counter()
    for step in range(end):
        rate = lr * F._lr_factor(lr_schedule, step, steps)
        for group in optimizer.param_groups:
            group["lr"] = rate
        batch = [sequences[i] for i in F.batch_indices(step, len(sequences), batch_size, seed).tolist()]
        total_tokens = sum(max(len(s) - 1, 0) for s in batch)
        ids, mask = right_pad(batch[rank::world], pad_id, accelerator.device)
        with accelerator.autocast():
            nll, _ = F.summed_token_nll(model, ids, mask)
        accelerator.backward(nll * world / max(total_tokens, 1))
        if max_grad_norm is not None:
            accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        history["step"].append(step + 1)
        history["loss"].append(float(nll.detach()) / max(total_tokens, 1))
        history["lr"].append(rate)
        history["tokens"] += total_tokens
        bar.update(1)
        if step + 1 in save_steps:
            history["checkpoints"].append(str(save(accelerator, model, tokenizer, Path(output_dir) / f"step-{step + 1}")))
    bar.close()
    history["wall_time_s"] = time.perf_counter() - started
    return history


def save(accelerator, model, tokenizer, path: Path) -> Path:
    """``save_pretrained`` of the whole (gathered) model and the tokenizer, written by the main process."""
    accelerator.wait_for_everyone()
    state = accelerator.get_state_dict(model)  # gathers FSDP / ZeRO-3 shards
    if accelerator.is_main_process:
        accelerator.unwrap_model(model).save_pretrained(path, state_dict=state, save_function=accelerator.save)
        tokenizer.save_pretrained(path)
    accelerator.wait_for_everyone()
    return path


# ------------------------------------------------------------------------------------ launching
ROOT = Path(__file__).resolve().parents[1]


def launch_prefix(config: str | os.PathLike, processes: int) -> list[str]:
    """``accelerate launch --config_file CONFIG --num_processes N``, run by this Python."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
            "--num_processes", str(processes)]


def launch(config: str | os.PathLike, *, model: str, texts_csv, lr: float, steps: int, save_steps, output_dir,
           batch_size: int, max_length: int, seed: int = 0, stop_after: int | None = None,
           processes: int | None = None, prefix=None) -> list[Path]:
    """One fine-tune of the pipeline as one ``accelerate launch`` of this module over ``processes``
    GPUs (default: all present), with the engine of ``config`` (``configs/accelerate/*.yaml``, relative
    to the repository or absolute); waits for it and returns the checkpoint folders it wrote. This is
    how ``experiments`` trains when a profile sets ``finetune_engine``. ``prefix`` replaces the
    launcher (the tests start two CPU processes with ``torch.distributed.run``)."""
    config = Path(config) if Path(config).is_absolute() else ROOT / config
    if prefix is None:
        if not config.is_file():
            raise FileNotFoundError(f"finetune_engine={str(config)!r} is not a file; use an accelerate config such as "
                                    "configs/accelerate/fsdp.yaml, or '' to train in one process.")
        processes = processes or torch.cuda.device_count()
        if processes < 1:
            raise RuntimeError(f"finetune_engine={str(config)!r} shards training over GPUs and none is present; set "
                               "finetune_engine='' to train in one process (finetune.finetune).")
        prefix = launch_prefix(config, processes)
    end = int(steps) if stop_after is None else min(int(stop_after), int(steps))
    save_steps = sorted({int(s) for s in save_steps if int(s) <= end} | {end})
    command = [*prefix, "-m", "unidetox_core.distributed", "--model", str(model), "--texts", str(texts_csv),
               "--lr", repr(float(lr)), "--steps", str(int(steps)), "--save-steps", *map(str, save_steps),
               "--output-dir", str(output_dir), "--batch-size", str(int(batch_size)), "--max-length",
               str(int(max_length)), "--seed", str(int(seed)), "--stop-after", str(end)]
    done = subprocess.run(command, cwd=ROOT)
    if done.returncode:
        raise RuntimeError(f"the distributed fine-tune failed (exit code {done.returncode}); its output is above. "
                           f"Command: {' '.join(command)}")
    return [Path(output_dir) / f"step-{s}" for s in save_steps]


def main(argv: list[str] | None = None) -> int:
    from . import models

    parser = argparse.ArgumentParser(description="Full fine-tuning with accelerate (FSDP / DeepSpeed): "
                                                 "run it with `accelerate launch -m unidetox_core.distributed`.")
    parser.add_argument("--model", required=True, help="hub id or local folder of the model to fine-tune")
    parser.add_argument("--texts", required=True, help="CSV with a Text column (a distilled text)")
    parser.add_argument("--lr", type=float, required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--save-steps", type=int, nargs="*", default=[])
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stop-after", type=int, default=None,
                        help="end after this step; the learning-rate schedule still spans --steps")
    args = parser.parse_args(argv)
    model, tokenizer = models.load_model(args.model, dtype="float32", device="cpu", param="--model")
    history = finetune_distributed(model, tokenizer, F.load_texts_csv(args.texts), lr=args.lr,
                                   batch_size=args.batch_size, steps=args.steps,
                                   save_steps=args.save_steps or [args.steps], output_dir=args.output_dir,
                                   max_length=args.max_length, seed=args.seed, stop_after=args.stop_after)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"trained {history['step'][-1]} steps with {history['engine']} over {history['processes']} process(es)"
              f"{', weights sharded' if history['sharded'] else ''}; checkpoints: {', '.join(history['checkpoints'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
