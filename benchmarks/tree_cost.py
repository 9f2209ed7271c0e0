"""Wall and CPU seconds of a command and every process it starts, orphans included (by default: the cluster test).

`/usr/bin/time` counts only the children that their parents waited for. The cluster test's Postgres is started
by `pg_ctl` (it daemonizes: its parent exits), and processes stopped by a signal to their group are not always
waited for, so their CPU goes uncounted. This script makes itself a child subreaper (prctl
PR_SET_CHILD_SUBREAPER): every orphan of the command's tree is re-parented here and reaped here, so
`getrusage(RUSAGE_CHILDREN)` holds the user + system CPU of the whole tree. It prints that, the wall time, and the
load average before and after (the machine may be shared).

    python benchmarks/tree_cost.py                     # the whole-graph cluster test (pytest -s, one process)
    python benchmarks/tree_cost.py -- make test         # any command
    python benchmarks/tree_cost.py --smoke              # a tiny tree with an orphan, in a second
"""
from __future__ import annotations

import argparse
import ctypes
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PR_SET_CHILD_SUBREAPER = 36
CLUSTER_TEST = "tests/test_cluster.py::test_whole_graph_through_postgres_daemon_and_celery_workers"
ORPHAN_WAIT_SECONDS = 30.0
# --smoke: a shell whose background child outlives it (an orphan this script must reap and count)
SMOKE = ["sh", "-c", f"{sys.executable} -c 'sum(range(3_000_000))' & exit 0"]


def _become_subreaper() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _reap_orphans(deadline: float) -> list[int]:
    """Wait for every process re-parented here; the pids still alive at the deadline (left running)."""
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return []
        if pid == 0:
            time.sleep(0.1)
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and _parent_of(int(p)) == os.getpid()]


def _parent_of(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return -1
    return int(stat.rsplit(")", 1)[1].split()[1])


def measure(command: list[str]) -> dict:
    _become_subreaper()
    load_before = os.getloadavg()
    start, cpu_start = time.perf_counter(), _children_cpu()
    code = subprocess.run(command, cwd=ROOT).returncode
    wall = time.perf_counter() - start
    left = _reap_orphans(time.monotonic() + ORPHAN_WAIT_SECONDS)
    return {"exit": code, "wall_s": wall, "cpu_s": _children_cpu() - cpu_start, "left_running": left,
            "load_before": load_before, "load_after": os.getloadavg()}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="a tiny tree with an orphan instead of the test")
    parser.add_argument("command", nargs="*", help="the command (after --); default: the cluster test")
    args = parser.parse_args(argv)
    command = args.command or (SMOKE if args.smoke else
                               [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", CLUSTER_TEST])
    result = measure(command)
    load = lambda values: " ".join(f"{v:.2f}" for v in values)  # noqa: E731
    print(f"{' '.join(command)}\nexit {result['exit']}; wall {result['wall_s']:.1f} s; CPU {result['cpu_s']:.1f} s "
          f"(user + system, the whole process tree); load average {load(result['load_before'])} before, "
          f"{load(result['load_after'])} after")
    if result["left_running"]:
        print(f"still running after {ORPHAN_WAIT_SECONDS:.0f} s (not counted): {result['left_running']}")
    return result["exit"]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
