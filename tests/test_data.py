import csv
import functools
import hashlib
import http.server
import io
import json
import tarfile
import threading
import urllib.error
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import yaml

from unidetox_core import data


# ------------------------------------------------------------------------------ the mirrored data
@pytest.fixture(scope="module")
def raw(mirror, tmp_path_factory):
    """All five sources copied from the mirror into a fresh raw folder, as `make data` does."""
    raw_dir = tmp_path_factory.mktemp("raw")
    result = data.fetch(mirror=mirror, raw_dir=raw_dir, progress=False)
    assert set(result["how"]) == {"mirror"}
    return raw_dir


def test_fetch_copies_every_file_once_then_finds_it_present(raw, mirror):
    again = data.fetch(mirror=mirror, raw_dir=raw, progress=False)
    assert len(again) == len(data.load_sources()["mmlu"]["files"]) + 74  # 114 MMLU + 74 others
    assert set(again["how"]) == {"present"}


def test_counts_of_every_loader(raw):
    test, dev = data.load_mmlu("test", raw), data.load_mmlu("dev", raw)
    assert (len(test), len(dev), test["subject"].nunique()) == (14042, 285, 57)
    assert all(len(c) == 4 for c in test["choices"]) and set(test["answer"]) == {0, 1, 2, 3}
    tweets = data.load_tweets(raw)
    assert len(tweets) == 24783
    assert tweets["label"].value_counts().to_dict() == {1: 19190, 2: 4163, 0: 1430}
    assert len(data.load_allsides("random", raw)) == 37554
    assert len(data.load_release_text(raw)) == 640


def test_toxigen_prompts_have_domains_and_a_stratified_deterministic_split(raw):
    prompts = data.load_toxigen_seed_prompts(raw)
    assert set(prompts["category"]) == {"gender_lgbtq", "race_nationalities", "religion", "disability"}
    assert set(prompts.loc[prompts["domain"] == "OOD", "group"]) == {"mental_disability", "physical_disability"}
    assert not prompts.duplicated(["text", "group"]).any()
    assert not prompts["text"].str.contains(r"\\n", regex=False).any()
    # Stratified: in every (group, label) stratum, val holds round(n / 2) rows.
    for _, stratum in prompts.groupby(["group", "label"]):
        assert (stratum["split"] == "val").sum() == round(len(stratum) * 0.5)
    again = data.load_toxigen_seed_prompts(raw)
    assert again["split"].equals(prompts["split"])
    other = data.load_toxigen_seed_prompts(raw, seed=1)
    assert not other["split"].equals(prompts["split"])


def test_toxic_corpus_is_hate_and_offensive_training_tweets(raw):
    tweets, toxic = data.load_tweets(raw), data.load_toxic_corpus(raw)
    expected = tweets[(tweets["split"] == "train") & (tweets["label"] < 2)]
    assert len(toxic) == len(expected) and set(toxic["label"]) == {0, 1}
    assert not set(toxic["text"]) & set(tweets.loc[tweets["split"] == "test", "text"]) - set(expected["text"])


def test_allsides_splits_follow_the_repository(raw):
    random_split = data.load_allsides("random", raw)
    assert random_split["split"].value_counts().to_dict() == {"train": 27978, "valid": 6996, "test": 1300, "none": 1280}
    assert set(random_split["leaning"]) == set(data.LEANINGS)
    media = data.load_allsides("media", raw)
    assert (media["split"] == "test").sum() == 1300


def test_clean_tweet_masks_users_links_and_entities():
    assert data.clean_tweet("RT @bob_1: a &amp; b http://t.co/x  ok") == "RT @user: a & b http ok"


# -------------------------------------------------------------------------- fetch: errors and paths
def _fake_source(tmp_path: Path, content: bytes, url: str, sha: str | None = None) -> Path:
    sources = {
        "fake": dict(title="t", licence="MIT", homepage="h", role="r",
                     files=[dict(path="fake/a.txt", url=url, sha256=sha or hashlib.sha256(content).hexdigest())])
    }
    path = tmp_path / "sources.yml"
    path.write_text(yaml.safe_dump(sources))
    return path


def test_checksum_mismatch_is_an_error_and_leaves_no_file(tmp_path):
    mirror = tmp_path / "mirror"
    (mirror / "fake").mkdir(parents=True)
    (mirror / "fake" / "a.txt").write_bytes(b"tampered")
    sources = _fake_source(tmp_path, b"original", "http://127.0.0.1:9/a.txt")
    with pytest.raises(data.ChecksumError, match=r"fake/a.txt .* has sha256 .* expected"):
        data.fetch(mirror=mirror, raw_dir=tmp_path / "raw", sources_path=sources, progress=False)
    assert not (tmp_path / "raw" / "fake" / "a.txt").exists()
    assert list((tmp_path / "raw" / "fake").iterdir()) == []  # no temporary left behind


