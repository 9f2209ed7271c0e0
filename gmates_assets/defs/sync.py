"""`sync` and `status`: what Dagster alone does not do (staleness across waves and partitions, see below).

Dagster's "unsynced" status is one hop per run, partitioned assets never look stale on the global graph, and
`stale_assets_only` ignores partitions. `sync` therefore observes the sources, then runs the stale or missing
asset partitions wave by wave until nothing is stale. This is the only module that uses Dagster's private
staleness resolver (pinned dagster==1.13.27; tests/test_sync_private_api.py keeps an eye on it).
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Optional

import dagster as dg
from dagster._core.definitions.data_version import (  # private
    NULL_DATA_VERSION,
    CachingStaleStatusResolver,
    StaleStatus,
)
from dagster._core.loader import LoadingContextForTest  # private

from ..core.sources import ReadStats
from ..core.store import Artifact, ArtifactStore, UnreadableRecord
from ..errors import user_cause
from .asset_index import UNORDERED_INDEX_WARNING, orders_asset_index, repair_latest_materialization
from .factory import graph_for
from .growth import growth_cause
from .launch import RUN_CONFIG
from .orphans import fail_orphaned_runs, process_tags

FRESH, STALE, MISSING = "fresh", "stale", "missing"


@dataclass(frozen=True)
class PartitionStatus:
    asset: str
    partition: Optional[str]
    status: str
    causes: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()  # e.g. records skipped while reading a shard

    def as_json(self) -> dict:
        return {"asset": self.asset, "partition": self.partition, "status": self.status, "causes": list(self.causes),
                "notes": list(self.notes)}


@dataclass
class SyncReport:
    waves: list[list[tuple[str, Optional[str]]]] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)
    failures: list = field(default_factory=list)  # ((partition, assets), error) of runs that failed
    fresh: list[PartitionStatus] = field(default_factory=list)  # the synced scope at the end: all fresh

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


def _cached_version(resolver) -> Callable[[str, Optional[str], bool], Optional[str]]:
    """Data versions from the staleness resolver's cache (it has read them already to judge the partitions)."""
    def lookup(asset: str, partition: Optional[str], _is_source: bool) -> Optional[str]:
        version = resolver.get_current_data_version(dg.AssetKey(asset), partition)
        return None if version is None or version == NULL_DATA_VERSION else version.value

    return lookup


def _fan_in_cause(defs: dg.Definitions, instance, name: str, partition: Optional[str],
                  resolver=None) -> Optional[str]:
    """Dagster ignores staleness across an edge from 100 or more partitions; for assets that read every
    partition of an input (the shard indexes, models over all oracle seeds) compare the input key that a build
    would use now with the one recorded at the last build."""
    from .runtime import UpstreamMissing, input_key, input_versions

    gm = (defs.resources or {}).get("gmates")
    if gm is None:  # not a gmates code location
        return None
    loaded = gm.manifest()
    graph = graph_for(loaded)
    if name not in graph.decls or not any(i.partitions == "all" for i in graph.inputs(name)):
        return None
    record = instance.get_latest_data_version_record(dg.AssetKey(name), False, partition)
    if record is None:
        return None
    recorded = record.asset_materialization.metadata.get("input_key") if record.asset_materialization else None
    try:
        lookup = _cached_version(resolver) if resolver is not None else None
        expected = input_key(instance, gm.store(), graph, loaded, name, partition,
                             input_versions(instance, graph, name, partition, lookup))
    except UpstreamMissing:
        return None
    if recorded is None or recorded.value != expected:
        return f"{name}: an input partition has a new data version since the last build"
    return None


