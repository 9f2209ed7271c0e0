"""Cluster mode as documented in docs/deployment.md: the example instance config, the executor, runs that
build the manifest their sync named, the sensor that must not race a sync, failed-run errors, `status --plan`."""
from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Optional

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
DEPLOY_ENV = {"DAGSTER_PG_HOST": "127.0.0.1", "DAGSTER_PG_USER": "dagster", "DAGSTER_PG_PASSWORD": "secret",
              "GMATES_IMAGE": "registry.example/gmates:1", "GMATES_LOG_BUCKET": "logs"}


# ------------------------------------------------------------------------------ item 3: deploy/dagster.yaml
def test_deploy_dagster_yaml_passes_dagster_config_validation_with_the_cluster_integrations(monkeypatch):
    for module in ("dagster_postgres", "dagster_k8s", "dagster_aws", "dagster_celery"):
        pytest.importorskip(module, reason="the `cluster` extra is not installed (pip install -e '.[cluster]')")
    import sqlalchemy
    from dagster._config import process_config
    from dagster._core.instance.config import dagster_instance_config
    from dagster_postgres.utils import pg_url_from_config

    for name, value in DEPLOY_ENV.items():
        monkeypatch.setenv(name, value)
    config, _ = dagster_instance_config(str(DEPLOY), "dagster.yaml")  # the instance schema
    for section in ("run_coordinator", "run_launcher", "compute_logs"):  # each class's own schema
        data = config[section]
        klass = getattr(importlib.import_module(data["module"]), data["class"])
        result = process_config(klass.config_type(), data.get("config") or {})
        assert result.success, f"deploy/dagster.yaml {section} ({data['class']}): {result.errors}"
    assert "storage" not in config  # three storages: the event log is gmates' ordered one
    assert (config["event_log_storage"]["module"], config["event_log_storage"]["class"]) == (
        "gmates_assets.postgres_event_log", "OrderedPostgresEventLogStorage")
    for section in ("run_storage", "event_log_storage", "schedule_storage"):
        data = config[section]
        klass = getattr(importlib.import_module(data["module"]), data["class"])
        result = process_config(klass.config_type(), data["config"])
        assert result.success, f"deploy/dagster.yaml {section} ({data['class']}): {result.errors}"
        # the URL Dagster builds must name a driver the integration installs (psycopg2), not SQLAlchemy's default
        sqlalchemy.create_engine(pg_url_from_config(result.value))  # imports the DBAPI; connects to nothing


# ------------------------------------------------------------------------------ item 4 and issue 19: the executor
def _manifest_with(tmp_path, **execution) -> Path:
    from .pipeline import TESTS_MANIFEST

    data = yaml.safe_load(TESTS_MANIFEST.read_text())
    data["execution"] = {**data.get("execution", {}), **execution}
    path = tmp_path / "manifest.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_execution_executor_config_configures_the_celery_executor_with_redis(tmp_path):
    pytest.importorskip("dagster_celery", reason="the `cluster` extra is not installed")
    from gmates_assets.defs import build_definitions

    redis = {"broker": "redis://127.0.0.1:6379/0", "backend": "redis://127.0.0.1:6379/1"}
    defs = build_definitions(_manifest_with(tmp_path, launcher="instance", executor="dagster_celery:celery_executor",
                                            executor_config=redis))
    executor = defs.resolve_implicit_global_asset_job_def().executor_def
    assert executor.name == "celery"
    resolved = executor.apply_config_mapping({})  # what every run of the job gets (sync's, the UI's, the sensor's)
    assert resolved.success and resolved.value["config"]["broker"] == redis["broker"]
    assert resolved.value["config"]["backend"] == redis["backend"]


def test_the_celery_executor_looks_at_its_steps_ten_times_a_second(tmp_path, monkeypatch):
    """dagster-celery's loop sleeps TICK_SECONDS (1) between looks at its steps' results (celery_tick.py); the
    Definitions of a Celery manifest shorten it in the process that loads them, which is the run's."""
    pytest.importorskip("dagster_celery", reason="the `cluster` extra is not installed")
    from dagster_celery import core_execution_loop

    from gmates_assets.defs import build_definitions
    from gmates_assets.defs.celery_tick import CELERY_TICK_SECONDS

    monkeypatch.setattr(core_execution_loop, "TICK_SECONDS", 1)  # dagster-celery's own value
    build_definitions(_manifest_with(tmp_path, executor="multiprocess"))
    assert core_execution_loop.TICK_SECONDS == 1  # only a Celery executor changes it
    build_definitions(_manifest_with(tmp_path, launcher="instance", executor="dagster_celery:celery_executor"))
    assert core_execution_loop.TICK_SECONDS == CELERY_TICK_SECONDS == 0.1


def test_executor_config_merges_with_multiprocess_max_concurrent(tmp_path):
    from gmates_assets.defs import build_definitions

    defs = build_definitions(_manifest_with(tmp_path, executor="multiprocess", max_concurrent=3,
                                            executor_config={"retries": {"disabled": {}}}))
    resolved = defs.resolve_implicit_global_asset_job_def().executor_def.apply_config_mapping({})
    assert resolved.success
    assert resolved.value["config"]["max_concurrent"] == 3 and "disabled" in resolved.value["config"]["retries"]


def test_executor_config_that_the_executor_rejects_fails_when_the_definitions_load(tmp_path):
    from gmates_assets.defs import build_definitions

    with pytest.raises(ValueError, match=r"execution\.executor_config.*max_concurent"):
        build_definitions(_manifest_with(tmp_path, executor="multiprocess", executor_config={"max_concurent": 2}))


@pytest.mark.parametrize("spec", ["os:system", "json:dumps", "gmates_assets.defs:build_definitions"])
def test_execution_executor_accepts_only_a_dagster_executor_definition(tmp_path, spec):
    from gmates_assets.defs import build_definitions

    with pytest.raises(ValueError, match=r"execution\.executor.*not a Dagster executor"):
        build_definitions(_manifest_with(tmp_path, executor=spec))


