"""Pool assets on local jsonl shards: per-shard recompute, resumable embedding, bad input leaves no trace."""
from __future__ import annotations

import json
import traceback

import polars as pl
import pytest

from gmates_assets.core.encode import default_encoder_dir
from gmates_assets.core.store import ArtifactStore

from .pipeline import Build

POOL = ["tokenized_pool", "embeddings"]


def manifest_text(extra_a: dict | None = None) -> str:
    shard_a = {"name": "a", "format": "jsonl", "paths": ["a.jsonl"], **(extra_a or {})}
    return json.dumps({
        "name": "local",
        "sources": {"shards": [shard_a, {"name": "b", "format": "jsonl", "paths": ["b.jsonl"]}]},
        # A pretrained tokenizer does not read the pool, so one shard's change cannot reach another shard.
        "tokenizer": {"kind": "pretrained", "name": str(default_encoder_dir()), "add_eos": False, "max_tokens": 32},
        "encoder": {"max_length": 64, "chunk_size": 32, "batch_size": 8, "commit_every_docs": 4},
    })


def write_jsonl(path, texts) -> None:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))


def make_build(tmp_path, a_lines=None, extra_a=None) -> Build:
    build = Build.create(tmp_path / "b", manifest_text(extra_a))
    if a_lines is None:
        write_jsonl(build.root / "a.jsonl", [f"alpha document number {i} about rivers" for i in range(10)])
    else:
        (build.root / "a.jsonl").write_text(a_lines)
    write_jsonl(build.root / "b.jsonl", [f"beta document number {i} about mountains" for i in range(8)])
    return build


def test_changing_one_source_file_recomputes_only_its_shard(tmp_path):
    build = make_build(tmp_path)
    first = build.sync(select=POOL)
    assert {("documents", "a"), ("documents", "b"), ("embeddings", "a"), ("embeddings", "b")} <= set(first.executed)
    write_jsonl(build.root / "b.jsonl", [f"beta document number {i} about glaciers" for i in range(8)])
    assert build.not_fresh(["documents"]) == {("documents", "b")}
    report = build.sync(select=POOL)
    assert set(report.executed) == {("documents", "b"), ("tokenized_pool", "b"), ("embeddings", "b")}
    stored = build.latest_metadata("documents", "b")["artifact_path"]
    ids = pl.read_parquet(f"{stored}/documents.parquet")["doc_id"].to_list()
    assert ids == [f"b.jsonl:{row}" for row in range(8)]  # stable ids: (source file, row)


BAD_INPUTS = {
    "malformed_json": ('{"text": "fine"}\n{"text": oops}\n', "a.jsonl", "line 2"),
    "missing_field": ('{"text": "fine"}\n{"body": "no text here"}\n', "a.jsonl", "'text'"),
    "empty_document": ('{"text": "fine"}\n{"text": "   "}\n', "a.jsonl", "line 2"),
    "invalid_utf8": (b'{"text": "fine"}\n{"text": "bad \xff byte"}\n', "a.jsonl", "line 2"),
}


def _message(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_record_fails_with_file_line_field_and_leaves_no_artifact(tmp_path, case):
    content, file_name, where = BAD_INPUTS[case]
    build = make_build(tmp_path, a_lines="")
    path = build.root / "a.jsonl"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(Exception) as err:
        build.sync(select=["documents"])
    message = _message(err.value)
    assert file_name in message and where in message
    store = ArtifactStore(build.store)
    assert not [a for a in store.artifacts("documents") if a.partition == "a"] and not store.partials("documents")


def test_skip_mode_counts_bad_records_instead(tmp_path):
    build = make_build(tmp_path, a_lines='{"text": "fine"}\n{"text": oops}\n{"text": ""}\n{"text": "also fine"}\n')
    build.edit("sources.on_bad_record", "skip")
    build.sync(select=["documents"])
    meta = build.latest_metadata("documents", "a")
    assert meta["dagster/row_count"] == 2
    assert meta["read_stats"]["skipped"] == {"empty": 1, "malformed": 1}


@pytest.mark.parametrize("problem", ["missing_file", "sha256_mismatch"])
def test_file_level_problems_fail_before_any_work(tmp_path, problem):
    extra = {"paths": ["nope.jsonl"]} if problem == "missing_file" else {"sha256": {"a.jsonl": "0" * 64}}
    build = make_build(tmp_path, extra_a=extra)
    with pytest.raises(Exception) as err:
        build.sync(select=["documents"])
    message = _message(err.value)
    assert ("nope.jsonl" in message) if problem == "missing_file" else ("a.jsonl" in message and "sha256" in message)
    assert ArtifactStore(build.store).artifacts("documents") == []
