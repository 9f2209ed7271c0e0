"""The Dagster shell: `build_definitions(manifest_path)` turns a build manifest into Definitions."""
from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from ..core.manifest import load_manifest
from .automation import sensor_interval, with_sync_conditions
from .partitions import partitions_for
from .resources import GmatesResource

DEFAULT_MANIFEST = "data_manifests/demo.yaml"


def _asset_modules():
    from .assets import influence, pool, release, selection, training

    return [pool.pool_assets, influence.influence_assets, selection.selection_assets, training.training_assets,
            release.release_assets]


def build_definitions(manifest_path: str | os.PathLike = DEFAULT_MANIFEST, home: str = "") -> dg.Definitions:
    path = Path(manifest_path).resolve()
    manifest = load_manifest(path).manifest
    parts = partitions_for(manifest)
    assets = with_sync_conditions([a for factory in _asset_modules() for a in factory(manifest, parts)])
    automation = dg.AutomationConditionSensorDefinition(
        "gmates_automation", target=dg.AssetSelection.all(), default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=sensor_interval(),
        emit_backfills=False,  # runs go straight to the run queue, not through the 30 s backfill daemon loop
        description="Rebuilds what a manifest edit made stale, wave by wave (code version or dependency data "
                    "version changed), after 'Reload definitions'.")
    return dg.Definitions(
        assets=assets,
        sensors=[automation],
        resources={"gmates": GmatesResource(manifest_path=str(path), home=home)},
        executor=dg.multiprocess_executor.configured({"max_concurrent": 2}),
    )
