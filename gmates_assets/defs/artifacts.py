"""Reading stored artifacts back, across shards in manifest order (the global document index)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import polars as pl
import zarr


def shard_order(step) -> list[str]:
    return [s.name for s in step.manifest.sources.shards]


def doc_ids(step) -> list[str]:
    out: list[str] = []
    for shard in shard_order(step):
        frame = pl.read_parquet(step.input("documents", shard).file("documents.parquet"), columns=["doc_id"])
        out.extend(frame["doc_id"].to_list())
    return out


def token_lists(step, shards: Sequence[str] | None = None) -> list[np.ndarray]:
    from ..core.tokenize import read_ragged_zarr

    out: list[np.ndarray] = []
    for shard in shards or shard_order(step):
        values, offsets = read_ragged_zarr(step.input("tokenized_pool", shard).path)
        out.extend(values[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1))
    return out


@dataclass
class ShardRows:
    """Global document index -> (shard, row) through cumulative shard sizes."""

    shards: list[str]
    starts: np.ndarray

    def locate(self, global_index: np.ndarray) -> list[tuple[str, np.ndarray, np.ndarray]]:
        """[(shard, positions in the request, rows within the shard)] for a set of global indices."""
        shard_of = np.searchsorted(self.starts, global_index, side="right") - 1
        out = []
        for s, shard in enumerate(self.shards):
            positions = np.nonzero(shard_of == s)[0]
            if positions.size:
                out.append((shard, positions, global_index[positions] - self.starts[s]))
        return out


def shard_rows(step, asset: str = "embeddings") -> ShardRows:
    sizes = [_zarr_rows(step, asset, shard) for shard in shard_order(step)]
    return ShardRows(shard_order(step), np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64))


def _zarr_group(step, asset: str, shard: str):
    name = {"embeddings": "embeddings.zarr", "influence_scores": "scores.zarr"}[asset]
    return zarr.open_group(str(step.input(asset, shard).file(name)), mode="r")


def _zarr_rows(step, asset: str, shard: str) -> int:
    group = _zarr_group(step, asset, shard)
    return int(group["pooled" if asset == "embeddings" else "s"].shape[0])


def gather_embeddings(step, global_index: np.ndarray, arrays=("chunks", "chunk_mask")) -> dict[str, np.ndarray]:
    """Rows of the embeddings arrays for these global document indices, in request order."""
    rows = shard_rows(step)
    out: dict[str, np.ndarray] = {}
    for shard, positions, local in rows.locate(np.asarray(global_index, dtype=np.int64)):
        group = _zarr_group(step, "embeddings", shard)
        order = np.argsort(local, kind="stable")
        for name in arrays:
            block = group[name].oindex[local[order]] if len(local) else None
            if name not in out:
                out[name] = np.zeros((len(global_index),) + group[name].shape[1:], dtype=group[name].dtype)
            out[name][positions[order]] = block
    return out


def read_all(step, asset: str, name: str) -> np.ndarray:
    """One array concatenated over all shards (e.g. influence_scores `h`, embeddings `pooled`)."""
    return np.concatenate([np.asarray(_zarr_group(step, asset, shard)[name][...]) for shard in shard_order(step)])
