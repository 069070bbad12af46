"""The experiment stages the chapters call by results name: method_variant, evaluate_method,
steering_matrix, continuations. Tiny random models and a handful of prompts, so each test takes
seconds; they need the data mirror (prompts, toxic corpus)."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from unidetox_core import baselines as B
from unidetox_core import cache
from unidetox_core import experiments as E
from unidetox_core.profiles import load_profile


@pytest.fixture()
def P(tmp_path, mirror, tiny_gpt2_path):
    """The tiny profile on a random tiny GPT-2, judged by itself, with a very small evaluation."""
    return load_profile(
        "tiny", cache_dir=str(tmp_path / "cache"), results_dir=str(tmp_path / "results"),
        source_model=str(tiny_gpt2_path), target_models=[], evaluator_model=str(tiny_gpt2_path),
        toxicity_scorer="profanity_check", second_toxicity_scorer="profanity_check",
        n_val_prompts=6, eval_n_continuations=2, eval_max_new_tokens=3, toxic_max_texts=16, lmsteer_steps=2,
    )


def test_method_variant_maps_results_names_to_variants(P):
    model = P["source_model"]
    assert E.method_variant(P, B.BASE, model)["method"] == "base"
    short = E.method_variant(P, B.PREPROMPT_SHORT, model)
    assert (short["method"], short["hparam"], short["value"]) == (B.PREPROMPT_SHORT, "", None)
    assert E.method_variant(P, B.PREPROMPT_LONG, model)["method"] == B.PREPROMPT_LONG
    with pytest.raises(ValueError, match="unknown"):
        E.method_variant(P, "lm_steer_typo", model)
    with pytest.raises(ValueError, match="lr="):
        E.method_variant(P, B.UNIDETOX, model, 2)
    with pytest.raises(ValueError, match="value="):
        E.method_variant(P, B.DEXPERTS, model)


def test_steering_matrix_is_trained_once_and_cached(P, monkeypatch):
    path = E.steering_matrix(P, P["source_model"], progress=False)
    W = B.load_steering_matrix(path)
    d = E._load_cached(P["source_model"])[0].get_output_embeddings().weight.shape[1]
    assert W.shape == (d, d) and torch.isfinite(W).all()
    monkeypatch.setattr(B, "train_lm_steer", lambda *a, **k: pytest.fail("retrained a cached matrix"))
    assert E.steering_matrix(P, P["source_model"], progress=False) == path


def dead_pid() -> int:
    """The process id of a process that has ended."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_evaluate_method_names_rows_for_the_tuning_rule(P):
    model = P["source_model"]
    base = E.evaluate_method(P, B.BASE, model)
    assert base["method"] == B.BASE and base["hparam"] == "" and math.isnan(base["value"]) and math.isnan(base["lr"])
    assert base["TP"] == base["TP_all"] and base["EMT"] == base["EMT_all"]
    steer = E.evaluate_method(P, B.LMSTEER, model, -1.0)
    assert (steer["method"], steer["hparam"], steer["value"]) == (B.LMSTEER, "epsilon_multiplier", -1.0)
    pre = E.evaluate_method(P, B.PREPROMPT_SHORT, model)
    assert pre["method"] == B.PREPROMPT_SHORT and math.isnan(pre["value"])
    # The continuations behind a row are the cached ones, one per prompt and sample.
    frame = E.continuations(P, E.method_variant(P, B.BASE, model))
    n_prompts = len(E.eval_prompts(P, "val"))  # stratified: at least one prompt per category
    assert len(frame) == n_prompts * 2 and frame["sample"].isin([0, 1]).all() and {"prompt_id", "continuation", "score", "score2", "ppl"} <= set(frame.columns)
    table = E.continuations_path(P, E.method_variant(P, B.BASE, model))
    assert table.exists()
    # A process killed between renaming the table into place and removing its temporary leaves the
    # temporary behind; reusing the finished table removes it (the process is gone), keeps the row.
    leftover = table.parent / f".{table.name}.{cache._HOST}-{dead_pid()}-abc123.tmp"
    leftover.mkdir()
    again = E.evaluate_method(P, B.BASE, model)
    assert (again["TP"], again["EMT"], again["PPL"]) == (base["TP"], base["EMT"], base["PPL"]) and not leftover.exists()
    # The grid rows feed baselines' selection directly.
    import pandas as pd

    rows = pd.DataFrame([base, steer, E.evaluate_method(P, B.LMSTEER, model, -2.0)])
    chosen = B.select_baseline(rows, B.LMSTEER, model, ppl_ceiling=float("inf"))
    assert chosen["value"] in (-1.0, -2.0) and bool(chosen["meets_ppl_rule"])