def test_no_network_and_no_mirror_names_both_ways_out(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.delenv(data.MIRROR_ENV, raising=False)
    monkeypatch.setattr(data.urllib.request, "urlopen", offline)
    sources = _fake_source(tmp_path, b"x", "https://example.org/a.txt")
    with pytest.raises(data.DataUnavailableError) as err:
        data.fetch(raw_dir=tmp_path / "raw", sources_path=sources, progress=False)
    assert "UNIDETOX_DATA_MIRROR" in str(err.value) and "https://example.org/a.txt" in str(err.value)


def test_a_missing_mirror_folder_is_named(tmp_path):
    sources = _fake_source(tmp_path, b"x", "https://example.org/a.txt")
    with pytest.raises(data.DataUnavailableError, match="mirror='.*nowhere' is not a folder"):
        data.fetch(mirror=tmp_path / "nowhere", raw_dir=tmp_path / "raw", sources_path=sources, progress=False)


def test_unwritable_data_folder_is_named(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    sources = _fake_source(tmp_path, b"x", "https://example.org/a.txt")
    with pytest.raises(data.DataError, match="raw_dir=.* is not writable"):
        data.fetch(raw_dir=blocker / "raw", sources_path=sources, progress=False)


@pytest.fixture()
def local_server(tmp_path):
    """A file server on the loopback address: the download path, tested for real."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_download_from_the_original_verifies_and_stores(tmp_path, local_server, monkeypatch):
    monkeypatch.delenv(data.MIRROR_ENV, raising=False)
    root, base = local_server
    (root / "a.txt").write_bytes(b"hello world\n")
    sources = _fake_source(tmp_path, b"hello world\n", f"{base}/a.txt")
    result = data.fetch(raw_dir=tmp_path / "raw", sources_path=sources, progress=False)
    assert result["how"].tolist() == ["download"]
    assert (tmp_path / "raw" / "fake" / "a.txt").read_bytes() == b"hello world\n"
    (root / "a.txt").write_bytes(b"changed upstream\n")  # present and verified: not downloaded again
    assert data.fetch(raw_dir=tmp_path / "raw", sources_path=sources, progress=False)["how"].tolist() == ["present"]


def test_a_changed_original_is_refused(tmp_path, local_server, monkeypatch):
    monkeypatch.delenv(data.MIRROR_ENV, raising=False)
    root, base = local_server
    (root / "a.txt").write_bytes(b"new version\n")
    sources = _fake_source(tmp_path, b"old version\n", f"{base}/a.txt")
    with pytest.raises(data.ChecksumError):
        data.fetch(raw_dir=tmp_path / "raw", sources_path=sources, progress=False)


def test_mmlu_repack_of_the_original_tar_matches_the_recorded_checksum(tmp_path, mirror, local_server, monkeypatch):
    """The original data.tar has header-less CSVs with letter answers; the repack must give our bytes."""
    monkeypatch.delenv(data.MIRROR_ENV, raising=False)
    root, base = local_server
    rows = list(csv.reader(io.StringIO((mirror / "mmlu/dev/anatomy_dev.csv").read_text())))[1:]
    original = io.StringIO()
    csv.writer(original).writerows([r[:5] + ["ABCD"[int(r[5])]] for r in rows])
    payload = original.getvalue().encode()
    with tarfile.open(root / "data.tar", "w") as tar:
        info = tarfile.TarInfo("data/dev/anatomy_dev.csv")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    entry = next(f for f in data.load_sources()["mmlu"]["files"] if f["path"] == "mmlu/dev/anatomy_dev.csv")
    sources = {"mmlu": dict(title="t", licence="MIT", homepage="h", role="r", files=[{**entry, "url": f"{base}/data.tar?{tmp_path.name}"}])}
    (tmp_path / "s.yml").write_text(yaml.safe_dump(sources))
    assert data.fetch(raw_dir=tmp_path / "raw", sources_path=tmp_path / "s.yml", progress=False)["how"].tolist() == ["download"]


def test_allsides_repack_joins_json_files_sorted_by_id(tmp_path):
    archive = tmp_path / "main.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i in ("b", "a"):
            zf.writestr(f"repo-main/data/jsons/{i}.json", json.dumps({"ID": i, "content": "x", "content_original": f"text {i}", "bias_text": "left", "bias": 0}))
    monkey_item = {"path": "allsides/articles.jsonl.gz", "url": "unused"}
    original = data._archive
    data._archive = lambda url, timeout: archive
    try:
        data.repack_allsides(monkey_item, tmp_path / "out.gz", 1)
    finally:
        data._archive = original
    import gzip

    lines = [json.loads(l) for l in gzip.decompress((tmp_path / "out.gz").read_bytes()).decode().splitlines()]
    assert [l["ID"] for l in lines] == ["a", "b"] and lines[0]["content_original"] == "text a"
    assert "content" not in lines[0] and lines[0]["bias"] == "0"


@pytest.mark.parametrize(
    "broken, message",
    [
        ({"x": {"title": "t"}}, r"source 'x' lacks field\(s\) \['licence', 'homepage', 'role', 'files'\]"),
        ({"x": dict(title="t", licence="l", homepage="h", role="r", files=[])}, "'files' must be a non-empty list"),
        ({"x": dict(title="t", licence="l", homepage="h", role="r", files=[{"path": "p", "url": "u"}])}, r"files\[0\] lacks \['sha256'\]"),
        ({"x": dict(title="t", licence="l", homepage="h", role="r", files=[{"path": "p", "url": "u", "sha256": "abc"}])}, "64 lowercase hex"),
        ({"x": dict(title="t", licence="l", homepage="h", role="r", files=[{"path": "p", "url": "u", "sha256": "a" * 64, "repack": "zip"}])}, "repack='zip' is unknown"),
    ],
)
def test_malformed_sources_entries_are_named(tmp_path, broken, message):
    path = tmp_path / "sources.yml"
    path.write_text(yaml.safe_dump(broken))
    with pytest.raises(data.SourcesError, match=message):
        data.load_sources(path)


def test_the_shipped_sources_table_is_valid_and_complete():
    table = data.load_sources()
    assert set(table) == {"toxigen", "hate_offensive", "mmlu", "allsides", "unidetox_release"}
    assert sum(len(e["files"]) for e in table.values()) == 188
    assert {e["licence"] for e in table.values()} == {"MIT", "Apache-2.0"}


def test_missing_raw_file_says_how_to_fetch(tmp_path):
    with pytest.raises(data.DataUnavailableError, match="unidetox_core.data fetch"):
        data.load_release_text(tmp_path)


# ----------------------------------------------------------------------- paper-profile hub filters
def test_dghs_filter_keeps_train_hate_of_the_34_targets():
    frame = pd.DataFrame(
        {
            "text": list("abcdef"),
            "label": ["hate", "hate", "nothate", "hate", "hate", "hate"],
            "target": ["wom", "dis", "wom", "mus.wom", "jew", "bla"],
            "split": ["train", "train", "train", "train", "test", "train"],
        }
    )
    assert data.filter_dghs(frame)["text"].tolist() == ["a", "d", "f"]
    assert len(data.DGHS_TARGETS) == 34 == len(set(data.DGHS_TARGETS))


# The features of the hub's toxigen/toxigen-data `annotated` configuration (its dataset card): ratings, no label.
TOXIGEN_ANNOTATED_COLUMNS = ["text", "target_group", "factual?", "ingroup_effect", "lewd", "framing", "predicted_group",
                             "stereotyping", "intent", "toxicity_ai", "toxicity_human", "predicted_author",
                             "actual_method"]


def _toxigen_annotated(texts, groups, ai, human) -> pd.DataFrame:
    frame = pd.DataFrame({c: [""] * len(texts) for c in TOXIGEN_ANNOTATED_COLUMNS})
    frame["text"], frame["target_group"] = texts, groups
    frame["toxicity_ai"], frame["toxicity_human"] = [float(a) for a in ai], [float(h) for h in human]
    return frame


def test_toxigen_annotated_rows_get_labels_from_the_two_ratings():
    frame = _toxigen_annotated(["a", "b", "c", "d"], ["women", "black", "jewish", "lgbtq"], [3, 2.5, 1, 5], [2.6, 3, 1, 4])
    kept = data.filter_toxigen_annotated(frame)
    # hate when toxicity_ai + toxicity_human > 5.5: 5.6 yes, 5.5 no, 2 no, 9 yes
    assert kept["label"].tolist() == ["hate", "neutral", "neutral", "hate"]
    with pytest.raises(ValueError, match="toxicity_human"):
        data.filter_toxigen_annotated(frame.drop(columns=["toxicity_human"]))


def test_toxigen_annotated_split_takes_ten_percent_of_train_as_validation():
    groups = list(data.TOXIGEN_ID_GROUPS) + list(data.TOXIGEN_OOD_GROUPS) + ["other group"]
    train = _toxigen_annotated([f"t{i}" for i in range(270)], [groups[i % len(groups)] for i in range(270)],
                               [i % 5 + 1 for i in range(270)], [(i // 5) % 5 + 1 for i in range(270)])
    test = _toxigen_annotated(["u1", "u2", "u3"], ["women", "physical_dis", "other group"], [1, 5, 1], [1, 5, 1])
    frame = data.split_toxigen_annotated(train, test, seed=0)
    kept_train = train["target_group"].isin(groups[:-1]).sum()
    assert (frame["split"] == "val").sum() == round(kept_train * 0.1)
    assert frame.loc[frame["split"] == "test", "text"].tolist() == ["u1", "u2"]
    assert frame.loc[frame["text"] == "u2", "domain"].item() == "OOD"
    assert frame.loc[frame["text"] == "u2", "label"].item() == "hate"
    assert frame.equals(data.split_toxigen_annotated(train, test, seed=0))
    assert len(data.TOXIGEN_ID_GROUPS) == 23 and len(data.TOXIGEN_OOD_GROUPS) == 4


def test_hub_data_sets_are_pinned_and_loaded_at_their_revision(monkeypatch):
    hub = data.load_hub_sources()
    assert set(hub) == {"dghs", "toxigen_annotated", "mmlu"}
    assert all(len(entry["revision"]) == 40 and entry["licence"] for entry in hub.values())
    calls = []
    import datasets

    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: calls.append((args, kwargs)) or "loaded")
    assert data.hub_dataset("toxigen_annotated") == "loaded"
    assert calls == [(("toxigen/toxigen-data", "annotated"), {"split": None, "revision": hub["toxigen_annotated"]["revision"]})]
    frame = data.sources_frame()
    assert {"dghs", "toxigen_annotated", "mmlu", "allsides"} <= set(frame["name"])
    assert "data.hub" not in data.load_sources() and "hub" not in data.load_sources()


def test_a_hub_data_set_without_a_commit_is_refused(tmp_path):
    path = tmp_path / "sources.yml"
    path.write_text("hub:\n  x: {title: t, licence: l, homepage: h, role: r, repo: a/b, config: null, revision: main}\n")
    with pytest.raises(data.SourcesError, match="revision must be a commit"):
        data.load_hub_sources(path)


# ------------------------------------------------------------------ the hub data sets' own schemas
HUB_FIXTURES = Path(__file__).parent / "fixtures" / "hub"


def _hub_fixture(name: str, features=None):
    import datasets

    rows = [json.loads(line) for line in (HUB_FIXTURES / name).read_text().splitlines()]
    return datasets.Dataset.from_list(rows, features=features)


def test_hub_loaders_read_the_hub_schemas(monkeypatch):
    """The three loaders of the paper profile, on rows in the hub data sets' columns and types
    (tests/fixtures/hub), give the frames the chapters read."""
    import datasets

    mmlu_features = datasets.Features({"question": datasets.Value("string"), "subject": datasets.Value("string"),
                                       "choices": datasets.Sequence(datasets.Value("string")),
                                       "answer": datasets.ClassLabel(names=["A", "B", "C", "D"])})
    loaded = {
        "dghs": _hub_fixture("dghs.jsonl"),
        "toxigen_annotated": datasets.DatasetDict(train=_hub_fixture("toxigen_annotated_train.jsonl"),
                                                  test=_hub_fixture("toxigen_annotated_test.jsonl")),
        "mmlu": _hub_fixture("mmlu_test.jsonl", mmlu_features),
    }
    monkeypatch.setattr(data, "hub_dataset", lambda name, split=None: loaded[name])
    monkeypatch.setattr("unidetox_core.models.hub_online", lambda: True)

    # Appendix B.1: hateful, one of the 34 targets, train split -- rows 1 and 5 of the six
    dghs = data.load_dghs_hub()
    assert dghs["acl.id"].tolist() == ["acl1", "acl5"] and set(dghs["label"]) == {"hate"}

    prompts = data.load_toxigen_annotated_hub()
    assert {"text", "group", "category", "domain", "label", "split"} <= set(prompts.columns)
    test = prompts[prompts["split"] == "test"]
    # labels from the ratings: 2.0 + 3.6 = 5.6 is hate, 1.0 + 2.0 is not
    assert test["label"].tolist() == ["hate", "neutral"] and test["category"].tolist() == ["religion", "gender_lgbtq"]
    from unidetox_core.groups import GROUP_TERMS  # the hub's group names become the ones the analyses know

    assert set(prompts["group"]) <= set(GROUP_TERMS) and "target_group" in prompts.columns
    assert (prompts["split"] == "val").sum() == round(4 * 0.1)  # 10% of the four kept train rows ("other" is not a group)

    mmlu = data.load_mmlu_hub()
    assert mmlu.columns.tolist() == ["subject", "question", "choices", "answer"]
    assert mmlu["answer"].tolist() == [1, 3] and mmlu["choices"].iloc[1] == ["a", "b", "c", "d"]