def test_execution_executor_names_a_module_that_is_not_installed(tmp_path):
    from gmates_assets.defs import build_definitions

    with pytest.raises(ValueError, match=r"execution\.executor.*no_such_module.*not installed"):
        build_definitions(_manifest_with(tmp_path, executor="no_such_module:executor"))


# ------------------------------------------------------------------------------ item 5: a failed run's error
def test_a_failed_run_names_its_failing_step_and_the_last_line_of_its_error(tmp_path):
    import dagster as dg

    from gmates_assets.defs.launch import InstanceRuns, RunFailed

    @dg.asset
    def upstream() -> int:
        return 1

    @dg.asset(deps=[upstream])
    def broken_shard() -> None:
        raise ValueError("shard s3.jsonl line 7: 'text' is not a string\n(check the file's field names)")

    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        job = dg.Definitions(assets=[upstream, broken_shard]).resolve_implicit_global_asset_job_def()
        run_id = job.execute_in_process(instance=instance, raise_on_error=False).run_id
        runs = InstanceRuns(instance, "m.yaml", str(tmp_path / "store"), max_concurrent=1)
        with pytest.raises(RunFailed) as failed:
            runs.check_finished(instance.get_run_by_id(run_id), "s3", ["broken_shard"])
    message = str(failed.value)
    assert run_id in message and "broken_shard[s3]" in message
    # the exception line of the traceback, on one line
    assert ("step broken_shard failed: ValueError: shard s3.jsonl line 7: 'text' is not a string "
            "(check the file's field names)") in message
    assert "dagster run logs" not in message  # no such command
    assert "gmates ui" in message


# ------------------------------------------------------------------------------ item 1: the sync's manifest
def _other_manifest(build, tmp_path) -> Path:
    data = yaml.safe_load(build.manifest.read_text())
    data["name"] = data["name"] + "-other"
    data["encoder"] = {**data.get("encoder", {}), "batch_size": 7}
    other = tmp_path / "other" / "pool.yaml"
    other.parent.mkdir()
    other.write_text(yaml.safe_dump(data))
    return other


def test_a_run_submitted_for_another_manifest_fails_at_its_first_step_and_names_both(tmp_path):
    import dagster as dg

    from gmates_assets.defs.launch import failure_summary
    from gmates_assets.defs.run_manifest import manifest_tags

    from .pipeline import TESTS_MANIFEST, Build

    build = Build.create(tmp_path / "b", TESTS_MANIFEST.read_text())  # what the daemon's code location loaded
    other = _other_manifest(build, tmp_path)  # what `gmates sync --manifest` named
    with build.instance() as instance:
        job = build.defs().resolve_implicit_global_asset_job_def()
        result = job.execute_in_process(instance=instance, asset_selection=[dg.AssetKey("lm_tokenizer")],
                                        tags=manifest_tags(str(other), other.read_text()), raise_on_error=False)
        assert not result.success
        summary = failure_summary(instance, result.run_id)
        assert instance.get_latest_materialization_event(dg.AssetKey("lm_tokenizer")) is None  # nothing built
    assert "step lm_tokenizer failed: ManifestMismatch" in summary
    assert str(other) in summary and str(build.manifest) in summary and "GMATES_MANIFEST" in summary
    assert not (build.store / "lm_tokenizer").exists()


@pytest.mark.slow
def test_runs_that_sync_creates_carry_its_manifest_and_a_run_of_the_same_manifest_passes_the_check(tmp_path,
                                                                                                   monkeypatch):
    from gmates_assets.core.manifest import load_manifest
    from gmates_assets.defs.launch import InstanceRuns
    from gmates_assets.defs.run_manifest import ManifestMismatch, check_run_manifest

    from .pipeline import TESTS_MANIFEST, Build

    build = Build.create(tmp_path / "b", TESTS_MANIFEST.read_text())
    monkeypatch.setenv("GMATES_MANIFEST", str(build.manifest))
    monkeypatch.setenv("GMATES_HOME", str(build.store))
    with build.instance() as instance, InstanceRuns(instance, str(build.manifest), str(build.store), 1) as runs:
        run = runs._create_run(None, ["lm_tokenizer"])
    check_run_manifest(run.tags, load_manifest(build.manifest))  # the manifest it names: passes
    with pytest.raises(ManifestMismatch, match="nothing was built"):
        check_run_manifest(run.tags, load_manifest(_other_manifest(build, tmp_path)))


class _RunsThatBuildNothing:
    """A launcher whose runs succeed without building this manifest (what a daemon on another manifest did)."""

    def __init__(self):
        self.waves = 0

    def run_all(self, groups, log, failures=None):
        self.waves += 1
        return [f"run-{self.waves}-{i}" for i, _ in enumerate(groups)]


def test_sync_stops_with_an_error_when_a_wave_makes_no_progress(tmp_path):
    from gmates_assets.defs.sync import sync

    from .pipeline import TESTS_MANIFEST, Build

    build = Build.create(tmp_path / "b", TESTS_MANIFEST.read_text())
    runs = _RunsThatBuildNothing()
    with build.instance() as instance:
        with pytest.raises(RuntimeError, match=r"wave 1 made no progress.*documents\[shard-000\]"):
            sync(build.defs(), instance, select=["lm_tokenizer"], runs=runs)
    assert runs.waves == 1


