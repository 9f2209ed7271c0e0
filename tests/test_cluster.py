"""Cluster mode as documented in docs/deployment.md: the example instance config, the executor, runs that
build the manifest their sync named, the sensor that must not race a sync, failed-run errors, `status --plan`."""
from __future__ import annotations

import importlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
DEPLOY_ENV = {"DAGSTER_PG_HOST": "127.0.0.1", "DAGSTER_PG_USER": "dagster", "DAGSTER_PG_PASSWORD": "secret",
              "GMATES_IMAGE": "registry.example/gmates:1", "GMATES_LOG_BUCKET": "logs"}


# ------------------------------------------------------------------------------ item 3: deploy/dagster.yaml
def test_deploy_dagster_yaml_passes_dagster_config_validation_with_the_cluster_integrations(monkeypatch):
    for module in ("dagster_postgres", "dagster_k8s", "dagster_aws", "dagster_celery"):
        pytest.importorskip(module, reason="the `cluster` extra is not installed (pip install -e '.[cluster]')")
    import sqlalchemy
    from dagster._config import process_config
    from dagster._core.instance.config import dagster_instance_config
    from dagster_postgres.utils import pg_url_from_config

    for name, value in DEPLOY_ENV.items():
        monkeypatch.setenv(name, value)
    config, _ = dagster_instance_config(str(DEPLOY), "dagster.yaml")  # the instance schema
    for section in ("run_coordinator", "run_launcher", "compute_logs"):  # each class's own schema
        data = config[section]
        klass = getattr(importlib.import_module(data["module"]), data["class"])
        result = process_config(klass.config_type(), data.get("config") or {})
        assert result.success, f"deploy/dagster.yaml {section} ({data['class']}): {result.errors}"
    from dagster_postgres import DagsterPostgresStorage

    result = process_config(DagsterPostgresStorage.config_type(), config["storage"]["postgres"])
    assert result.success, result.errors
    # the URL Dagster builds must name a driver the integration installs (psycopg2), not SQLAlchemy's default
    sqlalchemy.create_engine(pg_url_from_config(result.value))  # imports the DBAPI; connects to nothing
