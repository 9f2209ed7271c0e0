"""`gmates_sync`: the UI's one button. A job whose single op does what `gmates sync` does.

It observes the sources, then builds the stale or missing partitions wave by wave (sync.py) until `gmates status`
would say fresh. Each wave's runs are created through the code location and submitted through the instance's
coordinator and launcher (launch.InstanceRuns), so they show in the run list with their partitions, whatever
the manifest's `execution.launcher`; the job's own run logs every wave and run and fails, naming the failing
step, when one of them fails. It refuses at once when the manifest on disk is not the one the loaded
Definitions were built from ("Reload definitions" first).

Coexistence. The job's run carries `gmates/sync_job: 1`, each run it submits `gmates/parent_sync: <its run id>`.
Before its first wave the job waits for the runs already in flight that build gmates assets (the automation
sensor's, a UI "Materialize", an earlier `gmates_sync`), so it never starts a second run for a partition they
are building; a second launch thus waits for the first and then finds everything fresh. While a `gmates/sync_job`
run (or any asset run) is in flight the automation sensor skips its ticks (automation.work_in_flight), so the job
does not refuse when the sensor is on (it is on by default under `gmates ui`), unlike `gmates sync` with
`launcher: instance` (InstanceRuns.check_no_sensor_race), whose gaps between waves have nothing in flight. A
sensor tick that was already evaluating when the job started can still submit a run for a partition the job
builds too: the job waits for it (wait_for_runs_ahead), and the store's build lock makes a second build of a
partition reuse the first's artifact.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Optional

import dagster as dg

from .launch import ASSET_JOB, POLL_SECONDS, InstanceRuns, _describe
from .resources import GmatesResource, changed_since_load

JOB_NAME = "gmates_sync"
SYNC_JOB_TAG = "gmates/sync_job"  # "1" on the job's own run
PARENT_TAG = "gmates/parent_sync"  # on each run the job submits: the job's run id
LAUNCHED_BY_TAG = "gmates/launched_by"
DESCRIPTION_HINT = f"To rebuild everything stale, launch the {JOB_NAME} job (Jobs > {JOB_NAME} > Launchpad)."
IN_FLIGHT = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]
JUST_CREATED_SECONDS = 60.0  # a gmates_sync run NOT_STARTED for less is still being launched (older: abandoned)
WAIT_LOG_SECONDS = 30.0


def with_sync_hint(description: str) -> str:
    """An asset's description with the pointer to the sync job (same paragraph: the UI shows it as one)."""
    return f"{description.rstrip()} {DESCRIPTION_HINT}"


class JobRuns(InstanceRuns):
    """InstanceRuns for the job: runs tagged with the job's run id and logged to its run; the code location is
    loaded only when a wave has runs (a sync of a fresh build starts no code server)."""

    def __init__(self, context: dg.OpExecutionContext, manifest_path: str, store_root: str, execution):
        super().__init__(context.instance, manifest_path, store_root, execution.max_concurrent, execution.gpus)
        self.context = context
        self.opened = False

    def __enter__(self) -> JobRuns:
        return self

    def check_no_sensor_race(self) -> None:
        """The sensor skips while this job's run is in flight (module docstring): nothing to refuse."""

    def run_all(self, groups, log: Callable[[str], None], failures: Optional[list] = None) -> list[str]:
        if not self.opened:
            super().__enter__()
            self.opened = True
        return super().run_all(groups, log, failures)

    def _create_run(self, partition: Optional[str], assets: Sequence[str]):
        run = super()._create_run(partition, assets)
        self.instance.add_run_tags(run.run_id, {LAUNCHED_BY_TAG: f"{JOB_NAME} job",
                                                PARENT_TAG: self.context.run_id})
        self.context.log.info(f"run {run.run_id}: {_describe(partition, assets)}")
        return run


def _runs_ahead(instance: dg.DagsterInstance, run_id: str) -> list:
    """Runs in flight this job must let finish first: asset runs that are not its own, and `gmates_sync` runs
    created before it (a later one waits for this one instead, so two never wait for each other)."""
    mine = instance.get_run_record_by_id(run_id)
    order = (mine.create_timestamp, run_id) if mine is not None else None
    ahead = []
    for record in instance.get_run_records(dg.RunsFilter(statuses=[*IN_FLIGHT, dg.DagsterRunStatus.NOT_STARTED])):
        run = record.dagster_run
        if run.run_id == run_id or run.tags.get(PARENT_TAG) == run_id:
            continue
        if run.tags.get(SYNC_JOB_TAG):
            if order is not None and (record.create_timestamp, run.run_id) < order and _live(record):
                ahead.append(run)
        elif run.job_name == ASSET_JOB and run.status != dg.DagsterRunStatus.NOT_STARTED:
            ahead.append(run)
    return ahead


