"""Declarations -> Dagster assets: deps, partition mappings, code versions, checks (automation: automation.py)."""
from __future__ import annotations

from functools import lru_cache

import dagster as dg

from ..core.manifest import LoadedManifest
from .declare import METHODS, SEEDS, SHARDS, AssetDecl, Input
from .graph import AssetGraph, partition_keys_for
from .resources import GmatesResource
from .runtime import run_step
from .sync_job import with_sync_hint


@lru_cache(maxsize=8)
def graph_for(loaded: LoadedManifest) -> AssetGraph:
    """The graph of a loaded manifest (cached: Definitions, steps and status ask for the same one)."""
    from .assets import DECLARATIONS

    return AssetGraph(loaded.manifest, DECLARATIONS)


def _partitions(graph: AssetGraph) -> dict[str, dg.StaticPartitionsDefinition]:
    return {kind: dg.StaticPartitionsDefinition(partition_keys_for(graph.manifest, kind))
            for kind in (SHARDS, SEEDS, METHODS)}


def _dep(graph: AssetGraph, inp: Input) -> dg.AssetDep:
    if inp.partitions is None:
        return dg.AssetDep(inp.asset)
    if inp.partitions == "same":
        return dg.AssetDep(inp.asset, partition_mapping=dg.IdentityPartitionMapping())
    if inp.partitions == "all":
        return dg.AssetDep(inp.asset, partition_mapping=dg.AllPartitionMapping())
    keys = list(inp.partitions(graph.manifest))
    return dg.AssetDep(inp.asset, partition_mapping=dg.SpecificPartitionsPartitionMapping(keys))


def _metadata(decl: AssetDecl) -> dict:
    return {"manifest_sections": ", ".join(decl.sections) or "(none)"}


def _source(decl: AssetDecl, partitions_def) -> dg.SourceAsset:
    @dg.observable_source_asset(name=decl.name, group_name=decl.group, partitions_def=partitions_def,
                                description=with_sync_hint(decl.description), tags={"gmates/stage": decl.group},
                                metadata=_metadata(decl))
    def observe(context, gmates: GmatesResource):
        value = decl.observe(gmates.manifest(f"observing {decl.name}"))
        if isinstance(value, dict):
            return dg.DataVersionsByPartition({k: dg.DataVersion(v) for k, v in value.items()})
        return dg.DataVersion(value)

    return observe


def _asset(decl: AssetDecl, graph: AssetGraph, partitions_def) -> dg.AssetsDefinition:
    code_version = graph.code_version(decl.name)
    checks = [dg.AssetCheckSpec(c.name, asset=decl.name, blocking=True, description=c.description)
              for c in decl.checks]

    @dg.asset(name=decl.name, group_name=decl.group, description=with_sync_hint(decl.description),
              deps=[_dep(graph, i) for i in graph.inputs(decl.name)], partitions_def=partitions_def,
              code_version=code_version,
              kinds=set(decl.kinds) | {"python"}, tags={"gmates/stage": decl.group}, metadata=_metadata(decl),
              check_specs=checks or None)
    def materialize(context, gmates: GmatesResource):
        return run_step(context, gmates, decl.name, code_version)

    return materialize


def dagster_assets(graph: AssetGraph) -> list:
    partitions = _partitions(graph)
    out = []
    for name in graph.toposorted():
        decl = graph[name]
        partitions_def = partitions[decl.partitioning] if decl.partitioning else None
        out.append(_source(decl, partitions_def) if decl.is_source else _asset(decl, graph, partitions_def))
    return out
