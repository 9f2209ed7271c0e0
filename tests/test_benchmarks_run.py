"""Every benchmark script runs at its smallest size (`--smoke`), so none can rot unnoticed (benchmarks/README.md).

A benchmark measures the numbers the docs quote; a smoke run only proves that each code path still runs
against today's APIs, in seconds. Scripts are discovered by glob: a new one must support `--smoke`.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "benchmarks").glob("*.py"))
SMOKE_TIMEOUT_S = 180


def test_benchmarks_are_discovered():
    assert len(SCRIPTS) >= 7


SYSTEM = {"end_to_end", "incremental"}  # whole-graph builds, about a minute each: started first (conftest)


@pytest.mark.slow
@pytest.mark.parametrize("script", [pytest.param(s, marks=pytest.mark.system) if s.stem in SYSTEM else s
                                    for s in SCRIPTS], ids=[s.stem for s in SCRIPTS])
def test_benchmark_runs_at_its_smallest_size(script, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1", "GMATES_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, str(script), "--smoke"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=SMOKE_TIMEOUT_S)
    assert done.returncode == 0, f"{script.name} --smoke failed (exit {done.returncode}):\n{done.stderr[-3000:]}"
    assert done.stdout.strip(), f"{script.name} --smoke printed nothing"
