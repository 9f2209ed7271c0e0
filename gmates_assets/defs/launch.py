"""How `sync` gets a wave's runs executed: in this process, or through the Dagster instance.

`InProcessRuns` executes each run here, one after another (`execute_in_process`): no process start-up, the
default for a laptop and for tests. `InstanceRuns` creates each run and hands it to the instance's run
coordinator and launcher, exactly like a launch from the UI: `dagster.yaml` decides where it runs (local
subprocesses with the default launcher, Kubernetes jobs with dagster-k8s' `K8sRunLauncher`, Docker, Celery),
and inside a run the Definitions' executor decides how its steps run. Up to `max_concurrent` runs are in
flight; runs that need a GPU get one of `execution.gpus` round robin through the run tag `gmates/gpu`.
`WarmRuns` launches them through a `WarmRunLauncher` (gmates_assets/warm.py) that this sync holds:
`max_concurrent` worker processes that pay Python, Dagster, torch and the encoder once for the whole sync.
"""
from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from itertools import cycle
from pathlib import Path
from typing import Optional

import dagster as dg

from .automation import SENSOR_NAME, sensor_interval
from .orphans import process_tags
from .run_manifest import manifest_tags
from .runtime import GPU_TAG
from .uptodate import checks_for_run

CODE_LOCATION = "gmates"
CODE_MODULE = "gmates_assets.code_location"
ASSET_JOB = "__ASSET_JOB"
POLL_SECONDS = 0.5
# Runs log through the Definitions' console logger (defs/console.py); Dagster uses a job's loggers only when
# the run config names them.
RUN_CONFIG = {"loggers": {"console": {}}}

RunGroup = tuple[Optional[str], list[str]]  # (partition key or None, asset names)


class RunFailed(RuntimeError):
    pass


class SensorRace(RuntimeError):
    pass


def automation_sensor_activity(instance: dg.DagsterInstance) -> Optional[str]:
    """Why the gmates automation sensor counts as on for this instance (None when it is off): turned on
    (in the UI or `dagster sensor start`), or on by default in some code location and ticked lately."""
    from dagster._core.scheduler.instigation import InstigatorStatus, InstigatorType  # private, pinned dagster

    recent = max(120.0, 4.0 * sensor_interval())
    for state in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR):
        if state.name != SENSOR_NAME:
            continue
        if state.status == InstigatorStatus.RUNNING:
            return "it is turned on"
        if state.status == InstigatorStatus.DECLARED_IN_CODE:
            ticks = instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=1)
            if ticks and time.time() - ticks[0].timestamp < recent:
                return f"it is on by default in a code location and ticked {time.time() - ticks[0].timestamp:.0f} s ago"
    return None


def _describe(partition: Optional[str], assets: Sequence[str]) -> str:
    return ", ".join(f"{a}[{partition}]" if partition else a for a in assets)


class InProcessRuns:
    """One run after another in this process."""

    def __init__(self, defs: dg.Definitions, instance: dg.DagsterInstance,
                 after_run: Callable[[], None] = lambda: None):
        self.job = defs.resolve_implicit_global_asset_job_def()
        self.graph = defs.resolve_asset_graph()
        self.instance = instance
        self.after_run = after_run  # e.g. InterruptWatch.check: stop after a run that an interrupt reached

    def __enter__(self) -> InProcessRuns:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def run_all(self, groups: Sequence[RunGroup], log: Callable[[str], None],
                failures: Optional[list] = None) -> list[str]:
        """Run ids of the successful runs; with `failures`, a failed run is added there as (group, error)
        and the other runs go on (without it, the first failure raises)."""
        run_ids = []
        for partition, assets in groups:
            keys = {dg.AssetKey(a) for a in assets}
            try:
                result = execute_in_process(self.job, self.instance, keys, checks_for_run(self.graph, keys), partition)
            except Exception as err:
                if failures is None:
                    raise
                failures.append(((partition, assets), err))
                self.after_run()
                continue
            run_ids.append(result.run_id)
            self.after_run()
        return run_ids


