"""Release stage: the chosen method's selection as a verifiable, lineage-tracked parquet dataset."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl

from ...core import release as rel
from ...core.manifest import _semantic_value, fingerprint, section_value
from ...core.rows import SortedValues
from ..artifacts import documents_column, pool_rows
from ..declare import AssetDecl, Input

GROUP = "release"
RELEASE_DIR = "release"


def _release_method(manifest) -> list[str]:
    return [manifest.release.method]


def _lineage_sections(graph, asset: str) -> list[str]:
    """The manifest sections that shaped the release: its own and those of every ancestor."""
    names = {asset} | graph.ancestors(asset)
    return sorted({s for name in names for s in graph[name].sections})


def release_lineage(loaded, instance, graph) -> dict:
    """Code and data versions of every ancestor asset partition, and the manifest sections they read.

    Part of the release's cache key, so the recorded lineage is always that of the inputs it was built from.
    """
    method = loaded.manifest.release.method
    assets, runs = {}, {}
    for name in sorted(graph.ancestors("dataset_release")):
        keys = [method] if name == "selected_subset" else graph.partition_keys(name)
        for key in keys:
            record = instance.get_latest_data_version_record(dg.AssetKey(name), graph[name].is_source, key)
            if record is None:
                continue
            tags = record.asset_event.tags or {}
            entry = {"data_version": tags.get("dagster/data_version")}
            if "dagster/code_version" in tags:
                entry["code_version"] = tags["dagster/code_version"]
            assets.setdefault(name, {})[key or "__all__"] = entry
            runs.setdefault(name, {})[key or "__all__"] = record.run_id
    sections = _lineage_sections(graph, "dataset_release")
    build_manifest = {"fingerprint": fingerprint(loaded.manifest, *sections),
                      "sections": {s: _semantic_value(section_value(loaded.manifest, s)) for s in sections}}
    lineage = {"build_manifest": build_manifest, "assets": assets, "method": method}
    if loaded.manifest.relational.from_:  # scored with a frozen model: name it and the build that trained it
        from .influence import frozen_model_lineage

        lineage["frozen_relational_model"] = frozen_model_lineage(loaded)
    return {"lineage": lineage,
            "run_ids": runs, "packages": rel.package_versions()}


def _seeds(manifest) -> dict:
    return {"demo": manifest.demo.seed, "probe": manifest.probe.seed, "oracle": list(manifest.oracle.seeds),
            "oracle_pool": manifest.oracle.pool_seed, "relational": manifest.relational.seed,
            "relational_split": manifest.relational.split_seed, "clustering": manifest.clustering.seed,
            "selection": manifest.selection.seed}


def _release_pieces(step, method: str) -> Iterator[pl.DataFrame]:
    """The release table one documents shard at a time: its selected documents with score and cluster."""
    selected = pl.read_parquet(step.input("selected_subset", method).file("selected.parquet"))["doc_id"]
    clusters = pl.read_parquet(step.input("cluster_assignments").file("assignments.parquet"),
                               columns=["cluster"])["cluster"]
    scores = pool_rows(step, "influence_scores", "s")
    docs = documents_column(step, "doc_id")
    _require_known_unique(selected, docs, method)  # before any text is read or release shard written
    wanted = SortedValues(selected)
    for shard, (start, size) in enumerate(zip(docs.layout.starts, docs.layout.sizes)):
        rows = pl.read_parquet(docs.paths[shard], columns=["doc_id", "text", "source"]).with_columns(
            influence_score=pl.Series(scores[start:start + size].astype(np.float64)),
            cluster=clusters.slice(start, size))
        yield rows.filter(pl.Series(wanted.contains(rows["doc_id"])))


def _require_known_unique(selected: pl.Series, docs, method: str) -> None:
    """A selection naming a document twice, or one the pool lacks, would give a release of the wrong size."""
    repeated = selected.filter(selected.is_duplicated()).unique().sort()
    if len(repeated):
        raise ValueError(f"selected_subset[{method}]: {len(repeated)} doc_id(s) appear more than once, "
                         f"e.g. {repeated.head(3).to_list()}")
    unknown = selected.filter(pl.Series(~docs.contains(selected)))
    if len(unknown):
        raise ValueError(f"selected_subset[{method}]: {len(unknown)} doc_id(s) are not pool documents, "
                         f"e.g. {unknown.head(3).to_list()}")


def build_dataset_release(step, out: Path) -> dict:
    section = step.manifest.release
    identity = release_lineage(step.raw_loaded, step.context.instance, step.graph)
    lineage = {**identity["lineage"], "seeds": _seeds(step.raw_loaded.manifest),
               "volatile": {"dagster_run_ids": identity["run_ids"]}}
    card = {"pretty_name": section.name, "description": section.description or f"{section.method} selection",
            "method": section.method, "license": section.license}
    summary = rel.write_release(out / RELEASE_DIR, _release_pieces(step, section.method), section.rows_per_shard,
                                lineage, card)
    return {"dagster/row_count": summary.n_rows, "shards": summary.n_shards,
            "release_content_hash": summary.content_hash, "selected_ids_sha256": summary.selected_ids_sha256,
            "verify_with": f"gmates release verify <artifact_path>/{RELEASE_DIR}"}


def _release_identity(loaded, instance, graph) -> dict:
    identity = release_lineage(loaded, instance, graph)
    return {"lineage": identity["lineage"], "packages": identity["packages"]}


DECLS = [
    AssetDecl("dataset_release", GROUP,
              "The chosen selection as parquet shards + manifest.json (lineage, hashes) + dataset card.",
              compute=build_dataset_release, identity=_release_identity, sections=("release",),
              inputs=(Input("selected_subset", _release_method), Input("documents_index"),
                      Input("influence_scores_index"), Input("cluster_assignments")),
              kinds=frozenset({"parquet", "huggingface"})),
]
