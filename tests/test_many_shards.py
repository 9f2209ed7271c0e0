"""Past 100 shards Dagster drops staleness across the pool -> whole-pool edge; the shard indexes carry it.

120 local jsonl shards, built up to the BPE tokenizer (which reads every shard through documents_index). Editing
one document of one shard must show that shard, the index and the tokenizer stale at once (`gmates status`), and
one sync must rebuild exactly those.
"""
from __future__ import annotations

import json

import pytest

from gmates_assets.cli import main
from gmates_assets.defs.sync import STALE

from .pipeline import TESTS_MANIFEST, Build

N_SHARDS = 120  # past the 100-partition threshold where Dagster stops tracking staleness


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
def test_one_edited_shard_of_120_propagates_to_whole_pool_readers(tmp_path, capsys, monkeypatch):
    build = Build.create(tmp_path / "b", _manifest(N_SHARDS))
    for i in range(N_SHARDS):
        _write_shard(build, i)
    build.sync(select=["lm_tokenizer"])
    assert build.not_fresh(["documents", "documents_index", "lm_tokenizer"]) == set()

    _write_shard(build, 7, suffix=" (edited)")
    # What `gmates status` prints: Dagster alone reports documents_index and lm_tokenizer fresh here
    # (120 >= 100 partitions); gmates carries the edited shard's staleness to them.
    for name, value in build.env().items():
        monkeypatch.setenv(name, value)
    assert main(["status", "--manifest", str(build.manifest), "--json"]) == 0
    rows = {(r["asset"], r["partition"]): r for r in json.loads(capsys.readouterr().out)}
    stale = {key for key, row in rows.items() if row["status"] == STALE}
    assert stale == {("documents", "s007"), ("documents_index", None), ("lm_tokenizer", None)}
    built = {"documents", "documents_index", "lm_tokenizer"}  # the rest of the graph was never built
    assert {row["status"] for key, row in rows.items() if key[0] not in built} == {"missing"}
    assert rows[("documents_index", None)]["causes"] == ["documents_index: upstream documents[s007] is stale"]

    report = build.sync(select=["lm_tokenizer"])
    assert report.executed == [("documents", "s007"), ("documents_index", None), ("lm_tokenizer", None)]
    assert build.not_fresh(["documents", "documents_index", "lm_tokenizer"]) == set()
