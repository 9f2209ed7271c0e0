"""Tests for core/selection.py: exact greedy equivalence, §3.6 invariants, budgets, baselines, clustering."""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gmates_assets.core import selection as sel


def mean_of_unit_vectors(rng, n, d, chunks=3):
    """h as in docs/method.md §3.2: the mean of unit vectors, so ||h|| <= 1."""
    v = rng.standard_normal((n, chunks, d))
    v /= np.linalg.norm(v, axis=2, keepdims=True)
    return v.mean(axis=1).astype(np.float32)


def random_case(rng, case):
    """A small random group-selection problem; every third case has exact ties in h, odd cases in s."""
    n_clusters = int(rng.integers(1, 6))
    d = int(rng.integers(1, 7))
    sizes = rng.integers(0, 22, size=n_clusters)
    sizes[rng.integers(0, n_clusters)] = max(1, sizes[0])  # clusters of size 1 occur via the draw below
    if case % 5 == 0:
        sizes[0] = 1
    n = int(sizes.sum())
    if case % 3 == 0:  # a coarse grid: duplicate rows and exactly tied relations
        h = (rng.integers(-2, 3, size=(n, d)) / (2.0 * math.sqrt(d))).astype(np.float32)
    else:
        h = mean_of_unit_vectors(rng, n, d)
    if case % 2:
        s = rng.integers(-3, 4, size=n).astype(np.float32)  # exact ties in s
    else:
        s = rng.standard_normal(n).astype(np.float32)
    members = np.split(rng.permutation(n).astype(np.int64), np.cumsum(sizes)[:-1])
    budgets = np.array([int(rng.integers(0, m.size + 1)) for m in members], dtype=np.int64)
    budgets[0] = members[0].size  # k = n
    if n_clusters > 1:
        budgets[-1] = 0  # k = 0
    return h, s, members, budgets


FAST_VARIANTS = [
    dict(device="numpy"),
    dict(device="numpy", max_gram_bytes=16),  # every cluster on the matrix-vector fallback
    dict(device="numpy", batch_bytes=4 * 22 * 22, workers=2),  # one cluster per batch, two threads
    dict(device="cpu"),  # the torch loop used on CUDA, run on CPU
]


# ---------------------------------------------------------------------------------------------------------
# Greedy: fast path == reference loop
# ---------------------------------------------------------------------------------------------------------
def test_fast_greedy_matches_reference_on_many_random_inputs():
    rng = np.random.default_rng(20250613)
    settings_cycle = [(1.0, 1.0), (0.7, 1.0), (1.3, 0.5), (1.0, 2.0), (0.9, -1.0), (2.5, 3.0)]
    for case in range(120):
        h, s, members, budgets = random_case(rng, case)
        tau, alpha = settings_cycle[case % len(settings_cycle)]
        ref = sel.reference_group_select(h, s, members, budgets, tau, alpha)
        assert len(ref) == budgets.sum()
        for variant in FAST_VARIANTS if case % 4 == 0 else FAST_VARIANTS[:1]:
            fast = sel.group_greedy_select(h, s, members, budgets, tau, alpha, **variant)
            assert np.array_equal(fast.indices, ref.indices), (case, variant)
            assert np.array_equal(fast.cluster, ref.cluster), (case, variant)
            assert fast.score.tobytes() == ref.score.tobytes(), (case, variant)  # bitwise, sign of 0 too


def test_fast_greedy_matches_reference_on_larger_clusters_of_mixed_size():
    rng = np.random.default_rng(7)
    n, d = 900, 24
    h = mean_of_unit_vectors(rng, n, d)
    h[100:140] = h[99]  # a block of exact duplicates
    s = rng.standard_normal(n).astype(np.float32)
    s[100:140] = -0.5
    assignment = rng.integers(0, 7, size=n).astype(np.int64)
    assignment[:300] = 0  # one big cluster, several small ones
    members = [np.flatnonzero(assignment == c) for c in range(7)]
    budgets = sel.cluster_budgets([m.size for m in members], 0.5)
    ref = sel.reference_group_select(h, s, members, budgets, 0.8, 1.0)
    for variant in [dict(device="numpy"), dict(device="numpy", batch_bytes=4 * 200 * 200),
                    dict(device="numpy", max_gram_bytes=4 * 200 * 200)]:
        fast = sel.group_greedy_select(h, s, members, budgets, 0.8, 1.0, **variant)
        assert np.array_equal(fast.indices, ref.indices)
        assert np.array_equal(fast.score, ref.score)


