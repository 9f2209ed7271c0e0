"""Release writer: deterministic bytes and content hash, volatile fields outside the hash, verify, loaders."""
from __future__ import annotations

import json
import os
from pathlib import Path

import polars as pl
import pytest
import yaml

from gmates_assets.core.hashing import sha256_file
from gmates_assets.core.release import (
    MANIFEST_NAME,
    ReleaseError,
    content_hash,
    export_release,
    main_verify,
    read_manifest,
    selected_ids_sha256,
    verify_release,
    write_release,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

LINEAGE = {
    "build_manifest": {"fingerprint": "abc123", "text": "selection:\n  ratio: 0.5\n"},
    "assets": {"selected_subset": {"group_mates": {"code_version": "v1-aa", "data_version": "d1"}},
               "documents": {"0": {"code_version": "v1-bb", "data_version": "d2"},
                             "1": {"code_version": "v1-bb", "data_version": "d3"}},
               "relational_model": {"code_version": "v2-cc", "data_version": "d4"}},
    "seeds": {"oracle": [0, 1, 2, 3], "kmeans": 1234},
}
CARD = {"pretty_name": "demo subset", "description": "Demo selection.", "license": "apache-2.0", "language": ["en"]}


def make_table(n: int = 23) -> pl.DataFrame:
    # rows deliberately out of doc_id order; ids sort as strings ("doc-10" < "doc-2")
    ids = [f"doc-{(i * 7) % n}" for i in range(n)]
    return pl.DataFrame({
        "doc_id": ids,
        "text": [f"text of {d} — ünïcode" for d in ids],
        "source": ["web" if i % 3 else "books" for i in range(n)],
        "influence_score": [(-1) ** i * i / 8 for i in range(n)],
        "cluster": [i % 4 - 1 for i in range(n)],
    })


def release_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def release(tmp_path):
    summary = write_release(tmp_path / "rel", make_table(), rows_per_shard=10, lineage=LINEAGE, card=CARD)
    return summary


def test_layout_counts_and_manifest(release):
    root = release.path
    names = sorted(release_files(root))
    assert names == ["README.md", "data/train-00000-of-00003.parquet", "data/train-00001-of-00003.parquet",
                     "data/train-00002-of-00003.parquet", "manifest.json"]
    manifest = read_manifest(root)
    content = manifest["content"]
    assert manifest["content_hash"] == content_hash(content) == release.content_hash
    assert content["files"] == {n: sha256_file(root / n) for n in names if n != MANIFEST_NAME}
    assert content["dataset"]["rows"] == 23 and [s["rows"] for s in content["dataset"]["shards"]] == [10, 10, 3]
    assert content["dataset"]["rows_per_source"] == {"books": 8, "web": 15}
    assert content["dataset"]["clusters"] == 3  # cluster -1 means "none"
    assert content["dataset"]["selected_ids_sha256"] == selected_ids_sha256(make_table()["doc_id"].to_list())
    assert content["lineage"] == LINEAGE and content["packages"]["polars"] == pl.__version__
    assert {"created_at", "hostname"} <= set(manifest["volatile"])
    assert not list(root.parent.glob(".rel.tmp-*"))  # the temp directory was renamed into place


def test_parquet_rows_are_sorted_by_doc_id_and_complete(release):
    frame = pl.read_parquet(release.path / "data" / "*.parquet")
    expected = make_table().sort("doc_id")
    assert frame.columns == ["doc_id", "text", "source", "influence_score", "cluster"]
    assert frame.equals(expected)
    given = write_release(release.path.parent / "given", make_table(), 10, LINEAGE, CARD, order="given")
    assert pl.read_parquet(given.path / "data" / "*.parquet").equals(make_table())
    assert given.selected_ids_sha256 == release.selected_ids_sha256  # the id hash ignores order


def test_two_writes_are_byte_identical_and_volatile_stays_outside_the_hash(tmp_path):
    shuffled = make_table().sample(fraction=1.0, shuffle=True, seed=5)
    a = write_release(tmp_path / "a", make_table(), 10, {**LINEAGE, "volatile": {"run_id": "run-1"}}, CARD)
    b = write_release(tmp_path / "b", shuffled, 10, LINEAGE, CARD, volatile={"run_id": "run-2", "created_at": "x"})
    assert a.content_hash == b.content_hash
    files_a, files_b = release_files(a.path), release_files(b.path)
    assert files_a.keys() == files_b.keys()
    assert all(files_a[n] == files_b[n] for n in files_a if n != MANIFEST_NAME)
    va, vb = read_manifest(a.path)["volatile"], read_manifest(b.path)["volatile"]
    assert (va["run_id"], vb["run_id"]) == ("run-1", "run-2") and vb["created_at"] == "x"
    assert read_manifest(a.path)["content"] == read_manifest(b.path)["content"]
    changed = write_release(tmp_path / "c", make_table(), 10, {**LINEAGE, "seeds": {"kmeans": 1}}, CARD)
    assert changed.content_hash != a.content_hash


def test_verify_passes_then_names_the_changed_missing_and_extra_files(release, capsys):
    root = release.path
    assert verify_release(root) == []
    assert main_verify([str(root)]) == 0 and "OK" in capsys.readouterr().out

    shard = root / "data" / "train-00001-of-00003.parquet"
    original = shard.read_bytes()
    flipped = bytearray(original)
    flipped[len(flipped) // 2] ^= 0x01
    shard.write_bytes(bytes(flipped))
    problems = verify_release(root)
    assert len(problems) == 1 and problems[0].startswith("changed file: data/train-00001-of-00003.parquet")
    assert main_verify([str(root)]) == 1
    assert "changed file: data/train-00001-of-00003.parquet" in capsys.readouterr().err
    shard.write_bytes(original)

    (root / "README.md").unlink()
    assert verify_release(root) == ["missing file: README.md"]
    (root / "data" / "stray.parquet").write_bytes(b"x")
    assert verify_release(root) == ["missing file: README.md", "extra file: data/stray.parquet"]


@pytest.mark.parametrize("planted", ["_artifact.json", "_progress.json", "data/_progress.json",
                                     "data/manifest.json"])
def test_verify_does_not_skip_planted_bookkeeping_names(release, planted):
    (release.path / planted).write_text("{}")
    assert verify_release(release.path) == [f"extra file: {planted}"]


def test_verify_detects_an_edited_manifest(release):
    path = release.path / MANIFEST_NAME
    manifest = json.loads(path.read_text())
    manifest["content"]["dataset"]["rows"] = 24
    path.write_text(json.dumps(manifest))
    problems = verify_release(release.path)
    assert len(problems) == 1 and "content_hash" in problems[0] and "manifest.json" in problems[0]
    path.unlink()
    assert verify_release(release.path) == ["missing file: manifest.json"]


def test_card_front_matter_points_datasets_at_the_shards(release):
    text = (release.path / "README.md").read_text()
    _, front, body = text.split("---\n", 2)
    meta = yaml.safe_load(front)
    assert meta["configs"] == [{"config_name": "default",
                                "data_files": [{"split": "train", "path": "data/*.parquet"}]}]
    assert meta["pretty_name"] == "demo subset" and meta["license"] == "apache-2.0"
    assert meta["size_categories"] == ["n<1K"]
    for needle in ("Demo selection.", "abc123", "| documents | 1 | `v1-bb` | `d3` |",
                   "| relational_model | - | `v2-cc` | `d4` |", release.selected_ids_sha256,
                   "gmates release verify", "rows: 23 in 3 parquet shard(s)"):
        assert needle in body


def test_release_loads_with_datasets_offline(release, tmp_path):
    import datasets

    ds = datasets.load_dataset("parquet", data_dir=str(release.path / "data"), split="train",
                               cache_dir=str(tmp_path / "hf_cache"))
    assert ds.num_rows == 23
    assert ds.column_names == ["doc_id", "text", "source", "influence_score", "cluster"]
    assert ds[0]["doc_id"] == "doc-0" and ds[0]["text"] == "text of doc-0 — ünïcode"
    from_card = datasets.load_dataset(str(release.path), split="train", cache_dir=str(tmp_path / "hf_cache2"))
    assert from_card.num_rows == 23  # the README's configs/data_files are understood


def test_bad_tables_and_arguments_are_rejected(tmp_path):
    with pytest.raises(ReleaseError, match=r"missing column\(s\) \['cluster'\]"):
        write_release(tmp_path / "x", make_table().drop("cluster"), 10, LINEAGE, CARD)
    dup = pl.concat([make_table(3), make_table(3)])
    with pytest.raises(ReleaseError, match="'doc_id' has duplicates"):
        write_release(tmp_path / "x", dup, 10, LINEAGE, CARD)
    nulls = make_table(3).with_columns(pl.lit(None, dtype=pl.String).alias("text"))
    with pytest.raises(ReleaseError, match="'text' has 3 null"):
        write_release(tmp_path / "x", nulls, 10, LINEAGE, CARD)
    with pytest.raises(ReleaseError, match="rows_per_shard"):
        write_release(tmp_path / "x", make_table(3), 0, LINEAGE, CARD)
    with pytest.raises(ReleaseError, match="lineage must be JSON-like"):
        write_release(tmp_path / "x", make_table(3), 10, {"path": Path("/a")}, CARD)
    assert not (tmp_path / "x").exists()
    write_release(tmp_path / "x", make_table(3), 10, LINEAGE, CARD)
    with pytest.raises(FileExistsError):
        write_release(tmp_path / "x", make_table(4), 10, LINEAGE, CARD)
    replaced = write_release(tmp_path / "x", make_table(4), 10, LINEAGE, CARD, overwrite=True)
    assert replaced.n_rows == 4 and verify_release(replaced.path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x"]  # no temp or old directories left behind


def test_empty_selection_and_extra_columns(tmp_path):
    with pytest.raises(ReleaseError, match="no rows"):  # never committed (issue 19)
        write_release(tmp_path / "e", make_table().clear(), 10, LINEAGE, CARD)
    assert not (tmp_path / "e").exists()
    extra = write_release(tmp_path / "r", make_table(5).with_columns(pl.int_range(5).alias("rank")), 2, LINEAGE,
                          CARD, order="given")
    frame = pl.read_parquet(extra.path / "data" / "*.parquet")
    assert frame.columns[-1] == "rank" and frame["rank"].to_list() == [0, 1, 2, 3, 4] and extra.n_shards == 3


def test_export_verifies_before_the_copy_appears_and_leaves_nothing_on_failure(release, tmp_path):
    out = export_release(release.path, tmp_path / "out")
    assert verify_release(out) == [] and release_files(out) == release_files(release.path)
    with pytest.raises(ReleaseError, match="not an empty folder"):
        export_release(release.path, out)
    shard = release.path / "data" / "train-00000-of-00003.parquet"
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    shard.write_bytes(bytes(raw))
    (tmp_path / "empty").mkdir()
    for target in (tmp_path / "new", tmp_path / "empty"):
        with pytest.raises(ReleaseError, match=r"changed file: data/train-00000-of-00003\.parquet"):
            export_release(release.path, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "out", "rel"]  # no partial copy, no temp folder
    assert not any((tmp_path / "empty").iterdir())


@pytest.mark.parametrize("order", ["doc_id", "given"])
def test_a_table_in_pieces_gives_the_same_release_bytes(tmp_path, order):
    table = make_table(47).with_columns(pl.int_range(47).alias("rank"))
    pieces = [table.slice(0, 20), table.slice(20, 0), table.slice(20, 27)]  # an empty piece too
    whole = write_release(tmp_path / "whole", table, 10, LINEAGE, CARD, order=order, volatile={"created_at": "x"})
    streamed = write_release(tmp_path / "pieces", iter(pieces), 10, LINEAGE, CARD, order=order,
                             volatile={"created_at": "x"})
    assert streamed.content_hash == whole.content_hash and streamed.n_shards == 5
    assert release_files(streamed.path) == release_files(whole.path)  # spilled pieces are not left behind
    frame = pl.read_parquet(streamed.path / "data" / "*.parquet")
    expected = table.sort("doc_id") if order == "doc_id" else table
    assert frame["doc_id"].to_list() == expected["doc_id"].to_list()


def test_pieces_are_checked_as_one_table(tmp_path):
    with pytest.raises(ReleaseError, match="'doc_id' has duplicates"):
        write_release(tmp_path / "x", [make_table(3), make_table(4)], 10, LINEAGE, CARD)
    nulls = make_table(3).with_columns(pl.lit(None, dtype=pl.String).alias("source"))
    with pytest.raises(ReleaseError, match="'source' has 6 null"):
        write_release(tmp_path / "x", [nulls, nulls.with_columns(pl.col("doc_id") + "b")], 10, LINEAGE, CARD)
    with pytest.raises(ReleaseError, match="piece 1 has columns"):
        write_release(tmp_path / "x", [make_table(3), make_table(3).with_columns(pl.lit(1).alias("x"))], 10,
                      LINEAGE, CARD)
    with pytest.raises(ReleaseError, match="missing column"):
        write_release(tmp_path / "x", [], 10, LINEAGE, CARD)
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_a_selection_with_repeated_or_unknown_ids_fails_before_any_text_is_read(tmp_path):
    from gmates_assets.core.rows import ParquetColumn
    from gmates_assets.defs.assets.release import _require_known_unique

    paths = []
    for shard, ids in enumerate([["a:1", "a:2"], [], ["b:1"]]):
        paths.append(tmp_path / f"docs{shard}.parquet")
        pl.DataFrame({"doc_id": ids}, schema={"doc_id": pl.String}).write_parquet(paths[-1])
    docs = ParquetColumn(paths, "doc_id")
    _require_known_unique(pl.Series(["b:1", "a:1"]), docs, "random")
    with pytest.raises(ValueError, match=r"random\]: 1 doc_id\(s\) appear more than once, e.g. \['a:2'\]"):
        _require_known_unique(pl.Series(["a:2", "b:1", "a:2"]), docs, "random")
    with pytest.raises(ValueError, match=r"2 doc_id\(s\) are not pool documents, e.g. \['c:9', 'a:3'\]"):
        _require_known_unique(pl.Series(["c:9", "a:1", "a:3"]), docs, "random")
