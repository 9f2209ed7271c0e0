"""Selection stage: influence-aware clusters, then one selected subset per method (Group-MATES + baselines)."""
from __future__ import annotations

from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl

from ...core import relational
from ...core import selection as sel
from ...core.plots import bar_plot, histograms
from ..artifacts import doc_ids, read_all
from ..partitions import Partitions
from ..runtime import Dep, png_md, run_step
from .common import GmatesResource, all_of, gmates_asset

GROUP = "selection"


def _cluster(x: np.ndarray, section) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[np.ndarray]]:
    """(centroids, assignment, similarity, member lists in §3.5 order)."""
    centroids = sel.spherical_kmeans(x, section.k, section.niter, section.seed, section.max_points_per_centroid,
                                     subsample=section.subsample)
    assignment, similarity = sel.assign_clusters(x, centroids, return_similarity=True)
    members = sel.cluster_member_order(x, centroids, assignment, similarity, precision=section.member_order)
    return centroids, assignment, similarity, members


def _members_from_table(frame: pl.DataFrame, k: int) -> list[np.ndarray]:
    ordered = frame.sort(["cluster", "member_rank"])
    members = [np.zeros(0, np.int64)] * k
    for (cluster,), part in ordered.group_by(["cluster"], maintain_order=True):
        members[int(cluster)] = part["doc_index"].to_numpy().astype(np.int64)
    return members


def _budgets(members: list[np.ndarray], section) -> np.ndarray:
    rounding = "largest_remainder" if section.budget_rounding == "exact" else "floor"
    return sel.cluster_budgets([len(m) for m in members], section.ratio, rounding=rounding)


def _relation_params(step) -> tuple[float, float]:
    if step.manifest.selection.relation_params == "fixed":
        return 1.0, 1.0  # the original code's hard-coded values (quirk §4.1)
    trained = relational.load_influence_model(step.input("relational_model").path / "relational")
    return float(trained.tau), float(trained.alpha)


def select_for_method(step, method: str) -> tuple[sel.SelectionResult, dict]:
    section = step.manifest.selection
    h = read_all(step, "influence_scores", "h")
    s = read_all(step, "influence_scores", "s")
    table = pl.read_parquet(step.input("cluster_assignments").file("assignments.parquet"))
    members = _members_from_table(table, step.manifest.clustering.k)
    budgets = _budgets(members, section)
    n_select = int(budgets.sum())  # the same count for every method
    if method == "semantic_clusters":
        members = _cluster(read_all(step, "embeddings", "pooled"), step.manifest.clustering)[3]
        budgets = sel.cluster_budgets([len(m) for m in members], section.ratio, total=n_select)
    tau, alpha = _relation_params(step)
    info = {"tau": round(tau, 5), "alpha": round(alpha, 5), "n_select": n_select}
    if method in ("group_mates", "semantic_clusters"):
        result = sel.group_greedy_select(h, s, members, budgets, tau, alpha, workers=section.workers,
                                         progress=step.progress("greedy"))
    elif method == "no_relation":
        result = sel.no_relation_select(s, members, budgets)
    elif method == "no_clustering":
        result = sel.global_greedy_select(h, s, n_select, tau, alpha, max_docs=section.global_greedy_max_docs)
    elif method == "mates":
        s_ind = read_all(step, "influence_scores", "s_individual")
        result = sel.mates_select(s_ind, n_select, gumbel=section.mates_gumbel, tau=section.mates_tau, seed=section.seed)
    elif method == "random":
        result = sel.random_select(len(s), n_select, section.seed)
    else:
        raise ValueError(f"unknown selection method {method!r}")
    return result, {**info, "budgets": budgets, "members": members, "s": s}


def _selection_metadata(result: sel.SelectionResult, info: dict, method: str) -> dict:
    s, members = info["s"], info["members"]
    chosen = np.zeros(len(s), dtype=bool)
    chosen[result.indices] = True
    sizes = np.array([len(m) for m in members])
    fraction = {str(c): float(chosen[m].mean()) if len(m) else 0.0 for c, m in enumerate(members)}
    return {
        "dagster/row_count": int(len(result)), "method": method, "pool_documents": int(len(s)),
        "selected_fraction": round(len(result) / max(len(s), 1), 4), "tau": info["tau"], "alpha": info["alpha"],
        "mean_s_selected": round(float(s[chosen].mean()), 4) if chosen.any() else None,
        "mean_s_rejected": round(float(s[~chosen].mean()), 4) if (~chosen).any() else None,
        "selected_fraction_per_cluster": png_md(bar_plot(fraction, f"{method}: selected fraction per cluster")),
        "score_distribution": png_md(histograms({"selected": s[chosen], "rejected": s[~chosen]},
                                                f"{method}: s of selected vs rejected")),
        "cluster_sizes": png_md(histograms({"cluster size": sizes}, "cluster-size histogram", bins=20)),
    }


