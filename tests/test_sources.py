import hashlib
import json
import os
import shutil

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import pytest  # noqa: E402

from gmates_assets.core.demo_corpus import DemoCorpusParams, generate_demo_shard  # noqa: E402
from gmates_assets.core.hashing import FileHashCache, cached_sha256_file, sha256_file  # noqa: E402
from gmates_assets.core.sources import (  # noqa: E402
    ShardSpec,
    SourceError,
    check_files,
    check_shards_disjoint,
    file_content_hash,
    read_documents_parquet,
    read_shard,
    shard_content,
    write_documents_parquet,
)


def write_lines(path, lines: list[bytes]):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(line + b"\n" for line in lines))


def jl(obj) -> bytes:
    return json.dumps(obj).encode()


def jsonl_spec(tmp_path, *paths, **kw):
    return ShardSpec(name="s", format="jsonl", paths=paths, base_dir=str(tmp_path), **kw)


# ------------------------------------------------------------------------------------------- jsonl


def test_jsonl_ids_order_meta_and_sorted_files(tmp_path):
    write_lines(tmp_path / "data/b.jsonl", [jl({"text": "bee", "lang": "en"})])
    write_lines(tmp_path / "data/a.jsonl", [jl({"text": "one", "n": 1}), jl({"text": "two", "n": 2})])
    docs, stats = read_shard(jsonl_spec(tmp_path, "data/b.jsonl", "data/a.jsonl"))
    assert [d.doc_id for d in docs] == ["data/a.jsonl:0", "data/a.jsonl:1", "data/b.jsonl:0"]
    assert [d.text for d in docs] == ["one", "two", "bee"]
    assert docs[1].meta == {"n": 2} and docs[2].meta == {"lang": "en"}
    assert docs[1].source == "data/a.jsonl" and docs[1].row == 1
    assert stats.as_dict() == {"n_read": 3, "n_kept": 3, "skipped": {}, "truncated": 0}


def test_glob_and_custom_text_field(tmp_path):
    for name in ("x2.jsonl", "x1.jsonl", "y.txt"):
        write_lines(tmp_path / "d" / name, [jl({"body": name})])
    docs, _ = read_shard(jsonl_spec(tmp_path, "d/*.jsonl", text_field="body"))
    assert [d.doc_id for d in docs] == ["d/x1.jsonl:0", "d/x2.jsonl:0"]
    assert docs[0].text == "x1.jsonl" and docs[0].meta == {}
    with pytest.raises(SourceError, match=r"d/\*\.parquet: no files match"):
        read_shard(jsonl_spec(tmp_path, "d/*.parquet"))


def test_ids_are_paths_as_written_whichever_folder_the_manifest_is_in(tmp_path):
    write_lines(tmp_path / "data/a.jsonl", [jl({"text": "t"})])
    write_lines(tmp_path / "data/b.jsonl", [jl({"text": "u"})])
    (tmp_path / "one/deep").mkdir(parents=True)
    (tmp_path / "two").mkdir()
    absolute = [str(tmp_path / "data/a.jsonl"), str(tmp_path / "data") + "/b*.jsonl"]
    ids = {where: [d.doc_id for d in read_shard(jsonl_spec(tmp_path / where, *absolute))[0]]
           for where in ("one/deep", "two")}
    assert ids["one/deep"] == ids["two"] == [f"{tmp_path}/data/a.jsonl:0", f"{tmp_path}/data/b.jsonl:0"]
    hashes = {file_content_hash(jsonl_spec(tmp_path / where, *absolute)) for where in ("one/deep", "two")}
    assert len(hashes) == 1
    relative, _ = read_shard(jsonl_spec(tmp_path / "two", "../data/./a.jsonl", "../data/b*.jsonl"))
    assert [d.doc_id for d in relative] == ["../data/a.jsonl:0", "../data/b.jsonl:0"]


