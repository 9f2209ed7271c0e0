"""Row views that let whole-pool steps stream: per-shard arrays as one array, row files, parquet columns,
and the selection and clustering that read h through them (same results as on the in-memory array)."""
from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import zarr

from gmates_assets.core import methods
from gmates_assets.core import selection as sel
from gmates_assets.core.rows import ConcatRows, ParquetColumn, RowFile, ShardLayout, SortedValues

SIZES = (7, 0, 12, 5, 9)


def zarr_parts(tmp_path, x: np.ndarray, sizes=SIZES, chunk: int = 4):
    parts, start = [], 0
    for i, size in enumerate(sizes):
        group = zarr.open_group(str(tmp_path / f"shard{i}.zarr"), mode="w")
        part = x[start:start + size]
        array = group.create_array("x", shape=part.shape, dtype=part.dtype, chunks=(chunk,) + part.shape[1:])
        if size:
            array[...] = part
        parts.append(array)
        start += size
    return parts


@pytest.fixture
def matrix() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((sum(SIZES), 3)).astype(np.float32)


def test_shard_layout_locates_global_indices():
    layout = ShardLayout([3, 0, 2])
    located = layout.locate(np.array([4, 0, 3, 2]))
    assert [(s, p.tolist(), r.tolist()) for s, p, r in located] == [(0, [1, 3], [0, 2]), (2, [0, 2], [1, 0])]
    with pytest.raises(IndexError):
        layout.locate(np.array([5]))


def test_shard_layout_locate_matches_a_per_shard_scan_over_many_shards():
    rng = np.random.default_rng(3)
    layout = ShardLayout(rng.integers(0, 5, size=300))
    index = rng.integers(0, layout.n, size=2000)
    located = layout.locate(index)
    for shard, positions, rows in located:
        expected = np.flatnonzero(np.searchsorted(layout.starts, index, side="right") - 1 == shard)
        assert positions.tolist() == expected.tolist()  # request order kept within a shard
        assert np.array_equal(rows, index[positions] - layout.starts[shard])
    assert sorted(np.concatenate([p for _, p, _ in located]).tolist()) == list(range(len(index)))


def test_sorted_values_membership_equals_is_in():
    rng = np.random.default_rng(4)
    pool = pl.Series([f"f{rng.integers(0, 9)}.jsonl:{rng.integers(0, 500)}" for _ in range(3000)])
    wanted = SortedValues(pl.Series(pool.sample(400, seed=1).to_list() + ["unknown", None]))
    assert wanted.contains(pool).tolist() == pool.is_in(wanted.values.implode()).to_list()
    assert not SortedValues(pl.Series([], dtype=pl.String)).contains(pool).any()


def test_concat_rows_reads_like_the_concatenated_array(tmp_path, matrix):
    x = ConcatRows(zarr_parts(tmp_path, matrix))
    assert x.shape == matrix.shape and x.ndim == 2 and x.dtype == np.float32 and len(x) == len(matrix)
    for key in (slice(None), slice(3, 21), slice(7, 7), slice(30, 40)):
        assert np.array_equal(x[key], matrix[key])
    index = np.random.default_rng(1).permutation(len(matrix))[:17]
    assert np.array_equal(x[index], matrix[index])
    assert np.array_equal(x[np.array([5, 5, 0])], matrix[[5, 5, 0]])  # repeats and any order
    vector = ConcatRows([np.arange(3.0), np.arange(3.0, 5.0)])
    assert np.array_equal(vector[:], np.arange(5.0))
    with pytest.raises(TypeError):
        x[::2]
    with pytest.raises(ValueError, match="row shape"):
        ConcatRows([np.zeros((2, 3)), np.zeros((2, 4))])


def test_row_file_writes_in_a_chosen_order_and_reads_runs(tmp_path, matrix):
    order = np.random.default_rng(2).permutation(len(matrix))[:25]  # some rows left out
    rows = RowFile.write_permuted(tmp_path / "rows.bin", ConcatRows(zarr_parts(tmp_path, matrix)), order,
                                  block_rows=4)
    assert rows.shape == (25, 3)
    assert np.array_equal(rows[:], matrix[order])
    assert np.array_equal(rows[5:9], matrix[order[5:9]])
    picks = np.array([9, 2, 3, 4, 20, 2])
    assert np.array_equal(rows[picks], matrix[order[picks]])
    assert rows[np.array([], dtype=np.int64)].shape == (0, 3)
    with pytest.raises(IndexError):
        rows[np.array([25])]


