"""The build manifest and the artifact store, as one Dagster resource."""
from __future__ import annotations

import os
from functools import lru_cache

import dagster as dg

from ..core.manifest import LoadedManifest, load_manifest
from ..core.store import ArtifactStore, store_root_from_env


@lru_cache(maxsize=8)
def _load_cached(path: str, mtime_ns: int) -> LoadedManifest:
    return load_manifest(path)


class GmatesResource(dg.ConfigurableResource):
    """`manifest_path`: the build manifest; `home`: the store root (empty = $GMATES_HOME or .gmates/)."""

    manifest_path: str
    home: str = ""

    def manifest(self) -> LoadedManifest:
        return _load_cached(self.manifest_path, os.stat(self.manifest_path).st_mtime_ns)

    def store(self) -> ArtifactStore:
        return ArtifactStore(self.home or store_root_from_env())