# ------------------------------------------------------------------------------ item 2: sensor vs sync
def test_the_automation_sensor_is_off_by_default_when_sync_submits_runs_through_the_instance(tmp_path):
    import dagster as dg

    from gmates_assets.defs import build_definitions

    def sensor_default(**execution):
        manifest = _manifest_with(tmp_path / execution.get("launcher", "default"), **execution)
        return build_definitions(manifest).get_sensor_def("gmates_automation").default_status

    (tmp_path / "instance").mkdir()
    (tmp_path / "default").mkdir()
    assert sensor_default(launcher="instance") == dg.DefaultSensorStatus.STOPPED  # the daemon only dequeues
    assert sensor_default() == dg.DefaultSensorStatus.RUNNING  # `gmates ui`: the sensor rebuilds after a reload


@pytest.mark.slow
def test_an_instance_sync_refuses_to_start_runs_while_the_automation_sensor_is_on(tmp_path, monkeypatch):
    import time

    from dagster._core.scheduler.instigation import InstigatorStatus, TickData, TickStatus

    from gmates_assets.defs.launch import InstanceRuns, SensorRace

    from .pipeline import TESTS_MANIFEST, Build

    data = yaml.safe_load(TESTS_MANIFEST.read_text())
    data["execution"] = {"launcher": "instance", "max_concurrent": 1}  # the sensor is off by default
    build = Build.create(tmp_path / "b", yaml.safe_dump(data))
    monkeypatch.setenv("GMATES_MANIFEST", str(build.manifest))
    monkeypatch.setenv("GMATES_HOME", str(build.store))
    with build.instance() as instance, InstanceRuns(instance, str(build.manifest), str(build.store), 1) as runs:
        sensor = runs.repository.get_sensor("gmates_automation")
        instance.start_sensor(sensor)  # someone turned it on in the UI: the daemon would race the sync
        with pytest.raises(SensorRace, match=r"gmates_automation.*(UI|dagster sensor stop)"):
            runs.run_all([(None, ["lm_tokenizer"])], log=print)
        assert instance.get_runs() == []  # refused before creating a run
        instance.stop_sensor(sensor.get_remote_origin_id(), sensor.selector_id, sensor)
        runs.check_no_sensor_race()  # stopped: the sync may go on
        # on by default (declared in code) and ticking: also a race
        state = instance.get_instigator_state(sensor.get_remote_origin_id(), sensor.selector_id)
        instance.update_instigator_state(state.with_status(InstigatorStatus.DECLARED_IN_CODE))
        instance.create_tick(TickData(instigator_origin_id=sensor.get_remote_origin_id(), instigator_name=sensor.name,
                                      instigator_type=state.instigator_type, status=TickStatus.SKIPPED,
                                      timestamp=time.time(), selector_id=sensor.selector_id))
        with pytest.raises(SensorRace, match="ticked"):
            runs.check_no_sensor_race()


# ------------------------------------------------------------------------------ item 7: status --plan
def _jsonl_build(tmp_path):
    import json

    from .pipeline import TESTS_MANIFEST, Build

    data = yaml.safe_load(TESTS_MANIFEST.read_text())
    data["sources"] = {"shards": [{"name": f"s{i}", "format": "jsonl", "paths": [f"s{i}.jsonl"]} for i in range(2)],
                       "reference": {"format": "demo"}, "heldout_reference": {"format": "demo"}}
    build = Build.create(tmp_path / "b", yaml.safe_dump(data))
    for i in range(2):
        (build.root / f"s{i}.jsonl").write_text("".join(json.dumps({"text": f"doc {j} of shard {i}"}) + "\n"
                                                        for j in range(4)))
    return build


@pytest.mark.slow
def test_status_plan_lists_what_a_sync_would_rebuild_at_most_after_a_one_document_edit(tmp_path, build_env, capsys):
    import json

    from gmates_assets.cli import main

    from .pipeline import assets_of

    build = _jsonl_build(tmp_path)
    built = {"documents", "embeddings", "documents_index", "embeddings_index"}
    assert assets_of(build.sync(select=["embeddings_index", "documents_index"]).executed) == built
    lines = (build.root / "s1.jsonl").read_text().splitlines()
    (build.root / "s1.jsonl").write_text("\n".join([json.dumps({"text": "an edited document"})] + lines[1:]) + "\n")
    build_env(build)
    assert main(["status", "--manifest", str(build.manifest), "--json"]) == 0
    now = {(s["asset"], s["partition"]) for s in json.loads(capsys.readouterr().out)
           if s["status"] != "fresh" and s["asset"] in built}
    assert now == {("documents", "s1")}  # what status alone says: one stale partition

    assert main(["status", "--manifest", str(build.manifest), "--plan", "--json"]) == 0
    plan = {(s["asset"], s["partition"]): s for s in json.loads(capsys.readouterr().out)}
    assert plan[("documents", "s1")]["status"] == "stale"
    for item in [("embeddings", "s1"), ("documents_index", None), ("embeddings_index", None)]:
        assert plan[item]["status"] == "downstream" and "documents[s1]" in plan[item]["causes"][0], item
    assert ("documents", "s0") not in plan and ("embeddings", "s0") not in plan
    assert plan[("dataset_release", None)]["status"] == "missing"  # never built: a sync builds it too
    assert main(["status", "--manifest", str(build.manifest), "--plan"]) == 0
    text = capsys.readouterr().out
    assert f"a sync rebuilds at most {len(plan)} " in text and "1 stale and " in text

    rebuilt = build.sync(select=["embeddings_index", "documents_index"]).executed  # the plan is an upper bound of the sync
    assert set(rebuilt) <= set(plan) and ("documents", "s1") in rebuilt


