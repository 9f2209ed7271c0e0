"""The local Dagster instance gmates creates when $DAGSTER_HOME has no dagster.yaml yet.

All run events go to one sqlite database (Dagster's ConsolidatedSqliteEventLogStorage, with one SQLAlchemy engine
per process: gmates_assets/event_log.py) instead of one new database per run, which halves Dagster's bookkeeping
per run on a laptop (profiled: creating the per-run database and connecting to it per event dominated).
Clusters use Postgres instead: see deploy/dagster.yaml.
"""
from __future__ import annotations

from pathlib import Path


def local_instance_yaml(home: Path) -> str:
    events = Path(home).resolve() / "history" / "events"
    return ("telemetry:\n  enabled: false\n"
            "event_log_storage:\n  module: gmates_assets.event_log\n"
            f"  class: ConsolidatedEventLogStorage\n  config:\n    base_dir: {events}\n")


def ensure_local_instance(home: Path) -> Path:
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text(local_instance_yaml(home))
    return config
