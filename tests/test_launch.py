"""`execution.launcher: instance`: sync hands its runs to the Dagster instance's launcher (here the default
launcher, a subprocess per run through the code location `gmates_assets.code_location`)."""
from __future__ import annotations

import json
import os

import dagster as dg
import pytest
import yaml

from gmates_assets.defs.launch import InstanceRuns
from gmates_assets.defs.sync import sync

from .pipeline import TESTS_MANIFEST, Build, assets_of


def _build(tmp_path) -> Build:
    data = yaml.safe_load(TESTS_MANIFEST.read_text())
    data["sources"] = {"shards": [{"name": f"s{i}", "format": "jsonl", "paths": [f"s{i}.jsonl"]} for i in range(3)],
                       "reference": {"format": "demo"}, "heldout_reference": {"format": "demo"}}
    data["execution"] = {"launcher": "instance", "max_concurrent": 2, "executor": "in_process"}
    build = Build.create(tmp_path / "b", yaml.safe_dump(data))
    for i in range(3):
        (build.root / f"s{i}.jsonl").write_text("".join(json.dumps({"text": f"doc {j} of shard {i}"}) + "\n"
                                                        for j in range(4)))
    return build


@pytest.mark.slow
def test_sync_through_the_instance_launcher_builds_every_partition_in_launched_runs(tmp_path, monkeypatch):
    build = _build(tmp_path)
    monkeypatch.setenv("GMATES_MANIFEST", str(build.manifest))  # restored after the test
    monkeypatch.setenv("GMATES_HOME", str(build.store))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    with build.instance() as instance:
        with InstanceRuns(instance, str(build.manifest), str(build.store), max_concurrent=2, gpus=[0]) as runs:
            assert runs.queue_serviced is False  # no daemon here: runs go straight to the launcher
            # the two runs in flight on this host share its cores (inherited through the code server)
            assert os.environ["OMP_NUM_THREADS"] == str(max(1, (os.cpu_count() or 1) // 2))
            report = sync(build.defs(), instance, select=["documents_index"], runs=runs)
        launched = [instance.get_run_by_id(r) for r in report.runs[1:]]  # runs[0] observed the sources
        assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in launched)
        assert all(r.tags.get("gmates/launched_by") == "gmates sync" for r in launched)
        assert {r.tags.get("dagster/partition") for r in launched} == {"s0", "s1", "s2", None}
        assert {r.tags.get("gmates/gpu") for r in launched} == {"0"}
    assert "OMP_NUM_THREADS" not in os.environ
    assert assets_of(report.executed) == {"documents", "documents_index"}
    assert build.not_fresh(["documents", "documents_index"]) == set()
