"""Partition definitions, derived from the manifest: pool shards, oracle seeds, selection methods."""
from __future__ import annotations

from dataclasses import dataclass

import dagster as dg

from ..core.manifest import Manifest


@dataclass(frozen=True)
class Partitions:
    shards: dg.StaticPartitionsDefinition
    seeds: dg.StaticPartitionsDefinition
    methods: dg.StaticPartitionsDefinition


def seed_key(seed: int) -> str:
    return f"seed{seed}"


def seed_from_key(key: str) -> int:
    return int(key.removeprefix("seed"))


def partitions_for(manifest: Manifest) -> Partitions:
    return Partitions(
        shards=dg.StaticPartitionsDefinition([s.name for s in manifest.sources.shards]),
        seeds=dg.StaticPartitionsDefinition([seed_key(s) for s in manifest.oracle.seeds]),
        methods=dg.StaticPartitionsDefinition(list(manifest.selection.methods)),
    )


SHARD_ASSETS = {"pool_source", "documents", "tokenized_pool", "embeddings", "influence_scores"}
SEED_ASSETS = {"oracle_random", "oracle_bootstrap"}
METHOD_ASSETS = {"selected_subset", "pretrained_checkpoint", "eval_scores"}


def partition_keys_of(manifest: Manifest, asset: str) -> list[str]:
    """All partition keys of a partitioned asset (the same lists `partitions_for` builds)."""
    if asset in SHARD_ASSETS:
        return [s.name for s in manifest.sources.shards]
    if asset in SEED_ASSETS:
        return [seed_key(s) for s in manifest.oracle.seeds]
    if asset in METHOD_ASSETS:
        return list(manifest.selection.methods)
    raise KeyError(f"{asset} is not partitioned")
