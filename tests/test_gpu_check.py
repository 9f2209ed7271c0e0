"""benchmarks/gpu_check.sh, the one script a session with a lent GPU runs (docs/performance.md § GPU), stays
runnable without one: its syntax, and its plumbing on the CPU (a part that works is recorded with its figures, a
part killed at its time budget is recorded as such and the summary still comes out). The parts themselves run at
smoke size in tests/test_benchmarks_run.py (benchmarks/gpu_check.py --smoke)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def test_gpu_check_sh_parses():
    done = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
def test_gpu_check_sh_records_a_part_killed_at_its_budget_and_still_summarizes(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(ROOT), "GPU_CHECK_WHEELS": str(tmp_path / "none"),
           "GPU_CHECK_BUDGET_TORCHRUN": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(["bash", str(SCRIPT), "--smoke", "--parts", "selection torchrun", "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.json", "gpu_check.log", "gpu_check.md",
                                                     "gpu_figures.json"]
    parts = json.loads((out / "gpu_check.json").read_text())["parts"]
    assert parts["selection"]["status"] == "ok"
    assert parts["selection"]["result"]["picks_identical_device_vs_numpy"] is True
    assert parts["torchrun"]["status"] == "error" and "killed at its time budget" in parts["torchrun"]["error"]
    assert parts["oracle"]["status"] == "no result"  # not asked for
    figures = json.loads((out / "gpu_figures.json").read_text())
    assert figures["format"] == "gmates-gpu-figures-v1" and figures["smoke"] is True
    assert set(figures["assets"]) == {"selected_subset"} and figures["assets"]["selected_subset"]["docs_per_s"] > 0
    assert "| torchrun | error |" in (out / "gpu_check.md").read_text()
    assert "-- torchrun: exit 124" in (out / "gpu_check.log").read_text()
