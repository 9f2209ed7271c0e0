"""Backfills advance every few seconds in gmates' local instance, not every 30.

Dagster's backfill daemon (dagster 1.13: `dagster._daemon.backfill.execute_backfill_iteration_loop`) submits a
backfill's next partitions once per loop and then sleeps `DEFAULT_DAEMON_INTERVAL_SECONDS` (30) minus the loop's
time; there is no setting for it. A backfill launched from the UI's "Materialize all" advances one level of the
graph per loop, so a two-level backfill waited a minute between the runs it needed, and the whole graph (a dozen
levels) six minutes, with nothing to do (tests/test_ui_browser.py, step 6). A loop with no backfill in flight
is one query, so looking every BACKFILL_LOOP_SECONDS costs nothing worth measuring.

Applied whenever an instance with gmates' event log storage is created: in the daemon that is before its threads
start (its backfill loop reads the constant when it starts). Other processes (Dagster imports the module there
too) never run the loop. The constant's only other reader is the asset daemon's interval for automation without
sensors, which gmates does not use. A test (tests/test_event_log.py) checks that the constant still exists, is
changed and is what the loop reads."""
from __future__ import annotations

BACKFILL_LOOP_SECONDS = 3


def quicken_backfill_loop() -> None:
    """Make the backfill loop of this process's daemon (if it runs one) look every BACKFILL_LOOP_SECONDS."""
    from dagster._daemon import controller  # private, pinned dagster

    if hasattr(controller, "DEFAULT_DAEMON_INTERVAL_SECONDS"):
        controller.DEFAULT_DAEMON_INTERVAL_SECONDS = min(controller.DEFAULT_DAEMON_INTERVAL_SECONDS,
                                                         BACKFILL_LOOP_SECONDS)
