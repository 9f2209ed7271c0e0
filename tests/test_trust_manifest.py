"""Trust (issue 19): a manifest that is wrong fails at load time naming file, line and field; nothing
non-finite or empty is ever committed; a failed eval does not stop assets that do not depend on it."""
from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
import yaml

from gmates_assets.core.manifest import ManifestError, load_manifest, parse_manifest

ROOT = Path(__file__).resolve().parents[1]
MINIMAL = "name: t\nsources:\n  shards:\n    - {name: a, format: demo}\n"


def _error(text: str, source: str = "m.yaml") -> str:
    with pytest.raises(ManifestError) as err:
        parse_manifest(text, source)
    return str(err.value)


# ------------------------------------------------------------------------------------ 1. duplicate keys
def test_duplicate_top_level_section_names_both_lines():
    message = _error(MINIMAL + "selection:\n  ratio: 0.5\nselection:\n  ratio: 0.2\n")
    assert "m.yaml:5" in message and "m.yaml:7" in message and "selection" in message and "duplicate" in message


def test_duplicate_nested_key_names_dotted_path_and_both_lines():
    message = _error(MINIMAL + "probe:\n  optim:\n    lr: 0.1\n    lr: 0.2\n")
    assert "probe.optim.lr" in message and "m.yaml:7" in message and "m.yaml:8" in message


def test_duplicate_key_in_flow_mapping_of_a_list_item():
    message = _error("name: t\nsources:\n  shards:\n    - {name: a, format: demo, name: b}\n")
    assert "sources.shards.0.name" in message and "m.yaml:4" in message


# ---------------------------------------------------------------------------- 2. non-finite numbers
@pytest.mark.parametrize("section, value", [("probe:\n  optim:\n    lr", ".inf"), ("pretrain:\n  optim:\n    lr", ".nan"),
                                            ("relational:\n  lr", ".inf"), ("oracle:\n  lr", "-.inf")])
def test_non_finite_numbers_are_rejected(section, value):
    message = _error(MINIMAL + f"{section}: {value}\n")
    field = section.replace(":\n    ", ".").replace(":\n  ", ".")
    assert field in message and "finite" in message


def test_non_finite_beta_is_rejected():
    assert "finite" in _error(MINIMAL + "probe:\n  optim:\n    betas: [0.9, .nan]\n")


# -------------------------------------------------------------------------------- 3. vocab_size bound
def test_huge_vocab_size_is_rejected_by_the_schema():
    message = _error(MINIMAL + "tokenizer:\n  vocab_size: 1000000000\n")
    assert "m.yaml:6: tokenizer.vocab_size" in message and "1048576" in message


# ------------------------------------------------------------------------- 4. seq_len vs model window
def test_probe_seq_len_over_model_window():
    message = _error(MINIMAL + "probe:\n  seq_len: 256\n  model: {max_seq_len: 128}\n")
    assert "probe.seq_len (256)" in message and "probe.model.max_seq_len (128)" in message and "m.yaml:6" in message


def test_pretrain_seq_len_over_model_window():
    message = _error(MINIMAL + "pretrain:\n  init: scratch\n  seq_len: 512\n")
    assert "pretrain.seq_len (512)" in message and "pretrain.model.max_seq_len (128)" in message


# ---------------------------------------------------------------------------------- 5. alias bomb
BOMB = "name: t\nsources:\n  shards:\n    - {name: a, format: demo}\nx0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + \
    "".join(f"x{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 9))


def _give_up(_signum, _frame):
    raise TimeoutError("the manifest loader expanded the aliases (it hangs)")


def test_alias_bomb_is_refused_quickly():
    assert len(BOMB.encode()) < 1000
    previous = signal.signal(signal.SIGALRM, _give_up)
    signal.setitimer(signal.ITIMER_REAL, 5.0)  # today's loader would walk 9**9 nodes: fail instead of hanging
    try:
        start = time.perf_counter()
        message = _error(BOMB)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert time.perf_counter() - start < 1.0
    assert "m.yaml:" in message and "alias" in message


def test_recursive_alias_is_refused():
    assert "alias" in _error(MINIMAL + "x: &r [1, *r]\n")


def test_a_few_aliases_still_work():
    text = MINIMAL.replace("shards:", "shards:") + "probe:\n  model: &m {hidden_size: 32, num_heads: 2}\n" \
        "pretrain:\n  model: *m\n"
    loaded = parse_manifest(text, "m.yaml")
    assert loaded.manifest.pretrain.model.hidden_size == 32