@pytest.mark.parametrize("line, pattern", [
    (b'{"text": "oops"', r"a\.jsonl, line 2 \(row 1\): malformed JSON line"),
    (b"[1, 2]", r"a\.jsonl, line 2 \(row 1\): malformed JSON line: expected a JSON object"),
    (jl({"body": "x"}), r"a\.jsonl, line 2 \(row 1\), field 'text': missing text field"),
    (jl({"text": None}), r"a\.jsonl, line 2 \(row 1\), field 'text': text is null"),
    (b'{"text": "caf\xe9"}', r"a\.jsonl, line 2 \(row 1\): invalid UTF-8"),
    (jl({"text": "  \n\t "}), r"a\.jsonl, line 2 \(row 1\), field 'text': empty \(whitespace-only\) document"),
    (jl({"text": 42}), r"a\.jsonl, line 2 \(row 1\), field 'text': text must be a string, got int"),
])
def test_jsonl_bad_records_name_file_line_field(tmp_path, line, pattern):
    write_lines(tmp_path / "a.jsonl", [jl({"text": "fine"}), line, jl({"text": "after"})])
    with pytest.raises(SourceError, match=pattern) as info:
        read_shard(jsonl_spec(tmp_path, "a.jsonl"))
    assert info.value.file == "a.jsonl" and info.value.row == 1


def test_skip_mode_counts_by_reason_and_keeps_row_ids(tmp_path):
    write_lines(tmp_path / "a.jsonl", [
        jl({"text": "ok0"}), b"{bad json", jl({"other": 1}), b'{"text": "\xff\xfe"}', jl({"text": "   "}),
        jl({"text": None}), jl({"text": "ok6"})])
    docs, stats = read_shard(jsonl_spec(tmp_path, "a.jsonl"), on_bad_record="skip")
    assert [d.doc_id for d in docs] == ["a.jsonl:0", "a.jsonl:6"]
    assert stats.as_dict() == {"n_read": 7, "n_kept": 2, "truncated": 0, "skipped": {
        "empty": 1, "invalid_utf8": 1, "malformed": 1, "missing_field": 1, "null": 1}}


def test_non_string_text_is_an_error_even_when_skipping(tmp_path):
    write_lines(tmp_path / "a.jsonl", [jl({"text": ["a", "list"]})])
    with pytest.raises(SourceError, match=r"line 1 \(row 0\), field 'text': text must be a string, got list"):
        read_shard(jsonl_spec(tmp_path, "a.jsonl"), on_bad_record="skip")


def test_missing_file_is_always_an_error(tmp_path):
    for mode in ("error", "skip"):
        with pytest.raises(SourceError, match=r"nope\.jsonl: file does not exist"):
            read_shard(jsonl_spec(tmp_path, "nope.jsonl"), on_bad_record=mode)


def test_sha256_checked_before_reading(tmp_path):
    write_lines(tmp_path / "a.jsonl", [b"not json at all"])  # check_files must not parse records
    good = sha256_file(tmp_path / "a.jsonl")
    assert check_files(jsonl_spec(tmp_path, "a.jsonl", sha256={"a.jsonl": good})) == ["a.jsonl"]
    bad = jsonl_spec(tmp_path, "a.jsonl", sha256={"a.jsonl": "0" * 64})
    for mode in ("error", "skip"):
        with pytest.raises(SourceError, match=r"a\.jsonl, field 'sha256': sha256 mismatch: expected 0{64}"):
            read_shard(bad, on_bad_record=mode)
    with pytest.raises(SourceError, match=r"other\.jsonl, field 'sha256': sha256 given for a file that is not"):
        check_files(jsonl_spec(tmp_path, "a.jsonl", sha256={"other.jsonl": good}))


