"""Runs a killed `gmates sync` left behind: in-process runs stay STARTED forever once their process is gone.

Every run `sync` executes in its own process carries the tag `gmates/process` (host, pid and the process's start
time, so a reused pid is not mistaken for the old process). The next sync marks the STARTED runs of this host
whose process is gone as failed, and says so in its log. Runs of other hosts, and launched runs (which Dagster's
run monitoring owns), are left alone.
"""
from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Optional

import dagster as dg

PROCESS_TAG = "gmates/process"
PARTITION_TAG = "dagster/partition"


def _start_time(pid: int) -> Optional[str]:
    """The process's start time since boot (Linux /proc), None where unknown or the process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def process_tag(pid: Optional[int] = None) -> str:
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}:{pid}:{_start_time(pid) or ''}"


def process_tags() -> dict[str, str]:
    """Tags for a run executed in this process."""
    return {PROCESS_TAG: process_tag()}


def _gone(tag: str) -> Optional[int]:
    """The pid of a run's process on this host that no longer runs (None: other host, or still running)."""
    host, _, rest = tag.partition(":")
    pid_text, _, started = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return None
    pid = int(pid_text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return pid
    except PermissionError:  # another user's process holds the pid now: ours is gone
        return pid
    return pid if started and _start_time(pid) not in (None, started) else None


def fail_orphaned_runs(instance: dg.DagsterInstance, log: Callable[[str], None]) -> list[str]:
    """Mark STARTED runs whose process on this host is gone as failed; the ids of those runs."""
    failed = []
    statuses = [dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING]
    for run in instance.get_runs(dg.RunsFilter(statuses=statuses)):
        tag = run.tags.get(PROCESS_TAG)
        pid = _gone(tag) if tag else None
        if pid is None:
            continue
        message = (f"run {run.run_id} ({', '.join(k.to_user_string() for k in run.asset_selection or ())}"
                   f"{f' [{run.tags.get(PARTITION_TAG)}]' if run.tags.get(PARTITION_TAG) else ''}) was left "
                   f"STARTED by process {pid} on this host, which is gone (killed?): marked failed")
        instance.report_run_failed(run, message)
        log(message)
        failed.append(run.run_id)
    return failed
