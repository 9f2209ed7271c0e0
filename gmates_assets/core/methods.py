"""Selection methods as a registry: Group-MATES and the baselines/ablations of docs/method.md §5.

Each method maps the pool's scores and clusters (`PoolScores`) and the selection settings (`SelectionConfig`)
to a `SelectionResult`. Every method selects the same number of documents (the Group-MATES budget total), so
methods are compared at equal data. Add a method by decorating a function with `@method("name")`.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from . import selection as sel
from .progress import ProgressFn


@dataclass(frozen=True)
class ClusterConfig:
    k: int
    niter: int = 25
    seed: int = 1234
    max_points_per_centroid: int = 256
    subsample: str = "gmates"  # who draws the k-means training subsample: gmates (seeded) or faiss (official)
    member_order: str = "float64"  # precision of the farthest-first sort; float32 as the official code


@dataclass(frozen=True)
class Clustering:
    centroids: np.ndarray  # [k, d] float32
    assignment: np.ndarray  # [n] int64
    similarity: np.ndarray  # [n] inner product with the assigned centroid
    members: list[np.ndarray]  # per cluster, in §3.5 order (farthest first)


def cluster(x, config: ClusterConfig, train_rows=None) -> Clustering:
    """Spherical k-means, assignment by largest inner product, member order farthest first (§3.5).

    x: [n, d] rows, a numpy array or any row source read by row subsets and blocks (`rows.ConcatRows`).
    train_rows: the k-means training subsample when the pool exceeds k * max_points_per_centroid (default: a
    seeded draw over positions)."""
    centroids = sel.spherical_kmeans(x, config.k, config.niter, config.seed, config.max_points_per_centroid,
                                     subsample=config.subsample, train_rows=train_rows)
    assignment, similarity = sel.assign_clusters(x, centroids, return_similarity=True)
    members = sel.cluster_member_order(x, centroids, assignment, similarity, precision=config.member_order)
    return Clustering(centroids, assignment, similarity, members)


def member_ranks(members: list[np.ndarray], n: int) -> np.ndarray:
    """Position of every document within its cluster's member order."""
    rank = np.zeros(n, dtype=np.int64)
    for m in members:
        rank[m] = np.arange(len(m))
    return rank


def members_from_ranks(doc_index: np.ndarray, cluster_ids: np.ndarray, rank: np.ndarray, k: int) -> list[np.ndarray]:
    """Inverse of (assignment, member_ranks): member lists per cluster in stored order."""
    order = np.lexsort((rank, cluster_ids))
    sorted_clusters = cluster_ids[order]
    bounds = np.searchsorted(sorted_clusters, np.arange(k + 1))
    return [np.asarray(doc_index[order[bounds[c]:bounds[c + 1]]], dtype=np.int64) for c in range(k)]


@dataclass(frozen=True)
class SelectionConfig:
    ratio: float = 0.5
    budget_rounding: str = "exact"  # exact: largest remainder, sums to ratio·N; floor: the original code
    mates_gumbel: bool = False
    mates_tau: float = 0.5
    seed: int = 0  # random and MATES-Gumbel only
    global_greedy_max_docs: int = 20000
    workers: int = 1
    device: Optional[str] = None  # the step's execution device (auto | cpu | cuda | cuda:N); never changes a pick


def greedy_device(setting: Optional[str]) -> Optional[str]:
    """The step's device setting as group_greedy_select takes it: auto -> None (CUDA when present, else numpy),
    cpu -> numpy (the fast CPU path; its "cpu" is the torch loop), cuda[:N] -> that GPU."""
    if setting is None or setting == "auto":
        return None
    return "numpy" if setting == "cpu" else setting


def budgets(members: list[np.ndarray], config: SelectionConfig, total: Optional[int] = None) -> np.ndarray:
    rounding = "largest_remainder" if config.budget_rounding == "exact" else "floor"
    if total is not None:
        return sel.cluster_budgets([len(m) for m in members], config.ratio, total=total)
    return sel.cluster_budgets([len(m) for m in members], config.ratio, rounding=rounding)


@dataclass
class PoolScores:
    """What methods read. Arrays that only some methods need are loaded on first use; h is never loaded
    whole: it is any [n, d] row source (a numpy array, a memmap, a `rows.ConcatRows` over the shards)."""

    h: Any  # [n, d] influence representations, read cluster by cluster
    s: np.ndarray  # [n] relational-model individual scores (z-space, lower is better)
    members: list[np.ndarray]  # influence-aware clusters
    tau: float
    alpha: float
    s_individual: Callable[[], np.ndarray]  # [n] the individual-only (MATES) model's scores
    semantic_members: Callable[[], list[np.ndarray]]  # clusters of the raw encoder embeddings
    scratch_dir: Optional[str] = None  # where h is copied in cluster order (system temp dir if None)


MethodFn = Callable[[PoolScores, SelectionConfig, int, ProgressFn], sel.SelectionResult]
METHODS: dict[str, MethodFn] = {}


def method(name: str) -> Callable[[MethodFn], MethodFn]:
    def register(fn: MethodFn) -> MethodFn:
        METHODS[name] = fn
        return fn
    return register


def select(name: str, pool: PoolScores, config: SelectionConfig, progress: ProgressFn = None) -> sel.SelectionResult:
    """Run one method; every method selects the Group-MATES total (sum of the cluster budgets)."""
    if name not in METHODS:
        raise ValueError(f"unknown selection method {name!r}; known: {sorted(METHODS)}")
    n_select = int(budgets(pool.members, config).sum())
    return METHODS[name](pool, config, n_select, progress)


def _group_greedy(pool: PoolScores, members: list[np.ndarray], cluster_budgets: np.ndarray,
                  config: SelectionConfig, progress: ProgressFn) -> sel.SelectionResult:
    return sel.group_greedy_by_cluster(pool.h, pool.s, members, cluster_budgets, pool.tau, pool.alpha,
                                       scratch_dir=pool.scratch_dir, workers=config.workers,
                                       device=greedy_device(config.device), progress=progress)


@method("group_mates")
def _group_mates(pool: PoolScores, config: SelectionConfig, n_select: int, progress: ProgressFn):
    return _group_greedy(pool, pool.members, budgets(pool.members, config), config, progress)


@method("semantic_clusters")
def _semantic_clusters(pool: PoolScores, config: SelectionConfig, n_select: int, progress: ProgressFn):
    members = pool.semantic_members()
    return _group_greedy(pool, members, budgets(members, config, total=n_select), config, progress)


@method("no_relation")
def _no_relation(pool: PoolScores, config: SelectionConfig, n_select: int, progress: ProgressFn):
    return sel.no_relation_select(pool.s, pool.members, budgets(pool.members, config))


@method("no_clustering")
def _no_clustering(pool: PoolScores, config: SelectionConfig, n_select: int, progress: ProgressFn):
    return sel.global_greedy_select(pool.h, pool.s, n_select, pool.tau, pool.alpha,
                                    max_docs=config.global_greedy_max_docs, device=greedy_device(config.device))


@method("mates")
def _mates(pool: PoolScores, config: SelectionConfig, n_select: int, progress: ProgressFn):
    return sel.mates_select(pool.s_individual(), n_select, gumbel=config.mates_gumbel, tau=config.mates_tau,
                            seed=config.seed)


@method("random")
def _random(pool: PoolScores, config: SelectionConfig, n_select: int, progress: ProgressFn):
    return sel.random_select(len(pool.s), n_select, config.seed)
