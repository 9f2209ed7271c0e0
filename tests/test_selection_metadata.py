"""selected_subset's metadata plots stay cheap at many clusters (under a second: synthetic scores, no build).

At 1M documents and k = 2,000 clusters, a bar per cluster took most of the selection step (112 s of 178 s wall,
about 7 s CPU per plot on this machine; docs/performance.md "Whole-pool steps at 1M documents"): its cost grew
with k, and 2,000 bars are unreadable anyway. Beyond a few dozen clusters the plot is a histogram over clusters.
"""
from __future__ import annotations

import numpy as np

from gmates_assets.core import methods
from gmates_assets.core import selection as sel
from gmates_assets.defs.assets import selection as selection_assets


def _pool_and_result(k: int, per_cluster: int = 4):
    rng = np.random.default_rng(0)
    n = k * per_cluster
    members = [np.arange(c * per_cluster, (c + 1) * per_cluster, dtype=np.int64) for c in range(k)]
    s = rng.standard_normal(n)
    pool = methods.PoolScores(h=np.zeros((n, 2), np.float32), s=s, members=members, tau=1.0, alpha=1.0,
                              s_individual=lambda: s, semantic_members=lambda: members)
    picks = np.concatenate([m[:2] for m in members])
    return pool, sel.SelectionResult.from_picks(picks, s[picks])


def test_per_cluster_plot_draws_no_bar_per_cluster_at_many_clusters(monkeypatch):
    bars: list[int] = []
    real_bar_plot = selection_assets.plots.bar_plot

    def counting_bar_plot(values, *args, **kwargs):
        bars.append(len(values))
        return real_bar_plot(values, *args, **kwargs)

    monkeypatch.setattr("gmates_assets.core.plots.bar_plot", counting_bar_plot)
    pool, result = _pool_and_result(k=300)
    metadata = selection_assets._selection_metadata(result, pool, "group_mates")
    assert "selected_fraction_per_cluster" in metadata
    assert all(count <= selection_assets.BAR_PLOT_MAX_CLUSTERS for count in bars), bars


def test_few_clusters_keep_a_bar_each(monkeypatch):
    bars: list[int] = []
    monkeypatch.setattr("gmates_assets.core.plots.bar_plot", lambda values, *a, **k: bars.append(len(values)) or b"")
    pool, result = _pool_and_result(k=8)
    selection_assets._selection_metadata(result, pool, "mates")
    assert bars == [8]