def _selection_checks(step_ids: list[str], expected: int):
    def checks(artifact) -> list[dg.AssetCheckResult]:
        ids = pl.read_parquet(artifact.file("selected.parquet"))["doc_id"]
        unknown = int((~ids.is_in(pl.Series(step_ids))).sum())
        duplicates = int(len(ids) - ids.n_unique())
        return [
            dg.AssetCheckResult(check_name="no_duplicate_ids", passed=duplicates == 0,
                                metadata={"duplicates": duplicates}),
            dg.AssetCheckResult(check_name="selection_size_exact", passed=len(ids) == expected,
                                metadata={"selected": len(ids), "expected": expected}),
            dg.AssetCheckResult(check_name="ids_exist_in_documents", passed=unknown == 0,
                                metadata={"unknown_ids": unknown}),
        ]

    return checks


SELECTION_CHECKS = [dg.AssetCheckSpec(name, asset="selected_subset", blocking=True, description=text) for name, text in (
    ("no_duplicate_ids", "every selected doc_id appears once"),
    ("selection_size_exact", "the selection has exactly the budgeted number of documents"),
    ("ids_exist_in_documents", "every selected doc_id is a document of the pool"))]


def selection_assets(manifest, parts: Partitions) -> list:
    @gmates_asset(manifest, "cluster_assignments", group=GROUP,
                  deps=[all_of("influence_scores"), all_of("embeddings"), all_of("documents")], kinds={"faiss", "parquet"},
                  description="Spherical k-means on the influence representations h (§3.5); member order per cluster.")
    def cluster_assignments(context, gmates: GmatesResource):
        def compute(step, out: Path) -> dict:
            section = step.manifest.clustering
            source = ("influence_scores", "h") if section.space == "influence" else ("embeddings", "pooled")
            x = read_all(step, *source)
            centroids, assignment, similarity, members = _cluster(x, section)
            sel.save_centroid_index(centroids, out / "centroids.faiss")
            rank = np.zeros(len(x), dtype=np.int64)
            for m in members:
                rank[m] = np.arange(len(m))
            pl.DataFrame({"doc_index": np.arange(len(x), dtype=np.int64), "doc_id": doc_ids(step),
                          "cluster": assignment.astype(np.int64), "similarity": similarity.astype(np.float32),
                          "member_rank": rank}).write_parquet(out / "assignments.parquet")
            sizes = np.array([len(m) for m in members])
            return {"dagster/row_count": int(len(x)), "k": section.k, "space": section.space,
                    "largest_cluster": int(sizes.max()), "smallest_cluster": int(sizes.min()),
                    "empty_clusters": int((sizes == 0).sum()),
                    "cluster_sizes": png_md(histograms({"cluster size": sizes}, "cluster-size histogram", bins=20))}

        return run_step(context, gmates, "cluster_assignments",
                        [Dep("influence_scores", "all"), Dep("embeddings", "all"), Dep("documents", "all")], compute)

    @gmates_asset(manifest, "selected_subset", group=GROUP, partitions_def=parts.methods,
                  deps=["cluster_assignments", "relational_model", all_of("influence_scores"), all_of("embeddings"),
                        all_of("documents")],
                  kinds={"parquet"}, check_specs=SELECTION_CHECKS,
                  description="The selected documents of one method (Group-MATES, MATES, random, ablations).")
    def selected_subset(context, gmates: GmatesResource):
        def compute(step, out: Path) -> dict:
            result, info = select_for_method(step, step.partition)
            result.to_polars(doc_ids(step)).write_parquet(out / "selected.parquet")
            return _selection_metadata(result, info, step.partition)

        deps = [Dep("cluster_assignments"), Dep("relational_model"), Dep("influence_scores", "all"),
                Dep("embeddings", "all"), Dep("documents", "all")]
        return run_step(context, gmates, "selected_subset", deps, compute, checks=_checks_for(context, gmates))

    return [cluster_assignments, selected_subset]


def _checks_for(context, gmates):
    """Expected size and known ids, read independently of the selection from the upstream artifacts."""
    from ..runtime import resolve_inputs

    deps = [Dep("documents", "all"), Dep("cluster_assignments")]
    manifest = gmates.manifest().manifest
    _, artifacts = resolve_inputs(context, gmates.store(), deps, None, manifest)
    ids: list[str] = []
    for shard in (s.name for s in manifest.sources.shards):
        path = artifacts["documents"][shard].file("documents.parquet")
        ids.extend(pl.read_parquet(path, columns=["doc_id"])["doc_id"].to_list())
    table = pl.read_parquet(artifacts["cluster_assignments"][None].file("assignments.parquet"))
    expected = int(_budgets(_members_from_table(table, manifest.clustering.k), manifest.selection).sum())
    return _selection_checks(ids, expected)
