"""Influence-aware clustering and group-level selection (docs/method.md §3.5, §3.6, §5, §7).

Pipeline: `spherical_kmeans` on the DIM's h -> `assign_clusters` (largest inner product) ->
`cluster_member_order` (farthest first) -> `cluster_budgets` -> `group_greedy_select` (or, for an h read
from the pool's shards, `group_greedy_by_cluster`: the same picks, one cluster batch in memory at a time).
Baselines: `mates_select`, `random_select`, `no_relation_select`, `global_greedy_select`. The semantic-clusters
ablation is `group_greedy_select` with member lists computed from raw encoder embeddings instead of h.

Exact relation values (why picks never depend on BLAS). The greedy compares float64 scores a_x * s_x and
breaks exact ties by member order, so a last-ulp difference between a GEMM (Gram matrix) and a GEMV
(one column per step) could flip a pick (docs/method.md §7 f). Both the reference loop and the fast path
therefore compute R from `quantize_for_relation(h)`: every row of h rounded onto a power-of-two grid
(26 bits relative to the row's own norm, a perturbation below the float32 rounding of the original
code), then float64 dot products. On that grid every product and every
partial sum is an integer multiple of one power of two smaller than 2**53, so the float64 dot product is
*exact* in any summation order: GEMM, GEMV, blocked, threaded, FMA or cuBLAS all give the same bits.
The exact value is then rounded once to float32 (the original's R is float32) and the recurrence
a <- (i*a + alpha*(1 - R/tau)) / (i+1) runs in float64 with the same elementwise operations in both paths.
"""
from __future__ import annotations

import math
import os
import tempfile
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Optional, Union

import numpy as np

from gmates_assets.core.progress import ProgressFn
from gmates_assets.core.rows import RowFile

# Bits kept per row of h by `quantize_for_relation`. With |m_i| <= 2**26 the products and every partial sum
# of a dot product stay below 2**53 in units of one power of two, hence float64 dot products are exact.
RELATION_BITS = 26
_MIN_ROW_EXPONENT = -480  # rows with a norm below 2**-480 are treated as zero (products would underflow)
_MAX_ROW_EXPONENT = 480

Clusters = Union[np.ndarray, Sequence[np.ndarray]]


# --------------------------------------------------------------------------------------------------------
# Result container
# --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SelectionResult:
    """Selected documents in rank order.

    indices: global document indices (int64), rank 0 first, no duplicates.
    rank: 0..m-1 (int64). score: the value the method ranked by (float64, lower was preferred).
    cluster: cluster id of each pick (int64), -1 for methods without clusters.
    """

    indices: np.ndarray
    rank: np.ndarray
    score: np.ndarray
    cluster: np.ndarray

    @classmethod
    def from_picks(cls, indices, score, cluster=None) -> SelectionResult:
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        score = np.asarray(score, dtype=np.float64).reshape(-1)
        cluster = (np.full(indices.shape, -1, dtype=np.int64) if cluster is None
                   else np.asarray(cluster, dtype=np.int64).reshape(-1))
        return cls(indices=indices, rank=np.arange(indices.size, dtype=np.int64), score=score, cluster=cluster)

    def __post_init__(self):
        n = self.indices.shape[0]
        for name in ("rank", "score", "cluster"):
            if getattr(self, name).shape != (n,):
                raise ValueError(f"SelectionResult.{name} has shape {getattr(self, name).shape}, "
                                 f"expected ({n},)")
        if n and np.unique(self.indices).size != n:
            raise ValueError("SelectionResult.indices contains duplicate documents")

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def to_polars(self, doc_ids):
        """The `selected.parquet` table of docs/contracts.md: doc_id, rank, score, cluster."""
        import polars as pl

        ids = doc_ids.to_numpy() if isinstance(doc_ids, pl.Series) else np.asarray(doc_ids, dtype=object)
        if self.indices.size and int(self.indices.max()) >= len(ids):
            raise ValueError(f"selection refers to document index {int(self.indices.max())} but only "
                             f"{len(ids)} doc_ids were given")
        return self.table(ids[self.indices])

    def table(self, selected_ids):
        """to_polars given only the ids of the selected documents, in rank order (not the whole pool's)."""
        import polars as pl

        if len(selected_ids) != self.indices.size:
            raise ValueError(f"{len(selected_ids)} ids given for {self.indices.size} selected documents")
        ids = (selected_ids.cast(pl.String).alias("doc_id") if isinstance(selected_ids, pl.Series)
               else pl.Series("doc_id", [str(x) for x in selected_ids], dtype=pl.String))
        return pl.DataFrame({
            "doc_id": ids,
            "rank": pl.Series("rank", self.rank, dtype=pl.Int64),
            "score": pl.Series("score", self.score, dtype=pl.Float64),
            "cluster": pl.Series("cluster", self.cluster, dtype=pl.Int64),
        })


# --------------------------------------------------------------------------------------------------------
# Clustering (§3.5)
# --------------------------------------------------------------------------------------------------------
def _faiss():
    import faiss  # imported lazily: it is heavy and only the clustering helpers need it

    return faiss


