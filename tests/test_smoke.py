"""The smoke profiles: the paper's (and the small profile's) code path, end to end, on stand-ins for
the hubs. The stand-ins are read through the real loaders -- ``transformers``, ``datasets``,
``detoxify`` -- from a folder laid out as their caches, so every check runs in a fresh process with
``smoke.environment`` set before those libraries are imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from unidetox_core import smoke
from unidetox_core.profiles import _SMOKE_SIZES, PROFILES, load_profile

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

from run_notebooks import chapter_notebooks  # noqa: E402


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    """A cache folder whose ``smoke/hubs`` holds the stand-ins (where the smoke profiles look)."""
    cache = tmp_path_factory.mktemp("smoke") / "cache"
    smoke.build(cache / "smoke" / "hubs")
    return cache


def _run_with_stand_ins(code: str, cache: Path) -> dict:
    """Run ``code`` (which prints one JSON line last) in a fresh Python whose hub reads go to the stand-ins."""
    env = {**os.environ, **smoke.environment(cache / "smoke" / "hubs")}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_smoke_profiles_are_the_hub_profiles_at_tiny_sizes():
    for smoke_name, hub_name in (("smoke", "paper"), ("smoke-small", "small")):
        P, hub, tiny = PROFILES[smoke_name], PROFILES[hub_name], PROFILES["tiny"]
        for key in ("source_model", "target_models", "evaluator_model", "toxicity_scorer", "bias_scorer",
                    "data_source", "toxic_corpus", "eval_prompts", "target_mmlu_shots", "device_map",
                    "targets_full_grid", "eval_batch_size"):
            assert P[key] == hub[key], key
        for key in _SMOKE_SIZES:
            assert P[key] == tiny[key], key
        assert P["hub_stand_ins"] and P["results_dir"] == f"results/{smoke_name}"
    assert PROFILES["paper"]["targets_full_grid"] and not PROFILES["small"]["targets_full_grid"]


def test_stand_ins_load_through_the_real_loaders(cache_dir):
    """Each model id of the paper and small profiles loads as its real architecture class with a
    tokenizer of its scheme; the data sets come back in the hub schemas; Detoxify's release loader and
    PoliticalBiasBERT's hub loader read their stand-ins; the preflight finds everything."""
    got = _run_with_stand_ins("""
        import json
        from unidetox_core import data, models, preflight, scorers, smoke
        from unidetox_core.profiles import load_profile
        out = {"models": {}}
        for repo in smoke.TOKENIZER_OF:
            model, tok = models.load_model(repo, device="cpu")
            out["models"][repo] = [type(model).__name__, tok("a b")["input_ids"][0] == tok.bos_token_id,
                                   tok.eos_token, model.config.hidden_size]
        import datasets
        out["features_match"] = all(
            data.hub_dataset(name, split="test" if name != "dghs" else "train").features == features
            for name, features in smoke.hub_features().items())
        out["dghs"] = len(data.load_dghs_hub())
        prompts = data.load_eval_prompts(dict(load_profile("smoke")), "val")
        out["prompts"] = [len(prompts), sorted(prompts["label"].unique())]
        out["mmlu_dev"] = len(data.load_mmlu_hub("dev"))
        toxicity = scorers.get_toxicity_scorer("detoxify")(["you are nice", "I hate you", "the weather", "xyz"])
        out["toxicity"] = [float(x) for x in toxicity]
        out["bias_shape"] = list(scorers.get_bias_scorer("political_bias_bert")(["taxes", "healthcare"]).shape)
        out["preflight"] = [preflight.missing_sources(dict(load_profile(p))) for p in ("smoke", "smoke-small")]
        print(json.dumps(out))
    """, cache_dir)
    classes = {repo: entry[0] for repo, entry in got["models"].items()}
    assert classes == {
        "openai-community/gpt2-xl": "GPT2LMHeadModel", "openai-community/gpt2": "GPT2LMHeadModel",
        "openai-community/gpt2-large": "GPT2LMHeadModel", "facebook/opt-6.7b": "OPTForCausalLM",
        "facebook/opt-125m": "OPTForCausalLM", "tiiuae/falcon-7b": "FalconForCausalLM",
        "meta-llama/Llama-2-7b-hf": "LlamaForCausalLM", "HuggingFaceTB/SmolLM2-135M": "LlamaForCausalLM"}
    # OPT's and LLaMA's tokenizers put their start token first, GPT-2's, Falcon's and SmolLM2's do not
    starts = {repo: entry[1] for repo, entry in got["models"].items()}
    assert {r for r, s in starts.items() if s} == {"facebook/opt-6.7b", "facebook/opt-125m", "meta-llama/Llama-2-7b-hf"}
    assert all(entry[3] == smoke.TINY["width"] for entry in got["models"].values())
    assert got["features_match"]
    assert got["dghs"] > 100 and got["prompts"][0] == 16 and got["prompts"][1] == ["hate", "neutral"]
    assert got["mmlu_dev"] == 285  # 5 questions of each of the 57 subjects
    scores = got["toxicity"]
    assert all(0 <= s <= 1 for s in scores) and max(scores) - min(scores) > 0.1  # they vary from text to text
    assert got["bias_shape"] == [2, 3]
    assert got["preflight"] == [[], []]


def test_a_smoke_run_without_stand_ins_says_how_to_build_them(tmp_path):
    values = dict(load_profile("smoke", cache_dir=str(tmp_path)))
    with pytest.raises(FileNotFoundError, match="make world PROFILE=smoke"):
        smoke.activate(values, ROOT)
    assert smoke.activate(dict(load_profile("tiny")), ROOT) == {}


@pytest.mark.slow
@pytest.mark.parametrize("profile", ["smoke", "smoke-small"])
def test_every_chapter_runs_through_the_hub_profiles_code_path(profile, cache_dir, tmp_path):
    results = tmp_path / "results"
    command = [sys.executable, "tools/run_notebooks.py", "--profile", profile,
               "-p", "cache_dir", str(cache_dir), "-p", "results_dir", str(results)]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1500)
    print(run.stdout[-3000:], run.stderr[-3000:], sep="\n")
    assert run.returncode == 0, run.stderr[-3000:]
    for chapter in chapter_notebooks(ROOT):
        nb = nbformat.read(results / "notebooks" / Path(chapter).name, as_version=4)
        errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
        assert not errors, f"{chapter}: {errors[0]['ename']}: {errors[0]['evalue']}"
    # the hub profile's branches ran: Detoxify scored, ToxiGen annotated prompted, the paper's MMLU shots
    selected = pd.read_csv(results / "selected.csv")
    assert set(selected["model"]) >= set(load_profile(profile)["target_models"])
    across = pd.read_csv(results / "results_across_models.csv")
    assert set(across["model"]) >= set(load_profile(profile)["target_models"])
