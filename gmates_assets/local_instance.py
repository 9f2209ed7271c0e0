"""The local Dagster instance gmates creates when $DAGSTER_HOME has no dagster.yaml yet.

All run events go to one sqlite database (Dagster's ConsolidatedSqliteEventLogStorage, with one SQLAlchemy engine
per process: gmates_assets/event_log.py) instead of one new database per run, which halves Dagster's bookkeeping
per run on a laptop (profiled: creating the per-run database and connecting to it per event dominated).
The event log's path is relative to the home, so a home can be copied or moved (Dagster's own sqlite storages
already live under the home). Clusters use Postgres instead: see deploy/dagster.yaml.
"""
from __future__ import annotations

from pathlib import Path

EVENTS_DIR = "history/events"


def local_instance_yaml(home: Path | None = None, events: str | Path = EVENTS_DIR) -> str:
    """The dagster.yaml of a local home (`home` is unused: the file is the same for every home)."""
    return ("telemetry:\n  enabled: false\n"
            "event_log_storage:\n  module: gmates_assets.event_log\n"
            f"  class: ConsolidatedEventLogStorage\n  config:\n    base_dir: {events}\n")


def ensure_local_instance(home: Path) -> Path:
    """Create the home's dagster.yaml, or relocate one gmates wrote with an absolute event-log path (homes made
    before they were relocatable): after a copy, that path names the original's history."""
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists() or _legacy_absolute(config.read_text()):
        config.write_text(local_instance_yaml(home))
    return config


def _legacy_absolute(text: str) -> bool:
    """Is this exactly the file older gmates wrote (an absolute `.../history/events`), nothing customised?"""
    prefix = local_instance_yaml(events="").rstrip("\n")
    events = text[len(prefix):].strip() if text.startswith(prefix) else ""
    return (Path(events).is_absolute() and Path(events).parts[-2:] == ("history", "events")
            and text == local_instance_yaml(events=events))
