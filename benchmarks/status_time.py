"""`gmates status` on a small build: read-only (the default) versus recording an observation (`--observe`).

Builds the tests profile (data_manifests/tests.yaml) once with `gmates sync`, then times `gmates status` as a user
runs it (a fresh process each time, imports included) in three modes: plain (sources hashed and compared in
memory, nothing written), `--observe` (the old default: an observation run recorded first) and `--no-observe`
(sources not hashed). Prints the median wall time per mode and how many runs each call added to the history.

Usage: python benchmarks/status_time.py [--reps 3] [--root DIR]   (a --root that holds a build is reused)
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODES = {"plain": [], "--observe": ["--observe"], "--no-observe": ["--no-observe"]}


def gmates(root: Path, *args: str) -> float:
    env = {**os.environ, "DAGSTER_HOME": str(root / "dagster_home"), "GMATES_HOME": str(root / "store"),
           "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "gmates_assets.cli", *args, "-m", str(root / "manifest.yaml")],
                   env=env, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def run_count(root: Path) -> int:
    import dagster as dg

    with dg.DagsterInstance.from_config(str(root / "dagster_home")) as instance:
        return len(instance.get_runs())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--root", type=Path, default=None)
    args = parser.parse_args()
    root = args.root or Path(tempfile.mkdtemp(prefix="status-time-"))
    if not (root / "manifest.yaml").exists():
        root.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / "data_manifests" / "tests.yaml", root / "manifest.yaml")
        print(f"building the tests profile in {root} ...", flush=True)
        print(f"  sync: {gmates(root, 'sync'):.1f} s", flush=True)
    results = {}
    for mode, flags in MODES.items():
        times, added = [], []
        for _ in range(args.reps):
            before = run_count(root)
            times.append(gmates(root, "status", *flags))
            added.append(run_count(root) - before)
        results[mode] = {"median_s": round(statistics.median(times), 2), "times_s": [round(t, 2) for t in times],
                         "runs_added_per_call": max(added)}
        print(f"status {mode:<13} median {results[mode]['median_s']:6.2f} s  ({results[mode]['times_s']}), "
              f"runs added per call: {max(added)}", flush=True)
    print(json.dumps({"root": str(root), "cpus": os.cpu_count(), **results}))
    if args.root is None:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
