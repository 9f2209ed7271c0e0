"""What `gmates sync` (and so `make demo`) prints at the end: one summary line, then the method comparison, the
release with how to export and load it, and how to open the UI; the status table only with --verbose.

The format is checked on copies of the tests-profile build (never a timed build: the timing is measured by
benchmarks/demo_time.py).
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from gmates_assets.cli import main
from gmates_assets.core.manifest import load_manifest
from gmates_assets.core.store import ArtifactStore
from gmates_assets.defs.sync import FRESH, PartitionStatus, SyncReport, asset_statuses
from gmates_assets.report import build_report, display_path, format_report
from gmates_assets.sync_summary import format_duration, summary_line

from .pipeline import ROOT

DURATION = r"\d+(\.\d)? s|\d+ min \d+ s|\d+ h \d+ min"
RELEASE = re.compile(r"release: (?P<path>/\S+/dataset_release/[0-9a-f]+/release)  "
                     r"\((?P<rows>[\d,]+) documents in 1 parquet shard, manifest\.json, dataset card\)$")


@pytest.fixture(autouse=True)
def restored_env(monkeypatch):
    """main() sets GMATES_VERBOSE for --verbose and sync sets HF_HUB_DISABLE_PROGRESS_BARS: restore both."""
    monkeypatch.setenv("GMATES_VERBOSE", "")
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")


@pytest.fixture(scope="module")
def built(full_build, tmp_path_factory):
    """A copy of the tests-profile build these tests only sync again (nothing to build)."""
    return full_build.copy_to(tmp_path_factory.mktemp("demo_output") / "b")


def _sync(build, build_env, capsys, *extra: str) -> list[str]:
    build_env(build)
    assert main(["sync", "--manifest", str(build.manifest), *extra]) == 0
    return capsys.readouterr().out.splitlines()


def _partition_count(build) -> int:
    with build.instance() as instance:
        return len(asset_statuses(build.defs(), instance))


def _expected_tail(build) -> list[str]:
    """What follows the summary line: the report as `gmates report` prints it, then one line each."""
    report = format_report(build_report(ArtifactStore(build.store), load_manifest(build.manifest).manifest))
    return ["", *report.splitlines(), "",
            "<release line>",
            f"export:  gmates release export out/ --manifest {build.manifest}   (a verified copy of the release)",
            'load:    datasets.load_dataset("parquet", data_dir="out/data")  or  '
            'polars.read_parquet("out/data/*.parquet")',
            f"UI:      gmates ui --manifest {build.manifest}   then open http://127.0.0.1:3000",
            f"status:  gmates status --manifest {build.manifest}   (every asset partition's state)"]


def _closing(lines: list[str], build) -> tuple[str, list[str]]:
    """The summary line and what follows it, with the release line checked and replaced by a placeholder."""
    start = next(i for i, line in enumerate(lines) if line.startswith("sync: "))
    summary, tail = lines[start], lines[start + 1:]
    release_at = next(i for i, line in enumerate(tail) if line.startswith("release: "))
    match = RELEASE.fullmatch(tail[release_at])
    assert match is not None, tail[release_at]
    assert (Path(match["path"]) / "manifest.json").is_file()
    assert int(match["rows"].replace(",", "")) == build.latest_metadata("dataset_release")["dagster/row_count"]
    tail[release_at] = "<release line>"
    return summary, tail


def test_a_sync_with_nothing_to_do_says_so_in_one_line_then_prints_the_answer(built, build_env, capsys):
    lines = _sync(built, build_env, capsys)
    summary, tail = _closing(lines, built)
    n = _partition_count(built)
    assert re.fullmatch(rf"sync: everything is fresh; nothing to do \({n} asset partitions checked in "
                        rf"({DURATION})\)", summary), summary
    assert tail == _expected_tail(built)
    assert tail[1] == "gmates report: tests" and any(line.startswith("group_mates  ") for line in tail)
    assert not any(re.search(r"\s(fresh|stale|missing)$", line) for line in lines)  # no status table
    assert lines[0] == summary  # nothing before it: the build printed nothing


def test_a_sync_that_builds_counts_what_it_built_and_prints_the_same_report(built, build_env, capsys,
                                                                              tmp_path):
    before = _closing(_sync(built, build_env, capsys), built)[1]
    edited = built.copy_to(tmp_path / "edited")
    edited.edit("release.name", "gmates-tests-renamed")  # only dataset_release reads it
    lines = _sync(edited, build_env, capsys)
    summary, tail = _closing(lines, edited)
    n = _partition_count(edited)
    assert re.fullmatch(rf"sync: {n} asset partitions fresh, 1 of them built in ({DURATION}) \(1 wave\)",
                        summary), summary
    assert tail == _expected_tail(edited)
    report_end = tail.index("<release line>")  # the same comparison (plots in the copy's store): only the
    same = [line.replace(str(edited.root), "<root>") for line in tail[:report_end]]  # release was rebuilt
    assert same == [line.replace(str(built.root), "<root>") for line in before[:report_end]]


def test_verbose_adds_the_status_table_and_select_leaves_out_the_closing_notes(built, build_env, capsys):
    lines = _sync(built, build_env, capsys, "--verbose")
    table = [line for line in lines if re.fullmatch(r"\S+\s+fresh", line)]
    assert len(table) == _partition_count(built)
    assert lines.index(table[-1]) < next(i for i, line in enumerate(lines) if line.startswith("sync: "))
    lines = _sync(built, build_env, capsys, "--select", "documents")
    assert [line for line in lines if line.startswith("sync: ")] == [
        line for line in lines if line.strip()][-1:]  # the summary line is the last thing printed
    assert not any(line.startswith(("gmates report", "release: ", "UI: ")) for line in lines)
    lines = _sync(built, build_env, capsys, "--select", "dataset_release")  # the release, not the comparison
    summary, tail = _closing(lines, built)
    assert tail == ["", *_expected_tail(built)[-5:]] and not any(line.startswith("gmates report") for line in lines)


def _report(built: int, waves: int, fresh: int) -> SyncReport:
    items = [("a", str(i)) for i in range(built)]
    report = SyncReport(waves=[items[:1], items[1:]][:waves] if waves else [])
    report.fresh = [PartitionStatus("a", str(i), FRESH) for i in range(fresh)]
    return report


def test_summary_line_and_durations():
    assert summary_line(_report(34, 2, 34), 252.4) == "sync: 34 asset partitions fresh, built in 4 min 12 s (2 waves)"
    assert summary_line(_report(1, 1, 34), 3.21) == "sync: 34 asset partitions fresh, 1 of them built in 3.2 s (1 wave)"
    assert summary_line(_report(0, 0, 1), 0.5) == \
        "sync: everything is fresh; nothing to do (1 asset partition checked in 0.5 s)"
    assert [format_duration(s) for s in (0.04, 9.94, 10.4, 59.4, 59.6, 3599.4, 3600, 5000)] == [
        "0.0 s", "9.9 s", "10 s", "59 s", "1 min 0 s", "59 min 59 s", "1 h 0 min", "1 h 23 min"]


def test_paths_below_the_working_directory_print_relative(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert display_path(str(tmp_path / ".gmates" / "a" / "release")) == ".gmates/a/release"
    assert display_path("/elsewhere/store/a") == "/elsewhere/store/a"
    assert display_path("s3://bucket/gmates/a") == "s3://bucket/gmates/a"


def _make_commands(target: str) -> list[str]:
    """What `make TARGET` runs (make -n: printed, not run; the install step is left out)."""
    out = subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if "gmates " in line]


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_demo_builds_the_quickstart_with_every_method_and_task_of_the_full_demo():
    assert _make_commands("demo") == [".venv/bin/gmates sync --manifest data_manifests/quickstart.yaml"]
    assert _make_commands("demo-full") == [".venv/bin/gmates sync --manifest data_manifests/demo.yaml"]
    quick = load_manifest(ROOT / "data_manifests" / "quickstart.yaml").manifest
    full = load_manifest(ROOT / "data_manifests" / "demo.yaml").manifest
    assert quick.selection.methods == full.selection.methods
    assert [t.name for t in quick.eval.tasks] == [t.name for t in full.eval.tasks]
    assert quick.oracle.seeds == full.oracle.seeds and quick.release.method == full.release.method
