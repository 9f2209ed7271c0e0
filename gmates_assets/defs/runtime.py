"""The one code path every asset runs through: resolve inputs, reuse or build, report versions.

1. Upstream artifacts are found by the data versions Dagster recorded for them (= their content hashes);
   observable sources contribute their observed data versions. Each one's files are checked against its
   content hash before the step gets it (ArtifactStore.require_verified; cheap when the files are unchanged),
   and whole-pool readers have every shard behind their shard indexes checked before compute starts.
2. input_key = hash(asset, code version, partition, those versions, non-asset identities); a stored artifact
   with that key is reused without computing (metadata `reused: true`), so re-runs and reverts are nearly free.
3. Otherwise the compute function fills a work directory that the store commits atomically. It sees the
   manifest through a recording view; reading a field outside the asset's declared sections fails the step
   (the cache key would ignore that field).
4. The materialization reports data_version = content hash, so identical bytes leave downstream fresh.
"""
from __future__ import annotations

import base64
import functools
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional

import dagster as dg

from ..core.finite import require_finite
from ..core.manifest import LoadedManifest
from ..core.manifest_access import ManifestView, undeclared_reads
from ..core.progress import ProgressFn, RateMeter
from ..core.step_usage import StepUsage
from ..core.store import Artifact, ArtifactStore
from .graph import AssetGraph
from .resources import GmatesResource, ManifestChanged
from .run_manifest import check_run_manifest

INDEX_FILE = "index.json"
GPU_TAG = "gmates/gpu"


class UpstreamMissing(RuntimeError):
    pass


# ------------------------------------------------------------------------------ JSON-able metadata
def md(text: str) -> dict:
    return {"__kind__": "md", "text": text}


def png_md(png: bytes, alt: str = "plot") -> dict:
    return md(f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode('ascii')})")


def table(records: Sequence[dict]) -> dict:
    return {"__kind__": "table", "records": [dict(r) for r in records]}


def _to_dagster(value: Any) -> Any:
    if isinstance(value, dict) and value.get("__kind__") == "md":
        return dg.MetadataValue.md(value["text"])
    if isinstance(value, dict) and value.get("__kind__") == "table":
        records = value["records"]
        if not records:
            return dg.MetadataValue.md("_(empty)_")
        return dg.MetadataValue.table(records=[dg.TableRecord(r) for r in records])
    if isinstance(value, (dict, list)):
        return dg.MetadataValue.json(value)
    return value


# ------------------------------------------------------------------------------ step context
class Step:
    """What a compute function sees: the manifest (recorded), the store, resolved inputs, logging, progress."""

    def __init__(self, context, loaded: LoadedManifest, store: ArtifactStore, graph: AssetGraph, asset: str,
                 partition: Optional[str], inputs: dict[str, dict[Optional[str], Artifact]],
                 versions: dict[str, dict[str, str]], record_reads: bool = True,
                 verified_shards: Optional[dict[str, dict[str, Artifact]]] = None):
        self.context = context
        self.raw_loaded = loaded  # unrecorded: only for what the cache key already covers (identities)
        self._view = ManifestView(loaded.manifest)
        self.loaded = loaded.with_manifest(self._view) if record_reads else loaded
        self.manifest = self.loaded.manifest
        self.versions = versions  # data versions of every input, by asset and partition ("" = unpartitioned)
        self.store = store
        self.graph = graph
        self.asset = asset
        self.partition = partition
        self._inputs = inputs
        self._shards = verified_shards if verified_shards is not None else {}  # shared by one step's Steps

    @property
    def device(self) -> str:
        """The GPU `gmates sync` assigned to this run (run tag gmates/gpu), else `execution.device`."""
        gpu = self.context.run.tags.get(GPU_TAG)
        return f"cuda:{gpu}" if gpu is not None else self.manifest.execution.device

    @property
    def manifest_reads(self) -> set[str]:
        return self._view.reads

    def input_version(self, asset: str) -> str:
        """The data version of an input read in this step's own partition (e.g. an observed source)."""
        return self.versions[asset][self.partition or ""]

    def input(self, asset: str, partition: Optional[str] = None) -> Artifact:
        by_partition = self._inputs[asset]
        if partition is None and len(by_partition) == 1:
            return next(iter(by_partition.values()))
        return by_partition[partition]

    def inputs(self, asset: str) -> dict[Optional[str], Artifact]:
        return self._inputs[asset]

    def shards(self, asset: str) -> dict[str, Artifact]:
        """Every shard's artifact of a shard-partitioned asset, in pool order, as listed by its index (each
        checked against its content hash, once per step)."""
        if asset not in self._shards:
            index = json.loads(self.input(f"{asset}_index").file(INDEX_FILE).read_text())
            self._shards[asset] = {row["shard"]: self.store.require_verified(asset, row["content_hash"], row["shard"])
                                   for row in index["shards"]}
        return self._shards[asset]

    def verify_pool_inputs(self) -> None:
        """Check every shard behind the step's shard-index inputs now, so a corrupt one fails before compute."""
        for name in self._inputs:
            if self.graph[name].compute is write_shard_index:
                self.shards(name.removesuffix("_index"))

    def shard_rows(self, asset: str) -> dict[str, int]:
        """Documents per shard, from the index alone (no shard is opened)."""
        index = json.loads(self.input(f"{asset}_index").file(INDEX_FILE).read_text())
        return {row["shard"]: int(row["rows"]) for row in index["shards"]}

    def log(self, message: str) -> None:
        self.context.log.info(message)

    def progress(self, label: str) -> ProgressFn:
        return RateMeter(self.log, f"{self.asset}{f'[{self.partition}]' if self.partition else ''} {label}")


