"""Past 100 shards Dagster drops staleness across the pool -> whole-pool edge; the shard indexes carry it.

Local jsonl shards past Dagster's threshold (lowered from 100 to 10 here, see pipeline.fan_in_threshold: 12
shards take the code paths of 120), built up to the BPE tokenizer (which reads every shard through
documents_index). Editing one document of one shard must show that shard stale, then (once it is rebuilt) the
index, exactly as below the threshold; `gmates status` says so, and sync rebuilds exactly the shard, the index
and the tokenizer.
"""
from __future__ import annotations

import json

import pytest

from gmates_assets.cli import main
from gmates_assets.defs.sync import STALE

from .pipeline import TESTS_MANIFEST, Build, fan_in_threshold

THRESHOLD = 10  # Dagster's 100, lowered for this test (pipeline.fan_in_threshold)
N_SHARDS = 12  # past the threshold where Dagster stops tracking staleness


def _manifest(n: int) -> str:
    import yaml

    data = yaml.safe_load(TESTS_MANIFEST.read_text())
    data["sources"] = {"shards": [{"name": f"s{i:03d}", "format": "jsonl", "paths": [f"pool/s{i:03d}.jsonl"]}
                                  for i in range(n)],
                       "reference": {"format": "demo"}, "heldout_reference": {"format": "demo"}}
    data["tokenizer"] = {"kind": "train_bpe", "vocab_size": 300, "max_tokens": 32}
    data["execution"] = {"executor": "in_process"}
    return yaml.safe_dump(data, sort_keys=False)


def _write_shard(build: Build, i: int, suffix: str = "") -> None:
    path = build.root / "pool" / f"s{i:03d}.jsonl"
    path.parent.mkdir(exist_ok=True)
    path.write_text("".join(json.dumps({"text": f"shard {i} document {j} about topic {j % 5}{suffix}"}) + "\n"
                            for j in range(3)))


@pytest.mark.slow
def test_one_edited_shard_past_dagsters_fan_in_threshold_propagates_to_whole_pool_readers(tmp_path, capsys,
                                                                                          monkeypatch):
    with fan_in_threshold(THRESHOLD):
        _edit_one_shard_and_sync(tmp_path, capsys, monkeypatch)


def _edit_one_shard_and_sync(tmp_path, capsys, monkeypatch) -> None:
    build = Build.create(tmp_path / "b", _manifest(N_SHARDS))
    for i in range(N_SHARDS):
        _write_shard(build, i)
    build.sync(select=["lm_tokenizer"])
    assert _stale_in_status(build, monkeypatch, capsys) == {}

    _write_shard(build, 7, suffix=" (edited)")
    # As at 16 shards (Dagster's one-hop staleness): the edited shard is stale; what reads it is judged once it
    # is rebuilt and its data version is known.
    assert _stale_in_status(build, monkeypatch, capsys) == {
        ("documents", "s007"): ["has a new dependency data version (pool_source[s007])"]}

    report = build.sync(select=["documents"])
    assert report.executed == [("documents", "s007")]
    # Dagster alone reports documents_index fresh here (12 >= its threshold); gmates compares input keys.
    assert _stale_in_status(build, monkeypatch, capsys) == {
        ("documents_index", None): ["documents_index: an input partition has a new data version since the last build"]}

    report = build.sync(select=["lm_tokenizer"])
    assert report.executed == [("documents_index", None), ("lm_tokenizer", None)]
    assert build.not_fresh(["documents", "documents_index", "lm_tokenizer"]) == set()


def _stale_in_status(build: Build, monkeypatch, capsys) -> dict:
    """What `gmates status --json` reports stale (the never-built rest of the graph is missing), with causes."""
    for name, value in build.env().items():
        monkeypatch.setenv(name, value)
    capsys.readouterr()
    assert main(["status", "--manifest", str(build.manifest), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    built = {"documents", "documents_index", "lm_tokenizer"}
    assert {r["status"] for r in rows if r["asset"] not in built} == {"missing"}
    return {(r["asset"], r["partition"]): [c.split(": ", 1)[-1] if r["asset"] == "documents" else c
                                           for c in r["causes"]]
            for r in rows if r["status"] == STALE}
