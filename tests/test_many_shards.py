"""Past 100 shards Dagster drops staleness across the pool -> whole-pool edge; the shard indexes carry it.

101 local jsonl shards, built up to the BPE tokenizer (which reads every shard through documents_index). Editing
one document of one shard must show the index and the tokenizer stale and rebuild exactly those and that shard.
"""
from __future__ import annotations

import json

import pytest

from gmates_assets.defs.sync import STALE

from .pipeline import TESTS_MANIFEST, Build

N_SHARDS = 101  # just past the 100-partition threshold where Dagster stops tracking staleness


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
def test_one_edited_shard_of_101_propagates_to_whole_pool_readers(tmp_path):
    build = Build.create(tmp_path / "b", _manifest(N_SHARDS))
    for i in range(N_SHARDS):
        _write_shard(build, i)
    build.sync(select=["lm_tokenizer"])

    _write_shard(build, 7, suffix=" (edited)")
    stale = {item for item in build.not_fresh(["documents", "documents_index", "lm_tokenizer"])}
    assert stale == {("documents", "s007")}  # one hop: the index is judged once the shard is rebuilt

    report = build.sync(select=["documents"])
    assert report.executed == [("documents", "s007")]
    with build.instance() as instance:
        from gmates_assets.defs.sync import asset_statuses

        statuses = {(s.asset, s.partition): s for s in asset_statuses(build.defs(), instance,
                                                                        ["documents_index", "lm_tokenizer"])}
    # Dagster alone reports documents_index fresh here (101 >= 100 partitions); gmates compares input keys.
    assert statuses[("documents_index", None)].status == STALE
    assert "new data version" in statuses[("documents_index", None)].causes[0]

    report = build.sync(select=["lm_tokenizer"])
    assert report.executed == [("documents_index", None), ("lm_tokenizer", None)]
    assert build.not_fresh(["documents", "documents_index", "lm_tokenizer"]) == set()
