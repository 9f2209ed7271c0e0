"""The local instance's event log (gmates_assets/event_log.py) under concurrent writers, and what a killed writer
leaves behind; its run storage (gmates_assets/run_storage.py); both keep their connections."""
from __future__ import annotations

import subprocess
import sys
import threading
import time

import dagster as dg
from dagster._core.events import StepMaterializationData  # private, pinned dagster

from gmates_assets.local_instance import ensure_local_instance

from .pipeline import ROOT


def _materialization(run_id: str, partition: str) -> dg.EventLogEntry:
    event = dg.DagsterEvent(
        event_type_value=dg.DagsterEventType.ASSET_MATERIALIZATION.value, job_name="job",
        event_specific_data=StepMaterializationData(dg.AssetMaterialization(
            asset_key="oracle", partition=partition, tags={"dagster/data_version": partition})))
    return dg.EventLogEntry(error_info=None, level="debug", user_message="", run_id=run_id, timestamp=time.time(),
                            dagster_event=event)


def test_the_asset_index_follows_the_newest_event_when_two_writers_interleave(tmp_path, monkeypatch):
    """Two runs materialize partitions of one asset at the same moment (two warm workers, or two launched runs).
    Dagster's sqlite storage commits the event, then in a second transaction points the asset's index at it;
    when the first writer's second transaction came last, the index named the older event, and everything
    reading both partitions looked stale forever (seen: relational_model_init after oracle_random[seed0, seed1]).
    Here the first writer is held between its two steps (a slow index write) while the second stores its event."""
    ensure_local_instance(tmp_path / "home")
    instance = dg.DagsterInstance.from_config(str(tmp_path / "home"))
    storage = instance.event_log_storage
    original = type(storage)._store_asset_event_tags

    def slow_for_the_first(self, conn, events, event_ids):
        if events[0].run_id == "first":
            time.sleep(1.0)
        return original(self, conn, events, event_ids)

    monkeypatch.setattr(type(storage), "_store_asset_event_tags", slow_for_the_first)
    first = threading.Thread(target=storage.store_event, args=(_materialization("first", "seed0"),))
    first.start()
    time.sleep(0.3)
    storage.store_event(_materialization("second", "seed1"))
    first.join()
    newest = max(r.storage_id for r in instance.fetch_materializations(dg.AssetKey("oracle"), limit=10).records)
    (record,) = instance.get_asset_records([dg.AssetKey("oracle")])
    assert record.asset_entry.last_materialization_record.storage_id == newest
    instance.dispose()


KILLED_WRITER = """
import os, signal, sys, time
import dagster as dg
sys.path.insert(0, {root!r})
from tests.test_event_log import _materialization
instance = dg.DagsterInstance.from_config({home!r})
instance.event_log_storage.store_event(_materialization("killed", "seed0"))
os.kill(os.getpid(), signal.SIGKILL)  # right after the commit: no clean shutdown, no checkpoint
"""


def test_an_event_committed_by_a_writer_killed_right_after_survives(tmp_path):
    """synchronous=NORMAL (docs/store.md): a commit is in the WAL file when it returns, so a process killed
    right after (kill -9, out of memory, Ctrl-C) loses nothing it committed."""
    ensure_local_instance(tmp_path / "home")
    code = KILLED_WRITER.format(root=str(ROOT), home=str(tmp_path / "home"))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == -9, done.stderr[-2000:]
    with dg.DagsterInstance.from_config(str(tmp_path / "home")) as instance:
        records = instance.fetch_materializations(dg.AssetKey("oracle"), limit=10).records
        assert [r.run_id for r in records] == ["killed"]
        storage = instance.event_log_storage
        with storage._connect() as conn:  # the pragmas every connection of this storage runs with
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL


def test_the_daemon_of_a_gmates_home_advances_backfills_every_few_seconds(tmp_path):
    """Dagster's backfill daemon sleeps DEFAULT_DAEMON_INTERVAL_SECONDS (30) between loops, a name its loop
    reads when it starts; once an instance of a gmates home exists (as in the daemon, before its threads start)
    it is BACKFILL_LOOP_SECONDS. A home with Dagster's own storage keeps 30."""
    from dagster._daemon import backfill

    from gmates_assets.backfill_loop import BACKFILL_LOOP_SECONDS

    assert "DEFAULT_DAEMON_INTERVAL_SECONDS" in backfill.execute_backfill_iteration_loop.__code__.co_varnames
    ensure_local_instance(tmp_path / "gmates")
    (tmp_path / "dagster").mkdir()
    code = ("import sys; import dagster as dg; from dagster._core.instance.ref import InstanceRef; "
            "instance = dg.DagsterInstance.from_ref(InstanceRef.from_dir(sys.argv[1])); "
            "from dagster._daemon import controller; print(controller.DEFAULT_DAEMON_INTERVAL_SECONDS)")
    seen = {}
    for home in ("gmates", "dagster"):
        done = subprocess.run([sys.executable, "-c", code, str(tmp_path / home)], capture_output=True, text=True,
                              timeout=120, cwd=ROOT)
        assert done.returncode == 0, done.stderr[-2000:]
        seen[home] = done.stdout.strip().splitlines()[-1]
    assert seen == {"gmates": str(BACKFILL_LOOP_SECONDS), "dagster": "30"}


