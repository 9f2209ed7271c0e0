"""Dagster overhead of `gmates sync` per partition, as a ratio to the compute it wraps, and run overlap.

For each shard count, a pool of local jsonl shards is built up to the shard indexes (documents, tokenized_pool,
embeddings, lm_tokenizer and the indexes: the per-shard part of the graph, where the run count grows with the
pool), then synced again with nothing to do.

* compute: the seconds every step spent in its compute function (metadata `compute_seconds`).
* run overhead: for every run, its span from creation to its end, minus the compute of its steps. This is what
  Dagster and gmates' step shell cost around the compute: launching (a process start with a launcher), run and
  event bookkeeping, input-version lookups, hashing and committing the artifact.
* ratio: run overhead / compute, summed over the runs. The sync's own planning between waves (staleness
  resolution) is reported apart, as `planning_s`, since it does not grow with the work a partition holds.
* overlapping runs: runs whose execution overlapped another's (> 0 only when runs go through the launcher).

    python benchmarks/sync_overhead.py --shards 2 16 64 128 --docs-per-shard 1200
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
MEASURED = ["documents", "tokenized_pool", "embeddings", "lm_tokenizer"] + TARGETS


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
        lines = (json.dumps({"text": f"shard {i} document {j}: notes on topic {j % 7} and river {i % 5}, "
                                     f"with a few more words about measurement number {j * 31 % 97}"})
                 for j in range(docs))
        (root / "pool" / f"s{i:03d}.jsonl").write_text("\n".join(lines) + "\n")


def _compute_by_run(instance) -> tuple[dict[str, float], int]:
    """Compute seconds of the measured assets' materializations, by run id, and how many there were."""
    import dagster as dg

    by_run: dict[str, float] = {}
    partitions = 0
    for asset in MEASURED:
        cursor = None
        while True:
            page = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset)),
                                                   limit=1000, cursor=cursor)
            for record in page.records:
                meta = record.asset_materialization.metadata
                seconds = float(meta["compute_seconds"].value) if "compute_seconds" in meta else 0.0
                by_run[record.run_id] = by_run.get(record.run_id, 0.0) + seconds
                partitions += 1
            if not page.has_more:
                break
            cursor = page.cursor
    return by_run, partitions


def _run_spans(instance, run_ids) -> dict[str, tuple[float, float, float]]:
    """(created, started, ended) of each run, in epoch seconds."""
    spans = {}
    for record in instance.get_run_records(filters=None):
        if record.dagster_run.run_id not in run_ids:
            continue
        stats = instance.get_run_stats(record.dagster_run.run_id)
        created = record.create_timestamp.timestamp()
        spans[record.dagster_run.run_id] = (created, stats.start_time or created, stats.end_time or created)
    return spans


def _busy_seconds(spans: dict[str, tuple[float, float, float]]) -> float:
    """Seconds during which at least one run existed (the union of their creation-to-end spans)."""
    busy, reach = 0.0, float("-inf")
    for created, _, end in sorted(spans.values()):
        if end > reach:
            busy += end - max(created, reach)
            reach = end
    return busy


def _overlapping(spans: dict[str, tuple[float, float, float]]) -> int:
    runs = [(start, end) for _, start, end in spans.values()]
    return sum(any(s2 < e1 and s1 < e2 for j, (s2, e2) in enumerate(runs) if j != i)
               for i, (s1, e1) in enumerate(runs))


def measure(n_shards: int, docs: int, launcher: str, max_concurrent: int, targets=tuple(TARGETS)) -> dict:
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
                report = sync(defs, instance, select=list(targets), runs=runs)
            full = time.monotonic() - started
            compute_by_run, partitions = _compute_by_run(instance)
            spans = _run_spans(instance, set(report.runs[1:]))  # runs[0] observed the sources
            started = time.monotonic()
            with _runs(defs, instance, str(manifest)) as runs:
                noop = sync(defs, instance, select=list(targets), runs=runs)
            noop_wall = time.monotonic() - started
    assert not noop.executed
    compute = sum(compute_by_run.values())
    in_runs = sum(end - created for created, _, end in spans.values())
    overhead = in_runs - compute
    return {"shards": n_shards, "docs/shard": docs, "partitions": partitions, "runs": len(spans),
            "full_sync_s": round(full, 1), "compute_s": round(compute, 1),
            "run_overhead_s": round(overhead, 1), "overhead/partition_s": round(overhead / partitions, 3),
            "overhead/compute": round(overhead / max(compute, 1e-9), 3),
            "planning_s": round(max(full - _busy_seconds(spans), 0.0), 1),
            "noop_sync_s": round(noop_wall, 1), "overlapping_runs": _overlapping(spans)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, nargs="+", default=[2, 16, 64, 128])
    parser.add_argument("--docs-per-shard", type=int, default=1200)
    parser.add_argument("--launcher", choices=["in_process", "instance"], default="in_process")
    parser.add_argument("--max-concurrent", type=int, default=2)
    parser.add_argument("--smoke", action="store_true",
                        help="smallest size, in seconds: checks the script still runs (tests/test_benchmarks_run.py)")
    args = parser.parse_args()
    if args.smoke:
        args.shards, args.docs_per_shard = [2], 8  # and no encoder: the documents and their index only
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print(f"launcher={args.launcher} max_concurrent={args.max_concurrent}", flush=True)
    rows = []
    for n in args.shards:
        targets = ["documents_index"] if args.smoke else TARGETS
        rows.append(measure(n, args.docs_per_shard, args.launcher, args.max_concurrent, targets))
        print(json.dumps(rows[-1]), flush=True)
    columns = list(rows[0])
    print("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(str(row[c]) for c in columns) + " |")


if __name__ == "__main__":
    main()
