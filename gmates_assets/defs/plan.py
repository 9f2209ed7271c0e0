"""What a sync would rebuild at most: the partitions not fresh now, plus every partition downstream of them.

`gmates status` shows what is stale *now*: Dagster judges staleness one hop at a time, so after a one-document
edit only that shard's `documents` partition is stale. A sync rebuilds it, and each partition downstream is
rebuilt in a later wave if its inputs' content changed (identical bytes stop the cascade: early cutoff). The plan
is therefore an upper bound: the not-fresh partitions and their transitive descendants, partition by partition
(a shard's partition reaches only the same shard of identity-mapped assets, and every partition of the rest).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import dagster as dg

from .sync import FRESH, MISSING, STALE, PartitionStatus

DOWNSTREAM = "downstream"

Item = tuple[str, Optional[str]]


def _label(asset: str, partition: Optional[str]) -> str:
    return f"{asset}[{partition}]" if partition else asset


def _child_partitions(graph, parent: dg.AssetKey, partition: Optional[str], child: dg.AssetKey,
                      keys_of) -> list[Optional[str]]:
    """The partitions of `child` that read `parent[partition]`: the same key across an identity mapping
    between equal partitionings, else (conservatively) all of them."""
    child_def, parent_def = graph.get(child).partitions_def, graph.get(parent).partitions_def
    if child_def is None:
        return [None]
    identity = isinstance(graph.get_partition_mapping(child, parent), dg.IdentityPartitionMapping)
    if partition is not None and parent_def == child_def and identity:
        return [partition]
    return keys_of(child)


def rebuild_plan(defs: dg.Definitions, instance: dg.DagsterInstance,
                 statuses: Sequence[PartitionStatus]) -> list[PartitionStatus]:
    """The statuses of every partition a sync would rebuild at most, in `statuses`' (topological) order; those
    fresh now get status `downstream` and, as cause, the not-fresh partition they descend from."""
    graph = defs.resolve_asset_graph()
    known = {(s.asset, s.partition) for s in statuses}
    cache: dict[dg.AssetKey, list[Optional[str]]] = {}

    def keys_of(key: dg.AssetKey) -> list[Optional[str]]:
        if key not in cache:
            node = graph.get(key)
            cache[key] = [None] if node.partitions_def is None else \
                list(node.partitions_def.get_partition_keys(dynamic_partitions_store=instance))
        return cache[key]

    reached: dict[Item, Optional[Item]] = {(s.asset, s.partition): None for s in statuses if s.status != FRESH}
    todo = list(reached)
    while todo:
        asset, partition = todo.pop()
        parent = dg.AssetKey(asset)
        for child in graph.get(parent).child_keys:
            if child not in graph.materializable_asset_keys:
                continue
            for child_partition in _child_partitions(graph, parent, partition, child, keys_of):
                item = (child.to_user_string(), child_partition)
                if item not in reached and item in known:
                    reached[item] = reached[(asset, partition)] or (asset, partition)  # the not-fresh origin
                    todo.append(item)
    plan = []
    for status in statuses:
        origin = reached.get((status.asset, status.partition), "absent")
        if origin == "absent":
            continue
        if status.status != FRESH:
            plan.append(status)
        else:
            cause = f"downstream of {_label(*origin)}: rebuilt if an input's content changes"
            plan.append(PartitionStatus(status.asset, status.partition, DOWNSTREAM, (cause,), status.notes))
    return plan


def plan_summary(plan: Sequence[PartitionStatus], total: int) -> str:
    stale = sum(1 for s in plan if s.status == STALE)
    missing = sum(1 for s in plan if s.status == MISSING)
    return (f"plan: a sync rebuilds at most {len(plan)} of {total} partitions: {stale} stale and {missing} "
            f"missing now, {len(plan) - stale - missing} downstream of them (rebuilt only where an input's "
            f"content changed)")
