"""Selection stage: influence-aware clusters, then one selected subset per method (Group-MATES + baselines)."""
from __future__ import annotations

import tempfile
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl

from ...core import methods, sampling, validation
from ...core import selection as sel
from ...lazy import lazy_module
from ..artifacts import documents_column, pool_rows
from ..declare import METHODS, AssetDecl, Check, Input
from ..runtime import png_md

relational, plots = lazy_module("gmates_assets.core.relational"), lazy_module("gmates_assets.core.plots")

GROUP = "selection"


def _cluster_config(section) -> methods.ClusterConfig:
    return methods.ClusterConfig(section.k, section.niter, section.seed, section.max_points_per_centroid,
                                 section.subsample, section.member_order)


def _selection_config(section, device: str | None = None) -> methods.SelectionConfig:
    return methods.SelectionConfig(
        ratio=section.ratio, budget_rounding=section.budget_rounding, mates_gumbel=section.mates_gumbel,
        mates_tau=section.mates_tau, seed=section.seed, global_greedy_max_docs=section.global_greedy_max_docs,
        workers=section.workers, device=device)


def _stored_members(step) -> list[np.ndarray]:
    frame = pl.read_parquet(step.input("cluster_assignments").file("assignments.parquet"),
                            columns=["doc_index", "cluster", "member_rank"])
    return methods.members_from_ranks(frame["doc_index"].to_numpy(), frame["cluster"].to_numpy(),
                                      frame["member_rank"].to_numpy(), step.manifest.clustering.k)


def _relation_params(step) -> tuple[float, float]:
    if step.manifest.selection.relation_params == "fixed":
        return 1.0, 1.0  # the original code's hard-coded values (quirk §4.1)
    trained = relational.load_influence_model(step.input("relational_model").path / "relational")
    return float(trained.tau), float(trained.alpha)


def _pool_scores(step, scratch_dir: Path) -> methods.PoolScores:
    tau, alpha = _relation_params(step)
    return methods.PoolScores(
        h=pool_rows(step, "influence_scores", "h"), s=pool_rows(step, "influence_scores", "s")[:],
        members=_stored_members(step), tau=tau, alpha=alpha,
        s_individual=lambda: pool_rows(step, "influence_scores", "s_individual")[:],
        semantic_members=lambda: methods.cluster(pool_rows(step, "embeddings", "pooled"),
                                                 _cluster_config(step.manifest.clustering)).members,
        scratch_dir=str(scratch_dir))


# ------------------------------------------------------------------------------------------ compute
def _kmeans_train_rows(step, ids) -> np.ndarray | None:
    """The k-means training subsample as a stable sample of document ids (None: the seeded positional draw)."""
    section = step.manifest.clustering
    cap = section.k * section.max_points_per_centroid
    if step.manifest.sampling != "stable" or section.subsample != "gmates" or len(ids) <= cap:
        return None
    return sampling.size_sample(ids.scan().collect()[ids.column].to_list(), cap,
                                sampling.sample_key("kmeans", section.seed))


def build_cluster_assignments(step, out: Path) -> dict:
    section = step.manifest.clustering
    source = ("influence_scores", "h") if section.space == "influence" else ("embeddings", "pooled")
    x, ids = pool_rows(step, *source), documents_column(step, "doc_id")
    if len(ids) != len(x):
        raise ValueError(f"the pool has {len(ids)} documents but {len(x)} rows of {source[0]} {source[1]!r}")
    result = methods.cluster(x, _cluster_config(section), _kmeans_train_rows(step, ids))
    sel.save_centroid_index(result.centroids, out / "centroids.faiss")
    columns = pl.DataFrame({"doc_index": np.arange(len(x), dtype=np.int64),
                            "cluster": result.assignment.astype(np.int64),
                            "similarity": result.similarity.astype(np.float32),
                            "member_rank": methods.member_ranks(result.members, len(x))})
    # doc_ids stream from the documents shards into the file; the numeric columns are O(n) small arrays
    (pl.concat([columns.lazy(), ids.scan()], how="horizontal")
     .select("doc_index", "doc_id", "cluster", "similarity", "member_rank").sink_parquet(out / "assignments.parquet"))
    sizes = np.array([len(m) for m in result.members])
    return {"dagster/row_count": int(len(x)), "k": section.k, "space": section.space,
            "largest_cluster": int(sizes.max()), "smallest_cluster": int(sizes.min()),
            "empty_clusters": int((sizes == 0).sum()),
            "cluster_sizes": png_md(plots.histograms({"cluster size": sizes}, "cluster-size histogram", bins=20))}


def check_selection_not_empty(step) -> None:
    """The selection's budgets select at least one document (before any selection work)."""
    members, section = _stored_members(step), step.manifest.selection
    validation.check_selection_size(sum(len(m) for m in members), section.ratio)
    validation.check_cluster_budgets(methods.budgets(members, _selection_config(section)), section.ratio,
                                     max(len(m) for m in members))


