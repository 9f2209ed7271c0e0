"""The `gmates_sync` job (issue 22 item 1): the UI's one button does what `gmates sync` does, its runs in the
instance's run list.

Runs go through the real path (the code location in a code server, `instance.launch_run`, the instance's run
launcher); the copied homes configure Dagster's SyncInMemoryRunLauncher so a launched run executes in this
process instead of a fresh one (seconds instead of a process start per run).
"""
from __future__ import annotations

import subprocess
import sys
import threading
from collections import Counter

import dagster as dg
import pytest

from gmates_assets.defs.launch import failure_summary
from gmates_assets.defs.sync_job import DESCRIPTION_HINT, JOB_NAME, PARENT_TAG, SYNC_JOB_TAG

from .pipeline import ROOT, store_key
from .procs import wait_until

IN_MEMORY_LAUNCHER = ("run_launcher:\n  module: dagster._core.launcher.sync_in_memory_run_launcher\n"
                      "  class: SyncInMemoryRunLauncher\n")


@pytest.fixture
def job_build(full_build, tmp_path, monkeypatch):
    """A copy of the full build whose launched runs execute in this process; the environment the job sets for
    its code server ($GMATES_MANIFEST, $GMATES_HOME) is restored after the test."""
    from dagster._core.definitions.reconstruct import ReconstructableJob  # private, pinned dagster

    def make(name: str = "b"):
        build = full_build.copy_to(tmp_path / name)
        with open(build.dagster_home / "dagster.yaml", "a") as config:
            config.write(IN_MEMORY_LAUNCHER)
        for key, value in {**build.env(), "GMATES_MANIFEST": str(build.manifest)}.items():
            monkeypatch.setenv(key, value)
        # the in-memory launcher imports the code location here: load it for this build's manifest, not a
        # previous test's (module cache, and Dagster's one-entry cache of the last job definition)
        monkeypatch.delitem(sys.modules, "gmates_assets.code_location", raising=False)
        ReconstructableJob.get_definition.cache_clear()
        ReconstructableJob.get_repository_definition.cache_clear()
        return build

    return make


def _edit_random_baseline(build, value: float = 0.3) -> None:
    import yaml

    data = yaml.safe_load(build.manifest.read_text())
    data["eval"]["tasks"][0]["random_baseline"] = value
    build.manifest.write_text(yaml.safe_dump(data, sort_keys=False))


def _launch(build, defs=None) -> tuple[str, bool]:
    with build.instance() as instance:
        job = (defs or build.defs()).get_job_def(JOB_NAME)
        result = job.execute_in_process(instance=instance, raise_on_error=False)
        return result.run_id, result.success


def _children(instance, run_id: str) -> list:
    return list(instance.get_runs(dg.RunsFilter(tags={PARENT_TAG: run_id})))


def _items(runs) -> list[tuple[str, object]]:
    return [(key.to_user_string(), run.tags.get("dagster/partition")) for run in runs
            for key in run.asset_selection or ()]


def _messages(instance, run_id: str) -> list[str]:
    return [e.user_message for e in instance.all_logs(run_id) if e.user_message]


def test_the_job_is_in_the_definitions_and_every_asset_description_points_to_it(full_build):
    defs = full_build.defs()
    job = defs.get_job_def(JOB_NAME)
    assert job.tags.get(SYNC_JOB_TAG) == "1"
    graph = defs.resolve_asset_graph()
    nodes = [graph.get(k) for k in graph.materializable_asset_keys | graph.observable_asset_keys]
    assert nodes and all(n.description.endswith(DESCRIPTION_HINT) for n in nodes)
    assert JOB_NAME in DESCRIPTION_HINT


