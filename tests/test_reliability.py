"""No silent wrong state: the store is the truth for status and sync, concurrent syncs share one home, repairs
rebuild, bad input stops before work, and the CLI says what went wrong in one line."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings

import dagster as dg
import pytest

from gmates_assets.cli import main
from gmates_assets.core.store import ArtifactStore
from gmates_assets.defs import build_definitions
from gmates_assets.defs.sync import MISSING, asset_statuses

from .pipeline import ROOT, Build
from .test_pool_assets import make_build, write_jsonl


@pytest.fixture(autouse=True)
def private_env(tmp_path, monkeypatch):
    monkeypatch.setenv("GMATES_CACHE", str(tmp_path / "hash-cache"))
    monkeypatch.delenv("GMATES_VERBOSE", raising=False)  # `main(["--verbose"])` sets it for the process


@pytest.fixture(scope="module")
def documents_built(tmp_path_factory) -> Build:
    """Two local shards with their documents built once; tests work on copies."""
    build = make_build(tmp_path_factory.mktemp("built"))
    build.sync(select=["documents"])
    return build


def docs_artifact(build: Build, shard: str):
    return next(a for a in ArtifactStore(build.store).artifacts("documents") if a.partition == shard)


def use_build(build: Build, monkeypatch) -> None:
    monkeypatch.setenv("DAGSTER_HOME", str(build.dagster_home))
    monkeypatch.setenv("GMATES_HOME", str(build.store))


# ------------------------------------------------------------------------------ the store is the truth
def test_a_deleted_artifact_is_missing_and_sync_rebuilds_only_it(documents_built, tmp_path):
    build = documents_built.copy_to(tmp_path / "b")
    lost = docs_artifact(build, "a")
    shutil.rmtree(lost.path)
    assert build.not_fresh(["documents"]) == {("documents", "a")}
    report = build.sync(select=["documents"])
    assert report.executed == [("documents", "a")]
    assert docs_artifact(build, "a").content_hash == lost.content_hash and not build.not_fresh(["documents"])


def test_a_new_empty_store_with_the_old_dagster_history_rebuilds_everything(documents_built, tmp_path):
    build = documents_built.copy_to(tmp_path / "b")
    fresh_store = tmp_path / "empty-store"
    defs = build_definitions(build.manifest, home=str(fresh_store))
    with build.instance() as instance:
        statuses = asset_statuses(defs, instance, ["documents"], observe=True)
        assert {s.status for s in statuses} == {MISSING}
        assert all("not in the store" in s.causes[0] for s in statuses)
        from gmates_assets.defs.sync import sync

        assert sorted(sync(defs, instance, select=["documents"]).executed) == [("documents", "a"), ("documents", "b")]
    assert len(ArtifactStore(fresh_store).artifacts("documents")) == 2


def test_a_lost_index_entry_is_repaired_and_downstream_finds_its_input(documents_built, tmp_path):
    build = documents_built.copy_to(tmp_path / "b")
    art = docs_artifact(build, "a")
    index = build.store / "by_content" / "documents" / art.content_hash
    index.unlink()  # a kill between the commit and the index write
    assert not build.not_fresh(["documents"]) and index.read_text() == art.input_key  # status repaired it
    index.unlink()
    found = ArtifactStore(build.store).require_by_content("documents", art.content_hash, "a")  # what a step does
    assert found.input_key == art.input_key and index.read_text() == art.input_key


def test_verify_names_a_corrupt_artifact_and_repair_rebuilds_it(documents_built, tmp_path, monkeypatch, capsys):
    build = documents_built.copy_to(tmp_path / "b")
    use_build(build, monkeypatch)
    art = docs_artifact(build, "b")
    good = art.file("documents.parquet").read_bytes()
    art.file("documents.parquet").write_bytes(good[:-7] + b"garbage")
    assert main(["verify", "-m", str(build.manifest)]) == 1
    out = capsys.readouterr().out
    assert "documents[b] - files hash to" in out and "2 artifact(s) checked, 1 corrupt or missing" in out
    assert main(["verify", "-m", str(build.manifest), "--repair"]) == 0
    assert docs_artifact(build, "b").file("documents.parquet").read_bytes() == good
    assert "0 corrupt or missing" in capsys.readouterr().out.splitlines()[-1]


# ------------------------------------------------------------------------------ concurrent syncs
def _cli(build: Build, *args: str) -> subprocess.Popen:
    env = {**os.environ, "DAGSTER_HOME": str(build.dagster_home), "GMATES_HOME": str(build.store),
           "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen([sys.executable, "-m", "gmates_assets.cli", *args], env=env, cwd=build.root,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_concurrent_syncs_on_one_home_agree_and_neither_fails(tmp_path):
    """benchmarks/concurrent_sync.py runs the same race on the whole tests graph."""
    shared = make_build(tmp_path)
    runs = [_cli(shared, "sync", "-m", str(shared.manifest), "--select", "documents") for _ in range(2)]
    outputs = [run.communicate(timeout=600) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    with shared.instance() as instance:
        records = instance.fetch_materializations(dg.AssetKey("documents"), limit=100).records
    hashes: dict = {}
    for record in records:  # every materialization either sync reported, per partition
        hashes.setdefault(record.partition_key, set()).add(record.asset_materialization.metadata["content_hash"].value)
    assert sorted(hashes) == ["a", "b"] and all(len(h) == 1 for h in hashes.values())
    store = ArtifactStore(shared.store)
    assert len(store.artifacts("documents")) == 2 and not store.partials("documents")
    assert not shared.not_fresh(["documents"])


# ------------------------------------------------------------------------------ bad input, early
def test_the_same_file_in_two_shards_fails_at_observation(documents_built, tmp_path):
    build = documents_built.copy_to(tmp_path / "b")
    text = json.loads(build.manifest.read_text())
    text["sources"]["shards"][1]["paths"] = ["a.jsonl"]
    build.manifest.write_text(json.dumps(text))
    with pytest.raises(Exception, match=r"a\.jsonl, field 'sources\.shards\[1\]': shards 'a' and 'b' both read it"):
        build.sync(select=["documents"])
    assert len(ArtifactStore(build.store).artifacts("documents")) == 2  # nothing new was built


def test_clustering_k_larger_than_the_pool_fails_before_any_oracle_work(documents_built, tmp_path):
    build = documents_built.copy_to(tmp_path / "b")
    build.edit("clustering.k", 500)
    with pytest.raises(Exception, match=r"clustering\.k \(500\) is larger than the pool \(18 documents\)"):
        build.sync(select=["probe_pool"])
    assert ArtifactStore(build.store).artifacts("probe_pool") == []


def test_skip_counts_are_shown_by_status(tmp_path, monkeypatch, capsys):
    build = make_build(tmp_path, a_lines='{"text": "fine"}\n{"text": oops}\n{"text": null}\n{"text": "ok"}\n')
    build.edit("sources.on_bad_record", "skip")
    build.sync(select=["documents"])
    use_build(build, monkeypatch)
    capsys.readouterr()
    assert main(["status", "-m", str(build.manifest)]) == 0
    assert "! skipped 2 of 4 record(s): malformed 1, null 1" in capsys.readouterr().out


def test_an_identical_manifest_in_another_folder_keeps_everything_fresh(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    write_jsonl(data / "a.jsonl", ["one document", "another document"])
    write_jsonl(data / "b.jsonl", ["third document"])
    text = json.dumps({"name": "abs", "sources": {"shards": [
        {"name": "a", "format": "jsonl", "paths": [str(data / "a.jsonl")]},
        {"name": "b", "format": "jsonl", "paths": [str(data) + "/b*.jsonl"]}]}})
    build = Build.create(tmp_path / "first", text)
    build.sync(select=["documents"])
    moved = tmp_path / "somewhere" / "else"
    moved.mkdir(parents=True)
    (moved / "manifest.yaml").write_text(text)
    with build.instance() as instance:
        statuses = asset_statuses(build_definitions(moved / "manifest.yaml", home=str(build.store)), instance,
                                  ["documents"], observe=True)
    assert {s.status for s in statuses} == {"fresh"}
    ids = {json.loads(a.record["metadata"]["sample"]["records"][0]["doc_id"].join('""'))
           for a in ArtifactStore(build.store).artifacts("documents")}
    assert ids == {f"{data}/a.jsonl:0", f"{data}/b.jsonl:0"}


# ------------------------------------------------------------------------------ errors a person can read
def test_a_failed_sync_ends_with_one_line_naming_file_line_and_field(tmp_path, monkeypatch, capsys):
    build = make_build(tmp_path, a_lines='{"text": "fine"}\n{"text": oops}\n')
    use_build(build, monkeypatch)
    assert main(["sync", "-m", str(build.manifest), "--select", "documents"]) == 2
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines()[-1] == \
        "gmates sync: a.jsonl, line 2 (row 1): malformed JSON line: Expecting value at column 10"
    assert "Traceback" not in captured.err and "Stack Trace" not in captured.err
    assert len((captured.out + captured.err).splitlines()) <= 5
    assert main(["sync", "-m", str(build.manifest), "--select", "documents", "--verbose"]) == 2
    verbose = capsys.readouterr().err
    assert "Traceback" in verbose and verbose.strip().splitlines()[-1].startswith("gmates sync: a.jsonl, line 2")


def test_status_prints_no_dagster_debug_lines_or_beta_warnings(documents_built, tmp_path, monkeypatch, capfd):
    build = documents_built.copy_to(tmp_path / "b")
    use_build(build, monkeypatch)
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")  # what a terminal would show, unlike pytest's filter
        assert main(["status", "-m", str(build.manifest)]) == 0
    out, err = capfd.readouterr()
    assert err == "" and "DEBUG" not in out and not [w for w in shown if "beta" in str(w.message)]
    assert ["documents[a]", "fresh"] in [line.split() for line in out.splitlines()]


# ------------------------------------------------------------------------------ an object-store root
def test_sync_and_status_work_on_an_fsspec_store_root(documents_built, tmp_path):
    import uuid

    from gmates_assets.defs.sync import sync

    build = documents_built.copy_to(tmp_path / "b")
    root = f"memory://gmates-{uuid.uuid4().hex}"  # the object-store protocol: temp prefix, record last, copies
    defs = build_definitions(build.manifest, home=root)
    with build.instance() as instance:
        report = sync(defs, instance, select=["tokenized_pool"])
        assert {a for a, _ in report.executed} == {"documents", "lm_tokenizer", "tokenized_pool"}
        assert {s.status for s in asset_statuses(defs, instance, ["documents", "tokenized_pool"])} == {"fresh"}
    store = ArtifactStore(root)
    tokens = [a for a in store.artifacts("tokenized_pool") if a.partition == "a"][0]
    assert tokens.location.startswith("memory://") and tokens.path.is_dir()
    assert store.stored_hash(tokens) == tokens.content_hash and not store.partials("tokenized_pool")
