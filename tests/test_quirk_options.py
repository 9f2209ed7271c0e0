"""Options that reproduce the official Group-MATES code where it differs from the paper (method.md §3, §4),
each against a worked example; the defaults keep gmates' behaviour."""
from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

from gmates_assets.core import lm, oracle
from gmates_assets.core import selection as sel
from gmates_assets.core.manifest import load_manifest

TESTS_MANIFEST = Path(__file__).resolve().parents[1] / "data_manifests" / "tests.yaml"


def test_official_inplace_label_conversion_gives_alternating_sums():
    c = np.array([1.0, 3.0, 6.0, 10.0])
    assert oracle.marginals_from_cumulative(c).tolist() == [1.0, 2.0, 3.0, 4.0]  # default: first differences
    # the official loop subtracts the already converted entry: 3-1=2, 6-2=4, 10-4=6 (= 10-6+3-1)
    assert oracle.marginals_from_cumulative(c, "official_inplace").tolist() == [1.0, 2.0, 4.0, 6.0]
    rows = np.array([[1.0, 3.0, 6.0, 10.0], [0.5, 0.5, -1.0, 0.0]])
    assert oracle.marginals_from_cumulative(rows, "official_inplace").tolist() == [[1, 2, 4, 6], [0.5, 0, -1, 1]]
    with pytest.raises(ValueError, match="conversion"):
        oracle.marginals_from_cumulative(c, "cumsum")


def test_autocast_context_bf16_and_fp32():
    layer = torch.nn.Linear(4, 3)
    x = torch.randn(2, 4)
    with lm.autocast_context("fp32", "cpu"):
        assert layer(x).dtype == torch.float32
    with lm.autocast_context("bf16", torch.device("cpu")):
        assert layer(x).dtype == torch.bfloat16
    assert layer.weight.dtype == torch.float32  # autocast never changes the stored weights
    with pytest.raises(ValueError, match="precision"):
        lm.autocast_context("fp16", "cpu")


def test_bf16_probing_is_close_to_fp32_different_and_recorded(tmp_path):
    torch.set_num_threads(1)
    arch = lm.LMArchitecture("llama", hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                             max_seq_len=16, vocab_size=64)
    rng = np.random.default_rng(0)
    pool = lm.pack_sequences([((int(rng.integers(60)) + np.arange(20)) % 60).tolist() for _ in range(24)], 16, 63)
    model = lm.build_causal_lm(arch, seed=0)
    lm.train_lm(model, pool, lm.OptimConfig(lr=3e-3, warmup_steps=1, total_steps=6), 3, 4, 0, tmp_path / "ck",
                checkpoint_every=3, device="cpu")
    ids = (np.arange(10) + 5) % 60
    refs = lm.make_reference_batches([(ids, np.where(np.arange(10) < 5, -100, ids))] * 2, batch_size=2, pad_id=0)
    rollouts = np.array([[0, 1, 2], [3, 4, 5]])
    runs = {}
    for precision in ("fp32", "bf16"):
        oracle.probe_rollouts(tmp_path / "ck", pool, refs, rollouts, tmp_path / precision, chunk_rollouts=1,
                              device="cpu", precision=precision)
        runs[precision] = oracle.read_rollouts(tmp_path / precision)[2]
        assert json.loads((tmp_path / precision / oracle.ORACLE_META_FILE).read_text())["precision"] == precision
    assert not np.array_equal(runs["fp32"], runs["bf16"])
    assert np.abs(runs["fp32"] - runs["bf16"]).max() < 0.1  # bf16 rounding, not another computation
    oracle.probe_rollouts(tmp_path / "ck", pool, refs, rollouts, tmp_path / "again", chunk_rollouts=1,
                          device="cpu", precision="bf16")
    assert np.array_equal(oracle.read_rollouts(tmp_path / "again")[2], runs["bf16"])


def _faiss_centroids(train: np.ndarray, k: int, seed: int, cap: int) -> np.ndarray:
    import faiss

    kmeans = faiss.Kmeans(train.shape[1], k, niter=5, seed=seed, spherical=True, max_points_per_centroid=cap,
                          gpu=False)
    kmeans.train(np.ascontiguousarray(train, dtype=np.float32))
    return kmeans.centroids


def test_kmeans_subsample_drawn_by_gmates_or_by_faiss():
    x = np.random.default_rng(3).standard_normal((400, 8)).astype(np.float32)
    k, cap, seed = 4, 20, 1234  # 400 points > 4 * 20: a subsample of 80 rows trains the centroids
    ours = sel.spherical_kmeans(x, k, niter=5, seed=seed, max_points_per_centroid=cap, use_gpu=False)
    rows = np.sort(np.random.default_rng(seed).choice(400, size=k * cap, replace=False))
    assert np.array_equal(ours, _faiss_centroids(x[rows], k, seed, cap))  # gmates' seeded rows, all used
    official = sel.spherical_kmeans(x, k, niter=5, seed=seed, max_points_per_centroid=cap, use_gpu=False,
                                    subsample="faiss")
    assert np.array_equal(official, _faiss_centroids(x, k, seed, cap))  # faiss drew its own 80 of 400
    assert not np.array_equal(ours, official)
    with pytest.raises(ValueError, match="subsample"):
        sel.spherical_kmeans(x, k, subsample="numpy")


def test_float32_member_order_ties_near_zero_similarity():
    # one cluster; similarities 2e-9 and 1e-9 differ in float64 (1 - s) but both round to 1.0 in float32
    x = np.zeros((3, 2))
    centroids = np.array([[1.0, 0.0]])
    assignment = np.zeros(3, dtype=np.int64)
    similarity = np.array([2e-9, 1e-9, 0.5], dtype=np.float32)
    (default,) = sel.cluster_member_order(x, centroids, assignment, similarity)
    assert default.tolist() == [1, 0, 2]  # farthest first: 1 - 1e-9 > 1 - 2e-9
    (official,) = sel.cluster_member_order(x, centroids, assignment, similarity, precision="float32")
    assert official.tolist() == [0, 1, 2]  # a float32 tie at 1.0, broken by document index


def test_manifest_defaults_keep_gmates_behaviour_and_accept_the_official_values():
    manifest = load_manifest(TESTS_MANIFEST).manifest
    assert (manifest.relational.label_conversion, manifest.oracle.precision, manifest.clustering.subsample,
            manifest.clustering.member_order) == ("first_difference", "fp32", "gmates", "float64")
    official = manifest.model_validate({**manifest.model_dump(), "relational": {"label_conversion": "official_inplace"},
                                        "oracle": {"precision": "bf16"},
                                        "clustering": {"subsample": "faiss", "member_order": "float32"}})
    assert official.oracle.precision == "bf16" and official.clustering.member_order == "float32"