# ------------------------------------------------------------------------------ version resolution
def latest_data_version(instance, asset: str, partition: Optional[str], is_source: bool) -> Optional[str]:
    record = instance.get_latest_data_version_record(dg.AssetKey(asset), is_source, partition)
    if record is None:
        return None
    return record.asset_event.tags.get("dagster/data_version")


VersionLookup = Callable[[str, Optional[str], bool], Optional[str]]


def input_versions(instance, graph: AssetGraph, asset: str, partition: Optional[str],
                   lookup: Optional[VersionLookup] = None) -> dict[str, dict[str, str]]:
    """Data versions of everything `asset[partition]` reads, by input asset and partition ("" = unpartitioned).

    `lookup(asset, partition, is_source)`: where the versions come from (default: the instance; `status` passes
    its staleness resolver's cache, which already holds them)."""
    lookup = lookup or (lambda a, pk, source: latest_data_version(instance, a, pk, source))
    versions: dict[str, dict[str, str]] = {}
    for inp in graph.inputs(asset):
        is_source = graph[inp.asset].is_source
        versions[inp.asset] = {}
        for pk in graph.input_partitions(inp, partition):
            version = lookup(inp.asset, pk, is_source)
            where = f"{inp.asset}[{pk}]" if pk else inp.asset
            if version is None:
                verb = "observed" if is_source else "materialized"
                raise UpstreamMissing(f"{where} has not been {verb} yet; run `gmates sync` or materialize it first")
            versions[inp.asset][pk or ""] = version
    return versions


def input_key(instance, store: ArtifactStore, graph: AssetGraph, loaded: LoadedManifest, asset: str,
              partition: Optional[str], versions: dict) -> str:
    decl = graph[asset]
    identity = decl.identity(loaded, instance, graph) if decl.identity else {}
    if decl.key_versions:
        versions = decl.key_versions(loaded, instance, store, versions)
    return store.input_key(asset, graph.code_version(asset), {**versions, **identity}, partition)


def _artifacts(store: ArtifactStore, graph: AssetGraph, versions: dict) -> dict[str, dict[Optional[str], Artifact]]:
    out: dict[str, dict[Optional[str], Artifact]] = {}
    for asset, by_partition in versions.items():
        if graph[asset].is_source:
            continue
        out[asset] = {pk or None: store.require_verified(asset, v, pk or None) for pk, v in by_partition.items()}
    return out


def step_manifest(gm: GmatesResource, asset: str, code_version: Optional[str]) -> tuple[LoadedManifest, AssetGraph]:
    """The manifest a step builds from: exactly the one its Dagster code version was computed from. Loaded once
    per step (an edit during the step cannot reach it); an edit since the Definitions were loaded is refused,
    since Dagster would record the bytes under a code version (and the store under a key) describing others."""
    from .factory import graph_for

    loaded = gm.manifest(f"{asset} (code version {code_version})")
    graph = graph_for(loaded)
    if code_version is not None and graph.code_version(asset) != code_version:  # a resource without fingerprint
        raise ManifestChanged(
            f"{asset}: manifest {gm.manifest_path} changed on disk since these definitions were loaded (code "
            f"version {code_version}, now {graph.code_version(asset)}); reload definitions (UI: Reload) or "
            f"re-run `gmates sync`")
    return loaded, graph