# ------------------------------------------------------------------------------ real components: Postgres + daemon
def _postgres_binaries() -> Optional[tuple[str, str]]:
    import glob
    import shutil

    for folder in [None, *sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]:
        initdb, pg_ctl = shutil.which("initdb", path=folder), shutil.which("pg_ctl", path=folder)
        if initdb and pg_ctl:
            return initdb, pg_ctl
    return None


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres_server():
    """A throwaway Postgres on 127.0.0.1 (user `dagster`, trust auth, database `dagster`); skips without one."""
    import shutil
    import subprocess
    import tempfile

    binaries = _postgres_binaries()
    if binaries is None:
        pytest.skip("no Postgres server binaries (initdb, pg_ctl) on this machine")
    pytest.importorskip("dagster_postgres", reason="the `cluster` extra is not installed")
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses root: run the server as the `postgres` system user
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser")
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no `postgres` user to run the server")
        as_user = ["runuser", "-u", "postgres", "--"]
    root = Path(tempfile.mkdtemp(prefix="gmates-pg-"))
    root.chmod(0o777)
    port = _free_port()
    initdb, pg_ctl = binaries
    run = dict(check=True, capture_output=True, cwd=root)
    subprocess.run([*as_user, initdb, "-D", str(root / "data"), "-A", "trust", "-U", "dagster"], **run)
    # a throwaway server: no fsync (a commit here waits for no disk; nothing must survive a crash)
    subprocess.run([*as_user, pg_ctl, "-D", str(root / "data"), "-l", str(root / "log"), "-w", "-o",
                    f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off "
                    f"-c full_page_writes=off", "start"], **run)
    try:
        import psycopg2

        connection = psycopg2.connect(host="127.0.0.1", port=port, user="dagster", dbname="postgres")
        connection.autocommit = True
        connection.cursor().execute("CREATE DATABASE dagster")
        connection.close()
        yield {"hostname": "127.0.0.1", "port": port, "username": "dagster", "db_name": "dagster",
               "pid_file": root / "data" / "postmaster.pid", "log": root / "log"}
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(root / "data"), "-m", "immediate", "stop"], capture_output=True,
                       cwd=root)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def redis_url(tmp_path):
    """A throwaway redis-server on 127.0.0.1 for the Celery broker and backend; None without the binary."""
    import shutil
    import subprocess
    import time

    binary = shutil.which("redis-server")
    if binary is None or importlib.util.find_spec("dagster_celery") is None:
        yield None
        return
    port = _free_port()
    server = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                               "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import redis

        client = redis.Redis(host="127.0.0.1", port=port)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.2)
        yield f"redis://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=20)


def test_gmates_keeps_its_postgres_connections_pooled(postgres_server, tmp_path):
    """dagster-postgres opens a connection (a forked Postgres backend) per query; `gmates sync` asks thousands of
    questions (3,678 connections in one sync of the cluster test), so gmates' processes pool them (pooled.py)."""
    import time

    import dagster as dg
    import psycopg2

    from gmates_assets.pooled import hold_connections

    db = {key: postgres_server[key] for key in ("hostname", "port", "username", "db_name")}
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump({"storage": {"postgres": {"postgres_db": {
        **db, "password": "unused", "scheme": "postgresql+psycopg2"}}}}))
    admin = psycopg2.connect(host=db["hostname"], port=db["port"], user=db["username"], dbname="postgres")
    admin.autocommit = True
    admin.cursor().execute("ALTER SYSTEM SET log_connections = on")
    admin.cursor().execute("SELECT pg_reload_conf()")
    admin.close()
    time.sleep(0.5)  # the server rereads its configuration

    def connections_for(instance) -> int:
        before = postgres_server["log"].read_text().count("connection authorized")
        for _ in range(20):
            instance.get_runs(limit=1)
        time.sleep(0.2)
        return postgres_server["log"].read_text().count("connection authorized") - before

    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        assert connections_for(instance) >= 20  # Dagster's default: one per query
        assert connections_for(hold_connections(instance)) <= 1  # one, kept


def _materialization(asset: str, partition: str):
    import time

    import dagster as dg
    from dagster._core.events import DagsterEvent, DagsterEventType, StepMaterializationData
    from dagster._core.events.log import EventLogEntry

    materialization = dg.AssetMaterialization(asset_key=asset, partition=partition)
    return EventLogEntry(error_info=None, level="debug", user_message="", run_id=f"run-{partition}",
                         timestamp=time.time(), step_key=asset, job_name="job", dagster_event=DagsterEvent(
                             DagsterEventType.ASSET_MATERIALIZATION.value, "job",
                             event_specific_data=StepMaterializationData(materialization)))


def _index_after_an_interleaving(storage_class, url: str, asset: str) -> tuple[int, int, bool]:
    """Two processes (two storages, two engines) store materializations of two partitions of `asset` at once: A's
    index update waits (up to 2 s) for B's whole store_event, as a slow process would. Returns the storage id the
    asset's index entry names, the latest materialization's, and whether B had finished before A's index update."""
    import threading

    import dagster as dg

    slow, fast = storage_class(url), storage_class(url)
    a_inserted, b_done = threading.Event(), threading.Event()
    b_was_done = []
    index_update = slow._store_asset_event

    def delayed_index_update(conn, event, event_id):
        a_inserted.set()
        b_was_done.append(b_done.wait(timeout=2))
        index_update(conn, event, event_id)

    slow._store_asset_event = delayed_index_update

    def store_b():
        a_inserted.wait(timeout=20)
        fast.store_event(_materialization(asset, "s1"))
        b_done.set()

    other = threading.Thread(target=store_b)
    other.start()
    slow.store_event(_materialization(asset, "s0"))
    other.join(timeout=30)
    key = dg.AssetKey(asset)
    indexed = slow.get_asset_records([key])[0].asset_entry.last_materialization_record.storage_id
    latest = slow.fetch_materializations(key, limit=1).records[0].storage_id
    for storage in (slow, fast):
        storage.dispose()
    return indexed, latest, b_was_done[0]


