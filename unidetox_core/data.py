"""Data: the table of sources, fetching (originals or a mirror), and tidy loaders.

Two worlds read data here:

- the **paper** profile loads DGHS, ToxiGen (annotated) and MMLU through ``datasets.load_dataset``
  with the seed's exact filters (Appendix B.1);
- the **mini** profile reads the five public sets listed in ``data/sources.yml`` from ``data/raw/``,
  which :func:`fetch` fills either by downloading the originals or by copying from a mirror folder
  (``UNIDETOX_DATA_MIRROR`` or ``mirror=``). Every file is checked against its sha256.

All loaders return pandas frames with plain column names.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import html
import io
import json
import os
import re
import shutil
import urllib.request
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from .cache import atomic_path, sha256_file

ROOT = Path(__file__).resolve().parents[1]
SOURCES_FILE = ROOT / "data" / "sources.yml"
RAW_DIR = Path(os.environ.get("UNIDETOX_DATA_DIR", ROOT / "data" / "raw"))
MIRROR_ENV = "UNIDETOX_DATA_MIRROR"
REQUIRED_SOURCE_FIELDS = ("title", "licence", "homepage", "role", "files")
REQUIRED_FILE_FIELDS = ("path", "url", "sha256")
HUB_KEY = "hub"  # the entry of sources.yml that lists the paper profile's hub data sets
REQUIRED_HUB_FIELDS = ("title", "licence", "homepage", "role", "repo", "config", "revision")


class DataError(RuntimeError):
    """Base class of the data layer's errors; each message names the parameter and a fix."""


class SourcesError(DataError):
    """``data/sources.yml`` has a malformed entry."""


class ChecksumError(DataError):
    """A file's sha256 differs from the one recorded in ``data/sources.yml``."""


class DataUnavailableError(DataError):
    """Neither a download nor a mirror could provide a file."""


# ------------------------------------------------------------------------------------------ sources
def load_sources(path: str | os.PathLike = SOURCES_FILE) -> dict[str, dict]:
    """Read and validate the table of sources (name -> title, licence, homepage, role, files)."""
    import yaml

    with open(path, encoding="utf-8") as handle:
        table = yaml.safe_load(handle)
    if not isinstance(table, dict) or not table:
        raise SourcesError(f"{path}: expected a mapping of source names to entries, got {type(table).__name__}.")
    table = {name: entry for name, entry in table.items() if name != HUB_KEY}
    for name, entry in table.items():
        where = f"{path}: source {name!r}"
        if not isinstance(entry, dict):
            raise SourcesError(f"{where} must be a mapping with fields {REQUIRED_SOURCE_FIELDS}.")
        missing = [f for f in REQUIRED_SOURCE_FIELDS if f not in entry]
        if missing:
            raise SourcesError(f"{where} lacks field(s) {missing}; every source needs {REQUIRED_SOURCE_FIELDS}.")
        if not isinstance(entry["files"], list) or not entry["files"]:
            raise SourcesError(f"{where}: 'files' must be a non-empty list of {{path, url, sha256}} entries.")
        for i, item in enumerate(entry["files"]):
            missing = [f for f in REQUIRED_FILE_FIELDS if not (isinstance(item, dict) and item.get(f))]
            if missing:
                raise SourcesError(f"{where}, files[{i}] lacks {missing}; each file needs {REQUIRED_FILE_FIELDS}.")
            if not re.fullmatch(r"[0-9a-f]{64}", str(item["sha256"])):
                raise SourcesError(f"{where}, files[{i}] ({item['path']}): sha256 must be 64 lowercase hex digits.")
            if item.get("repack") and item["repack"] not in REPACKERS:
                raise SourcesError(
                    f"{where}, files[{i}]: repack={item['repack']!r} is unknown; use one of {sorted(REPACKERS)}."
                )
    return table


