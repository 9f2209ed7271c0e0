"""The Dagster shell: `build_definitions(manifest_path)` turns a build manifest into Definitions."""
from __future__ import annotations

import importlib
import os
import time
from pathlib import Path

import dagster as dg
from dagster._config import validate_config  # private, pinned dagster

from ..core.manifest import DEFAULT_MANIFEST, load_manifest
from .automation import automation_sensor, sensor_default_status
from .celery_tick import quicken_celery_loop
from .console import gmates_console_logger
from .factory import dagster_assets, graph_for
from .resources import GmatesResource, changed_since_load, manifest_fingerprint
from .sync_job import gmates_sync_job
from .uptodate import up_to_date_checks


def build_definitions(manifest_path: str | os.PathLike = DEFAULT_MANIFEST, home: str = "") -> dg.Definitions:
    path = Path(manifest_path).resolve()
    loaded = load_manifest(path)
    graph = graph_for(loaded)
    loaded_fingerprint = manifest_fingerprint(loaded.manifest)
    built: dict[str, dg.Definitions] = {}  # the sensor judges the Definitions it belongs to
    automation = automation_sensor(
        lambda: built["defs"], guard=lambda: changed_since_load(str(path), loaded_fingerprint), loaded_at=time.time(),
        default_status=sensor_default_status(loaded.manifest.execution.launcher))
    built["defs"] = dg.Definitions(
        assets=dagster_assets(graph),
        asset_checks=[up_to_date_checks([n for n in graph.toposorted() if not graph[n].is_source])],
        sensors=[automation],
        jobs=[gmates_sync_job()],
        resources={"gmates": GmatesResource(manifest_path=str(path), home=home,
                                            manifest_fingerprint=loaded_fingerprint)},
        executor=executor_for(loaded.manifest.execution, loaded),
        loggers={"console": gmates_console_logger},
    )
    return built["defs"]


def executor_for(execution, loaded=None) -> dg.ExecutorDefinition:
    """The executor inside a run: in_process, multiprocess (max_concurrent steps), or a `module:attribute` that
    is a Dagster ExecutorDefinition (e.g. `dagster_k8s:k8s_job_executor`, `dagster_celery:celery_executor`),
    configured with `execution.executor_config`. Only an ExecutorDefinition is accepted; the module is still
    imported to look, which is why a manifest is trusted input (docs/deployment.md)."""
    where = loaded.where if loaded is not None else (lambda dotted: dotted)
    executor = _named_executor(execution, where)
    config = dict(execution.executor_config)
    if execution.executor == "multiprocess":
        config = {"max_concurrent": execution.max_concurrent, **config}
    if not config:
        return executor
    checked = validate_config(executor.config_schema.as_field().config_type, config)
    if not checked.success:
        problems = "; ".join(e.message for e in checked.errors)
        raise ValueError(f"{where('execution.executor_config')}: the {executor.name} executor rejects it: {problems}")
    return executor.configured(config)


def _named_executor(execution, where) -> dg.ExecutorDefinition:
    if execution.executor == "in_process":
        return dg.in_process_executor
    if execution.executor == "multiprocess":
        return dg.multiprocess_executor
    module_name, _, attribute = execution.executor.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"{where('execution.executor')}: expected in_process, multiprocess or module:attribute "
                         f"of a Dagster executor, got {execution.executor!r}")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ValueError(f"{where('execution.executor')}: module {module_name!r} is not installed ({exc}); for "
                         f"the Celery or Kubernetes executors install the `cluster` extra") from None
    executor = getattr(module, attribute, None)
    if not isinstance(executor, dg.ExecutorDefinition):
        what = "nothing" if executor is None else type(executor).__name__
        raise ValueError(f"{where('execution.executor')}: {execution.executor!r} is {what}, not a Dagster executor "
                         f"(an ExecutorDefinition such as dagster_celery:celery_executor)")
    quicken_celery_loop(module_name)
    return executor