@pytest.mark.slow
def test_the_job_rebuilds_what_gmates_sync_would_in_runs_of_the_run_list(job_build):
    by_sync = job_build("by_sync")
    _edit_random_baseline(by_sync)
    expected = by_sync.sync().executed  # what `gmates sync` (in process) builds after the same edit
    build = job_build("by_job")
    _edit_random_baseline(build)

    run_id, success = _launch(build)

    with build.instance() as instance:
        assert success, failure_summary(instance, run_id)
        children = _children(instance, run_id)
        messages = _messages(instance, run_id)
    assert sorted(_items(children)) == sorted(expected)
    assert {"eval_scores", "method_comparison"} == {a for a, _ in expected}
    assert all(r.status == dg.DagsterRunStatus.SUCCESS and r.job_name == "__ASSET_JOB" for r in children)
    # one run per partition, tagged with it (the run list's partition column)
    assert sorted(r.tags.get("dagster/partition") or "" for r in children) == ["", "group_mates", "mates", "random"]
    assert any(m.startswith("wave 1: eval_scores[group_mates], eval_scores[mates]") for m in messages)
    assert any(m.startswith("wave 2: method_comparison") for m in messages)
    assert all(any(m.startswith(f"run {r.run_id}: ") for m in messages) for r in children)
    assert build.not_fresh() == set()


def test_on_a_fresh_build_the_job_launches_nothing_and_succeeds(job_build):
    build = job_build()
    with build.instance() as instance:
        before = {r.run_id for r in instance.get_runs()}
    run_id, success = _launch(build)
    sources = build.defs().resolve_asset_graph().observable_asset_keys
    with build.instance() as instance:
        new = [r for r in instance.get_runs() if r.run_id not in before and r.run_id != run_id]
        assert success, failure_summary(instance, run_id)
        assert _children(instance, run_id) == []
        assert all(set(r.asset_selection or ()) <= sources for r in new)  # only the sources' observation
        assert any(m.startswith("fresh: ") for m in _messages(instance, run_id))


LAUNCH = ("import sys; from pathlib import Path; from tests.pipeline import Build; "
          "from tests.test_sync_job import _launch; print(*_launch(Build(Path(sys.argv[1]))))")


def _launch_process(build) -> subprocess.Popen:
    """A launch in its own process, as a run launched from the UI executes (a run worker)."""
    return subprocess.Popen([sys.executable, "-c", LAUNCH, str(build.root)], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)


def _launch_thread(build, defs=None) -> threading.Thread:
    """A launch on a thread of this process (one at a time: Dagster's in-process logging is not thread-safe)."""
    def launch() -> None:
        run_id, success = _launch(build, defs)
        thread.outcome = [run_id, str(success)]

    thread = threading.Thread(target=launch, daemon=True)
    thread.outcome = ["?", "did not finish"]
    thread.start()
    return thread


def _sync_job_runs(build) -> list:
    with build.instance() as instance:
        return sorted(instance.get_run_records(dg.RunsFilter(tags={SYNC_JOB_TAG: "1"})),
                      key=lambda r: r.create_timestamp)


@pytest.mark.slow
def test_a_second_launch_while_the_first_is_building_builds_nothing_twice(job_build):
    """The first launch (here) is held inside its wave (the test holds one artifact's build lock) while the second
    starts in another process: without the wait for the first, the second would build the wave's partitions
    again (checked: eval_scores[mates], eval_scores[random] and method_comparison materialized twice)."""
    from gmates_assets.core.store import ArtifactStore

    build = job_build()
    _edit_random_baseline(build)
    key = store_key(build, "eval_scores", "mates")

    def in_flight_child(job_run) -> bool:
        with build.instance() as instance:
            return any(r.status == dg.DagsterRunStatus.STARTED for r in _children(instance, job_run.run_id))

    def started_or_waiting(job_run) -> bool:
        with build.instance() as instance:
            return bool(_children(instance, job_run.run_id)) or any(
                "launched earlier" in m for m in _messages(instance, job_run.run_id))

    with ArtifactStore(build.store).locked("eval_scores", key):
        first = _launch_thread(build)
        wait_until(lambda: _sync_job_runs(build) and in_flight_child(_sync_job_runs(build)[0].dagster_run),
                    "the first launch to build eval_scores[mates]", timeout=300)
        second = _launch_process(build)
        wait_until(lambda: len(_sync_job_runs(build)) == 2 and started_or_waiting(_sync_job_runs(build)[1].dagster_run),
                    "the second launch to start building or waiting", timeout=300)
    first.join(timeout=600)
    outcomes = [first.outcome, second.communicate(timeout=600)[0].split()[-2:]]

    with build.instance() as instance:
        assert [ok for _, ok in outcomes] == ["True", "True"], [failure_summary(instance, r) for r, _ in outcomes]
        built = Counter(item for run_id, _ in outcomes for item in _items(_children(instance, run_id)))
        since = min(_started(instance, r) for r, _ in outcomes)
        materialized = Counter(_materializations(instance, ["eval_scores", "method_comparison"], since))
        waited = any("(gmates_sync, launched earlier)" in m for m in _messages(instance, outcomes[1][0]))
    stale = {("eval_scores", m) for m in ("group_mates", "mates", "random")} | {("method_comparison", None)}
    assert materialized == Counter(stale), materialized  # once each, not once per launch
    assert built == Counter(stale), built
    assert waited and _children_of(build, outcomes[1][0]) == []  # it waited, then found everything fresh
    assert build.not_fresh() == set()


