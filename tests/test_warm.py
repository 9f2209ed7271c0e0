"""`execution.launcher: warm`: runs execute in long-lived worker processes (gmates_assets/warm.py).

Correct before fast: the same bytes as in-process runs (seeded training steps included), a worker killed mid-run
fails that run and the next runs still work, an interrupted sync leaves no process behind and no run STARTED.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import dagster as dg
import pytest
import yaml

from gmates_assets.core.manifest import parse_manifest
from gmates_assets.defs.launch import WarmRuns
from gmates_assets.defs.sync import sync
from gmates_assets.warm import WarmRunLauncher

from .pipeline import ALL_ASSETS, ROOT, TESTS_MANIFEST, Build, store_key
from .procs import wait_until

WARM = {"launcher": "warm", "max_concurrent": 2, "executor": "in_process"}
SCOPE = ["relational_model_init"]


def _shard_build(tmp_path: Path, shards: int = 2, max_concurrent: int = 2) -> Build:
    data = yaml.safe_load(TESTS_MANIFEST.read_text())
    data["sources"] = {"shards": [{"name": f"s{i}", "format": "jsonl", "paths": [f"s{i}.jsonl"]}
                                  for i in range(shards)],
                       "reference": {"format": "demo"}, "heldout_reference": {"format": "demo"}}
    data["execution"] = {**WARM, "max_concurrent": max_concurrent}
    build = Build.create(tmp_path / "b", yaml.safe_dump(data))
    for i in range(shards):
        (build.root / f"s{i}.jsonl").write_text("".join(json.dumps({"text": f"doc {j} of shard {i}"}) + "\n"
                                                        for j in range(4)))
    return build


def _warm_runs(build: Build, instance) -> WarmRuns:
    return WarmRuns(instance, str(build.manifest), str(build.store), max_concurrent=2)


def _data_versions(build: Build) -> dict:
    """Every materialized partition's data version: the content hash of what it wrote."""
    versions = {}
    with build.instance() as instance:
        for asset in ALL_ASSETS:
            for record in instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset)),
                                                          limit=1000).records:
                versions[(asset, record.partition_key)] = record.asset_materialization.tags["dagster/data_version"]
    return versions


def _sync_on_a_thread(build: Build, instance, runs, select: list[str]) -> tuple[threading.Thread, dict]:
    """A sync started on a thread; the error it ends with lands in the dict's "error"."""
    outcome = {}

    def run() -> None:
        try:
            sync(build.defs(), instance, select=select, runs=runs)
        except Exception as err:
            outcome["error"] = err

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def _started_run(build: Build, partition: str):
    with build.instance() as instance:
        runs = instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED],
                                               tags={"dagster/partition": partition}))
    return runs[0] if runs else None


def _worker_pid(instance, run_id: str) -> int:
    """The process that executed a run, from Dagster's own engine event ("Started process for run (pid: N).")."""
    for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
        match = re.search(r"Started process for run \(pid: (\d+)\)", record.message or "")
        if match:
            return int(match.group(1))
    raise AssertionError(f"run {run_id}: no process start recorded")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by its parent) is gone for our purpose
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _children(pid: int) -> list[int]:
    from .procs import process_stats

    # a zombie has exited: it runs nothing
    return [child for child, fields in process_stats().items() if int(fields[1]) == pid and fields[0] != "Z"]


