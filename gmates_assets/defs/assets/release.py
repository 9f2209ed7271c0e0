"""Release stage: the chosen method's selection as a verifiable, lineage-tracked parquet dataset."""
from __future__ import annotations

import importlib.metadata
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl

from ...core import release as rel
from ...core.manifest import fingerprint
from ..artifacts import read_all, shard_order
from ..partitions import Partitions, partition_keys_of
from ..runtime import Dep, run_step
from .common import GmatesResource, all_of, gmates_asset, only

GROUP = "release"
RELEASE_DIR = "release"
PACKAGES = ("gmates", "dagster", "torch", "transformers", "tokenizers", "polars", "numpy", "faiss-cpu", "zarr",
            "safetensors")
# What the selection was built from: the lineage recorded in the release (training/eval do not shape it).
LINEAGE_ASSETS = ("pool_source", "documents", "lm_tokenizer", "tokenized_pool", "embeddings", "probe_checkpoint",
                  "probe_pool", "reference_set", "oracle_random", "relational_model_init", "bootstrap_rollouts",
                  "oracle_bootstrap", "relational_model", "influence_scores", "cluster_assignments", "selected_subset")
SOURCE_ASSETS = {"pool_source", "reference_set", "user_probe_checkpoint"}


def _package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _lineage(context, manifest, method: str) -> tuple[dict, dict]:
    """(content lineage: code and data versions per asset partition, volatile: run ids)."""
    assets, runs = {}, {}
    for asset in LINEAGE_ASSETS:
        if asset == "selected_subset":
            keys = [method]
        else:
            try:
                keys = partition_keys_of(manifest, asset)
            except KeyError:
                keys = [None]
        for key in keys:
            record = context.instance.get_latest_data_version_record(dg.AssetKey(asset), asset in SOURCE_ASSETS, key)
            if record is None:
                continue
            tags = record.asset_event.tags or {}
            entry = {"data_version": tags.get("dagster/data_version")}
            if "dagster/code_version" in tags:
                entry["code_version"] = tags["dagster/code_version"]
            assets.setdefault(asset, {})[key or "__all__"] = entry
            runs.setdefault(asset, {})[key or "__all__"] = record.run_id
    return assets, runs


def _seeds(manifest) -> dict:
    return {"demo": manifest.demo.seed, "probe": manifest.probe.seed, "oracle": list(manifest.oracle.seeds),
            "oracle_pool": manifest.oracle.pool_seed, "relational": manifest.relational.seed,
            "relational_split": manifest.relational.split_seed, "clustering": manifest.clustering.seed,
            "selection": manifest.selection.seed}


def _release_table(step, method: str) -> pl.DataFrame:
    selected = pl.read_parquet(step.input("selected_subset", method).file("selected.parquet"))
    docs = pl.concat([pl.read_parquet(step.input("documents", s).file("documents.parquet"),
                                      columns=["doc_id", "text", "source"]) for s in shard_order(step)])
    scores = pl.DataFrame({"doc_id": docs["doc_id"], "influence_score": read_all(step, "influence_scores", "s")
                           .astype(np.float64)})
    clusters = pl.read_parquet(step.input("cluster_assignments").file("assignments.parquet"),
                               columns=["doc_id", "cluster"])
    return (selected.select("doc_id").join(docs, on="doc_id", how="left")
            .join(scores, on="doc_id", how="left").join(clusters, on="doc_id", how="left")
            .select(["doc_id", "text", "source", "influence_score", "cluster"]))


def release_assets(manifest, parts: Partitions) -> list:
    method = manifest.release.method

    @gmates_asset(manifest, "dataset_release", group=GROUP,
                  deps=[only("selected_subset", [method]), all_of("documents"), all_of("influence_scores"),
                        "cluster_assignments"], kinds={"parquet", "huggingface"},
                  description="The chosen selection as parquet shards + manifest.json (lineage, hashes) + dataset card.")
    def dataset_release(context, gmates: GmatesResource):
        loaded = gmates.manifest()
        lineage_assets, run_ids = _lineage(context, loaded.manifest, method)

        def compute(step, out: Path) -> dict:
            section = step.manifest.release
            lineage = {
                "build_manifest": {"fingerprint": fingerprint(step.manifest, *[f for f in type(step.manifest).model_fields
                                                                            if f != "name"]),
                                   "text": step.loaded.text},
                "assets": lineage_assets, "seeds": _seeds(step.manifest), "method": method,
                "volatile": {"dagster_run_ids": run_ids},
            }
            card = {"pretty_name": section.name, "description": section.description or f"{method} selection",
                    "method": method, "license": section.license}
            summary = rel.write_release(out / RELEASE_DIR, _release_table(step, method), section.rows_per_shard,
                                        lineage, card)
            return {"dagster/row_count": summary.n_rows, "shards": summary.n_shards,
                    "release_content_hash": summary.content_hash, "selected_ids_sha256": summary.selected_ids_sha256,
                    "verify_with": f"gmates release verify <artifact_path>/{RELEASE_DIR}"}

        deps = [Dep("selected_subset", [method]), Dep("documents", "all"), Dep("influence_scores", "all"),
                Dep("cluster_assignments")]
        return run_step(context, gmates, "dataset_release", deps, compute,
                        extra_key={"lineage": lineage_assets, "packages": _package_versions()})

    return [dataset_release]
