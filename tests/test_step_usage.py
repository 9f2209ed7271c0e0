"""core/step_usage: the CPU seconds and peak memory a step records in its metadata (cheap: about 2 s)."""
from __future__ import annotations

import subprocess
import sys
import time

import numpy as np

from gmates_assets.core.step_usage import StepUsage, current_rss_kib

MIB = 1024 * 1024


def _busy(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def _hold(mib: int, seconds: float) -> None:
    block = np.ones(mib * MIB, dtype=np.uint8)  # written, so resident
    time.sleep(seconds)
    del block


def test_cpu_of_the_process_and_its_children():
    with StepUsage() as usage:
        _busy(0.3)
        subprocess.run([sys.executable, "-c", "import time\nend = time.process_time() + 0.3\n"
                        "while time.process_time() < end: pass"], check=True)
    figures = usage.metadata()
    assert figures["cpu_seconds"] >= 0.55  # 0.3 s here + 0.3 s in the child (+ its start)
    assert figures["step_seconds"] >= 0.3


def test_peak_rss_new_high_is_exact_and_a_lower_peak_is_sampled():
    base = current_rss_kib() / 1024
    with StepUsage() as first:
        _hold(300, 0.2)
    with StepUsage() as second:  # stays below the first step's peak: the sampler sees it
        _hold(120, 0.4)
    big, small = first.metadata(), second.metadata()
    assert big["peak_rss_exact"] is True and big["peak_rss_mib"] >= base + 290
    assert small["peak_rss_exact"] is False
    assert base + 100 <= small["peak_rss_mib"] < big["peak_rss_mib"] - 100


def test_idle_step_costs_little():
    with StepUsage() as usage:
        time.sleep(0.1)
    figures = usage.metadata()
    assert figures["cpu_seconds"] < 0.1 and figures["step_seconds"] >= 0.1