def test_on_postgres_an_asset_index_follows_the_order_of_its_events_when_two_runs_store_at_once(postgres_server):
    """dagster-postgres stores an asset event, then points the asset's index entry at it in a second transaction:
    two runs materializing partitions of one asset at once can leave the index on the older event (seen in the
    cluster test: a consumer built in the same wave recorded a wrong input version and was built twice). gmates'
    Postgres event log takes a per-asset lock before the insert and updates the index in the same transaction."""
    from dagster_postgres import PostgresEventLogStorage
    from dagster_postgres.utils import get_conn_string

    from gmates_assets.postgres_event_log import OrderedPostgresEventLogStorage

    url = get_conn_string(username="dagster", password="", hostname=postgres_server["hostname"],
                          db_name="dagster", port=str(postgres_server["port"]), scheme="postgresql+psycopg2")
    indexed, latest, b_was_done = _index_after_an_interleaving(PostgresEventLogStorage, url, "plain")
    assert b_was_done and indexed < latest  # Dagster's own storage: the race this guards against
    indexed, latest, b_was_done = _index_after_an_interleaving(OrderedPostgresEventLogStorage, url, "ordered")
    assert not b_was_done, "B stored its event while A held its transaction open"
    assert indexed == latest
    # a batch of one asset's materializations (DAGSTER_EVENT_BATCH_SIZE): one transaction, the index on the last
    import dagster as dg

    storage = OrderedPostgresEventLogStorage(url)
    storage.store_event_batch([_materialization("batched", f"s{i}") for i in range(3)])
    key = dg.AssetKey("batched")
    records = storage.fetch_materializations(key, limit=5).records
    assert sorted(r.partition_key for r in records) == ["s0", "s1", "s2"]
    indexed = storage.get_asset_records([key])[0].asset_entry.last_materialization_record
    assert indexed.storage_id == max(r.storage_id for r in records) and indexed.partition_key == "s2"
    storage.dispose()


def _tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process and its live descendants (with the children each reaped)."""
    from .procs import cpu_seconds, process_stats, tree

    stats = process_stats()
    return sum(cpu_seconds(stats[p]) for p in tree(pid, stats))


def _stop_group(process) -> None:
    """Stop a process this test started in its own session, then whatever of its group outlived it (the code
    servers it spawned)."""
    import signal
    import subprocess

    for sig, grace in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
    try:
        os.killpg(process.pid, signal.SIGKILL)  # children left in the group after the leader exited
    except ProcessLookupError:
        pass


# ------------------------------------------------------------------------------ real components: the whole graph
DEPLOYMENT_DOC = REPO / "docs" / "deployment.md"
CLUSTER_SECTION = "## Cluster mode on one machine (what the CI test runs)"
CLUSTER_MANIFEST = REPO / "data_manifests" / "cluster_ci.yaml"
DOC_REDIS = "redis://127.0.0.1:6379"  # the test's redis-server listens on a free port instead
# What the test runs in the foreground, in order (the doc's `sh` block lists the same; a test keeps them equal).
SYNC = ["gmates", "sync", "--manifest", "cluster_ci.yaml"]
PLAN = ["gmates", "status", "--manifest", "cluster_ci.yaml", "--plan"]
STATUS = ["gmates", "status", "--manifest", "cluster_ci.yaml"]
VERIFY = ["gmates", "verify", "--manifest", "cluster_ci.yaml"]
FOREGROUND = [SYNC, PLAN, SYNC, STATUS, VERIFY]


def _doc_cluster_steps() -> tuple[dict[str, str], dict[str, str], list[list[str]], list[list[str]]]:
    """docs/deployment.md's cluster section: its files (yaml blocks headed `# <name>`), the environment its `sh`
    block exports, the commands it starts in the background (`&`) and the ones it runs in the foreground."""
    import re
    import shlex
    import textwrap

    text = DEPLOYMENT_DOC.read_text(encoding="utf-8")
    assert CLUSTER_SECTION in text, f"{DEPLOYMENT_DOC} has no section {CLUSTER_SECTION!r}"
    section = text.split(CLUSTER_SECTION, 1)[1].split("\n## ", 1)[0]
    files, env, background, foreground = {}, {}, [], []
    for indent, lang, body in re.findall(r"^( *)```(\w+)\n(.*?)^\1```", section, re.M | re.S):
        body = textwrap.dedent(body)
        if lang == "yaml":
            head, _, rest = body.partition("\n")
            assert head.startswith("# "), f"a yaml block of {CLUSTER_SECTION!r} does not start with `# <file>`"
            files[head[2:].strip()] = rest
            continue
        for line in body.splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            words = shlex.split(line)
            if words[0] == "export":
                env.update(word.split("=", 1) for word in words[1:])
            elif words[-1] == "&":
                background.append(words[:-1])
            else:
                foreground.append(words)
    return files, env, background, foreground


def test_the_deployment_doc_cluster_steps_are_the_ones_the_cluster_test_runs(tmp_path):
    """The doc's commands are the test's, its execution section is the shipped cluster_ci manifest's, the workers'
    broker is the runs' broker, and its dagster.yaml passes Dagster's config schemas, the warm run launcher's
    included (fast: no servers)."""
    from dagster._config import process_config
    from dagster._core.instance.config import dagster_instance_config
    from dagster._core.run_coordinator import QueuedRunCoordinator

    from gmates_assets.warm import WarmRunLauncher

    files, env, background, foreground = _doc_cluster_steps()
    assert set(files) == {"dagster_home/dagster.yaml", "workspace.yaml", "celery.yaml", "cluster_ci.yaml: execution"}
    shipped = yaml.safe_load(CLUSTER_MANIFEST.read_text())
    assert yaml.safe_load(files["cluster_ci.yaml: execution"]) == {"execution": shipped["execution"]}
    celery = yaml.safe_load(files["celery.yaml"])["execution"]["config"]
    assert celery == shipped["execution"]["executor_config"]  # the workers and the runs use one broker
    assert foreground == FOREGROUND
    assert [words[0] for words in background] == ["dagster-daemon", "dagster-celery", "dagster-celery"]
    assert {"DAGSTER_HOME", "GMATES_HOME", "GMATES_MANIFEST", "DAGSTER_PG_HOST", "DAGSTER_PG_PORT"} <= set(env)
    with pytest.MonkeyPatch.context() as patch:  # the instance schema resolves the env vars the doc exports
        for name, value in env.items():
            patch.setenv(name, value.replace("$PWD", str(REPO)))
        (tmp_path / "dagster.yaml").write_text(files["dagster_home/dagster.yaml"])
        config, _ = dagster_instance_config(str(tmp_path), "dagster.yaml")
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
    result = process_config(QueuedRunCoordinator.config_type(), config["run_coordinator"]["config"])
    assert result.success, result.errors
    launcher = config["run_launcher"]
    assert (launcher["module"], launcher["class"]) == ("gmates_assets.warm", "WarmRunLauncher")
    result = process_config(WarmRunLauncher.config_type(), launcher["config"])
    assert result.success and result.value["workers"] == shipped["execution"]["max_concurrent"], result.errors


def _jsonl_shard(i: int, n: int = 16, edited: bool = False) -> str:
    import json

    docs = [f"document {j} of shard {i}: the fox {j} jumps over dog {i}" for j in range(n)]
    if edited:
        docs[0] = "an edited document: the fox jumps over a quite different dog"
    return "".join(json.dumps({"text": d}) + "\n" for d in docs)


def _cluster_folder(folder: Path, files: dict[str, str], redis: str) -> Path:
    """The doc's files in `folder`, with this test's redis port; returns the manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dagster_home").mkdir()
    for name in ("dagster_home/dagster.yaml", "workspace.yaml", "celery.yaml"):
        (folder / name).write_text(files[name].replace(DOC_REDIS, redis))
    manifest = folder / "cluster_ci.yaml"
    manifest.write_text(CLUSTER_MANIFEST.read_text().replace(DOC_REDIS, redis))
    for i in range(2):
        (folder / f"s{i}.jsonl").write_text(_jsonl_shard(i))
    return manifest


