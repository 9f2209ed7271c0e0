"""Two `gmates sync` processes started together on one home (one GMATES_HOME, one DAGSTER_HOME).

Checks what the reliability issue asked for, on the whole graph of a manifest (default: the tests profile):
both syncs exit 0, every artifact is built once (one stored artifact per asset partition, no partial work
left), every materialization either sync reported for an asset partition has the same content hash, and those
hashes equal a third, sequential sync in a separate home (for dataset_release: the release's own content hash,
since its manifest.json also carries run ids and a timestamp, outside that hash). Prints wall times, how often a
builder waited on another's build lock, and how many artifacts were built versus reused.

Usage: python benchmarks/concurrent_sync.py [--manifest data_manifests/tests.yaml] [--workdir DIR] [--compare-only]
       [--select ASSET ...] [--smoke]
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def start_sync(manifest: Path, home: Path, select: list[str]) -> subprocess.Popen:
    env = {**os.environ, "GMATES_HOME": str(home / "store"), "DAGSTER_HOME": str(home / "dagster"),
           "GMATES_CACHE": str(home / "cache"), "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "gmates_assets.cli", "sync", "-m", str(manifest)]
    command += ["--select", *select] if select else []
    return subprocess.Popen(command, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(runs: list[subprocess.Popen], started: float) -> tuple[list[str], float]:
    outputs = [run.communicate()[0] for run in runs]
    wall = time.monotonic() - started
    for run, out in zip(runs, outputs):
        if run.returncode != 0:
            sys.exit(f"a sync failed (exit {run.returncode}):\n{out[-3000:]}")
    return outputs, wall


def reported_hashes(home: Path) -> dict[tuple[str, str | None], set[str]]:
    """Every content hash any materialization reported, per asset partition."""
    import dagster as dg

    hashes: dict[tuple[str, str | None], set[str]] = defaultdict(set)
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        for key in instance.get_asset_keys():
            for record in instance.fetch_materializations(key, limit=10_000).records:
                metadata = record.asset_materialization.metadata
                value = metadata.get("release_content_hash", metadata["content_hash"]).value
                hashes[(key.to_user_string(), record.partition_key)].add(value)
    return hashes


def store_counts(home: Path, assets) -> tuple[int, int]:
    from gmates_assets.core.store import ArtifactStore

    store = ArtifactStore(home / "store")
    return (sum(len(store.artifacts(a)) for a in assets), sum(len(store.partials(a)) for a in assets))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", default=str(ROOT / "data_manifests" / "tests.yaml"))
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--compare-only", action="store_true", help="check the homes a previous run left in --workdir")
    parser.add_argument("--select", nargs="+", default=[], metavar="ASSET",
                        help="sync only these assets and what they need (default: the whole graph)")
    parser.add_argument("--smoke", action="store_true", help="only the documents and their index: checks the script "
                        "still runs (tests/test_benchmarks_run.py)")
    args = parser.parse_args()
    if args.smoke:
        args.select = ["documents_index"]
    work = Path(args.workdir or tempfile.mkdtemp(prefix="gmates-concurrent-"))
    shared, alone = work / "shared", work / "alone"
    for home in (shared, alone):
        home.mkdir(parents=True, exist_ok=True)
    manifest = Path(args.manifest).resolve()

    outputs, race_wall, alone_wall = [], float("nan"), float("nan")
    if not args.compare_only:
        started = time.monotonic()
        outputs, race_wall = finish([start_sync(manifest, shared, args.select),
                                     start_sync(manifest, shared, args.select)], started)
        started = time.monotonic()
        _, alone_wall = finish([start_sync(manifest, alone, args.select)], started)

    race, reference = reported_hashes(shared), reported_hashes(alone)
    disagreeing = sorted(k for k, v in race.items() if len(v) != 1)
    differing = sorted(k for k in reference if race.get(k) != reference[k])
    assets = sorted({asset for asset, _ in reference})
    stored, partials = store_counts(shared, assets)
    waits = sum(out.count("waiting for") for out in outputs)
    reuses = sum(out.count("reusing stored artifact") for out in outputs)
    print(f"manifest: {manifest.name}; work dir {work}")
    print(f"two concurrent syncs: {race_wall:.1f} s wall; one sync alone: {alone_wall:.1f} s")
    print(f"asset partitions: {len(reference)}; stored artifacts in the shared home: {stored}; partial work left: "
          f"{partials}")
    print(f"lock waits: {waits}; reuses of the other sync's result: {reuses}")
    print(f"asset partitions whose two syncs reported different hashes: {len(disagreeing)} {disagreeing[:5]}")
    print(f"asset partitions differing from the sequential build: {len(differing)} {differing[:5]}")
    ok = not disagreeing and not differing and stored == len(reference) and partials == 0
    print("RESULT:", "identical content hashes, no error" if ok else "MISMATCH")
    if args.smoke and not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
