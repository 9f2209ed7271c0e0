"""Pooled database connections for gmates' processes on a Postgres instance (a no-op on sqlite).

dagster-postgres opens a new connection for every query (SQLAlchemy's NullPool, "to prevent accumulating
connections per DagsterInstance"), and Postgres forks a backend for each. A sync asks hundreds of questions to
plan each wave and polls its runs twice a second: measured in the cluster test (tests/test_cluster.py), one
sync opened 3,678 connections at 5 ms each, 17 s of its 114 s, and Postgres spent more CPU than any other
process of the test. Dagster's webserver keeps a pooled connection per storage instead
(`DagsterInstance.optimize_for_webserver`); `gmates sync`, `status`, `verify` and the warm run workers do the
same, without a statement timeout. The sqlite storages (the local default) ignore it.
"""
from __future__ import annotations

import dagster as dg

POOL_RECYCLE_SECONDS = 3600  # reopen a pooled connection after an hour (a server restart, a proxy's idle cut)
MAX_OVERFLOW = 8  # connections beyond the pooled one while threads query at once; closed when given back
NO_STATEMENT_TIMEOUT = 0  # Postgres: 0 disables it (a sync's queries may take as long as they need)


def hold_connections(instance: dg.DagsterInstance) -> dg.DagsterInstance:
    """Keep a pool of connections in each of the instance's storages for the life of this process."""
    instance.optimize_for_webserver(statement_timeout=NO_STATEMENT_TIMEOUT, pool_recycle=POOL_RECYCLE_SECONDS,
                                    max_overflow=MAX_OVERFLOW)
    return instance