def asset_statuses(defs: dg.Definitions, instance: dg.DagsterInstance,
                   assets: Optional[Iterable[str]] = None, observe: bool = False,
                   current_sources: bool = False) -> list[PartitionStatus]:
    """Status of every materializable asset partition, in topological order.

    `observe`: hash the external sources first and record the observation (a run), so edited files show up
    as stale causes. `current_sources`: the same verdict without writing anything: the sources' current
    hashes are compared with the last observed ones in memory (source_drift.py).
    """
    from .partial_status import with_partial
    from .source_drift import drifted

    if observe:
        observe_sources(defs, instance)
    drift = drifted(defs, instance) if current_sources and not observe else {}
    graph = defs.resolve_asset_graph()
    resolver = CachingStaleStatusResolver(instance, graph, LoadingContextForTest(instance))
    store = gmates_store(defs)
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
            known = status != StaleStatus.MISSING and store is not None
            stored = _stored_artifact(store, resolver, key, pk) if known else None
            notes = _notes(stored) if stored is not None else ()
            if status == StaleStatus.MISSING:
                out.append(PartitionStatus(name, pk, MISSING))
            elif store is not None and stored is None:  # Dagster remembers it, the store lost it: rebuild
                out.append(PartitionStatus(name, pk, MISSING, (f"{name}: not in the store at {store.root}",)))
            elif (grown := growth_cause(defs, instance, name, pk)) is not None:  # one line, not a cause per shard
                out.append(PartitionStatus(name, pk, STALE, (grown,), notes))
            elif status == StaleStatus.STALE:
                causes = tuple(_describe_cause(c) for c in resolver.get_stale_causes(key, pk))
                drift_cause = drift.get((name, pk or ""))
                out.append(PartitionStatus(name, pk, STALE, causes + ((drift_cause,) if drift_cause else ()), notes))
            elif (cause := drift.get((name, pk or ""))) is not None:
                out.append(PartitionStatus(name, pk, STALE, (cause,), notes))
            elif (cause := _fan_in_cause(defs, instance, name, pk, resolver)) is not None:
                out.append(PartitionStatus(name, pk, STALE, (cause,), notes))
            else:
                out.append(PartitionStatus(name, pk, FRESH, (), notes))
    return [s if s.status == FRESH else with_partial(defs, instance, s, _cached_version(resolver)) for s in out]


def gmates_store(defs: dg.Definitions) -> Optional[ArtifactStore]:
    """The artifact store of gmates Definitions (None for Definitions without the gmates resource)."""
    resource = (defs.resources or {}).get("gmates")
    return resource.store() if resource is not None else None


def _stored_artifact(store: ArtifactStore, resolver, key: dg.AssetKey, pk: Optional[str]) -> Optional[Artifact]:
    """The stored artifact behind the latest materialization (its data version is the content hash)."""
    version = resolver.get_current_data_version(key, pk)
    return store.by_content(key.to_user_string(), version.value) if version else None


def _notes(artifact: Artifact) -> tuple[str, ...]:
    """Skip and truncation counts a documents artifact recorded (`on_bad_record: skip`, `max_chars`)."""
    stats = artifact.record.get("metadata", {}).get("read_stats")
    return tuple(ReadStats.from_dict(stats).notes()) if isinstance(stats, dict) else ()


@dataclass(frozen=True)
class ArtifactCheck:
    asset: str
    partition: Optional[str]
    problem: Optional[str]  # None when the stored files hash to the recorded content hash
    artifact: Optional[Artifact] = None


def verify_artifacts(defs: dg.Definitions, instance: dg.DagsterInstance) -> list[ArtifactCheck]:
    """Re-hash every stored artifact the latest materializations point at; name what is corrupt or missing."""
    graph = defs.resolve_asset_graph()
    resolver = CachingStaleStatusResolver(instance, graph, LoadingContextForTest(instance))
    store = gmates_store(defs)
    checks = []
    for key in graph.toposorted_asset_keys:
        if key not in graph.materializable_asset_keys:
            continue
        for pk in _partition_keys(graph.get(key), instance):
            if resolver.get_status(key, pk) == StaleStatus.MISSING:
                continue  # never built: nothing to verify
            try:
                stored = _stored_artifact(store, resolver, key, pk)
            except UnreadableRecord as err:  # `gmates verify --repair` quarantines it
                checks.append(ArtifactCheck(key.to_user_string(), pk, str(err)))
                continue
            problem = "missing from the store" if stored is None else None
            if stored is not None and (actual := store.stored_hash(stored)) != stored.content_hash:
                problem = f"files hash to {actual[:16]}…, the record says {stored.content_hash[:16]}…"
            checks.append(ArtifactCheck(key.to_user_string(), pk, problem, stored))
    return checks


