"""Issue 19 (runtime trust): stale Definitions never build, relocatable homes, killed syncs, Ctrl-C, `gmates ui`
without a venv, read-only status, progress rates, partial steps in status."""
from __future__ import annotations

import dagster as dg
import pytest

from gmates_assets.defs.launch import RUN_CONFIG

from .pipeline import ROOT, Build

CHANGED = "changed on disk since these definitions were loaded"


def _materializations(instance, asset: str) -> int:
    return len(instance.fetch_materializations(dg.AssetKey(asset), limit=1000).records)


def _step_errors(result) -> list[str]:
    """Each failed step's error, with the causes Dagster wraps it in."""
    out = []
    for event in (e for e in result.all_events if e.is_step_failure):
        error, text = event.event_specific_data.error, ""
        while error is not None:
            text, error = text + error.message, error.cause
        out.append(text)
    return out


@pytest.fixture
def edited(full_build, tmp_path):
    """A copy of the full build, its Definitions loaded, then its manifest edited (clustering.niter)."""
    build = full_build.copy_to(tmp_path / "b")
    defs = build.defs()
    build.edit("clustering.niter", 11)
    return build, defs


def test_step_refuses_a_manifest_edited_since_the_definitions_loaded(edited):
    build, stale_defs = edited
    job = stale_defs.resolve_implicit_global_asset_job_def()
    with build.instance() as instance:
        before = _materializations(instance, "cluster_assignments")
        result = job.execute_in_process(instance=instance, asset_selection=[dg.AssetKey("cluster_assignments")],
                                        raise_on_error=False, run_config=RUN_CONFIG)
        assert not result.success
        (error,) = _step_errors(result)
        assert CHANGED in error and "cluster_assignments (code version" in error
        assert _materializations(instance, "cluster_assignments") == before  # nothing recorded
    # Reloaded Definitions build from the edited manifest as usual.
    with build.instance() as instance:
        fresh = build.defs().resolve_implicit_global_asset_job_def()
        assert fresh.execute_in_process(instance=instance, asset_selection=[dg.AssetKey("cluster_assignments")],
                                        run_config=RUN_CONFIG).success


def test_automation_sensor_skips_while_its_definitions_are_stale(edited):
    build, stale_defs = edited
    sensor = stale_defs.get_sensor_def("gmates_automation")
    with build.instance() as instance:
        data = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, definitions=stale_defs))
    assert not data.run_requests
    assert data.skip_message.startswith("manifest changed on disk: Reload definitions")
    assert CHANGED in data.skip_message and str(build.manifest) in data.skip_message
    checks = {e.asset_key.to_user_string(): e for e in data.asset_events}  # each asset's up_to_date says so too
    assert checks and all(not e.passed and "Reload definitions" in e.description for e in checks.values())
    reloaded = build.defs()  # the guard passes: the reloaded sensor requests the rebuild of what the edit reached
    with build.instance() as instance:
        data = reloaded.get_sensor_def("gmates_automation").evaluate_tick(
            dg.build_sensor_context(instance=instance, definitions=reloaded))
    assert {k.to_user_string() for r in data.run_requests for k in r.asset_selection} == {"cluster_assignments"}


# ------------------------------------------------------------------------------ 2. a copied DAGSTER_HOME
def _record(home, asset: str = "x") -> None:
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.report_runless_asset_event(dg.AssetMaterialization(asset))


def _count(home, asset: str = "x") -> int:
    with dg.DagsterInstance.from_config(str(home)) as instance:
        return _materializations(instance, asset)