def test_file_content_hash_is_path_relative_and_content_sensitive(tmp_path):
    write_lines(tmp_path / "one/d/a.jsonl", [jl({"text": "a"})])
    write_lines(tmp_path / "one/d/b.jsonl", [jl({"text": "b"})])
    shutil.copytree(tmp_path / "one", tmp_path / "two")
    h1 = file_content_hash(ShardSpec("s", "jsonl", ("d/*.jsonl",), base_dir=str(tmp_path / "one")))
    h2 = file_content_hash(ShardSpec("s", "jsonl", ("d/b.jsonl", "d/a.jsonl"), base_dir=str(tmp_path / "two")))
    assert h1 == h2 and len(h1) == 64
    write_lines(tmp_path / "two/d/b.jsonl", [jl({"text": "B"})])
    assert file_content_hash(ShardSpec("s", "jsonl", ("d/*.jsonl",), base_dir=str(tmp_path / "two"))) != h1
    os.rename(tmp_path / "one/d/b.jsonl", tmp_path / "one/d/c.jsonl")  # same bytes, other name
    assert file_content_hash(ShardSpec("s", "jsonl", ("d/*.jsonl",), base_dir=str(tmp_path / "one"))) != h1


# ------------------------------------------------------------------------------------ text, parquet


def test_text_line_and_file_modes(tmp_path):
    (tmp_path / "t.txt").write_bytes(b"first doc\r\nsecond doc\n")
    docs, _ = read_shard(ShardSpec("s", "text", ("t.txt",), base_dir=str(tmp_path)))
    assert [(d.doc_id, d.text) for d in docs] == [("t.txt:0", "first doc"), ("t.txt:1", "second doc")]
    docs, _ = read_shard(ShardSpec("s", "text", ("t.txt",), base_dir=str(tmp_path), text_mode="file"))
    assert [(d.doc_id, d.text) for d in docs] == [("t.txt:0", "first doc\r\nsecond doc\n")]


def test_text_bad_lines(tmp_path):
    (tmp_path / "t.txt").write_bytes(b"ok\n\xc3\x28 broken\n   \nok again\n")
    spec = ShardSpec("s", "text", ("t.txt",), base_dir=str(tmp_path))
    with pytest.raises(SourceError, match=r"t\.txt, line 2 \(row 1\): invalid UTF-8"):
        read_shard(spec)
    docs, stats = read_shard(spec, on_bad_record="skip")
    assert [d.doc_id for d in docs] == ["t.txt:0", "t.txt:3"]
    assert stats.skipped == {"invalid_utf8": 1, "empty": 1}


def test_parquet_rows_text_column_and_meta(tmp_path):
    table = pa.table({"id": [10, 11, 12], "content": ["alpha", None, "gamma"], "score": [0.5, 0.1, 0.9]})
    pq.write_table(table, tmp_path / "p.parquet", row_group_size=2)
    spec = ShardSpec("s", "parquet", ("p.parquet",), base_dir=str(tmp_path), text_field="content")
    with pytest.raises(SourceError, match=r"p\.parquet, line 2 \(row 1\), field 'content': text is null"):
        read_shard(spec)
    docs, stats = read_shard(spec, on_bad_record="skip")
    assert [(d.doc_id, d.text, d.meta) for d in docs] == [
        ("p.parquet:0", "alpha", {"id": 10, "score": 0.5}), ("p.parquet:2", "gamma", {"id": 12, "score": 0.9})]
    assert stats.skipped == {"null": 1}


def test_parquet_column_problems(tmp_path):
    pq.write_table(pa.table({"text": [1, 2]}), tmp_path / "ints.parquet")
    with pytest.raises(SourceError, match=r"ints\.parquet, field 'text': text column must be a string column"):
        read_shard(ShardSpec("s", "parquet", ("ints.parquet",), base_dir=str(tmp_path)), on_bad_record="skip")
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "nocol.parquet")
    with pytest.raises(SourceError, match=r"nocol\.parquet, field 'text': missing text column"):
        read_shard(ShardSpec("s", "parquet", ("nocol.parquet",), base_dir=str(tmp_path)))
    pq.write_table(pa.table({"text": pa.array([b"ok", b"\xff bad", b"  "], pa.binary())}), tmp_path / "bin.parquet")
    spec = ShardSpec("s", "parquet", ("bin.parquet",), base_dir=str(tmp_path))
    with pytest.raises(SourceError, match=r"bin\.parquet, line 2 \(row 1\), field 'text': invalid UTF-8"):
        read_shard(spec)
    docs, stats = read_shard(spec, on_bad_record="skip")
    assert [d.text for d in docs] == ["ok"] and stats.skipped == {"invalid_utf8": 1, "empty": 1}


