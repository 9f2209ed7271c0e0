"""Helpers for tests that build the asset graph through `sync` in throwaway homes."""
from __future__ import annotations

import shutil
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import dagster as dg
import yaml

from gmates_assets.defs import build_definitions
from gmates_assets.defs.sync import FRESH, asset_statuses, sync
from gmates_assets.local_instance import ensure_local_instance

ROOT = Path(__file__).resolve().parents[1]
TESTS_MANIFEST = ROOT / "data_manifests" / "tests.yaml"
ALL_ASSETS = {
    "documents", "lm_tokenizer", "tokenized_pool", "embeddings", "probe_checkpoint", "probe_pool", "oracle_random",
    "relational_model_init", "bootstrap_rollouts", "oracle_bootstrap", "relational_model", "influence_scores",
    "cluster_assignments", "selected_subset", "pretrained_checkpoint", "eval_scores", "method_comparison",
    "dataset_release", "documents_index", "tokenized_pool_index", "embeddings_index", "influence_scores_index",
}


@dataclass
class Build:
    """A manifest, an artifact store and a Dagster instance directory, all under one temp folder."""

    root: Path

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.yaml"

    @property
    def store(self) -> Path:
        return self.root / "store"

    @property
    def dagster_home(self) -> Path:
        return self.root / "dagster_home"

    @classmethod
    def create(cls, root: Path, manifest_text: str) -> Build:
        build = cls(root)
        root.mkdir(parents=True, exist_ok=True)
        build.manifest.write_text(manifest_text)
        ensure_local_instance(build.dagster_home)
        return build

    def copy_to(self, root: Path) -> Build:
        """An independent copy (store, instance, manifest): lets one full build serve many edit tests."""
        shutil.copytree(self.root, root)  # a local home is relocatable: the copy writes its own history
        return Build(root)

    def env(self) -> dict[str, str]:
        """The variables that make the CLI and `dagster dev` use this build's instance and store."""
        return {"DAGSTER_HOME": str(self.dagster_home), "GMATES_HOME": str(self.store)}

    def defs(self) -> dg.Definitions:
        return build_definitions(self.manifest, home=str(self.store))

    def instance(self) -> dg.DagsterInstance:
        return dg.DagsterInstance.from_config(str(self.dagster_home))

    def sync(self, select: Optional[Iterable[str]] = None):
        with self.instance() as instance:
            return sync(self.defs(), instance, select=select)

    def not_fresh(self, assets: Optional[Iterable[str]] = None) -> set[tuple[str, Optional[str]]]:
        with self.instance() as instance:
            return {(s.asset, s.partition) for s in asset_statuses(self.defs(), instance, assets, observe=True)
                    if s.status != FRESH}

    def edit(self, dotted: str, value) -> None:
        data = yaml.safe_load(self.manifest.read_text())
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
        self.manifest.write_text(yaml.safe_dump(data, sort_keys=False))

    def latest_metadata(self, asset: str, partition: Optional[str] = None) -> dict:
        with self.instance() as instance:
            records = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition] if partition else None),
                limit=1).records
            event = records[0].asset_materialization
            return {k: v.value for k, v in event.metadata.items()}


def store_key(build: Build, asset: str, partition: str) -> str:
    """The store key asset[partition] builds under now (sources observed first, as sync and the job do)."""
    from gmates_assets.defs.factory import graph_for
    from gmates_assets.defs.runtime import input_key, input_versions
    from gmates_assets.defs.sync import observe_sources

    defs = build.defs()
    gm = defs.resources["gmates"]
    loaded = gm.manifest()
    with build.instance() as instance:
        observe_sources(defs, instance)
        graph = graph_for(loaded)
        return input_key(instance, gm.store(), graph, loaded, asset, partition,
                         input_versions(instance, graph, asset, partition))


def assets_of(items) -> set[str]:
    return {asset for asset, _ in items}


DAGSTER_FAN_IN_THRESHOLD = 100  # Dagster 1.13's SKIP_PARTITION_DATA_VERSION_DEPENDENCY_THRESHOLD


@contextmanager
def fan_in_threshold(partitions: int):
    """Dagster stops tracking staleness (and input provenance) across an edge from 100 or more partitions, and
    gmates makes up for it (sync._fan_in_cause, the shard indexes). Tests of that edge lower Dagster's constant
    in every module that imported it, so that a dozen shards cross it instead of a hundred: the same code paths,
    in this process (in-process runs), at a tenth of the cost."""
    import sys

    import pytest
    from dagster._core.definitions import data_version
    from dagster._core.execution.context import data_version_cache  # noqa: F401 - imports the constant by name

    name = "SKIP_PARTITION_DATA_VERSION_DEPENDENCY_THRESHOLD"
    assert getattr(data_version, name) == DAGSTER_FAN_IN_THRESHOLD, "the pinned Dagster moved its threshold"
    holders = [m for key, m in list(sys.modules.items())
               if key.startswith("dagster") and getattr(m, name, None) == DAGSTER_FAN_IN_THRESHOLD]
    with pytest.MonkeyPatch.context() as patch:
        for module in holders:
            patch.setattr(module, name, partitions)
        yield