def build_selected_subset(step, out: Path) -> dict:
    method = step.partition
    with tempfile.TemporaryDirectory(prefix=".scratch-", dir=out) as scratch:
        pool = _pool_scores(step, Path(scratch))
        config = _selection_config(step.manifest.selection, step.device)  # the run's GPU, or execution.device
        result = methods.select(method, pool, config, step.progress("select"))
    if len(result) == 0:  # e.g. semantic clusters whose floor budgets are all 0: never commit an empty selection
        raise validation.ValidationError(f"selected_subset[{method}]: the selection is empty with selection.ratio "
                                         f"({step.manifest.selection.ratio}); raise selection.ratio")
    result.table(documents_column(step, "doc_id")[result.indices]).write_parquet(out / "selected.parquet")
    return _selection_metadata(result, pool, method)


# A bar per cluster up to this many clusters; beyond, a histogram over clusters. At k = 2,000 (1M documents) the
# bar plot took most of the selection step on 2 cores (about 7 s CPU each, 2,000 unreadable bars).
BAR_PLOT_MAX_CLUSTERS = 40


def _fraction_plot(fraction: dict[str, float], method: str) -> bytes:
    title = f"{method}: selected fraction per cluster"
    if len(fraction) <= BAR_PLOT_MAX_CLUSTERS:
        return plots.bar_plot(fraction, title)
    return plots.histograms({"clusters": np.fromiter(fraction.values(), float, len(fraction))},
                            f"{title} ({len(fraction)} clusters)", bins=20)


def _selection_metadata(result: sel.SelectionResult, pool: methods.PoolScores, method: str) -> dict:
    s, members = pool.s, pool.members
    chosen = np.zeros(len(s), dtype=bool)
    chosen[result.indices] = True
    sizes = np.array([len(m) for m in members])
    fraction = {str(c): float(chosen[m].mean()) if len(m) else 0.0 for c, m in enumerate(members)}
    return {
        "dagster/row_count": int(len(result)), "method": method, "pool_documents": int(len(s)),
        "selected_fraction": round(len(result) / max(len(s), 1), 4), "tau": round(pool.tau, 5),
        "alpha": round(pool.alpha, 5),
        "mean_s_selected": round(float(s[chosen].mean()), 4) if chosen.any() else None,
        "mean_s_rejected": round(float(s[~chosen].mean()), 4) if (~chosen).any() else None,
        "selected_fraction_per_cluster": png_md(_fraction_plot(fraction, method)),
        "score_distribution": png_md(plots.histograms({"selected": s[chosen], "rejected": s[~chosen]},
                                                f"{method}: s of selected vs rejected")),
        "cluster_sizes": png_md(plots.histograms({"cluster size": sizes}, "cluster-size histogram", bins=20)),
    }


def check_selection(step, artifact) -> list[dg.AssetCheckResult]:
    """Expected size and known ids, read independently of the selection from the upstream artifacts."""
    ids = pl.read_parquet(artifact.file("selected.parquet"))["doc_id"]
    expected = int(methods.budgets(_stored_members(step), _selection_config(step.manifest.selection)).sum())
    unknown = int((~documents_column(step, "doc_id").contains(ids)).sum())
    duplicates = int(len(ids) - ids.n_unique())
    return [
        dg.AssetCheckResult(check_name="no_duplicate_ids", passed=duplicates == 0, metadata={"duplicates": duplicates}),
        dg.AssetCheckResult(check_name="selection_size_exact", passed=len(ids) == expected,
                            metadata={"selected": len(ids), "expected": expected}),
        dg.AssetCheckResult(check_name="ids_exist_in_documents", passed=unknown == 0,
                            metadata={"unknown_ids": unknown}),
    ]


# ------------------------------------------------------------------------------------------ declarations
_POOL = (Input("influence_scores_index"), Input("embeddings_index"), Input("documents_index"))

DECLS = [
    AssetDecl("cluster_assignments", GROUP,
              "Spherical k-means on the influence representations h (§3.5); member order per cluster.",
              compute=build_cluster_assignments, inputs=_POOL, sections=("clustering", "sampling"),
              kinds=frozenset({"faiss", "parquet"})),
    AssetDecl("selected_subset", GROUP,
              "The selected documents of one method (Group-MATES, MATES, random, ablations).",
              compute=build_selected_subset, partitioning=METHODS,
              inputs=(Input("cluster_assignments"), Input("relational_model")) + _POOL,
              sections=("selection", "clustering"), kinds=frozenset({"parquet"}), check_fn=check_selection,
              precheck=check_selection_not_empty,
              checks=(Check("no_duplicate_ids", "every selected doc_id appears once"),
                      Check("selection_size_exact", "the selection has exactly the budgeted number of documents"),
                      Check("ids_exist_in_documents", "every selected doc_id is a document of the pool"))),
]
