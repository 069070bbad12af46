"""Reliability: bad input, interruption at random points, determinism, and the paper profile offline.

- **Bad input.** One test per row of the "Bad input" table in README.md that is not tested
  elsewhere (the table names the test of every row). Each asserts one clear message that names
  the parameter and a fix, raised before any heavy work, and no partial file.
- **Interruption.** Fine-tuning, distillation, an evaluation grid and the notebook chain run in a
  child process that is killed with SIGKILL at a seeded random point of its work; the stage is
  then run again here. It must resume from the last complete unit, never read a half-written file
  and end with the bytes of an uninterrupted run. ``UNIDETOX_KILL_CASES`` (default 2) sets how many
  random points each stage gets, ``UNIDETOX_KILL_SEED`` (default 0) which ones.
- **Determinism.** The stages toxic model -> distilled text -> detox checkpoints -> evaluations run
  twice on the tiny profile in two cache folders and give byte-identical files and result CSVs.
- **Offline.** With ``HF_HUB_OFFLINE=1`` a hub model, a hub data set and Detoxify fail at once with
  a message naming what is missing and how to provide it, and the notebook runner stops the paper
  profile before running anything, printing the message without a stack trace.

The stage tests use the tiny profile with the session's tiny test models in place of the world
models (``world:...`` would first build the tiny world, ~30 s, which ``test_world`` covers) and
``profanity_check`` as both toxicity scorers; everything else is the profile's code path.
"""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import nbformat
import pandas as pd
import pytest
import torch

from unidetox_core import cache, data, distill, experiments, finetune, models, profiles, scorers

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
sys.path.insert(0, str(ROOT / "tools"))
import run_notebooks  # noqa: E402

KILL_CASES = int(os.environ.get("UNIDETOX_KILL_CASES", "2"))
KILL_SEED = int(os.environ.get("UNIDETOX_KILL_SEED", "0"))
FORK = multiprocessing.get_context("fork")
needs_data = pytest.mark.skipif(
    not (data.RAW_DIR / "toxigen").exists() or not (data.RAW_DIR / "hate_offensive").exists(),
    reason="data/raw is not fetched (python -m unidetox_core.data fetch)",
)


def leftovers(folder: Path) -> list[Path]:
    """Temporaries (``.name.host-pid-xxxx.tmp`` of ``cache.atomic_path``, ``*.tmp``) under ``folder``."""
    return [p for p in Path(folder).rglob("*") if p.name.endswith(".tmp")]


# ================================================================================ profile values
def tiny_values(tmp: Path, models_: dict, **overrides) -> dict:
    """The tiny profile with the session's test models and offline scorers, writing under ``tmp``."""
    return profiles.load_profile(
        "tiny", source_model=str(models_["gpt2"]), target_models=[str(models_["opt"])],
        evaluator_model=str(models_["evaluator"]), second_toxicity_scorer="profanity_check",
        cache_dir=str(tmp / "cache"), results_dir=str(tmp / "results"), **overrides)


@pytest.fixture(scope="module")
def test_models(tiny_gpt2_path, tiny_opt_path, tiny_llama_path) -> dict:
    # The evaluator has another tokenizer than the evaluated models, as LLaMA-2 has in the paper.
    return {"gpt2": tiny_gpt2_path, "opt": tiny_opt_path, "evaluator": tiny_llama_path}


