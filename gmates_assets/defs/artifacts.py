"""Reading stored shard artifacts back across the pool, in pool order (the global document index)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import polars as pl
import zarr

ZARR_NAMES = {"embeddings": "embeddings.zarr", "influence_scores": "scores.zarr"}


def doc_ids(step) -> list[str]:
    out: list[str] = []
    for artifact in step.shards("documents").values():
        out.extend(pl.read_parquet(artifact.file("documents.parquet"), columns=["doc_id"])["doc_id"].to_list())
    return out


def iter_token_shards(step) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """(shard, values, offsets) of the tokenized pool, one shard at a time."""
    from ..core.tokenize import read_ragged_zarr

    for shard, artifact in step.shards("tokenized_pool").items():
        values, offsets = read_ragged_zarr(artifact.path)
        yield shard, values, offsets


def token_lists(step) -> list[np.ndarray]:
    out: list[np.ndarray] = []
    for _, values, offsets in iter_token_shards(step):
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
    sizes = step.shard_rows(asset)
    return ShardRows(list(sizes), np.concatenate([[0], np.cumsum(list(sizes.values()))[:-1]]).astype(np.int64))


def zarr_group(artifact, asset: str):
    return zarr.open_group(str(artifact.file(ZARR_NAMES[asset])), mode="r")


def gather_embeddings(step, global_index: np.ndarray, arrays=("chunks", "chunk_mask")) -> dict[str, np.ndarray]:
    """Rows of the embeddings arrays for these global document indices, in request order."""
    rows = shard_rows(step)
    shards = step.shards("embeddings")
    out: dict[str, np.ndarray] = {}
    for shard, positions, local in rows.locate(np.asarray(global_index, dtype=np.int64)):
        group = zarr_group(shards[shard], "embeddings")
        order = np.argsort(local, kind="stable")
        for name in arrays:
            block = group[name].oindex[local[order]]
            if name not in out:
                out[name] = np.zeros((len(global_index),) + group[name].shape[1:], dtype=group[name].dtype)
            out[name][positions[order]] = block
    return out


def read_all(step, asset: str, name: str) -> np.ndarray:
    """One array concatenated over all shards (e.g. influence_scores `h`, embeddings `pooled`)."""
    return np.concatenate([np.asarray(zarr_group(a, asset)[name][...]) for a in step.shards(asset).values()])
