"""What `gmates sync` prints when it is done: one summary line, then what a build of the whole graph is for.

The summary line says how many asset partitions are fresh and how long the sync took ("37 asset partitions
fresh, built in 3 min 41 s"; a sync with nothing to do says so). When the synced scope holds the method
comparison and the release (every sync without --select), the closing notes follow: the method comparison
(`gmates report`), where the release is, how to export and load it, and how to open the UI (a --select that
reaches only one of the two gets its part). The full status table is `gmates status` (or `sync --verbose`).
"""
from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import dagster as dg

from .defs.sync import FRESH, PartitionStatus, SyncReport, gmates_store
from .report import display_path

UI_URL = "http://127.0.0.1:3000"


def format_duration(seconds: float) -> str:
    """'38 s', '4 min 12 s', '1 h 23 min' (whole seconds; under 10 s with one decimal)."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s"
    return f"{whole // 3600} h {whole % 3600 // 60} min"


def _partitions(n: int) -> str:
    return f"{n} asset partition{'' if n == 1 else 's'}"


def summary_line(report: SyncReport, seconds: float) -> str:
    fresh = sum(s.status == FRESH for s in report.fresh)
    built = len(report.executed)
    took = format_duration(seconds)
    if not built:
        return f"sync: everything is fresh; nothing to do ({_partitions(fresh)} checked in {took})"
    waves = f"{len(report.waves)} wave{'' if len(report.waves) == 1 else 's'}"
    if built >= fresh:
        return f"sync: {_partitions(fresh)} fresh, built in {took} ({waves})"
    return f"sync: {_partitions(fresh)} fresh, {built} of them built in {took} ({waves})"


def program() -> str:
    """The command as the user typed it when that was the gmates script (e.g. `.venv/bin/gmates`)."""
    return sys.argv[0] if Path(sys.argv[0]).name == "gmates" else "gmates"


def release_lines(defs: dg.Definitions, instance: dg.DagsterInstance, command: str, manifest_path: str) -> list[str]:
    """Where this manifest's dataset_release is (never whatever was built last on the home), and one line each to
    export and to load it."""
    from .defs.current import NotCurrent, current_artifact

    try:
        artifact = current_artifact(defs, instance, "dataset_release", manifest_path, observe=False)
    except NotCurrent:
        return []
    metadata = artifact.record.get("metadata", {})
    rows, shards = metadata.get("dagster/row_count"), metadata.get("shards")
    what = f"{rows:,} documents" if rows is not None else "documents"
    what += f" in {shards} parquet shard{'' if shards == 1 else 's'}" if shards is not None else " as parquet"
    return [f"release: {display_path(artifact.location)}/release  ({what}, manifest.json, dataset card)",
            f"export:  {command} release export out/ --manifest {manifest_path}   (a verified copy of the release)",
            'load:    datasets.load_dataset("parquet", data_dir="out/data")  or  '
            'polars.read_parquet("out/data/*.parquet")']


def closing_notes(defs: dg.Definitions, instance: dg.DagsterInstance, manifest_path: str,
                  fresh: Sequence[PartitionStatus]) -> Optional[str]:
    """The report when the sync covered method_comparison, the release lines when it covered dataset_release
    (both on a sync of the whole graph), then how to open the UI; None when it covered neither."""
    from .core.manifest import load_manifest
    from .report import build_report, format_report

    assets = {s.asset for s in fresh if s.status == FRESH}
    command = program()
    lines = []
    if "method_comparison" in assets:
        report = build_report(gmates_store(defs), load_manifest(manifest_path).manifest)
        lines += [format_report(report), ""]
    if "dataset_release" in assets:
        lines += release_lines(defs, instance, command, manifest_path)
    if not lines:
        return None
    return "\n".join([*lines, f"UI:      {command} ui --manifest {manifest_path}   then open {UI_URL}",
                      f"status:  {command} status --manifest {manifest_path}   (every asset partition's state)"])