@pytest.mark.slow
def test_a_warm_build_writes_the_same_bytes_as_in_process_runs_and_survives_a_killed_worker(full_build, tmp_path,
                                                                                           monkeypatch):
    """A worker killed mid-run fails that run (not left STARTED) and the same launcher's next runs work; then
    every partition's content hash equals the in-process build's, up to relational_model_init: the encoder, the
    BPE tokenizer and the seeded training steps (probe, oracle rollouts with two seeds finishing together,
    relational model), though each worker executes many runs one after another."""
    import torch

    from gmates_assets.core.store import ArtifactStore
    from gmates_assets.defs.sync import _ancestors

    scope = (set(SCOPE) | _ancestors(full_build.defs().resolve_asset_graph(), set(SCOPE))) & ALL_ASSETS
    warm = Build.create(tmp_path / "warm", full_build.manifest.read_text())
    warm.edit("execution", WARM)
    # the workers use as many threads as the in-process reference did: float sums (the relational model's
    # matmuls) depend on the thread count, which the launcher would otherwise set to cores / workers
    monkeypatch.setenv("OMP_NUM_THREADS", str(torch.get_num_threads()))
    monkeypatch.setenv("GMATES_MANIFEST", str(warm.manifest))  # restored after the test
    monkeypatch.setenv("GMATES_HOME", str(warm.store))
    with warm.instance() as instance, _warm_runs(warm, instance) as runs:
        with ArtifactStore(warm.store).locked("documents", store_key(warm, "documents", "shard-001")):  # holds its run
            thread, outcome = _sync_on_a_thread(warm, instance, runs, SCOPE)  # expected: documents[shard-001] fails
            wait_until(lambda: _started_run(warm, "shard-001") is not None, "documents[shard-001] to start")
            held = _started_run(warm, "shard-001")
            killed = _worker_pid(instance, held.run_id)
            os.kill(killed, signal.SIGKILL)
            thread.join(timeout=300)
        assert instance.get_run_by_id(held.run_id).status == dg.DagsterRunStatus.FAILURE
        assert f"warm run worker pid {killed} was killed by SIGKILL" in str(outcome["error"])
        report = sync(warm.defs(), instance, select=SCOPE, runs=runs)  # the same launcher: a new worker replaced the killed one
        launched = [instance.get_run_by_id(r) for r in report.runs[1:]]  # runs[0] observed the sources
    assert not _alive(killed)
    assert ("documents", "shard-001") in report.executed and warm.not_fresh(scope) == set()
    with warm.instance() as instance:
        pids = {_worker_pid(instance, r.run_id) for r in launched}
    assert len(pids) == 2 and killed not in pids and os.getpid() not in pids  # the two workers, not this process
    built = _data_versions(warm)
    assert {asset for asset, _ in built} == scope
    assert built == {item: version for item, version in _data_versions(full_build).items() if item in built}


def _default_sigint() -> None:
    """A shell's background job (`cmd &`) ignores SIGINT, and a child inherits that: the sync would never see the
    test's Ctrl-C. Restore the default, as in a terminal."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.slow
def test_an_interrupted_sync_leaves_no_worker_running_and_no_run_started(tmp_path):
    from gmates_assets.core.store import ArtifactStore

    build = _shard_build(tmp_path, max_concurrent=1)
    env = {**os.environ, **build.env(), "PYTHONPATH": str(ROOT)}
    with ArtifactStore(build.store).locked("documents", store_key(build, "documents", "s1")):
        sync_process = subprocess.Popen(
            [sys.executable, "-m", "gmates_assets.cli", "sync", "--manifest", str(build.manifest),
             "--select", "documents_index"], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, preexec_fn=_default_sigint)
        try:
            wait_until(lambda: _started_run(build, "s1") is not None, "documents[s1] to start")
            workers = _children(sync_process.pid)
            assert len(workers) == 1, workers
            held = _started_run(build, "s1")
            sync_process.send_signal(signal.SIGINT)  # the sync only, not its workers: it must stop them
            output, _ = sync_process.communicate(timeout=60)
        finally:
            if sync_process.poll() is None:
                sync_process.kill()
    assert sync_process.returncode != 0, output
    assert [pid for pid in workers if _alive(pid)] == []
    with build.instance() as instance:
        assert instance.get_run_by_id(held.run_id).status in (dg.DagsterRunStatus.FAILURE,
                                                              dg.DagsterRunStatus.CANCELED)
        assert instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED,
                                                         dg.DagsterRunStatus.STARTING])) == []


def _documented_yaml(heading: str) -> dict:
    """The yaml block of docs/deployment.md § Warm workers whose first line is `# <heading>`."""
    text = (ROOT / "docs" / "deployment.md").read_text(encoding="utf-8")
    section = text.split("## Warm workers", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```yaml\n(.*?)```", section, re.S)
    (block,) = [b for b in blocks if b.startswith(f"# {heading}")]
    return yaml.safe_load(block)


def test_the_launcher_is_configured_from_dagster_yaml_as_documented(tmp_path):
    overrides = _documented_yaml("$DAGSTER_HOME/dagster.yaml")
    with dg.instance_for_test(overrides=overrides, temp_dir=str(tmp_path)) as instance:
        launcher = instance.run_launcher
        assert isinstance(launcher, WarmRunLauncher) and launcher.workers == 2
    execution = _documented_yaml("the manifest")["execution"]
    data = yaml.safe_load(TESTS_MANIFEST.read_text())
    data["execution"] = execution
    assert parse_manifest(yaml.safe_dump(data)).manifest.execution.launcher == "warm"


def test_every_run_starts_from_the_same_random_state():
    import random

    import numpy as np
    import torch

    from gmates_assets.warm_worker import RandomState

    fresh = RandomState()
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    fresh.restore()
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first


def test_a_worker_hands_back_a_run_submitted_for_another_manifest(tmp_path):
    """The worker's check: a run submitted for another manifest content than the one it loaded (the file was
    edited since it started) is handed back (`stale`), and warm.py gives it to a fresh worker, which loads the
    current file. Only the check is tested here; the hand-over is the slot loop's `retry` path."""
    from gmates_assets.warm_worker import _stale_for

    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        tagged = instance.create_run_for_job(dg.GraphDefinition("g").to_job(),
                                             tags={"gmates/manifest_sha256": "a" * 64})
        untagged = instance.create_run_for_job(dg.GraphDefinition("g").to_job())
        assert _stale_for(instance, tagged.run_id, "b" * 64)
        assert not _stale_for(instance, tagged.run_id, "a" * 64)
        assert not _stale_for(instance, untagged.run_id, "b" * 64)  # the UI's or the sensor's runs: not checked


