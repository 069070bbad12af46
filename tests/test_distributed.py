"""The accelerate route for 7 B fine-tuning trains the recipe of ``finetune.finetune``.

FSDP and DeepSpeed need GPUs; what can be checked here is the arithmetic they rely on: one process
under ``accelerate`` gives ``finetune.finetune``'s weights, and two CPU processes (gloo, each with
half of every batch, gradients averaged by DDP) give the weights of one.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from unidetox_core import distributed, finetune, models

ROOT = Path(__file__).resolve().parents[1]
RECIPE_STEPS = dict(lr=1e-3, batch_size=4, steps=3, max_length=32, seed=0)


@pytest.fixture(scope="module")
def no_dropout_model(tmp_path_factory, bpe_tokenizer) -> Path:
    """A tiny GPT-2 without dropout: processes draw their own dropout masks, so only a model without
    dropout can be compared across process counts."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(bpe_tokenizer), n_embd=32, n_layer=2, n_head=2, n_positions=64,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        bos_token_id=bpe_tokenizer.eos_token_id, eos_token_id=bpe_tokenizer.eos_token_id)
    path = tmp_path_factory.mktemp("distributed") / "gpt2"
    GPT2LMHeadModel(config).save_pretrained(path)
    bpe_tokenizer.save_pretrained(path)
    return path


def _accelerator():
    from accelerate import Accelerator

    return Accelerator(cpu=True, mixed_precision="no")


def test_one_process_trains_what_finetune_trains(tiny_gpt2_path, corpus, tmp_path):
    texts = corpus[:24]
    plain, tok = models.load_model(str(tiny_gpt2_path), device="cpu")
    finetune.finetune(plain, tok, texts, bf16=False, progress=False, **RECIPE_STEPS, **finetune.RECIPE)
    model, tok = models.load_model(str(tiny_gpt2_path), device="cpu")
    history = distributed.finetune_distributed(model, tok, texts, save_steps=[3], output_dir=tmp_path,
                                               accelerator=_accelerator(), progress=False, **RECIPE_STEPS)
    for a, b in zip(plain.state_dict().values(), model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert history["step"] == [1, 2, 3] and history["lr"][0] == 1e-3 and history["lr"][2] == pytest.approx(1e-3 / 3)
    saved, _ = models.load_model(str(tmp_path / "step-3"), device="cpu")
    assert all(torch.equal(a, b) for a, b in zip(saved.state_dict().values(), model.state_dict().values()))


def test_bf16_weights_and_uneven_shares_are_refused(tiny_gpt2_path, corpus):
    model, tok = models.load_model(str(tiny_gpt2_path), device="cpu")
    with pytest.raises(ValueError, match="not float32"):
        distributed.finetune_distributed(model.to(torch.bfloat16), tok, corpus[:8], accelerator=_accelerator(),
                                         progress=False, **RECIPE_STEPS)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_what_one_trains(no_dropout_model, corpus, tmp_path):
    texts_csv = tmp_path / "texts.csv"
    pd.DataFrame({"Text": corpus[:24]}).to_csv(texts_csv, index=False)
    args = ["--model", str(no_dropout_model), "--texts", str(texts_csv), "--lr", "1e-3", "--steps", "3",
            "--batch-size", "4", "--max-length", "32"]
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    for processes in (1, 2):
        command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}",
                   f"--master_port={_free_port()}", "-m", "unidetox_core.distributed", *args,
                   "--output-dir", str(tmp_path / f"p{processes}")]
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        assert f"over {processes} process(es)" in done.stdout
    one, _ = models.load_model(str(tmp_path / "p1" / "step-3"), device="cpu")
    two, _ = models.load_model(str(tmp_path / "p2" / "step-3"), device="cpu")
    start, _ = models.load_model(str(no_dropout_model), device="cpu")
    for a, b, s in zip(one.state_dict().values(), two.state_dict().values(), start.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    assert any(not torch.equal(a, s) for a, s in zip(one.state_dict().values(), start.state_dict().values()))


def test_the_pipeline_trains_over_processes_when_the_profile_names_an_engine(no_dropout_model, corpus, tmp_path,
                                                                             monkeypatch):
    """``experiments.detox_checkpoints`` with ``finetune_engine`` set launches ``distributed`` in its own
    processes (two CPU processes here, in place of ``accelerate launch`` over GPUs) and writes the
    checkpoints one process of ``finetune.finetune`` writes."""
    from unidetox_core import experiments
    from unidetox_core.profiles import load_profile

    texts_csv = experiments.write_texts(corpus[:24], tmp_path / "text" / "texts.csv")
    P = dict(load_profile("tiny", cache_dir=str(tmp_path / "cache"), detox_steps=[2, 3], detox_batch_size=4,
                          detox_max_length=32, finetune_engine="configs/accelerate/fsdp.yaml"))
    prefix = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}"]
    launch = distributed.launch
    monkeypatch.setattr(distributed, "launch", lambda config, **run: launch(config, prefix=prefix, **run))
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    paths = experiments.detox_checkpoints(P, str(no_dropout_model), texts_csv, lr=1e-3, progress=False)
    assert sorted(paths) == [2, 3] and all((p / "config.json").exists() for p in paths.values())

    plain, tok = models.load_model(str(no_dropout_model), device="cpu")
    finetune.finetune(plain, tok, corpus[:24], lr=1e-3, batch_size=4, steps=3, max_length=32, seed=0, bf16=False,
                      progress=False, **finetune.RECIPE)
    trained, _ = models.load_model(str(paths[3]), device="cpu")
    for a, b in zip(plain.state_dict().values(), trained.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    # cached: a second call launches nothing
    monkeypatch.setattr(distributed, "launch", lambda *a, **k: pytest.fail("launched again"))
    assert experiments.detox_checkpoints(P, str(no_dropout_model), texts_csv, lr=1e-3, progress=False) == paths


def test_an_engine_without_its_config_or_without_gpus_is_refused(tmp_path):
    run = dict(model="m", texts_csv="t.csv", lr=1e-5, steps=1, save_steps=[1], output_dir=tmp_path, batch_size=8,
               max_length=32)
    with pytest.raises(FileNotFoundError, match="finetune_engine='configs/accelerate/nope.yaml'|is not a file"):
        distributed.launch("configs/accelerate/nope.yaml", **run)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="none is present; set finetune_engine=''"):
            distributed.launch("configs/accelerate/fsdp.yaml", **run)
    assert distributed.launch_prefix("configs/accelerate/fsdp.yaml", 8)[-4:] == [
        "--config_file", "configs/accelerate/fsdp.yaml", "--num_processes", "8"]
