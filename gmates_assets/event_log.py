"""The event log storage of gmates' local instance: Dagster's consolidated sqlite storage, one engine per process.

`ConsolidatedSqliteEventLogStorage` builds a new SQLAlchemy engine for every connection it opens, and Dagster
opens one or two per event: profiled, that was a third of the cost of storing an event, ~6 ms on this machine,
paid ~15 times per run. Here the engine is built once per process and keeps its connections (Dagster's NullPool
opened, set up and closed one per query: ~70 a run, 1-3 ms each). Two changes to Dagster's sqlite behaviour,
both for concurrent runs (warm workers, launched runs): an asset event and its index entry are stored in one
transaction (store_event), and connections use synchronous=NORMAL in WAL mode (no fsync per commit; durability
in docs/store.md). Kept connections leave commits in the WAL file (nothing closes the last connection, which
used to checkpoint it into the database file), so each write touches the database file: the UI follows a run's
log through a file watcher on it. Clusters use Postgres instead.

Relocatable: a relative `base_dir` (what gmates writes: `history/events`) is resolved against the home of the
instance that opens it, so a copied or moved DAGSTER_HOME keeps writing its own history. An absolute `base_dir`
outside the opening home (a home copied before homes were relocatable) is refused rather than written into.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy.event
from dagster._core.events import ASSET_EVENTS  # private, pinned dagster
from dagster._core.storage.event_log import ConsolidatedSqliteEventLogStorage  # the class dagster.yaml names
from dagster._core.storage.sql import create_engine  # private, pinned dagster
from dagster._core.storage.sqlite import SQLITE_BUSY_TIMEOUT_SECONDS  # private, pinned dagster
from sqlalchemy.pool import QueuePool

from .backfill_loop import quicken_backfill_loop

KEPT_OVERFLOW = 8  # connections beyond the kept one while threads query at once (the UI); closed when given back
WROTE = "gmates_wrote"  # connection.info key: a statement other than a SELECT ran in the current checkout
_READS = ("SELECT", "PRAGMA")


class EventLogElsewhere(RuntimeError):
    pass


class ConsolidatedEventLogStorage(ConsolidatedSqliteEventLogStorage):
    orders_asset_index = True  # store_event below; sync needs no index repair after a wave (defs/asset_index.py)

    def __init__(self, base_dir, inst_data=None):
        quicken_backfill_loop()  # in the UI's daemon: backfills from its buttons advance every few seconds
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
            if conn.info.pop(WROTE, False):
                os.utime(self._db_path)  # a commit the run watchers (the UI's run logs) must see: see the module doc

    def _process_engine(self):
        if getattr(self, "_engine_pid", None) != os.getpid():  # an engine (and its connections) must not cross a fork
            self._engine = create_engine(self._conn_string, poolclass=QueuePool, pool_size=1,
                                         max_overflow=KEPT_OVERFLOW, pool_recycle=-1, connect_args={
                                             "timeout": SQLITE_BUSY_TIMEOUT_SECONDS, "check_same_thread": False})
            sqlalchemy.event.listen(self._engine, "connect", _wal_normal_sync)
            sqlalchemy.event.listen(self._engine, "before_cursor_execute", _note_writes)
            self._engine_pid = os.getpid()
            self._db_path = self.get_db_path()
        return self._engine

    def dispose(self) -> None:
        super().dispose()
        if getattr(self, "_engine_pid", None) == os.getpid():
            self._engine.dispose()  # close the kept connections with the instance
            self._engine_pid = None

    def store_event(self, event) -> None:
        """An asset event and the asset index entry that points at it, in one transaction.

        Dagster commits the event, then updates the index (the asset's latest materialization) in a second
        transaction. Two processes materializing partitions of one asset at once (concurrent runs) could then
        commit their index updates in the other order, leaving the index on the older event; every asset that
        reads both partitions then looked stale after each rebuild (tests/test_event_log.py). In one
        transaction, the write lock taken by the insert is held until the index is updated, so the index
        follows the order of the events. One commit fewer per asset event, too."""
        if not (event.is_dagster_event and event.dagster_event_type in ASSET_EVENTS
                and event.dagster_event.asset_key):
            super().store_event(event)
            return
        with self._connect() as conn:
            event_id = conn.execute(self.prepare_insert_event(event)).inserted_primary_key[0]
            self._store_asset_event_tags(conn, [event], [event_id])
            self._store_asset_event(conn, event, event_id)


def _note_writes(conn, _cursor, statement: str, _parameters, _context, _executemany) -> None:
    if not statement.lstrip().upper().startswith(_READS):
        conn.info[WROTE] = True


def _wal_normal_sync(dbapi_connection, _record) -> None:
    """WAL journal (Dagster's own choice for this database) with synchronous=NORMAL: a commit is written to the
    WAL but not fsync'ed (about 2.6 ms per commit here, several commits per event). Nothing committed is lost
    when a process dies; an OS crash or power cut may lose the last commits, whole, never corrupting the
    database: docs/store.md says why that is safe for gmates."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