def observe_sources(defs: dg.Definitions, instance: dg.DagsterInstance,
                    failures: Optional[list] = None) -> Optional[str]:
    """Observe every source in one run; with `failures`, a source that fails (e.g. a bad eval task file) is added
    there as ((None, [asset]), error) and the others are still observed (without it, the failure raises)."""
    graph = defs.resolve_asset_graph()
    keys = sorted(graph.observable_asset_keys, key=lambda k: k.to_user_string())
    if not keys:
        return None
    job = defs.resolve_implicit_global_asset_job_def()
    observe = lambda selection: job.execute_in_process(  # noqa: E731
        instance=instance, asset_selection=selection, raise_on_error=True, run_config=RUN_CONFIG,
        tags=process_tags()).run_id
    try:
        return observe(keys)
    except Exception:
        if failures is None:
            raise
    run_id = None
    for key in keys:  # which sources failed: each alone (only on this failure path)
        try:
            run_id = observe([key])
        except Exception as err:
            failures.append(((None, [key.to_user_string()]), err))
    return run_id


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


def _descendants(graph, names: set[str]) -> set[str]:
    seen, todo = set(), list(names)
    while todo:
        for child in graph.get(dg.AssetKey(todo.pop())).child_keys:
            if child.to_user_string() not in seen:
                seen.add(child.to_user_string())
                todo.append(child.to_user_string())
    return seen


class SyncFailed(RuntimeError):
    """Several runs failed; everything that does not depend on them was built."""


def _failure_text(failure) -> str:
    (partition, assets), err = failure
    return f"{', '.join(f'{a}[{partition}]' if partition else a for a in assets)}: {user_cause(err)}"


def _failed(failures: list) -> BaseException:
    """What a sync with failures raises: the error itself when there is one, else all of them named."""
    if len(failures) == 1:
        return failures[0][1]
    return SyncFailed(f"{len(failures)} runs failed (everything that does not depend on them was built):\n  "
                      + "\n  ".join(_failure_text(f) for f in failures))


def _linked(graph, child: dg.AssetKey, parent: dg.AssetKey) -> bool:
    """Can `child` share `parent`'s run? Both unpartitioned, or partition k reads only partition k."""
    child_parts, parent_parts = graph.get(child).partitions_def, graph.get(parent).partitions_def
    if child_parts is None or parent_parts is None:
        return child_parts is None and parent_parts is None
    return parent_parts == child_parts and isinstance(graph.get_partition_mapping(child, parent),
                                                      dg.IdentityPartitionMapping)


def _identity_ancestors(graph, name: str) -> set[str]:
    """Ancestors linked to `name` only through identity partition mappings (partition k of `name` reads
    partition k of each of them and nothing else of them, e.g. embeddings[k] <- documents[k]) or, for an
    unpartitioned asset, only through unpartitioned assets (lm_tokenizer <- documents_index)."""
    closure, todo, tainted = {name}, [name], set()
    while todo:
        child = dg.AssetKey(todo.pop())
        for parent in graph.get(child).parent_keys:
            parent_name = parent.to_user_string()
            if _linked(graph, child, parent):
                if parent_name not in closure:
                    closure.add(parent_name)
                    todo.append(parent_name)
            else:
                tainted |= {parent_name} | _ancestors(graph, {parent_name})
    return closure - tainted - {name}


def _ready(pending: Sequence[PartitionStatus], graph) -> list[PartitionStatus]:
    """The next wave: pending partitions none of whose upstream assets still have pending partitions, plus
    partitions whose only pending upstream is the same partition of identity-linked assets already in the
    wave. Those join that partition's run (e.g. documents[k] and embeddings[k] in one run; a chain of
    unpartitioned assets in one run): Dagster runs them in dependency order, and each run's fixed cost (a
    process start with a run launcher, a wave of the sync) is paid once."""
    pending_assets = {p.asset for p in pending}
    pending_items = {(p.asset, p.partition) for p in pending}
    order = {k.to_user_string(): i for i, k in enumerate(graph.toposorted_asset_keys)}
    wave: list[PartitionStatus] = []
    in_wave: set[tuple[str, Optional[str]]] = set()
    upstream_of = {a: _ancestors(graph, {a}) & pending_assets for a in pending_assets}
    linked_to = {a: _identity_ancestors(graph, a) for a in pending_assets if upstream_of[a]}
    for item in sorted(pending, key=lambda p: order.get(p.asset, 0)):
        upstream = upstream_of[item.asset]
        if upstream - linked_to.get(item.asset, set()):
            continue
        if all((a, item.partition) in in_wave or (a, item.partition) not in pending_items for a in upstream):
            wave.append(item)
            in_wave.add((item.asset, item.partition))
    return wave


