"""The event log storage of gmates' local instance: Dagster's consolidated sqlite storage, with kept connections.

`ConsolidatedSqliteEventLogStorage` builds a new SQLAlchemy engine for every connection it opens, and Dagster
opens one or two per event: profiled, that was a third of the cost of storing an event, ~6 ms on this machine,
paid ~15 times per run. Here one engine per process keeps its connections (gmates_assets/kept_sqlite.py: WAL
with synchronous=NORMAL, no fsync per commit). An asset event and its index entry are stored in one
transaction (store_event), for concurrent runs (warm workers, launched runs). Kept connections leave commits in
the WAL file (nothing closes the last connection, which used to checkpoint it into the database file), so each
stored event touches the database file: the UI follows a run's log through a file watcher on it (every event,
batches included, is stored through store_event). Clusters use
Postgres instead (gmates_assets/postgres_event_log.py).

Relocatable: a relative `base_dir` (what gmates writes: `history/events`) is resolved against the home of the
instance that opens it, so a copied or moved DAGSTER_HOME keeps writing its own history. An absolute `base_dir`
outside the opening home (a home copied before homes were relocatable) is refused rather than written into.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

from dagster._core.events import ASSET_EVENTS  # private, pinned dagster
from dagster._core.storage.event_log import ConsolidatedSqliteEventLogStorage  # the class dagster.yaml names

from .backfill_loop import quicken_backfill_loop
from .kept_sqlite import KeptEngine
from .local_instance import in_home


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
            super().__init__(in_home(instance, self._configured_dir), self._inst_data)
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
        if getattr(self, "_kept", None) is None:
            self._kept = KeptEngine(self._conn_string)
        return self._kept.get()

    def dispose(self) -> None:
        super().dispose()
        if getattr(self, "_kept", None) is not None:
            self._kept.dispose()

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
        else:
            with self._connect() as conn:
                event_id = conn.execute(self.prepare_insert_event(event)).inserted_primary_key[0]
                self._store_asset_event_tags(conn, [event], [event_id])
                self._store_asset_event(conn, event, event_id)
        os.utime(self.get_db_path())  # tells the run watchers (the UI's run logs): see the module doc