def _children_of(build, run_id: str) -> list:
    with build.instance() as instance:
        return _children(instance, run_id)


def _started(instance, run_id: str) -> float:
    return instance.get_run_record_by_id(run_id).create_timestamp.timestamp()


def _materializations(instance, assets, since: float) -> list[tuple[str, object]]:
    out = []
    for asset in assets:
        records = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset),
                                                                        after_timestamp=since), limit=100).records
        out += [(asset, r.partition_key) for r in records]
    return out


@pytest.mark.slow
def test_a_failing_run_fails_the_job_naming_the_failing_step(job_build):
    build = job_build()
    build.edit("clustering.k", 500)  # more clusters than pool documents: cluster_assignments fails
    run_id, success = _launch(build)
    with build.instance() as instance:
        summary = failure_summary(instance, run_id)
        children = _children(instance, run_id)
    assert not success
    assert [r.status for r in children] == [dg.DagsterRunStatus.FAILURE]
    assert _items(children) == [("cluster_assignments", None)]
    assert "step cluster_assignments failed: ValueError: spherical_kmeans: k=500 clusters needs" in summary, summary


def test_the_job_refuses_when_the_manifest_changed_since_the_definitions_loaded(job_build):
    build = job_build()
    loaded = build.defs()  # what the UI loaded
    _edit_random_baseline(build)  # edited on disk, not reloaded
    with build.instance() as instance:
        before = len(instance.get_runs())
    run_id, success = _launch(build, loaded)
    with build.instance() as instance:
        summary = failure_summary(instance, run_id)
        assert len(instance.get_runs()) == before + 1  # only the job's run: no observation, no build
    assert not success
    assert "refused, nothing was launched" in summary and "changed on disk" in summary, summary
    assert "reload definitions" in summary.lower()


def test_the_job_waits_for_asset_runs_in_flight_and_refuses_a_manifest_edited_meanwhile(job_build):
    """A run in flight (here: one the automation sensor started) is waited for; an edit made meanwhile is not
    synced from the Definitions loaded before it."""
    build = job_build()
    loaded = build.defs()
    with build.instance() as instance:
        before = len(instance.get_runs())
        foreign = dg.DagsterRun(job_name="__ASSET_JOB", status=dg.DagsterRunStatus.STARTED,
                                asset_selection={dg.AssetKey("eval_scores")}, tags={"dagster/partition": "mates"})
        instance.add_run(foreign)
    job = _launch_thread(build, loaded)

    def waiting_for_it() -> bool:
        runs = _sync_job_runs(build)
        with build.instance() as instance:
            return bool(runs) and any(m.startswith("waiting for 1 run(s)") and foreign.run_id in m
                                      for m in _messages(instance, runs[0].dagster_run.run_id))

    wait_until(waiting_for_it, "the job to wait for the run in flight", timeout=300)
    _edit_random_baseline(build)
    with build.instance() as instance:
        instance.report_run_failed(foreign)
    job.join(timeout=300)
    run_id, success = job.outcome
    with build.instance() as instance:
        summary = failure_summary(instance, run_id)
        assert len(instance.get_runs()) == before + 2  # the run waited for and the job's: no observation, no build
    assert success == "False"
    assert "refused, nothing was launched" in summary and "changed on disk" in summary, summary