def _check_matrix(x, name: str) -> tuple[int, int]:
    if getattr(x, "ndim", None) != 2:
        raise ValueError(f"{name} must be a 2-D array [n, d], got shape {getattr(x, 'shape', None)}")
    n, d = x.shape
    if d < 1:
        raise ValueError(f"{name} has zero columns")
    return int(n), int(d)


KMEANS_SUBSAMPLES = ("gmates", "faiss")


def spherical_kmeans(x: np.ndarray, k: int, niter: int = 25, seed: int = 1234,
                     max_points_per_centroid: int = 256, use_gpu: Optional[bool] = None,
                     verbose: bool = False, subsample: str = "gmates",
                     train_rows: Optional[np.ndarray] = None) -> np.ndarray:
    """Spherical k-means centroids [k, d] float32 with faiss (centroids re-normalized, data not).

    k > n raises ValueError rather than clamping: the number of clusters is a manifest setting that
    downstream budgets and cluster ids depend on, so silently changing it would be worse than failing.
    When n > k * max_points_per_centroid, subsample "gmates" draws the training subsample here (numpy
    Generator(seed), sorted rows) so that only those rows are read from a memmap or a `rows.ConcatRows`; "faiss"
    hands faiss every row and lets it draw the subsample itself, as the official code does (all of x is loaded
    as float32). `train_rows`: the subsample "gmates" uses instead of its seeded draw (the shell's stable sample
    keyed by document id, core/sampling.py), sorted, k * max_points_per_centroid of them.
    """
    n, d = _check_matrix(x, "x")
    if not 1 <= k <= n:
        raise ValueError(f"spherical_kmeans: k={k} clusters needs 1 <= k <= n={n} points; lower k")
    if niter < 1 or max_points_per_centroid < 1:
        raise ValueError("spherical_kmeans: niter and max_points_per_centroid must be >= 1")
    if subsample not in KMEANS_SUBSAMPLES:
        raise ValueError(f"spherical_kmeans: subsample must be one of {KMEANS_SUBSAMPLES}, got {subsample!r}")
    faiss = _faiss()
    cap = k * max_points_per_centroid
    if n > cap and subsample == "gmates":
        rows = np.sort(np.random.default_rng(seed).choice(n, size=cap, replace=False)) if train_rows is None \
            else np.asarray(train_rows, dtype=np.int64)
        train = np.ascontiguousarray(x[rows], dtype=np.float32)
    else:
        train = np.ascontiguousarray(x[:n], dtype=np.float32)
    if not np.isfinite(train).all():
        raise ValueError("spherical_kmeans: x contains NaN or infinite values")
    gpu = (faiss.get_num_gpus() > 0) if use_gpu is None else bool(use_gpu)
    kmeans = faiss.Kmeans(d, int(k), niter=int(niter), seed=int(seed), spherical=True,
                          max_points_per_centroid=int(max_points_per_centroid), verbose=verbose,
                          gpu=gpu)
    kmeans.train(train)
    return np.ascontiguousarray(kmeans.centroids, dtype=np.float32)


def _centroid_index(centroids: np.ndarray):
    faiss = _faiss()
    c = np.ascontiguousarray(centroids, dtype=np.float32)
    _check_matrix(c, "centroids")
    index = faiss.IndexFlatIP(c.shape[1])
    index.add(c)
    return index


def assign_clusters(x: np.ndarray, centroids: np.ndarray, batch_size: int = 65536,
                    return_similarity: bool = False, progress: ProgressFn = None):
    """Cluster id (int64 [n]) of each row: the centroid with the largest inner product (IndexFlatIP).

    Streams x in row batches (works on memmaps). With return_similarity also returns that inner product
    (float32 [n]).
    """
    n, d = _check_matrix(x, "x")
    if centroids.shape[1] != d:
        raise ValueError(f"centroids have d={centroids.shape[1]} but x has d={d}")
    index = _centroid_index(centroids)
    ids = np.empty(n, dtype=np.int64)
    sims = np.empty(n, dtype=np.float32)
    for start in range(0, n, batch_size):
        block = np.ascontiguousarray(x[start:start + batch_size], dtype=np.float32)
        sim, idx = index.search(block, 1)
        ids[start:start + block.shape[0]] = idx[:, 0]
        sims[start:start + block.shape[0]] = sim[:, 0]
        if progress:
            progress(min(start + batch_size, n), n, "documents")
    if n and ids.min() < 0:
        raise ValueError("assign_clusters: faiss returned no centroid for some rows (NaN in x?)")
    return (ids, sims) if return_similarity else ids


def _similarity_to_assigned(x, centroids, assignment, batch_size: int) -> np.ndarray:
    c64 = np.asarray(centroids, dtype=np.float64)
    out = np.empty(x.shape[0], dtype=np.float64)
    for start in range(0, x.shape[0], batch_size):
        block = np.asarray(x[start:start + batch_size], dtype=np.float64)
        out[start:start + block.shape[0]] = np.einsum(
            "ij,ij->i", block, c64[assignment[start:start + block.shape[0]]])
    return out


MEMBER_ORDER_PRECISIONS = ("float64", "float32")