def test_a_copied_dagster_home_keeps_its_own_history(tmp_path):
    import shutil

    from gmates_assets.local_instance import ensure_local_instance

    ensure_local_instance(tmp_path / "a")
    _record(tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")  # a plain copy: nothing rewritten
    _record(tmp_path / "b")
    assert (_count(tmp_path / "a"), _count(tmp_path / "b")) == (1, 2)


def test_a_home_whose_event_log_points_at_another_home(tmp_path):
    """A home made before homes were relocatable names its event log by absolute path: opened directly it is
    refused; `gmates` (ensure_local_instance) rewrites it to the home's own history."""
    import shutil

    from gmates_assets.local_instance import ensure_local_instance

    original, copy = tmp_path / "a", tmp_path / "b"
    ensure_local_instance(original)
    _record(original)
    shutil.copytree(original, copy)
    legacy = (f"telemetry:\n  enabled: false\nevent_log_storage:\n  module: gmates_assets.event_log\n"
              f"  class: ConsolidatedEventLogStorage\n  config:\n    base_dir: {original / 'history' / 'events'}\n")
    (copy / "dagster.yaml").write_text(legacy)
    with pytest.raises(Exception, match="points into another home"):
        _record(copy)
    ensure_local_instance(copy)
    _record(copy)
    assert (_count(original), _count(copy)) == (1, 2)


# ------------------------------------------------------------------------------ 7. progress of slow steps
def _meter_lines(monkeypatch, ticks: list[tuple[float, int]], total: int, unit: str) -> list[str]:
    from gmates_assets.core import progress

    clock = iter([0.0] + [t for t, _ in ticks])
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    lines: list[str] = []
    meter = progress.RateMeter(lines.append, "oracle_random[0] rollouts", min_interval_s=0)
    for _, done in ticks:
        meter(done, total, unit)
    return lines


def test_a_slow_step_reports_seconds_per_item(monkeypatch):
    lines = _meter_lines(monkeypatch, [(40.0, 1), (100.0, 2)], 128, "rollouts")
    assert "0.0 rollouts/s" not in " ".join(lines)
    assert lines == ["oracle_random[0] rollouts: 1/128 rollouts (0.8%), 40.0 s/rollout, eta 5080s",
                     "oracle_random[0] rollouts: 2/128 rollouts (1.6%), 50.0 s/rollout, eta 6300s"]
    fast = _meter_lines(monkeypatch, [(2.0, 64)], 128, "docs")
    assert fast == ["oracle_random[0] rollouts: 64/128 docs (50.0%), 32.0 docs/s, eta 2s"]


# ------------------------------------------------------------------------------ 5. `gmates ui` without a venv
def test_ui_runs_the_interpreters_own_dagster(monkeypatch, tmp_path):
    """With the venv not activated, `dagster` is not on PATH: `gmates ui` must not look for it there."""
    import os
    import sys

    from gmates_assets import cli

    monkeypatch.setenv("PATH", str(tmp_path))  # nothing to find on PATH
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    calls = []

    def fake_exec(*args):
        calls.append(args)
        raise SystemExit(0)

    for name in ("execv", "execvp"):
        monkeypatch.setattr(os, name, fake_exec)
    monkeypatch.setattr(cli.signal, "signal", lambda *_a: None)  # cmd_ui resets the handlers: not in pytest
    with pytest.raises(SystemExit):
        cli.main(["ui", "-m", "data_manifests/tests.yaml", "--port", "3999"])
    ((program, argv),) = calls
    assert program == sys.executable and argv[:4] == [sys.executable, "-m", "dagster", "dev"]
    assert argv[-2:] == ["-p", "3999"]
    assert "class: WarmRunLauncher" in (tmp_path / "home" / "dagster.yaml").read_text()  # the UI's run workers


# ------------------------------------------------------------------------------ 3./4. interrupted and killed syncs
def _start_sync(build: Build, tmp_path) -> tuple:
    """`gmates sync` on `build` in a subprocess; returns it once it has started its first wave."""
    import os
    import subprocess
    import sys
    import time

    quiet = {k: v for k, v in os.environ.items() if k not in ("GMATES_VERBOSE", "GMATES_DEBUG")}  # as a user runs it
    env = {**quiet, **build.env(), "PYTHONPATH": str(ROOT)}
    out = open(tmp_path / "sync.out", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "gmates_assets.cli", "sync", "-m", str(build.manifest)],
                            stdout=out, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    deadline = time.monotonic() + 120
    while "wave 1:" not in (tmp_path / "sync.out").read_text():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else "slow"
        time.sleep(0.2)
    time.sleep(1.0)  # inside the first run
    return proc, out


def test_ctrl_c_prints_one_line_that_says_a_rerun_resumes(full_build, tmp_path):
    import signal

    build = full_build.copy_to(tmp_path / "b")
    build.edit("probe.total_steps", 41)  # rebuilds the probe and everything below it: a sync of a minute
    proc, _ = _start_sync(build, tmp_path)
    proc.send_signal(signal.SIGINT)
    stderr = proc.stderr.read()
    assert proc.wait(timeout=60) == 130, stderr
    lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith("  ")]  # not progress
    assert "Traceback" not in stderr and "Exception ignored" not in stderr and len(lines) <= 2, stderr
    assert lines[-1].startswith("gmates sync: interrupted during wave 1 (") and "a re-run resumes" in lines[-1], stderr
    assert "wave 2:" not in (tmp_path / "sync.out").read_text()  # it stopped, not after the whole graph


def test_the_next_sync_fails_the_runs_of_a_killed_sync(full_build, tmp_path):
    import signal

    from gmates_assets.defs.sync import sync

    build = full_build.copy_to(tmp_path / "b")
    build.edit("probe.total_steps", 41)
    proc, _ = _start_sync(build, tmp_path)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    with build.instance() as instance:
        orphans = instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
        assert len(orphans) == 1  # the killed run stays STARTED
        log: list[str] = []
        sync(build.defs(), instance, select=["documents"], log=log.append)  # fresh: no run of its own
        run = instance.get_run_by_id(orphans[0].run_id)
        assert run.status == dg.DagsterRunStatus.FAILURE
        assert any(orphans[0].run_id in line and f"process {proc.pid}" in line and "gone" in line for line in log)


