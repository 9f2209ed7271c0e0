"""Keep each asset's index entry on its latest materialization (a Dagster race between concurrent runs).

Dagster stores an asset event, then, in a second transaction, points the asset's index entry (the
`asset_keys.last_materialization` column) at it. Two runs materializing partitions of one asset at the same
moment can interleave: A stores event 100, B stores 101 and points the index at it, then A points it back at
100. The index then names an older event than the latest, and Dagster's staleness, which uses it, can judge
partitions stale however often they are rebuilt (seen in the cluster test on Postgres before gmates had its own
Postgres event log). gmates' event logs store an event and its index entry in one transaction, in the order of
the events (`orders_asset_index`: gmates_assets/event_log.py on sqlite, gmates_assets/postgres_event_log.py on
Postgres). On any other event log (dagster-postgres' own, MySQL) `sync` says so once and puts the index entry
of every asset a wave built back on the latest materialization once the wave's runs have ended; a consumer
built in the same wave as a raced input can still be built a second time there.
"""
from __future__ import annotations

from collections.abc import Iterable

import dagster as dg

UNORDERED_INDEX_WARNING = (
    "warning: this instance's event log storage ({name}) stores an asset event and its index entry in two "
    "transactions; concurrent runs can leave an index entry on an older event, and a partition may then be built "
    "twice. On Postgres, name gmates_assets.postgres_event_log.OrderedPostgresEventLogStorage as "
    "event_log_storage in dagster.yaml (docs/deployment.md).")


def orders_asset_index(instance: dg.DagsterInstance) -> bool:
    """Whether the instance's event log writes an asset event and its index entry in one ordered transaction."""
    return bool(getattr(instance.event_log_storage, "orders_asset_index", False))


def repair_latest_materialization(instance: dg.DagsterInstance, asset_names: Iterable[str]) -> list[str]:
    """Point each asset's index entry at its latest materialization where it names an older one; the assets
    repaired. Call it while none of these assets is being materialized."""
    repaired = []
    for name in sorted(set(asset_names)):
        key = dg.AssetKey(name)
        latest = instance.fetch_materializations(key, limit=1).records  # newest first, by storage id
        if not latest:
            continue
        records = instance.get_asset_records([key])
        indexed = records[0].asset_entry.last_materialization_record if records else None
        if indexed is None or indexed.storage_id < latest[0].storage_id:
            instance.event_log_storage.store_asset_event(latest[0].event_log_entry, latest[0].storage_id)
            repaired.append(name)
    return repaired
