"""The run storage of gmates' local instance: Dagster's sqlite run storage, with kept connections.

`SqliteRunStorage` builds an engine and opens a connection for every query (profiled in a sync: ~45 a run, each
with an fsync'ed commit when it writes); here one engine per process keeps its connections, with
synchronous=NORMAL (gmates_assets/kept_sqlite.py). The database is Dagster's own, `history/runs.db`.

Relocatable like the event log: a relative `base_dir` (what gmates writes: `history`) is resolved against the
home of the instance that opens it.
"""
from __future__ import annotations

import os
from contextlib import contextmanager

from dagster import StringSource
from dagster._core.storage.runs import SqliteRunStorage  # the class Dagster's default instance uses

from .kept_sqlite import KeptEngine
from .local_instance import in_home


class KeptSqliteRunStorage(SqliteRunStorage):
    def __init__(self, base_dir: str, inst_data=None):
        self._configured_dir = str(base_dir)
        self._inst_data = inst_data
        self._kept = None
        if os.path.isabs(base_dir):
            self._open(base_dir)

    @classmethod
    def config_type(cls):
        return {"base_dir": StringSource}

    @classmethod
    def from_config_value(cls, inst_data, config_value):
        return cls(config_value["base_dir"], inst_data)

    def register_instance(self, instance) -> None:
        if not os.path.isabs(self._configured_dir):
            self._open(in_home(instance, self._configured_dir))
        super().register_instance(instance)

    def _open(self, base_dir: str) -> None:
        """Dagster's set-up (create or migrate the database), then this object takes its connection string."""
        created = SqliteRunStorage.from_local(base_dir, self._inst_data)
        SqliteRunStorage.__init__(self, created._conn_string, self._inst_data)  # noqa: SLF001
        self._kept = KeptEngine(self._conn_string)

    @contextmanager
    def connect(self):
        with self._kept.get().connect() as conn:
            with conn.begin():
                yield conn

    def dispose(self) -> None:
        super().dispose()
        if self._kept is not None:
            self._kept.dispose()