def _materialized(instance, run_ids) -> dict[tuple[str, Optional[str]], int]:
    """How many times each asset partition was materialized by these runs."""
    from collections import Counter

    import dagster as dg

    counts: Counter = Counter()
    for run_id in run_ids:
        for event in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION):
            counts[(event.dagster_event.asset_key.to_user_string(), event.dagster_event.partition)] += 1
    return dict(counts)


def _twice(instance, runs, counts: dict, sync_output: str) -> str:
    """What to read when a partition was built more than once: the counts, each such partition's materializations (run, storage id, time), every run's partition
    and status, and the sync's output."""
    import dagster as dg

    lines = [repr(counts)]
    for (asset, partition), n in counts.items():
        if n < 2:
            continue
        found = instance.fetch_materializations(dg.AssetRecordsFilter(
            asset_key=dg.AssetKey(asset), asset_partitions=[partition] if partition else None), limit=10).records
        lines += [f"{asset}[{partition}]: run {r.run_id[:8]} storage id {r.storage_id} at {r.timestamp:.3f}"
                  for r in found]
    lines += [f"run {r.run_id[:8]}: {r.tags.get('dagster/partition')} {r.status.value}" for r in runs]
    return "\n".join(lines + ["--- sync output (tail)", sync_output[-4000:]])


def _waves(sync_output: str) -> list[list[tuple[str, Optional[str]]]]:
    """The waves `gmates sync` printed (`wave 2: documents_index, embeddings[s1]`) as (asset, partition) lists."""
    import re

    return [[(name, partition or None) for name, partition in re.findall(r"(\w+)(?:\[([^\]]+)\])?", line)]
            for line in re.findall(r"^wave \d+: (.*)$", sync_output, re.M)]


def _runs_for(waves: list[list[tuple[str, Optional[str]]]]) -> int:
    """One run per partition key per wave (a wave's unpartitioned assets share one run)."""
    return sum(len({partition for _, partition in wave}) for wave in waves)


def _run_phases(instance, runs) -> str:
    """Where the runs' time goes, from their event logs (means per run): `queued` (created -> the daemon
    dequeued it: RUN_STARTING), `launch` (-> RUN_START: the launcher's process or worker begins it), `celery`
    (each step: submitted -> a worker reports it executing), `steps` (STEP_START -> STEP_SUCCESS), `shell` (the
    rest of RUN_START -> the run's end: the executor's 1 s polling, the worker's set-up); and `busy`, the seconds
    during which any run existed (the rest of a sync's time is its own: start, planning between waves)."""
    import dagster as dg

    kind = dg.DagsterEventType
    totals = dict.fromkeys(["queued", "launch", "celery", "steps", "shell"], 0.0)
    spans, n = [], 0
    for run in runs:
        created = instance.get_run_record_by_id(run.run_id).create_timestamp.timestamp()
        first, submitted, picked, started = {}, {}, {}, {}
        steps = 0.0
        for event in instance.all_logs(run.run_id):
            what, at = event.dagster_event and event.dagster_event.event_type, event.timestamp
            first.setdefault(what, at)
            if what == kind.ENGINE_EVENT and event.step_key and "Submitting celery task" in event.message:
                submitted[event.step_key] = at
            elif what == kind.ENGINE_EVENT and event.step_key and "in celery worker" in event.message:
                picked[event.step_key] = at
            elif what == kind.STEP_START:
                started[event.step_key] = at
            elif what == kind.STEP_SUCCESS:
                steps += at - started.get(event.step_key, at)
        start, end = first.get(kind.RUN_START), first.get(kind.RUN_SUCCESS) or first.get(kind.RUN_FAILURE)
        if start is None or end is None:
            continue
        n += 1
        spans.append((created, end))
        totals["queued"] += first.get(kind.RUN_STARTING, start) - created
        totals["launch"] += start - first.get(kind.RUN_STARTING, start)
        totals["celery"] += sum(picked[k] - submitted[k] for k in picked if k in submitted)
        totals["steps"] += steps
        totals["shell"] += (end - start) - steps - sum(picked[k] - submitted[k] for k in picked if k in submitted)
    busy, reach = 0.0, float("-inf")
    for created, end in sorted(spans):
        busy += max(0.0, end - max(created, reach))
        reach = max(reach, end)
    means = ", ".join(f"{name} {value / max(1, n):.2f} s" for name, value in totals.items())
    return f"{n} runs, means per run: {means}; runs busy {busy:.0f} s"