def test_mmlu_applies_the_preprompt_and_dexperts(P, tiny_gpt2_toxic_path):
    """The pre-prompted variant is the base model with the pre-prompt before every MMLU prompt, the
    DExperts one the base model scored against the toxic model; both are reported, not left out."""
    import json

    import pandas as pd

    from unidetox_core import metrics

    model = P["source_model"]
    test, dev = E._mmlu_questions(json.dumps(dict(P), sort_keys=True, default=str))
    base_model, tokenizer = E._load_cached(model)
    anti_expert, _ = E._load_cached(str(tiny_gpt2_toxic_path))
    dexperts = E.variant("dexperts", model, E.resolve_model(P, model), "beta", 1.0, toxic=str(tiny_gpt2_toxic_path))
    for spec, applied in ((E.method_variant(P, B.PREPROMPT_SHORT, model), dict(prefix=B.SAFETY_PREPROMPTS["short"])),
                          (dexperts, dict(anti_expert=anti_expert, beta=1.0))):
        result = E.mmlu(P, spec, progress=False)
        direct = metrics.mmlu_accuracy(base_model, tokenizer, test, dev, k_shot=P["mmlu_shots"], **applied)
        assert math.isfinite(result["acc_normalized"]) and result["n_questions"] == len(test)
        assert (result["acc_normalized"], result["acc_unnormalized"]) == (direct["acc_normalized"], direct["acc_unnormalized"])
    settings = pd.DataFrame({"method": [B.BASE, B.PREPROMPT_LONG], "model": model, "value": math.nan, "lr": math.nan,
                             "label": ["Base model", "PrePrompt Long"]})
    assert E.mmlu_settings(P, settings, progress=False)["MMLU"].notna().all()


def test_perplexity_on_the_first_samples_of_each_prompt(P):
    """eval_ppl_samples=k scores only samples 0..k-1 of each prompt; PPL is their mean, the same
    continuations (same seed) scored in full give the same values on those rows."""
    import numpy as np
    import pandas as pd

    from unidetox_core.profiles import load_profile

    full = {**P, "eval_n_continuations": 3}
    subset = load_profile("tiny", **{k: v for k, v in full.items() if k != "profile"} | {"eval_ppl_samples": 1})
    spec = E.method_variant(full, B.BASE, P["source_model"])
    row_full, row_sub = E.evaluate(full, spec), E.evaluate(subset, spec)
    assert E.continuations_path(full, spec) != E.continuations_path(subset, spec)  # a separate cache entry
    a, b = E.continuations(full, spec), E.continuations(subset, spec)
    assert (a["continuation"] == b["continuation"]).all() and (a["score"] == b["score"]).all()
    first = b["sample"] == 0
    ppl_a, ppl_b = (pd.to_numeric(f["ppl"], errors="coerce") for f in (a, b))  # the CSV holds NaN as ""
    assert ppl_b[~first].isna().all() and ppl_a.notna().sum() > ppl_b.notna().sum()
    np.testing.assert_allclose(ppl_b[first], ppl_a[first], rtol=1e-5)
    kept = ppl_a[first]
    kept = kept[kept < P["ppl_drop_threshold"]]
    assert row_sub["PPL"] == pytest.approx(kept.mean(), rel=1e-5)
    assert row_sub["ppl_rows"] == first.sum() and row_full["ppl_rows"] == len(a)
    assert row_sub["dist_1"] == row_full["dist_1"] and row_sub["TP_all"] == row_full["TP_all"]