def _live(record) -> bool:
    """In flight, or created moments ago and being launched (a launch from the UI is NOT_STARTED briefly)."""
    if record.dagster_run.status != dg.DagsterRunStatus.NOT_STARTED:
        return True
    return time.time() - record.create_timestamp.timestamp() < JUST_CREATED_SECONDS


def _run_text(run) -> str:
    if run.tags.get(SYNC_JOB_TAG):
        return f"{run.run_id} ({JOB_NAME}, launched earlier)"
    assets = [k.to_user_string() for k in run.asset_selection or ()] or ["all assets"]
    return f"{run.run_id} ({_describe(run.tags.get('dagster/partition'), assets)})"


def wait_for_runs_ahead(context: dg.OpExecutionContext) -> None:
    """Block until no run this job must not race is in flight, saying which ones it waits for."""
    said, last_said = None, 0.0
    while ahead := _runs_ahead(context.instance, context.run_id):
        ids = sorted(r.run_id for r in ahead)
        if ids != said or time.monotonic() - last_said > WAIT_LOG_SECONDS:
            context.log.info(f"waiting for {len(ahead)} run(s) in flight to finish before syncing: "
                             + ", ".join(_run_text(r) for r in ahead))
            said, last_said = ids, time.monotonic()
        time.sleep(POLL_SECONDS)


def _waves_markdown(report) -> str:
    rows = [f"| {i} | {', '.join(f'{a}[{p}]' if p else a for a, p in wave)} |"
            for i, wave in enumerate(report.waves, 1)]
    return "\n".join(["| wave | partitions |", "| --- | --- |", *rows]) if rows else "nothing was stale"


def refuse_if_manifest_changed(gmates: GmatesResource) -> None:
    """Fail the run at once when the manifest on disk is not the one the loaded Definitions were built from: their
    code versions describe the old one, and the runs would be refused at their first step anyway."""
    changed = changed_since_load(gmates.manifest_path, gmates.manifest_fingerprint)
    if changed:
        raise dg.Failure(description=f"{JOB_NAME} refused, nothing was launched: {changed}")


@dg.op(name="sync_stale_partitions", out=dg.Out(dg.Nothing),
       description="Observe the sources, then build the stale or missing asset partitions wave by wave, each "
                   "run submitted through the instance, until `gmates status` is fresh.")
def sync_stale_partitions(context, gmates: GmatesResource):
    from . import build_definitions
    from .orphans import fail_orphaned_runs
    from .sync import sync

    refuse_if_manifest_changed(gmates)
    fail_orphaned_runs(context.instance, context.log.info)  # a dead sync's STARTED runs would be waited for
    wait_for_runs_ahead(context)
    refuse_if_manifest_changed(gmates)  # edited during the wait: still not what the loaded Definitions describe
    defs = build_definitions(gmates.manifest_path, home=gmates.home)  # the same manifest: the guard passed
    execution = gmates.manifest().manifest.execution
    with JobRuns(context, gmates.manifest_path, str(gmates.store().root), execution) as runs:
        try:
            report = sync(defs, context.instance, log=context.log.info, runs=runs)
        except Exception as err:
            raise dg.Failure(description=f"{JOB_NAME} failed: {err}") from err
    context.log.info(f"fresh: {len(report.fresh)} asset partitions, {len(report.waves)} wave(s), "
                     f"{len(report.runs)} run(s)")
    yield dg.Output(None, metadata={
        "waves": dg.MetadataValue.md(_waves_markdown(report)),
        "runs": dg.MetadataValue.json(report.runs),
        "fresh_partitions": len(report.fresh),
    })


def gmates_sync_job() -> dg.JobDefinition:
    @dg.job(name=JOB_NAME, tags={SYNC_JOB_TAG: "1"}, executor_def=dg.in_process_executor,
            description="Rebuild everything stale, like `gmates sync`: each wave's runs show in the run list "
                        "with their partitions (tag gmates/parent_sync = this run's id); ends when every asset "
                        "partition is fresh. Safe to launch twice: a second launch waits for the first.")
    def gmates_sync():
        sync_stale_partitions()

    return gmates_sync
