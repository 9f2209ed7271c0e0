"""`sync` and `status`: what Dagster alone does not do (staleness across waves and partitions, see below).

Dagster's "unsynced" status is one hop per run, partitioned assets never look stale on the global graph, and
`stale_assets_only` ignores partitions. `sync` therefore observes the sources, then runs the stale or missing
asset partitions wave by wave until nothing is stale. This is the only module that uses Dagster's private
staleness resolver (pinned dagster==1.13.27; tests/test_sync_private_api.py keeps an eye on it).
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional, Sequence

import dagster as dg
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus  # private
from dagster._core.loader import LoadingContextForTest  # private

FRESH, STALE, MISSING = "fresh", "stale", "missing"


@dataclass(frozen=True)
class PartitionStatus:
    asset: str
    partition: Optional[str]
    status: str
    causes: tuple[str, ...] = ()

    def as_json(self) -> dict:
        return {"asset": self.asset, "partition": self.partition, "status": self.status, "causes": list(self.causes)}


@dataclass
class SyncReport:
    waves: list[list[tuple[str, Optional[str]]]] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)

    @property
    def executed(self) -> list[tuple[str, Optional[str]]]:
        return [item for wave in self.waves for item in wave]


def _describe_cause(cause) -> str:
    where = cause.asset_key.to_user_string()
    if cause.partition_key:
        where += f"[{cause.partition_key}]"
    text = f"{where}: {cause.reason}"
    if cause.dependency is not None:
        dep = cause.dependency.asset_key.to_user_string()
        if cause.dependency.partition_key:
            dep += f"[{cause.dependency.partition_key}]"
        text += f" ({dep})"
    return text


def _partition_keys(node, instance) -> list[Optional[str]]:
    if node.partitions_def is None:
        return [None]
    return list(node.partitions_def.get_partition_keys(dynamic_partitions_store=instance))


def asset_statuses(defs: dg.Definitions, instance: dg.DagsterInstance,
                   assets: Optional[Iterable[str]] = None, observe: bool = False) -> list[PartitionStatus]:
    """Status of every materializable asset partition, in topological order.

    `observe`: hash the external sources first, so edited files show up as stale causes.
    """
    if observe:
        observe_sources(defs, instance)
    graph = defs.resolve_asset_graph()
    resolver = CachingStaleStatusResolver(instance, graph, LoadingContextForTest(instance))
    wanted = set(assets) if assets is not None else None
    out = []
    for key in graph.toposorted_asset_keys:
        if key not in graph.materializable_asset_keys:
            continue
        name = key.to_user_string()
        if wanted is not None and name not in wanted:
            continue
        for pk in _partition_keys(graph.get(key), instance):
            status = resolver.get_status(key, pk)
            if status == StaleStatus.MISSING:
                out.append(PartitionStatus(name, pk, MISSING))
            elif status == StaleStatus.STALE:
                causes = tuple(_describe_cause(c) for c in resolver.get_stale_causes(key, pk))
                out.append(PartitionStatus(name, pk, STALE, causes))
            else:
                out.append(PartitionStatus(name, pk, FRESH))
    return out


def observe_sources(defs: dg.Definitions, instance: dg.DagsterInstance) -> Optional[str]:
    graph = defs.resolve_asset_graph()
    keys = sorted(graph.observable_asset_keys, key=lambda k: k.to_user_string())
    if not keys:
        return None
    job = defs.resolve_implicit_global_asset_job_def()
    result = job.execute_in_process(instance=instance, asset_selection=keys, raise_on_error=True)
    return result.run_id


def _upstream_names(graph, name: str) -> set[str]:
    return {k.to_user_string() for k in graph.get(dg.AssetKey(name)).parent_keys}


def _ancestors(graph, names: set[str]) -> set[str]:
    seen, todo = set(), list(names)
    while todo:
        for parent in _upstream_names(graph, todo.pop()):
            if parent not in seen:
                seen.add(parent)
                todo.append(parent)
    return seen


def _ready(pending: Sequence[PartitionStatus], graph) -> list[PartitionStatus]:
    """Pending partitions none of whose upstream assets (transitively) still have pending partitions."""
    pending_assets = {p.asset for p in pending}
    return [p for p in pending if not (_ancestors(graph, {p.asset}) & pending_assets)]


def _run_groups(ready: Sequence[PartitionStatus]) -> list[tuple[Optional[str], list[str]]]:
    """One run per partition key (unpartitioned assets together), in a stable order."""
    groups: dict[Optional[str], list[str]] = defaultdict(list)
    for item in ready:
        groups[item.partition].append(item.asset)
    return sorted(groups.items(), key=lambda kv: (kv[0] is not None, kv[0] or ""))


def sync(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    select: Optional[Iterable[str]] = None,
    max_waves: int = 64,
    log: Callable[[str], None] = lambda _m: None,
) -> SyncReport:
    """Observe sources, then materialize stale or missing partitions wave by wave until none remain.

    `select` limits the sync to these assets and everything upstream of them.
    """
    graph = defs.resolve_asset_graph()
    scope = None
    if select:
        names = set(select)
        unknown = names - {k.to_user_string() for k in graph.materializable_asset_keys}
        if unknown:
            raise ValueError(f"unknown asset(s) in --select: {sorted(unknown)}")
        scope = names | _ancestors(graph, names)
    job = defs.resolve_implicit_global_asset_job_def()
    report = SyncReport()
    run_id = observe_sources(defs, instance)
    if run_id:
        report.runs.append(run_id)
    for _ in range(max_waves):
        pending = [s for s in asset_statuses(defs, instance, scope) if s.status != FRESH]
        if not pending:
            return report
        wave = _ready(pending, graph)
        log(f"wave {len(report.waves) + 1}: " + ", ".join(f"{p.asset}[{p.partition}]" if p.partition else p.asset
                                                          for p in wave))
        for partition, assets in _run_groups(wave):
            result = job.execute_in_process(
                instance=instance,
                asset_selection=[dg.AssetKey(a) for a in assets],
                partition_key=partition,
                raise_on_error=True,
            )
            report.runs.append(result.run_id)
        report.waves.append([(p.asset, p.partition) for p in wave])
    raise RuntimeError(f"sync did not converge after {max_waves} waves; still pending: {pending}")