def test_parquet_column_gathers_finds_and_scans(tmp_path):
    ids = [f"doc-{i}" for i in range(sum(SIZES))]
    paths, start = [], 0
    for i, size in enumerate(SIZES):
        paths.append(tmp_path / f"docs{i}.parquet")
        pl.DataFrame({"doc_id": ids[start:start + size]}, schema={"doc_id": pl.String}).write_parquet(paths[-1])
        start += size
    column = ParquetColumn(paths, "doc_id")
    assert len(column) == len(ids)
    assert column[np.array([30, 0, 12, 7])].to_list() == ["doc-30", "doc-0", "doc-12", "doc-7"]
    assert column[np.array([], dtype=np.int64)].to_list() == []
    wanted = pl.Series(["doc-20", "doc-3", "nope", "doc-3", None, "doc-99"])
    assert column.find(wanted).tolist() == [3, 20]
    assert column.contains(wanted).tolist() == [True, True, False, True, False, False]
    assert column.contains(pl.Series([None, None], dtype=pl.String)).tolist() == [False, False]
    assert column.find(pl.Series([], dtype=pl.String)).tolist() == []
    assert column.scan().collect()["doc_id"].to_list() == ids


def test_clustering_through_concat_rows_matches_the_array(tmp_path):
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((4, 8))[rng.integers(0, 4, 400)] + 0.3 * rng.standard_normal((400, 8))).astype(np.float32)
    sizes = (150, 100, 150)
    config = methods.ClusterConfig(k=4, niter=5, seed=7, max_points_per_centroid=50)  # 400 > 4*50: subsample
    streamed = methods.cluster(ConcatRows(zarr_parts(tmp_path, x, sizes, chunk=64)), config)
    direct = methods.cluster(x, config)
    assert np.array_equal(streamed.centroids, direct.centroids)
    assert np.array_equal(streamed.assignment, direct.assignment)
    assert all(np.array_equal(a, b) for a, b in zip(streamed.members, direct.members))


@pytest.mark.parametrize("clusters", ["members", "assignment"])
def test_group_greedy_by_cluster_equals_group_greedy_select(tmp_path, clusters):
    rng = np.random.default_rng(4)
    n = 300
    h = rng.standard_normal((n, 6)).astype(np.float32)
    s = rng.standard_normal(n)
    assignment = rng.integers(0, 7, n)
    members = [np.flatnonzero(assignment == c)[rng.permutation(int((assignment == c).sum()))] for c in range(7)]
    given = members if clusters == "members" else assignment
    budgets = sel.cluster_budgets([len(m) for m in (members if clusters == "members" else
                                                     sel._member_lists(assignment, n))], 0.4)
    expected = sel.group_greedy_select(h, s, given, budgets, 0.8, 1.3, device="numpy")
    got = sel.group_greedy_by_cluster(ConcatRows(zarr_parts(tmp_path, h, (100, 120, 80), chunk=32)), s, given,
                                      budgets, 0.8, 1.3, scratch_dir=tmp_path, block_rows=37, device="numpy")
    for name in ("indices", "rank", "score", "cluster"):
        assert np.array_equal(getattr(got, name), getattr(expected, name)), name
    assert not list(tmp_path.glob(".gmates-h-by-cluster-*"))  # the scratch copy of h is removed


def test_group_mates_method_streams_h_and_keeps_the_picks(tmp_path):
    rng = np.random.default_rng(5)
    n = 200
    h = rng.standard_normal((n, 4)).astype(np.float32)
    s = rng.standard_normal(n)
    members = methods.cluster(h, methods.ClusterConfig(k=5, niter=5, seed=1)).members

    def pool(rows):
        return methods.PoolScores(h=rows, s=s, members=members, tau=1.0, alpha=1.0, s_individual=lambda: s,
                                  semantic_members=lambda: members, scratch_dir=str(tmp_path))

    config = methods.SelectionConfig(ratio=0.3)
    direct = methods.select("group_mates", pool(h), config)
    streamed = methods.select("group_mates", pool(ConcatRows(zarr_parts(tmp_path, h, (90, 110)))), config)
    assert np.array_equal(direct.indices, streamed.indices) and np.array_equal(direct.score, streamed.score)
    reference = sel.reference_group_select(h, s, members, methods.budgets(members, config))
    assert np.array_equal(direct.indices, reference.indices)