def test_first_member_in_order_wins_ties():
    h = np.tile(np.array([[0.6, 0.0]], dtype=np.float32), (5, 1))  # identical documents
    s = np.full(5, -1.0, dtype=np.float32)
    forward = sel.group_greedy_select(h, s, [np.array([3, 1, 4, 0, 2])], [3])
    assert forward.indices.tolist() == [3, 1, 4]
    assert sel.reference_group_select(h, s, [np.array([3, 1, 4, 0, 2])], [3]).indices.tolist() == [3, 1, 4]


# ---------------------------------------------------------------------------------------------------------
# Exact relation values
# ---------------------------------------------------------------------------------------------------------
def test_relation_values_are_exact_and_blas_independent():
    rng = np.random.default_rng(3)
    scale = rng.uniform(1e-3, 5.0, size=(300, 1)).astype(np.float32)  # rows of very different norms
    h = rng.standard_normal((300, 37)).astype(np.float32) * scale
    hq = sel.quantize_for_relation(h)
    gemm = sel.relation_rows(hq, hq)
    gemv = np.stack([(hq @ hq[j]).astype(np.float32) for j in range(0, 300, 7)], axis=1)
    assert np.array_equal(gemm[:, ::7], gemv)
    assert np.array_equal(sel.relation_matrix(hq, block=64), gemm)  # mirrored upper-triangle blocks
    assert np.array_equal(gemm, gemm.T)
    # The float64 dot products are exact: any summation order gives the rational value, bit for bit.
    order = np.random.default_rng(0)
    for i, j in [(0, 1), (5, 5), (17, 250), (299, 3), (40, 41), (100, 7)]:
        exact = sum(Fraction(float(a)) * Fraction(float(b)) for a, b in zip(hq[i], hq[j]))
        products = (hq[i] * hq[j]).tolist()
        shuffled = [products[p] for p in order.permutation(len(products))]
        assert float(exact) == float(hq[i] @ hq[j]) == sum(products) == sum(shuffled) == sum(reversed(products))
        assert np.float32(float(exact)) == gemm[i, j]


def test_quantization_is_below_float32_resolution():
    rng = np.random.default_rng(4)
    h = mean_of_unit_vectors(rng, 200, 64)
    hq = sel.quantize_for_relation(h)
    norms = np.linalg.norm(h.astype(np.float64), axis=1)
    assert np.all(np.abs(hq - h) <= norms[:, None] * 2.0 ** -26)
    exact = h.astype(np.float64) @ h.astype(np.float64).T
    assert np.max(np.abs(sel.relation_rows(hq, hq) - exact)) < 1e-6
    with pytest.raises(ValueError, match="row 2"):
        bad = h.copy()
        bad[2, 0] = np.nan
        sel.quantize_for_relation(bad)


