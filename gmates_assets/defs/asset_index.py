"""Keep each asset's index entry on its latest materialization (a Dagster race between concurrent runs).

Dagster stores an asset event, then, in a second transaction, points the asset's index entry (the
`asset_keys.last_materialization` column) at it. Two runs materializing partitions of one asset at the same
moment can interleave: A stores event 100, B stores 101 and points the index at it, then A points it back at
100. The index then names an older event than the latest, and Dagster's staleness, which uses it to skip
queries, can judge partitions stale however often they are rebuilt: in the cluster test (Postgres, two warm run
workers, two Celery workers) `eval_scores[random]` stayed stale after two rebuilds and the sync stopped with
"made no progress". gmates' local event log stores an event and its index entry in one transaction
(gmates_assets/event_log.py); dagster-postgres does not, so `sync` puts the index entry of every asset a wave
built back on the latest materialization once the wave's runs have ended, before it judges the next wave.
"""
from __future__ import annotations

from collections.abc import Iterable

import dagster as dg


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
