"""The `gmates_automation` sensor: `gmates sync`, one wave per tick, from whatever state the instance is in.

Each tick computes what `gmates status` computes (sync.asset_statuses; the sources are observed first when
their files changed, as `sync` does) and requests the next wave of the sync: one run per partition key, with
the same partition key and asset selection as sync's runs (sync._ready, sync._run_groups), tagged
`gmates/automation=1`. It judges the instance, not what it saw at earlier ticks, so it converges from any state:
a UI started after an edit made while it was down, or what "Materialize all", "Materialize unsynced" or a
backfill left half done. Every tick ends with a one-line reason: "3 partitions stale: selected_subset[mates],
...", "waiting for 2 runs in flight: ...", "fresh: 37 asset partitions", or "manifest changed on disk: Reload
definitions (...)".

Never two runs for one partition: while any asset run, `gmates_sync` job run or backfill is in flight (a
button's, the sensor's own previous wave, a `gmates sync` on this instance) the tick requests nothing. The
next tick after they end sees their results. A wave whose run failed is not retried by the sensor until the
definitions are reloaded (what depends on it is held back; the reason names the run); `gmates_sync` retries
at once.

Each tick also refreshes the `up_to_date` asset checks (uptodate.py) where a verdict changed.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Optional

import dagster as dg

from .uptodate import MANIFEST_CHANGED, changed_verdicts, checks_for_run, new_evaluations, verdicts

__all__ = ["MANIFEST_CHANGED", "SENSOR_NAME", "SENSOR_TAG", "automation_sensor", "plan_tick"]

SENSOR_NAME = "gmates_automation"
SENSOR_TAG = "gmates/automation"  # "1" on every run the sensor requests
INTERVAL_ENV = "GMATES_AUTOMATION_INTERVAL_S"
JUST_CREATED_SECONDS = 60.0  # a run NOT_STARTED for less is still being launched (older: abandoned)
NAMED = 6  # partitions or runs named in a reason

Item = tuple[str, Optional[str]]  # (asset, partition or None)
RunGroup = tuple[Optional[str], list[str]]


def sensor_interval() -> int:
    """Seconds between evaluations of the automation sensor; $GMATES_AUTOMATION_INTERVAL_S overrides 15."""
    return int(os.environ.get(INTERVAL_ENV, "15"))


def sensor_default_status(launcher: str) -> dg.DefaultSensorStatus:
    """On for `launcher: in_process` (`gmates ui`: the sensor rebuilds what is stale); off for `launcher:
    instance` or `warm`, where `gmates sync` launches the runs itself (and refuses while the sensor is on,
    launch.py)."""
    return dg.DefaultSensorStatus.STOPPED if launcher in ("instance", "warm") else dg.DefaultSensorStatus.RUNNING


# ------------------------------------------------------------------------------------------ the planning core
@dataclass(frozen=True)
class TickPlan:
    reason: str  # one line: what the tick shows
    runs: list[RunGroup] = field(default_factory=list)  # (partition key, assets): one run each; [] = skip


def _where(item: Item) -> str:
    asset, partition = item
    return f"{asset}[{partition}]" if partition else asset


def _named(texts: Sequence[str]) -> str:
    return ", ".join(texts[:NAMED]) + (" ..." if len(texts) > NAMED else "")


def plan_tick(statuses: Sequence, graph, busy: Sequence[str] = (), changed: Optional[str] = None,
              failed: Optional[dict[Item, str]] = None) -> TickPlan:
    """What one tick does, from `gmates status`'s rows (`statuses`, topological order) and the Dagster asset
    `graph`: `changed` (the manifest on disk differs from the loaded one) launches nothing; runs or backfills
    in flight (`busy`, described) are waited for; otherwise the next wave of the stale or missing partitions,
    leaving out what depends on a partition whose sensor run failed (`failed`: item -> run)."""
    from .sync import FRESH, _descendants, _ready, _run_groups

    if changed:
        return TickPlan(f"{MANIFEST_CHANGED} ({changed})")
    if busy:
        return TickPlan(f"waiting for {len(busy)} run{'s' if len(busy) != 1 else ''} in flight: {_named(busy)}")
    pending = [s for s in statuses if s.status != FRESH]
    if not pending:
        return TickPlan(f"fresh: {len(statuses)} asset partitions")
    kinds = {"missing" if s.status == "missing" else "stale" for s in pending}  # partial counts as stale
    states = [kind for kind in ("stale", "missing") if kind in kinds]
    reason = (f"{len(pending)} partition{'s' if len(pending) != 1 else ''} {' or '.join(states)}: "
              f"{_named([_where((s.asset, s.partition)) for s in pending])}")
    failed = {item: run for item, run in (failed or {}).items() if item in {(s.asset, s.partition) for s in pending}}
    held = {asset for asset, _ in failed} | _descendants(graph, {asset for asset, _ in failed})
    if failed:
        reason += (f"; held back after a failed sensor run ({_named([f'{_where(i)}: {r}' for i, r in failed.items()])}"
                   f"): fix it, then Reload definitions or launch gmates_sync")
    wave = _ready([s for s in pending if s.asset not in held], graph)
    return TickPlan(reason, _run_groups(wave))


# ------------------------------------------------------------------------------------------ the instance
def work_in_flight(instance: dg.DagsterInstance) -> list[str]:
    """Runs and backfills that build gmates assets and have not finished, described (run id, partitions)."""
    from dagster._core.execution.backfill import BulkActionStatus  # private, pinned dagster

    from .launch import ASSET_JOB, _describe
    from .sync_job import SYNC_JOB_TAG

    statuses = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED,
                dg.DagsterRunStatus.CANCELING, dg.DagsterRunStatus.NOT_STARTED]
    out = []
    for record in instance.get_run_records(dg.RunsFilter(statuses=statuses)):
        run = record.dagster_run
        if run.job_name != ASSET_JOB and not run.tags.get(SYNC_JOB_TAG):
            continue
        if run.status == dg.DagsterRunStatus.NOT_STARTED and \
                time.time() - record.create_timestamp.timestamp() > JUST_CREATED_SECONDS:
            continue  # created and never launched: abandoned
        if run.tags.get(SYNC_JOB_TAG):
            out.append(f"{run.run_id[:8]} (gmates_sync)")
        else:
            assets = [k.to_user_string() for k in run.asset_selection or ()] or ["all assets"]
            out.append(f"{run.run_id[:8]} ({_describe(run.tags.get('dagster/partition'), assets)})")
    for status in (BulkActionStatus.REQUESTED, BulkActionStatus.CANCELING, BulkActionStatus.FAILING):
        out += [f"backfill {b.backfill_id}" for b in instance.get_backfills(status=status)]
    return out


def failed_sensor_runs(instance: dg.DagsterInstance, since: float) -> dict[Item, str]:
    """Partitions of the sensor's runs that failed after `since` (when these Definitions were loaded)."""
    failed: dict[Item, str] = {}
    records = instance.get_run_records(dg.RunsFilter(tags={SENSOR_TAG: "1"}, statuses=[dg.DagsterRunStatus.FAILURE]),
                                       limit=100)
    for record in records:
        if record.create_timestamp.timestamp() < since:
            continue
        run = record.dagster_run
        for key in run.asset_selection or ():
            failed.setdefault((key.to_user_string(), run.tags.get("dagster/partition")), f"run {run.run_id}")
    return failed