# ---------------------------------------------------------------------------------------------------------
# §3.6 invariants and a hand-checked case
# ---------------------------------------------------------------------------------------------------------
def test_hand_checked_toy_case():
    # Unit vectors A=(1,0), B=(0.8,0.6), C=(0,1), D=(-0.6,0.8); s = (-2, -1.5, -1, 0.5); k = 3.
    # tau = alpha = 1:
    #   step 0: argmin s -> A. R[:,A] = (1, 0.8, 0, -0.6) -> a = 1 - R = (0, 0.2, 1, 1.6).
    #   step 1: a*s = (-, -0.3, -1, 0.8) -> C (B is redundant with A). R[:,C] = (0, 0.6, 1, 0.8),
    #           cur = (1, 0.4, 0, 0.2), a = (a + cur)/2 = (0.5, 0.3, 0.5, 0.9).
    #   step 2: a*s: B = -0.45, D = 0.45 -> B.  Picks A, C, B (bottom-k by s would be A, B, C).
    # tau = 0.5 (cur = 1 - 2R):
    #   after A: a = (-1, -0.6, 1, 2.2); scores B = 0.9, C = -1, D = 1.1 -> C.
    #   after C: cur = (1, -0.2, -1, -0.6); a = (0, -0.4, 0, 0.8); scores B = 0.6, D = 0.4 -> D.
    h = np.array([[1, 0], [0.8, 0.6], [0, 1], [-0.6, 0.8]], dtype=np.float32)
    s = np.array([-2, -1.5, -1, 0.5], dtype=np.float32)
    picks, scores = sel.reference_greedy(h, s, 3)
    assert picks.tolist() == [0, 2, 1]
    np.testing.assert_allclose(scores, [-2.0, -1.0, -0.45], atol=1e-6)
    picks_tau, scores_tau = sel.reference_greedy(h, s, 3, tau=0.5)
    assert picks_tau.tolist() == [0, 2, 3]
    np.testing.assert_allclose(scores_tau, [-2.0, -1.0, 0.4], atol=1e-6)
    fast = sel.group_greedy_select(h, s, [np.arange(4)], [3])
    assert fast.indices.tolist() == [0, 2, 1]
    assert sel.mates_select(s, 3).indices.tolist() == [0, 1, 2]


def test_tau_one_never_takes_positive_s_while_a_negative_one_remains():
    rng = np.random.default_rng(11)
    for _ in range(25):
        n = int(rng.integers(5, 60))
        h = mean_of_unit_vectors(rng, n, int(rng.integers(2, 10)))
        s = rng.standard_normal(n).astype(np.float32)
        k = int(rng.integers(1, n + 1))
        picks, _ = sel.reference_greedy(h, s, k, tau=1.0, alpha=1.0)
        fast = sel.group_greedy_select(h, s, [np.arange(n)], [k])
        assert np.array_equal(fast.indices, picks)
        for step, j in enumerate(picks):
            if s[j] > 0:
                remaining = np.setdiff1d(np.arange(n), picks[:step])
                assert not np.any(s[remaining] < 0), "took s > 0 while an s < 0 document remained"


def test_alpha_never_changes_the_picks():
    # alpha = 0.5 and 2 are powers of two, so a scales exactly and even exact ties are preserved.
    rng = np.random.default_rng(12)
    for case in range(20):
        h, s, members, budgets = random_case(rng, case)
        tau = 1.0 if case % 2 else 0.8
        base = sel.group_greedy_select(h, s, members, budgets, tau, 1.0)
        for alpha in (0.5, 2.0):
            assert np.array_equal(sel.group_greedy_select(h, s, members, budgets, tau, alpha).indices,
                                  base.indices)


# ---------------------------------------------------------------------------------------------------------
# Budgets
# ---------------------------------------------------------------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(sizes=st.lists(st.integers(0, 5000), min_size=0, max_size=40),
       ratio=st.sampled_from([0.0, 0.1, 0.25, 0.3, 1 / 3, 0.5, 0.55, 2 / 3, 0.7, 0.999, 1.0])
       | st.floats(0.0, 1.0))
def test_largest_remainder_budgets_sum_exactly_and_fit(sizes, ratio):
    budgets = sel.cluster_budgets(np.array(sizes, dtype=np.int64), ratio)
    sizes_arr = np.array(sizes, dtype=np.int64)
    frac = Fraction(repr(float(ratio))).limit_denominator(10**9)
    target = math.floor(frac * sum(sizes) + Fraction(1, 2))
    assert budgets.sum() == target
    assert np.all((budgets >= 0) & (budgets <= sizes_arr))
    for n_c, b in zip(sizes, budgets):  # Hamilton: each budget is floor or ceil of its quota
        assert math.floor(frac * n_c) <= b <= math.floor(frac * n_c) + 1
    assert np.array_equal(budgets, sel.cluster_budgets(np.array(sizes, dtype=np.int64), ratio))


