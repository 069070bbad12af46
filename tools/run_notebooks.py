"""Execute the book's chapter notebooks in order with papermill, re-running only what changed.

    python tools/run_notebooks.py --profile mini                 # the book's chapters, in place
    python tools/run_notebooks.py --profile tiny -p seeds "[0]"  # another profile, with an override
    python tools/run_notebooks.py --only 01_data --force         # one chapter, even if cached
    python tools/run_notebooks.py --dry-run                      # what would run, and why

The chapters are the notebooks listed in ``_quarto.yml``, in book order. Each runs with the kernel
``python3`` and the parameters ``profile`` plus any ``-p NAME VALUE`` overrides (values are read as
YAML, so ``-p distill_alpha 0.05`` is a float and ``-p seeds "[0, 1]"`` a list). An override that is a
profile setting reaches every chapter's ``for_notebook`` (through ``UNIDETOX_SETTINGS``), whether or
not the chapter lists it as a parameter.

Where executed notebooks go: on the default profile (mini) the notebook is replaced in place -- the
executed mini chapters are what the book shows and what is committed. Other profiles write to
``results/<profile>/notebooks/`` so a tiny or paper run never overwrites the committed chapters.
A notebook is written only once it has run to the end (an interrupted run leaves it untouched);
a failed run is kept in ``results/<profile>/failed/`` for reading.

Before anything runs, the runner checks what it can: every ``-p`` name is a profile setting or a
parameter of a notebook to run (with the type of its default); the models, data sets and scorers
of the profile are local, cached or reachable (``unidetox_core.preflight``); and the results folder
holds no results of another configuration (``profile.json``, see ``profiles.check_results_dir``).
Any problem stops the run with one message naming the parameter or item and the fix (a dry run
prints the problems as warnings and goes on saying what would run).

Caching: a notebook runs again only when its key changed. The key covers the notebook's code and
Markdown (outputs and papermill's injected cell ignored), its parameters, every source file of
``unidetox_core``, and its inputs. Inputs are declared in the notebook's metadata, as paths or
globs relative to the repository root with ``{profile}``, ``{results_dir}`` and ``{cache_dir}``
filled in::

    "metadata": {"unidetox": {"inputs": ["{results_dir}/data_counts.csv"]}}

``"inputs": []`` declares that the notebook reads nothing an earlier chapter writes. A notebook
that declares no inputs at all depends, conservatively, on every chapter before it: it runs again
whenever an earlier chapter's key changed. Keys are kept per profile in
``results/<profile>/.notebook_keys.json``, written after each notebook, so an interrupted run
resumes where it stopped.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import nbformat
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling build_book, however this is run

from build_book import (  # noqa: E402
    chapter_paths,
    hide_redundant_injected_parameters,
    load_quarto_config,
    source_digest,
    stamp_executed,
)
from unidetox_core import profiles, smoke  # noqa: E402
from unidetox_core.cache import atomic_path, write_json_atomic  # noqa: E402
from unidetox_core.compute import append_run  # noqa: E402

KERNEL = "python3"
KEYS_FILE = ".notebook_keys.json"


# ================================================================================ what to run
def chapter_notebooks(root: Path) -> list[str]:
    """The notebook chapters of ``_quarto.yml`` that exist, in book order (relative paths)."""
    notebooks = []
    for path in chapter_paths(load_quarto_config(root)):
        if not path.endswith(".ipynb"):
            continue
        if (root / path).exists():
            notebooks.append(path)
        else:
            print(f"warning: _quarto.yml lists {path}, which does not exist yet; skipped.", file=sys.stderr)
    return notebooks


def select(notebooks: list[str], only: list[str] | None) -> list[str]:
    """Notebooks whose file name starts with one of ``only`` (all when ``only`` is empty)."""
    if not only:
        return notebooks
    chosen = [nb for nb in notebooks if any(Path(nb).name.startswith(prefix) for prefix in only)]
    if not chosen:
        names = ", ".join(Path(nb).stem for nb in notebooks)
        raise SystemExit(f"--only {' '.join(only)} matches no chapter notebook; the chapters are: {names}.")
    return chosen


# ================================================================================= parameters
def parse_overrides(pairs: list[list[str]] | None) -> dict:
    """``-p name value`` pairs -> a dict; values are YAML (numbers, lists, booleans, strings)."""
    overrides = {}
    for name, raw in pairs or []:
        try:
            overrides[name] = yaml.safe_load(raw)
        except yaml.YAMLError:
            overrides[name] = raw
    return overrides


def profile_values(profile: str, overrides: dict) -> dict:
    """The profile's settings with the overrides that are settings, checked before anything runs.

    Overrides that are not profile settings (a notebook's own parameters) pass through untouched;
    the notebook checks those itself.
    """
    settings = {k: v for k, v in overrides.items() if k in profiles.PROFILES.get(profile, {})}
    try:
        return profiles.load_profile(profile, **settings)
    except profiles.ProfileError as error:
        raise SystemExit(f"Bad parameter: {error}") from None


def notebook_parameters(root: Path, notebooks: list[str]) -> dict[str, list[tuple[str, str | None]]]:
    """Each parameter of the notebooks' parameters cells -> [(notebook, default as written), ...]."""
    import papermill

    declared: dict[str, list[tuple[str, str | None]]] = {}
    for notebook in notebooks:
        for name, info in papermill.inspect_notebook(str(root / notebook)).items():
            declared.setdefault(name, []).append((notebook, info.get("default")))
    return declared


def check_notebook_parameters(root: Path, notebooks: list[str], profile: str, overrides: dict) -> None:
    """Every ``-p`` name must be a profile setting or a parameter of a notebook that runs, and a notebook
    parameter must have the type of its default; else stop, naming the parameter and what would work.

    (Profile settings are checked by ``profile_values``.) Without this, papermill would inject an
    unknown name as an unused variable and the run would go on with the value silently ignored.
    """
    import ast
    import difflib

    settings = profiles.PROFILES.get(profile, {})
    declared = notebook_parameters(root, notebooks)
    for name, value in overrides.items():
        if name in settings or name == "profile":
            continue
        if name not in declared:
            close = difflib.get_close_matches(name, [*declared, *settings], n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            own = sorted(set(declared) - {"profile"} - set(settings))
            raise SystemExit(
                f"Bad parameter: -p {name} is neither a setting of the {profile!r} profile nor a parameter of "
                f"the notebooks to run ({', '.join(Path(nb).stem for nb in notebooks) or 'none'}).{hint} Their own "
                f"parameters: {', '.join(own) or 'none'}; the profile's settings are listed in "
                "unidetox_core/profiles.py."
            )
        for notebook, default in declared[name]:
            try:
                example = ast.literal_eval(default) if default is not None else None
            except (ValueError, SyntaxError):
                continue  # an expression: nothing to compare with
            if example is None:
                continue
            try:
                profiles.check_type(name, value, example)
            except profiles.ProfileError as error:
                raise SystemExit(f"Bad parameter: {str(error).rstrip('.')} (its default in the parameters cell of "
                                 f"{notebook}).") from None


def check_before_running(root: Path, notebooks: list[str], profile: str, overrides: dict, values: dict,
                         results_dir: Path, dry_run: bool) -> None:
    """What can be checked before the first notebook starts: the notebook parameters, the models,
    data sets and scorers the profile needs (``preflight``), and that the results folder holds no
    results of another configuration (then it is claimed for this one: ``profile.json``). A dry run
    prints the problems as warnings; a real run stops with all of them."""
    from unidetox_core import plan, preflight

    problems = []
    try:
        check_notebook_parameters(root, notebooks, profile, overrides)
    except SystemExit as error:
        problems.append(str(error.code))
    missing = preflight.missing_sources(values)
    if missing:
        problems.append(preflight.format_problems(missing, profile))
    problems += plan.preflight(values)  # the paper profile: disk, GPU memory, access to gated repositories
    try:
        profiles.check_results_dir(values, results_dir, record=not dry_run and not problems)
    except profiles.ProfileError as error:
        problems.append(str(error))
    if not problems:
        return
    if dry_run:
        for problem in problems:
            print(f"warning: {problem} (a real run would stop here)", file=sys.stderr)
        return
    raise SystemExit("\n".join(problems))


def output_path(root: Path, notebook: str, values: dict, output_dir: Path | None) -> Path:
    """Where the executed notebook goes: in place on the default profile, else beside its results."""
    if output_dir is not None:
        return output_dir / Path(notebook).name
    if values["profile"] == profiles.DEFAULT_PROFILE:
        return root / notebook
    return resolve(root, values["results_dir"]) / "notebooks" / Path(notebook).name


def resolve(root: Path, path: str | Path) -> Path:
    path = Path(path)
    return path if path.is_absolute() else root / path


# ====================================================================================== keys
def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def files_digest(paths: list[Path], root: Path) -> str:
    """Paths and contents of files (a missing file counts as missing, so its appearance is a change)."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(str(path.relative_to(root) if path.is_relative_to(root) else path).encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest() if path.is_file() else b"missing")
    return digest.hexdigest()


def core_digest(root: Path) -> str:
    return files_digest(sorted((root / "unidetox_core").rglob("*.py")), root)


def declared_inputs(nb, root: Path, values: dict) -> list[Path] | None:
    """The input files a notebook declares in ``metadata.unidetox.inputs`` (None: declares none)."""
    patterns = nb.metadata.get("unidetox", {}).get("inputs")
    if patterns is None:
        return None
    fill = {"profile": values["profile"], "results_dir": values["results_dir"], "cache_dir": values["cache_dir"]}
    paths = []
    for pattern in patterns:
        full = str(resolve(root, pattern.format(**fill)))
        matches = [Path(p) for p in glob.glob(full, recursive=True)]
        paths.extend(matches or [Path(full)])  # a missing input still enters the key, as missing
    return paths


def notebook_key(nb, parameters: dict, core: str, inputs: str) -> str:
    blob = json.dumps(
        {"source": source_digest(nb), "parameters": parameters, "core": core, "inputs": inputs},
        sort_keys=True,
        default=str,
    )
    return sha256_text(blob)[:16]


def load_keys(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        print(f"warning: {path} is unreadable; every notebook runs again.", file=sys.stderr)
        return {}


# ================================================================================= execution
def ensure_kernel() -> None:
    """Register this environment's ``python3`` kernel if Jupyter does not know one."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec(KERNEL)
    except NoSuchKernel:
        print(f"Registering this environment's Python as Jupyter kernel {KERNEL!r} ...")
        subprocess.run(
            [sys.executable, "-m", "ipykernel", "install", "--sys-prefix", "--name", KERNEL], check=True
        )


def execute(notebook: Path, output: Path, parameters: dict, failed_dir: Path, settings: dict | None = None) -> None:
    """Run ``notebook`` with papermill into ``output``, replacing it only after the last cell ran.

    ``settings`` (profile settings given for every chapter) reach the notebook's ``for_notebook`` through
    the environment (``profiles.SETTINGS_ENV``): a chapter need not list every setting as a parameter."""
    import papermill

    previous = os.environ.get(profiles.SETTINGS_ENV)
    os.environ[profiles.SETTINGS_ENV] = json.dumps(settings or {})
    try:
        _execute(papermill, notebook, output, parameters, failed_dir)
    finally:
        if previous is None:
            os.environ.pop(profiles.SETTINGS_ENV, None)
        else:
            os.environ[profiles.SETTINGS_ENV] = previous


def record_paths(executed, notebook: Path, output: Path) -> None:
    """Papermill's record of where the notebook ran, relative to the repository: a committed chapter
    should not carry the build machine's folders (nor the temporary name it was written under)."""
    record = executed.metadata.get("papermill", {})
    for key, path in (("input_path", notebook), ("output_path", output)):
        if key in record:
            record[key] = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name


def _execute(papermill, notebook: Path, output: Path, parameters: dict, failed_dir: Path) -> None:
    with atomic_path(output) as tmp:
        try:
            papermill.execute_notebook(
                str(notebook),
                str(tmp),
                parameters=parameters,
                kernel_name=KERNEL,
                cwd=str(notebook.parent),  # as Jupyter runs it
                progress_bar=False,
            )
        except papermill.PapermillExecutionError:
            if tmp.exists():
                failed_dir.mkdir(parents=True, exist_ok=True)
                shutil.copy2(tmp, failed_dir / notebook.name)
            raise
        executed = nbformat.read(tmp, as_version=4)
        record_paths(executed, notebook, output)
        hide_redundant_injected_parameters(executed)  # the page need not repeat the defaults
        stamp_executed(executed, core_digest(ROOT))  # the book can then tell outputs of an older source
        nbformat.write(executed, tmp)


def format_seconds(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = round(seconds)  # round once, so that 1079.6 s is 18 min 00 s, not 17 min 60 s
    return f"{whole // 60} min {whole % 60:02d} s"


def run_notebooks(
    root: Path = ROOT,
    profile: str = profiles.DEFAULT_PROFILE,
    overrides: dict | None = None,
    only: list[str] | None = None,
    force: bool = False,
    dry_run: bool = False,
    output_dir: Path | None = None,
) -> list[tuple[str, str]]:
    """Run the chapters in order; return ``(notebook, "executed" | "cached" | "would run")`` pairs."""
    overrides = dict(overrides or {})
    values = profile_values(profile, overrides)
    parameters = {"profile": profile, **overrides}
    settings = {k: v for k, v in overrides.items() if k in profiles.PROFILES.get(profile, {})}
    notebooks = chapter_notebooks(root)
    chosen = set(select(notebooks, only))
    results_dir = resolve(root, values["results_dir"])
    keys_path = results_dir / KEYS_FILE
    keys = load_keys(keys_path)
    core = core_digest(root)
    # Before anything reads a hub: the smoke profiles read stand-ins, through the same loaders
    smoke.activate(values, root)
    check_before_running(root, [nb for nb in notebooks if nb in chosen], profile, overrides, values, results_dir,
                         dry_run)
    if not dry_run:
        ensure_kernel()

    outcomes, earlier_keys = [], []
    total = len(chosen)
    for notebook in notebooks:
        nb = nbformat.read(root / notebook, as_version=4)
        inputs = declared_inputs(nb, root, values)
        inputs_digest = files_digest(inputs, root) if inputs is not None else sha256_text(json.dumps(earlier_keys))
        key = notebook_key(nb, parameters, core, inputs_digest)
        earlier_keys.append(key)
        if notebook not in chosen:
            continue
        output = output_path(root, notebook, values, output_dir)
        shown_output = str(output.relative_to(root) if output.is_relative_to(root) else output)
        label = f"[{len(outcomes) + 1}/{total}] {notebook}"
        record = keys.get(notebook, {})
        if not force and record.get("key") == key and record.get("output") == shown_output and output.exists():
            print(f"{label}: cached (unchanged since {record.get('finished', '?')})", flush=True)
            outcomes.append((notebook, "cached"))
            continue
        if dry_run:
            print(f"{label}: would run", flush=True)
            outcomes.append((notebook, "would run"))
            continue
        print(f"{label}: running with {parameters} ...", flush=True)
        started = time.perf_counter()
        try:
            execute(root / notebook, output, parameters, results_dir / "failed", settings)
        except KeyboardInterrupt:
            print(f"\nInterrupted during {notebook}; it is unchanged. Finished notebooks are cached: rerun to go on.")
            raise
        seconds = time.perf_counter() - started
        keys[notebook] = {
            "key": key,
            "seconds": round(seconds, 1),
            "finished": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "output": shown_output,
        }
        write_json_atomic(keys_path, keys)  # after each notebook, so an interruption loses nothing done
        append_run(results_dir / "notebook_runs.csv", notebook, keys[notebook], key)
        print(f"{label}: executed in {format_seconds(seconds)} -> {keys[notebook]['output']}", flush=True)
        outcomes.append((notebook, "executed"))
    return outcomes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default=profiles.DEFAULT_PROFILE, help="mini (default), small, paper or tiny")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", metavar=("NAME", "VALUE"),
                        help="a papermill parameter for every notebook (repeatable; VALUE is YAML)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only chapters whose file name starts so")
    parser.add_argument("--force", action="store_true", help="run even if the key is unchanged")
    parser.add_argument("--dry-run", action="store_true", help="say what would run, run nothing")
    parser.add_argument("--output-dir", type=Path, help="write executed notebooks here instead")
    parser.add_argument("--root", type=Path, default=ROOT, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    import papermill

    try:
        run_notebooks(
            root=args.root.resolve(),
            profile=args.profile,
            overrides=parse_overrides(args.parameter),
            only=args.only,
            force=args.force,
            dry_run=args.dry_run,
            output_dir=args.output_dir.resolve() if args.output_dir else None,
        )
    except KeyboardInterrupt:
        return 130
    except papermill.PapermillExecutionError as error:
        print(f"\nA notebook failed: {error.ename}: {error.evalue}", file=sys.stderr)
        print("The executed notebook with the error is in the profile's results folder, under failed/.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
