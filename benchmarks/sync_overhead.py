"""Dagster overhead of `gmates sync` per partition, as a ratio to the compute it wraps, and run overlap.

For each shard count, a pool of local jsonl shards is built up to the shard indexes (documents, tokenized_pool,
embeddings and their indexes: the per-shard part of the graph, where run count grows with the pool), then
synced again with nothing to do. Overhead = sync wall time - the compute seconds every step recorded, which
covers run creation, event storage, staleness resolution and store lookups. With `--launcher instance` the
runs go through the instance's run launcher with `max_concurrent` in flight, and the script counts the runs
whose execution overlapped another's.

    python benchmarks/sync_overhead.py --shards 2 16 64 128 --docs-per-shard 40
    python benchmarks/sync_overhead.py --shards 16 --launcher instance --max-concurrent 2
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TARGETS = ["documents_index", "tokenized_pool_index", "embeddings_index"]


def _manifest(n_shards: int, launcher: str, max_concurrent: int) -> dict:
    data = yaml.safe_load((ROOT / "data_manifests" / "tests.yaml").read_text())
    data["sources"] = {"shards": [{"name": f"s{i:03d}", "format": "jsonl", "paths": [f"pool/s{i:03d}.jsonl"]}
                                  for i in range(n_shards)],
                       "reference": {"format": "demo"}, "heldout_reference": {"format": "demo"}}
    data["tokenizer"] = {"kind": "train_bpe", "vocab_size": 300, "max_tokens": 32}
    data["encoder"].update({"max_length": 64, "chunk_size": 32})
    data["execution"] = {"launcher": launcher, "max_concurrent": max_concurrent, "executor": "in_process"}
    return data


def _write_pool(root: Path, n_shards: int, docs: int) -> None:
    (root / "pool").mkdir(parents=True)
    for i in range(n_shards):
        lines = (json.dumps({"text": f"shard {i} document {j}: notes on topic {j % 7} and river {i % 5}"})
                 for j in range(docs))
        (root / "pool" / f"s{i:03d}.jsonl").write_text("\n".join(lines) + "\n")


def _compute_seconds(instance) -> tuple[float, int]:
    import dagster as dg

    total, partitions = 0.0, 0
    for asset in ["documents", "tokenized_pool", "embeddings", "lm_tokenizer"] + TARGETS:
        cursor = None
        while True:
            page = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset)),
                                                   limit=1000, cursor=cursor)
            for record in page.records:
                meta = record.asset_materialization.metadata
                total += float(meta["compute_seconds"].value) if "compute_seconds" in meta else 0.0
                partitions += 1
            if not page.has_more:
                break
            cursor = page.cursor
    return total, partitions


def _overlapping_runs(instance) -> int:
    spans = []
    for run in instance.get_runs():
        stats = instance.get_run_stats(run.run_id)
        if stats.start_time and stats.end_time:
            spans.append((stats.start_time, stats.end_time))
    return sum(any(s2 < e1 and s1 < e2 for j, (s2, e2) in enumerate(spans) if j != i)
               for i, (s1, e1) in enumerate(spans))


def measure(n_shards: int, docs: int, launcher: str, max_concurrent: int) -> dict:
    import dagster as dg

    from gmates_assets.cli import _runs
    from gmates_assets.defs import build_definitions
    from gmates_assets.defs.sync import sync
    from gmates_assets.local_instance import ensure_local_instance

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _write_pool(root, n_shards, docs)
        manifest = root / "manifest.yaml"
        manifest.write_text(yaml.safe_dump(_manifest(n_shards, launcher, max_concurrent)))
        ensure_local_instance(root / "dh")  # the instance config `gmates sync` itself creates
        os.environ["DAGSTER_HOME"], os.environ["GMATES_HOME"] = str(root / "dh"), str(root / "store")
        defs = build_definitions(manifest)
        with dg.DagsterInstance.get() as instance:
            started = time.monotonic()
            with _runs(defs, instance, str(manifest)) as runs:
                report = sync(defs, instance, select=TARGETS, runs=runs)
            full = time.monotonic() - started
            compute, partitions = _compute_seconds(instance)
            overlapped = _overlapping_runs(instance)
            started = time.monotonic()
            with _runs(defs, instance, str(manifest)) as runs:
                noop = sync(defs, instance, select=TARGETS, runs=runs)
            noop_wall = time.monotonic() - started
    assert not noop.executed
    overhead = full - compute
    return {"shards": n_shards, "partitions": partitions, "runs": len(report.runs), "full_sync_s": round(full, 1),
            "compute_s": round(compute, 1), "overhead_per_partition_s": round(overhead / partitions, 3),
            "overhead_to_compute": round(overhead / max(compute, 1e-9), 2), "noop_sync_s": round(noop_wall, 1),
            "overlapping_runs": overlapped}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, nargs="+", default=[2, 16, 64, 128])
    parser.add_argument("--docs-per-shard", type=int, default=40)
    parser.add_argument("--launcher", choices=["in_process", "instance"], default="in_process")
    parser.add_argument("--max-concurrent", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    rows = [measure(n, args.docs_per_shard, args.launcher, args.max_concurrent) for n in args.shards]
    columns = list(rows[0])
    print(f"launcher={args.launcher} max_concurrent={args.max_concurrent} docs/shard={args.docs_per_shard}")
    print("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(str(row[c]) for c in columns) + " |")


if __name__ == "__main__":
    main()