def cluster_member_order(x: np.ndarray, centroids: np.ndarray, assignment: np.ndarray,
                         similarity: Optional[np.ndarray] = None,
                         batch_size: int = 65536, precision: str = "float64") -> list[np.ndarray]:
    """Member lists (one int64 array per centroid, possibly empty) ordered by descending 1 - IP.

    Farthest from the centroid comes first (§3.5); ties go to the lower document index. The inner product
    is recomputed in float64 unless `similarity` (e.g. from assign_clusters) is given. precision "float32"
    forms 1 - IP in float32 as the official code does: similarities that differ only below float32's
    resolution around 1 then tie and fall back to document order.
    """
    if precision not in MEMBER_ORDER_PRECISIONS:
        raise ValueError(f"cluster_member_order: precision must be one of {MEMBER_ORDER_PRECISIONS}, "
                         f"got {precision!r}")
    assignment = np.asarray(assignment, dtype=np.int64)
    k = int(centroids.shape[0])
    if assignment.shape != (x.shape[0],):
        raise ValueError(f"assignment has shape {assignment.shape}, expected ({x.shape[0]},)")
    if assignment.size and (assignment.min() < 0 or assignment.max() >= k):
        raise ValueError(f"assignment ids must lie in [0, {k})")
    sim = (_similarity_to_assigned(x, centroids, assignment, batch_size) if similarity is None
           else np.asarray(similarity, dtype=np.float64))
    distance = 1.0 - sim if precision == "float64" else np.float32(1.0) - sim.astype(np.float32)
    doc = np.arange(assignment.size, dtype=np.int64)
    order = np.lexsort((doc, -distance, assignment))  # cluster, then farthest first, then index
    counts = np.bincount(assignment, minlength=k)
    return [np.ascontiguousarray(part) for part in np.split(order, np.cumsum(counts)[:-1])]


def save_centroid_index(centroids: np.ndarray, path: Union[str, os.PathLike]) -> None:
    """Write the centroids as a faiss IndexFlatIP (faiss.write_index; atomic rename, no pickle)."""
    faiss = _faiss()
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    faiss.write_index(_centroid_index(centroids), str(tmp))
    os.replace(tmp, target)


def load_centroid_index(path: Union[str, os.PathLike]):
    """The faiss index written by save_centroid_index (faiss.read_index)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"centroid index not found: {path}")
    return _faiss().read_index(str(path))


def load_centroids(path: Union[str, os.PathLike]) -> np.ndarray:
    index = load_centroid_index(path)
    return np.ascontiguousarray(index.reconstruct_n(0, index.ntotal), dtype=np.float32)


# --------------------------------------------------------------------------------------------------------
# Budgets (§3.6, quirk §4.5)
# --------------------------------------------------------------------------------------------------------
def _decimal_fraction(ratio: float) -> Fraction:
    # The ratio the user wrote (0.3 means 3/10, not the binary double nearest to it).
    return Fraction(repr(float(ratio))).limit_denominator(10**9)


def selection_total(n_total: int, ratio: float) -> int:
    """round(ratio * n_total) with halves rounded up (0.5 * 5 -> 3)."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"selection ratio must lie in [0, 1], got {ratio}")
    return min(int(n_total), math.floor(_decimal_fraction(ratio) * n_total + Fraction(1, 2)))