def load_hub_sources(path: str | os.PathLike = SOURCES_FILE) -> dict[str, dict]:
    """The hub data sets of ``sources.yml`` (name -> title, licence, homepage, role, repo, config,
    revision), each pinned to a commit (40 hex digits)."""
    import yaml

    with open(path, encoding="utf-8") as handle:
        table = (yaml.safe_load(handle) or {}).get(HUB_KEY) or {}
    for name, entry in table.items():
        where = f"{path}: hub data set {name!r}"
        missing = [f for f in REQUIRED_HUB_FIELDS if not isinstance(entry, dict) or f not in entry]
        if missing:
            raise SourcesError(f"{where} lacks field(s) {missing}; every hub data set needs {REQUIRED_HUB_FIELDS}.")
        if not re.fullmatch(r"[0-9a-f]{40}", str(entry["revision"])):
            raise SourcesError(f"{where}: revision must be a commit (40 lowercase hex digits), not {entry['revision']!r}.")
    return table


def hub_dataset(name: str, split: str | None = None):
    """``datasets.load_dataset`` of the hub data set ``name`` of ``sources.yml`` at its pinned revision."""
    from datasets import load_dataset

    entry = load_hub_sources()[name]
    return load_dataset(entry["repo"], entry["config"], split=split, revision=entry["revision"])


def sources_frame(path: str | os.PathLike = SOURCES_FILE) -> pd.DataFrame:
    """One row per source: name, title, licence, homepage, role, and where it comes from (the number of
    mirrored files, or the hub repository and its pinned commit), for the book."""
    rows = [
        dict(name=name, title=e["title"], licence=e["licence"], homepage=e["homepage"], role=e["role"],
             obtained=f"{len(e['files'])} files, checked by sha256")
        for name, e in load_sources(path).items()
    ] + [
        dict(name=name, title=e["title"], licence=e["licence"], homepage=e["homepage"], role=e["role"],
             obtained=f"hub (paper profile), commit {e['revision'][:7]}")
        for name, e in load_hub_sources(path).items()
    ]
    return pd.DataFrame(rows)


# -------------------------------------------------------------------------------------------- fetch
def default_mirror() -> Path | None:
    """The mirror folder named by ``UNIDETOX_DATA_MIRROR``, if set."""
    value = os.environ.get(MIRROR_ENV)
    return Path(value) if value else None


def fetch(
    names: Iterable[str] | None = None,
    mirror: str | os.PathLike | None = None,
    raw_dir: str | os.PathLike | None = None,
    download: bool = True,
    sources_path: str | os.PathLike = SOURCES_FILE,
    timeout: float = 30.0,
    progress: bool = True,
) -> pd.DataFrame:
    """Make every file of the named sources (default: all) present and verified in ``raw_dir``.

    For each file, in order: keep a copy already there whose checksum matches; else copy it from
    ``mirror`` (or ``$UNIDETOX_DATA_MIRROR``); else download the original. A checksum mismatch is
    an error, and the bad file never lands in ``raw_dir``. Returns one row per file with how it
    was obtained (``present``, ``mirror``, ``download``).
    """
    from tqdm.auto import tqdm

    table = load_sources(sources_path)
    names = list(table) if names is None else list(names)
    unknown = [n for n in names if n not in table]
    if unknown:
        raise DataError(f"names={unknown} are not sources; use some of {sorted(table)}.")
    raw_dir = Path(raw_dir) if raw_dir is not None else RAW_DIR
    mirror = Path(mirror) if mirror is not None else default_mirror()
    if mirror is not None and not mirror.is_dir():
        raise DataUnavailableError(
            f"mirror={str(mirror)!r} is not a folder. Point UNIDETOX_DATA_MIRROR (or mirror=) at a copy of the "
            "data mirror, e.g. ../shared/data, or unset it to download the originals."
        )
    _check_writable(raw_dir)
    items = [(name, item) for name in names for item in table[name]["files"]]
    rows = []
    for name, item in tqdm(items, desc="fetch data", unit="file", disable=not progress):
        rows.append(dict(source=name, path=item["path"], how=_fetch_one(item, raw_dir, mirror, download, timeout)))
    return pd.DataFrame(rows)


def _check_writable(raw_dir: Path) -> None:
    try:
        raw_dir.mkdir(parents=True, exist_ok=True)
        probe = raw_dir / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise DataError(
            f"raw_dir={str(raw_dir)!r} is not writable ({err.strerror}). Set UNIDETOX_DATA_DIR (or raw_dir=) to a "
            "writable folder."
        ) from err


