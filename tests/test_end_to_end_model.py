"""benchmarks/end_to_end.py's cost model: the fit recovers known terms, keeps them >= 0, and predicts with N*k for
clustering (pure functions, milliseconds; the script itself runs in tests/test_benchmarks_run.py)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "end_to_end.py"
spec = importlib.util.spec_from_file_location("end_to_end", SCRIPT)
e2e = importlib.util.module_from_spec(spec)
spec.loader.exec_module(e2e)


def run(docs: int, k: int, assets: dict[str, tuple], complete: bool = True, expected=None) -> dict:
    """assets: row -> (wall, cpu) or (wall, cpu, partitions, rows)."""
    rows = {}
    for row, figures in assets.items():
        wall, cpu, partitions, n_rows = (*figures, 1, 0) if len(figures) == 2 else figures
        rows[row] = {"step_s": wall, "cpu_s": cpu, "partitions": partitions, "rows": n_rows}
    return {"docs": docs, "k": k, "complete": complete, "assets": rows, "expected_partitions": expected or {}}


def test_fit_recovers_fixed_and_per_document_terms():
    fixed, slope = e2e.fit_fixed_plus_linear([5000, 20000, 100000], [12 + 0.03 * n for n in (5000, 20000, 100000)])
    assert fixed == pytest.approx(12) and slope == pytest.approx(0.03)


def test_fit_keeps_both_terms_non_negative():
    assert e2e.fit_fixed_plus_linear([1, 2, 3], [5.0, 4.9, 4.8]) == (pytest.approx(4.9), 0.0)  # noise: no slope
    fixed, slope = e2e.fit_fixed_plus_linear([10, 20], [0.5, 2.5])  # would need a negative fixed cost
    assert fixed == 0.0 and slope == pytest.approx((10 * 0.5 + 20 * 2.5) / (10 ** 2 + 20 ** 2))


def test_model_predicts_clustering_by_n_times_k_and_skips_unfinished_assets():
    runs = [run(1000, 1, {"dataset_release": (30, 60), "cluster_assignments": (1 + 1000 * 1 * 1e-6, 1)}),
            run(4000, 4, {"dataset_release": (120, 240), "cluster_assignments": (1 + 4000 * 4 * 1e-6, 1)}),
            run(9000, 9, {"oracle_random": (1, 1, 1, 0)}, complete=False,
                expected={"oracle_random": 2, "dataset_release": 1})]
    model = e2e.fit_model(runs)
    assert model["dataset_release"]["step_s"]["per_unit"] == pytest.approx(0.03)
    assert model["dataset_release"]["sizes"] == [1000, 4000]
    assert "oracle_random" not in model  # one of its two seeds finished: no figure for the asset
    assert e2e.unmeasured(model, runs) == ["oracle_random"]
    assert model["cluster_assignments"]["term"] == "N*k"
    wall = e2e.predict(model, 1_000_000, docs_per_cluster=1000, metric="step_s")
    assert wall["dataset_release"] == pytest.approx(30_000)
    assert wall["cluster_assignments"] == pytest.approx(1 + 1_000_000 * 1000 * 1e-6)


def test_shard_assets_cost_per_document_over_every_finished_shard_of_every_run():
    runs = [run(2000, 2, {"embeddings": (60, 100, 1, 2000)}),
            run(20000, 20, {"embeddings": (90, 150, 1, 2500)}, complete=False, expected={"embeddings": 8})]
    model = e2e.fit_model(runs)
    assert model["embeddings"]["cpu_s"]["per_unit"] == pytest.approx(250 / 4500)
    assert model["embeddings"]["cpu_s"]["fixed"] == 0.0 and model["embeddings"]["sizes"] == [2000, 20000]


def test_one_size_counts_pool_assets_per_document_and_the_rest_fixed():
    model = e2e.fit_model([run(2000, 2, {"selected_subset[mates]": (60, 100), "probe_checkpoint": (40, 70)})])
    wall = e2e.predict(model, 20_000, docs_per_cluster=1000, metric="step_s")
    assert wall["selected_subset[mates]"] == pytest.approx(600) and wall["probe_checkpoint"] == pytest.approx(40)


def test_gpu_figures_replace_only_the_measured_per_document_rows():
    runs = [run(1000, 1, {"embeddings": (30, 60, 1, 1000), "selected_subset[group_mates]": (2, 2),
                          "oracle_random": (50, 90)}),
            run(2000, 2, {"embeddings": (60, 120, 1, 2000), "selected_subset[group_mates]": (4, 4),
                          "oracle_random": (50, 90)})]
    figures = {"format": e2e.GPU_FORMAT, "assets": {"embeddings": {"docs_per_s": 1000.0},
                                                    "selected_subset": {"docs_per_s": 10_000.0}}}
    seconds, replaced = e2e.gpu_prediction(e2e.fit_model(runs), figures, 1_000_000, 1000)
    assert seconds["embeddings"] == pytest.approx(1000) and seconds["selected_subset[group_mates]"] == pytest.approx(100)
    assert seconds["oracle_random"] == pytest.approx(50) and set(replaced) == {"embeddings", "selected_subset[group_mates]"}


def test_a_fixed_work_asset_keeps_no_noise_slope_but_a_pool_asset_does():
    runs = [run(1000, 1, {"probe_checkpoint": (40.0, 70.0), "documents_index": (1.0, 1.0)}),
            run(4000, 4, {"probe_checkpoint": (41.0, 70.5), "documents_index": (1.01, 1.01)})]
    model = e2e.fit_model(runs)
    assert model["probe_checkpoint"]["step_s"] == {"fixed": pytest.approx(40.5), "per_unit": 0.0, "how": "fit: fixed"}
    assert model["documents_index"]["step_s"]["per_unit"] > 0  # it reads every shard's entry: the slope stays


def test_one_size_cannot_tell_clustering_n_times_k_from_its_overhead_so_counts_it_per_document():
    model = e2e.fit_model([run(20000, 20, {"cluster_assignments": (0.6, 0.6)})])
    assert model["cluster_assignments"]["term"] == "N"  # not 0.6 s / (20,000 * 20) per doc*cluster
    wall = e2e.predict(model, 1_000_000, docs_per_cluster=1000, metric="step_s")
    assert wall["cluster_assignments"] == pytest.approx(0.6 * 50)


def test_the_tokenizer_grows_with_its_capped_training_sample_only():
    runs = [run(2000, 2, {"lm_tokenizer": (1.0 + 2000 * 1e-3, 3.0)}),
            run(20000, 20, {"lm_tokenizer": (1.0 + e2e.TOKENIZER_TRAIN_DOCS * 1e-3, 6.0)})]
    model = e2e.fit_model(runs)
    assert model["lm_tokenizer"]["step_s"]["fixed"] == pytest.approx(1.0)
    wall = e2e.predict(model, 10_000_000, docs_per_cluster=1000, metric="step_s")
    assert wall["lm_tokenizer"] == pytest.approx(1.0 + e2e.TOKENIZER_TRAIN_DOCS * 1e-3)  # as at 20,000
    one = e2e.predict(e2e.fit_model(runs[1:]), 1_000_000, docs_per_cluster=1000, metric="step_s")
    assert one["lm_tokenizer"] == pytest.approx(runs[1]["assets"]["lm_tokenizer"]["step_s"])


def test_three_sizes_separate_clusterings_per_document_work_from_its_n_times_k_work():
    """Clustering reads every document's vector and writes its assignment (linear) besides the k-means work (N*k).
    With only fixed + N*k terms, three sizes of a linear cost were read as N*k: at 1M documents (k = 1,000)
    that predicted 6.4 min where the step measured 57 s with k = 2,000 (benchmarks/memory_scale.py)."""
    sizes = [(5000, 5), (20000, 20), (100000, 100)]

    def fitted(seconds):
        runs = [run(n, k, {"cluster_assignments": (seconds(n, k), seconds(n, k))}) for n, k in sizes]
        model = e2e.fit_model(runs)
        return model, e2e.predict(model, 1_000_000, docs_per_cluster=1000, metric="cpu_s")["cluster_assignments"]

    model, at_1m = fitted(lambda n, k: 0.2 + 4e-5 * n)  # linear only
    assert model["cluster_assignments"]["term"] == "N + N*k"
    assert at_1m == pytest.approx(0.2 + 4e-5 * 1_000_000, rel=1e-6)
    _, at_1m = fitted(lambda n, k: 0.2 + 4e-5 * n + 3e-8 * n * k)  # both
    assert at_1m == pytest.approx(0.2 + 40 + 3e-8 * 1e9, rel=1e-6)
    two = e2e.fit_model([run(n, k, {"cluster_assignments": (1 + 3e-8 * n * k,) * 2}) for n, k in sizes[1:]])
    assert two["cluster_assignments"]["term"] == "N*k"  # two sizes: two terms
