"""End to end through `gmates sync` on the tests profile: one full build, then edits that must recompute
exactly what they affect (store memoization + Dagster code/data versions), plus byte-reproducible releases."""
from __future__ import annotations

import json

import polars as pl
import pytest

from gmates_assets.core.release import verify_release
from gmates_assets.defs.sync import FRESH

from .pipeline import TESTS_MANIFEST, Build, assets_of


@pytest.fixture
def edited(full_build, tmp_path) -> Build:
    return full_build.copy_to(tmp_path / "copy")


def release_dir(build: Build):
    path = build.latest_metadata("dataset_release")["artifact_path"]
    from pathlib import Path

    return Path(path) / "release"


def test_full_build_is_fresh_and_complete(full_build):
    assert full_build.not_fresh() == set()
    release = release_dir(full_build)
    assert verify_release(release) == []
    frame = pl.read_parquet(sorted((release / "data").glob("*.parquet")))
    assert frame.columns == ["doc_id", "text", "source", "influence_score", "cluster"]
    selected = full_build.latest_metadata("selected_subset", "group_mates")
    assert frame.height == selected["dagster/row_count"]
    comparison = full_build.latest_metadata("method_comparison")
    assert "group_mates" in comparison["comparison"] and "random" in comparison["comparison"]


def test_every_materialization_records_what_its_step_cost(full_build):
    for asset, partition in (("embeddings", "shard-000"), ("pretrained_checkpoint", "group_mates"),
                             ("dataset_release", None)):
        meta = full_build.latest_metadata(asset, partition)
        assert meta["cpu_seconds"] > 0 and meta["peak_rss_mib"] > 50, (asset, meta)
        assert meta["step_seconds"] >= meta["compute_seconds"], (asset, meta)


def test_selection_sizes_equal_across_methods_and_checks_pass(full_build):
    sizes = {m: full_build.latest_metadata("selected_subset", m)["dagster/row_count"]
             for m in ("group_mates", "mates", "random")}
    assert len(set(sizes.values())) == 1 and next(iter(sizes.values())) == 160  # ratio 0.5 of 320 documents


def test_no_edit_computes_nothing(edited):
    assert edited.sync().executed == []


def test_encoder_edit_makes_exactly_its_readers_stale_and_revert_reuses(edited):
    edited.edit("encoder.pooling", "cls")
    # embeddings, and the influence models that pool the chunk vectors themselves (they read encoder.pooling)
    assert assets_of(edited.not_fresh()) == {"embeddings", "relational_model_init", "bootstrap_rollouts",
                                             "relational_model", "influence_scores"}
    report = edited.sync(select=["embeddings", "tokenized_pool"])
    assert assets_of(report.executed) == {"embeddings"}
    assert edited.latest_metadata("embeddings", "shard-000")["reused"] is False
    edited.edit("encoder.pooling", "mean")
    report = edited.sync(select=["embeddings", "tokenized_pool"])
    assert assets_of(report.executed) == {"embeddings"}
    assert edited.latest_metadata("embeddings", "shard-000")["reused"] is True  # a cache hit, not a recompute


def test_tokenizer_edit_recomputes_tokens_and_nothing_upstream(edited):
    edited.edit("tokenizer.vocab_size", 600)
    assert assets_of(edited.not_fresh()) == {"lm_tokenizer", "tokenized_pool"}
    report = edited.sync(select=["tokenized_pool", "embeddings"])
    assert assets_of(report.executed) == {"lm_tokenizer", "tokenized_pool"}


def test_relational_edit_recomputes_models_and_second_stage_but_not_random_oracle(edited):
    edited.edit("relational.epochs", 6)
    assert assets_of(edited.not_fresh(["oracle_random", "relational_model_init", "relational_model"])) == {
        "relational_model_init", "relational_model"}
    report = edited.sync(select=["influence_scores"])
    ran = assets_of(report.executed)
    assert {"relational_model_init", "relational_model", "influence_scores"} <= ran
    assert not ran & {"oracle_random", "probe_checkpoint", "probe_pool", "embeddings", "documents"}