# ---------------------------------------------------------------------------------------- hub, demo


def test_hf_json_builder_offline(tmp_path):
    write_lines(tmp_path / "hub/part.jsonl", [jl({"text": f"doc {i}", "k": i}) for i in range(5)])
    spec = ShardSpec("s", "hf", base_dir=str(tmp_path), hf_name="json", hf_data_files=("hub/part.jsonl",),
                     limit=3)
    docs, stats = read_shard(spec)
    assert [d.doc_id for d in docs] == ["hf:json/default/train:0", "hf:json/default/train:1",
                                        "hf:json/default/train:2"]
    assert docs[2].text == "doc 2" and docs[2].meta == {"k": 2} and stats.n_read == 3
    streamed, _ = read_shard(ShardSpec("s", "hf", base_dir=str(tmp_path), hf_name="json",
                                       hf_data_files=("hub/part.jsonl",), hf_streaming=True))
    assert [d.text for d in streamed] == [f"doc {i}" for i in range(5)]


def test_hf_saved_dataset_dir_relative_ids_and_errors(tmp_path):
    import datasets

    ds = datasets.Dataset.from_dict({"text": ["a", " ", "c"], "src": ["x", "y", "z"]})
    ds.save_to_disk(str(tmp_path / "saved"))
    spec = ShardSpec("s", "hf", base_dir=str(tmp_path), hf_name="saved")
    with pytest.raises(SourceError, match=r"hf:saved/default/train, line 2 \(row 1\), field 'text': empty"):
        read_shard(spec)
    docs, stats = read_shard(spec, on_bad_record="skip")
    assert [(d.doc_id, d.meta) for d in docs] == [("hf:saved/default/train:0", {"src": "x"}),
                                                   ("hf:saved/default/train:2", {"src": "z"})]
    assert stats.skipped == {"empty": 1}
    with pytest.raises(SourceError, match=r"field 'body': missing text column"):
        read_shard(ShardSpec("s", "hf", base_dir=str(tmp_path), hf_name="saved", text_field="body"))
    with pytest.raises(SourceError, match=r"\./gone: local dataset directory does not exist"):
        check_files(ShardSpec("s", "hf", base_dir=str(tmp_path), hf_name="./gone"))
    assert len(file_content_hash(spec)) == 64


