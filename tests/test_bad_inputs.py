"""The bad-input matrix: each case, the exact message a person gets, and docs/bad_inputs.md kept equal to it.

Every case runs the same core check the build runs (the CLI prints the same text after `gmates sync: `).
`python -m tests.test_bad_inputs` prints the table for docs/bad_inputs.md.
"""
from __future__ import annotations

import errno
import json
import os
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gmates_assets.core import lm, release
from gmates_assets.core.demo_corpus import DemoCorpusParams
from gmates_assets.core.finite import require_finite
from gmates_assets.core.manifest import load_manifest, parse_manifest
from gmates_assets.core.sources import (
    ReadStats,
    ShardSpec,
    check_files,
    check_shards_disjoint,
    read_shard,
    shard_content,
)
from gmates_assets.core.store import ArtifactStore
from gmates_assets.core.task_files import read_task_items
from gmates_assets.core.validation import check_pool_size, check_selection_size, items_that_fit, loading_model

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "bad_inputs.md"
MINIMAL = "name: m\nsources:\n  shards:\n    - {name: s, format: demo}\n"


def jsonl(d: Path, name: str, *lines: str) -> ShardSpec:
    (d / name).write_text("".join(line + "\n" for line in lines))
    return ShardSpec("s", "jsonl", (name,), base_dir=str(d))


class WordTokenizer:
    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [len(word) for word in text.split()]}


def run(case) -> str:
    try:
        return case() or ""
    except Exception as err:  # the message is what the matrix records
        return str(err)


def _empty_file(d):
    (d / "a.jsonl").write_bytes(b"")
    check_files(ShardSpec("s", "jsonl", ("a.jsonl",), base_dir=str(d)))


def _directory(d):
    (d / "a.jsonl").mkdir()
    check_files(ShardSpec("s", "jsonl", ("a.jsonl",), base_dir=str(d)))


def _not_parquet(d):
    (d / "p.parquet").write_text('{"text": "jsonl really"}\n')
    check_files(ShardSpec("s", "parquet", ("p.parquet",), base_dir=str(d)))


def _text_column_not_string(d):
    pq.write_table(pa.table({"text": [1, 2]}), d / "p.parquet")
    read_shard(ShardSpec("s", "parquet", ("p.parquet",), base_dir=str(d)))


def _shard_without_documents(d):
    (d / "t.txt").write_text("\n \n")
    read_shard(ShardSpec("s", "text", ("t.txt",), base_dir=str(d)), on_bad_record="skip")


def _all_records_skipped(d):
    read_shard(jsonl(d, "a.jsonl", '{"text": " "}', "{oops"), on_bad_record="skip")


def _same_file_in_two_shards(d):
    (d / "a.jsonl").write_text('{"text": "t"}\n')
    check_shards_disjoint([ShardSpec("x", "jsonl", ("a.jsonl",), base_dir=str(d)),
                           ShardSpec("y", "jsonl", ("./a.jsonl",), base_dir=str(d))])


def _same_demo_shard_twice(d):
    params = DemoCorpusParams.tests_profile()
    check_shards_disjoint([ShardSpec("x", "demo", demo_params=params), ShardSpec("y", "demo", demo_params=params)])


def _null_text(d):
    read_shard(jsonl(d, "a.jsonl", '{"text": "ok"}', '{"text": null}'))


def _missing_text_field(d):
    read_shard(jsonl(d, "a.jsonl", '{"text": "ok"}', '{"body": "x"}'))


def _malformed_json(d):
    read_shard(jsonl(d, "a.jsonl", '{"text": "ok"}', '{"text": oops}'))


def _document_over_cap_truncated(d):
    jsonl(d, "a.jsonl", json.dumps({"text": "x" * 50}))
    docs, stats = read_shard(ShardSpec("s", "jsonl", ("a.jsonl",), base_dir=str(d), max_chars=10))
    return f"(kept, {len(docs[0].text)} characters) status note: {stats.notes()[0]}"


def _document_over_cap_rejected(d):
    jsonl(d, "a.jsonl", '{"text": "ok"}', json.dumps({"text": "x" * 50}))
    read_shard(ShardSpec("s", "jsonl", ("a.jsonl",), base_dir=str(d), max_chars=10, long_documents="reject"))


