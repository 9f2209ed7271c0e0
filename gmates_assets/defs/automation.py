"""The automation condition that makes `dagster dev` rebuild what an edit made stale after a reload.

Eager, plus: a new code version (a manifest edit reaches an asset this way) or a dependency's new data version
requests a run; a dependency that re-materialized with identical content does not (early cutoff).

Each asset also waits while any partition of any of its ancestors is running or being requested (the wave
barrier of `gmates sync`). Guarding only the direct dependencies lets an asset that fans in over partitions
(method_comparison over eval_scores[method]) run as soon as the first partition's chain finishes and again for
each later one: the other chains were still two or three assets further up.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from typing import Optional

import dagster as dg

AC = dg.AutomationCondition
SENSOR_NAME = "gmates_automation"
INTERVAL_ENV = "GMATES_AUTOMATION_INTERVAL_S"


def sensor_interval() -> int:
    """Seconds between evaluations of the automation sensor; $GMATES_AUTOMATION_INTERVAL_S overrides 15."""
    return int(os.environ.get(INTERVAL_ENV, "15"))


def sensor_default_status(launcher: str) -> dg.DefaultSensorStatus:
    """On for `launcher: in_process` (`gmates ui`: the sensor rebuilds what a reload made stale); off for
    `launcher: instance` or `warm`, where `gmates sync` launches the runs and the daemon would otherwise start a second
    run for the same partitions (measured: 75 materializations for 50 partitions)."""
    return dg.DefaultSensorStatus.STOPPED if launcher in ("instance", "warm") else dg.DefaultSensorStatus.RUNNING


def _busy() -> dg.AutomationCondition:
    return AC.in_progress() | AC.will_be_requested()


def _any_partition_busy(ancestor: dg.AssetKey, hub: Optional[dg.AssetKey]) -> dg.AutomationCondition:
    """True for every candidate partition while any partition of `ancestor` is running or requested.

    `asset_matches` maps partitions through the pair's partition mapping, which between unrelated static
    partition sets (methods vs shards) is identity and matches nothing; passing through an unpartitioned
    `hub` asset widens the match to the whole ancestor and back to every candidate partition.
    """
    inner = AC.asset_matches(ancestor, _busy())
    return AC.asset_matches(hub, inner) if hub is not None else inner


def sync_condition(ancestors: Iterable[dg.AssetKey] = (), hub: Optional[dg.AssetKey] = None) -> dg.AutomationCondition:
    condition = (
        (AC.missing() | AC.code_version_changed() | AC.any_deps_match(AC.data_version_changed()))
        .since_last_handled()
        & ~AC.any_deps_missing()
        & ~AC.any_deps_in_progress()
        & ~AC.in_progress()
    )
    for ancestor in sorted(ancestors, key=lambda k: k.to_user_string()):
        condition = condition & ~_any_partition_busy(ancestor, hub)
    return condition.with_label("gmates_sync")


def with_sync_conditions(assets: Sequence) -> list:
    """The assets with `sync_condition` on every materializable one, guarded by its materializable ancestors."""
    specs = {spec.key: spec for a in assets if isinstance(a, dg.AssetsDefinition) and a.is_materializable
             for spec in a.specs}
    hub = min((k for k, spec in specs.items() if spec.partitions_def is None), key=dg.AssetKey.to_user_string,
              default=None)

    def ancestors(key: dg.AssetKey) -> set[dg.AssetKey]:
        seen, todo = set(), [key]
        while todo:
            for dep in specs[todo.pop()].deps:
                if dep.asset_key in specs and dep.asset_key not in seen:
                    seen.add(dep.asset_key)
                    todo.append(dep.asset_key)
        return seen

    def with_condition(spec: dg.AssetSpec) -> dg.AssetSpec:
        return spec.replace_attributes(automation_condition=sync_condition(ancestors(spec.key), hub))

    return [a.map_asset_specs(with_condition) if isinstance(a, dg.AssetsDefinition) and a.is_materializable else a
            for a in assets]


class GuardedAutomationSensor(dg.AutomationConditionSensorDefinition):
    """The automation sensor, evaluated in the code server so that each tick first asks `guard` whether these
    Definitions still describe the manifest on disk. After an edit (or until 'Reload definitions') a tick
    skips with the guard's reason instead of requesting runs whose code versions describe another manifest."""

    def __init__(self, name: str, *, guard: Callable[[], Optional[str]], **kwargs):
        super().__init__(name, use_user_code_server=True, **kwargs)
        self._guard = guard
        evaluate = self._evaluation_fn

        def guarded(context):
            reason = guard()
            if reason:  # the cursor stays: after the reload, the next tick compares with the last evaluation
                return [dg.SensorResult(skip_reason=reason, cursor=context.cursor)]
            return evaluate(context)

        self._evaluation_fn = guarded

    def with_attributes(self, **kwargs) -> GuardedAutomationSensor:
        copy = super().with_attributes(**kwargs)
        return GuardedAutomationSensor(
            copy.name, guard=self._guard, target=copy._sensor_target, tags=copy._tags, run_tags=copy._run_tags,
            default_status=copy.default_status, minimum_interval_seconds=copy.minimum_interval_seconds,
            description=copy.description, metadata=copy._metadata, emit_backfills=copy._emit_backfills)