def _run_groups(ready: Sequence[PartitionStatus]) -> list[tuple[Optional[str], list[str]]]:
    """One run per partition key (unpartitioned assets together), in a stable order."""
    groups: dict[Optional[str], list[str]] = defaultdict(list)
    for item in ready:
        groups[item.partition].append(item.asset)
    return sorted(groups.items(), key=lambda kv: (kv[0] is not None, kv[0] or ""))


def _require_progress(report: SyncReport, pending: Sequence[PartitionStatus]) -> None:
    """Stop when none of the last wave's partitions became fresh: its runs succeeded without building what
    this sync asked for (e.g. a daemon whose code location loaded another manifest), so another wave would
    only repeat them."""
    if not report.waves:
        return
    still = {(p.asset, p.partition) for p in pending}
    last = report.waves[-1]
    if all(item in still for item in last):
        names = ", ".join(f"{a}[{pk}]" if pk else a for a, pk in last[:8]) + (" ..." if len(last) > 8 else "")
        raise RuntimeError(
            f"wave {len(report.waves)} made no progress: its runs ({', '.join(report.runs[-len(last):][:4])}"
            f"{' ...' if len(last) > 4 else ''}) succeeded, but {names} are still not fresh. The runs built "
            f"something else; with launcher: instance, check that the daemon and run workers load the same "
            f"manifest ($GMATES_MANIFEST) and store ($GMATES_HOME) as this sync (docs/deployment.md).")


def sync(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    select: Optional[Iterable[str]] = None,
    max_waves: int = 64,
    log: Callable[[str], None] = lambda _m: None,
    runs=None,
) -> SyncReport:
    """Observe sources, then materialize stale or missing partitions wave by wave until none remain.

    `select` limits the sync to these assets and everything upstream of them. `runs` executes a wave's runs
    (launch.InProcessRuns by default; launch.InstanceRuns submits them through the instance's launcher).
    """
    from .launch import InProcessRuns

    graph = defs.resolve_asset_graph()
    scope = None
    if select:
        names = set(select)
        unknown = names - {k.to_user_string() for k in graph.materializable_asset_keys}
        if unknown:
            raise ValueError(f"unknown asset(s) in --select: {sorted(unknown)}")
        scope = names | _ancestors(graph, names)
    runs = runs or InProcessRuns(defs, instance)
    report = SyncReport()
    fail_orphaned_runs(instance, log)  # runs a killed sync left STARTED
    # A failure (a source that cannot be observed, a failed run) is named at once; what depends on it is left
    # out, everything else is still built, and the sync then raises it.
    failures: list = []
    run_id = observe_sources(defs, instance, failures)
    if run_id:
        report.runs.append(run_id)
    repair_index = not orders_asset_index(instance)
    if repair_index:
        log(UNORDERED_INDEX_WARNING.format(name=type(instance.event_log_storage).__name__))
    for _ in range(max_waves):
        for failure in failures[len(report.failures):]:
            log(f"failed: {_failure_text(failure)}")
        report.failures = list(failures)
        failed = {asset for (_, assets), _ in failures for asset in assets}
        blocked = failed | _descendants(graph, failed)
        statuses = asset_statuses(defs, instance, scope)
        pending = [s for s in statuses if s.status != FRESH and s.asset not in blocked]
        if not pending:
            needed = [f for f in failures if scope is None or set(f[0][1]) & scope]  # not a source --select skips
            if needed:
                raise _failed(needed)
            report.fresh = statuses
            return report
        _require_progress(report, pending)
        wave = _ready(pending, graph)
        log(f"wave {len(report.waves) + 1}: " + ", ".join(f"{p.asset}[{p.partition}]" if p.partition else p.asset
                                                          for p in wave))
        report.runs.extend(runs.run_all(_run_groups(wave), log, failures))
        report.waves.append([(p.asset, p.partition) for p in wave])
        for name in repair_latest_materialization(instance, {p.asset for p in wave}) if repair_index else ():
            log(f"  {name}: its index entry named an older materialization than the latest (two runs at once); "
                f"repaired")
    raise RuntimeError(f"sync did not converge after {max_waves} waves; still pending: {pending}")
