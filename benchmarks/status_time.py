"""`gmates status` on a small build: read-only (the default) versus recording an observation (`--observe`).

Builds the tests profile (data_manifests/tests.yaml) once with `gmates sync`, then times `gmates status` as a user
runs it (a fresh process each time, imports included) in three modes: plain (sources hashed and compared in
memory, nothing written), `--observe` (the old default: an observation run recorded first) and `--no-observe`
(sources not hashed). `--baseline-tree DIR` (a checkout of an earlier commit, e.g. `git archive 658c2a4`) adds
that tree's `gmates status` and `status --no-observe`. The modes take turns, rep by rep, so a change in machine
load hits them alike. Prints the median wall time per mode and how many runs each call added to the history.

Usage: python benchmarks/status_time.py [--reps 5] [--root DIR] [--baseline-tree DIR]
       (a --root that holds a build is reused)
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
MODES = {"status": [], "status --observe": ["--observe"], "status --no-observe": ["--no-observe"]}


def gmates(root: Path, *args: str, tree: Path = ROOT) -> float:
    env = {**os.environ, "DAGSTER_HOME": str(root / "dagster_home"), "GMATES_HOME": str(root / "store"),
           "PYTHONPATH": str(tree)}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "gmates_assets.cli", *args, "-m", str(root / "manifest.yaml")],
                   env=env, cwd=tree, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def run_count(root: Path) -> int:
    import dagster as dg

    with dg.DagsterInstance.from_config(str(root / "dagster_home")) as instance:
        return len(instance.get_runs())


def baseline_copy(root: Path) -> Path:
    """A copy of the build for an earlier tree, whose event log path must be absolute (homes were not yet
    relocatable)."""
    copy = root.with_name(root.name + "-baseline")
    if not copy.exists():
        shutil.copytree(root, copy)
        config = copy / "dagster_home" / "dagster.yaml"
        events = copy / "dagster_home" / "history" / "events"
        config.write_text(config.read_text().replace("base_dir: history/events", f"base_dir: {events}"))
    return copy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--root", type=Path, default=None)
    parser.add_argument("--baseline-tree", type=Path, default=None)
    parser.add_argument("--smoke", action="store_true",
                        help="one rep over a build up to documents_index (checks the script runs)")
    args = parser.parse_args()
    if args.smoke:
        args.reps = 1
    root = args.root or Path(tempfile.mkdtemp(prefix="status-time-"))
    if not (root / "manifest.yaml").exists():
        root.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / "data_manifests" / "tests.yaml", root / "manifest.yaml")
        print(f"building the tests profile in {root} ...", flush=True)
        select = ["--select", "documents_index"] if args.smoke else []
        print(f"  sync: {gmates(root, 'sync', *select):.1f} s", flush=True)
    modes = {name: (ROOT, root, flags) for name, flags in MODES.items()}
    if args.baseline_tree:
        baseline = baseline_copy(root)
        modes["before: status (observes)"] = (args.baseline_tree.resolve(), baseline, [])
        modes["before: status --no-observe"] = (args.baseline_tree.resolve(), baseline, ["--no-observe"])
    times: dict[str, list[float]] = {m: [] for m in modes}
    added: dict[str, list[int]] = {m: [] for m in modes}
    for _ in range(args.reps):
        for mode, (tree, home, flags) in modes.items():
            before = run_count(home)
            times[mode].append(gmates(home, "status", *flags, tree=tree))
            added[mode].append(run_count(home) - before)
    results = {}
    for mode in modes:
        results[mode] = {"median_s": round(statistics.median(times[mode]), 2),
                         "times_s": [round(t, 2) for t in times[mode]], "runs_added_per_call": max(added[mode])}
        print(f"{mode:<28} median {results[mode]['median_s']:6.2f} s  ({results[mode]['times_s']}), "
              f"runs added per call: {max(added[mode])}", flush=True)
    print(json.dumps({"root": str(root), "cpus": os.cpu_count(), **results}))
    if args.root is None:
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(root.with_name(root.name + "-baseline"), ignore_errors=True)


if __name__ == "__main__":
    main()