def test_evaluations_side_by_side_equal_one_after_the_other(P, tmp_path):
    """Two worker processes give the same rows, in the order asked, as evaluating here one after the
    other with the same thread count; the fixed thread count joins the cache key, the number of
    workers does not (nor the results folder's record)."""
    import pandas as pd

    from unidetox_core.profiles import load_profile, results_record

    model = P["source_model"]
    jobs = [(B.PREPROMPT_SHORT, model, None, None, "val", 0), (B.BASE, model, None, None, "val", 1),
            (B.BASE, model, None, None, "val", 0), (B.BASE, model, None, None, "val", 1)]  # one repeated
    settings = {k: v for k, v in P.items() if k != "profile"} | {"eval_threads": 1}
    serial = load_profile("tiny", **settings | {"cache_dir": str(tmp_path / "serial"), "eval_workers": 1})
    pooled = load_profile("tiny", **settings | {"cache_dir": str(tmp_path / "pooled"), "eval_workers": 2})
    one, two = E.evaluate_methods(serial, jobs, progress=False), E.evaluate_methods(pooled, jobs, progress=False)
    assert [(r["method"], r["seed"]) for r in two] == [(j[0], j[5]) for j in jobs]
    pd.testing.assert_frame_equal(pd.DataFrame(one), pd.DataFrame(two))
    spec = E.method_variant(serial, B.BASE, model)
    assert E.continuations_path(serial, spec).name == "continuations.csv"
    assert E.continuations_path(serial, spec).parent.name == E.continuations_path(pooled, spec).parent.name
    assert E.continuations_path(serial, spec).parent.name != E.continuations_path({**serial, "eval_threads": 0}, spec).parent.name
    assert "eval_workers" not in results_record(pooled)["settings"]


def test_distillations_side_by_side_equal_one_after_the_other(P, tmp_path):
    """``distilled_texts`` in two worker processes writes the same texts, in the order asked, as
    ``distilled_text`` here one after the other with the same thread count; the toxic model is made
    once, before the workers start; the thread count joins the text's key."""
    from unidetox_core.profiles import load_profile

    settings = {k: v for k, v in P.items() if k != "profile"} | {"eval_threads": 1, "distill_n_texts": 4,
                                                                "distill_max_new_tokens": 5, "distill_batch_size": 2}
    serial = load_profile("tiny", **settings | {"cache_dir": str(tmp_path / "serial"), "eval_workers": 1})
    pooled = load_profile("tiny", **settings | {"cache_dir": str(tmp_path / "pooled"), "eval_workers": 2})
    jobs = [dict(kind="unidetox"), dict(kind="samples", seed=1), dict(kind="cut_only"), dict(kind="unidetox")]
    made = E.distilled_texts(pooled, jobs, progress=False)
    one_by_one = [E.distilled_text(serial, progress=False, **job) for job in jobs]
    assert made[0] == made[3] and len(set(made)) == 3
    assert [E.read_texts(path) for path in made] == [E.read_texts(path) for path in one_by_one]
    assert len(list((tmp_path / "pooled" / "toxic").iterdir())) == 1
    assert E.distilled_text({**serial, "eval_threads": 0}, progress=False).parent.name != one_by_one[0].parent.name


def test_side_by_side_failure_names_the_cause(P):
    with pytest.raises(ValueError, match="seed"):
        E.evaluate_specs({**P, "eval_workers": 2}, [(E.method_variant(P, B.BASE, P["source_model"]), "val", 0),
                                                   (E.method_variant(P, B.BASE, P["source_model"]), "val", -1)],
                         progress=False)


def test_bf16_evaluation_has_its_own_keys_and_gives_a_full_row(P, monkeypatch):
    """``eval_bf16`` (the mini profile's CPU setting) changes what an evaluation and an MMLU run
    compute on a CPU with native bf16, so it joins both keys; the evaluation still gives every metric.
    A CPU without it evaluates in float32, under float32's keys."""
    from unidetox_core import forward

    spec = E.method_variant(P, B.BASE, P["source_model"])
    bf16 = {**P, "eval_bf16": True}
    monkeypatch.setattr(forward, "cpu_bf16_native", lambda: False)
    assert not E.eval_bf16(bf16) and E.continuations_path(bf16, spec) == E.continuations_path(P, spec)
    monkeypatch.setattr(forward, "cpu_bf16_native", lambda: True)
    assert E.eval_bf16(bf16)
    assert E.continuations_path(bf16, spec).parent.name != E.continuations_path(P, spec).parent.name
    assert E.mmlu_path(bf16, spec).parent.name != E.mmlu_path(P, spec).parent.name
    row = E.evaluate(bf16, spec, "val", 0, progress=False)
    assert 0.0 <= row["TP_all"] <= 1.0 and row["ppl_rows"] > 0 and 0.0 < row["dist_1"] <= 1.0


