"""CUDA paths that can be checked without a GPU: the step's device setting reaches the code that uses the device.

The greedy selection chose its device by itself (CUDA whenever present), so `execution.device: cpu` still put it on
a GPU, and every concurrent selection run went to cuda:0 whatever GPU `execution.gpus` gave the run.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from gmates_assets.core import methods
from gmates_assets.core import selection as sel


def small_pool(n: int = 60, d: int = 8, k: int = 3) -> methods.PoolScores:
    rng = np.random.default_rng(0)
    h = rng.standard_normal((n, d)).astype(np.float32)
    h /= np.linalg.norm(h, axis=1, keepdims=True)
    members = [np.arange(c, n, k, dtype=np.int64) for c in range(k)]
    return methods.PoolScores(h=h, s=rng.standard_normal(n).astype(np.float32), members=members, tau=1.0, alpha=1.0,
                              s_individual=lambda: np.zeros(n), semantic_members=lambda: members)


@pytest.fixture
def greedy_devices(monkeypatch):
    """The device every group_greedy_select call was asked for (each then runs on numpy, so no GPU is needed)."""
    asked = []
    original = sel.group_greedy_select

    def spy(*args, device=None, **kwargs):
        asked.append(device)
        return original(*args, device="numpy", **kwargs)

    monkeypatch.setattr(sel, "group_greedy_select", spy)
    return asked


@pytest.mark.parametrize("method", ["group_mates", "semantic_clusters", "no_clustering"])
@pytest.mark.parametrize("setting, expected", [("auto", None), ("cpu", "numpy"), ("cuda", "cuda"),
                                               ("cuda:1", "cuda:1")])
def test_selection_runs_on_the_steps_device(method, setting, expected, greedy_devices):
    result = methods.select(method, small_pool(), methods.SelectionConfig(device=setting))
    assert len(result) > 0
    assert greedy_devices and set(greedy_devices) == {expected}


def test_execution_device_cpu_keeps_selection_off_a_present_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU host; any CUDA call fails here
    pool = small_pool()
    on_cpu = methods.select("group_mates", pool, methods.SelectionConfig(device="cpu"))
    assert np.array_equal(on_cpu.indices, sel.group_greedy_select(pool.h, pool.s, pool.members,
                                                                  methods.budgets(pool.members,
                                                                                  methods.SelectionConfig()),
                                                                  device="numpy").indices)