def _skip_counts(d):
    docs, stats = read_shard(jsonl(d, "a.jsonl", '{"text": "ok"}', "{oops", '{"text": null}'), on_bad_record="skip")
    return "(kept 1) status note: " + ReadStats.from_dict(stats.as_dict()).notes()[0]


def _sha256_mismatch(d):
    (d / "a.jsonl").write_text('{"text": "t"}\n')
    check_files(ShardSpec("s", "jsonl", ("a.jsonl",), base_dir=str(d), sha256={"a.jsonl": "0" * 64}))


def _file_rewritten_while_read(d):
    spec = jsonl(d, "a.jsonl", '{"text": "old"}')
    keyed_on = shard_content(spec)
    jsonl(d, "a.jsonl", '{"text": "new"}')
    read_shard(spec, expected=keyed_on)


def _heads_do_not_divide(d):
    parse_manifest(MINIMAL + "probe:\n  model: {hidden_size: 30, num_heads: 4}\n", "m.yaml")


def _clustering_k_over_pool(d):
    check_pool_size(18, clustering_k=500, oracle_pool_size=10)


def _reference_prompt_too_long(d):
    ids, labels = lm.tokenize_reference(WordTokenizer(), [{"prompt": "a b c d e f", "answer": "g h"}], 4,
                                        setting="probe.seq_len")[0]
    return f"(kept: prompt cut from the left to {int((labels == lm.IGNORE_INDEX).sum())} token(s), answer whole)"


def _reference_answer_too_long(d):
    lm.tokenize_reference(WordTokenizer(), [{"prompt": "Q", "answer": "a b c d e"}], 4, setting="probe.seq_len")


def _eval_continuation_too_long(d):
    (d / "task.jsonl").write_text('{"context": "x", "continuation": "y"}\n\n{"context": "x", "continuation": "y"}\n')
    items_that_fit("arc", "task.jsonl", [2, 9], max_length=4)


def _eval_continuation_skipped(d):
    (d / "task.jsonl").write_text('{"context": "x", "continuation": "y"}\n\n{"context": "x", "continuation": "y"}\n')
    keep, skipped = items_that_fit("arc", "task.jsonl", [2, 9], max_length=4, on_too_long="skip")
    return f"(kept {len(keep)}, skipped lines {skipped}; scores.json: skipped_too_long = {len(skipped)})"


def _model_missing_offline(d):
    with loading_model("encoder.model", "org/missing-model"):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files, and couldn't find them "
                      "in the cached files.")


def _disk_full(d):
    def fill(work):
        raise OSError(errno.ENOSPC, "No space left on device", str(work / "chunk-00003.parquet"))

    ArtifactStore(d / "store").get_or_build("oracle_random", "k", fill)


def _planted_bookkeeping_in_release(d):
    import polars as pl

    table = pl.DataFrame({"doc_id": ["a"], "text": ["t"], "source": ["s"], "influence_score": [0.1], "cluster": [0]})
    summary = release.write_release(d / "rel", table, 10, {}, {})
    (summary.path / "_artifact.json").write_text("{}")
    return "; ".join(release.verify_release(summary.path))


# -- trust (issue 19): manifest loading, non-finite and empty artifacts, eval files before compute
def _duplicate_key(d):
    parse_manifest(MINIMAL + "selection:\n  ratio: 0.5\nselection:\n  ratio: 0.2\n", "m.yaml")


def _non_finite_lr(d):
    parse_manifest(MINIMAL + "probe:\n  optim: {lr: .inf}\n", "m.yaml")


def _huge_vocab(d):
    parse_manifest(MINIMAL + "tokenizer: {vocab_size: 1000000000}\n", "m.yaml")


def _seq_len_over_window(d):
    parse_manifest(MINIMAL + "probe:\n  seq_len: 256\n  model: {max_seq_len: 128}\n", "m.yaml")


