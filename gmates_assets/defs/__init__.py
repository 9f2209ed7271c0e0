"""The Dagster shell: `build_definitions(manifest_path)` turns a build manifest into Definitions."""
from __future__ import annotations

import importlib
import os
from pathlib import Path

import dagster as dg

from ..core.manifest import DEFAULT_MANIFEST, load_manifest
from .automation import GuardedAutomationSensor, sensor_interval, with_sync_conditions
from .console import gmates_console_logger
from .factory import dagster_assets, graph_for
from .resources import GmatesResource, changed_since_load, manifest_fingerprint


def build_definitions(manifest_path: str | os.PathLike = DEFAULT_MANIFEST, home: str = "") -> dg.Definitions:
    path = Path(manifest_path).resolve()
    loaded = load_manifest(path)
    graph = graph_for(loaded)
    loaded_fingerprint = manifest_fingerprint(loaded.manifest)
    automation = GuardedAutomationSensor(
        "gmates_automation", guard=lambda: changed_since_load(str(path), loaded_fingerprint),
        target=dg.AssetSelection.all(), default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=sensor_interval(),
        emit_backfills=False,  # runs go straight to the run queue, not through the 30 s backfill daemon loop
        description="Rebuilds what a manifest edit made stale, wave by wave (code version or dependency data "
                    "version changed), after 'Reload definitions'; skips while the manifest on disk differs "
                    "from the loaded one.")
    return dg.Definitions(
        assets=with_sync_conditions(dagster_assets(graph)),
        sensors=[automation],
        resources={"gmates": GmatesResource(manifest_path=str(path), home=home,
                                            manifest_fingerprint=loaded_fingerprint)},
        executor=executor_for(loaded.manifest.execution),
        loggers={"console": gmates_console_logger},
    )


def executor_for(execution) -> dg.ExecutorDefinition:
    """The executor inside a run: in_process, multiprocess (max_concurrent steps), or any `module:attribute`
    Dagster executor (e.g. `dagster_k8s:k8s_job_executor`, configured in the run's config or dagster.yaml)."""
    if execution.executor == "in_process":
        return dg.in_process_executor
    if execution.executor == "multiprocess":
        return dg.multiprocess_executor.configured({"max_concurrent": execution.max_concurrent})
    module, _, attribute = execution.executor.partition(":")
    if not attribute:
        raise ValueError(f"execution.executor: expected in_process, multiprocess or module:attribute, "
                         f"got {execution.executor!r}")
    return getattr(importlib.import_module(module), attribute)
