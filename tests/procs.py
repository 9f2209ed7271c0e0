"""Live processes as /proc shows them (Linux): what tests use to find the processes they started and their CPU."""
from __future__ import annotations

import os
import time
from pathlib import Path


def process_stats() -> dict[int, list[str]]:
    """Every live process's /proc/<pid>/stat fields after "pid (comm) ": state(0) ppid(1) pgrp(2) ...
    utime(11) stime(12) cutime(13) cstime(14)."""
    stats = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = entry.joinpath("stat").read_text()
        except OSError:  # ended meanwhile
            continue
        stats[int(entry.name)] = stat[stat.rindex(")") + 2:].split()
    return stats


def tree(pid: int, stats: dict[int, list[str]]) -> set[int]:
    """pid and its live descendants."""
    found, todo = set(), [pid]
    while todo:
        parent = todo.pop()
        if parent in stats and parent not in found:
            found.add(parent)
            todo += [child for child, fields in stats.items() if int(fields[1]) == parent]
    return found


def cpu_seconds(fields: list[str]) -> float:
    """User + system CPU seconds of a process and of the children it reaped."""
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def wait_until(predicate, what: str, timeout: float = 120.0, every: float = 0.25):
    """Poll `predicate` until it returns something true (returned), or fail naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up after {timeout:.0f} s waiting for {what}")
        time.sleep(every)