def test_budgets_on_awkward_sizes():
    assert sel.cluster_budgets([1, 1, 1], 0.5).tolist() == [1, 1, 0]  # round(1.5) = 2, ties to lower id
    assert sel.cluster_budgets([3, 3], 0.5).tolist() == [2, 1]
    assert sel.cluster_budgets([5], 0.5).tolist() == [3]  # halves round up
    assert sel.cluster_budgets([10, 20, 30], 0.3).tolist() == [3, 6, 9]  # no binary noise from 0.3
    assert sel.cluster_budgets([2, 7, 1, 0], 1.0).tolist() == [2, 7, 1, 0]
    assert sel.cluster_budgets([2, 7, 1, 0], 0.0).tolist() == [0, 0, 0, 0]
    assert sel.cluster_budgets([1, 2, 3], 0.5, total=4).tolist() == [1, 1, 2]  # quotas 2/3, 4/3, 2
    assert sel.cluster_budgets([3, 3, 5], 0.5, rounding="floor").tolist() == [1, 1, 2]  # original code
    assert sel.cluster_budgets([], 0.5).tolist() == []
    with pytest.raises(ValueError, match="ratio"):
        sel.cluster_budgets([3], 1.5)
    with pytest.raises(ValueError, match="total"):
        sel.cluster_budgets([3], 0.5, total=4)
    with pytest.raises(ValueError, match="rounding"):
        sel.cluster_budgets([3], 0.5, rounding="ceil")


# ---------------------------------------------------------------------------------------------------------
# Baselines: exact counts, no duplicates, determinism
# ---------------------------------------------------------------------------------------------------------
def test_every_method_returns_the_exact_count_without_duplicates():
    rng = np.random.default_rng(21)
    n = 157
    h = mean_of_unit_vectors(rng, n, 8)
    s = rng.integers(-2, 3, size=n).astype(np.float32)  # heavy ties
    assignment = rng.integers(0, 6, size=n).astype(np.int64)
    members = [np.flatnonzero(assignment == c) for c in range(6)]
    budgets = sel.cluster_budgets([m.size for m in members], 0.37)
    want = sel.selection_total(n, 0.37)
    results = [
        sel.group_greedy_select(h, s, members, budgets),
        sel.group_greedy_select(h, s, assignment, budgets),
        sel.no_relation_select(s, members, budgets),
        sel.global_greedy_select(h, s, want),
        sel.mates_select(s, want),
        sel.mates_select(s, want, gumbel=True, seed=3),
        sel.random_select(n, want, seed=5),
    ]
    for result in results:
        assert len(result) == want
        assert np.unique(result.indices).size == want
        assert result.rank.tolist() == list(range(want))
    for k in (0, n):
        assert len(sel.mates_select(s, k)) == k and len(sel.random_select(n, k, 0)) == k
        assert len(sel.global_greedy_select(h, s, k)) == k


def test_mates_select_bottom_k_and_gumbel_variant():
    s = np.array([0.3, -1.0, 0.3, -1.0, 2.0], dtype=np.float32)
    result = sel.mates_select(s, 3)
    assert result.indices.tolist() == [1, 3, 0]  # stable ties: lower index first
    assert result.cluster.tolist() == [-1, -1, -1]
    g1 = sel.mates_select(s, 3, gumbel=True, tau=0.5, seed=9)
    g2 = sel.mates_select(s, 3, gumbel=True, tau=0.5, seed=9)
    assert np.array_equal(g1.indices, g2.indices) and np.array_equal(g1.score, g2.score)
    key = s.astype(np.float64) / 0.5 + np.random.default_rng(9).gumbel(size=5)  # pred/tau PLUS noise
    assert g1.indices.tolist() == np.argsort(key, kind="stable")[:3].tolist()
    np.testing.assert_array_equal(g1.score, key[g1.indices])
    big = np.zeros(1000)
    assert not np.array_equal(sel.mates_select(big, 10, gumbel=True, seed=1).indices,
                              sel.mates_select(big, 10, gumbel=True, seed=2).indices)
    with pytest.raises(ValueError, match="cannot select"):
        sel.mates_select(s, 6)


def test_random_select_is_seeded():
    a, b = sel.random_select(1000, 100, seed=4), sel.random_select(1000, 100, seed=4)
    assert np.array_equal(a.indices, b.indices)
    assert not np.array_equal(a.indices, sel.random_select(1000, 100, seed=5).indices)