@pytest.mark.parametrize("executor,imports_torch", [("in_process", True), ("multiprocess", False)])
def test_a_worker_preloads_torch_only_when_its_runs_execute_their_steps_in_it(tmp_path, executor, imports_torch):
    """A worker warms up (imports torch) for the in_process executor; with another one (multiprocess, Celery:
    steps run in other processes) nothing there would use it, and its start stays short. The encoder is never
    loaded before a run needs it: only embeddings steps use it, and workers restart at every "Reload
    definitions" (loading it took 3.6 s of CPU and ~0.3 GB per worker, ten times in the UI test)."""
    data = yaml.safe_load(TESTS_MANIFEST.read_text())
    data["execution"] = {"launcher": "instance", "executor": executor}
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(yaml.safe_dump(data))
    code = ("import sys; from gmates_assets import warm_worker as w; location = w._code_location(); "
            "w._warm_up(location); w.RandomState().restore(); "
            "print('transformers' in sys.modules, 'torch' in sys.modules)")
    env = {**os.environ, "GMATES_MANIFEST": str(manifest), "GMATES_HOME": str(tmp_path / "store"),
           "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == f"False {imports_torch}"


def test_a_worker_is_outdated_once_the_manifest_or_its_code_changed_on_disk(tmp_path):
    """The UI's and the sensor's runs carry no manifest tag: after an edit and "Reload definitions" a worker
    that loaded the old manifest must not execute them with the old Definitions (their steps would refuse:
    ManifestChanged); nor with gmates code older than what a fresh process imports. The worker checks before
    each run; the launcher replaces an idle one as soon as this says so."""
    from gmates_assets.defs.resources import GmatesResource
    from gmates_assets.warm_worker import loaded_state, outdated

    manifest = tmp_path / "m.yaml"
    manifest.write_text(TESTS_MANIFEST.read_text())
    location = type("Location", (), {"defs": dg.Definitions(resources={
        "gmates": GmatesResource(manifest_path=str(manifest))})})
    loaded = loaded_state(location)
    assert any(path.endswith("warm_worker.py") for path in loaded["code"])
    assert outdated(loaded) is None
    manifest.write_text(manifest.read_text().replace("random_baseline: 0.25}", "random_baseline: 0.3}"))
    assert "changed on disk" in outdated(loaded)
    manifest.write_text(TESTS_MANIFEST.read_text())  # reverted: what the worker loaded again
    assert outdated(loaded) is None
    source = tmp_path / "module.py"
    source.write_text("x = 1\n")
    seen = {**loaded, "code": {str(source): source.stat().st_mtime_ns}}
    assert outdated(seen) is None
    os.utime(source, ns=(source.stat().st_atime_ns, source.stat().st_mtime_ns + 1_000_000))
    assert "module.py changed on disk" in outdated(seen)


def test_runs_of_other_jobs_than_the_asset_job_go_to_a_process_of_their_own(tmp_path):
    """`gmates_sync` waits for the asset runs it submits: on a worker it would hold the worker they need. The
    launcher hands such runs to Dagster's default launcher (which needs the caller's workspace: none here)."""
    from dagster._core.launcher import LaunchRunContext

    before = set(_children(os.getpid()))  # under xdist, other tests' helpers may live on in this process
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        launcher = WarmRunLauncher(workers=1)
        launcher.register_instance(instance)
        run = instance.create_run_for_job(dg.GraphDefinition("gmates_sync").to_job())
        with pytest.raises(dg.DagsterInvariantViolationError, match="DefaultRunLauncher requires a workspace"):
            launcher.launch_run(LaunchRunContext(dagster_run=run, workspace=None))
        assert launcher.warm_workers == 0 and set(_children(os.getpid())) <= before
        launcher.dispose()


@pytest.mark.slow
def test_terminate_from_another_process_stops_the_run_its_worker_executes(tmp_path):
    """The UI's Terminate calls the launcher of the webserver's process; the workers belong to the daemon's.
    The run must end canceled, stopped where it was (it builds nothing), not be marked canceled while a worker
    goes on executing it."""
    from dagster._serdes import ConfigurableClassData

    from gmates_assets.core.store import ArtifactStore

    build = _shard_build(tmp_path, max_concurrent=1)
    with build.instance() as instance, _warm_runs(build, instance) as runs:
        with ArtifactStore(build.store).locked("documents", store_key(build, "documents", "s1")):  # holds its run
            thread, outcome = _sync_on_a_thread(build, instance, runs, ["documents"])  # expected: s1 canceled
            wait_until(lambda: _started_run(build, "s1") is not None, "documents[s1] to start")
            held = _started_run(build, "s1")
            webserver_launcher = ConfigurableClassData("gmates_assets.warm", "WarmRunLauncher", "workers: 1\n")
            with dg.DagsterInstance.from_ref(instance.get_ref()._replace(run_launcher_data=webserver_launcher)) \
                    as webserver:
                assert webserver.run_launcher.terminate(held.run_id)
            # still holding the lock its step waits for: only an interrupt of its worker ends that step
            wait_until(lambda: instance.all_logs(held.run_id, of_type=dg.DagsterEventType.STEP_FAILURE),
                        "the worker to interrupt the run's step", timeout=60)
            wait_until(lambda: instance.get_run_by_id(held.run_id).is_finished, "the run to end", timeout=60)
        thread.join(timeout=120)
        assert instance.get_run_by_id(held.run_id).status == dg.DagsterRunStatus.CANCELED
        assert "canceled" in str(outcome.get("error", "")).lower(), outcome
        built = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=dg.AssetKey("documents")),
                                                limit=10).records
        assert held.run_id not in {r.run_id for r in built}


def test_gmates_ui_gives_its_home_warm_workers_and_keeps_a_dagster_yaml_someone_edited(tmp_path):
    from gmates_assets.local_instance import ensure_ui_instance, local_instance_yaml

    home = tmp_path / "home"
    ensure_ui_instance(home)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert isinstance(instance.run_launcher, WarmRunLauncher) and instance.run_launcher.workers == 2
    edited = tmp_path / "edited"
    edited.mkdir()
    custom = local_instance_yaml() + "run_queue:\n  max_concurrent_runs: 3\n"
    (edited / "dagster.yaml").write_text(custom)
    ensure_ui_instance(edited)
    assert (edited / "dagster.yaml").read_text() == custom
