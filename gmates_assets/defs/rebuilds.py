"""What a sync really computed: of the partitions it ran, which were built and which the store handed back."""
from __future__ import annotations

from collections.abc import Iterable
from typing import Optional

import dagster as dg

Partition = tuple[str, Optional[str]]


def was_reused(instance: dg.DagsterInstance, asset: str, partition: Optional[str]) -> bool:
    """Whether the latest materialization of asset[partition] reused a stored artifact (nothing computed)."""
    record = instance.get_latest_data_version_record(dg.AssetKey(asset), False, partition)
    event = record.asset_materialization if record is not None else None
    value = event.metadata.get("reused") if event is not None else None
    return bool(getattr(value, "value", value))


def split_rebuilt(instance: dg.DagsterInstance, executed: Iterable[Partition]) -> tuple[set, set]:
    """(rebuilt, reused) among the partitions a sync ran (SyncReport.executed)."""
    rebuilt, reused = set(), set()
    for asset, partition in executed:
        (reused if was_reused(instance, asset, partition) else rebuilt).add((asset, partition))
    return rebuilt, reused
