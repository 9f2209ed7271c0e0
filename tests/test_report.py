"""`gmates report` over a store holding eval_scores of several seeds and of another configuration."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from gmates_assets.cli import main
from gmates_assets.core.manifest import load_manifest, replicate_identity
from gmates_assets.core.store import ArtifactStore
from gmates_assets.report import build_report, format_report, manifest_code_versions

TESTS_MANIFEST = Path(__file__).resolve().parents[1] / "data_manifests" / "tests.yaml"

LABEL = "core: mean centered accuracy over 1 task(s) with the manifest's random baselines (not DCLM Core)"


def _with_seed(manifest, seed: int, steps: int | None = None):
    pretrain = manifest.pretrain.model_copy(update={"seed": seed, **({"steps": steps} if steps else {})})
    return manifest.model_copy(update={"pretrain": pretrain})


def _scores(manifest, method: str, core: float, ppl: float, loss: float = 2.0) -> dict:
    return {"core": core, "core_version": LABEL, "core_tasks": ["kb"], "n_tasks": 1,
            "tasks": {"kb": {"centered_accuracy": core, "accuracy": core}}, "heldout_perplexity": ppl,
            "heldout_reference_loss": loss, "provenance": {"method": method, **replicate_identity(manifest)}}


def _put(store: ArtifactStore, asset: str, key: str, files: dict[str, bytes], partition=None, record=None):
    with store.build(asset, key, partition, record=record) as work:
        for name, data in files.items():
            (work / name).write_bytes(data)
    return store.get(asset, key)


def _built_by(manifest) -> dict:
    """The record of scores built by this replicate's configuration (a top-level step: no input artifacts)."""
    return {"code_version": manifest_code_versions(manifest)["eval_scores"], "inputs": {}}


@pytest.fixture
def store(tmp_path):
    manifest = load_manifest(TESTS_MANIFEST).manifest
    store = ArtifactStore(tmp_path / "store")
    figures = {  # (method, seed) -> (core, perplexity)
        ("group_mates", 0): (0.30, 20.0), ("group_mates", 1): (0.34, 22.0),
        ("mates", 0): (0.28, 21.0), ("mates", 1): (0.26, 21.0),
        ("random", 0): (0.01, 25.0), ("random", 1): (0.03, 25.0),
    }
    hashes = {}
    for (method, seed), (core, ppl) in figures.items():
        art = _put(store, "eval_scores", f"{method}-{seed}",
                   {"scores.json": json.dumps(_scores(_with_seed(manifest, seed), method, core, ppl)).encode()},
                   method, record=_built_by(_with_seed(manifest, seed)))
        hashes.setdefault(seed, {})[method] = art.content_hash
    # an older build of the same seed setting (e.g. before a code change): the newest one counts
    _put(store, "eval_scores", "random-0-old", {"scores.json": json.dumps(
        _scores(_with_seed(manifest, 0), "random", 0.5, 99.0)).encode()}, "random", record=_built_by(manifest))
    os.utime(store.get("eval_scores", "random-0-old").path / "_artifact.json", (1, 1))
    # another configuration (more pretraining steps) must not be mixed in
    _put(store, "eval_scores", "other", {"scores.json": json.dumps(
        _scores(_with_seed(manifest, 0, steps=99), "group_mates", 0.9, 1.0)).encode()}, "group_mates")
    _put(store, "method_comparison", "cmp0", {"comparison.png": b"png"},
         record={"inputs": {"eval_scores": hashes[0]}})
    return store, manifest


def test_report_averages_seeds_of_one_configuration(store):
    store, manifest = store
    report = build_report(store, manifest)
    summary = report["methods"]
    assert list(summary) == ["group_mates", "mates", "random"]
    assert {m: s["runs"] for m, s in summary.items()} == {"group_mates": 2, "mates": 2, "random": 2}
    assert summary["group_mates"]["mean"]["core"] == pytest.approx(0.32)  # not 0.9 from the other configuration
    assert summary["group_mates"]["sd"]["core"] == pytest.approx(0.04 / 2 ** 0.5)
    assert summary["random"]["mean"]["heldout_perplexity"] == pytest.approx(25.0)  # the old 99.0 build is ignored
    assert summary["mates"]["sd"]["heldout_perplexity"] == 0.0
    rows = {r["method"]: r for r in report["comparison"]}
    assert rows["group_mates"]["core_delta_vs_random"] == pytest.approx(0.30)
    assert "core_vs_random_%" not in rows["group_mates"]  # random's core 0.02 is near zero
    assert rows["group_mates"]["ppl_vs_random_%"] == pytest.approx(-16.0)
    assert report["core_version"] == LABEL
    assert len(report["plots"]) == 1 and report["plots"][0].endswith("comparison.png")

    text = format_report(report)
    assert LABEL in text and "0.3200 ± 0.0283" in text and "+0.3000" in text
    assert "comparison.png" in text


def test_report_cli_json_and_empty_store(store, tmp_path, monkeypatch, capsys):
    store, manifest = store
    monkeypatch.setenv("GMATES_HOME", str(store.root))
    assert main(["report", "--manifest", str(TESTS_MANIFEST), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["methods"]["random"]["runs"] == 2 and out["manifest"] == "tests"
    monkeypatch.setenv("GMATES_HOME", str(tmp_path / "empty"))
    assert main(["report", "--manifest", str(TESTS_MANIFEST)]) == 1
    assert "no eval_scores in the store" in capsys.readouterr().out
