"""The one code path every asset runs through: resolve inputs, reuse or build, report versions.

1. Upstream artifacts are found by the data versions Dagster recorded for them (= their content hashes).
2. input_key = hash(asset, code version, partition, those content hashes); a stored artifact with that key is
   reused without computing (metadata `reused: true`), which makes re-runs and reverted edits nearly free.
3. Otherwise the compute function fills a work directory that the store commits atomically.
4. The materialization reports data_version = content hash, so identical bytes leave downstream fresh.
"""
from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import dagster as dg

from ..core.manifest import LoadedManifest
from ..core.progress import ProgressFn, RateMeter
from ..core.store import Artifact, ArtifactStore
from .partitions import partition_keys_of
from .resources import GmatesResource
from .versioning import code_version


class UpstreamMissing(RuntimeError):
    pass


@dataclass(frozen=True)
class Dep:
    """An upstream asset. `partitions`: "same" (identity), "all", a list of keys, or None (unpartitioned)."""

    asset: str
    partitions: Any = None
    source: bool = False


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
    """What a compute function sees: manifest, store, resolved inputs, logging and progress."""

    def __init__(self, context, gm: GmatesResource, asset: str, inputs: dict[str, dict[Optional[str], Artifact]]):
        self.context = context
        self.loaded: LoadedManifest = gm.manifest()
        self.manifest = self.loaded.manifest
        self.store: ArtifactStore = gm.store()
        self.asset = asset
        self.partition: Optional[str] = context.partition_key if context.has_partition_key else None
        self._inputs = inputs

    def input(self, asset: str, partition: Optional[str] = None) -> Artifact:
        by_partition = self._inputs[asset]
        if partition is None and len(by_partition) == 1:
            return next(iter(by_partition.values()))
        return by_partition[partition]

    def inputs(self, asset: str) -> dict[Optional[str], Artifact]:
        return self._inputs[asset]

    def log(self, message: str) -> None:
        self.context.log.info(message)

    def progress(self, label: str) -> ProgressFn:
        return RateMeter(self.log, f"{self.asset}{f'[{self.partition}]' if self.partition else ''} {label}")


# ------------------------------------------------------------------------------ version resolution
def _latest_data_version(instance, asset: str, partition: Optional[str], is_source: bool) -> Optional[str]:
    record = instance.get_latest_data_version_record(dg.AssetKey(asset), is_source, partition)
    if record is None:
        return None
    return record.asset_event.tags.get("dagster/data_version")


def _dep_partitions(dep: Dep, own_partition: Optional[str], manifest) -> list[Optional[str]]:
    if dep.partitions is None:
        return [None]
    if dep.partitions == "same":
        return [own_partition]
    if dep.partitions == "all":
        return list(partition_keys_of(manifest, dep.asset))
    return list(dep.partitions)


def resolve_inputs(context, store: ArtifactStore, deps: Sequence[Dep], partition: Optional[str], manifest):
    """-> (content hashes by dep and partition for the key, artifacts by dep and partition)."""
    versions: dict[str, dict[str, str]] = {}
    artifacts: dict[str, dict[Optional[str], Artifact]] = {}
    for dep in deps:
        versions[dep.asset], artifacts[dep.asset] = {}, {}
        for pk in _dep_partitions(dep, partition, manifest):
            version = _latest_data_version(context.instance, dep.asset, pk, dep.source)
            where = f"{dep.asset}[{pk}]" if pk else dep.asset
            if version is None:
                verb = "observed" if dep.source else "materialized"
                raise UpstreamMissing(f"{where} has not been {verb} yet; run `gmates sync` or materialize it first")
            versions[dep.asset][pk or ""] = version
            if not dep.source:
                artifacts[dep.asset][pk] = store.require_by_content(dep.asset, version, pk)
    return versions, artifacts


def run_step(
    context,
    gm: GmatesResource,
    asset: str,
    deps: Sequence[Dep],
    compute: Callable[[Step, Path], dict[str, Any]],
    resumable: bool = False,
    extra_key: Optional[dict] = None,
    checks: Optional[Callable[[Artifact], list]] = None,
) -> dg.MaterializeResult:
    """Reuse the stored artifact for these exact inputs, or compute and commit it; report its versions.

    `extra_key`: input identities that are not Dagster assets (e.g. a source file's hash computed now).
    `checks`: asset checks evaluated on the stored artifact, so they run on a reuse too.
    """
    store = gm.store()
    manifest = gm.manifest().manifest
    partition = context.partition_key if context.has_partition_key else None
    version = code_version(manifest, asset)
    input_versions, artifacts = resolve_inputs(context, store, deps, partition, manifest)
    key = store.input_key(asset, version, {**input_versions, **(extra_key or {})}, partition)
    # Kept in the artifact's record (bookkeeping, outside the content hash) so a reuse shows the same.
    record: dict[str, Any] = {"code_version": version, "inputs": input_versions}
    computed: dict[str, Any] = {}

    def fill(work_dir: Path) -> None:
        started = time.monotonic()
        computed.update(compute(Step(context, gm, asset, artifacts), work_dir))
        computed["compute_seconds"] = round(time.monotonic() - started, 3)
        record["metadata"] = json.loads(json.dumps(computed, default=str))

    # Under the artifact's build lock: a concurrent sync building the same key is waited for, then reused.
    artifact, reused = store.get_or_build(asset, key, fill, partition, record, resumable, log=context.log.info)
    if reused:
        context.log.info(f"reusing stored artifact {key[:12]} for {asset}{f'[{partition}]' if partition else ''}")
    metadata = dict(artifact.record.get("metadata", {})) if reused else computed
    return dg.MaterializeResult(
        data_version=dg.DataVersion(artifact.content_hash),
        metadata={
            **{k: _to_dagster(v) for k, v in metadata.items()},
            "reused": reused,
            "input_key": key,
            "content_hash": artifact.content_hash,
            "artifact_path": dg.MetadataValue.path(artifact.location),
        },
        check_results=checks(artifact) if checks else None,
    )