def _sync_own_time(instance, runs, started: float, ended: float) -> str:
    """A sync's time while none of its runs existed: before its first run (start, observing the sources,
    planning), between waves (planning the next), after its last run."""
    spans = sorted((instance.get_run_record_by_id(r.run_id).create_timestamp.timestamp(),
                    instance.get_run_record_by_id(r.run_id).end_time or ended) for r in runs)
    if not spans:
        return f"{ended - started:.0f} s without runs"
    between, reach = 0.0, spans[0][1]
    for created, end in spans[1:]:
        between += max(0.0, created - reach)
        reach = max(reach, end)
    return f"first run after {spans[0][0] - started:.1f} s, {between:.1f} s between runs, {ended - reach:.1f} s after"


def _release_hash(instance) -> str:
    """The released dataset's content hash (its files and lineage; the artifact also records when and by which
    runs it was built, so its data version differs between any two builds)."""
    import dagster as dg

    event = instance.get_latest_materialization_event(dg.AssetKey("dataset_release"))
    return event.asset_materialization.metadata["release_content_hash"].value


def _partitions_of(manifest: Path) -> set[tuple[str, Optional[str]]]:
    """Every materializable asset partition of a manifest's graph."""
    from gmates_assets.core.manifest import load_manifest
    from gmates_assets.defs.factory import graph_for

    graph = graph_for(load_manifest(manifest))
    return {(name, key) for name, decl in graph.decls.items() if decl.compute is not None
            for key in graph.partition_keys(name)}


def _other_pool_manifest(folder: Path) -> Path:
    """cluster_ci.yaml with another pool under the same shard names, beside it."""
    data = yaml.safe_load((folder / "cluster_ci.yaml").read_text())
    data["sources"]["shards"] = [{"name": f"s{i}", "format": "jsonl", "paths": [f"t{i}.jsonl"]} for i in range(2)]
    for i in range(2):
        (folder / f"t{i}.jsonl").write_text(_jsonl_shard(i + 7))
    (folder / "other.yaml").write_text(yaml.safe_dump(data))
    return folder / "other.yaml"


def _in_process_build(folder: Path, env: dict[str, str]):
    """`gmates sync` of the cluster manifest with launcher: in_process, in its own home and store (the
    reference the cluster's release must equal); started now, waited for at the end."""
    import subprocess

    folder.mkdir()
    data = yaml.safe_load((CLUSTER_MANIFEST).read_text())
    data["execution"] = {"launcher": "in_process"}
    (folder / "cluster_ci.yaml").write_text(yaml.safe_dump(data))
    for i in range(2):
        (folder / f"s{i}.jsonl").write_text(_jsonl_shard(i, edited=i == 1))  # the state after the edit
    own = {**env, "DAGSTER_HOME": str(folder / "dagster_home"), "GMATES_HOME": str(folder / "store"),
           "GMATES_MANIFEST": str(folder / "cluster_ci.yaml")}
    return subprocess.Popen(SYNC, env=own, cwd=folder, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=open(folder / "sync.log", "w"))