def _alias_bomb(d):
    levels = "".join(f"x{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 9))
    parse_manifest(MINIMAL + "x0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + levels, "m.yaml")


def _manifest_not_utf8(d):
    (d / "m.yaml").write_bytes(MINIMAL.encode() + b"release: {description: caf\xe9}\n")
    load_manifest("m.yaml")


def _manifest_is_a_folder(d):
    (d / "manifests").mkdir()
    load_manifest("manifests")


def _ratio_selects_nothing(d):
    check_selection_size(320, 0.001)


def _empty_release(d):
    import polars as pl

    table = pl.DataFrame({"doc_id": ["a"], "text": ["t"], "source": ["s"], "influence_score": [0.1], "cluster": [0]})
    release.write_release(d / "rel", table.clear(), 10, {}, {})


def _nan_weights(d):
    import torch
    from safetensors.torch import save_file

    save_file({"lm_head.weight": torch.tensor([1.0, float("nan")])}, d / "model.safetensors")
    require_finite(d, "probe_checkpoint", "probe.optim.lr")


def _gold_out_of_range(d):
    (d / "task.jsonl").write_text('{"query": "Q", "choices": ["a", "b"], "gold": 1}\n'
                                  '{"query": "Q", "choices": ["a", "b"], "gold": 2}\n')
    read_task_items("task.jsonl", "multiple_choice")


# ------------------------------------------------------------------ trust-sources (issue 19)
def _same_file_two_spellings(d):
    (d / "a.jsonl").write_text('{"text": "t"}\n')
    check_shards_disjoint([ShardSpec("x", "jsonl", ("a.jsonl",), base_dir=str(d)),
                           ShardSpec("y", "jsonl", (str(d / "a.jsonl"),), base_dir=str(d))])


def _same_file_twice_in_one_shard(d):
    (d / "a.jsonl").write_text('{"text": "t"}\n')
    (d / "b.jsonl").symlink_to(d / "a.jsonl")
    check_files(ShardSpec("s", "jsonl", ("*.jsonl",), base_dir=str(d)))


def _lone_surrogate_in_metadata(d):
    read_shard(jsonl(d, "a.jsonl", '{"text": "ok"}', '{"text": "fine", "title": "\\ud800"}'))


def _custom_code_tokenizer(d):
    from gmates_assets.core.tokenize import load_lm_tokenizer

    (d / "tok").mkdir()
    (d / "tok" / "custom.py").write_text("raise SystemExit('custom code ran')\n")
    (d / "tok" / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "CustomTokenizer", "auto_map": {"AutoTokenizer": ["custom.CustomTokenizer", None]}}))
    load_lm_tokenizer("./tok")


# ---- trust-store: inputs checked on read, unreadable records, releases that leave their folder
def _stored(d, data: bytes = b"0123456789"):
    store = ArtifactStore(d / "store")
    with store.build("embeddings", "k1", "shard-000") as work:
        (work / "embeddings.zarr").mkdir()
        (work / "embeddings.zarr" / "c0").write_bytes(data)
    return store, store.get("embeddings", "k1")


def _input_changed_after_build(d):
    store, art = _stored(d)
    art.file("embeddings.zarr/c0").write_bytes(b"0123456789"[::-1])
    store.verify_on_read(art)


def _unreadable_record(d):
    store, art = _stored(d)
    (art.path / "_artifact.json").write_text('{"content_hash": ')
    store.get("embeddings", "k1")


def _small_release(d):
    import polars as pl

    table = pl.DataFrame({"doc_id": ["a"], "text": ["t"], "source": ["s"], "influence_score": [0.1], "cluster": [0]})
    return release.write_release(d / "rel", table, 10, {}, {})


def _release_file_linked_outside(d):
    summary = _small_release(d)
    shard = summary.path / next(name for name in summary.files if name.startswith("data/"))
    shard.rename(d / "outside.parquet")
    shard.symlink_to(d / "outside.parquet")
    return "; ".join(release.verify_release(summary.path))


def _release_manifest_nested_deep(d):
    summary = _small_release(d)
    (summary.path / release.MANIFEST_NAME).write_text("[" * 100_000 + "]" * 100_000)
    return "; ".join(release.verify_release(summary.path))


