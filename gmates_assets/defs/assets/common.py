"""Declarations shared by the stage modules."""
from __future__ import annotations

from ..declare import AssetDecl, Input
from ..runtime import write_shard_index


def shard_index(asset: str, group: str) -> AssetDecl:
    """`<asset>_index`: the aggregator every whole-pool reader depends on instead of the shards themselves.

    Its content is each shard's content hash, so its data version changes exactly when a shard's does. Dagster
    carries staleness across an edge from 100 or more partitions only through such an unpartitioned asset
    (its own staleness is checked by `sync` from the recorded input key), so edits propagate at any shard count.
    """
    return AssetDecl(
        f"{asset}_index", group,
        f"Every shard's {asset} artifact (content hash, rows) in pool order: what whole-pool steps read.",
        compute=write_shard_index, inputs=(Input(asset, "all"),), kinds=frozenset({"json"}))