def execute_in_process(job: dg.JobDefinition, instance: dg.DagsterInstance, keys: set[dg.AssetKey],
                       checks: set[dg.AssetCheckKey], partition: Optional[str]):
    """`job.execute_in_process(asset_selection=keys, partition_key=partition)` with only the asset checks `checks`
    (public execute_in_process runs every check of the selected assets, up_to_date included; the run records
    `keys` as its asset selection, so the run list shows what it built)."""
    from dagster._core.definitions.job_base import InMemoryJob  # private, pinned dagster
    from dagster._core.execution.execute_in_process import core_execute_in_process, merge_run_tags  # private

    subset = job.get_subset(asset_selection=keys, asset_check_selection=checks)
    return core_execute_in_process(
        run_config=RUN_CONFIG, job=InMemoryJob(subset.as_ephemeral_job(resource_defs={}, input_values={})),
        instance=instance, output_capturing_enabled=True, raise_on_error=True,
        run_tags=merge_run_tags(subset, partition, process_tags(), list(keys), instance, RUN_CONFIG),
        asset_selection=frozenset(keys))


class InstanceRuns:
    """Runs submitted through the instance's run coordinator and launcher, at most `max_concurrent` in flight.

    The code location is `gmates_assets.code_location`, loaded in a code server that inherits this process's
    environment ($GMATES_MANIFEST, $GMATES_HOME), so launched runs build the same manifest into the same store.
    """

    def __init__(self, instance: dg.DagsterInstance, manifest_path: str, store_root: str, max_concurrent: int,
                 gpus: Sequence[int] = ()):
        self.instance = instance
        self.manifest_path, self.store_root = manifest_path, store_root
        self.manifest_tags = manifest_tags(manifest_path, Path(manifest_path).read_text(encoding="utf-8")) \
            if Path(manifest_path).is_file() else {}
        self.max_concurrent = max(1, int(max_concurrent))
        self.gpus = cycle(list(gpus)) if gpus else None
        self._stack = ExitStack()
        self._plans: dict = {}  # asset selection -> (remote job, execution plan snapshot): same for every partition

    def __enter__(self) -> InstanceRuns:
        from dagster._core.workspace.context import WorkspaceProcessContext  # private, pinned dagster
        from dagster._core.workspace.load_target import ModuleTarget  # private, pinned dagster

        os.environ["GMATES_MANIFEST"] = self.manifest_path
        os.environ["GMATES_HOME"] = self.store_root
        self._share_cores()
        target = ModuleTarget(module_name=CODE_MODULE, attribute="defs", working_directory=os.getcwd(),
                              location_name=CODE_LOCATION)
        process = self._stack.enter_context(WorkspaceProcessContext(self.instance, target))
        self.workspace = process.create_request_context()
        errors = self.workspace.get_code_location_error(CODE_LOCATION)
        if errors:
            raise RuntimeError(f"the gmates code location failed to load: {errors.message}")
        self.location = self.workspace.get_code_location(CODE_LOCATION)
        self.repository = next(iter(self.location.get_repositories().values()))
        self.queue_serviced = self._queue_serviced()
        self.check_no_sensor_race()
        return self

    def check_no_sensor_race(self) -> None:
        """One partition, one run: while this sync submits runs, the daemon must not start the automation
        sensor's runs for the same partitions (it would, between the sync's status check and its submit)."""
        why = automation_sensor_activity(self.instance)
        if why is not None:
            raise SensorRace(
                f"the {SENSOR_NAME} sensor is active on this Dagster instance ({why}); its runs would race this "
                f"sync's (two runs for one partition). Stop it first (UI: Automation > {SENSOR_NAME} > off, or "
                f"`dagster sensor stop {SENSOR_NAME} -w workspace.yaml`), or let the sensor build instead of sync")

    def _share_cores(self) -> None:
        """Runs that the default launcher starts on this host split its cores: torch and OpenMP would otherwise
        give each of `max_concurrent` runs every core (measured: 2 runs on 2 cores took 4x the compute). The
        launched processes inherit this environment through the code server; a value the user set is kept, and
        launchers that start pods or containers are not affected."""
        from dagster._core.launcher import DefaultRunLauncher

        if isinstance(self.instance.run_launcher, DefaultRunLauncher) and "OMP_NUM_THREADS" not in os.environ:
            threads = max(1, (os.cpu_count() or 1) // self.max_concurrent)
            os.environ["OMP_NUM_THREADS"] = str(threads)
            self._stack.callback(os.environ.pop, "OMP_NUM_THREADS", None)

    def _queue_serviced(self) -> bool:
        """Does a daemon dequeue submitted runs? With the (default) QueuedRunCoordinator and no daemon running,
        a submitted run would wait forever, so runs are then handed to the instance's launcher directly."""
        from dagster._core.run_coordinator import QueuedRunCoordinator

        if not isinstance(self.instance.run_coordinator, QueuedRunCoordinator):
            return True
        status = self.instance.get_daemon_statuses(["QUEUED_RUN_COORDINATOR"]).get("QUEUED_RUN_COORDINATOR")
        return bool(status and status.healthy)

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def _launch(self, run_id: str) -> None:
        self.instance.launch_run(run_id, self.workspace)

    def _job_and_plan(self, keys: frozenset, checks: frozenset):
        """The subset job and its execution plan for these assets and checks; they do not depend on the
        partition."""
        from dagster._core.definitions.selector import JobSubsetSelector  # private, pinned dagster

        if (keys, checks) not in self._plans:
            selector = JobSubsetSelector(location_name=CODE_LOCATION, repository_name=self.repository.name,
                                         job_name=ASSET_JOB, op_selection=None, asset_selection=keys,
                                         asset_check_selection=checks)
            remote_job = self.location.get_job(selector)
            plan = self.location.get_execution_plan(remote_job, RUN_CONFIG, step_keys_to_execute=None,
                                                    known_state=None, instance=self.instance)
            self._plans[(keys, checks)] = (remote_job, plan)
        return self._plans[(keys, checks)]

    def _create_run(self, partition: Optional[str], assets: Sequence[str]):
        keys = frozenset(dg.AssetKey(a) for a in assets)
        checks = frozenset(checks_for_run(self.repository.asset_graph, keys))  # not up_to_date (uptodate.py)
        remote_job, plan = self._job_and_plan(keys, checks)
        tags = {"gmates/launched_by": "gmates sync", **self.manifest_tags, **self._run_tags()}
        if partition is not None:
            tags["dagster/partition"] = partition
        if self.gpus is not None:
            tags[GPU_TAG] = str(next(self.gpus))
        return self.instance.create_run(
            job_name=ASSET_JOB, run_id=None, run_config=RUN_CONFIG, resolved_op_selection=None,
            step_keys_to_execute=plan.execution_plan_snapshot.step_keys_to_execute, op_selection=None,
            status=None, root_run_id=None, parent_run_id=None, tags=tags, job_snapshot=remote_job.job_snapshot,
            execution_plan_snapshot=plan.execution_plan_snapshot,
            parent_job_snapshot=remote_job.parent_job_snapshot, remote_job_origin=remote_job.get_remote_origin(),
            job_code_origin=remote_job.get_python_origin(), asset_selection=keys, asset_check_selection=checks,
            asset_graph=self.repository.asset_graph)

    def run_all(self, groups: Sequence[RunGroup], log: Callable[[str], None],
                failures: Optional[list] = None) -> list[str]:
        """As InProcessRuns.run_all, `max_concurrent` runs in flight."""
        self.check_no_sensor_race()  # also when someone turned it on during the sync
        pending, in_flight, done = list(groups), {}, []
        while pending or in_flight:
            while pending and len(in_flight) < self._capacity():
                partition, assets = pending.pop(0)
                run = self._create_run(partition, assets)
                if self.queue_serviced:
                    self.instance.submit_run(run.run_id, self.workspace)
                else:
                    self._launch(run.run_id)
                in_flight[run.run_id] = (partition, assets)
            self._wait_for_progress()
            for run_id in list(in_flight):
                run = self.instance.get_run_by_id(run_id)
                if run is None or not run.is_finished:
                    continue
                partition, assets = in_flight.pop(run_id)
                try:
                    self.check_finished(run, partition, assets)
                except RunFailed as failed:
                    if failures is None:
                        raise
                    failures.append(((partition, assets), failed))
                    continue
                done.append(run_id)
        return done

    def _wait_for_progress(self) -> None:
        time.sleep(POLL_SECONDS)

    def _run_tags(self) -> dict[str, str]:
        return {}  # launched runs are Dagster's run monitoring's to fail, not orphans.py's

    def _capacity(self) -> int:
        return self.max_concurrent

    def check_finished(self, run, partition: Optional[str], assets: Sequence[str]) -> None:
        """Raise RunFailed for a run that did not succeed, naming its failing step and the error's last line."""
        if run.status == dg.DagsterRunStatus.SUCCESS:
            return
        raise RunFailed(f"run {run.run_id} ({_describe(partition, assets)}) ended {run.status.value}: "
                        f"{failure_summary(self.instance, run.run_id)}; its full logs are in the UI "
                        f"(gmates ui, or dagster-webserver on this instance) under Runs > {run.run_id}")


class WarmRuns(InstanceRuns):
    """InstanceRuns whose runs execute in `max_concurrent` warm worker processes this sync starts and stops
    (gmates_assets/warm.py's WarmRunLauncher, as dagster.yaml would configure it). The runs are created from
    the Definitions loaded in this process (an in-process code location: no code server), launched through
    `instance.launch_run`, and recorded like any launched run. The workers start before the first wave is
    planned and end with the sync, Ctrl-C included."""

    def __enter__(self) -> WarmRuns:
        from dagster._core.remote_origin import InProcessCodeLocationOrigin  # private, pinned dagster
        from dagster._core.remote_representation.code_location import InProcessCodeLocation  # private, pinned
        from dagster._core.types.loadable_target_origin import LoadableTargetOrigin  # private, pinned dagster
        from dagster._serdes import ConfigurableClassData

        os.environ["GMATES_MANIFEST"] = self.manifest_path
        os.environ["GMATES_HOME"] = self.store_root
        launcher = ConfigurableClassData("gmates_assets.warm", "WarmRunLauncher", f"workers: {self.max_concurrent}\n")
        self.launch_instance = self._stack.enter_context(
            dg.DagsterInstance.from_ref(self.instance.get_ref()._replace(run_launcher_data=launcher)))
        self.launcher = self.launch_instance.run_launcher
        self.launcher.start()  # the workers warm up while the sync observes sources and plans
        _code_location_for(self.manifest_path)
        origin = InProcessCodeLocationOrigin(
            LoadableTargetOrigin(executable_path=sys.executable, module_name=CODE_MODULE, attribute="defs",
                                 working_directory=os.getcwd()), location_name=CODE_LOCATION)
        self.location = self._stack.enter_context(InProcessCodeLocation(origin, instance=self.instance))
        self.workspace = None
        self.repository = next(iter(self.location.get_repositories().values()))
        self.queue_serviced = False  # this sync's launcher executes them, whatever the instance's coordinator
        self.check_no_sensor_race()
        return self

    def _run_tags(self) -> dict[str, str]:
        """This sync's process (orphans.py): its workers end with it (their watchdog), so a run whose sync is
        gone without marking it is an orphan, which the next sync fails."""
        return process_tags()

    def _launch(self, run_id: str) -> None:
        self.launch_instance.launch_run(run_id, self.workspace)

    def _wait_for_progress(self) -> None:
        self.launcher.wait_for_change(POLL_SECONDS)

    def _capacity(self) -> int:
        """Runs are created as workers become warm, so none waits for a worker's start inside its run."""
        return min(self.max_concurrent, self.launcher.warm_workers)


def _code_location_for(manifest_path: str) -> None:
    """Make `gmates_assets.code_location`, if this process imported it already, hold the Definitions of this
    manifest as it is now (an in-process code location imports it once per process; a test or benchmark may
    sync several manifests, or an edited one, in one process)."""
    import importlib

    from .resources import changed_since_load

    module = sys.modules.get(CODE_MODULE)
    if module is None:
        return
    gm = (module.defs.resources or {}).get("gmates")
    if gm is None or gm.manifest_path != str(Path(manifest_path).resolve()) \
            or changed_since_load(gm.manifest_path, gm.manifest_fingerprint):
        importlib.reload(module)


def _error_line(error) -> str:
    """`Type: message` of the innermost cause (the user's exception), on one line: a traceback's last line."""
    while error.cause is not None:
        error = error.cause
    message = " ".join(line.strip() for line in error.message.strip().splitlines() if line.strip())
    head, sep, rest = message.partition(": ")
    if sep and error.cls_name and head.split(".")[-1] == error.cls_name:  # "pkg.mod.Cls: ..." (traceback form)
        message = rest
    return f"{error.cls_name}: {message}" if error.cls_name else message


def failure_summary(instance: dg.DagsterInstance, run_id: str) -> str:
    """What failed in a run: each failed step and its error, else the run's own failure (e.g. a launcher or
    worker that died before any step ran)."""
    failed_steps = instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
    lines = [f"step {e.dagster_event.step_key} failed: {_error_line(e.dagster_event.event_specific_data.error)}"
             for e in failed_steps if e.dagster_event.event_specific_data.error is not None]
    if lines:
        return "; ".join(lines)
    for event in reversed(instance.all_logs(run_id, of_type={dg.DagsterEventType.RUN_FAILURE,
                                                              dg.DagsterEventType.ENGINE_EVENT})):
        error = getattr(event.dagster_event.event_specific_data, "error", None)
        if error is not None:
            return _error_line(error)
        if event.dagster_event.event_type == dg.DagsterEventType.RUN_FAILURE and event.message:
            return event.message.strip().splitlines()[-1]
    return "no step failed (the run was canceled or its worker stopped)"