def test_no_relation_select_takes_smallest_s_per_cluster():
    s = np.array([5, 1, 3, 0, 2, 2, -1], dtype=np.float32)
    members = [np.array([0, 1, 2]), np.array([6, 5, 4, 3])]
    result = sel.no_relation_select(s, members, [2, 3])
    assert result.indices.tolist() == [1, 2, 6, 3, 5]  # 5 and 4 tie at 2: member order decides
    assert result.cluster.tolist() == [0, 0, 1, 1, 1]


def test_global_greedy_equals_one_cluster_reference_and_refuses_large_pools():
    rng = np.random.default_rng(8)
    h = mean_of_unit_vectors(rng, 60, 5)
    s = rng.standard_normal(60).astype(np.float32)
    picks, scores = sel.reference_greedy(h, s, 25, tau=0.9)
    result = sel.global_greedy_select(h, s, 25, tau=0.9)
    assert np.array_equal(result.indices, picks) and np.array_equal(result.score, scores)
    assert set(result.cluster.tolist()) == {-1}
    with pytest.raises(ValueError, match="max_docs=50"):
        sel.global_greedy_select(h, s, 10, max_docs=50)


def test_semantic_clusters_ablation_uses_the_clustering_it_is_given():
    rng = np.random.default_rng(13)
    n = 120
    h = mean_of_unit_vectors(rng, n, 6)
    raw = rng.standard_normal((n, 10)).astype(np.float32)  # stand-in for raw encoder embeddings
    s = rng.standard_normal(n).astype(np.float32)
    centroids = sel.spherical_kmeans(raw, 4, niter=5, seed=1)
    members = sel.cluster_member_order(raw, centroids, sel.assign_clusters(raw, centroids))
    budgets = sel.cluster_budgets([m.size for m in members], 0.5)
    result = sel.group_greedy_select(h, s, members, budgets)
    assert np.array_equal(result.indices, sel.reference_group_select(h, s, members, budgets).indices)
    for c, m in enumerate(members):  # each pick belongs to the raw-embedding cluster it is labelled with
        assert np.isin(result.indices[result.cluster == c], m).all()


def test_invalid_inputs_raise_clear_errors():
    h = np.ones((4, 2), dtype=np.float32)
    s = np.zeros(4, dtype=np.float32)
    with pytest.raises(ValueError, match="cluster 0"):
        sel.group_greedy_select(h, s, [np.arange(4)], [5])
    with pytest.raises(ValueError, match="more than once"):
        sel.group_greedy_select(h, s, [np.array([0, 1]), np.array([1, 2])], [1, 1])
    with pytest.raises(ValueError, match="scalars"):
        sel.group_greedy_select(h, s, [0, 0, 1, 1], [1, 1])
    with pytest.raises(ValueError, match=r"s\[2\]"):
        sel.group_greedy_select(h, np.array([0, 0, np.nan, 0]), [np.arange(4)], [1])
    with pytest.raises(ValueError, match="tau"):
        sel.group_greedy_select(h, s, [np.arange(4)], [1], tau=0.0)
    with pytest.raises(ValueError, match="2 budgets"):
        sel.group_greedy_select(h, s, [np.arange(4)], [1, 1])


# ---------------------------------------------------------------------------------------------------------
# Clustering
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def blobs():
    rng = np.random.default_rng(99)
    centers = rng.standard_normal((6, 16))
    x = centers[rng.integers(0, 6, size=1200)] + 0.3 * rng.standard_normal((1200, 16))
    return (x * 0.2).astype(np.float32)  # not unit norm: spherical k-means must not need that


def test_kmeans_is_deterministic_for_a_seed_and_returns_unit_centroids(blobs):
    a = sel.spherical_kmeans(blobs, 8, niter=10, seed=1234)
    b = sel.spherical_kmeans(blobs, 8, niter=10, seed=1234)
    assert a.dtype == np.float32 and a.shape == (8, 16)
    assert a.tobytes() == b.tobytes()
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-5)
    # subsampled training (n > k * max_points_per_centroid) is seeded too
    c = sel.spherical_kmeans(blobs, 8, niter=10, seed=7, max_points_per_centroid=40)
    assert c.tobytes() == sel.spherical_kmeans(blobs, 8, niter=10, seed=7, max_points_per_centroid=40).tobytes()
    with pytest.raises(ValueError, match="k=5000"):
        sel.spherical_kmeans(blobs, 5000)