def test_pruning_keeps_the_chosen_checkpoints_only(tmp_path, monkeypatch):
    """After the steps are chosen, every other step folder of the fine-tuning runs goes, with the kept
    ones' optimizer states and the finished toxic models' resume points; the run is marked pruned
    (``detox_checkpoints`` then trains it no more), and loading a pruned checkpoint says what happened."""
    import pandas as pd

    from unidetox_core import experiments as E, finetune
    from unidetox_core.profiles import load_profile

    P = dict(load_profile("tiny", cache_dir=str(tmp_path), detox_steps=[1, 2, 3]))
    run = tmp_path / "detox" / "gpt2-unidetox-abc"
    for step in (1, 2, 3):
        (run / f"step-{step}").mkdir(parents=True)
        (run / f"step-{step}" / "config.json").write_text("{}")
        (run / f"step-{step}" / "model.safetensors").write_bytes(b"0" * 1000)
    (run / "step-3" / finetune.TRAINING_STATE).write_bytes(b"0" * 2000)
    (run / "manifest.json").write_text('{"profile": "tiny"}')
    other = tmp_path / "detox" / "gpt2-unidetox-of-another-profile"  # made by the mini profile: not ours
    (other / "step-1").mkdir(parents=True)
    (other / "manifest.json").write_text('{"profile": "mini"}')
    toxic = tmp_path / "toxic" / "gpt2-xyz"
    (toxic / "final").mkdir(parents=True)
    (toxic / "final" / "config.json").write_text("{}")
    (toxic / "checkpoints" / "step-5").mkdir(parents=True)
    (toxic / "checkpoints" / "step-5" / "model.safetensors").write_bytes(b"0" * 500)
    (toxic / "manifest.json").write_text('{"profile": "tiny"}')
    chosen = run / "step-2"
    monkeypatch.setattr(E, "method_variant", lambda P, method, model, value, lr, progress=True: {"checkpoint": str(chosen)})
    selected = pd.DataFrame([{"method": "unidetox", "model": "m", "value": 2, "lr": 1e-3},
                             {"method": "lmsteer", "model": "m", "value": -1.0, "lr": float("nan")}])
    out = E.prune_checkpoints(P, selected)
    assert out["kept"] == [str(chosen)] and out["freed_gib"] == pytest.approx((1002 + 3002 + 500) / 1024**3)  # step-1, step-3 with its state, toxic
    assert sorted(p.name for p in run.iterdir() if p.name.startswith("step-")) == ["step-2"]
    assert not (toxic / "checkpoints").exists() and (toxic / "final" / "config.json").exists()
    assert (run / E.PRUNED).exists()
    assert (other / "step-1").exists() and not (other / E.PRUNED).exists()
    with pytest.raises(FileNotFoundError, match="was pruned once the steps were chosen"):
        E.check_not_pruned(run / "step-3")
    E.check_not_pruned(chosen)  # kept: no complaint


def test_each_worker_process_sees_a_gpu_of_its_own(monkeypatch):
    """On a GPU machine the i-th worker started sees only GPU i mod n (``CUDA_VISIBLE_DEVICES``), so
    side-by-side evaluations spread over the GPUs instead of stacking on the first."""
    import multiprocessing
    import os

    from unidetox_core import stages

    started = multiprocessing.get_context("spawn").Value("i", 0)
    seen = []
    for _ in range(3):
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        stages._worker_start(1, 2, ["2", "5"], started)
        seen.append(os.environ.get("CUDA_VISIBLE_DEVICES"))
    assert seen == ["2", "5", "2"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    stages._worker_start(1, 2, [], started)  # a CPU machine: nothing to pin
    assert "CUDA_VISIBLE_DEVICES" not in os.environ
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")
    if torch.cuda.is_available():
        assert stages.gpu_ids() == ["4", "6"]
    else:
        assert stages.gpu_ids() == []
