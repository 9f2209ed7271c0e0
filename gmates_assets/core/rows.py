"""Row access to data too large to hold in memory: per-shard arrays seen as one pool-order array, row files.

`ConcatRows` is an [n, ...] array over the per-shard arrays of a pool (zarr arrays or numpy), in pool order,
that reads only what is asked for: `x[a:b]` (a block of rows) and `x[index_array]` (rows in request order).
The clustering and selection code index h through it exactly as they index a numpy array, so they stream.

`RowFile` is an [m, d] array in a raw file, written in an order of our choosing (e.g. cluster member order,
so that one cluster is one contiguous read) and read by plain file reads: no memory map, so reading every row
once never leaves the whole file resident in the process.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq


class ShardLayout:
    """Global document index <-> (shard, row) through the cumulative shard sizes."""

    def __init__(self, sizes: Sequence[int]):
        self.sizes = np.asarray(sizes, dtype=np.int64).reshape(-1)
        self.starts = np.concatenate([[0], np.cumsum(self.sizes)[:-1]]).astype(np.int64)
        self.n = int(self.sizes.sum())

    def shard_of(self, global_index: np.ndarray) -> np.ndarray:
        """The shard number of each global index in [0, n)."""
        index = np.asarray(global_index, dtype=np.int64).reshape(-1)
        if index.size and (index.min() < 0 or index.max() >= self.n):
            raise IndexError(f"document index out of range [0, {self.n})")
        return np.searchsorted(self.starts, index, side="right") - 1

    def locate(self, global_index: np.ndarray) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """[(shard, positions in the request, rows within the shard)] for global indices in [0, n)."""
        index = np.asarray(global_index, dtype=np.int64).reshape(-1)
        shard_of = self.shard_of(index)
        # One stable sort groups the request by shard: O(n log n) however many shards the pool has.
        order = np.argsort(shard_of, kind="stable")
        shards, first = np.unique(shard_of[order], return_index=True)
        out = []
        for shard, positions in zip(shards, np.split(order, first[1:])):
            out.append((int(shard), positions, index[positions] - self.starts[shard]))
        return out


def _take(part, rows: np.ndarray) -> np.ndarray:
    """Rows of a numpy or zarr array (zarr reads only the chunks that hold them)."""
    return np.asarray(part.oindex[rows] if hasattr(part, "oindex") else part[rows])


class ConcatRows:
    """Per-shard arrays with equal trailing shape as one read-only [n, ...] array, read on demand."""

    def __init__(self, parts: Sequence):
        if not parts:
            raise ValueError("ConcatRows needs at least one part")
        self.parts = list(parts)
        tail = tuple(self.parts[0].shape[1:])
        for i, part in enumerate(self.parts):
            if tuple(part.shape[1:]) != tail:
                raise ValueError(f"part {i} has row shape {tuple(part.shape[1:])}, part 0 has {tail}")
        self.layout = ShardLayout([part.shape[0] for part in self.parts])
        self.shape = (self.layout.n,) + tail
        self.ndim = len(self.shape)
        self.dtype = np.dtype(self.parts[0].dtype)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, slice):
            return self._block(key)
        index = np.asarray(key)
        if index.ndim != 1 or not (np.issubdtype(index.dtype, np.integer) or index.size == 0):
            raise TypeError("ConcatRows supports x[a:b] and x[1-d integer array]")
        out = np.empty((index.size,) + self.shape[1:], dtype=self.dtype)
        for shard, positions, local in self.layout.locate(index):
            order = np.argsort(local, kind="stable")  # ascending reads: chunk locality
            out[positions[order]] = _take(self.parts[shard], local[order])
        return out

    def _block(self, key: slice) -> np.ndarray:
        start, stop, step = key.indices(self.shape[0])
        if step != 1:
            raise TypeError("ConcatRows slices take no step")
        out = np.empty((max(0, stop - start),) + self.shape[1:], dtype=self.dtype)
        for shard, (first, size) in enumerate(zip(self.layout.starts, self.layout.sizes)):
            lo, hi = max(start, first), min(stop, first + size)
            if lo < hi:
                out[lo - start:hi - start] = self.parts[shard][lo - first:hi - first]
        return out


class RowFile:
    """An [m, d] array stored row-major in a raw file, read by plain file reads of the rows asked for."""

    def __init__(self, path: str | os.PathLike, shape: tuple[int, int], dtype):
        self.path = Path(path)
        self.shape = (int(shape[0]), int(shape[1]))
        self.ndim = 2
        self.dtype = np.dtype(dtype)
        self._row_bytes = self.shape[1] * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    @classmethod
    def write_permuted(cls, path: str | os.PathLike, x, order: np.ndarray, block_rows: int = 8192) -> RowFile:
        """Rows x[order[0]], x[order[1]], ... in a new file, reading x in pool-order blocks of block_rows.

        Each block is scattered into the file through a memory map that is closed right after, so at most
        one block's pages are mapped at a time. Rows of x that `order` leaves out are not written.
        """
        order = np.asarray(order, dtype=np.int64).reshape(-1)
        n, d = x.shape
        position = np.full(n, -1, dtype=np.int64)
        position[order] = np.arange(order.size, dtype=np.int64)
        out = cls(path, (order.size, d), x.dtype)
        with open(out.path, "wb") as handle:
            handle.truncate(order.size * out._row_bytes)
        for start in range(0, n if order.size else 0, block_rows):
            dest = position[start:start + block_rows]
            keep = dest >= 0
            if keep.any():
                block = np.asarray(x[start:start + dest.size], dtype=out.dtype)
                target = np.memmap(out.path, dtype=out.dtype, mode="r+", shape=out.shape)
                target[dest[keep]] = block[keep]
                target.flush()
                del target
        return out

    def __getitem__(self, key) -> np.ndarray:
        """x[a:b] or x[index array]: one read per run of consecutive rows (a cluster's rows are one run)."""
        with open(self.path, "rb") as handle:
            if isinstance(key, slice):
                start, stop, step = key.indices(self.shape[0])
                if step != 1:
                    raise TypeError("RowFile slices take no step")
                return self._span(handle, start, max(start, stop))
            index = np.asarray(key, dtype=np.int64).reshape(-1)
            if index.size and (index.min() < 0 or index.max() >= self.shape[0]):
                raise IndexError(f"row index out of range [0, {self.shape[0]})")
            wanted, inverse = np.unique(index, return_inverse=True)
            runs = np.split(wanted, np.flatnonzero(np.diff(wanted) != 1) + 1) if wanted.size else []
            blocks = [self._span(handle, int(run[0]), int(run[-1]) + 1) for run in runs]
        rows = np.concatenate(blocks) if blocks else np.empty((0, self.shape[1]), dtype=self.dtype)
        return rows[inverse.reshape(-1)]

    def _span(self, handle, start: int, stop: int) -> np.ndarray:
        count = (stop - start) * self.shape[1]
        handle.seek(start * self._row_bytes)
        data = np.fromfile(handle, dtype=self.dtype, count=count)
        if data.size != count:
            raise OSError(f"{self.path}: short read at rows [{start}, {stop})")
        return data.reshape(stop - start, self.shape[1])


def compact(series: pl.Series) -> pl.Series:
    """A copy that owns just its values: polars' gather, filter and sort of strings keep views into the whole
    source buffer (e.g. a shard's entire text column), which would keep every shard read alive."""
    return pl.Series(series.name, series.to_list(), dtype=series.dtype)


class ParquetColumn:
    """One column of per-shard parquet files (in pool order) as one sequence, read one shard at a time."""

    def __init__(self, paths: Sequence[str | os.PathLike], column: str):
        self.paths = [Path(p) for p in paths]
        self.column = column
        self.layout = ShardLayout([pq.ParquetFile(p).metadata.num_rows for p in self.paths])

    def __len__(self) -> int:
        return self.layout.n

    def shard(self, i: int) -> pl.Series:
        return pl.read_parquet(self.paths[i], columns=[self.column])[self.column]

    def scan(self) -> pl.LazyFrame:
        """The whole column as a lazy frame (for polars' streaming sinks)."""
        return pl.concat([pl.scan_parquet(p).select(self.column) for p in self.paths])

    def __getitem__(self, index) -> pl.Series:
        """Values at these global row indices, in request order."""
        located = self.layout.locate(index)
        if not located:
            return self.scan().head(0).collect()[self.column]
        values = pl.concat([compact(self.shard(shard).gather(local)) for shard, _, local in located])
        return values.gather(np.argsort(np.concatenate([positions for _, positions, _ in located])))

    def find(self, values: pl.Series) -> np.ndarray:
        """Sorted global indices of the rows whose value is one of `values`."""
        wanted = SortedValues(values)
        found = [np.empty(0, dtype=np.int64)]
        for shard, start in enumerate(self.layout.starts):
            found.append(start + np.flatnonzero(wanted.contains(self.shard(shard))))
        return np.concatenate(found)

    def contains(self, values: pl.Series) -> np.ndarray:
        """For each of `values`, whether the column holds it (bool [len(values)])."""
        wanted = SortedValues(values)
        if len(wanted.values) == 0:  # nothing but nulls (or nothing) asked for
            return np.zeros(len(values), dtype=bool)
        seen = np.zeros(len(wanted.values), dtype=bool)
        for shard in range(len(self.paths)):
            column = self.shard(shard)
            seen[wanted.positions(column)[wanted.contains(column)]] = True
        return seen[wanted.positions(values)] & values.is_not_null().to_numpy()


class SortedValues:
    """A set of values sorted once, for membership by binary search (polars' search_sorted, in Rust).

    `is_in` rebuilds a hash set of the values for every shard it is asked about: a million selected ids over
    128 shards meant 128 million inserts. Sorting once makes each shard's lookups O(rows log values).
    """

    def __init__(self, values: pl.Series):
        self.values = values.drop_nulls().unique().sort()

    def positions(self, queries: pl.Series) -> np.ndarray:
        """Where each query would sit in the sorted values (clipped to a valid index)."""
        at = self.values.search_sorted(queries.cast(self.values.dtype), side="left").to_numpy().astype(np.int64)
        return np.minimum(at, max(len(self.values) - 1, 0))

    def contains(self, queries: pl.Series) -> np.ndarray:
        if len(self.values) == 0 or len(queries) == 0:
            return np.zeros(len(queries), dtype=bool)
        queries = queries.cast(self.values.dtype)
        hit = self.values.gather(self.positions(queries)) == queries
        return hit.fill_null(False).to_numpy()