def test_a_process_stores_events_and_runs_over_one_kept_connection_each(tmp_path, monkeypatch):
    """Dagster's sqlite storages build an engine and open a connection per query (NullPool): profiled in a sync,
    ~110 connections a run at 1-3 ms each (open, pragma, close: the close of the last one also checkpoints the
    WAL). gmates' event log and run storage keep theirs for the life of the storage."""
    import sqlalchemy

    opened = []
    real_connect = sqlalchemy.pool.QueuePool._create_connection

    def counted(pool):
        opened.append(1)
        return real_connect(pool)

    ensure_local_instance(tmp_path / "home")
    with dg.DagsterInstance.from_config(str(tmp_path / "home")) as instance:
        from dagster._core.storage.runs.sqlite import sqlite_run_storage

        monkeypatch.setattr(sqlite_run_storage, "create_engine", _refuse_engines)  # Dagster's per-query engines
        monkeypatch.setattr(sqlalchemy.pool.QueuePool, "_create_connection", counted)
        storage = instance.event_log_storage
        for i in range(20):
            storage.store_event(_materialization("run", f"p{i}"))
            instance.fetch_materializations(dg.AssetKey("oracle"), limit=1)
            instance.add_run(dg.DagsterRun(job_name="job", run_id=f"run{i}"))
            assert instance.get_run_by_id(f"run{i}") is not None
        assert len(opened) <= 2, f"{len(opened)} connections opened for 20 events, 20 runs and 40 queries"


def _refuse_engines(*_args, **_kwargs):
    raise AssertionError("Dagster's run storage built an engine for a query")


def test_a_home_gmates_wrote_before_its_run_storage_keeps_its_runs_and_relocates(tmp_path):
    """A dagster.yaml an earlier gmates wrote (Dagster's default run storage) is brought up to date by any gmates
    command, with or without `gmates ui`'s warm launcher; its runs are in the same database and still there; a
    copied home records runs in its own database."""
    import shutil

    from gmates_assets.local_instance import WARM_LAUNCHER_YAML, local_instance_yaml
    from gmates_assets.run_storage import KeptSqliteRunStorage

    for launcher in ("", WARM_LAUNCHER_YAML):
        home = tmp_path / f"home{len(launcher)}"
        home.mkdir()
        (home / "dagster.yaml").write_text(local_instance_yaml(runs=False) + launcher)
        with dg.DagsterInstance.from_config(str(home)) as instance:  # the earlier file: Dagster's run storage
            assert type(instance.run_storage).__name__ != "KeptSqliteRunStorage"
            instance.add_run(dg.DagsterRun(job_name="job", run_id="before"))
        ensure_local_instance(home)
        assert (home / "dagster.yaml").read_text() == local_instance_yaml() + launcher
        copy = tmp_path / f"copy{len(launcher)}"
        shutil.copytree(home, copy)
        with dg.DagsterInstance.from_config(str(home)) as instance:
            assert isinstance(instance.run_storage, KeptSqliteRunStorage)
            assert [r.run_id for r in instance.get_runs()] == ["before"]
        with dg.DagsterInstance.from_config(str(copy)) as instance:
            instance.add_run(dg.DagsterRun(job_name="job", run_id="in the copy"))
        with dg.DagsterInstance.from_config(str(home)) as instance:
            assert [r.run_id for r in instance.get_runs()] == ["before"]


def test_a_run_watcher_sees_events_a_writer_stores_while_it_keeps_its_connection(tmp_path):
    """The UI follows a run's log through a file watcher on the event database (Dagster's sqlite storages); in WAL
    mode a commit changes only the WAL file, and a kept connection never checkpoints it into the database file,
    so a writer must signal each commit (it touches the database file)."""
    ensure_local_instance(tmp_path / "home")
    with dg.DagsterInstance.from_config(str(tmp_path / "home")) as reader, \
            dg.DagsterInstance.from_config(str(tmp_path / "home")) as writer:
        writer.event_log_storage.store_event(_materialization("run", "p0"))  # the writer's connection is open
        seen = threading.Event()
        reader.event_log_storage.watch("run", None, lambda event, cursor: seen.set())
        time.sleep(0.5)  # the watcher is scheduled
        writer.event_log_storage.store_event(_materialization("run", "p1"))
        assert seen.wait(timeout=10), "the watcher was not told of the new event"


