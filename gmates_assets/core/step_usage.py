"""What one step cost: wall seconds, CPU seconds and peak resident memory, for the step's metadata.

Every materialization records these (defs/runtime.run_step), so where a build's time and memory go can be read
per asset from the Dagster instance (benchmarks/end_to_end.py reads them). They describe that materialization:
a reused artifact shows the small cost of its reuse, while `compute_seconds` keeps the original compute's time.

* cpu_seconds: user + system time of this process and of the child processes it waited for during the step
  (e.g. a torchrun pretraining worker). Process-wide, so two steps running at once in one process (threads)
  would each count the other's CPU; gmates runs one step at a time per process.
* peak_rss_mib: the largest resident set size of this process during the step. When the step raised the
  process's high-water mark (getrusage ru_maxrss) that mark is exact; otherwise the step stayed below an earlier
  step's peak and the figure is the largest of samples taken every SAMPLE_SECONDS (a lower bound: a spike shorter
  than that can be missed). `peak_rss_exact` says which. Reading the high-water mark never resets it, so other
  readers of ru_maxrss are unaffected.
"""
from __future__ import annotations

import os
import resource
import sys
import threading
import time
from typing import Optional

SAMPLE_SECONDS = 0.05
_PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024 if hasattr(os, "sysconf") else 4
_STATM = "/proc/self/statm"


def cpu_seconds() -> float:
    """User + system CPU seconds of this process plus its waited-for children, so far."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def max_rss_kib() -> int:
    """This process's high-water resident set size so far (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak


def current_rss_kib() -> Optional[int]:
    """The resident set size now, or None where /proc is absent."""
    try:
        with open(_STATM) as statm:
            return int(statm.read().split()[1]) * _PAGE_KIB
    except (OSError, IndexError, ValueError):
        return None


class StepUsage:
    """`with StepUsage() as usage: ...` then `usage.metadata()`: the figures of the block (see module doc)."""

    def __init__(self, sample_seconds: float = SAMPLE_SECONDS):
        self._interval = sample_seconds
        self._stop = threading.Event()
        self._sampled_kib = 0
        self._thread: Optional[threading.Thread] = None
        self._figures: dict = {}

    def _sample(self) -> None:
        while True:
            now = current_rss_kib()
            if now is not None:
                self._sampled_kib = max(self._sampled_kib, now)
            if self._stop.wait(self._interval):
                return

    def __enter__(self) -> StepUsage:
        self._wall, self._cpu, self._maxrss = time.monotonic(), cpu_seconds(), max_rss_kib()
        self._sampled_kib = current_rss_kib() or 0
        self._thread = threading.Thread(target=self._sample, name="gmates-step-usage", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sampled_kib = max(self._sampled_kib, current_rss_kib() or 0)
        end_maxrss = max_rss_kib()
        exact = end_maxrss > self._maxrss  # the step set a new process high: ru_maxrss is its own peak
        peak_kib = end_maxrss if exact else self._sampled_kib
        self._figures = {"step_seconds": round(time.monotonic() - self._wall, 3),
                         "cpu_seconds": round(cpu_seconds() - self._cpu, 3),
                         "peak_rss_mib": round(peak_kib / 1024, 1), "peak_rss_exact": exact}

    def metadata(self) -> dict:
        """step_seconds, cpu_seconds, peak_rss_mib, peak_rss_exact (empty before the block ends)."""
        return dict(self._figures)
