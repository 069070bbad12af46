"""The paper profile's plan: exact stage counts from the chapters' job lists, the roofline estimate
against hand computations, and the refusals before a run."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from unidetox_core import plan
from unidetox_core.profiles import load_profile
from unidetox_core.views import tuning


def test_parameter_counts_come_from_the_public_configurations():
    assert plan.parameters("openai-community/gpt2-xl") == 1_557_611_200  # GPT-2 XL's 1.5 B, tied head
    assert plan.parameters("meta-llama/Llama-2-7b-hf") == 6_738_415_616
    with pytest.raises(ValueError, match="model 'gpt5' has no configuration"):
        plan.parameters("gpt5")


def test_paper_counts_follow_the_profile_and_the_grid():
    P = load_profile("paper")
    counts = plan.stage_counts(P)
    toxic = counts[counts["stage"] == "toxic model"]
    assert len(toxic) == 4  # every model: DExperts and Task Arithmetic need its toxic copy
    # 3 epochs x ceil(20,168 / 4) = 15,126 steps: the official toxic checkpoint's number
    assert (toxic["tokens"] == 15126 * 4 * 512).all()
    tuned = counts[counts["stage"] == "UniDetox and Samples fine-tuning"]
    assert len(tuned) == 4 and (tuned["runs"] == 3).all()  # 2 UniDetox learning rates + Samples at 1e-5
    assert (tuned["tokens"] == 10000 * 8 * 256).all() and (tuned["checkpoints"] == 10).all()
    source = P["source_model"]
    grid = [job for job in tuning.grid_jobs(P, [1e-5], True) if job[1] == source]
    plain = sum(1 for job in grid if job[0] != "dexperts")
    val = counts[(counts["stage"] == "evaluation: generate (val)") & (counts["model"] == source)]
    assert val["runs"].item() == plain * 2 + 1 + 4 * 10  # two grid seeds; chapter 4's controls at one seed
    rows = plan.eval_rows(P, source, "A100-80GB")  # fitted to the GPU's memory (eval_batch_size 0)
    assert rows > 64 and val["rows"].item() == rows and val["steps"].item() == math.ceil(896 * 25 / rows) * 20
    # each prompt is read once per batch it lies in, not once per continuation
    assert val["prefill_tokens"].item() == (896 + math.ceil(896 * 25 / rows)) * 48
    mmlu = counts[counts["stage"] == "MMLU"].set_index("model")["tokens"]
    assert mmlu[source] == 14042 * 2 * 120 and mmlu["facebook/opt-6.7b"] == 14042 * 4 * 120  # 1-shot, 3-shot


def test_costs_match_a_hand_computed_roofline():
    counts = pd.DataFrame([
        dict(stage="t", chapter="", model="m", runs=2, kind="train", tokens=1e9, steps=0, rows=0, models_per_step=0,
             bytes_per_parameter=0, prefill_tokens=0, checkpoints=3, kept=1, parallel=4),
        dict(stage="d", chapter="", model="m", runs=1, kind="decode", tokens=0, steps=100, rows=8, models_per_step=1,
             bytes_per_parameter=2, prefill_tokens=1000, checkpoints=0),
    ])
    costs = plan.stage_costs(counts, "A100-80GB", gpus=4, parameter_counts={"m": 1_000_000_000})
    train, decode = costs.iloc[0], costs.iloc[1]
    assert train["gpu_hours"] == pytest.approx(2 * 8 * 1e9 * 1e9 / (312e12 * 0.4) / 3600)
    assert train["peak_gib"] == pytest.approx(16e9 / 4 / 2**30)
    assert train["disk_gib"] == pytest.approx(2 * 3 * 4e9 / 2**30) and train["kept_gib"] == pytest.approx(4e9 / 2**30)
    assert train["wall_hours"] == pytest.approx(train["gpu_hours"] / 4)  # sharded over the 4 GPUs
    # 8 rows of a 1 B model: reading 2 GB at 60% of 2.039 TB/s outlasts 16 GFLOP at half of 312 TFLOP/s
    step = 2e9 / (2.039e12 * 0.6)
    assert decode["gpu_hours"] == pytest.approx((100 * step + 2e9 * 1000 / (312e12 * 0.5)) / 3600)
    assert decode["wall_hours"] == decode["gpu_hours"]  # no parallel column: one GPU at a time
    with pytest.raises(ValueError, match="gpu='V100' is not known"):
        plan.stage_costs(counts, "V100")
    with pytest.raises(ValueError, match="gpus=0 must be at least 1"):
        plan.stage_costs(counts, gpus=0, parameter_counts={"m": 1})


def test_refusals_name_disk_gpu_and_access(tmp_path):
    table = pd.DataFrame([dict(stage="total", disk_gib=100.0, peak_gib=40.0)])
    fine = plan.refusals(table, "A100-80GB", tmp_path, free_disk_gib=500, gpu_memory_gib=[80.0] * 8,
                         access_check=lambda repo: None)
    assert fine == []
    problems = plan.refusals(table, "A100-80GB", tmp_path / "cache", free_disk_gib=50, gpu_memory_gib=[24.0],
                             access_check=lambda repo: "GatedRepoError" if "llama" in repo else None)
    assert len(problems) == 3
    assert problems[0].startswith("disk: 100 GiB of checkpoints planned") and "50 GiB free" in problems[0]
    assert problems[1].startswith("GPU memory: the largest stage needs 40 GiB per GPU")
    assert problems[2] == "access: meta-llama/Llama-2-7b-hf: GatedRepoError"
    no_gpu = plan.refusals(table, "H200", tmp_path, free_disk_gib=500, gpu_memory_gib=[], access_check=lambda r: None)
    assert no_gpu == ["GPU: none found; the plan assumes H200s (CUDA)."]


def test_the_small_profile_is_planned_and_reads_only_its_own_gated_data():
    small = load_profile("small")
    assert plan.gated_repositories(small) == ["toxigen/toxigen-data"]  # no LLaMA-2 among its models
    assert plan.gated_repositories(load_profile("paper")) == list(plan.GATED)
    assert plan.gated_repositories(load_profile("mini")) == []
    counts = plan.stage_counts(small)
    assert set(counts["model"]) == {"openai-community/gpt2", "facebook/opt-125m", "HuggingFaceTB/SmolLM2-135M",
                                    "openai-community/gpt2-large"}
    # the targets get only the chosen UniDetox and Samples settings (no full grid off the paper profile)
    chosen = counts[counts["stage"] == "UniDetox and Samples fine-tuning (chosen, at most)"]
    assert sorted(chosen["model"]) == ["HuggingFaceTB/SmolLM2-135M", "facebook/opt-125m"]
    # the evaluator reads 5 of the 25 continuations of each of 100 validation prompts
    ppl = counts[(counts["stage"] == "evaluation: perplexity (val)")]
    assert (ppl["tokens"] == (100 + math.ceil(500 / 64)) * 48 + 500 * 20).all()  # prompts once per batch
    assert plan.parameters("HuggingFaceTB/SmolLM2-135M") == 134_515_008


def test_rows_that_fit_a_gpu_match_a_hand_computation():
    from unidetox_core.generate import kv_bytes_per_token, rows_that_fit

    xl, falcon, smol = (plan.model_config(n) for n in ("openai-community/gpt2-xl", "tiiuae/falcon-7b",
                                                         "HuggingFaceTB/SmolLM2-135M"))
    assert kv_bytes_per_token(xl) == 2 * 48 * 25 * 64 * 2  # keys and values, 48 layers, 25 heads of 64, bf16
    assert kv_bytes_per_token(falcon) == 2 * 32 * 1 * 64 * 2  # multi-query: one key/value head
    assert kv_bytes_per_token(smol) == 2 * 30 * 3 * 64 * 2  # grouped: 3 key/value heads for 9 query heads
    per_row = 2 * 48 * 25 * 64 * 2 * 68 + 16 * 50257
    assert rows_that_fit(xl, 68, 10 * 2**30) == int(0.8 * 10 * 2**30 // per_row)
    assert rows_that_fit(xl, 68, 0) == 1 and rows_that_fit(xl, 1, 1e15) == 4096


def test_spreading_evaluations_and_pruning_cut_the_paper_plan():
    """Against the code as its cost was first read (one evaluation at a time on the first GPU, 64-row
    batches, every checkpoint kept): the node is held for less than half the GPU-hours, and the disk
    kept once the steps are chosen is a tenth."""
    P = load_profile("paper")
    table = plan.comparison(P).set_index("8 x A100-80GB")
    before, now = table["as first read"], table["now"]
    assert now["GPU-hours held"] < before["GPU-hours held"] / 2
    assert now["GPU-hours of work"] <= before["GPU-hours of work"]
    assert now["GPU-hours held"] == pytest.approx(now["hours on the node"] * 8)
    assert now["disk kept (GiB)"] < before["disk kept (GiB)"] / 10
    costs = plan.plan_table(P)
    fine_tunes = costs[costs["stage"] == "UniDetox and Samples fine-tuning"]
    assert (fine_tunes["wall_hours"] * 8 == fine_tunes["gpu_hours"]).all()  # sharded over the 8 GPUs


def test_measured_rates_replace_the_roofline(tiny_gpt2):
    model, _ = tiny_gpt2
    rates = plan.measure_rates(model, length=16, rows=2, decode_rows=(1, 4), repeats=1)
    assert set(rates) == {"forward", "train", "decode_base", "decode_per_row"}
    assert rates["train"] > rates["forward"] > 0 and rates["decode_base"] >= 0 and rates["decode_per_row"] >= 0
    counts = pd.DataFrame([
        dict(stage="t", chapter="", model="m", runs=2, kind="train", tokens=1000, steps=0, rows=0, models_per_step=0,
             bytes_per_parameter=0, prefill_tokens=0, checkpoints=1),
        dict(stage="d", chapter="", model="m", runs=1, kind="decode", tokens=0, steps=10, rows=8, models_per_step=2,
             bytes_per_parameter=2, prefill_tokens=100, checkpoints=0),
    ])
    fixed = {"m": {"forward": 1e-4, "train": 3e-4, "decode_base": 0.01, "decode_per_row": 0.001}}
    costs = plan.stage_costs(counts, plan.CPU, 1, parameter_counts={"m": 1000}, rates=fixed)
    assert costs.loc[0, "gpu_hours"] == pytest.approx(2 * 3e-4 * 1000 / 3600)
    assert costs.loc[1, "gpu_hours"] == pytest.approx(2 * ((0.01 + 0.001 * 8) * 10 + 1e-4 * 100) / 3600)


def test_the_plan_stands_beside_the_run_log():
    table = pd.DataFrame({"stage": ["toxic model", "evaluation: generate (val)", "evaluation: perplexity (val)", "total"],
                          "gpu_hours": [1.0, 2.0, 1.0, 4.0]})
    runs = pd.DataFrame({"profile": ["smoke"] * 4 + ["mini"], "stage": ["toxic", "eval", "eval", "eval", "eval"],
                         "folder": ["t/a", "e/a", "e/a", "e/b", "e/c"], "seconds": [3600, 100, 7200, 3600, 9e9]})
    out = plan.against_the_run_log(table, runs, "smoke").set_index("stage")
    assert out.loc["toxic", "recorded / planned"] == 1.0
    # e/a computed twice: its last time counts; e/b adds; the mini row is another profile's
    assert out.loc["eval", "recorded hours"] == 3.0 and out.loc["eval", "planned hours"] == 3.0


def test_the_preflight_of_a_paper_run_prints_the_plan_and_refuses(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(plan, "_gpu_memory_gib", lambda: [])
    monkeypatch.setattr(plan, "_hub_access", lambda repo: None)
    P = load_profile("paper", cache_dir=str(tmp_path))
    problems = plan.preflight(P)
    shown = capsys.readouterr().out
    assert "Plan of profile 'paper' on 8 x A100-80GB" in shown and "UniDetox and Samples fine-tuning" in shown
    assert "GPU-hours held" in shown and "as first read" in shown
    assert any(p.startswith("disk: 2758 GiB") for p in problems) and "GPU: none found" in " ".join(problems)
    assert plan.preflight(load_profile("mini")) == []  # the world's models: not this cost model's
    assert plan.preflight(load_profile("smoke")) == [] and "on stand-ins for the hubs" in capsys.readouterr().out
