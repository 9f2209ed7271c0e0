"""Wall time of `make demo` as a user runs it: a cold build in empty homes, then the no-op second run.

Runs `make demo` (or `make demo-full`, or any target) twice with $GMATES_HOME and $DAGSTER_HOME pointed at a
fresh folder and prints each run's wall time with the load average before and after (comparable only on an
idle machine: load < 1) and its CPU seconds (user + system, less sensitive to the load), then the compute
seconds per asset of the cold build (metadata `compute_seconds`, summed over partitions): where the time goes
when sizing a profile.

    python benchmarks/demo_time.py                      # make demo (data_manifests/quickstart.yaml)
    python benchmarks/demo_time.py --target demo-full   # make demo-full (data_manifests/demo.yaml)
    python benchmarks/demo_time.py --manifest M         # gmates sync --manifest M instead of make
    python benchmarks/demo_time.py --make-flag=-o --make-flag=.venv/.installed-<hash>   # a shared .venv: make
                                                        # must not reinstall into it (pyproject.toml newer)
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load {one:.2f} {five:.2f} {fifteen:.2f}"


def _timed(command: list[str], env: dict[str, str], log: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the command and its children: user + system)."""
    def cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    start, cpu_start = time.perf_counter(), cpu()
    with open(log, "w") as out:
        done = subprocess.run(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed (exit {done.returncode}); see {log}")
    return elapsed, cpu() - cpu_start


def _compute_by_asset(dagster_home: Path) -> dict[str, tuple[int, float]]:
    """asset -> (materializations, summed compute seconds) in this instance."""
    import dagster as dg

    out: dict[str, tuple[int, float]] = {}
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        for key in instance.get_asset_keys():
            records = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=key), limit=10000).records
            seconds = sum(float(r.asset_materialization.metadata["compute_seconds"].value) for r in records
                          if "compute_seconds" in r.asset_materialization.metadata)
            if records:
                out[key.to_user_string()] = (len(records), seconds)
    return out


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 60 else f"{int(seconds // 60)} min {seconds % 60:.0f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="demo", help="the make target (default: demo)")
    parser.add_argument("--manifest", help="run `gmates sync --manifest M` instead of make")
    parser.add_argument("--keep", type=Path, help="build in this folder (kept) instead of a temporary one")
    parser.add_argument("--make-flag", action="append", default=[],
                        help="passed to make, e.g. --make-flag=-o --make-flag=.venv/.installed-<hash> to skip the "
                             "install step where .venv is a shared one")
    parser.add_argument("--smoke", action="store_true",
                        help="the tests profile up to documents_index instead of make (checks the script runs)")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="gmates-demo-time-"))
    root.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "GMATES_HOME": str(root / "store"), "DAGSTER_HOME": str(root / "dagster_home")}
    gmates = [sys.executable, "-m", "gmates_assets.cli"]
    if args.smoke:
        command = [*gmates, "sync", "--manifest", str(ROOT / "data_manifests" / "tests.yaml"),
                   "--select", "documents_index"]
    elif args.manifest:
        command = [*gmates, "sync", "--manifest", args.manifest]
    else:
        command = ["make", "-s", *args.make_flag, args.target]
    print(f"command: {' '.join(command)}  (homes under {root})")
    for label in ("cold", "no-op"):
        before = _load()
        seconds, cpu = _timed(command, env, root / f"{label}.log")
        print(f"{label:>5}: {seconds:7.1f} s wall ({_minutes(seconds)}), {cpu:6.1f} s CPU   {before} before, "
              f"{_load()} after   output: {root / f'{label}.log'}")
    print("\ncompute seconds per asset (cold build, summed over partitions):")
    by_asset = sorted(_compute_by_asset(root / "dagster_home").items(), key=lambda kv: -kv[1][1])
    for asset, (n, seconds) in by_asset:
        print(f"  {asset:<24} {n:3d} partition(s)  {seconds:7.1f} s")
    print(f"  {'total':<24} {sum(n for n, _ in dict(by_asset).values()):3d}               "
          f"{sum(s for _, s in dict(by_asset).values()):7.1f} s")


if __name__ == "__main__":
    main()
