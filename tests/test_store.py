"""Artifact store: memoization by input key, atomic commit, content hashes, partial directories."""
import pytest

from gmates_assets.core.store import ArtifactStore


def test_input_key_depends_on_code_version_inputs_and_partition_only():
    key = ArtifactStore.input_key("emb", "1-abc", {"documents": {"s0": "h1"}}, "s0")
    assert key == ArtifactStore.input_key("emb", "1-abc", {"documents": {"s0": "h1"}}, "s0")
    assert key != ArtifactStore.input_key("emb", "1-abd", {"documents": {"s0": "h1"}}, "s0")
    assert key != ArtifactStore.input_key("emb", "1-abc", {"documents": {"s0": "h2"}}, "s0")
    assert key != ArtifactStore.input_key("emb", "1-abc", {"documents": {"s0": "h1"}}, "s1")


def test_commit_is_atomic_and_content_addressed(tmp_path):
    store = ArtifactStore(tmp_path)
    with store.build("emb", "k1", "s0", record={"metadata": {"rows": 2}}) as work:
        (work / "a.bin").write_bytes(b"xyz")
        assert store.get("emb", "k1") is None  # nothing visible before the rename
    art = store.get("emb", "k1")
    assert art.file("a.bin").read_bytes() == b"xyz" and art.record["metadata"] == {"rows": 2}
    assert store.by_content("emb", art.content_hash).input_key == "k1"
    assert not store.partials("emb")


def test_same_bytes_same_content_hash_regardless_of_key(tmp_path):
    store = ArtifactStore(tmp_path)
    for key in ("k1", "k2"):
        with store.build("emb", key) as work:
            (work / "a.bin").write_bytes(b"same")
    assert store.get("emb", "k1").content_hash == store.get("emb", "k2").content_hash


def test_failure_of_a_plain_step_leaves_nothing(tmp_path):
    store = ArtifactStore(tmp_path)
    with pytest.raises(ValueError):
        with store.build("docs", "k1") as work:
            (work / "half.parquet").write_bytes(b"...")
            raise ValueError("bad input")
    assert store.get("docs", "k1") is None and not store.partials("docs")


def test_failure_of_a_resumable_step_keeps_its_chunks_but_never_looks_complete(tmp_path):
    store = ArtifactStore(tmp_path)
    with pytest.raises(RuntimeError):
        with store.build("emb", "k1", resumable=True) as work:
            (work / "chunk-0").write_bytes(b"done")
            raise RuntimeError("killed")
    assert store.get("emb", "k1") is None
    with store.build("emb", "k1", resumable=True) as work:
        assert (work / "chunk-0").read_bytes() == b"done"  # resumes from the finished chunk
    assert store.get("emb", "k1") is not None
