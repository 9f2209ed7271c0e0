"""The artifact a manifest's current build has for an asset (e.g. the release `gmates release export` copies).

Dagster's latest materialization is whatever was built last on this DAGSTER_HOME, perhaps from another
manifest. The artifact that belongs to a manifest is found instead by its input key: every asset partition it
depends on must be fresh for that manifest, and then the key computed from their data versions (and the
manifest's code versions) names exactly one stored artifact.
"""
from __future__ import annotations

import dagster as dg

from ..core.store import Artifact
from .factory import graph_for
from .runtime import input_key, input_versions
from .sync import FRESH, MISSING, asset_statuses


class NotCurrent(RuntimeError):
    pass


def current_artifact(defs: dg.Definitions, instance: dg.DagsterInstance, asset: str, manifest: str,
                     observe: bool = True) -> Artifact:
    """The stored, verified artifact of `asset` built from exactly what `manifest` builds now; NotCurrent (with
    what is not fresh) when it is stale or was never built. `observe=False`: the sources' current hashes are
    compared in memory (read-only, as `gmates status`), e.g. right after a sync that observed them."""
    gm = defs.resources["gmates"]
    loaded, store = gm.manifest(), gm.store()
    graph = graph_for(loaded)
    needed = graph.ancestors(asset) | {asset}
    behind = [s for s in asset_statuses(defs, instance, needed, observe=observe, current_sources=not observe)
              if s.status != FRESH]
    upstream = [s for s in behind if s.asset != asset]
    artifact = None
    if not upstream:
        versions = input_versions(instance, graph, asset, None)
        artifact = store.get(asset, input_key(instance, store, graph, loaded, asset, None, versions))
    if artifact is None:
        state = "not built" if all(s.status == MISSING for s in behind) else "stale"
        causes = [f"{s.asset}[{s.partition}]" if s.partition else s.asset for s in behind]
        detail = f" ({len(causes)} asset partition(s) not fresh: {', '.join(causes[:5])}" \
                 f"{', …' if len(causes) > 5 else ''})" if causes else ""
        raise NotCurrent(f"the {asset.replace('_', ' ')} of {manifest} is {state}{detail}; run "
                         f"`gmates sync -m {manifest}` first (nothing was exported)")
    store.verify_on_read(artifact)
    return artifact
