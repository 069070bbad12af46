import json
import re
import tomllib
from pathlib import Path

import pytest
import yaml

from unidetox_core import profiles

ROOT = Path(__file__).resolve().parents[1]


def test_default_profile_is_mini_and_paper_values_follow_the_seed():
    assert profiles.load_profile()["profile"] == "mini"
    paper = profiles.load_profile("paper")
    assert paper["distill_n_texts"] == 640 and paper["distill_max_new_tokens"] == 256
    assert paper["distill_alpha"] == 0.1 and paper["detox_batch_size"] == 8 and paper["detox_lrs"] == [5e-5, 1e-5]
    assert paper["detox_steps"] == list(range(1000, 10001, 1000))
    assert (paper["toxic_epochs"], paper["toxic_batch_size"], paper["toxic_lr"]) == (3, 4, 1e-5)
    assert (paper["eval_n_continuations"], paper["eval_max_new_tokens"], paper["eval_top_p"]) == (25, 20, 0.9)
    assert paper["dexperts_betas"][0] == 0.1 and paper["dexperts_betas"][-1] == 2.0 and len(paper["dexperts_betas"]) == 20
    assert paper["task_arithmetic_lambdas"][-1] == 0.2 and paper["lmsteer_multipliers"][-1] == -2.0


def test_every_profile_has_the_same_settings():
    keys = {name: set(values) for name, values in profiles.PROFILES.items()}
    assert keys["paper"] == keys["mini"] == keys["tiny"]


def test_overrides_are_checked_by_name_and_type():
    assert profiles.load_profile("tiny", distill_alpha=0.05, seeds=[7])["seeds"] == [7]
    assert profiles.load_profile("tiny", toxic_lr=1)["toxic_lr"] == 1.0  # an int is a fine float
    with pytest.raises(profiles.ProfileError, match="profile='huge' is unknown; use one of"):
        profiles.load_profile("huge")
    with pytest.raises(profiles.ProfileError, match="'distil_alpha' is not a setting.*Did you mean 'distill_alpha'"):
        profiles.load_profile("mini", distil_alpha=0.1)
    with pytest.raises(profiles.ProfileError, match="'distill_n_texts' must be int .* got str '640'"):
        profiles.load_profile("mini", distill_n_texts="640")
    with pytest.raises(profiles.ProfileError, match=r"'seeds\[1\]' must be int"):
        profiles.load_profile("mini", seeds=[0, "1"])
    with pytest.raises(profiles.ProfileError, match="must be bool|must be int"):
        profiles.load_profile("mini", distill_batch_size=True)


def test_profile_diff_lists_only_changes():
    values = profiles.load_profile("tiny", distill_alpha=0.05)
    assert profiles.profile_diff(values) == {"distill_alpha": 0.05}


def _names(requirements):
    return {re.split(r"[<>=!~\[ ]", r.strip(), maxsplit=1)[0].lower().replace("_", "-") for r in requirements}


def test_conda_environment_names_the_same_packages_as_pyproject():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pip = next((d["pip"] for d in env["dependencies"] if isinstance(d, dict)), [])
    conda_names = {"pytorch" if n == "torch" else n for n in _names(conda + pip)}
    wanted = {"pytorch" if n == "torch" else n for n in _names(deps)}
    assert wanted - conda_names == set(), "environment.yml lacks packages that pyproject.toml needs"
    assert conda_names - wanted - {"python", "pip", "quarto", "pytest"} == set(), "environment.yml has extras"
    assert "quarto" in conda_names


def test_notebook_parameters_override_and_are_type_checked(tmp_path):
    values = profiles.for_notebook("tiny", distill_alpha=None, seeds=[3], results_dir=str(tmp_path / "r"))
    assert values["distill_alpha"] == profiles.PROFILES["tiny"]["distill_alpha"]  # None keeps the profile's value
    assert values["seeds"] == [3] and (tmp_path / "r").is_dir()
    assert Path(values["cache_dir"]).is_absolute()
    with pytest.raises(profiles.ProfileError, match="'eval_top_p' must be float .* got str"):
        profiles.for_notebook("mini", eval_top_p="0.9")


def test_data_cli_reports_errors_with_exit_code_2(tmp_path, capsys):
    from unidetox_core import data

    code = data.main(["fetch", "--mirror", str(tmp_path / "nowhere"), "--raw-dir", str(tmp_path / "raw")])
    assert code == 2 and "is not a folder" in capsys.readouterr().out


def test_settings_given_to_the_runner_reach_for_notebook(monkeypatch, tmp_path):
    monkeypatch.setenv(profiles.SETTINGS_ENV, json.dumps({"seeds": [3], "results_dir": str(tmp_path / "r")}))
    values = profiles.for_notebook("tiny", seeds=None)  # a parameter left at None keeps the runner's value
    assert values["seeds"] == [3] and values["results_dir"] == str(tmp_path / "r")
    own = profiles.for_notebook("tiny", seeds=[4], results_dir=str(tmp_path / "r4"))
    assert own["seeds"] == [4]  # the notebook's own parameter wins
    monkeypatch.setenv(profiles.SETTINGS_ENV, json.dumps({"distil_alpha": 0.1}))
    with pytest.raises(profiles.ProfileError, match="Did you mean 'distill_alpha'"):
        profiles.for_notebook("tiny")
