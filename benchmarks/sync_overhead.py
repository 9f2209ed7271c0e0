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
* overlapping runs: runs whose execution overlapped another's (> 0 only when runs go through a launcher).
* worker_start_s (warm): seconds from the sync's start to its last worker being ready (Python, Dagster, the
  Definitions, torch and the encoder, once per worker and sync). Runs are created only as workers become
  ready, so this is in full_sync_s and planning_s, not in the runs' overhead.
* run_*_s, the mean per run, from the event log: to_start (creation to RUN_START: launching, a process start
  with the default launcher, planning the run), step_shell (inside steps, outside their compute: input
  versions, hashing, committing, step events), run_shell (from RUN_START to the run's end, outside its steps).
* With several launchers, each is measured in turn on its own copy of the pool, in this one process, and the
  rows print side by side with the load average before and after.

    python benchmarks/sync_overhead.py --shards 2 16 64 128 --docs-per-shard 1200
    python benchmarks/sync_overhead.py --shards 16 --docs-per-shard 600 --launcher in_process instance warm
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


def _phases(instance, run_ids) -> dict[str, float]:
    """Mean seconds per run in each phase, from the event log: `to_start` (creation to RUN_START: launching,
    process start, loading the Definitions, planning), `step_shell` (inside steps, outside their compute:
    input versions, hashing, committing, step events), `run_shell` (RUN_START to the run's end, outside steps)."""
    import dagster as dg

    kinds = {dg.DagsterEventType.RUN_START, dg.DagsterEventType.RUN_SUCCESS, dg.DagsterEventType.RUN_FAILURE,
             dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE}
    totals = {"to_start": 0.0, "step_shell": 0.0, "run_shell": 0.0}
    compute_by_run, _ = _compute_by_run(instance)
    for run_id in run_ids:
        record = instance.get_run_record_by_id(run_id)
        events = instance.all_logs(run_id, of_type=kinds)
        when = {}
        steps = 0.0
        open_steps = {}
        for event in events:
            kind = event.dagster_event.event_type
            when.setdefault(kind, event.timestamp)
            if kind == dg.DagsterEventType.STEP_START:
                open_steps[event.step_key] = event.timestamp
            elif kind in (dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE):
                steps += event.timestamp - open_steps.pop(event.step_key, event.timestamp)
        start = when.get(dg.DagsterEventType.RUN_START)
        end = when.get(dg.DagsterEventType.RUN_SUCCESS) or when.get(dg.DagsterEventType.RUN_FAILURE)
        if start is None or end is None:
            continue
        totals["to_start"] += start - record.create_timestamp.timestamp()
        totals["step_shell"] += steps - compute_by_run.get(run_id, 0.0)
        totals["run_shell"] += (end - start) - steps
    return {k: round(v / max(len(run_ids), 1), 3) for k, v in totals.items()}


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
                launcher = getattr(runs, "launcher", None)  # the warm launcher: its workers' start-up
                worker_start = round(max(launcher.warm_seconds), 1) if launcher and launcher.warm_seconds else "-"
            full = time.monotonic() - started
            compute_by_run, partitions = _compute_by_run(instance)
            spans = _run_spans(instance, set(report.runs[1:]))  # runs[0] observed the sources
            phases = _phases(instance, list(spans))
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
            "planning_s": round(max(full - _busy_seconds(spans), 0.0), 1), "worker_start_s": worker_start,
            "noop_sync_s": round(noop_wall, 1), "overlapping_runs": _overlapping(spans),
            **{f"run_{k}_s": v for k, v in phases.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, nargs="+", default=[2, 16, 64, 128])
    parser.add_argument("--docs-per-shard", type=int, default=1200)
    parser.add_argument("--launcher", nargs="+", choices=["in_process", "instance", "warm"], default=["in_process"],
                        help="one or more, measured one after another in this run and printed side by side")
    parser.add_argument("--max-concurrent", type=int, default=2)
    parser.add_argument("--smoke", action="store_true",
                        help="smallest size, in seconds: checks the script still runs (tests/test_benchmarks_run.py)")
    args = parser.parse_args()
    if args.smoke:
        args.shards, args.docs_per_shard = [2], 8  # and no encoder: the documents and their index only
        args.launcher = ["in_process", "warm"]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print(f"launchers={' '.join(args.launcher)} max_concurrent={args.max_concurrent} "
          f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    rows = []
    for n in args.shards:
        for launcher in args.launcher:
            targets = ["documents_index"] if args.smoke else TARGETS
            rows.append({"launcher": launcher, **measure(n, args.docs_per_shard, launcher, args.max_concurrent,
                                                         targets)})
            print(json.dumps(rows[-1]), flush=True)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    columns = list(rows[0])
    print("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(str(row[c]) for c in columns) + " |")


if __name__ == "__main__":
    main()
