"""Before a run: can every model, data set and scorer that a profile names be had here?

The paper profile loads its models, data sets and Detoxify from the Hugging Face hub and GitHub.
Without a network each of them would fail only when its chapter reaches it -- after the chapters
before it ran for hours. ``missing_sources`` checks all of them up front, cheaply (no download, no
model loaded): a local folder must hold a model's files; a hub id must be reachable or already in
the local Hugging Face cache. ``tools/run_notebooks.py`` calls it before running any notebook and
stops with one message that names each missing item and how to provide it.

The mini and tiny profiles name only world models (built here), offline scorers and mirrored data,
so nothing is checked for them and nothing touches the network.
"""

from __future__ import annotations

import os
from pathlib import Path

HUB_DATASETS = {  # the data sets the paper profile loads with datasets.load_dataset (see data.py)
    "toxic_corpus": ("dghs", "LennardZuendorf/Dynamically-Generated-Hate-Speech-Dataset"),
    "eval_prompts": ("toxigen_annotated", "toxigen/toxigen-data"),
}
MMLU_DATASET = "cais/mmlu"
POLITICAL_BIAS_BERT = ("bucketresearch/politicalBiasBERT", "bert-base-cased")


def hub_cache() -> Path:
    """The Hugging Face hub cache as ``huggingface_hub`` would use it (read from the environment now)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    return _hf_home() / "hub"


def datasets_cache() -> Path:
    if os.environ.get("HF_DATASETS_CACHE"):
        return Path(os.environ["HF_DATASETS_CACHE"]).expanduser()
    return _hf_home() / "datasets"


def _hf_home() -> Path:
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser() / "huggingface"


def in_hub_cache(repo_id: str, kind: str = "model") -> bool:
    """Whether a snapshot of ``repo_id`` lies in the hub cache (``models--org--name/snapshots/*``)."""
    folder = hub_cache() / f"{kind}s--{repo_id.replace('/', '--')}" / "snapshots"
    return folder.is_dir() and any(any(snapshot.iterdir()) for snapshot in folder.iterdir() if snapshot.is_dir())


def in_datasets_cache(repo_id: str) -> bool:
    """Whether ``datasets`` has prepared ``repo_id`` before (``org___name`` in its cache) or its hub
    snapshot is cached."""
    if in_hub_cache(repo_id, "dataset"):
        return True
    folder = datasets_cache()
    wanted = repo_id.replace("/", "___").lower()
    return folder.is_dir() and any(p.name.lower().startswith(wanted) for p in folder.iterdir())


def torch_hub_checkpoints() -> Path:
    """Where ``torch.hub`` keeps downloaded checkpoints (Detoxify's), without importing torch."""
    if os.environ.get("TORCH_HOME"):
        return Path(os.environ["TORCH_HOME"]).expanduser() / "hub" / "checkpoints"
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser()
    return cache / "torch" / "hub" / "checkpoints"


def missing_sources(values: dict) -> list[str]:
    """One line per model, data set or scorer of profile ``values`` that cannot be had here, each with
    how to provide it; empty when everything is local, cached or reachable."""
    problems: list[str] = []
    online = _Online()

    for role in ("source_model", "target_models", "evaluator_model"):
        names = values.get(role) or []
        for name in [names] if isinstance(names, str) else names:
            problem = _model_problem(role, name, online)
            if problem:
                problems.append(problem)

    problems.extend(_world_context_problems(values))

    if values.get("data_source") == "hub":
        wanted = [(setting, repo) for setting, (value, repo) in HUB_DATASETS.items() if values.get(setting) == value]
        wanted.append(("MMLU", MMLU_DATASET))
        for setting, repo in wanted:
            if not in_datasets_cache(repo) and not online("huggingface.co"):
                problems.append(
                    f"data set {repo!r} ({setting}): the Hugging Face hub cannot be reached ({online.why}) and it is "
                    f"not in the local caches ({datasets_cache()}, {hub_cache()}). Provide it: on a machine with "
                    f"network run `python -c \"import datasets; datasets.load_dataset('{repo}')\"` and copy its "
                    "Hugging Face cache here (set HF_HOME to it), or use the mini profile, whose data come from the "
                    "mirror (UNIDETOX_DATA_MIRROR)."
                )

    for setting in ("toxicity_scorer", "second_toxicity_scorer"):
        if values.get(setting) == "detoxify":
            problem = _detoxify_problem(setting, online)
            if problem:
                problems.append(problem)
    if values.get("bias_scorer") == "political_bias_bert":
        missing = [r for r in POLITICAL_BIAS_BERT if not in_hub_cache(r)]
        if missing and not online("huggingface.co"):
            problems.append(
                f"bias_scorer 'political_bias_bert': {', '.join(repr(m) for m in missing)} cannot be downloaded "
                f"({online.why}) and {'is' if len(missing) == 1 else 'are'} not in the hub cache ({hub_cache()}). "
                "Provide them: copy a Hugging Face cache that holds them (set HF_HOME), or pass model= a local "
                "folder to scorers.PoliticalBiasBertScorer; or use bias_scorer='allsides_tfidf' (offline)."
            )
    return problems


def _world_context_problems(values: dict) -> list[str]:
    """Distillation starts from the start token, so the world's source model must hold
    1 + distill_max_new_tokens positions; checked from the world's settings before anything runs."""
    if values.get("profile") not in ("mini", "tiny") or "distill_max_new_tokens" not in values:
        return []
    from .world import world_settings

    models = world_settings(values)["models"]
    wanted = int(values["distill_max_new_tokens"])
    name = values.get("source_model") or ""  # the one model that distils
    spec = models.get(name.removeprefix("world:")) if name.startswith("world:") else None
    if spec and wanted + 1 > spec["context"]:
        return [f"distill_max_new_tokens={wanted} does not fit the source model {name}: it has {spec['context']} "
                f"positions and the start token takes one; use distill_max_new_tokens <= {spec['context'] - 1}."]
    return []


def format_problems(problems: list[str], profile: str) -> str:
    lines = "\n".join(f"  - {p}" for p in problems)
    return (f"The {profile!r} profile needs {len(problems)} thing(s) that cannot be had here; nothing was run:\n"
            f"{lines}")


class _Online:
    """Reachability of a host, asked at most once per host (the answer is kept for one check)."""

    def __init__(self):
        self.answers: dict[str, bool] = {}
        self.why = ""

    def __call__(self, host: str) -> bool:
        if host not in self.answers:
            from .models import hub_online  # imports torch: only profiles that name a hub item get here

            self.answers[host] = hub_online(host)
        offline_env = [v for v in ("HF_HUB_OFFLINE", "UNIDETOX_OFFLINE")
                       if os.environ.get(v, "0").lower() in ("1", "true", "yes")]
        self.why = f"{offline_env[0]} is set" if offline_env else f"{host} does not answer"
        return self.answers[host]


def _model_problem(role: str, name: str, online: _Online) -> str | None:
    if not isinstance(name, str) or not name or name.startswith("world:"):
        return None  # world models are built here; an empty name is the profile's business
    path = Path(os.path.expanduser(name))
    looks_local = path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1
    if looks_local:
        from .models import ModelNotFoundError, check_model_source

        try:
            check_model_source(name, param=role)
        except (ModelNotFoundError, ValueError) as err:
            return str(err)
        return None
    if in_hub_cache(name) or online("huggingface.co"):
        return None
    return (
        f"{role} {name!r}: the Hugging Face hub cannot be reached ({online.why}) and the model is not in the hub "
        f"cache ({hub_cache()}). Provide it: a local folder written by save_pretrained ({_flag(role)}; "
        f"e.g. `huggingface-cli download {name} --local-dir DIR` on a machine with network, then copy DIR), or "
        "copy a Hugging Face cache that holds it and set HF_HOME to it."
    )


def _detoxify_problem(setting: str, online: _Online) -> str | None:
    from .scorers import DETOXIFY_BASES, DETOXIFY_CHECKPOINTS

    checkpoint_name, base = DETOXIFY_CHECKPOINTS["original"], DETOXIFY_BASES["original"]
    given_ckpt = os.environ.get("UNIDETOX_DETOXIFY_CHECKPOINT")
    given_config = os.environ.get("UNIDETOX_DETOXIFY_CONFIG")
    cached = torch_hub_checkpoints() / checkpoint_name
    reasons = []
    if given_ckpt:
        if not Path(given_ckpt).is_file():
            reasons.append(f"UNIDETOX_DETOXIFY_CHECKPOINT={given_ckpt!r} is not a file")
    elif not cached.is_file() and not online("github.com"):
        reasons.append(f"its checkpoint {checkpoint_name} is not cached at {cached} and github.com cannot be reached "
                       f"({online.why})")
    if given_config:
        if not Path(given_config).is_dir():
            reasons.append(f"UNIDETOX_DETOXIFY_CONFIG={given_config!r} is not a folder")
    elif not in_hub_cache(base) and not online("huggingface.co"):
        reasons.append(f"the {base!r} config and tokenizer are not in the hub cache ({hub_cache()}) and the hub cannot "
                       f"be reached ({online.why})")
    if not reasons:
        return None
    return (
        f"{setting} 'detoxify': {'; '.join(reasons)}. Provide it: run Detoxify('original') once on a machine with "
        f"network and copy both caches here (TORCH_HOME and HF_HOME), or set UNIDETOX_DETOXIFY_CHECKPOINT="
        f"/path/{checkpoint_name} and UNIDETOX_DETOXIFY_CONFIG=/path/{base} (a folder with its config and "
        "tokenizer); or score with 'profanity_check' (offline)."
    )


def _flag(role: str) -> str:
    return f'-p {role} "[/path/to/folder, ...]"' if role == "target_models" else f"-p {role} /path/to/folder"