def _stamp(path: Path) -> Path:
    return path.with_name(f".{path.name}.verified")


def _verified(path: Path, item: dict) -> bool:
    """True if ``path`` holds the recorded content; a stamp (size, mtime) avoids re-hashing each run."""
    if not path.exists():
        return False
    stat = path.stat()
    token = f"{item['sha256']} {stat.st_size} {stat.st_mtime_ns}"
    stamp = _stamp(path)
    if stamp.exists() and stamp.read_text() == token:
        return True
    try:
        _check_sha(path, item, origin=str(path))
    except ChecksumError:
        return False
    stamp.write_text(token)
    return True


def _fetch_one(item: dict, raw_dir: Path, mirror: Path | None, download: bool, timeout: float) -> str:
    target = raw_dir / item["path"]
    if _verified(target, item):
        return "present"
    if mirror is not None:
        source = mirror / item["path"]
        if not source.exists():
            raise DataUnavailableError(
                f"mirror={str(mirror)!r} lacks {item['path']}. Use a complete copy of the mirror, or unset "
                f"{MIRROR_ENV} to download {item['url']}."
            )
        with atomic_path(target) as tmp:
            shutil.copyfile(source, tmp)
            _check_sha(tmp, item, origin=str(source))
        _verified(target, item)
        return "mirror"
    if not download:
        raise DataUnavailableError(_no_way_message(item, "downloads are disabled (download=False)"))
    with atomic_path(target) as tmp:
        try:
            if item.get("repack"):
                REPACKERS[item["repack"]](item, tmp, timeout)
            else:
                _download(item["url"], tmp, timeout)
        except OSError as err:  # URLError is an OSError: no network, DNS failure, HTTP error
            raise DataUnavailableError(_no_way_message(item, f"the download failed ({err})")) from err
        _check_sha(tmp, item, origin=item["url"])
    _verified(target, item)
    return "download"


def _no_way_message(item: dict, why: str) -> str:
    return (
        f"Cannot obtain {item['path']}: {why}, and no mirror is set. Either set {MIRROR_ENV}=/path/to/mirror "
        f"(e.g. ../shared/data) or pass mirror=..., or run where {item['url']} can be downloaded."
    )


def _check_sha(path: Path, item: dict, origin: str) -> None:
    digest = sha256_file(path)
    if digest == item["sha256"]:
        return
    # A gzip we repacked ourselves differs byte-wise between zlib builds: then compare the content.
    if item.get("content_sha256") and _gzip_content_sha(path) == item["content_sha256"]:
        return
    raise ChecksumError(
        f"{item['path']} from {origin} has sha256 {digest[:16]}..., expected {item['sha256'][:16]}... "
        "(data/sources.yml). The copy is corrupt or a different version: fetch it again from the original "
        "or from a good mirror."
    )


def _gzip_content_sha(path: Path) -> str | None:
    import hashlib

    try:
        with gzip.open(path, "rb") as handle:
            return hashlib.sha256(handle.read()).hexdigest()
    except OSError:
        return None


def _download(url: str, dest: Path, timeout: float) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": "unidetox-book"})
    with urllib.request.urlopen(request, timeout=timeout) as response, open(dest, "wb") as out:
        shutil.copyfileobj(response, out)


def _archive(url: str, timeout: float) -> Path:
    """Download an archive once per process into a temporary cache (many files come from one archive)."""
    import tempfile

    cache = Path(tempfile.gettempdir()) / "unidetox-archives"
    cache.mkdir(exist_ok=True)
    path = cache / re.sub(r"[^A-Za-z0-9._-]", "_", url)
    if not path.exists():
        with atomic_path(path) as tmp:
            _download(url, tmp, timeout)
    return path


