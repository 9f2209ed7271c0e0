"""The local Dagster instance gmates creates when $DAGSTER_HOME has no dagster.yaml yet.

Runs are in Dagster's sqlite run storage with kept connections (gmates_assets/run_storage.py); steps' stdout and
stderr are captured as Dagster does, mirrored by a thread (gmates_assets/compute_logs.py). All run events go
to one sqlite database (Dagster's ConsolidatedSqliteEventLogStorage, with one SQLAlchemy engine
per process: gmates_assets/event_log.py) instead of one new database per run, which halves Dagster's bookkeeping
per run on a laptop (profiled: creating the per-run database and connecting to it per event dominated).
The event log's path is relative to the home, so a home can be copied or moved (Dagster's own sqlite storages
already live under the home). Clusters use Postgres instead: see deploy/dagster.yaml.

`gmates ui` adds a run launcher to a home whose dagster.yaml is gmates' own: warm workers (gmates_assets/warm.py)
held by the UI's daemon, so a run the sensor, a backfill or a button launches does not start Python, Dagster,
the Definitions and torch first. A dagster.yaml someone edited is left as it is.
"""
from __future__ import annotations

from pathlib import Path

EVENTS_DIR = "history/events"
RUNS_DIR = "history"  # Dagster's own place for runs.db
COMPUTE_LOGS_DIR = "storage"  # Dagster's own place for steps' stdout and stderr
UI_WORKERS = 2  # each holds Dagster, the Definitions and torch (and the encoder once a run embeds; ~0.5 GiB here)
WARM_LAUNCHER_YAML = ("run_launcher:\n  module: gmates_assets.warm\n  class: WarmRunLauncher\n"
                      f"  config:\n    workers: {UI_WORKERS}\n")


RUNS_AND_LOGS_YAML = ("run_storage:\n  module: gmates_assets.run_storage\n  class: KeptSqliteRunStorage\n"
                    f"  config:\n    base_dir: {RUNS_DIR}\n"
                    "compute_logs:\n  module: gmates_assets.compute_logs\n  class: ThreadMirroredComputeLogManager\n"
                    f"  config:\n    base_dir: {COMPUTE_LOGS_DIR}\n")


def local_instance_yaml(home: Path | None = None, events: str | Path = EVENTS_DIR, runs: bool = True) -> str:
    """The dagster.yaml of a local home (`home` is unused: the file is the same for every home). `runs=False`:
    the file gmates wrote before its run storage and compute log manager (Dagster's defaults, the same files)."""
    return ("telemetry:\n  enabled: false\n"
            "event_log_storage:\n  module: gmates_assets.event_log\n"
            f"  class: ConsolidatedEventLogStorage\n  config:\n    base_dir: {events}\n"
            + (RUNS_AND_LOGS_YAML if runs else ""))


def in_home(instance, base_dir: str) -> str:
    """A storage's `base_dir` as gmates' local storages read it: a relative one (what gmates writes) lies under the
    home of the instance that opens it, so a copied or moved home uses its own files; an absolute one as it is."""
    return str(Path(instance.root_directory).resolve() / base_dir)


def ensure_local_instance(home: Path) -> Path:
    """Create the home's dagster.yaml, or bring a file an earlier gmates wrote, untouched, up to date: one with an
    absolute event-log path (homes made before they were relocatable: after a copy, that path names the
    original's history), or one without gmates' run storage and compute log manager (the same files, opened by
    Dagster's classes)."""
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    text = config.read_text() if config.exists() else None
    if text is None or _legacy_absolute(text):
        config.write_text(local_instance_yaml(home))
    elif text in _EARLIER_FILES:
        tmp = config.with_name(config.name + ".tmp")
        tmp.write_text(_EARLIER_FILES[text])
        tmp.replace(config)
    return config


def _legacy_absolute(text: str) -> bool:
    """Is this exactly the file older gmates wrote (an absolute `.../history/events`), nothing customised?"""
    prefix = local_instance_yaml(events="", runs=False).rstrip("\n")
    events = text[len(prefix):].strip() if text.startswith(prefix) else ""
    return (Path(events).is_absolute() and Path(events).parts[-2:] == ("history", "events")
            and text == local_instance_yaml(events=events, runs=False))


def ui_instance_yaml() -> str:
    """The dagster.yaml `gmates ui` gives a local home: gmates' local instance with warm run workers."""
    return local_instance_yaml() + WARM_LAUNCHER_YAML


_EARLIER_FILES = {local_instance_yaml(runs=False): local_instance_yaml(),
                        local_instance_yaml(runs=False) + WARM_LAUNCHER_YAML: ui_instance_yaml()}


def ensure_ui_instance(home: Path) -> Path:
    """The home's dagster.yaml for `gmates ui`: gmates' own file gains the warm launcher; any other is kept."""
    config = ensure_local_instance(home)
    if config.read_text() == local_instance_yaml():
        tmp = config.with_name(config.name + ".tmp")
        tmp.write_text(ui_instance_yaml())
        tmp.replace(config)
    return config
