"""`probe.pool: frozen`: the probe pool and the warm-up documents stay those of the last build as the pool grows.

A frozen asset records which documents it read (shard, doc_id) in its artifact. When it is asked to build again
and every shard holding those documents still has the content it had at the last build, its cache key is made
from the shard indexes recorded then: the key is the last build's, so the store hands that artifact back (reused,
nothing computed) and its data version, hence the oracles and models downstream, stay as they were. Appending a
shard therefore costs the probe nothing; editing a shard that holds a frozen document rebuilds from the same ids.
"""
from __future__ import annotations

import json
from typing import Optional

import polars as pl

from ..core.store import Artifact, ArtifactStore
from .runtime import INDEX_FILE, latest_data_version

FROZEN_DOCS_FILE = "frozen_docs.parquet"  # (shard, doc_id): the documents a frozen asset read


def is_frozen(manifest) -> bool:
    return manifest.probe.pool == "frozen"


def previous_artifact(instance, store: ArtifactStore, asset: str) -> Optional[Artifact]:
    """The artifact of the asset's latest materialization, if the store still has it."""
    version = latest_data_version(instance, asset, None, False)
    return store.by_content(asset, version) if version else None


def previous_docs(instance, store: ArtifactStore, asset: str) -> Optional[pl.DataFrame]:
    """(shard, doc_id) the last build of a frozen asset read; None before the first build."""
    prev = previous_artifact(instance, store, asset)
    if prev is None or not prev.file(FROZEN_DOCS_FILE).exists():
        return None
    return pl.read_parquet(prev.file(FROZEN_DOCS_FILE))


def write_frozen_docs(out, shards: list[str], doc_ids: list[str]) -> None:
    pl.DataFrame({"shard": shards, "doc_id": doc_ids}, schema={"shard": pl.String, "doc_id": pl.String}
                 ).write_parquet(out / FROZEN_DOCS_FILE)


def _shard_hashes(store: ArtifactStore, index_asset: str, version: str) -> dict[str, str]:
    index = json.loads(store.require_by_content(index_asset, version).file(INDEX_FILE).read_text())
    return {row["shard"]: row["content_hash"] for row in index["shards"]}


def frozen_key_versions(loaded, instance, store: ArtifactStore, asset: str, versions: dict) -> dict:
    """The input versions a frozen asset's cache key uses (see the module docstring); `versions` otherwise."""
    if not is_frozen(loaded.manifest):
        return versions
    prev = previous_artifact(instance, store, asset)
    if prev is None or not prev.file(FROZEN_DOCS_FILE).exists():
        return versions
    then = prev.record.get("inputs", {})
    used = set(pl.read_parquet(prev.file(FROZEN_DOCS_FILE))["shard"].unique().to_list())
    indexes = [name for name in versions if name.endswith("_index")]
    for name in indexes:
        if name not in then:
            return versions
        now_hashes = _shard_hashes(store, name, versions[name][""])
        then_hashes = _shard_hashes(store, name, then[name][""])
        if any(now_hashes.get(shard) != then_hashes.get(shard) for shard in used):
            return versions  # a frozen document's shard changed: build again (from the same ids)
    return {**versions, **{name: then[name] for name in indexes}}