def current_statuses(defs: dg.Definitions, instance: dg.DagsterInstance) -> list:
    """`gmates status` now; sources whose files changed are observed first (a run, as `sync` does), so the
    runs that follow record the new source versions."""
    from .source_drift import drifted
    from .sync import asset_statuses, observe_sources

    if drifted(defs, instance):
        observe_sources(defs, instance)
    return asset_statuses(defs, instance)


# ------------------------------------------------------------------------------------------ the sensor
def tick(context, defs: dg.Definitions, guard: Callable[[], Optional[str]], loaded_at: float) -> dg.SensorResult:
    graph = defs.resolve_asset_graph()
    assets = [k.to_user_string() for k in graph.toposorted_asset_keys if k in graph.materializable_asset_keys]
    changed = guard()
    if not changed:
        try:
            return _judge(context, defs, graph, assets, loaded_at)
        except Exception:
            changed = guard()  # edited while this tick computed the status (steps refuse with ManifestChanged)
            if not changed:
                raise
    plan = plan_tick([], graph, changed=changed)
    return dg.SensorResult(skip_reason=plan.reason,
                           asset_events=new_evaluations(context.instance, changed_verdicts(assets, changed)))


def _judge(context, defs: dg.Definitions, graph, assets: list[str], loaded_at: float) -> dg.SensorResult:
    from .orphans import fail_orphaned_runs

    instance = context.instance
    fail_orphaned_runs(instance, context.log.info)  # a killed sync's runs would otherwise be waited for forever
    busy = work_in_flight(instance)
    if busy:
        return dg.SensorResult(skip_reason=plan_tick([], graph, busy=busy).reason)
    statuses = current_statuses(defs, instance)
    plan = plan_tick(statuses, graph, failed=failed_sensor_runs(instance, loaded_at))
    events = new_evaluations(instance, verdicts(statuses, assets))
    context.log.info(plan.reason)
    if not plan.runs:
        return dg.SensorResult(skip_reason=plan.reason, asset_events=events)
    requests = []
    for partition, names in plan.runs:
        keys = [dg.AssetKey(n) for n in names]
        requests.append(dg.RunRequest(
            asset_selection=keys, partition_key=partition, asset_check_keys=sorted(checks_for_run(graph, keys)),
            tags={SENSOR_TAG: "1", "gmates/launched_by": f"{SENSOR_NAME} sensor"}))
    return dg.SensorResult(run_requests=requests, asset_events=events)


def automation_sensor(get_defs: Callable[[], dg.Definitions], guard: Callable[[], Optional[str]],
                      loaded_at: float, default_status=dg.DefaultSensorStatus.RUNNING) -> dg.SensorDefinition:
    """The sensor over the Definitions `get_defs()` returns (those it belongs to); `guard()` says why they no
    longer describe the manifest on disk (None while they do); `loaded_at`: when they were built (epoch s)."""
    @dg.sensor(name=SENSOR_NAME, job_name="__ASSET_JOB", minimum_interval_seconds=sensor_interval(),
               default_status=default_status,
               description="Rebuilds whatever `gmates status` calls stale or missing, one wave per tick (like "
                           "`gmates sync`), after edits, reloads and partial materializations; waits while runs "
                           "are in flight; skips while the manifest on disk differs from the loaded one. Refreshes "
                           "each asset's up_to_date check.")
    def gmates_automation(context):
        return tick(context, get_defs(), guard, loaded_at)

    return gmates_automation
