"""`status` of an interrupted resumable step: 'partial: 112/128 rollouts done, a re-run resumes'.

A resumable step (embeddings, oracle rollouts, training) keeps its finished chunks in the store's work directory
for its input key (`.partial-<key>`). If the key a build would use now has such a directory, a re-run continues
from it; status says so instead of 'missing'.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Optional

import dagster as dg

from ..core.progress import partial_progress
from .factory import graph_for
from .runtime import UpstreamMissing, input_key, input_versions

PARTIAL = "partial"


def _partial_dir(defs: dg.Definitions, instance, name: str, partition: Optional[str], lookup):
    gm = (defs.resources or {}).get("gmates")
    if gm is None:
        return None
    loaded = gm.manifest()
    graph = graph_for(loaded)
    if name not in graph.decls or not graph[name].resumable:
        return None
    store = gm.store()
    if not any(store.partial_dir(name, "").parent.glob(".partial-*")):  # the common case: no key to compute
        return None
    try:
        key = input_key(instance, store, graph, loaded, name, partition,
                        input_versions(instance, graph, name, partition, lookup))
    except UpstreamMissing:
        return None
    work = store.partial_dir(name, key)
    return work if work.is_dir() and any(work.iterdir()) else None


def with_partial(defs: dg.Definitions, instance, status, lookup=None):
    """`status` (a PartitionStatus that is not fresh) as PARTIAL when its step has resumable work for the
    key a build would use now."""
    work = _partial_dir(defs, instance, status.asset, status.partition, lookup)
    if work is None:
        return status
    done = partial_progress(work) or f"unfinished work in {work}"
    return replace(status, status=PARTIAL, causes=(f"{done}, a re-run resumes",) + status.causes)
