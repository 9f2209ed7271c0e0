"""One SQLAlchemy engine per process and sqlite database, keeping its connections (gmates' local instance).

Dagster's sqlite storages build an engine and open a connection for every query (NullPool), and close it after:
profiled in a sync, ~110 connections a run between the event log and the run storage, 1-3 ms each (open,
pragma, close; the close of the last connection also checkpoints the WAL into the database file). gmates' local
storages (event_log.py, run_storage.py) keep one connection per process instead, plus a few more while threads
query at once (the UI). Connections use WAL with synchronous=NORMAL: a commit is written to the WAL, not
fsync'ed (2.6 ms a commit here); nothing committed is lost when a process dies, an OS crash or power cut may lose
the last commits, whole, never corrupting the database (docs/store.md says why that is safe for gmates).
"""
from __future__ import annotations

import os

import sqlalchemy.event
from dagster._core.storage.sql import create_engine  # private, pinned dagster
from dagster._core.storage.sqlite import SQLITE_BUSY_TIMEOUT_SECONDS  # private, pinned dagster
from sqlalchemy.pool import QueuePool

# Connections beyond the kept one while threads query at once (the UI's), closed when given back: no limit, so a
# thread never waits for a connection (nor deadlocks holding one while it asks for a second), as with NullPool.
OVERFLOW = -1


class KeptEngine:
    """An engine per process: a forked child (a run worker) builds its own rather than share its parent's
    connections."""

    def __init__(self, conn_string: str):
        self._conn_string = conn_string
        self._engine = None
        self._pid = None

    def get(self):
        if self._pid != os.getpid():
            self._engine = create_engine(self._conn_string, poolclass=QueuePool, pool_size=1, max_overflow=OVERFLOW,
                                         pool_recycle=-1, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS,
                                                                        "check_same_thread": False})
            sqlalchemy.event.listen(self._engine, "connect", wal_normal_sync)
            self._pid = os.getpid()
        return self._engine

    def dispose(self) -> None:
        """Close the kept connections (with the instance that holds them)."""
        if self._pid == os.getpid():
            self._engine.dispose()
        self._engine, self._pid = None, None


def wal_normal_sync(dbapi_connection, _record) -> None:
    """Dagster creates these databases in WAL mode; each connection relaxes synchronous to NORMAL."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