def test_only_runs_of_dead_processes_on_this_host_count_as_orphans():
    import os
    import subprocess
    import sys

    from gmates_assets.defs.orphans import _gone, process_tag

    assert _gone(process_tag()) is None  # this process: alive
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert _gone(process_tag(dead.pid)) == dead.pid
    host, pid, started = process_tag().split(":")
    assert _gone(f"another-{host}:{dead.pid}:") is None  # another host's run: not ours to judge
    assert _gone(f"{host}:{os.getpid()}:{started}0") == os.getpid()  # the pid now names another process


# ------------------------------------------------------------------------------ 6. status is read-only
@pytest.fixture(scope="module")
def pool_built(tmp_path_factory) -> Build:
    """Two local jsonl shards with documents and tokenized_pool built once; tests work on copies."""
    from .test_pool_assets import make_build

    build = make_build(tmp_path_factory.mktemp("pool"))
    build.sync(select=["tokenized_pool"])
    return build


def _cli_status(build: Build, monkeypatch, capsys, *flags: str) -> set[tuple[str, str | None]]:
    import json

    from gmates_assets.cli import main

    for name, value in build.env().items():
        monkeypatch.setenv(name, value)
    capsys.readouterr()
    assert main(["status", "--json", "-m", str(build.manifest), *flags]) == 0
    built = {"documents", "lm_tokenizer", "tokenized_pool"}  # the rest of the graph is missing
    return {(s["asset"], s["partition"]) for s in json.loads(capsys.readouterr().out)
            if s["status"] != "fresh" and s["asset"] in built}


def _history_size(build: Build) -> tuple[int, int]:
    with build.instance() as instance:
        return len(instance.get_runs()), instance.event_log_storage.get_maximum_record_id() or 0


def test_plain_status_writes_nothing_and_still_sees_an_edited_source(pool_built, tmp_path, monkeypatch, capsys):
    from .test_pool_assets import write_jsonl

    build = pool_built.copy_to(tmp_path / "b")
    write_jsonl(build.root / "b.jsonl", [f"beta document number {i} about glaciers" for i in range(8)])
    before = _history_size(build)
    read_only = _cli_status(build, monkeypatch, capsys)
    assert _history_size(build) == before  # no observation run, no event
    assert read_only == {("documents", "b")}  # its direct reader (the rest follows if its bytes change)
    assert _cli_status(build, monkeypatch, capsys, "--observe") == read_only  # what observing finds
    assert _history_size(build) != before


# ------------------------------------------------------------------------------ 8. partial steps in status
def test_status_shows_an_interrupted_resumable_step_as_partial(pool_built, tmp_path, monkeypatch, capsys):
    """embeddings[a] (10 documents, committed every 4) stops after its first commit: status says how far it got."""
    from gmates_assets.core import encode

    build = pool_built.copy_to(tmp_path / "b")
    real, calls = encode._encode_real_chunks, []

    def killed_after_one_commit(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")  # as a killed process: nothing after the first commit runs
        return real(*args, **kwargs)

    monkeypatch.setattr(encode, "_encode_real_chunks", killed_after_one_commit)
    monkeypatch.setattr(encode, "EMBED_BLOCK_DOCS", 4)  # blocks of 4 documents: a commit after each
    with pytest.raises(BaseException, match="killed"):
        build.sync(select=["embeddings"])
    monkeypatch.setattr(encode, "_encode_real_chunks", real)
    for name, value in build.env().items():
        monkeypatch.setenv(name, value)
    from gmates_assets.cli import main

    capsys.readouterr()
    assert main(["status", "-m", str(build.manifest)]) == 0
    lines = [line.split(None, 1) for line in capsys.readouterr().out.splitlines() if line.startswith("embeddings[")]
    assert dict(lines) == {"embeddings[a]": "partial: 4/10 docs done, a re-run resumes", "embeddings[b]": "missing"}


def test_an_interrupt_that_a_handler_swallowed_still_stops_the_sync_after_the_run():
    """Dagster raises SIGINT as an exception wherever the main thread is; inside a weakref callback Python drops
    it ("Exception ignored in ...") and the sync went on through the whole graph. The watch still sees it."""
    import os
    import signal
    import sys
    from types import SimpleNamespace

    from gmates_assets.interrupts import InterruptWatch

    swallowed = signal.signal(signal.SIGINT, lambda *_: None)  # a handler that loses the interrupt
    try:
        with InterruptWatch() as watch:
            watch.check()  # nothing yet
            os.kill(os.getpid(), signal.SIGINT)
            with pytest.raises(KeyboardInterrupt):
                watch.check()
        with InterruptWatch() as watch:  # the dropped exception itself: silenced, then raised between runs
            sys.unraisablehook(SimpleNamespace(exc_value=KeyboardInterrupt(), exc_type=KeyboardInterrupt,
                                               exc_traceback=None, err_msg=None, object=None))
            with pytest.raises(KeyboardInterrupt):
                watch.check()
    finally:
        signal.signal(signal.SIGINT, swallowed)
