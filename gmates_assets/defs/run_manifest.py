"""A launched run builds exactly the manifest its `gmates sync` named, or fails at its first step saying so.

With `execution.launcher: instance` a run executes in a process the sync does not start (the daemon's code
server, a Kubernetes job, a Celery worker), which loads the Definitions of *its* $GMATES_MANIFEST. The sync tags
each run with its manifest's path and content hash; every step compares them with the manifest it loaded.
"""
from __future__ import annotations

import hashlib
from collections.abc import Mapping

MANIFEST_TAG = "gmates/manifest"
MANIFEST_HASH_TAG = "gmates/manifest_sha256"


class ManifestMismatch(RuntimeError):
    pass


def manifest_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def manifest_tags(path: str, text: str) -> dict[str, str]:
    return {MANIFEST_TAG: path, MANIFEST_HASH_TAG: manifest_digest(text)}


def check_run_manifest(tags: Mapping[str, str], loaded) -> None:
    """Raise ManifestMismatch when the run was submitted for another manifest than the one loaded here."""
    wanted = tags.get(MANIFEST_HASH_TAG)
    have = manifest_digest(loaded.text)
    if wanted is None or wanted == have:  # not a sync's run (the UI, the sensor), or the same manifest
        return
    raise ManifestMismatch(
        f"this run was submitted by `gmates sync --manifest {tags.get(MANIFEST_TAG, '?')}` (sha256 {wanted[:12]}), "
        f"but the process executing it loaded {loaded.path} (sha256 {have[:12]}) from its $GMATES_MANIFEST; "
        f"nothing was built. Start the daemon, code server or workers with GMATES_MANIFEST naming the same "
        f"manifest as the sync (docs/deployment.md), then run the sync again.")
