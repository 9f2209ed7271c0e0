"""The event log storage of gmates' local instance: Dagster's consolidated sqlite storage, one engine per process.

`ConsolidatedSqliteEventLogStorage` builds a new SQLAlchemy engine for every connection it opens, and Dagster
opens one or two per event: profiled, that was a third of the cost of storing an event, ~6 ms on this machine,
paid ~15 times per run. Here the engine is built once per process (still without a pool: every connection is
opened and closed as before, so locking and WAL behaviour are Dagster's own). Clusters use Postgres instead.

Relocatable: a relative `base_dir` (what gmates writes: `history/events`) is resolved against the home of the
instance that opens it, so a copied or moved DAGSTER_HOME keeps writing its own history. An absolute `base_dir`
outside the opening home (a home copied before homes were relocatable) is refused rather than written into.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

from dagster._core.storage.event_log import ConsolidatedSqliteEventLogStorage  # the class dagster.yaml names
from dagster._core.storage.sql import create_engine  # private, pinned dagster
from dagster._core.storage.sqlite import SQLITE_BUSY_TIMEOUT_SECONDS  # private, pinned dagster
from sqlalchemy.pool import NullPool


class EventLogElsewhere(RuntimeError):
    pass


class ConsolidatedEventLogStorage(ConsolidatedSqliteEventLogStorage):
    def __init__(self, base_dir, inst_data=None):
        self._configured_dir = str(base_dir)
        if os.path.isabs(base_dir):
            super().__init__(base_dir, inst_data)
        else:  # resolved against the instance's home in register_instance (nothing is opened before)
            self._inst_data = inst_data

    def register_instance(self, instance) -> None:
        home = Path(instance.root_directory).resolve()
        if not os.path.isabs(self._configured_dir):
            super().__init__(str(home / self._configured_dir), self._inst_data)
        elif not Path(self._configured_dir).resolve().is_relative_to(home):
            raise EventLogElsewhere(
                f"{home / 'dagster.yaml'}: event_log_storage.config.base_dir {self._configured_dir} points into "
                f"another home (this one was copied?); opening it would write into that home's history. Set "
                f"base_dir to `history/events` (relative to the home), or run any `gmates` command on this home, "
                f"which does that for the file gmates wrote")
        super().register_instance(instance)
    @contextmanager
    def _connect(self):
        with self._process_engine().connect() as conn:
            with conn.begin():
                yield conn

    def _process_engine(self):
        if getattr(self, "_engine_pid", None) != os.getpid():  # an engine must not cross a fork
            self._engine = create_engine(self._conn_string, poolclass=NullPool,
                                         connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS})
            self._engine_pid = os.getpid()
        return self._engine
