"""Why a whole-pool step is stale when the pool grew: one line, "the pool grew by N documents in k shard(s)".

A step that reads a shard index (the indexes themselves, clustering, selection, release, the probe) recorded at
its last build which shards it saw. Comparing that list with the manifest's shards now names an append directly,
instead of a cause per new partition (or none at all: Dagster stops tracking an edge from 100 or more
partitions).
"""
from __future__ import annotations

import json
from typing import Optional

import dagster as dg

from .runtime import INDEX_FILE, latest_data_version

ROWS = "dagster/row_count"
INPUT_VERSION_TAG = "dagster/input_data_version/"  # + input asset key: the data version a materialization read


def _index_shards(store, index_asset: str, version: Optional[str]) -> Optional[set[str]]:
    """The shards an index artifact lists (its content, so a reused artifact answers the same)."""
    index = store.by_content(index_asset, version) if version else None
    if index is None:
        return None
    return {row["shard"] for row in json.loads(index.file(INDEX_FILE).read_text())["shards"]}


def _shards_seen(instance, store, graph, name: str, partition: Optional[str]) -> Optional[set[str]]:
    """The shards the latest materialization of asset[partition] saw: an index's own list, or the list of the
    index version that materialization read (Dagster's input data version tag)."""
    if name.endswith("_index"):
        return _index_shards(store, name, latest_data_version(instance, name, None, False))
    index_inputs = [i.asset for i in graph.inputs(name) if i.asset.endswith("_index")]
    if not index_inputs:
        return None
    record = instance.get_latest_data_version_record(dg.AssetKey(name), False, partition)
    if record is None:
        return None
    read = record.asset_event.tags.get(f"{INPUT_VERSION_TAG}{index_inputs[0]}")
    return _index_shards(store, index_inputs[0], read)


def _documents_in(instance, shards: list[str]) -> Optional[int]:
    total = 0
    for shard in shards:
        record = instance.get_latest_data_version_record(dg.AssetKey("documents"), False, shard)
        event = record.asset_materialization if record is not None else None
        rows = event.metadata.get(ROWS) if event is not None else None
        if rows is None:
            return None
        total += int(getattr(rows, "value", rows))
    return total


def growth_cause(defs: dg.Definitions, instance, name: str, partition: Optional[str]) -> Optional[str]:
    """pool_growth_cause for an asset partition of gmates Definitions (None for other code locations)."""
    from .factory import graph_for

    gm = (defs.resources or {}).get("gmates")
    if gm is None:
        return None
    graph = graph_for(gm.manifest())
    if name not in graph.decls:
        return None
    return pool_growth_cause(instance, gm.store(), graph, name, partition)


def pool_growth_cause(instance, store, graph, name: str, partition: Optional[str] = None) -> Optional[str]:
    """"<name>: the pool grew by N documents in k shard(s) (names)" when shards were added since its last build."""
    seen = _shards_seen(instance, store, graph, name, partition)
    if not seen:
        return None
    added = [s for s in graph.partition_keys("documents") if s not in seen]
    if not added:
        return None
    documents = _documents_in(instance, added)
    shards = f"{len(added)} shard{'s' if len(added) > 1 else ''} ({', '.join(added[:3])}{', …' * (len(added) > 3)})"
    grown = f"{documents} documents in {shards}" if documents is not None else f"{shards}, not read yet"
    return f"{name}: the pool grew by {grown}"