def test_hf_trust_remote_code_is_false_unless_requested(tmp_path, monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(name, config=None, **kwargs):
        calls.append((name, config, kwargs))
        return datasets.Dataset.from_dict({"text": ["t"]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    read_shard(ShardSpec("s", "hf", hf_name="org/data", hf_config="en", hf_split="validation", hf_revision="abc"))
    read_shard(ShardSpec("s", "hf", hf_name="org/data", trust_remote_code=True))
    assert calls[0] == ("org/data", "en", {"split": "validation", "streaming": False, "revision": "abc",
                                          "trust_remote_code": False})  # said, never left to a default
    assert calls[1][2]["trust_remote_code"] is True
    docs, _ = read_shard(ShardSpec("s", "hf", hf_name="org/data", hf_config="en", hf_split="validation"))
    assert docs[0].doc_id == "hf:org/data/en/validation:0"


def test_demo_spec_and_documents_parquet_round_trip(tmp_path):
    params = DemoCorpusParams.tests_profile()
    docs, stats = read_shard(ShardSpec("s", "demo", demo_params=params, demo_shard_index=1))
    assert [d.doc_id for d in docs] == [d.doc_id for d in generate_demo_shard(params, 1)]
    assert docs[0].doc_id == "demo/shard-001.jsonl:0" and stats.n_kept == len(docs)
    write_documents_parquet(docs, tmp_path / "documents.parquet")
    assert read_documents_parquet(tmp_path / "documents.parquet") == docs
    first = (tmp_path / "documents.parquet").read_bytes()
    write_documents_parquet(docs, tmp_path / "documents.parquet")
    assert (tmp_path / "documents.parquet").read_bytes() == first


def test_spec_validation_messages():
    with pytest.raises(SourceError, match="field 'format': unknown format 'csv'"):
        ShardSpec("s", "csv", ("a.csv",))
    with pytest.raises(SourceError, match="field 'paths': shard 's' \\(jsonl\\) lists no paths"):
        ShardSpec("s", "jsonl")
    with pytest.raises(SourceError, match="needs hf_name"):
        ShardSpec("s", "hf")


# ------------------------------------------------------------------------- limits, caps, bad files, hashes


def test_limit_reads_the_first_records_of_a_local_shard_in_every_format(tmp_path):
    write_lines(tmp_path / "a.jsonl", [jl({"text": f"a{i}"}) for i in range(3)])
    write_lines(tmp_path / "b.jsonl", [jl({"text": f"b{i}"}) for i in range(3)])
    docs, stats = read_shard(jsonl_spec(tmp_path, "*.jsonl", limit=4))
    assert [d.doc_id for d in docs] == ["a.jsonl:0", "a.jsonl:1", "a.jsonl:2", "b.jsonl:0"] and stats.n_read == 4
    (tmp_path / "t.txt").write_bytes(b"one\ntwo\nthree\n")
    docs, _ = read_shard(ShardSpec("s", "text", ("t.txt",), base_dir=str(tmp_path), limit=2))
    assert [d.text for d in docs] == ["one", "two"]
    pq.write_table(pa.table({"text": [f"p{i}" for i in range(9000)]}), tmp_path / "p.parquet", row_group_size=4000)
    docs, _ = read_shard(ShardSpec("s", "parquet", ("p.parquet",), base_dir=str(tmp_path), limit=5000))
    assert len(docs) == 5000 and docs[-1].doc_id == "p.parquet:4999"


def test_documents_over_max_chars_are_truncated_or_rejected(tmp_path):
    write_lines(tmp_path / "a.jsonl", [jl({"text": "short"}), jl({"text": "x" * 50})])
    docs, stats = read_shard(jsonl_spec(tmp_path, "a.jsonl", max_chars=10))
    assert [d.text for d in docs] == ["short", "x" * 10] and stats.truncated == 1
    reject = jsonl_spec(tmp_path, "a.jsonl", max_chars=10, long_documents="reject")
    with pytest.raises(SourceError, match=r"a\.jsonl, line 2 \(row 1\), field 'text': document longer than the "
                                          r"shard's max_chars: 50 characters, max_chars is 10"):
        read_shard(reject)
    docs, stats = read_shard(reject, on_bad_record="skip")
    assert [d.text for d in docs] == ["short"] and stats.skipped == {"too_long": 1}


@pytest.mark.parametrize("make, pattern", [
    (lambda d: (d / "a.jsonl").write_bytes(b""), r"a\.jsonl: file is empty \(0 bytes\)"),
    (lambda d: (d / "a.jsonl").mkdir(), r"a\.jsonl, field 'paths': is a directory, not a file"),
])
def test_bad_files_fail_before_reading(tmp_path, make, pattern):
    make(tmp_path)
    with pytest.raises(SourceError, match=pattern):
        check_files(jsonl_spec(tmp_path, "a.jsonl"))


def test_a_file_that_is_not_parquet_is_named(tmp_path):
    write_lines(tmp_path / "fake.parquet", [jl({"text": "I am jsonl"})])
    with pytest.raises(SourceError, match=r"fake\.parquet: not a parquet file"):
        check_files(ShardSpec("s", "parquet", ("fake.parquet",), base_dir=str(tmp_path)))


def test_a_shard_without_documents_is_an_error(tmp_path):
    write_lines(tmp_path / "a.jsonl", [jl({"text": " "}), b"{oops"])
    with pytest.raises(SourceError, match=r"shard 's' has no documents: all 2 records were skipped "
                                          r"\(empty 1, malformed 1\)"):
        read_shard(jsonl_spec(tmp_path, "a.jsonl"), on_bad_record="skip")
    (tmp_path / "blank.txt").write_bytes(b"\n")
    with pytest.raises(SourceError, match="shard 's' has no documents"):
        read_shard(ShardSpec("s", "text", ("blank.txt",), base_dir=str(tmp_path)), on_bad_record="skip")


def test_shards_reading_the_same_source_are_rejected(tmp_path):
    write_lines(tmp_path / "d/a.jsonl", [jl({"text": "t"})])
    write_lines(tmp_path / "d/b.jsonl", [jl({"text": "u"})])
    ok = [ShardSpec("x", "jsonl", ("d/a.jsonl",), base_dir=str(tmp_path)),
          ShardSpec("y", "jsonl", ("d/b.jsonl",), base_dir=str(tmp_path))]
    check_shards_disjoint(ok)
    overlap = ok + [ShardSpec("z", "jsonl", ("d/*.jsonl",), base_dir=str(tmp_path))]
    with pytest.raises(SourceError, match=r"d/a\.jsonl, field 'sources\.shards\[2\]': shards 'x' and 'z' both"):
        check_shards_disjoint(overlap)
    params = DemoCorpusParams.tests_profile()
    with pytest.raises(SourceError, match=r"demo/shard-000\.jsonl.*shards 'p' and 'q'"):
        check_shards_disjoint([ShardSpec("p", "demo", demo_params=params), ShardSpec("q", "demo", demo_params=params)])


def test_a_file_rewritten_between_hashing_and_reading_is_never_stored_under_the_old_hash(tmp_path):
    write_lines(tmp_path / "a.jsonl", [jl({"text": "old text"})])
    spec = jsonl_spec(tmp_path, "a.jsonl")
    keyed_on = shard_content(spec)
    docs, stats = read_shard(spec, expected=keyed_on)
    assert stats.file_sha256 == keyed_on.files and docs[0].text == "old text"
    write_lines(tmp_path / "a.jsonl", [jl({"text": "new text"})])  # after the hash, before the read
    with pytest.raises(SourceError, match=r"a\.jsonl: changed while the shard was being read"):
        read_shard(spec, expected=keyed_on)
    assert shard_content(spec).files == read_shard(spec)[1].file_sha256  # the next run keys on the new bytes


def test_parquet_bytes_read_are_the_bytes_hashed(tmp_path):
    pq.write_table(pa.table({"text": ["a", "b"]}), tmp_path / "p.parquet")
    spec = ShardSpec("s", "parquet", ("p.parquet",), base_dir=str(tmp_path))
    keyed_on = shard_content(spec)
    assert read_shard(spec, expected=keyed_on)[1].file_sha256 == keyed_on.files
    pq.write_table(pa.table({"text": ["a", "c"]}), tmp_path / "p.parquet")
    with pytest.raises(SourceError, match="changed while the shard was being read"):
        read_shard(spec, expected=keyed_on)


def test_source_hashes_are_cached_by_file_metadata(tmp_path, monkeypatch):
    monkeypatch.setenv("GMATES_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "a.jsonl"
    write_lines(path, [jl({"text": "t"})])
    cached_sha256_file(path)
    assert FileHashCache().lookup(os.path.abspath(path), os.stat(path)) is None  # just written: too fresh to trust
    cache = FileHashCache(racy_seconds=0)
    first = cached_sha256_file(path, cache)
    assert cache.lookup(os.path.abspath(path), os.stat(path)) == first == sha256_file(path)
    hashed = []
    monkeypatch.setattr(hashlib, "sha256", lambda *a: hashed.append(1) or _real_sha256(*a))
    assert cached_sha256_file(path, cache) == first and not hashed  # unchanged: no re-hash
    write_lines(path, [jl({"text": "T"})])  # same size, new mtime/ctime
    assert cached_sha256_file(path, cache) != first and hashed


_real_sha256 = hashlib.sha256