def repack_mmlu(item: dict, dest: Path, timeout: float) -> None:
    """MMLU's ``data.tar`` holds header-less CSVs; the project's copy adds the header row."""
    import tarfile

    name = item["path"].split("/", 1)[1]  # dev/anatomy_dev.csv
    with tarfile.open(_archive(item["url"], timeout)) as tar:
        member = tar.extractfile(f"data/{name}")
        rows = list(csv.reader(io.StringIO(member.read().decode("utf-8"))))
    with open(dest, "w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["question", "choice0", "choice1", "choice2", "choice3", "answer"])
        for row in rows:
            writer.writerow(row[:5] + ["ABCD".index(row[5].strip())])


def repack_allsides(item: dict, dest: Path, timeout: float) -> None:
    """The repository's 37,554 ``data/jsons/*.json`` files as one JSON-lines gzip, sorted by ID."""
    import zipfile

    keep = ("ID", "topic", "source", "source_url", "url", "date", "authors", "title", "content_original", "bias_text", "bias")
    records = []
    with zipfile.ZipFile(_archive(item["url"], timeout)) as archive:
        for name in archive.namelist():
            if "/data/jsons/" in name and name.endswith(".json"):
                obj = json.loads(archive.read(name).decode("utf-8"))
                records.append({k: str(obj.get(k, "")) for k in keep})
    records.sort(key=lambda r: r["ID"])
    payload = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
    with open(dest, "wb") as out:
        out.write(gzip.compress(payload, compresslevel=9, mtime=0))


REPACKERS = {"mmlu_tar": repack_mmlu, "allsides_zip": repack_allsides}


def raw_path(relpath: str, raw_dir: str | os.PathLike | None = None) -> Path:
    """Path of a fetched file; a clear error (with the fix) if :func:`fetch` has not provided it."""
    path = (Path(raw_dir) if raw_dir is not None else RAW_DIR) / relpath
    if not path.exists():
        raise DataUnavailableError(
            f"{path} is missing. Run `python -m unidetox_core.data fetch` (or `make data`), with "
            f"{MIRROR_ENV}=/path/to/mirror where downloads are impossible."
        )
    return path


# ------------------------------------------------------------------------- ToxiGen: groups, domains
# The official code's four categories; ID = the three the toxic corpus covers, OOD = disability.
CATEGORY_OF_GROUP = {
    "women": "gender_lgbtq", "lgbtq": "gender_lgbtq", "bisexual": "gender_lgbtq", "trans": "gender_lgbtq",
    "black": "race_nationalities", "asian": "race_nationalities", "latino": "race_nationalities",
    "chinese": "race_nationalities", "mexican": "race_nationalities", "middle_east": "race_nationalities",
    "native_american": "race_nationalities", "immigrant": "race_nationalities",
    "jewish": "religion", "muslim": "religion",
    "mental_disability": "disability", "physical_disability": "disability",
}
ID_CATEGORIES = ("gender_lgbtq", "race_nationalities", "religion")
OOD_CATEGORIES = ("disability",)

# Appendix B.1: ToxiGen annotated target_group labels, in-distribution and out-of-distribution.
TOXIGEN_ID_GROUPS = {
    "women": "gender_lgbtq", "lgbtq": "gender_lgbtq", "lgbtq+ folks": "gender_lgbtq",
    "black": "race_nationalities", "black folks / african-americans": "race_nationalities",
    "black/african-american folks": "race_nationalities", "asian": "race_nationalities",
    "asian folks": "race_nationalities", "latino": "race_nationalities", "latino/hispanic folks": "race_nationalities",
    "chinese": "race_nationalities", "chinese folks": "race_nationalities", "mexican": "race_nationalities",
    "mexican folks": "race_nationalities", "middle_east": "race_nationalities",
    "middle eastern folks": "race_nationalities", "native_american": "race_nationalities",
    "native american/indigenous folks": "race_nationalities", "native american folks": "race_nationalities",
    "jewish": "religion", "jewish folks": "religion", "muslim": "religion", "muslim folks": "religion",
}
TOXIGEN_OOD_GROUPS = {
    "mental_dis": "disability", "folks with mental disabilities": "disability",
    "physical_dis": "disability", "folks with physical disabilities": "disability",
}

# The hub's target_group names of those groups, as the group names above (which the seed files, the
# per-group analyses and groups.GROUP_TERMS use).
HUB_GROUP_NAMES = {
    "lgbtq+ folks": "lgbtq", "black folks / african-americans": "black", "black/african-american folks": "black",
    "asian folks": "asian", "latino/hispanic folks": "latino", "chinese folks": "chinese", "mexican folks": "mexican",
    "middle eastern folks": "middle_east", "native american/indigenous folks": "native_american",
    "native american folks": "native_american", "jewish folks": "jewish", "muslim folks": "muslim",
    "mental_dis": "mental_disability", "folks with mental disabilities": "mental_disability",
    "physical_dis": "physical_disability", "folks with physical disabilities": "physical_disability",
}

# Appendix B.1: the 34 DGHS target labels of gender, sexual orientation, race and religion.
DGHS_TARGETS = (
    "wom", "trans", "gendermin", "bis", "gay", "gay.man", "gay.wom", "mixed.race", "ethnic.minority", "indig",
    "indig.wom", "non.white", "bla", "bla.wom", "bla.man", "asi", "asi.wom", "asi.east", "asi.south", "asi.chin",
    "asi.pak", "arab", "eastern.europe", "russian", "pol", "hispanic", "immig", "asylum", "ref", "for", "jew", "mus",
    "mus.wom", "other.religion",
)


def _domain(category: str) -> str:
    return "ID" if category in ID_CATEGORIES else "OOD"


def _split_seed_line(line: str) -> list[str]:
    """A ``*_1k.txt`` line is a few-shot prompt: sentences joined by the two characters ``\\n``, each
    starting with ``- ``."""
    parts = [p.strip() for p in line.rstrip("\n").split("\\n")]
    return [p[2:].strip() if p.startswith("- ") else p.lstrip("-").strip() for p in parts if p.strip("- ")]


def load_toxigen_seed_prompts(
    raw_dir: str | os.PathLike | None = None, val_fraction: float = 0.5, seed: int = 0
) -> pd.DataFrame:
    """Evaluation prompts for the mini profile: the unique ToxiGen seed sentences.

    Columns: ``text``, ``group``, ``category`` (``gender_lgbtq``, ``race_nationalities``, ``religion``,
    ``disability``), ``domain`` (ID / OOD), ``label`` (hate / neutral) and ``split`` (val / test). The
    split is deterministic and stratified by group and label, like the paper's validation/test split
    of the annotated set (896 / 940 there).
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction={val_fraction} must lie strictly between 0 and 1 (e.g. 0.5).")
    rows, seen = [], set()
    for path, label, group in _seed_files(raw_dir):
        for line in path.read_text(encoding="utf-8").splitlines():
            for sentence in _split_seed_line(line):
                if (sentence, group) not in seen:
                    seen.add((sentence, group))
                    rows.append(dict(text=sentence, group=group, label=label))
    frame = pd.DataFrame(rows)
    frame["category"] = frame["group"].map(CATEGORY_OF_GROUP)
    frame["domain"] = frame["category"].map(_domain)
    frame["split"] = stratified_split(frame, ["group", "label"], val_fraction, seed)
    return frame[["text", "group", "category", "domain", "label", "split"]]


def _seed_files(raw_dir) -> list[tuple[Path, str, str]]:
    """The prompt files (``hate_women_1k.txt``) and the demonstration files (``hate_women_sentences.txt``
    or ``hate_lgbtq.txt``) as (path, label, group): together they hold every ToxiGen seed sentence."""
    files = []
    for path in sorted(raw_path("toxigen/prompts", raw_dir).glob("*_1k.txt")):
        label, group = path.name[: -len("_1k.txt")].split("_", 1)
        files.append((path, label, group))
    for path in sorted(raw_path("toxigen/demonstrations", raw_dir).rglob("*.txt")):
        label, group = path.stem.removesuffix("_sentences").split("_", 1)
        files.append((path, label, group))
    return files


def stratified_split(frame: pd.DataFrame, by: list[str], val_fraction: float, seed: int) -> pd.Series:
    """``val``/``test`` per row: within each stratum, a seeded shuffle puts ``round(n * val_fraction)`` in val."""
    rng = np.random.default_rng(seed)
    split = pd.Series("test", index=frame.index)
    for _, index in sorted(frame.groupby(by).groups.items()):
        index = np.array(sorted(index))
        chosen = rng.permutation(index)[: int(round(len(index) * val_fraction))]
        split.loc[chosen] = "val"
    return split


# ------------------------------------------------------------------------------------------- tweets
_MENTION = re.compile(r"@[A-Za-z0-9_]+")
_URL = re.compile(r"https?://\S+")


def clean_tweet(text: str) -> str:
    """Unescape HTML entities and mask user names and links (``@user``, ``http``), as is usual for tweets."""
    text = html.unescape(text)
    text = _MENTION.sub("@user", text)
    text = _URL.sub("http", text)
    return re.sub(r"\s+", " ", text).strip()


def load_tweets(raw_dir: str | os.PathLike | None = None, test_fraction: float = 0.1, seed: int = 0) -> pd.DataFrame:
    """The 24,783 Davidson et al. tweets: ``text`` (cleaned), ``raw_text``, ``label`` (0 hate, 1 offensive,
    2 neither), ``label_name``, ``toxic`` (hate or offensive) and a seeded ``split`` (train / test,
    stratified by label; the test tweets are held out from every training use)."""
    frame = pd.read_csv(raw_path("hate_offensive/labeled_data.csv", raw_dir))
    out = pd.DataFrame(
        {
            "text": frame["tweet"].map(clean_tweet),
            "raw_text": frame["tweet"],
            "label": frame["class"].astype(int),
        }
    )
    out["label_name"] = out["label"].map({0: "hate", 1: "offensive", 2: "neither"})
    out["toxic"] = out["label"] < 2
    out["split"] = stratified_split(out, ["label"], 1 - test_fraction, seed).map({"val": "train", "test": "test"})
    return out


def load_toxic_corpus(raw_dir: str | os.PathLike | None = None, seed: int = 0) -> pd.DataFrame:
    """The mini profile's toxic fine-tuning corpus: training tweets labelled hate or offensive."""
    tweets = load_tweets(raw_dir, seed=seed)
    return tweets[(tweets["split"] == "train") & tweets["toxic"]].reset_index(drop=True)


# --------------------------------------------------------------------------------------------- MMLU
def load_mmlu(split: str = "test", raw_dir: str | os.PathLike | None = None) -> pd.DataFrame:
    """MMLU questions of ``split`` (``dev`` or ``test``): subject, question, choices (4), answer (0-3)."""
    if split not in ("dev", "test"):
        raise ValueError(f"split={split!r}; use 'dev' (few-shot examples) or 'test' (evaluation).")
    frames = []
    for path in sorted(raw_path(f"mmlu/{split}", raw_dir).glob(f"*_{split}.csv")):
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        frame.insert(0, "subject", path.name[: -len(f"_{split}.csv")])
        frames.append(frame)
    frame = pd.concat(frames, ignore_index=True)
    frame["choices"] = frame[["choice0", "choice1", "choice2", "choice3"]].values.tolist()
    frame["answer"] = frame["answer"].astype(int)
    return frame[["subject", "question", "choices", "answer"]]


# ----------------------------------------------------------------------------------------- AllSides
LEANINGS = ("left", "center", "right")


def load_allsides(scheme: str = "random", raw_dir: str | os.PathLike | None = None) -> pd.DataFrame:
    """AllSides news articles: ID, title, text, source, topic, date, leaning (left/center/right), bias
    (0/1/2), and ``split`` (train/valid/test) of the ``random`` or ``media`` scheme of Baly et al."""
    if scheme not in ("random", "media"):
        raise ValueError(f"scheme={scheme!r}; use 'random' or 'media' (Baly et al.'s two splits).")
    with gzip.open(raw_path("allsides/articles.jsonl.gz", raw_dir), "rt", encoding="utf-8") as handle:
        frame = pd.DataFrame([json.loads(line) for line in handle if line.strip()])
    frame = frame.rename(columns={"content_original": "text", "bias_text": "leaning"})
    frame["bias"] = frame["bias"].astype(int)
    splits = []
    for name in ("train", "valid", "test"):
        ids = pd.read_csv(raw_path(f"allsides/splits/{scheme}/{name}.tsv", raw_dir), sep="\t", dtype=str)["ID"]
        splits.append(pd.DataFrame({"ID": ids, "split": name}))
    frame = frame.merge(pd.concat(splits), on="ID", how="left")
    frame["split"] = frame["split"].fillna("none")  # 1,280 articles belong to no split of the scheme
    return frame[["ID", "title", "text", "source", "topic", "date", "leaning", "bias", "split"]]


# ------------------------------------------------------------------------------ the authors' release
RELEASE_FILE = "unidetox_release/generated_texts_alpha=0.1_beta=inf_checkpoint-15126.csv"


def load_release_text(raw_dir: str | os.PathLike | None = None) -> pd.DataFrame:
    """The authors' 640 texts distilled from GPT-2 XL with alpha = 0.1 (column ``Text``)."""
    return pd.read_csv(raw_path(RELEASE_FILE, raw_dir), keep_default_na=False)


# -------------------------------------------------------------------------- paper profile (the hub)
def filter_dghs(frame: pd.DataFrame) -> pd.DataFrame:
    """Appendix B.1: DGHS training examples labelled ``hate`` whose target is one of the 34 labels."""
    keep = frame["label"].eq("hate") & frame["target"].isin(DGHS_TARGETS)
    if "split" in frame.columns:  # the hub copy is one table with a split column
        keep &= frame["split"].eq("train")
    return frame.loc[keep].reset_index(drop=True)


def filter_toxigen_annotated(frame: pd.DataFrame) -> pd.DataFrame:
    """Appendix B.1: keep the listed target groups; add category and domain (ID / OOD)."""
    groups = {**TOXIGEN_ID_GROUPS, **TOXIGEN_OOD_GROUPS}
    out = frame.loc[frame["target_group"].isin(groups)].copy()
    out["category"] = out["target_group"].map(groups)
    out["domain"] = out["category"].map(_domain)
    if "label" not in out.columns:  # the hub's `annotated` configuration has ratings, not labels
        out["label"] = toxigen_annotated_labels(out)
    return out.reset_index(drop=True)


def toxigen_annotated_labels(frame: pd.DataFrame) -> pd.Series:
    """``hate`` / ``neutral`` from ToxiGen's two human ratings (1-5; raters told the text came from an
    AI, ``toxicity_ai``, or from a person, ``toxicity_human``): hate when their sum exceeds 5.5, the
    rule of lm-evaluation-harness's ToxiGen task, so the labels match that widely used reading."""
    missing = [c for c in ("toxicity_ai", "toxicity_human") if c not in frame.columns]
    if missing:
        raise ValueError(f"ToxiGen annotated rows lack {missing}: expected the hub's `annotated` columns "
                         "(text, target_group, toxicity_ai, toxicity_human, ...).")
    hateful = (frame["toxicity_ai"].astype(float) + frame["toxicity_human"].astype(float)) > 5.5
    return hateful.map({True: "hate", False: "neutral"})


def split_toxigen_annotated(train: pd.DataFrame, test: pd.DataFrame, seed: int = 0, val_fraction: float = 0.1) -> pd.DataFrame:
    """10% of the (filtered) train split, sampled with ``seed``, as validation; the whole test split as test."""
    train, test = filter_toxigen_annotated(train), filter_toxigen_annotated(test)
    val = train.sample(frac=val_fraction, random_state=seed).sort_index()
    return pd.concat([val.assign(split="val"), test.assign(split="test")], ignore_index=True)


def _hub(call, what: str):
    from .models import hub_online

    # Without a network, read only the local caches: otherwise each file is retried for ~25 s first.
    offline = not hub_online()
    try:
        with _datasets_offline(offline):
            return call()
    except Exception as err:  # datasets raises ConnectionError, FileNotFoundError, DatasetNotFoundError...
        why = "the hub is unreachable and it is not in the local cache; " if offline else ""
        raise DataUnavailableError(
            f"{what} could not be loaded from the hub ({why}{err.__class__.__name__}: {str(err)[:200]}). Run the "
            "paper profile where the hub is reachable, or copy a Hugging Face cache that holds it from such a "
            "machine and set HF_HOME (or HF_DATASETS_CACHE) to it, or use the mini profile (data_source='mirror', "
            f"files from the mirror in {MIRROR_ENV})."
        ) from err


@contextlib.contextmanager
def _datasets_offline(offline: bool):
    """``datasets`` and ``huggingface_hub`` read ``HF_HUB_OFFLINE`` once, at import: switch both to
    their offline (cache-only) mode for one call when the hub cannot be reached."""
    if not offline:
        yield
        return
    import datasets.config
    import huggingface_hub.constants as hub_constants

    saved = (datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE)
    datasets.config.HF_HUB_OFFLINE = hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE = saved


def load_dghs_hub() -> pd.DataFrame:
    """The paper's toxic corpus after the filters of Appendix B.1 (the paper reports 25,150 examples)."""
    name = load_hub_sources()["dghs"]["repo"]
    return filter_dghs(_hub(lambda: hub_dataset("dghs", split="train").to_pandas(), f"dataset {name!r}"))


def load_toxigen_annotated_hub(seed: int = 0) -> pd.DataFrame:
    """The paper's evaluation prompts: ToxiGen annotated, ID/OOD groups, val (10% of train) and test."""
    name = load_hub_sources()["toxigen_annotated"]["repo"]
    ds = _hub(lambda: hub_dataset("toxigen_annotated"), f"dataset {name!r} (annotated)")
    frame = split_toxigen_annotated(ds["train"].to_pandas(), ds["test"].to_pandas(), seed=seed)
    frame["group"] = frame["target_group"].replace(HUB_GROUP_NAMES)  # one name per group, as offline
    return frame


def load_mmlu_hub(split: str = "test") -> pd.DataFrame:
    """MMLU ``all`` from the hub, same columns as :func:`load_mmlu`."""
    frame = _hub(lambda: hub_dataset("mmlu", split=split).to_pandas(), "dataset 'cais/mmlu' (all)")
    frame["choices"] = frame["choices"].map(list)
    return frame[["subject", "question", "choices", "answer"]]


# ------------------------------------------------------------------------ one entry point per role
def load_eval_prompts(profile: dict, split: str | None = None) -> pd.DataFrame:
    """Evaluation prompts of a profile (``toxigen_seed`` offline, ``toxigen_annotated`` on the hub)."""
    if profile["eval_prompts"] == "toxigen_annotated":
        frame = load_toxigen_annotated_hub()
    elif profile["eval_prompts"] == "toxigen_seed":
        frame = load_toxigen_seed_prompts()
    else:
        raise ValueError(f"eval_prompts={profile['eval_prompts']!r}; use 'toxigen_seed' or 'toxigen_annotated'.")
    if split is not None:
        frame = frame[frame["split"] == split].reset_index(drop=True)
        limit = profile.get(f"n_{split}_prompts", 0)
        if limit:
            frame = subsample_stratified(frame, limit, seed=0)
    return frame


def subsample_stratified(frame: pd.DataFrame, n: int, seed: int = 0, by: str = "category") -> pd.DataFrame:
    """``n`` rows with each category represented in proportion (at least one each), seeded."""
    if n >= len(frame):
        return frame
    shares = frame[by].value_counts(normalize=True)
    counts = (shares * n).round().astype(int).clip(lower=1)
    parts = [frame[frame[by] == cat].sample(min(k, (frame[by] == cat).sum()), random_state=seed) for cat, k in counts.items()]
    return pd.concat(parts).sort_index().reset_index(drop=True)


def load_mmlu_for(profile: dict, split: str) -> pd.DataFrame:
    return load_mmlu_hub(split) if profile["data_source"] == "hub" else load_mmlu(split)


# ------------------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    """``python -m unidetox_core.data fetch [--mirror DIR] [--raw-dir DIR] [NAME ...]``"""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m unidetox_core.data", description=main.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    cmd = sub.add_parser("fetch", help="download or copy every source into data/raw and verify it")
    cmd.add_argument("names", nargs="*", help="sources to fetch (default: all)")
    cmd.add_argument("--mirror", default=None, help=f"a mirror folder (default: ${MIRROR_ENV})")
    cmd.add_argument("--raw-dir", default=None, help="where to store the files (default: data/raw)")
    args = parser.parse_args(argv)
    try:
        result = fetch(args.names or None, mirror=args.mirror, raw_dir=args.raw_dir)
    except DataError as err:
        print(f"error: {err}")
        return 2
    print(result.groupby(["source", "how"]).size().rename("files").to_string())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