# ====================================================================================== bad input
def test_bad_input_catalogue_in_the_readme_names_existing_tests():
    """The README's "Bad input" table has at least 15 rows, and every test it names exists."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("### Bad input"):]
    section = section[: section.index("\n## ")]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| case")]
    assert len(rows) >= 15
    for row in rows:
        module = None
        references = re.findall(r"`([^`]+)`", row.rstrip(" |").rsplit(" | ", 1)[-1])
        assert references, row
        for reference in references:
            if not reference.startswith("::"):
                module, reference = reference.split("::")
            source = (ROOT / "tests" / f"{module}.py").read_text(encoding="utf-8")
            assert f"def {reference.lstrip(':')}(" in source, (module, reference)


@pytest.mark.parametrize(
    "setting, value, message",
    [
        ("distill_alpha", 1.5, r"'distill_alpha' must lie in \[0, 1\]"),
        ("distill_alpha", -0.1, r"'distill_alpha' must lie in \[0, 1\]"),
        ("detox_steps", [0, 2], "'detox_steps' must be a non-empty list of positive step counts"),
        ("detox_steps", [], "'detox_steps' must be a non-empty list"),
        ("toxic_max_length", 0, "'toxic_max_length' must be a positive integer"),
        ("distill_max_new_tokens", -4, "'distill_max_new_tokens' must be a positive integer"),
        ("eval_batch_size", -1, r"'eval_batch_size' must be an integer >= 0 \(rows per decoding batch; 0 = as many as fit"),
        ("detox_batch_size", -8, "'detox_batch_size' must be a positive integer"),
        ("seeds", [-1], "'seeds' must be a non-empty list of distinct integers >= 0"),
        ("seeds", [], "'seeds' must be a non-empty list"),
        ("seeds", [0, 0], "'seeds' must be a non-empty list of distinct"),
        ("detox_lrs", [0.0], "'detox_lrs' must be a non-empty list of positive learning rates"),
        ("toxic_lr", -1e-5, "'toxic_lr' must be a positive number"),
        ("eval_top_p", 0.0, r"'eval_top_p' must lie in \(0, 1\]"),
        ("n_val_prompts", -1, "'n_val_prompts' must be an integer >= 0"),
        ("data_source", "web", "'data_source' must be 'hub' .* or 'mirror'"),
    ],
)
def test_profile_values_out_of_range_are_named_before_anything_runs(setting, value, message):
    with pytest.raises(profiles.ProfileError, match=message):
        profiles.load_profile("tiny", **{setting: value})


def test_shipped_profiles_are_in_range_and_the_runner_checks_ranges(tmp_path):
    for name in profiles.PROFILES:
        profiles.check_values(profiles.load_profile(name))
    chain = tmp_path / "chain"
    shutil.copytree(FIXTURES / "chain", chain)
    with pytest.raises(SystemExit, match=r"Bad parameter: parameter 'distill_alpha' must lie in \[0, 1\]"):
        run_notebooks.run_notebooks(chain, profile="tiny", overrides={"distill_alpha": 1.5})
    assert not (chain / "results").exists()  # stopped before anything was written


def test_unknown_profile_on_the_command_line_is_one_line_without_traceback(tmp_path):
    chain = tmp_path / "chain"
    shutil.copytree(FIXTURES / "chain", chain)
    with pytest.raises(SystemExit) as stop:
        run_notebooks.main(["--root", str(chain), "--profile", "huge"])
    assert re.fullmatch(r"Bad parameter: profile='huge' is unknown; use one of \['mini', 'paper', 'small', 'smoke', 'smoke-small', 'tiny'\].*",
                        str(stop.value.code))


def test_distilled_text_checks_alpha_before_training_the_toxic_model(tmp_path, test_models, monkeypatch):
    P = tiny_values(tmp_path, test_models)
    monkeypatch.setattr(experiments, "toxic_model", lambda *a, **k: pytest.fail("trained the toxic model first"))
    with pytest.raises(ValueError, match=r"alpha=1.5 must lie in \[0, 1\]"):
        experiments.distilled_text(P, alpha=1.5, progress=False)
    with pytest.raises(ValueError, match="seed='x' must be an integer"):
        experiments.distilled_text(P, "samples", seed="x", progress=False)
    assert not (tmp_path / "cache").exists()


def test_detox_checkpoints_reject_a_bad_learning_rate_before_loading(tmp_path, test_models, monkeypatch):
    P = tiny_values(tmp_path, test_models)
    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("loaded a model first"))
    for lr in (0, -1e-3, float("nan")):
        with pytest.raises(ValueError, match=f"lr={lr!r} must be a positive number"):
            experiments.detox_checkpoints(P, P["target_models"][0], tmp_path / "texts.csv", lr, progress=False)


@needs_data
def test_evaluation_without_prompts_or_with_a_bad_seed_fails_before_loading(tmp_path, test_models, monkeypatch):
    P = tiny_values(tmp_path, test_models)
    spec = experiments.variant("base", P["target_models"][0], P["target_models"][0])
    monkeypatch.setattr(experiments, "build_variant", lambda *a, **k: pytest.fail("loaded a model first"))
    with pytest.raises(ValueError, match="split='validation' selects no evaluation prompts.*use 'val' or 'test'"):
        experiments.evaluate(P, spec, split="validation", progress=False)
    with pytest.raises(ValueError, match=r"seed=-1 must be an integer >= 0 \(the profile's seeds: \[0, 1\]\)"):
        experiments.evaluate(P, spec, seed=-1, progress=False)
    assert not (tmp_path / "cache").exists()


def test_model_folder_missing_its_tokenizer_or_weights(tmp_path, tiny_gpt2_path, tiny_gpt2_toxic_path):
    no_tokenizer = tmp_path / "no-tokenizer"
    shutil.copytree(tiny_gpt2_path, no_tokenizer)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (no_tokenizer / name).unlink()
    with pytest.raises(models.ModelNotFoundError, match=r"base_path='.*no-tokenizer' lacks tokenizer files .*save_model"):
        distill.run_distillation(no_tokenizer, tiny_gpt2_toxic_path, tmp_path / "out.csv", n_texts=1,
                                 max_new_tokens=1, progress=False)
    no_weights = tmp_path / "no-weights"
    shutil.copytree(tiny_gpt2_path, no_weights)
    for path in no_weights.glob("*.safetensors"):
        path.unlink()
    with pytest.raises(models.ModelNotFoundError, match=r"toxic_path='.*no-weights' lacks model weights"):
        distill.run_distillation(tiny_gpt2_path, no_weights, tmp_path / "out.csv", n_texts=1, max_new_tokens=1,
                                 progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["no-tokenizer", "no-weights"]  # nothing written


def test_tokenizer_mismatch_between_model_folders_leaves_no_file(tmp_path, tiny_gpt2_path, tiny_llama_path):
    out = tmp_path / "texts.csv"
    with pytest.raises(ValueError, match="different tokenizers.*Fine-tune the toxic model from the base model"):
        distill.run_distillation(tiny_gpt2_path, tiny_llama_path, out, n_texts=2, max_new_tokens=2, progress=False)
    assert list(tmp_path.iterdir()) == []  # neither the CSV nor a batch folder


# --------------------------------------------------------------------------- notebook parameters
def work_chain(tmp_path: Path, pause: float = 0.0) -> Path:
    """The fixture chain, copied, with a typed parameter and two chapters that write result CSVs
    (the second reads the first's) through ``for_notebook`` and ``write_csv_atomic``, as the book's
    chapters do; ``pause`` seconds inside each widen the window a kill can hit."""
    root = tmp_path / "chain"
    shutil.copytree(FIXTURES / "chain", root)
    first = nbformat.read(root / "notebooks/first.ipynb", as_version=4)
    first.cells[1].source = 'profile = "mini"\nresults_dir = None\nrepeat = 2'
    first.cells[2].source = (
        "import time\nfrom pathlib import Path\nimport numpy as np, pandas as pd\n"
        "from unidetox_core.profiles import for_notebook\nfrom unidetox_core.cache import write_csv_atomic\n"
        "P = for_notebook(profile, results_dir=results_dir)\n"
        "rng = np.random.default_rng(P['seeds'][-1])\n"
        "frame = pd.DataFrame({'x': rng.normal(size=40 * repeat)})\n"
        f"time.sleep({pause})\n"
        "write_csv_atomic(frame, Path(P['results_dir']) / 'first.csv')\n"
        "print('first ran with', profile)")
    nbformat.write(first, root / "notebooks/first.ipynb")
    second = nbformat.read(root / "notebooks/second.ipynb", as_version=4)
    second.cells[1].source = 'profile = "mini"\nresults_dir = None'
    second.cells[2].source = (
        "import time\nfrom pathlib import Path\nimport pandas as pd\n"
        "from unidetox_core.profiles import for_notebook\nfrom unidetox_core.cache import write_csv_atomic\n"
        "P = for_notebook(profile, results_dir=results_dir)\n"
        "frame = pd.read_csv(Path(P['results_dir']) / 'first.csv')\n"
        f"time.sleep({pause})\n"
        "write_csv_atomic(frame.cumsum() / 3, Path(P['results_dir']) / 'second.csv')\n"
        "print('second ran with', profile)")
    second.metadata["unidetox"] = {"inputs": ["{results_dir}/first.csv"]}
    nbformat.write(second, root / "notebooks/second.ipynb")
    return root


def test_unknown_notebook_parameter_is_named_with_what_would_work(tmp_path):
    chain = work_chain(tmp_path)
    with pytest.raises(SystemExit) as stop:
        run_notebooks.run_notebooks(chain, profile="tiny", overrides={"repaet": 3})
    message = str(stop.value.code)
    assert "-p repaet is neither a setting of the 'tiny' profile nor a parameter of the notebooks" in message
    assert "Did you mean 'repeat'?" in message and "Their own parameters: repeat" in message
    with pytest.raises(SystemExit, match="-p distil_alpha .* Did you mean 'distill_alpha'"):
        run_notebooks.run_notebooks(chain, profile="tiny", overrides={"distil_alpha": 0.1})
    # only the notebooks that run count: --only second does not take first's parameter
    with pytest.raises(SystemExit, match="-p repeat is neither"):
        run_notebooks.run_notebooks(chain, profile="tiny", overrides={"repeat": 3}, only=["second"])
    assert not (chain / "results").exists()  # nothing ran, nothing was claimed


def test_notebook_parameter_of_the_wrong_type_is_named_with_its_default(tmp_path):
    chain = work_chain(tmp_path)
    overrides = run_notebooks.parse_overrides([["repeat", "many"]])
    with pytest.raises(SystemExit, match=r"Bad parameter: parameter 'repeat' must be int \(like 2\), got str 'many' "
                                         r"\(its default in the parameters cell of notebooks/first.ipynb\)"):
        run_notebooks.run_notebooks(chain, profile="tiny", overrides=overrides)
    assert not (chain / "results").exists()
    # a dry run reports the same problem and goes on saying what would run
    outcomes = run_notebooks.run_notebooks(chain, profile="tiny", overrides=overrides, dry_run=True)
    assert [o for _, o in outcomes] == ["would run", "would run"]


# ---------------------------------------------------------------- results of another configuration
def test_results_folder_of_another_configuration_is_refused(tmp_path, monkeypatch):
    folder = tmp_path / "results"
    values = profiles.for_notebook("tiny", results_dir=str(folder))
    record = json.loads((folder / "profile.json").read_text())
    assert record["profile"] == "tiny" and record["overrides"] == {} and "results_dir" not in record["settings"]
    assert profiles.for_notebook("tiny", results_dir=str(folder), cache_dir=str(tmp_path / "c"))  # where, not what

    with pytest.raises(profiles.ProfileError) as refused:
        profiles.for_notebook("tiny", results_dir=str(folder), seeds=[0])
    message = str(refused.value)
    assert f"results_dir='{folder}' holds results of another configuration" in message
    assert "differs in seeds: [0, 1] -> [0]" in message and f"results_dir='{folder}-seeds-0'" in message
    with pytest.raises(profiles.ProfileError, match="differs in profile: 'tiny' -> 'mini'"):
        profiles.for_notebook("mini", results_dir=str(folder))

    # The same overrides may write again; so may the profile after its defaults changed in the code
    # (the chapters rerun then anyway): the record follows.
    other = tmp_path / "other"
    profiles.for_notebook("tiny", results_dir=str(other), seeds=[0])
    profiles.for_notebook("tiny", results_dir=str(other), seeds=[0])
    monkeypatch.setitem(profiles.PROFILES, "tiny", profiles.Profile(**{**profiles.PROFILES["tiny"], "eval_top_p": 0.8}))
    profiles.for_notebook("tiny", results_dir=str(folder))
    assert json.loads((folder / "profile.json").read_text())["settings"]["eval_top_p"] == 0.8
    assert values["results_dir"] == str(folder)


def test_runner_refuses_another_configuration_before_running(tmp_path):
    chain = work_chain(tmp_path)
    results = chain / "results" / "tiny"
    profiles.check_results_dir(profiles.load_profile("tiny"), results)  # as a first run would leave it
    with pytest.raises(SystemExit, match=r"differs in seeds: \[0, 1\] -> \[0\]\. Write these results elsewhere: "
                                         r"pass results_dir='.*tiny-seeds-0' \(papermill: -p results_dir"):
        run_notebooks.run_notebooks(chain, profile="tiny", overrides={"seeds": [0]})
    assert sorted(p.name for p in results.iterdir()) == ["profile.json"]  # no notebook ran


def test_committed_results_folders_accept_their_own_profile():
    """The mini results in the repository stay valid: a run of their profile is not refused."""
    for record in sorted((ROOT / "results").glob("*/profile.json")):
        values = profiles.load_profile(json.loads(record.read_text())["profile"])
        profiles.check_results_dir(values, record.parent, record=False)


# ------------------------------------------------------------------------------------ disk full
def test_disk_full_while_writing_a_checkpoint_is_named_and_leaves_nothing(tiny_gpt2_path, corpus, tmp_path,
                                                                          monkeypatch):
    model, tok = models.load_model(str(tiny_gpt2_path), device="cpu")
    kw = dict(lr=1e-3, batch_size=4, steps=4, max_length=32, seed=0, progress=False, save_steps=(2, 4),
              output_dir=tmp_path / "run")
    real_save = torch.save
    saves = []

    def full_disk(obj, f, *args, **kwargs):  # the second checkpoint's training state hits a full disk
        saves.append(str(f))
        if len(saves) == 2:
            Path(f).write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(cache.DiskFullError) as full:
        finetune.finetune(model, tok, corpus[:16], **kw)
    message = str(full.value)
    assert full.value.errno == errno.ENOSPC and isinstance(full.value, OSError)
    assert f"No space left on device while writing {tmp_path / 'run' / 'step-4'}" in message
    assert "point cache_dir / results_dir" in message and "finished steps are kept" in message
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["step-2"]  # no step-4, no temporary

    monkeypatch.setattr(torch, "save", real_save)  # space freed: the rerun resumes from step 2
    model, tok = models.load_model(str(tiny_gpt2_path), device="cpu")
    assert finetune.finetune(model, tok, corpus[:16], **kw)["resumed_from"] == 2
    assert leftovers(tmp_path / "run") == []

    # the same for a whole save_pretrained folder (models.save_model, world models, detox checkpoints)
    monkeypatch.setattr(type(model), "save_pretrained",
                        lambda self, path, **k: (Path(path).mkdir(), (Path(path) / "model.safetensors").write_bytes(b"x"),
                                                 _raise_enospc()))
    with pytest.raises(cache.DiskFullError, match="while writing .*saved"):
        models.save_model(model, tok, tmp_path / "saved")
    assert not (tmp_path / "saved").exists() and leftovers(tmp_path) == []


def _raise_enospc():
    raise OSError(errno.ENOSPC, "No space left on device")


def test_stale_temporaries_of_killed_writers_are_removed_live_ones_kept(tmp_path):
    target = tmp_path / "table.csv"
    dead = FORK.Process(target=lambda: None)
    dead.start()
    dead.join()
    stale = tmp_path / f".table.csv.{cache._HOST}-{dead.pid}-abc123.tmp"
    live = tmp_path / f".table.csv.{cache._HOST}-{os.getppid()}-def456.tmp"
    other_host = tmp_path / ".table.csv.elsewhere-1-ghi789.tmp"
    for folder in (stale, live, other_host):
        (folder / "table.csv").parent.mkdir()
        (folder / "table.csv").write_text("half")
    cache.write_text_atomic(target, "a,b\n")
    assert target.read_text() == "a,b\n"
    assert not stale.exists() and live.exists() and other_host.exists()


# ================================================================================== interruption
def kill_at_random_point(work, rng: random.Random, *, units: int, unit_seconds: float, timeout: float = 120.0) -> dict:
    """Run ``work(progress)`` in a forked child and SIGKILL it at a random point of its work.

    ``work`` calls ``progress(0)`` when it is set up (models loaded) and ``progress(n)`` when its
    ``n``-th unit (a step, a batch, an evaluation) is done. The kill comes after a random number of
    finished units (0 to ``units - 2``) plus a random part of ``unit_seconds``: anywhere in computing
    or saving, but before the end. A timer thread in the child sends the SIGKILL, so the point is
    measured in the child's own time, whatever the load on the machine does to this process.
    """
    after = rng.randrange(0, units - 1)
    delay = rng.uniform(0.0, unit_seconds)
    done = FORK.Value("i", -1, lock=False)

    def child():
        torch.set_num_threads(1)

        def progress(n):
            done.value = n
            if n == after:
                killer = threading.Timer(delay, os.kill, (os.getpid(), signal.SIGKILL))
                killer.daemon = True  # a child that ends before the kill exits (and the test says so)
                killer.start()

        work(progress)

    process = FORK.Process(target=child, daemon=True)
    process.start()
    process.join(timeout)
    if process.is_alive():
        process.kill()
        process.join()
        pytest.fail(f"the child hung for {timeout} s")
    point = {"after_units": after, "delay_s": round(delay, 4), "units_done": done.value}
    assert process.exitcode == -signal.SIGKILL, f"the child ended on its own ({process.exitcode}) at {point}"
    return point


def kill_rng(stage: str, case: int) -> random.Random:
    return random.Random(f"{KILL_SEED}:{stage}:{case}")


# -------------------------------------------------------------------------------- fine-tuning
# The world's pre-training recipe (linear decay, clipping, no BOS) with a checkpoint every 2 steps.
FT = dict(lr=2e-3, batch_size=4, steps=10, max_length=32, seed=3, save_steps=range(2, 11, 2), progress=False,
          lr_schedule="linear", max_grad_norm=1.0, prepend_bos=False)


@pytest.fixture(scope="module")
def finetune_reference(tiny_gpt2_path, corpus, tmp_path_factory) -> dict:
    model, tok = models.load_model(str(tiny_gpt2_path), device="cpu")
    started = time.perf_counter()  # a unit: one step and, every second step, a checkpoint
    history = finetune.finetune(model, tok, corpus[:40], output_dir=tmp_path_factory.mktemp("ft-reference"), **FT)
    return {"state": {k: v.clone() for k, v in model.state_dict().items()}, "loss": history["loss"],
            "step_seconds": (time.perf_counter() - started) / FT["steps"]}


@pytest.mark.parametrize("case", range(KILL_CASES))
def test_finetuning_killed_at_a_random_point_resumes_to_the_same_weights(case, tiny_gpt2_path, corpus, tmp_path,
                                                                         finetune_reference):
    out = tmp_path / "run"
    texts = corpus[:40]

    def work(progress):
        model, tok = models.load_model(str(tiny_gpt2_path), device="cpu")
        progress(0)
        finetune.finetune(model, tok, texts, output_dir=out, on_step=lambda step, loss: progress(step), **FT)

    point = kill_at_random_point(work, kill_rng("finetune", case), units=FT["steps"],
                                 unit_seconds=finetune_reference["step_seconds"])
    complete = finetune.list_checkpoints(out)
    point.update(checkpoints=sorted(complete), temporaries=len(leftovers(out)))
    print("finetune killed at", point)  # shown with pytest -s
    for step, path in complete.items():  # whatever a kill left under a checkpoint's name is complete
        state = torch.load(path / finetune.TRAINING_STATE, weights_only=True)
        assert state["step"] == step and (path / "model.safetensors").stat().st_size > 0, point

    model, tok = models.load_model(str(tiny_gpt2_path), device="cpu")
    history = finetune.finetune(model, tok, texts, output_dir=out, **FT)
    assert history["resumed_from"] == (max(complete) if complete else None), point
    assert all(torch.equal(v, finetune_reference["state"][k]) for k, v in model.state_dict().items()), point
    assert history["loss"] == finetune_reference["loss"], point
    assert leftovers(out) == [], point


# ------------------------------------------------------------------------------- distillation
DISTILL = dict(n_texts=16, batch_size=2, max_new_tokens=24, seed=3, alpha=0.1, device="cpu", progress=False)


@pytest.fixture(scope="module")
def distill_reference(tiny_gpt2_path, tiny_gpt2_toxic_path, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("distill-reference") / "texts.csv"
    distill.run_distillation(tiny_gpt2_path, tiny_gpt2_toxic_path, out, **DISTILL)
    n_batches = DISTILL["n_texts"] // DISTILL["batch_size"]
    meta = json.loads(out.with_suffix(".json").read_text())
    return {"csv": out.read_bytes(), "meta": meta, "batch_seconds": meta["wall_time_s"] / n_batches}


@pytest.mark.parametrize("case", range(KILL_CASES))
def test_distillation_killed_at_a_random_point_resumes_to_the_same_texts(case, tiny_gpt2_path, tiny_gpt2_toxic_path,
                                                                         tmp_path, distill_reference):
    out = tmp_path / "texts.csv"
    batches = out.with_name(out.name + ".batches")
    n_batches = DISTILL["n_texts"] // DISTILL["batch_size"]

    def work(progress):
        real = distill._BatchStore.save  # this child only: report each finished batch

        def save(store, index, record):
            real(store, index, record)
            progress(index + 1)

        distill._BatchStore.save = save
        progress(0)
        distill.run_distillation(tiny_gpt2_path, tiny_gpt2_toxic_path, out, **DISTILL)

    point = kill_at_random_point(work, kill_rng("distill", case), units=n_batches,
                                 unit_seconds=distill_reference["batch_seconds"])
    finished = sorted(batches.glob("batch-*.json")) if batches.exists() else []
    point.update(batches=len(finished), temporaries=len(leftovers(tmp_path)))
    print("distillation killed at", point)
    for path in finished:  # every batch file that exists is whole
        assert json.loads(path.read_text())["size"] == DISTILL["batch_size"], point
    assert not out.exists(), point

    texts, stats = distill.run_distillation(tiny_gpt2_path, tiny_gpt2_toxic_path, out, **DISTILL)
    assert stats["reused_batches"] == len(finished), point
    assert out.read_bytes() == distill_reference["csv"], point
    meta = json.loads(out.with_suffix(".json").read_text())
    for key in ("lengths", "ended_with_eos", "n_texts", "alpha", "seed", "mean_support"):
        assert meta[key] == distill_reference["meta"][key], (key, point)
    assert not batches.exists() and leftovers(tmp_path) == [], point


# ========================================================================= stages and determinism
def run_stages(P: dict) -> dict:
    """toxic model -> UniDetox text -> detox checkpoints -> evaluations, as the chapters call them.
    Returns the files each stage made (by role) and the results table written as a CSV."""
    for cached in ("_load_cached", "_toxicity_scorer"):  # no model or scorer object shared between runs
        getattr(getattr(experiments, cached, None), "cache_clear", lambda: None)()
    files, started = {}, time.perf_counter()
    toxic = experiments.toxic_model(P, P["source_model"], progress=False)
    files["toxic weights"] = toxic / "model.safetensors"
    text = experiments.distilled_text(P, progress=False)
    files["distilled text"] = text
    target = P["target_models"][0]
    checkpoints = experiments.detox_checkpoints(P, target, text, P["detox_lrs"][0], progress=False)
    for step, path in checkpoints.items():
        files[f"detox step {step}"] = path / "model.safetensors"
    last = max(checkpoints)
    specs = [experiments.variant("base", target, target),
             experiments.variant("unidetox", target, checkpoints[last], "steps", last, lr=P["detox_lrs"][0])]
    rows, eval_seconds = [], []
    for spec in specs:
        for seed in P["seeds"]:
            before = set(Path(P["cache_dir"]).glob("eval/*/continuations.csv"))
            eval_started = time.perf_counter()
            rows.append(experiments.evaluate(P, spec, "val", seed, progress=False))
            eval_seconds.append(time.perf_counter() - eval_started)
            (new,) = set(Path(P["cache_dir"]).glob("eval/*/continuations.csv")) - before
            files[f"continuations {spec['method']} {spec['value']} seed {seed}"] = new
    files["results"] = cache.write_csv_atomic(pd.DataFrame(rows), Path(P["results_dir"]) / "results.csv")
    # the fastest evaluation: models and scorers loaded, as in a grid's later evaluations
    timing = {"eval_seconds": min(eval_seconds), "seconds": time.perf_counter() - started}
    return files, timing


@pytest.fixture(scope="module")
def stages_reference(tmp_path_factory, test_models) -> dict:
    if not (data.RAW_DIR / "toxigen").exists():
        pytest.skip("data/raw is not fetched")
    files, timing = run_stages(tiny_values(tmp_path_factory.mktemp("stages-a"), test_models))
    return {"files": files, **timing}


@needs_data
def test_same_profile_and_seeds_give_byte_identical_files_on_cpu(stages_reference, tmp_path, test_models):
    again, _ = run_stages(tiny_values(tmp_path, test_models))
    reference = stages_reference["files"]
    assert again.keys() == reference.keys()
    assert len(again) == 1 + 1 + 2 + 4 + 1  # toxic, text, 2 checkpoints, 2 variants x 2 seeds, results
    for role, path in reference.items():
        assert again[role] != path and again[role].read_bytes() == path.read_bytes(), role
    results = pd.read_csv(again["results"])
    assert len(results) == 4 and results["PPL"].notna().all() and results["dist_1"].gt(0).all()
    assert results.groupby("seed")["mean_score"].mean().nunique() == 2  # the seeds do differ


@needs_data
@pytest.mark.parametrize("case", range(KILL_CASES))
def test_evaluation_grid_killed_at_a_random_point_resumes_to_the_same_table(case, tmp_path, test_models,
                                                                            stages_reference):
    P = tiny_values(tmp_path, test_models)
    target = P["target_models"][0]
    spec = experiments.variant("base", target, target)
    grid = [(split, seed) for split in ("val", "test") for seed in P["seeds"]]  # 4 evaluations
    eval_dir = tmp_path / "cache" / "eval"

    def work(progress):
        progress(0)
        for i, (split, seed) in enumerate(grid):
            experiments.evaluate(P, spec, split, seed, progress=False)
            progress(i + 1)

    point = kill_at_random_point(work, kill_rng("evaluate", case), units=len(grid),
                                 unit_seconds=stages_reference["eval_seconds"])
    finished = {}
    n_prompts = {len(experiments.eval_prompts(P, split)) for split in ("val", "test")}
    for path in eval_dir.glob("*/continuations.csv"):  # every table that exists is whole
        frame = pd.read_csv(path, keep_default_na=False, lineterminator="\n")
        per_prompt = frame.groupby("prompt_id").size()
        assert per_prompt.eq(P["eval_n_continuations"]).all() and len(per_prompt) in n_prompts, point
        assert list(per_prompt.index) == list(range(len(per_prompt))) and frame["ppl"].notna().all(), point
        finished[path] = path.stat().st_mtime_ns
    point.update(evaluations=len(finished), temporaries=len(leftovers(tmp_path / "cache")))
    print("evaluation grid killed at", point)

    rows = [experiments.evaluate(P, spec, split, seed, progress=False) for split, seed in grid]
    for path, mtime in finished.items():
        assert path.stat().st_mtime_ns == mtime, point  # finished evaluations were reused, not redone
    assert len(list(eval_dir.glob("*/continuations.csv"))) == len(grid), point
    # the val rows are the uninterrupted reference run's base rows, byte for byte
    reference = pd.read_csv(stages_reference["files"]["results"]).iloc[: len(P["seeds"])]
    cache.write_csv_atomic(pd.DataFrame(rows[: len(P["seeds"])]), tmp_path / "grid.csv")
    cache.write_csv_atomic(reference, tmp_path / "reference.csv")
    assert (tmp_path / "grid.csv").read_bytes() == (tmp_path / "reference.csv").read_bytes(), point
    assert leftovers(tmp_path / "cache") == [], point


# --------------------------------------------------------------------------------- notebook chain
CHAIN_PAUSE = 0.5
CHAIN_CASES = int(os.environ.get("UNIDETOX_KILL_CASES", "1"))  # a kernel start costs seconds: one by default


@pytest.fixture(scope="module")
def chain_reference(tmp_path_factory) -> dict:
    """The work chain run once without interruption, through the runner, on the tiny profile."""
    tmp = tmp_path_factory.mktemp("chain-reference")
    chain = work_chain(tmp)
    results = tmp / "results"
    outcomes = run_notebooks.run_notebooks(chain, profile="tiny", overrides={"results_dir": str(results)})
    assert [o for _, o in outcomes] == ["executed", "executed"]
    return {name: (results / name).read_bytes() for name in ("first.csv", "second.csv")}


def _kill_tree(pid: int) -> None:
    """SIGKILL the runner and what it started (the papermill kernel runs in a session of its own)."""
    import psutil

    try:
        family = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for process in family:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(family, timeout=10)


@pytest.mark.parametrize("case", range(CHAIN_CASES))
def test_notebook_chain_killed_at_a_random_point_resumes_to_the_same_results(case, tmp_path, chain_reference):
    chain = work_chain(tmp_path, pause=CHAIN_PAUSE)
    results = tmp_path / "results"
    rng = kill_rng("chain", case)
    notebook, delay = rng.randrange(2), rng.uniform(0.0, 1.5 * CHAIN_PAUSE)
    command = [sys.executable, str(ROOT / "tools/run_notebooks.py"), "--root", str(chain), "--profile", "tiny",
               "-p", "results_dir", str(results)]
    runner = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                              start_new_session=True)
    try:
        wanted = f"[{notebook + 1}/2] "
        for line in runner.stdout:
            if line.startswith(wanted) and "running" in line:
                break
        time.sleep(delay)
        assert runner.poll() is None, "the chain ended before the kill"
    finally:
        _kill_tree(runner.pid)
        runner.wait()
    point = {"notebook": notebook, "delay_s": round(delay, 3), "temporaries": len(leftovers(results))}
    print("notebook chain killed at", point)

    outputs = [results / "notebooks" / name for name in ("first.ipynb", "second.ipynb")]
    for output in outputs:  # an executed notebook is either absent or whole
        if output.exists():
            assert nbformat.read(output, as_version=4).cells[-1].outputs, point
    for name, content in chain_reference.items():  # a result is either absent or whole
        if (results / name).exists():
            assert (results / name).read_bytes() == content, point
    keys = run_notebooks.load_keys(results / run_notebooks.KEYS_FILE)
    finished = [nb for nb in ("notebooks/first.ipynb", "notebooks/second.ipynb") if nb in keys]

    outcomes = run_notebooks.run_notebooks(chain, profile="tiny", overrides={"results_dir": str(results)})
    expected = ["cached" if nb in finished else "executed" for nb, _ in outcomes]
    assert [o for _, o in outcomes] == expected and expected[-1] == "executed", point
    for name, content in chain_reference.items():
        assert (results / name).read_bytes() == content, point
    assert leftovers(results) == [], point


# ======================================================================================= offline
@pytest.fixture()
def offline(tmp_path, monkeypatch):
    """No hub: ``HF_HUB_OFFLINE=1`` and empty Hugging Face and torch.hub caches."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf" / "datasets"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for name in ("UNIDETOX_DETOXIFY_CHECKPOINT", "UNIDETOX_DETOXIFY_CONFIG", "UNIDETOX_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def test_paper_model_offline_names_the_model_and_the_way_out(offline):
    started = time.perf_counter()
    with pytest.raises(models.ModelNotFoundError) as missing:
        models.load_model("openai-community/gpt2-xl", param="source_model")
    message = str(missing.value)
    assert "source_model='openai-community/gpt2-xl' could not be loaded" in message
    assert "local folder written by save_pretrained" in message and "HF_HOME" in message
    assert time.perf_counter() - started < 20  # no minute of retries


def test_hub_dataset_offline_names_the_data_set_and_the_way_out(offline):
    started = time.perf_counter()
    with pytest.raises(data.DataUnavailableError) as missing:
        data.load_dghs_hub()
    message = str(missing.value)
    assert "dataset 'LennardZuendorf/Dynamically-Generated-Hate-Speech-Dataset' could not be loaded" in message
    assert "HF_HOME" in message and "mini profile" in message and "UNIDETOX_DATA_MIRROR" in message
    assert time.perf_counter() - started < 20  # the cache only: no retries with back-off


def test_detoxify_offline_names_its_checkpoint_and_the_way_out(offline):
    with pytest.raises(scorers.ScorerUnavailableError) as missing:
        scorers.get_toxicity_scorer("detoxify", device="cpu")
    message = str(missing.value)
    for needed in ("toxic_original-c1212f89.ckpt", "bert-base-uncased", str(offline / "torch"),
                   "checkpoint=", "huggingface_config_path=", "profanity_check"):
        assert needed in message, needed


def test_runner_stops_the_paper_profile_offline_with_one_message_and_no_traceback(offline, tmp_path):
    chain = tmp_path / "chain"
    shutil.copytree(FIXTURES / "chain", chain)
    done = subprocess.run([sys.executable, str(ROOT / "tools/run_notebooks.py"), "--root", str(chain), "--profile",
                           "paper"], capture_output=True, text=True, timeout=120, env=os.environ.copy())
    assert done.returncode == 1 and "Traceback" not in done.stderr + done.stdout
    message = done.stderr
    assert re.search(r"The 'paper' profile needs \d+ thing\(s\) that cannot be had here; nothing was run", message)
    for needed in ("source_model 'openai-community/gpt2-xl'", "HF_HUB_OFFLINE is set",
                   "data set 'LennardZuendorf/Dynamically-Generated-Hate-Speech-Dataset'", "'toxigen/toxigen-data'",
                   "'cais/mmlu'", "toxicity_scorer 'detoxify'", "toxic_original-c1212f89.ckpt",
                   "local folder written by save_pretrained", "set HF_HOME", "UNIDETOX_DETOXIFY_CHECKPOINT"):
        assert needed in message, needed
    assert not (chain / "results").exists()  # nothing ran, nothing was claimed


def test_distilled_length_beyond_the_world_source_context_is_refused_before_anything_runs(tmp_path):
    chain = tmp_path / "chain"
    shutil.copytree(FIXTURES / "chain", chain)
    done = subprocess.run([sys.executable, str(ROOT / "tools/run_notebooks.py"), "--root", str(chain), "--profile",
                           "tiny", "-p", "distill_max_new_tokens", "64"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr + done.stdout
    # The tiny world's source model has 64 positions; the start token takes one.
    assert ("distill_max_new_tokens=64 does not fit the source model world:gpt2-bpe: it has 64 positions and the start "
            "token takes one; use distill_max_new_tokens <= 63.") in done.stderr
    assert not (chain / "results").exists()


def test_paper_profile_with_local_model_folders_checks_their_files(offline, tmp_path, capsys):
    chain = tmp_path / "chain"
    shutil.copytree(FIXTURES / "chain", chain)
    outcomes = run_notebooks.run_notebooks(chain, profile="paper", dry_run=True,
                                           overrides={"source_model": str(tmp_path / "nowhere")})
    assert [o for _, o in outcomes] == ["would run", "would run"]  # a dry run warns and goes on
    err = capsys.readouterr().err
    assert f"source_model='{tmp_path / 'nowhere'}' does not exist" in err and "(a real run would stop here)" in err
    assert "openai-community/gpt2-xl" not in err