# ------------------------------------------------------------------------- 6. not UTF-8, a folder
def test_manifest_not_utf8_names_file_and_position(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_bytes(MINIMAL.encode() + b"release:\n  description: caf\xe9\n")
    with pytest.raises(ManifestError) as err:
        load_manifest(path)
    message = str(err.value)
    assert str(path) in message and "UTF-8" in message and "line 6" in message


def test_manifest_path_that_is_a_folder(tmp_path):
    with pytest.raises(ManifestError) as err:
        load_manifest(tmp_path)
    assert str(tmp_path) in str(err.value) and "folder" in str(err.value)


# ------------------------------------------------------------------------------- 7. empty selections
def test_ratio_that_selects_nothing_names_ratio_pool_and_minimum():
    from gmates_assets.core.validation import ValidationError, check_selection_size

    with pytest.raises(ValidationError) as err:
        check_selection_size(320, 0.001)
    message = str(err.value)
    assert "selection.ratio (0.001)" in message and "320 documents" in message and "at least 0.00157" in message
    check_selection_size(320, 0.0015625)  # round(0.5) = 1 document: allowed


def test_release_writer_refuses_zero_rows(tmp_path):
    import polars as pl

    from gmates_assets.core.release import ReleaseError, write_release

    table = pl.DataFrame({"doc_id": ["a"], "text": ["t"], "source": ["s"], "influence_score": [0.1], "cluster": [0]})
    with pytest.raises(ReleaseError, match="no rows"):
        write_release(tmp_path / "rel", table.clear(), 10, {}, {})
    assert list(tmp_path.iterdir()) == []  # nothing committed, no temp folder left


@pytest.fixture
def edited(full_build, tmp_path):
    return full_build.copy_to(tmp_path / "copy")


def test_empty_selection_fails_before_selecting_and_commits_nothing(edited):
    before = edited.latest_metadata("dataset_release")["dagster/row_count"]
    edited.edit("selection.ratio", 0.001)
    with pytest.raises(Exception, match=r"selection\.ratio \(0\.001\) selects no document of the pool \(320 "):
        edited.sync(select=["dataset_release"])
    assert edited.latest_metadata("dataset_release")["dagster/row_count"] == before
    assert all(edited.latest_metadata("selected_subset", m)["dagster/row_count"] == 160
               for m in ("group_mates", "mates", "random"))


def test_floor_budgets_that_select_nothing_fail_before_selecting(edited):
    edited.edit("selection.ratio", 0.005)  # round(0.005 * 320) = 2, but every cluster's floor(0.005 * n_c) = 0
    edited.edit("selection.budget_rounding", "floor")
    with pytest.raises(Exception, match=r"budget_rounding: floor.*selection\.ratio \(0\.005\)"):
        edited.sync(select=["selected_subset"])
    assert edited.latest_metadata("selected_subset", "random")["dagster/row_count"] == 160


# --------------------------------------------------------------------------- 2. non-finite artifacts
def test_require_finite_names_file_and_field_of_each_format(tmp_path):
    import json

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    import zarr
    from safetensors.torch import save_file

    from gmates_assets.core.finite import NonFiniteError, require_finite

    def fails(folder):
        with pytest.raises(NonFiniteError) as err:
            require_finite(folder, "probe_checkpoint", "probe.optim.lr")
        return str(err.value)

    ok = tmp_path / "ok"
    ok.mkdir()
    save_file({"w": torch.ones(3), "ids": torch.arange(3)}, ok / "model.safetensors")
    pq.write_table(pa.table({"x": [1.0, 2.0], "seq": [[0.5], [1.5, None]]}), ok / "rollouts.parquet")
    (ok / "scores.json").write_text(json.dumps({"core": 0.3, "missing": None}))
    zarr.open_group(str(ok / "scores.zarr"), mode="w").create_array("s", data=np.ones(4, dtype=np.float32))
    require_finite(ok, "probe_checkpoint", "probe.optim.lr")

    cases = {"model.safetensors": lambda d: save_file({"w": torch.tensor([1.0, float("nan")])}, d / "model.safetensors"),
             "rollouts.parquet": lambda d: pq.write_table(pa.table({"seq": [[0.5, float("inf")]]}), d / "rollouts.parquet"),
             "scores.json": lambda d: (d / "scores.json").write_text(json.dumps({"tasks": {"a": float("nan")}})),
             "scores.zarr": lambda d: zarr.open_group(str(d / "scores.zarr"), mode="w").create_array(
                 "h", data=np.array([[1.0, -np.inf]], dtype=np.float32))}
    fields = {"model.safetensors": "[w]", "rollouts.parquet": "[seq]", "scores.json": "[tasks.a]", "scores.zarr": "[h]"}
    for name, write in cases.items():
        folder = tmp_path / name.replace(".", "_")
        folder.mkdir()
        write(folder)
        message = fails(folder)
        assert f"in {name} {fields[name]}" in message and "probe.optim.lr" in message and "probe_checkpoint" in message


def test_diverged_probe_is_not_committed_and_names_the_lr(edited):
    before = edited.latest_metadata("probe_checkpoint")["content_hash"]
    edited.edit("probe.optim.lr", 1.0e30)  # finite, so the manifest accepts it; training diverges to NaN
    with pytest.raises(Exception, match=r"probe_checkpoint: \d+ non-finite value\(s\).*probe\.optim\.lr"):
        edited.sync(select=["probe_checkpoint"])
    assert edited.latest_metadata("probe_checkpoint")["content_hash"] == before


# -------------------------------------------------------- 8. eval files early; failures do not stop the rest
def _bad_gold_task(build) -> None:
    good = {"query": "Q?", "choices": ["a", "b"], "gold": 0}
    (build.root / "extra.jsonl").write_text("\n".join(json.dumps(item) for item in (good, {**good, "gold": 5})) + "\n")
    tasks = yaml.safe_load(build.manifest.read_text())["eval"]["tasks"]
    build.edit("eval.tasks", tasks + [{"name": "extra", "kind": "multiple_choice", "path": "extra.jsonl"}])


def test_bad_eval_file_fails_before_compute_and_does_not_block_the_release(edited):
    from gmates_assets.defs.sync import sync

    release_before = edited.latest_metadata("dataset_release")["content_hash"]
    eval_before = edited.latest_metadata("eval_scores", "random")["content_hash"]
    _bad_gold_task(edited)
    edited.edit("release.description", "a release that does not depend on eval")
    logged: list[str] = []
    with edited.instance() as instance, pytest.raises(Exception) as err:
        sync(edited.defs(), instance, log=logged.append)
    message = str(err.value)
    assert "extra.jsonl:2: field 'gold' = 5 is out of range for 2 choices" in message
    assert "extra.jsonl:2" in logged[0] and logged[1].startswith("wave 1")  # named before any compute
    assert edited.latest_metadata("dataset_release")["content_hash"] != release_before  # built anyway
    assert edited.latest_metadata("eval_scores", "random")["content_hash"] == eval_before  # nothing scored
    assert edited.sync(select=["dataset_release"]).executed == []  # the bad eval file is no concern of it


def test_a_failed_run_does_not_stop_the_other_partitions_of_its_wave(tmp_path):
    from .test_pool_assets import make_build

    build = make_build(tmp_path, a_lines='{"text": "fine"}\n{"text": oops}\n')
    with pytest.raises(Exception, match=r"a\.jsonl, line 2 \(row 1\): malformed JSON line"):
        build.sync(select=["documents"])
    assert build.latest_metadata("documents", "b")["dagster/row_count"] == 8


def test_task_file_validation_is_remembered_only_for_valid_content(tmp_path, monkeypatch):
    from gmates_assets.core.hashing import sha256_file
    from gmates_assets.core.task_files import TaskFormatError, validate_task_file

    monkeypatch.setenv("GMATES_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "t.jsonl"
    path.write_text('{"query": "Q", "choices": ["a"], "gold": 3}\n')
    for _ in range(2):  # a bad file is never remembered as valid
        with pytest.raises(TaskFormatError, match=r"t\.jsonl:1: field 'gold' = 3 is out of range"):
            validate_task_file(path, sha256_file(path), "multiple_choice")
    path.write_text('{"query": "Q", "choices": ["a"], "gold": 0}\n')
    validate_task_file(path, sha256_file(path), "multiple_choice")
    assert len(list((tmp_path / "cache" / "valid-task-files").iterdir())) == 1
