"""The event log storage of gmates' local instance: Dagster's consolidated sqlite storage, one engine per process.

`ConsolidatedSqliteEventLogStorage` builds a new SQLAlchemy engine for every connection it opens, and Dagster
opens one or two per event: profiled, that was a third of the cost of storing an event, ~6 ms on this machine,
paid ~15 times per run. Here the engine is built once per process (still without a pool: every connection is
opened and closed as before, so locking and WAL behaviour are Dagster's own). Clusters use Postgres instead.
"""
from __future__ import annotations

import os
from contextlib import contextmanager

from dagster._core.storage.event_log import ConsolidatedSqliteEventLogStorage  # the class dagster.yaml names
from dagster._core.storage.sql import create_engine  # private, pinned dagster
from dagster._core.storage.sqlite import SQLITE_BUSY_TIMEOUT_SECONDS  # private, pinned dagster
from sqlalchemy.pool import NullPool


class ConsolidatedEventLogStorage(ConsolidatedSqliteEventLogStorage):
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
