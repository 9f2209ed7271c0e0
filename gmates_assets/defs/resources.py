"""The build manifest and the artifact store, as one Dagster resource."""
from __future__ import annotations

import os
from functools import lru_cache
from typing import Optional

import dagster as dg

from ..core.manifest import LoadedManifest, Manifest, fingerprint, load_manifest
from ..core.store import ArtifactStore, store_root_from_env


class ManifestChanged(RuntimeError):
    """The manifest on disk is not the one the Definitions (and so the code versions Dagster records) were
    built from; a step must not build from it."""


@lru_cache(maxsize=8)
def _load_cached(path: str, mtime_ns: int, size: int) -> tuple[LoadedManifest, str]:
    loaded = load_manifest(path)
    return loaded, manifest_fingerprint(loaded.manifest)


def manifest_fingerprint(manifest: Manifest) -> str:
    """Hash of every field that can change a result (volatile fields and formatting do not count)."""
    return fingerprint(manifest, *Manifest.model_fields)


def changed_since_load(path: str, loaded_fingerprint: str) -> Optional[str]:
    """Why the manifest at `path` no longer matches `loaded_fingerprint` (None when it still does)."""
    if not loaded_fingerprint:
        return None
    try:
        current = _load(path)[1]
    except Exception as exc:  # unreadable or invalid now: certainly not what the definitions were built from
        current = f"unloadable ({exc})"
    if current == loaded_fingerprint:
        return None
    return (f"manifest {path} changed on disk since these definitions were loaded (fingerprint "
            f"{loaded_fingerprint[:12]}, now {current[:12]}); reload definitions (UI: Reload) or re-run "
            f"`gmates sync`")


def _load(path: str) -> tuple[LoadedManifest, str]:
    stat = os.stat(path)
    return _load_cached(path, stat.st_mtime_ns, stat.st_size)


class GmatesResource(dg.ConfigurableResource):
    """`manifest_path`: the build manifest; `home`: the store root (empty = $GMATES_HOME or .gmates/);
    `manifest_fingerprint`: the manifest's fingerprint when the Definitions were built (empty = unchecked)."""

    manifest_path: str
    home: str = ""
    manifest_fingerprint: str = ""

    def manifest(self, reader: str = "") -> LoadedManifest:
        """The manifest, refused (ManifestChanged) if it is not the one these Definitions were built from:
        code versions were computed from that one, and a step building from another would record bytes under
        a version that does not describe them. `reader` (e.g. 'eval_scores code version X') names the asker."""
        loaded, current = _load(self.manifest_path)
        if self.manifest_fingerprint and current != self.manifest_fingerprint:
            reason = changed_since_load(self.manifest_path, self.manifest_fingerprint) or "manifest changed"
            raise ManifestChanged(f"{reader}: {reason}" if reader else reason)
        return loaded

    def store(self) -> ArtifactStore:
        return ArtifactStore(self.home or store_root_from_env())