CAPTURING_STEP = """
import os, subprocess, sys
sys.path.insert(0, {root!r})
import dagster as dg
from gmates_assets.local_instance import ensure_local_instance
ensure_local_instance({home!r})
started = []
real_popen = subprocess.Popen.__init__
def counted(self, args, *rest, **kwargs):
    started.append(args)
    real_popen(self, args, *rest, **kwargs)
with dg.DagsterInstance.from_config({home!r}) as instance:
    manager = instance.compute_log_manager
    subprocess.Popen.__init__ = counted
    with manager.capture_logs(["run", "step"]):
        print("from the step", flush=True)
        os.write(2, b"progress on stderr\\n")
        subprocess.Popen.__init__ = real_popen
        subprocess.run(["sh", "-c", "echo from a child process"], check=True)
        subprocess.Popen.__init__ = counted
    subprocess.Popen.__init__ = real_popen
    print("started during capture:", started)
    for kind in ("out", "err"):
        print(kind, "file:", repr(open(manager.get_captured_local_path(["run", "step"], kind)).read()))
    print("complete:", manager.is_capture_complete(["run", "step"]))
"""


def test_a_steps_output_reaches_its_log_files_and_the_terminal_without_helper_processes(tmp_path):
    """Dagster's local compute log manager mirrors each step's stdout and stderr through a `tail` process and a
    Python watcher process each (four processes a step, ~0.1 s of CPU): gmates' copies with a thread. Output
    still reaches both the step's log files (the UI's stdout/stderr view) and the terminal (a sync's progress
    lines), child processes' output included."""
    code = CAPTURING_STEP.format(root=str(ROOT), home=str(tmp_path / "home"))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "started during capture: []" in out, out
    assert "out file: 'from the step\\nfrom a child process\\n'" in out, out
    assert "err file: 'progress on stderr\\n'" in out, out
    assert "complete: True" in out
    terminal = out.split("started during capture:")[0]
    assert terminal == "from the step\nfrom a child process\n", out
    assert "progress on stderr" in done.stderr


STALLED_TERMINAL = """
import os, sys, time
sys.path.insert(0, {root!r})
import dagster as dg
from gmates_assets.local_instance import ensure_local_instance
ensure_local_instance({home!r})
with dg.DagsterInstance.from_config({home!r}) as instance:
    manager = instance.compute_log_manager
    read_end, write_end = os.pipe()  # a terminal nobody reads: full after 64 KiB
    os.dup2(write_end, 1)
    started = time.monotonic()
    with manager.capture_logs(["run", "step"]):
        sys.stdout.write("x" * 300_000 + "\\n")
        sys.stdout.flush()
    os.write(2, f"capture ended after {{time.monotonic() - started:.1f}} s\\n".encode())
    size = os.path.getsize(manager.get_captured_local_path(["run", "step"], "out"))
    os.write(2, f"file holds {{size}} bytes\\n".encode())
"""


def test_a_step_ends_when_the_terminal_it_mirrors_to_stops_reading(tmp_path):
    """A sync whose output goes to a pipe nobody drains (a wrapper that reads only at the end): the mirror thread
    blocks writing to it; the step must still end (its log file holds everything)."""
    code = STALLED_TERMINAL.format(root=str(ROOT), home=str(tmp_path / "home"))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    seconds = float(done.stderr.split("capture ended after ")[1].split(" s")[0])
    assert seconds < 15, done.stderr
    assert "file holds 300001 bytes" in done.stderr


def test_kept_connections_never_make_a_query_wait_for_another(tmp_path):
    """The UI's threads query at once, and a thread may hold a connection while it asks for a second; with a
    bounded pool the next one would wait (30 s, then fail). Beyond the kept connection, any number open."""
    from contextlib import ExitStack

    ensure_local_instance(tmp_path / "home")
    with dg.DagsterInstance.from_config(str(tmp_path / "home")) as instance, ExitStack() as held:
        started = time.monotonic()
        for _ in range(16):
            held.enter_context(instance.event_log_storage._connect())  # noqa: SLF001
            held.enter_context(instance.run_storage.connect())
        assert time.monotonic() - started < 10