CASES = {
    "empty file": _empty_file,
    "directory given as a file": _directory,
    "`.parquet` file that is not parquet": _not_parquet,
    "parquet text column of another type": _text_column_not_string,
    "text shard of blank lines": _shard_without_documents,
    "shard whose records are all skipped": _all_records_skipped,
    "same file in two shards (duplicate ids)": _same_file_in_two_shards,
    "same demo shard twice": _same_demo_shard_twice,
    '`{"text": null}`': _null_text,
    "text field missing": _missing_text_field,
    "malformed JSON line": _malformed_json,
    "document over `max_chars` (default)": _document_over_cap_truncated,
    "document over `max_chars`, `long_documents: reject`": _document_over_cap_rejected,
    "`on_bad_record: skip`": _skip_counts,
    "sha256 pin mismatch": _sha256_mismatch,
    "file rewritten between hashing and reading": _file_rewritten_while_read,
    "`hidden_size` not divisible by `num_heads`": _heads_do_not_divide,
    "`clustering.k` larger than the pool": _clustering_k_over_pool,
    "reference prompt+answer over `probe.seq_len` (default)": _reference_prompt_too_long,
    "reference answer alone over `probe.seq_len`": _reference_answer_too_long,
    "eval continuation that cannot fit": _eval_continuation_too_long,
    "eval continuation that cannot fit, `too_long: skip`": _eval_continuation_skipped,
    "hub model missing offline": _model_missing_offline,
    "disk full during a step": _disk_full,
    "planted `_artifact.json` in a release": _planted_bookkeeping_in_release,
    "duplicate key in the manifest": _duplicate_key,
    "non-finite number in the manifest": _non_finite_lr,
    "`tokenizer.vocab_size` over 2^20": _huge_vocab,
    "`probe.seq_len` over `probe.model.max_seq_len`": _seq_len_over_window,
    "YAML alias bomb (~700 bytes)": _alias_bomb,
    "manifest that is not UTF-8": _manifest_not_utf8,
    "manifest path that is a folder": _manifest_is_a_folder,
    "`selection.ratio` that selects nothing": _ratio_selects_nothing,
    "empty release table": _empty_release,
    "NaN weights in a built artifact": _nan_weights,
    "eval `gold` out of range": _gold_out_of_range,
    # trust-sources (issue 19): one file under two spellings, lone surrogates, custom model code
    "same file in two shards, relative and absolute path": _same_file_two_spellings,
    "same file twice in one shard (a symlink)": _same_file_twice_in_one_shard,
    'lone surrogate escape (`"\\ud800"`) in a metadata field': _lone_surrogate_in_metadata,
    "tokenizer folder with custom code (`auto_map`)": _custom_code_tokenizer,
    "input artifact changed after it was built (read by a step)": _input_changed_after_build,
    "unreadable `_artifact.json` in the store": _unreadable_record,
    "release data file linked outside its folder": _release_file_linked_outside,
    "release `manifest.json` nested 100,000 levels deep": _release_manifest_nested_deep,
}


def matrix(workdir: Path) -> list[tuple[str, str]]:
    rows = []
    for index, (case, trigger) in enumerate(CASES.items()):
        d = workdir / f"case{index}"
        d.mkdir(parents=True)
        cwd = os.getcwd()
        os.chdir(d)  # relative names in messages, as a user running from the manifest's folder sees them
        try:
            message = run(lambda: trigger(d))
        finally:
            os.chdir(cwd)
        rows.append((case, message.replace(str(d), "<dir>").replace("\n", " ")))
    return rows


def table(rows: list[tuple[str, str]]) -> str:
    escape = lambda text: text.replace("|", "\\|")  # noqa: E731
    return "\n".join(["| case | message |", "|---|---|"] + [f"| {escape(c)} | {escape(m)} |" for c, m in rows])


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    return matrix(tmp_path_factory.mktemp("bad-inputs"))


@pytest.mark.parametrize("case", list(CASES))
def test_each_case_says_what_is_wrong(rows, case):
    message = dict(rows)[case]
    assert message, f"{case}: no message"
    assert "Traceback" not in message and "\n" not in message


def test_docs_table_is_the_matrix(rows):
    assert table(rows) in DOC.read_text(), "regenerate with: python -m tests.test_bad_inputs"


if __name__ == "__main__":
    import tempfile

    sys.stdout.write(table(matrix(Path(tempfile.mkdtemp()))) + "\n")