def cluster_budgets(cluster_sizes, ratio: float, total: Optional[int] = None,
                    rounding: str = "largest_remainder") -> np.ndarray:
    """Per-cluster selection counts (int64), never above a cluster's size.

    largest_remainder (default): quotas q_c = ratio * n_c (or total * n_c / N when `total` is given),
    floors first, then one more for the clusters with the largest remainders, ties to the lower cluster
    id; the budgets sum exactly to `total`, default round(ratio * N) with halves up. Exact rational
    arithmetic, so the result does not depend on float noise.
    floor: the original code's int(ratio * n_c) per cluster (quirk §4.5), float arithmetic as there.
    """
    sizes = np.asarray(cluster_sizes)
    if sizes.ndim != 1 or (sizes.size and (not np.issubdtype(sizes.dtype, np.integer) or sizes.min() < 0)):
        raise ValueError("cluster_sizes must be a 1-D array of non-negative integers")
    sizes = sizes.astype(np.int64)
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"selection ratio must lie in [0, 1], got {ratio}")
    if rounding == "floor":
        if total is not None:
            raise ValueError("cluster_budgets: `total` is only meaningful with rounding='largest_remainder'")
        return np.array([int(ratio * int(n)) for n in sizes], dtype=np.int64)
    if rounding != "largest_remainder":
        raise ValueError(f"unknown rounding {rounding!r}; use 'largest_remainder' or 'floor'")
    n_total = int(sizes.sum())
    if total is None:
        frac = _decimal_fraction(ratio)
        target = selection_total(n_total, ratio)
        num, den = frac.numerator, frac.denominator
    else:
        target = int(total)
        if not 0 <= target <= n_total:
            raise ValueError(f"cluster_budgets: total={total} must lie in [0, {n_total}]")
        num, den = target, max(n_total, 1)
    products = [num * int(n) for n in sizes]  # Python ints: no overflow
    base = np.array([p // den for p in products], dtype=np.int64)
    remainder = [p % den for p in products]
    missing = target - int(base.sum())
    if missing > 0:
        order = sorted(range(len(sizes)), key=lambda c: (-remainder[c], c))
        base[np.array(order[:missing], dtype=np.int64)] += 1
    assert int(base.sum()) == target and bool((base <= sizes).all()), "budget rounding invariant broken"
    return base


# --------------------------------------------------------------------------------------------------------
# Exact relation values
# --------------------------------------------------------------------------------------------------------
def quantize_for_relation(h: np.ndarray) -> np.ndarray:
    """Rows of h rounded to RELATION_BITS bits relative to a power of two >= their norm (float64).

    Each row becomes m_i * 2**(e_i - 26) with integer |m_i| <= 2**26 (norm-wise), so dot products of
    two quantized rows are exact in float64 whatever the summation order. The change per coordinate is at
    most 2**-27 times the row's power-of-two scale, i.e. relative ~1e-8: below float32 resolution.
    The row's scale depends on the row alone, so a document's R does not depend on its cluster.
    """
    _check_matrix(h, "h")
    h64 = np.array(h, dtype=np.float64, order="C", copy=True)
    finite = np.isfinite(h64).all(axis=1)
    if not finite.all():
        raise ValueError(f"h row {int(np.flatnonzero(~finite)[0])} contains NaN or infinite values")
    norm = np.sqrt((h64 * h64).sum(axis=1))  # per-row reduction: the same bits in any context
    _, exponent = np.frexp(norm)  # 2**exponent > norm
    if exponent.size and exponent.max() > _MAX_ROW_EXPONENT:
        raise ValueError("h has rows with norms above 2**480; rescale h")
    tiny = exponent < _MIN_ROW_EXPONENT
    shift = (RELATION_BITS - exponent)[:, None]
    quantized = np.ldexp(np.rint(np.ldexp(h64, shift)), -shift)  # power-of-two scalings are exact
    quantized[tiny] = 0.0
    return quantized


def relation_rows(hq_rows: np.ndarray, hq: np.ndarray) -> np.ndarray:
    """R[rows, :] = float32 of the exact dot products of quantized rows (any BLAS routine gives these bits)."""
    return (hq_rows @ hq.T).astype(np.float32)


def relation_matrix(hq: np.ndarray, out: Optional[np.ndarray] = None,
                    block: Optional[int] = None) -> np.ndarray:
    """R = float32(hq @ hq.T) [n, n]; `out` (float32 [n, n], may be a strided view) is filled in place.

    Above 2048 rows it is computed as upper-triangle row blocks of 512 and mirrored (half the GEMM work;
    below that one GEMM is as fast with OpenBLAS). Mirroring is exact: each entry is an exact dot product,
    so R_ij == R_ji bitwise.
    """
    n = hq.shape[0]
    if out is None:
        out = np.empty((n, n), dtype=np.float32)
    if block is None:
        block = n if n <= 2048 else 512
    for start in range(0, n, max(block, 1)):
        stop = min(start + block, n)
        out[start:stop, start:] = hq[start:stop] @ hq[start:].T  # assignment rounds float64 -> float32
        out[stop:, start:stop] = out[start:stop, stop:].T
    return out


# --------------------------------------------------------------------------------------------------------
# Greedy selection (§3.6)
# --------------------------------------------------------------------------------------------------------
def _check_scores(s, n: int) -> np.ndarray:
    s64 = np.asarray(s, dtype=np.float64).reshape(-1)
    if s64.shape != (n,):
        raise ValueError(f"s has {s64.size} values but h has {n} rows")
    if not np.isfinite(s64).all():
        raise ValueError(f"s[{int(np.flatnonzero(~np.isfinite(s64))[0])}] is NaN or infinite")
    return s64


def _check_greedy_args(h_c, s_c, k, tau) -> tuple[np.ndarray, int]:
    n, _ = _check_matrix(h_c, "h")
    s64 = _check_scores(s_c, n)
    if not 0 <= k <= n:
        raise ValueError(f"greedy budget k={k} must lie in [0, n={n}]")
    if not (math.isfinite(tau) and tau > 0):
        raise ValueError(f"tau must be a positive finite number, got {tau}")
    return s64, n


def reference_greedy(h_c: np.ndarray, s_c: np.ndarray, k: int, tau: float = 1.0,
                     alpha: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """The literal per-cluster loop of §3.6 (the test and benchmark oracle).

    Rows are the cluster's members in their §3.5 order. Returns (local positions in pick order, the score
    each pick was chosen with). Step 0 takes argmin s; step i takes argmin over unchosen x of a_x * s_x;
    after picking j, a <- (i*a + alpha*(1 - R[:, j]/tau)) / (i+1) in float64, R[:, j] by one matrix-vector
    product per step. np.argmin returns the first minimum, so the first member in order wins ties.
    """
    s64, n = _check_greedy_args(h_c, s_c, k, tau)
    hq = quantize_for_relation(h_c)
    avg_rel = np.zeros(n, dtype=np.float64)
    chosen: list[int] = []
    chosen_scores: list[float] = []
    for i in range(k):
        scores = avg_rel * s64 if i > 0 else s64.copy()
        scores[chosen] = np.inf
        j = int(np.argmin(scores))
        chosen.append(j)
        chosen_scores.append(float(scores[j]))
        column = (hq @ hq[j]).astype(np.float32).astype(np.float64)
        cur_rel = alpha * (1.0 - column / tau)
        avg_rel = (i * avg_rel + cur_rel) / (i + 1)
    return np.array(chosen, dtype=np.int64), np.array(chosen_scores, dtype=np.float64)


def _member_lists(clusters: Clusters, n: int) -> list[np.ndarray]:
    """Member lists in greedy order; an assignment array gives members in ascending document index."""
    if isinstance(clusters, np.ndarray) and clusters.ndim == 1 and np.issubdtype(clusters.dtype, np.integer):
        if clusters.shape != (n,):
            raise ValueError(f"cluster assignment has {clusters.size} entries, expected one per document ({n})")
        if n and clusters.min() < 0:
            raise ValueError("cluster assignment contains negative ids")
        k = int(clusters.max()) + 1 if n else 0
        order = np.argsort(clusters, kind="stable")
        return np.split(order.astype(np.int64), np.cumsum(np.bincount(clusters, minlength=k))[:-1]) if k else []
    if any(np.ndim(m) == 0 for m in clusters):
        raise ValueError("clusters must be member index arrays (one per cluster) or an integer numpy "
                         "assignment array [n]; got a sequence of scalars")
    members = [np.asarray(m, dtype=np.int64).reshape(-1) for m in clusters]
    flat = np.concatenate(members) if members else np.empty(0, dtype=np.int64)
    if flat.size and (flat.min() < 0 or flat.max() >= n):
        raise ValueError(f"member lists refer to documents outside [0, {n})")
    if np.unique(flat).size != flat.size:
        raise ValueError("member lists contain a document more than once")
    return members


def _check_budgets(budgets, members: list[np.ndarray]) -> np.ndarray:
    budgets = np.asarray(budgets, dtype=np.int64).reshape(-1)
    if budgets.shape != (len(members),):
        raise ValueError(f"{budgets.size} budgets given for {len(members)} clusters")
    sizes = np.array([m.size for m in members], dtype=np.int64)
    bad = np.flatnonzero((budgets < 0) | (budgets > sizes))
    if bad.size:
        c = int(bad[0])
        raise ValueError(f"budget of cluster {c} is {int(budgets[c])} but the cluster has "
                         f"{int(sizes[c])} members")
    return budgets


def _plan_batches(sizes: np.ndarray, budgets: np.ndarray, max_gram_bytes: int,
                  batch_bytes: int) -> tuple[list, list]:
    """Group clusters of similar size (within 2x) into padded batches of about batch_bytes of float32
    Gram. A cluster whose own Gram exceeds max_gram_bytes is returned in `singles`: it runs alone with
    one exact matrix-vector product per step instead (memory O(n d)).
    """
    todo = [c for c in np.argsort(-sizes, kind="stable").tolist() if budgets[c] > 0]
    limit = min(batch_bytes, max_gram_bytes)
    batches, singles, current, width = [], [], [], 0
    for c in todo:
        n = int(sizes[c])
        if 4 * n * n > max_gram_bytes:
            singles.append(c)
            continue
        if current and 4 * (len(current) + 1) * width * width <= limit and 2 * n >= width:
            current.append(c)
            continue
        if current:
            batches.append(current)
        current, width = [c], n
    if current:
        batches.append(current)
    return batches, singles


def _greedy_loop_numpy(fetch_rows, s: np.ndarray, blocked: np.ndarray, budgets: np.ndarray,
                       tau: float, alpha: float):
    """Batched greedy over B padded clusters (rows sorted by budget, descending).

    s: float64 [B, W]; blocked: bool [B, W], True on padding and on chosen members, whose score is set
    to +inf as in the reference. fetch_rows(m, j) returns float32 R[b, j_b, :] for the first m rows.
    The float64 operations and their order match reference_greedy exactly.
    """
    n_rows, width = s.shape
    kmax = int(budgets[0]) if n_rows else 0
    active = np.searchsorted(-budgets, -np.arange(kmax), side="left")  # rows with budget > i
    avg_rel = np.zeros((n_rows, width), dtype=np.float64)
    scores = np.empty((n_rows, width), dtype=np.float64)
    cur = np.empty((n_rows, width), dtype=np.float64)
    picks = np.zeros((n_rows, kmax), dtype=np.int64)
    values = np.zeros((n_rows, kmax), dtype=np.float64)
    rows_all = np.arange(n_rows)
    for i in range(kmax):
        m = int(active[i])
        rows, sc, a, cu = rows_all[:m], scores[:m], avg_rel[:m], cur[:m]
        if i:
            np.multiply(a, s[:m], out=sc)
        else:
            sc[...] = s[:m]
        np.copyto(sc, np.inf, where=blocked[:m])
        j = np.argmin(sc, axis=1)
        picks[:m, i] = j
        values[:m, i] = sc[rows, j]
        blocked[rows, j] = True
        np.divide(fetch_rows(m, j), tau, out=cu, dtype=np.float64)
        np.subtract(1.0, cu, out=cu)
        np.multiply(alpha, cu, out=cu)
        a *= i
        a += cu
        a /= i + 1
    return picks, values


def _greedy_loop_torch(fetch_rows, s, blocked, budgets: np.ndarray, tau: float, alpha: float):
    """The numpy loop in torch (CUDA). Divisors are 0-dim device tensors: torch turns division by a
    Python scalar into multiplication by its reciprocal on CUDA, which would not match numpy's bits."""
    import torch

    n_rows, width = s.shape
    dev = s.device
    kmax = int(budgets[0]) if n_rows else 0
    active = np.searchsorted(-budgets, -np.arange(kmax), side="left")
    avg_rel = torch.zeros((n_rows, width), dtype=torch.float64, device=dev)
    picks = torch.zeros((n_rows, kmax), dtype=torch.int64, device=dev)
    values = torch.zeros((n_rows, kmax), dtype=torch.float64, device=dev)
    rows_all = torch.arange(n_rows, device=dev)
    tau_t = torch.tensor(tau, dtype=torch.float64, device=dev)
    one = torch.tensor(1.0, dtype=torch.float64, device=dev)
    for i in range(kmax):
        m = int(active[i])
        rows = rows_all[:m]
        sc = (avg_rel[:m] * s[:m] if i else s[:m].clone()).masked_fill_(blocked[:m], float("inf"))
        j = torch.argmin(sc, dim=1)  # documented to return the first minimal index
        picks[:m, i] = j
        values[:m, i] = sc[rows, j]
        blocked[rows, j] = True
        cu = alpha * (one - fetch_rows(m, j).to(torch.float64) / tau_t)
        step = torch.tensor(float(i), dtype=torch.float64, device=dev)
        avg_rel[:m] = (step * avg_rel[:m] + cu) / (step + one)
    return picks.cpu().numpy(), values.cpu().numpy()


def _batch_inputs(h, s64, members, cluster_ids, budgets):
    """Clusters of a batch sorted by budget (descending), with s and the padding mask as [B, W]."""
    order = sorted(cluster_ids, key=lambda c: (-int(budgets[c]), c))
    width = max(members[c].size for c in order)
    s_pad = np.zeros((len(order), width), dtype=np.float64)
    blocked = np.ones((len(order), width), dtype=bool)
    for b, c in enumerate(order):
        idx = members[c]
        s_pad[b, :idx.size] = s64[idx]
        blocked[b, :idx.size] = False
    return order, s_pad, blocked


def _quantized_rows(h, idx: np.ndarray) -> np.ndarray:
    # Read rows in ascending order (memmap locality), then restore the member order.
    sort = np.argsort(idx, kind="stable")
    rows = np.empty((idx.size, h.shape[1]), dtype=np.float64)
    rows[sort] = quantize_for_relation(np.asarray(h[idx[sort]]))
    return rows


def _scratch_gram(scratch: dict, n_rows: int, width: int) -> np.ndarray:
    """A float32 buffer per thread, reused across the batches of one call (fresh large allocations
    cost page faults); `scratch` belongs to the call, so the memory is released when it returns."""
    need = n_rows * width * width
    buf = scratch.get(threading.get_ident())
    if buf is None or buf.size < need:
        buf = np.empty(need, dtype=np.float32)
        scratch[threading.get_ident()] = buf
    return buf[:need].reshape(n_rows, width, width)


def _run_batch_numpy(h, s64, members, cluster_ids, budgets, tau, alpha, scratch: dict):
    order, s_pad, blocked = _batch_inputs(h, s64, members, cluster_ids, budgets)
    gram = _scratch_gram(scratch, len(order), s_pad.shape[1])
    for b, c in enumerate(order):
        n = members[c].size
        relation_matrix(_quantized_rows(h, members[c]), out=gram[b, :n, :n])
        gram[b, :n, n:] = 0.0  # padding columns: finite, so a stays finite there (their score is +inf)
    fetch = lambda m, j: gram[np.arange(m), j]  # noqa: E731 - rows j_b of each cluster's Gram
    picks, values = _greedy_loop_numpy(fetch, s_pad, blocked, budgets[order], tau, alpha)
    return {c: (picks[b, :budgets[c]], values[b, :budgets[c]]) for b, c in enumerate(order)}


def _run_single_numpy(h, s64, members, c, budgets, tau, alpha):
    """A cluster too large for a Gram: one exact matrix-vector product per step (bounded memory)."""
    order, s_pad, blocked = _batch_inputs(h, s64, members, [c], budgets)
    hq = _quantized_rows(h, members[c])
    fetch = lambda m, j: relation_rows(hq[j], hq)  # noqa: E731
    picks, values = _greedy_loop_numpy(fetch, s_pad, blocked, budgets[order], tau, alpha)
    return {c: (picks[0, :budgets[c]], values[0, :budgets[c]])}


def _run_batch_torch(h, s64, members, cluster_ids, budgets, tau, alpha, device, use_gram: bool):
    import torch

    order, s_pad, blocked = _batch_inputs(h, s64, members, cluster_ids, budgets)
    hq = np.zeros((len(order), s_pad.shape[1], h.shape[1]), dtype=np.float64)
    for b, c in enumerate(order):
        hq[b, :members[c].size] = _quantized_rows(h, members[c])
    hq_t = torch.from_numpy(hq).to(device)
    del hq
    s_t = torch.from_numpy(s_pad).to(device)
    blocked_t = torch.from_numpy(blocked).to(device)
    if use_gram:
        gram = torch.bmm(hq_t, hq_t.transpose(1, 2)).to(torch.float32)  # exact float64, rounded once
        del hq_t
        fetch = lambda m, j: gram[torch.arange(m, device=device), j]  # noqa: E731
    else:
        hq0 = hq_t[0]
        fetch = lambda m, j: (hq0[j] @ hq0.T).to(torch.float32)  # noqa: E731
    picks, values = _greedy_loop_torch(fetch, s_t, blocked_t, budgets[order], tau, alpha)
    return {c: (picks[b, :budgets[c]], values[b, :budgets[c]]) for b, c in enumerate(order)}


def _resolve_device(device) -> str:
    if device is None:
        try:
            import torch

            return "cuda" if torch.cuda.is_available() else "numpy"
        except ImportError:  # pragma: no cover - torch is a dependency
            return "numpy"
    return str(device)


def group_greedy_select(h: np.ndarray, s: np.ndarray, clusters: Clusters, budgets, tau: float = 1.0,
                        alpha: float = 1.0, *, workers: int = 1, device: Optional[str] = None,
                        max_gram_bytes: Optional[int] = None, batch_bytes: Optional[int] = None,
                        progress: ProgressFn = None) -> SelectionResult:
    """Per-cluster greedy selection (§3.6); picks identical to `reference_greedy` on every cluster.

    h: [n, d] (float32, may be a memmap), s: [n] z-space scores (lower is better).
    clusters: member lists in §3.5 order (from cluster_member_order) or an int assignment array [n]
    (members then in ascending document index). Pass a clustering of raw embeddings for the
    semantic-clusters ablation. budgets: one count per cluster (cluster_budgets).
    Result: clusters in id order, each cluster's picks in pick order; cluster id and pick score per row.

    Speed: clusters of similar size run as one padded batch: per-cluster exact Gram matrices (BLAS-3),
    +inf masks, one argmin over all clusters of the batch per step. A batch holds about batch_bytes of
    float32 Gram (default 64 MiB on CPU, 1 GiB on GPU); a cluster whose own Gram exceeds max_gram_bytes
    (default 1 GiB on CPU, 8 GiB on GPU) runs alone with one exact matrix-vector product per step, so
    memory stays O(n d) for giant clusters. workers > 1 runs CPU batches in threads (one batch each).
    device: None (CUDA if available, else numpy), "numpy", or a torch device ("cuda", "cpu": the torch
    loop, mainly for tests). Every path gives the same picks and scores, bit for bit.
    progress(done_clusters, total_clusters, "clusters") is called after each batch.
    """
    n, _ = _check_matrix(h, "h")
    s64 = _check_scores(s, n)
    if not (math.isfinite(tau) and tau > 0):
        raise ValueError(f"tau must be a positive finite number, got {tau}")
    members = _member_lists(clusters, n)
    budgets = _check_budgets(budgets, members)
    sizes = np.array([m.size for m in members], dtype=np.int64)
    device = _resolve_device(device)
    on_gpu = device not in ("numpy", "cpu")
    if max_gram_bytes is None:
        max_gram_bytes = (8 << 30) if on_gpu else (1 << 30)
    if batch_bytes is None:
        batch_bytes = (1 << 30) if on_gpu else (64 << 20)
    batches, singles = _plan_batches(sizes, budgets, int(max_gram_bytes), batch_bytes)
    jobs = [("batch", b) for b in batches] + [("single", [c]) for c in singles]
    total_clusters = sum(len(cs) for _, cs in jobs)
    scratch: dict = {}

    def run(job):
        kind, cluster_ids = job
        if device == "numpy":
            if kind == "batch":
                return _run_batch_numpy(h, s64, members, cluster_ids, budgets, tau, alpha, scratch)
            return _run_single_numpy(h, s64, members, cluster_ids[0], budgets, tau, alpha)
        return _run_batch_torch(h, s64, members, cluster_ids, budgets, tau, alpha, device, kind == "batch")

    results: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    done = 0
    if workers > 1 and device == "numpy" and len(jobs) > 1:
        with ThreadPoolExecutor(max_workers=int(workers)) as pool:
            for out in pool.map(run, jobs):
                results.update(out)
                done += len(out)
                if progress:
                    progress(done, total_clusters, "clusters")
    else:
        for job in jobs:
            out = run(job)
            results.update(out)
            done += len(out)
            if progress:
                progress(done, total_clusters, "clusters")
    return _assemble(members, budgets, results)


def group_greedy_by_cluster(h, s: np.ndarray, clusters: Clusters, budgets, tau: float = 1.0, alpha: float = 1.0,
                            *, scratch_dir: Union[str, os.PathLike, None] = None, block_rows: int = 4096,
                            **options) -> SelectionResult:
    """group_greedy_select for an h too large to hold (e.g. a `rows.ConcatRows` over the pool's shards).

    h is read once, in pool-order blocks of block_rows, and written in cluster member order to a scratch file
    under scratch_dir (the system temp dir if None), so that every cluster is one contiguous read; the greedy
    then holds one batch of clusters at a time. Same picks, scores and ranks as group_greedy_select on the
    same h, bit for bit (each cluster sees the same rows in the same order). options: those of
    group_greedy_select (workers, device, max_gram_bytes, batch_bytes, progress).
    """
    n, _ = _check_matrix(h, "h")
    s64 = _check_scores(s, n)
    members = _member_lists(clusters, n)
    order = np.concatenate(members) if members else np.empty(0, dtype=np.int64)
    bounds = np.cumsum([0] + [m.size for m in members])
    local = [np.arange(bounds[c], bounds[c + 1], dtype=np.int64) for c in range(len(members))]
    with tempfile.TemporaryDirectory(prefix=".gmates-h-by-cluster-", dir=scratch_dir) as tmp:
        h_ordered = RowFile.write_permuted(Path(tmp) / "h.bin", h, order, block_rows)
        result = group_greedy_select(h_ordered, s64[order], local, budgets, tau, alpha, **options)
    return SelectionResult(indices=order[result.indices], rank=result.rank, score=result.score,
                           cluster=result.cluster)


def _assemble(members, budgets, results) -> SelectionResult:
    idx, score, cluster = [], [], []
    for c, m in enumerate(members):
        if budgets[c] == 0:
            continue
        local, values = results[c]
        idx.append(m[local])
        score.append(values)
        cluster.append(np.full(local.size, c, dtype=np.int64))
    if not idx:
        return SelectionResult.from_picks(np.empty(0, np.int64), np.empty(0), np.empty(0, np.int64))
    return SelectionResult.from_picks(np.concatenate(idx), np.concatenate(score), np.concatenate(cluster))


def reference_group_select(h: np.ndarray, s: np.ndarray, clusters: Clusters, budgets, tau: float = 1.0,
                           alpha: float = 1.0) -> SelectionResult:
    """group_greedy_select computed with the literal reference loop, cluster by cluster (slow oracle)."""
    n, _ = _check_matrix(h, "h")
    members = _member_lists(clusters, n)
    budgets = _check_budgets(budgets, members)
    s64 = np.asarray(s, dtype=np.float64).reshape(-1)
    results = {}
    for c, m in enumerate(members):
        if budgets[c]:
            results[c] = reference_greedy(np.asarray(h[m]), s64[m], int(budgets[c]), tau, alpha)
    return _assemble(members, budgets, results)


# --------------------------------------------------------------------------------------------------------
# Baselines and ablations (§5)
# --------------------------------------------------------------------------------------------------------
def _check_count(n: int, n_select: int) -> None:
    if not 0 <= n_select <= n:
        raise ValueError(f"cannot select {n_select} of {n} documents")


def mates_select(s_individual: np.ndarray, n_select: int, gumbel: bool = False, tau: float = 0.5,
                 seed: int = 0) -> SelectionResult:
    """MATES-style individual selection: the n_select smallest scores (ties to the lower index).

    gumbel=True ranks by s/tau PLUS standard Gumbel noise (numpy Generator(seed)) and keeps the smallest,
    as the MATES code does (§5). Score column: the key that was ranked.
    """
    s64 = np.asarray(s_individual, dtype=np.float64).reshape(-1)
    _check_count(s64.size, n_select)
    if not np.isfinite(s64).all():
        raise ValueError("s_individual contains NaN or infinite values")
    if gumbel:
        if not (math.isfinite(tau) and tau > 0):
            raise ValueError(f"Gumbel temperature must be positive, got {tau}")
        key = s64 / tau + np.random.default_rng(seed).gumbel(size=s64.size)
    else:
        key = s64
    picks = np.argsort(key, kind="stable")[:n_select]
    return SelectionResult.from_picks(picks, key[picks])


def random_select(n: int, n_select: int, seed: int) -> SelectionResult:
    """A uniform random subset: the n_select smallest of n uniform keys (Generator(seed)); score = key."""
    _check_count(n, n_select)
    key = np.random.default_rng(seed).random(n)
    picks = np.argsort(key, kind="stable")[:n_select]
    return SelectionResult.from_picks(picks, key[picks])


def no_relation_select(s: np.ndarray, clusters: Clusters, budgets) -> SelectionResult:
    """Ablation without the relation term: each cluster's `budget` smallest s (ties by member order)."""
    s64 = np.asarray(s, dtype=np.float64).reshape(-1)
    if not np.isfinite(s64).all():
        raise ValueError("s contains NaN or infinite values")
    members = _member_lists(clusters, s64.size)
    budgets = _check_budgets(budgets, members)
    results = {}
    for c, m in enumerate(members):
        if budgets[c]:
            local = np.argsort(s64[m], kind="stable")[:budgets[c]]
            results[c] = (local, s64[m][local])
    return _assemble(members, budgets, results)


def global_greedy_select(h: np.ndarray, s: np.ndarray, n_select: int, tau: float = 1.0, alpha: float = 1.0,
                         max_docs: int = 20000, device: Optional[str] = None,
                         max_gram_bytes: Optional[int] = None) -> SelectionResult:
    """No-clustering ablation: one greedy over the whole pool (cost ~ n^2 d), refused above max_docs."""
    n, _ = _check_matrix(h, "h")
    if n > max_docs:
        raise ValueError(f"global greedy over {n} documents refused: limit is max_docs={max_docs} "
                         f"(cost grows as n^2 * d); use clusters or raise max_docs")
    _check_count(n, n_select)
    result = group_greedy_select(h, s, [np.arange(n, dtype=np.int64)], [n_select], tau, alpha,
                                 device=device, max_gram_bytes=max_gram_bytes)
    return SelectionResult.from_picks(result.indices, result.score)