def test_oracle_rollouts_edit_recomputes_from_the_oracle_down(edited):
    edited.edit("oracle.rollouts", 10)
    assert assets_of(edited.not_fresh(["probe_checkpoint", "oracle_random"])) == {"oracle_random"}
    report = edited.sync(select=["influence_scores"])
    ran = assets_of(report.executed)
    assert {"oracle_random", "relational_model_init", "relational_model", "influence_scores"} <= ran
    assert not ran & {"probe_checkpoint", "probe_pool", "embeddings", "tokenized_pool"}


def test_selection_ratio_edit_recomputes_selection_only(edited):
    edited.edit("selection.ratio", 0.4)
    assert assets_of(edited.not_fresh()) == {"selected_subset"}
    report = edited.sync(select=["selected_subset"])
    assert assets_of(report.executed) == {"selected_subset"}
    assert edited.latest_metadata("selected_subset", "mates")["dagster/row_count"] == 128


def test_clustering_k_edit_recomputes_clustering_and_selection_only(edited):
    edited.edit("clustering.k", 3)
    report = edited.sync(select=["selected_subset"])
    assert assets_of(report.executed) == {"cluster_assignments", "selected_subset"}


def test_pretrain_edit_recomputes_training_scores_comparison_only(edited):
    edited.edit("pretrain.steps", 12)
    assert assets_of(edited.not_fresh()) == {"pretrained_checkpoint"}
    ran = assets_of(edited.sync().executed)
    assert {"pretrained_checkpoint", "eval_scores"} <= ran <= {"pretrained_checkpoint", "eval_scores", "method_comparison"}


def test_eval_edit_recomputes_only_scores_and_comparison(edited):
    data = edited.manifest.read_text().replace("shots: 1, random_baseline: 0.25", "shots: 2, random_baseline: 0.25")
    edited.manifest.write_text(data)
    assert assets_of(edited.not_fresh()) == {"eval_scores"}  # method_comparison reads no manifest field
    ran = assets_of(edited.sync().executed)
    assert ran == {"eval_scores", "method_comparison"} or ran == {"eval_scores"}


def test_two_builds_from_scratch_release_identical_content(full_build, tmp_path):
    second = Build.create(tmp_path / "second", TESTS_MANIFEST.read_text())
    second.sync(select=["dataset_release"])
    first_manifest = json.loads((release_dir(full_build) / "manifest.json").read_text())
    second_manifest = json.loads((release_dir(second) / "manifest.json").read_text())
    assert first_manifest["content_hash"] == second_manifest["content_hash"]
    assert verify_release(release_dir(second)) == []
    assert first_manifest["volatile"] != second_manifest["volatile"]  # run ids differ, content does not


def test_release_verify_names_a_changed_shard(full_build, tmp_path):
    import shutil

    copy = tmp_path / "release"
    shutil.copytree(release_dir(full_build), copy)
    shard = sorted((copy / "data").glob("*.parquet"))[0]
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    shard.write_bytes(bytes(raw))
    problems = verify_release(copy)
    assert problems and any(shard.name in p for p in problems)


def test_cli_exports_a_verified_release_and_status_json(full_build, build_env, tmp_path, capsys):
    from gmates_assets.cli import main

    build_env(full_build)
    assert main(["release", "export", str(tmp_path / "out"), "-m", str(full_build.manifest)]) == 0
    assert verify_release(tmp_path / "out") == []
    assert pl.read_parquet(str(tmp_path / "out" / "data" / "*.parquet")).height == 160
    capsys.readouterr()
    assert main(["status", "--manifest", str(full_build.manifest), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["status"] for r in rows} == {FRESH} and {"asset", "partition", "status", "causes", "notes"} == set(rows[0])
