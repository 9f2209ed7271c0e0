"""What observing the sources would change, computed without recording anything (read-only `gmates status`).

`sync` observes the sources (a Dagster run that records their data versions) before it judges staleness. A
status that did the same would write to the instance on every call. Instead, the sources' current content
hashes (their observe functions; file digests are cached) are compared in memory with the last observed data
versions; every asset partition that reads a changed source partition, directly or through other assets, is
reported stale with the source as its cause.
"""
from __future__ import annotations

from typing import Optional

import dagster as dg

from .factory import graph_for
from .graph import AssetGraph
from .runtime import latest_data_version

Item = tuple[str, str]  # (asset, partition or "")


def _where(asset: str, partition: Optional[str]) -> str:
    return f"{asset}[{partition}]" if partition else asset


def changed_sources(graph: AssetGraph, loaded, instance: dg.DagsterInstance) -> dict[Item, str]:
    """Source partitions whose current data version differs from the last observed one (or none was), named."""
    changed: dict[Item, str] = {}
    for name in graph.toposorted():
        decl = graph[name]
        if not decl.is_source:
            continue
        value = decl.observe(loaded)
        for pk, version in (value.items() if isinstance(value, dict) else [("", value)]):
            recorded = latest_data_version(instance, name, pk or None, True)
            if recorded != version:
                changed[(name, pk)] = _where(name, pk)
    return changed


def drifted(defs: dg.Definitions, instance: dg.DagsterInstance) -> dict[Item, str]:
    """The asset partitions that read a changed source partition, with the cause to show for each. Only direct
    readers, as after an observation: whether what they feed goes stale depends on the bytes they rebuild to
    (early cutoff), which `sync` finds out wave by wave."""
    gm = (defs.resources or {}).get("gmates")
    if gm is None:
        return {}
    loaded = gm.manifest()
    graph = graph_for(loaded)
    changed = changed_sources(graph, loaded, instance)
    readers: dict[Item, str] = {}
    for name in graph.toposorted():
        if graph[name].is_source:
            continue
        for pk in graph.partition_keys(name):
            hits = [(inp.asset, ipk or "") for inp in graph.inputs(name) for ipk in graph.input_partitions(inp, pk)
                    if (inp.asset, ipk or "") in changed]
            if hits:
                # Dagster's wording after an observation: plain and --observe status read the same
                cause = f"has a new dependency data version ({changed[hits[0]]})"
                readers[(name, pk or "")] = f"{_where(name, pk)}: {cause}"
    return readers