def run_step(context, gm: GmatesResource, asset: str, code_version: Optional[str] = None) -> dg.MaterializeResult:
    """Reuse the stored artifact for these exact inputs, or compute and commit it; report its versions and what
    the step cost (step_seconds, cpu_seconds, peak_rss_mib: core/step_usage.py).
    `code_version`: the asset's code version in the Definitions (what Dagster records with the result)."""
    with StepUsage() as usage:
        data_version, metadata, checks = _materialize(context, gm, asset, code_version)
    return dg.MaterializeResult(data_version=data_version, metadata={**metadata, **usage.metadata()},
                                check_results=checks)


def _materialize(context, gm: GmatesResource, asset: str, code_version: Optional[str]):
    """(data version, metadata, check results) of the reused or newly built artifact."""
    loaded, graph = step_manifest(gm, asset, code_version)
    decl = graph[asset]
    store = gm.store()
    check_run_manifest(context.run.tags, loaded)  # a sync's run must not build another manifest
    partition = context.partition_key if context.has_partition_key else None
    versions = input_versions(context.instance, graph, asset, partition)
    key = input_key(context.instance, store, graph, loaded, asset, partition, versions)
    # Kept in the artifact's record (bookkeeping, outside the content hash) so a reuse shows the same.
    record: dict[str, Any] = {"code_version": graph.code_version(asset), "inputs": versions}
    computed: dict[str, Any] = {}
    shards: dict[str, dict[str, Artifact]] = {}

    @functools.cache
    def inputs() -> dict[str, dict[Optional[str], Artifact]]:  # resolved and verified once per step
        return _artifacts(store, graph, versions)

    def fill(work_dir: Path) -> None:
        step = Step(context, loaded, store, graph, asset, partition, inputs(), versions, verified_shards=shards)
        step.verify_pool_inputs()  # a corrupt input fails the step here, before any compute
        started = time.monotonic()
        computed.update(decl.compute(step, work_dir))
        _require_declared(decl, step.manifest_reads)
        if decl.finite:  # never commit NaN weights, labels or scores
            require_finite(work_dir, f"{asset}[{partition}]" if partition else asset, decl.finite)
        computed["compute_seconds"] = round(time.monotonic() - started, 3)
        computed["manifest_fields_read"] = sorted(step.manifest_reads)
        record["metadata"] = json.loads(json.dumps(computed, default=str))

    if decl.precheck:  # validation that fails before expensive work (it cannot change what is built)
        decl.precheck(Step(context, loaded, store, graph, asset, partition, inputs(), versions, record_reads=False,
                           verified_shards=shards))
    # Under the artifact's build lock: a concurrent sync building the same key is waited for, then reused.
    artifact, reused = store.get_or_build(asset, key, fill, partition, record, decl.resumable, log=context.log.info)
    if reused:
        context.log.info(f"reusing stored artifact {key[:12]} for {asset}{f'[{partition}]' if partition else ''}")
    metadata = dict(artifact.record.get("metadata", {})) if reused else computed
    checks = None
    if decl.check_fn:
        check_step = Step(context, loaded, store, graph, asset, partition, inputs(), versions, record_reads=False,
                          verified_shards=shards)
        checks = decl.check_fn(check_step, artifact)
    return dg.DataVersion(artifact.content_hash), {
        **{k: _to_dagster(v) for k, v in metadata.items()},
        "reused": reused,
        "input_key": key,
        "content_hash": artifact.content_hash,
        "artifact_path": dg.MetadataValue.path(artifact.location),
    }, checks


def _require_declared(decl, reads: set[str]) -> None:
    undeclared = undeclared_reads(reads, decl.sections)
    if undeclared:
        raise RuntimeError(
            f"{decl.name} read manifest fields outside its declared sections {list(decl.sections)}: {undeclared}. "
            f"Its cache key would ignore them; add them to the asset's declaration (AssetDecl.sections).")


def write_shard_index(step: Step, out: Path) -> dict:
    """An aggregator's artifact: every shard's content hash and row count, in pool order."""
    source = step.asset.removesuffix("_index")
    by_shard = step.inputs(source)
    rows = [{"shard": shard, "content_hash": by_shard[shard].content_hash,
             "rows": int(by_shard[shard].record.get("metadata", {}).get("dagster/row_count", 0))}
            for shard in step.graph.partition_keys(source)]
    (out / INDEX_FILE).write_text(json.dumps({"asset": source, "shards": rows}, indent=1, sort_keys=True) + "\n")
    return {"shards": len(rows), "dagster/row_count": sum(r["rows"] for r in rows)}