@pytest.mark.system
@pytest.mark.slow
def test_whole_graph_through_postgres_daemon_and_celery_workers(tmp_path, postgres_server, redis_url, monkeypatch):
    """docs/deployment.md, "Cluster mode on one machine (what the CI test runs)": this test reads its files and
    commands from that section. Postgres storage, the queued coordinator and `dagster-daemon`, every step a
    Celery task on one of two workers; the whole `cluster_ci` graph, then a one-shard edit: each partition is
    materialized once per sync where it has to be, and the release equals an in-process build's."""
    import subprocess
    import time

    import dagster as dg

    if redis_url is None:
        pytest.skip("no redis-server (Debian's redis-server package) or no dagster-celery")
    started_at = time.monotonic()
    files, doc_env, background, _ = _doc_cluster_steps()
    folder = tmp_path / "cluster"
    manifest = _cluster_folder(folder, files, redis_url)
    bin_dir = Path(sys.executable).parent
    base_env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                "OMP_NUM_THREADS": "1", "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    env = {**base_env, **{name: value.replace("$PWD", str(folder)) for name, value in doc_env.items()},
           "DAGSTER_PG_PORT": str(postgres_server["port"])}  # this test's Postgres, on a free port
    for name in ("DAGSTER_PG_HOST", "DAGSTER_PG_PORT", "DAGSTER_PG_USER", "DAGSTER_PG_PASSWORD"):
        monkeypatch.setenv(name, env[name])  # this process reads the instance too
    logs: list[Path] = []
    laps, lap_from = [], [started_at]

    def lap(name: str) -> None:  # where the test's time goes (printed at the end)
        now = time.monotonic()
        laps.append(f"{name} {now - lap_from[0]:.0f} s")
        lap_from[0] = now

    def start(words: list[str]):
        log = folder / f"{words[0]}-{len(logs)}.log"
        logs.append(log)
        return subprocess.Popen(words, env=env, cwd=folder, start_new_session=True, stdout=subprocess.DEVNULL,
                                stderr=open(log, "w"))

    def tails() -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text()[-2500:]}" for log in logs)

    def succeeds(words: list[str], *extra: str, timeout: float = 900) -> str:
        command = words + list(extra)
        with subprocess.Popen(command, env=env, cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, start_new_session=True) as process:
            try:
                out, err = process.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                _stop_group(process)  # with its code server
                raise AssertionError(f"{' '.join(command)} ran over {timeout} s\n{tails()}") from None
        assert process.returncode == 0, f"{' '.join(command)}\n{out[-3000:]}\n{err[-3000:]}\n{tails()}"
        return out

    processes = [_in_process_build(tmp_path / "in_process", base_env)]
    try:
        processes += [start(words) for words in background]  # the daemon, then the two Celery workers
        with dg.DagsterInstance.from_config(str(folder / "dagster_home")) as instance:
            deadline = time.monotonic() + 120
            while not instance.get_daemon_statuses(["QUEUED_RUN_COORDINATOR"])["QUEUED_RUN_COORDINATOR"].healthy:
                assert time.monotonic() < deadline, tails()
                time.sleep(1)
            lap("daemon up")

            def sync_runs(after: frozenset = frozenset()) -> list:
                return [r for r in instance.get_runs()
                        if r.tags.get("gmates/launched_by") == "gmates sync" and r.run_id not in after]

            # 1. the whole graph: every partition materialized exactly once, by the sync's runs
            sync_spans = [time.time()]
            outputs = [succeeds(SYNC)]
            first_waves = _waves(outputs[-1])
            sync_spans.append(time.time())
            lap("sync 1")
            first = sync_runs()
            first_counts = _materialized(instance, [r.run_id for r in first])
            every = _partitions_of(manifest)
            assert first_counts == {item: 1 for item in every}, _twice(instance, first, first_counts, outputs[-1])
            assert sorted(map(str, (item for wave in first_waves for item in wave))) == sorted(map(str, every))
            assert len(first) == _runs_for(first_waves), (len(first), first_waves)  # one run per partition key and wave

            # 2. edit one shard's file: the plan, then a sync that materializes what the edit reaches, once each
            (folder / "s1.jsonl").write_text(_jsonl_shard(1, edited=True))
            plan = {(s["asset"], s["partition"]) for s in json.loads(succeeds(PLAN, "--json"))}
            lap("plan")
            sync_spans.append(time.time())
            outputs.append(succeeds(SYNC))
            second_waves = _waves(outputs[-1])
            sync_spans.append(time.time())
            lap("sync 2")
            second = sync_runs(frozenset(r.run_id for r in first))
            second_counts = _materialized(instance, [r.run_id for r in second])
            assert set(second_counts.values()) == {1}, _twice(instance, second, second_counts, outputs[-1])
            # the instance's event log orders an asset's index entry (gmates_assets/postgres_event_log.py): no repair
            assert not [o for o in outputs
                        if "warning: this instance's event log" in o or "(two runs at once); repaired" in o], outputs
            assert set(second_counts) == {item for wave in second_waves for item in wave}
            assert len(second) == _runs_for(second_waves), (len(second), second_waves)
            assert ("documents", "s1") in second_counts and ("documents", "s0") not in second_counts
            assert set(second_counts) <= plan, set(second_counts) - plan
            assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in first + second)
            assert not [r for r in instance.get_runs() if r.tags.get("dagster/sensor_name")]  # none raced the syncs
            statuses = json.loads(succeeds(STATUS, "--json"))
            assert {s["status"] for s in statuses} == {"fresh"}, [s for s in statuses if s["status"] != "fresh"]
            succeeds(VERIFY)
            lap("status and verify")
            cluster_release = _release_hash(instance)
            phases = _run_phases(instance, first + second)
            own = [_sync_own_time(instance, runs, *sync_spans[2 * i:2 * i + 2]) for i, runs in enumerate([first, second])]

            # 3. a sync naming a manifest the daemon's code location did not load fails fast, naming both
            other = _other_pool_manifest(folder)
            with subprocess.Popen(SYNC[:3] + [other.name, "--select", "documents"], env=env, cwd=folder, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True) as sync:
                started = time.monotonic()
                try:
                    _, err = sync.communicate(timeout=150)
                except subprocess.TimeoutExpired:
                    _stop_group(sync)
                    raise AssertionError(f"a sync of {other.name} ran wave after wave\n{tails()}") from None
            assert sync.returncode == 2 and "ManifestMismatch" in err and other.name in err, err[-3000:]
            assert time.monotonic() - started < 120  # one failed wave, not wave after wave
            lap("other manifest")
        worker_logs = [log.read_text() for log in logs if log.name.startswith("dagster-celery")]
        assert len(worker_logs) == 2 and all("succeeded in" in text for text in worker_logs), tails()

        # the same manifest and shards built in process, in another home and store: the same release
        reference = processes[0]
        assert reference.wait(timeout=600) == 0, (tmp_path / "in_process" / "sync.log").read_text()[-3000:]
        lap("in-process reference")
        cpu = {log.stem: _tree_cpu_seconds(process.pid) for log, process in zip(logs, processes[1:])}
        cpu["postgres"] = _tree_cpu_seconds(int(postgres_server["pid_file"].read_text().split()[0]))
    finally:
        for process in reversed(processes):
            _stop_group(process)
    lap("stop")
    local = tmp_path / "in_process" / "dagster_home"
    with dg.DagsterInstance.from_config(str(local)) as instance:
        assert _release_hash(instance) == cluster_release
    print(f"\ncluster_ci: {len(every)} partitions; sync 1: {len(first_waves)} waves, {len(first)} runs, "
          f"{sum(first_counts.values())} materializations; sync 2: {len(second_waves)} waves, {len(second)} runs, "
          f"{len(second_counts)} materializations (plan {len(plan)}); {time.monotonic() - started_at:.0f} s ({'; '.join(laps)}); {phases}; the syncs' own time: "
          f"{'; '.join(own)}; CPU s of the servers "
          f"(alive at the end): {', '.join(f'{name} {seconds:.0f}' for name, seconds in cpu.items())}")
