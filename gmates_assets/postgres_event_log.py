"""The event log storage for a Postgres instance (a cluster): dagster-postgres' storage, with an asset event and
its index entry written in one transaction, in the order of the events.

dagster-postgres commits an asset event, then moves the asset's index entry (`asset_keys.last_materialization`)
to it in a second transaction. Two runs materializing partitions of one asset at once can interleave: A stores
event 100, B stores 101 and points the index at it, then A points it back at 100. Dagster's staleness reads
that index: in the cluster test a downstream partition stayed stale after every rebuild, and a consumer built in
the same wave as the raced input recorded a wrong input version and was built twice
(tests/test_cluster.py). Here an asset event takes a transaction-scoped advisory lock on its asset key *before*
its insert, then updates the index in the same transaction: events of one asset get their ids and move the
index one after another, so the index always names the latest. Events of other assets and other kinds (run
and step events) are not serialized. gmates' local sqlite storage does the same (gmates_assets/event_log.py).

Named in dagster.yaml as `event_log_storage` (module `gmates_assets.postgres_event_log`, class
`OrderedPostgresEventLogStorage`, the same `postgres_db` config as dagster-postgres): docs/deployment.md.
Needs the `cluster` extra (dagster-postgres).
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as db
from dagster._core.events import ASSET_EVENTS, DagsterEventType  # private, pinned dagster
from dagster._core.storage.event_log import SqlEventLogStorageTable  # private, pinned dagster
from dagster_postgres import PostgresEventLogStorage
from dagster_postgres.event_log.event_log import CHANNEL_NAME
from dagster_postgres.utils import get_token_provider_from_config, pg_url_from_config


class OrderedPostgresEventLogStorage(PostgresEventLogStorage):
    orders_asset_index = True  # sync needs no index repair after a wave (defs/asset_index.py)

    @classmethod
    def from_config_value(cls, inst_data, config_value):
        return cls(inst_data=inst_data, postgres_url=pg_url_from_config(config_value),
                   should_autocreate_tables=config_value.get("should_autocreate_tables", True),
                   token_provider=get_token_provider_from_config(config_value))

    def store_event(self, event) -> None:
        if not _is_asset_event(event):
            super().store_event(event)
            return
        with self.index_transaction() as conn:
            _lock_asset(conn, event)
            run_id, event_id = conn.execute(self.prepare_insert_event(event).returning(
                SqlEventLogStorageTable.c.run_id, SqlEventLogStorageTable.c.id)).one()
            # kept from dagster-postgres for version skew (delivered at commit)
            conn.execute(db.text(f"NOTIFY {CHANNEL_NAME}, :notify_id"), {"notify_id": f"{run_id}_{event_id}"})
            self._store_asset_event_tags(conn, [event], [event_id])
            self._store_asset_event(conn, event, event_id)

    def store_event_batch(self, events: Sequence) -> None:
        """Batches of one asset's materializations (or observations): one transaction under the asset's lock, as
        store_event; anything else as dagster-postgres does it."""
        kinds = {event.get_dagster_event().event_type for event in events}
        assets = {event.get_dagster_event().asset_key for event in events}
        events = [event for event in events if not event.get_dagster_event().is_asset_failed_to_materialize]
        if not events or len(assets) != 1 or kinds not in ({DagsterEventType.ASSET_MATERIALIZATION},
                                                           {DagsterEventType.ASSET_OBSERVATION}):
            super().store_event_batch(events)
            return
        with self.index_transaction() as conn:
            _lock_asset(conn, events[0])
            result = conn.execute(self.prepare_insert_event_batch(events).returning(SqlEventLogStorageTable.c.id))
            event_ids = [row[0] for row in result.fetchall()]
            self._store_asset_event_tags(conn, events, event_ids)
            self._store_asset_event(conn, events[-1], event_ids[-1])  # the index names the last, as Dagster's


def _is_asset_event(event) -> bool:
    return bool(event.is_dagster_event and event.dagster_event_type in ASSET_EVENTS
                and event.dagster_event.asset_key)


def _lock_asset(conn, event) -> None:
    """Held until the transaction ends; a hash collision only serializes two assets' events."""
    conn.execute(db.text("SELECT pg_advisory_xact_lock(hashtext(:key))"),
                 {"key": event.dagster_event.asset_key.to_string()})