def test_assignment_is_argmax_inner_product(blobs):
    centroids = sel.spherical_kmeans(blobs, 8, niter=10, seed=1234)
    ids, sim = sel.assign_clusters(blobs, centroids, batch_size=500, return_similarity=True)
    ip = blobs.astype(np.float64) @ centroids.astype(np.float64).T
    best = ip.argmax(axis=1)
    runner_up = np.sort(ip, axis=1)[:, -2]
    clear = ip.max(axis=1) - runner_up > 1e-5
    assert clear.mean() > 0.95
    assert np.array_equal(ids[clear], best[clear])
    np.testing.assert_allclose(sim, ip[np.arange(len(ids)), ids], atol=1e-5)


def test_member_order_is_descending_distance_with_index_ties(blobs):
    x = np.concatenate([blobs, blobs[:50]])  # duplicates create exact ties in 1 - IP
    centroids = sel.spherical_kmeans(x, 5, niter=10, seed=3)
    assignment = sel.assign_clusters(x, centroids)
    members = sel.cluster_member_order(x, centroids, assignment)
    assert len(members) == 5
    assert np.array_equal(np.sort(np.concatenate(members)), np.arange(len(x)))
    for c, m in enumerate(members):
        assert np.all(assignment[m] == c)
        dist = 1.0 - x[m].astype(np.float64) @ centroids[c].astype(np.float64)
        assert np.all(np.diff(dist) <= 0)
        ties = np.diff(dist) == 0
        assert np.all(np.diff(m)[ties] > 0)
    tie_pairs = [(i, i + 1200) for i in range(50) if assignment[i] == assignment[i + 1200]]
    assert tie_pairs
    for i, j in tie_pairs:
        pos = {int(v): p for p, v in enumerate(members[assignment[i]])}
        assert pos[i] < pos[j]


def test_centroid_index_round_trip(tmp_path, blobs):
    import faiss

    centroids = sel.spherical_kmeans(blobs, 4, niter=5, seed=2)
    path = tmp_path / "sub" / "centroids.faiss"
    sel.save_centroid_index(centroids, path)
    assert np.array_equal(sel.load_centroids(path), centroids)
    index = faiss.read_index(str(path))
    assert index.ntotal == 4 and index.d == 16
    assert np.array_equal(sel.assign_clusters(blobs, sel.load_centroids(path)),
                          sel.assign_clusters(blobs, centroids))
    assert list(tmp_path.joinpath("sub").iterdir()) == [path]  # no temp file left behind
    with pytest.raises(FileNotFoundError):
        sel.load_centroid_index(tmp_path / "missing.faiss")


# ---------------------------------------------------------------------------------------------------------
# Output table
# ---------------------------------------------------------------------------------------------------------
def test_to_polars_matches_the_selected_parquet_contract(tmp_path):
    result = sel.SelectionResult.from_picks([2, 0], [-1.5, 0.25], [3, 1])
    df = result.to_polars(["a.jsonl:0", "a.jsonl:1", "b.jsonl:0"])
    assert df.schema == pl.Schema({"doc_id": pl.String, "rank": pl.Int64, "score": pl.Float64,
                                   "cluster": pl.Int64})
    assert df.rows() == [("b.jsonl:0", 0, -1.5, 3), ("a.jsonl:0", 1, 0.25, 1)]
    df.write_parquet(tmp_path / "selected.parquet")
    assert pl.read_parquet(tmp_path / "selected.parquet").equals(df)
    from_series = sel.mates_select(np.array([1.0, 0.0]), 1).to_polars(pl.Series(["x", "y"]))
    assert from_series.rows() == [("y", 0, 0.0, -1)]
    with pytest.raises(ValueError, match="doc_ids"):
        result.to_polars(["only-one"])
    with pytest.raises(ValueError, match="duplicate"):
        sel.SelectionResult.from_picks([1, 1], [0.0, 0.0])
