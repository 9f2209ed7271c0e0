"""Settings checked against the data they meet: pool size, model windows, eval items, model loading, paths."""
from __future__ import annotations

import pytest

from gmates_assets.core.evaluation import TaskSpec, evaluate_tasks
from gmates_assets.core.manifest import ManifestError, parse_manifest
from gmates_assets.core.validation import (
    ModelLoadError,
    ValidationError,
    check_pool_size,
    fit_prompt_answer,
    items_that_fit,
    loading_model,
)

from .test_evaluation import BigramLM, WordTokenizer, lp, write_jsonl

MINIMAL = "name: m\nsources:\n  shards:\n    - {name: s, format: demo}\n"


def test_pool_settings_larger_than_the_pool_name_the_field():
    check_pool_size(100, clustering_k=100, oracle_pool_size=100)
    with pytest.raises(ValidationError, match=r"clustering\.k \(101\) is larger than the pool \(100 documents\)"):
        check_pool_size(100, clustering_k=101, oracle_pool_size=10)
    with pytest.raises(ValidationError, match=r"oracle\.pool_size \(500\) is larger than the pool"):
        check_pool_size(100, clustering_k=4, oracle_pool_size=500)


def test_prompt_is_cut_from_the_left_and_the_answer_kept():
    assert fit_prompt_answer([1, 2], [3], 4, example="e", setting="probe.seq_len") == ([1, 2], False)
    assert fit_prompt_answer([1, 2, 3, 4], [5, 6], 4, example="e", setting="probe.seq_len") == ([3, 4], True)
    with pytest.raises(ValidationError, match=r"reference example 7 does not fit probe\.seq_len=4: its answer "
                                              r"alone has 4 tokens"):
        fit_prompt_answer([1], [2, 3, 4, 5], 4, example="reference example 7", setting="probe.seq_len")
    with pytest.raises(ValidationError, match=r"too_long: error"):
        fit_prompt_answer([1, 2, 3], [4, 5], 4, example="e", setting="s", on_too_long="error")


def test_eval_items_that_cannot_fit_name_task_file_and_line(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2}\n{"a": 3}\n')  # items on lines 1, 3 and 4
    assert items_that_fit("t", path, [3, 8, 2], max_length=4, on_too_long="skip") == ([0, 2], [3])
    with pytest.raises(ValidationError, match=rf"{path}:3: task 't': a continuation of 8 tokens cannot fit"):
        items_that_fit("t", path, [3, 8, 2], max_length=4)
    with pytest.raises(ValidationError, match="none of its 3 items fits"):
        items_that_fit("t", path, [9, 8, 7], max_length=4, on_too_long="skip")


def test_evaluation_skips_and_counts_items_that_cannot_fit(tmp_path):
    items = [{"context": "the sky", "continuation": "is blue"},
             {"context": "the", "continuation": "sky is very green the sky is blue"},  # 8 tokens
             {"context": "the sky", "continuation": "is very"}]
    path = write_jsonl(tmp_path / "lm.jsonl", items)
    with pytest.raises(ValidationError, match=rf"{path}:2: task 'lm'"):
        evaluate_tasks(BigramLM(), WordTokenizer(), [TaskSpec("lm", path, "language_modeling")], device="cpu",
                       max_length=6)
    out = evaluate_tasks(BigramLM(), WordTokenizer(), [TaskSpec("lm", path, "language_modeling")],
                         device="cpu", max_length=6, too_long="skip")
    task = out["tasks"]["lm"]
    assert task["n_items"] == 2 and task["n_skipped"] == 1
    assert task["mean_logprob"] == pytest.approx((lp(0.6, 0.1) + lp(0.6, 0.3)) / 2)


def test_a_model_that_cannot_load_names_the_setting():
    with pytest.raises(ModelLoadError, match=r"encoder\.model 'no/such-model' cannot be loaded: .*HF_HUB_OFFLINE"):
        with loading_model("encoder.model", "no/such-model"):
            raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")


def test_encoder_load_failure_offline_names_encoder_model(monkeypatch, tmp_path):
    from gmates_assets.core import encode

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match=r"encoder\.model '.*missing-encoder' cannot be loaded"):
        encode.load_encoder(str(tmp_path / "missing-encoder"))


def test_manifest_rejects_heads_that_do_not_divide_the_hidden_size():
    text = MINIMAL + "probe:\n  model: {hidden_size: 30, num_heads: 4}\n"
    with pytest.raises(ManifestError, match=r"probe\.model: .*hidden_size \(30\) must be divisible by num_heads \(4\)"):
        parse_manifest(text, "m.yaml")


def test_model_folders_resolve_relative_to_the_manifest(tmp_path, monkeypatch):
    (tmp_path / "models" / "enc").mkdir(parents=True)
    manifest = tmp_path / "m.yaml"
    manifest.write_text(MINIMAL + "encoder: {model: models/enc}\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the working directory must not matter
    from gmates_assets.core.manifest import load_manifest

    loaded = load_manifest(manifest)
    assert loaded.model_location("models/enc") == str(tmp_path / "models" / "enc")
    assert loaded.model_location("org/hub-model") == "org/hub-model"
