"""Reading stored shard artifacts back across the pool, in pool order (the global document index).

Whole-pool steps see the pool through these views, which read one shard (or the rows asked for) at a time, so
no step holds the pool's documents, tokens or vectors (core/rows.py, core/tokenize.RaggedShards).
"""
from __future__ import annotations

import numpy as np
import zarr

from ..core.rows import ConcatRows, ParquetColumn
from ..core.tokenize import RaggedShards

ZARR_NAMES = {"embeddings": "embeddings.zarr", "influence_scores": "scores.zarr"}
DOCUMENTS_FILE = "documents.parquet"


def documents_column(step, column: str) -> ParquetColumn:
    """One column of the pool's documents (doc_id, text, ...), read shard by shard."""
    return ParquetColumn([a.file(DOCUMENTS_FILE) for a in step.shards("documents").values()], column)


def pool_tokens(step) -> RaggedShards:
    return RaggedShards([a.path for a in step.shards("tokenized_pool").values()])


def zarr_group(artifact, asset: str):
    return zarr.open_group(str(artifact.file(ZARR_NAMES[asset])), mode="r")


def pool_rows(step, asset: str, name: str) -> ConcatRows:
    """One zarr array over all shards (e.g. influence_scores `h`, embeddings `pooled`), read on demand."""
    return ConcatRows([zarr_group(a, asset)[name] for a in step.shards(asset).values()])


def gather_embeddings(step, global_index: np.ndarray, arrays=("chunks", "chunk_mask")) -> dict[str, np.ndarray]:
    """Rows of the embeddings arrays for these global document indices, in request order."""
    index = np.asarray(global_index, dtype=np.int64)
    return {name: pool_rows(step, "embeddings", name)[index] for name in arrays}
