"""Artifact store: memoization by input key, atomic commit, content hashes, partial work, locks, repair.

Every behaviour is checked on a local path root, a `file://` URL root and an fsspec `memory://` root (the
object-store protocol: temp prefix, record written last, local copies for readers).
"""
import errno
import json
import os
import socket
import threading
import time
import uuid

import pytest

from gmates_assets.core.store import RECORD_FILE, ArtifactStore, BuildLock, StoreError

ROOTS = ("path", "file_url", "memory")


@pytest.fixture(params=ROOTS)
def store(request, tmp_path):
    if request.param == "path":
        return ArtifactStore(tmp_path / "store")
    if request.param == "file_url":
        return ArtifactStore(f"file://{tmp_path}/store")
    return ArtifactStore(f"memory://gmates-{uuid.uuid4().hex}", cache=tmp_path / "cache")


def write(work, name, data: bytes):
    (work / name).parent.mkdir(parents=True, exist_ok=True)
    (work / name).write_bytes(data)


def test_input_key_depends_on_code_version_inputs_and_partition_only():
    key = ArtifactStore.input_key("emb", "1-abc", {"documents": {"s0": "h1"}}, "s0")
    assert key == ArtifactStore.input_key("emb", "1-abc", {"documents": {"s0": "h1"}}, "s0")
    assert key != ArtifactStore.input_key("emb", "1-abd", {"documents": {"s0": "h1"}}, "s0")
    assert key != ArtifactStore.input_key("emb", "1-abc", {"documents": {"s0": "h2"}}, "s0")
    assert key != ArtifactStore.input_key("emb", "1-abc", {"documents": {"s0": "h1"}}, "s1")


def test_root_kinds(tmp_path):
    assert ArtifactStore(tmp_path).local and ArtifactStore(f"file://{tmp_path}").local
    assert ArtifactStore(f"file://{tmp_path}").root == ArtifactStore(tmp_path).root
    remote = ArtifactStore("memory://bucket/gmates", cache=tmp_path)
    assert not remote.local and remote.root == "memory:///bucket/gmates"


def test_commit_is_atomic_and_content_addressed(store):
    with store.build("emb", "k1", "s0", record={"metadata": {"rows": 2}}) as work:
        write(work, "a.bin", b"xyz")
        write(work, "sub/b.bin", b"uvw")
        assert store.get("emb", "k1") is None  # nothing visible before the commit
    art = store.get("emb", "k1")
    assert art.file("a.bin").read_bytes() == b"xyz" and art.file("sub/b.bin").read_bytes() == b"uvw"
    assert art.record["metadata"] == {"rows": 2} and art.partition == "s0"
    assert store.by_content("emb", art.content_hash).input_key == "k1"
    assert store.stored_hash(art) == art.content_hash
    assert not store.partials("emb")


def test_same_bytes_same_content_hash_regardless_of_key_and_root(store, tmp_path):
    local = ArtifactStore(tmp_path / "other")
    for target, key in ((store, "k1"), (store, "k2"), (local, "k3")):
        with target.build("emb", key) as work:
            write(work, "a.bin", b"same")
    hashes = {store.get("emb", "k1").content_hash, store.get("emb", "k2").content_hash,
              local.get("emb", "k3").content_hash}
    assert len(hashes) == 1


def test_failure_of_a_plain_step_leaves_nothing(store):
    with pytest.raises(ValueError):
        with store.build("docs", "k1") as work:
            write(work, "half.parquet", b"...")
            raise ValueError("bad input")
    assert store.get("docs", "k1") is None and not store.partials("docs")


def test_resumable_step_keeps_chunks_drops_temp_files_and_never_hashes_them(store):
    with pytest.raises(OSError):
        with store.build("oracle", "k1", resumable=True) as work:
            write(work, "chunk-00000.parquet", b"done")
            write(work, ".chunk-00001.parquet.tmp-123", b"")  # what a disk-full write leaves
            raise OSError(errno.EIO, "killed")
    assert store.get("oracle", "k1") is None
    with store.build("oracle", "k1", resumable=True) as work:
        assert (work / "chunk-00000.parquet").read_bytes() == b"done"  # resumes from the finished chunk
        assert not (work / ".chunk-00001.parquet.tmp-123").exists()
        write(work, ".late.tmp-9", b"junk")  # even a temp file left at commit time is not content
    resumed = store.get("oracle", "k1")
    with store.build("oracle", "clean") as work:
        write(work, "chunk-00000.parquet", b"done")
    assert resumed.content_hash == store.get("oracle", "clean").content_hash
    assert not resumed.file(".late.tmp-9").exists()


def test_get_or_build_builds_once_then_reuses(store):
    calls = []

    def fill(work):
        calls.append(1)
        write(work, "x", b"1")

    first, reused_first = store.get_or_build("a", "k", fill, record={"metadata": {"n": 1}})
    second, reused_second = store.get_or_build("a", "k", fill)
    assert (reused_first, reused_second, len(calls)) == (False, True, 1)
    assert first.content_hash == second.content_hash and second.record["metadata"] == {"n": 1}


def test_lost_index_entry_is_repaired_by_lookup_and_by_reuse(store):
    art, _ = store.get_or_build("a", "k", lambda work: write(work, "x", b"1"))
    index = store._index("a", art.content_hash)
    store.fs.rm_file(index)  # a kill between commit and index write
    assert store.by_content("a", art.content_hash).input_key == "k"
    assert store.fs.cat_file(index).decode() == "k"
    store.fs.rm_file(index)
    store.get_or_build("a", "k", lambda work: pytest.fail("must reuse"))
    assert store.fs.cat_file(index).decode() == "k"


def test_corrupt_artifact_is_detected_and_discarded(store):
    art, _ = store.get_or_build("a", "k", lambda work: write(work, "x", b"original"))
    final = f"{store._final('a', 'k')}/x"
    store.fs.pipe_file(final, b"changed")
    assert store.stored_hash(store.get("a", "k")) != art.content_hash
    store.discard(art)
    assert store.get("a", "k") is None and store.by_content("a", art.content_hash) is None
    rebuilt, reused = store.get_or_build("a", "k", lambda work: write(work, "x", b"original"))
    assert not reused and rebuilt.content_hash == art.content_hash


def test_disk_full_names_the_asset_and_work_dir(store):
    def fill(work):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(StoreError, match=r"no space left while building emb in .*\.partial-k"):
        store.get_or_build("emb", "k", fill)


# ------------------------------------------------------------------------------------------ object stores
def remote_store(tmp_path, name="cache"):
    return ArtifactStore(f"memory://gmates-{uuid.uuid4().hex}", cache=tmp_path / name)


def test_remote_prefix_without_record_is_invisible_and_cleared(tmp_path):
    store = remote_store(tmp_path)
    final = store._final("a", "k")
    store.fs.pipe_file(f"{final}/x", b"half an upload")  # a commit killed before the record
    store.fs.pipe_file(f"{store._at('artifacts', 'a', '.upload-k-dead')}/y", b"temp")
    assert store.get("a", "k") is None and store.artifacts("a") == []
    art, reused = store.get_or_build("a", "k", lambda work: write(work, "z", b"new"))
    assert not reused and sorted(p.rsplit("/", 1)[1] for p in store.fs.find(final)) == [RECORD_FILE, "z"]
    assert not store.partials("a")


def test_remote_readers_get_a_verified_local_copy(tmp_path):
    writer = remote_store(tmp_path, "writer-cache")
    art, _ = writer.get_or_build("a", "k", lambda work: write(work, "x", b"data"))
    reader = ArtifactStore(writer.root, cache=tmp_path / "reader-cache")
    copy = reader.get("a", "k")
    assert copy.location.startswith("memory://") and copy.path.is_dir()
    assert str(copy.path).startswith(str(tmp_path / "reader-cache")) and copy.file("x").read_bytes() == b"data"
    writer.fs.pipe_file(f"{writer._final('a', 'k')}/x", b"tampered")
    with pytest.raises(StoreError, match="does not match its content hash"):
        _ = ArtifactStore(writer.root, cache=tmp_path / "third-cache").get("a", "k").path


# ------------------------------------------------------------------------------------------ locks
def test_two_concurrent_builders_of_one_key_build_once(store):
    calls, results = [], []

    def fill(work):
        calls.append(threading.get_ident())
        time.sleep(0.3)
        write(work, "x", b"1")

    threads = [threading.Thread(target=lambda: results.append(store.get_or_build("a", "k", fill)))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and sorted(reused for _, reused in results) == [False, True]
    assert len({art.content_hash for art, _ in results}) == 1


def _plant_lock(store, key, **holder):
    path = store._at("locks", "a", f"{key}.lock")
    store.fs.makedirs(store._at("locks", "a"), exist_ok=True)
    store.fs.pipe_file(path, json.dumps({"token": "other", "heartbeat": time.time(), **holder}).encode())
    return path


def test_a_dead_owner_on_this_host_or_an_old_heartbeat_is_taken_over(store):
    dead = os.getpid()
    while True:  # a pid that is not running
        dead += 1000
        try:
            os.kill(dead, 0)
        except ProcessLookupError:
            break
        except PermissionError:
            continue
    _plant_lock(store, "k1", host=socket.gethostname(), pid=dead)
    _plant_lock(store, "k2", host="another-machine", pid=1, heartbeat=time.time() - 3600)
    for key in ("k1", "k2"):
        art, reused = store.get_or_build("a", key, lambda work: write(work, "x", b"1"))
        assert not reused and art is not None
        assert not store.fs.exists(store._at("locks", "a", f"{key}.lock"))


def test_a_live_lock_makes_the_builder_wait(store):
    path = _plant_lock(store, "k", host="another-machine", pid=1)
    done = threading.Event()
    threading.Thread(target=lambda: (store.get_or_build("a", "k", lambda w: write(w, "x", b"1")), done.set()),
                     daemon=True).start()
    assert not done.wait(0.5)  # still waiting for the other machine
    store.fs.rm_file(path)
    assert done.wait(10)


def test_a_builder_whose_lock_was_taken_over_commits_nothing(store):
    def fill(work):
        write(work, "x", b"1")
        _plant_lock(store, "k", host="another-machine", pid=1)  # someone decided we were dead

    with pytest.raises(StoreError, match="lost the build lock"):
        store.get_or_build("a", "k", fill)
    assert store.get("a", "k") is None


def test_heartbeat_keeps_a_long_build_alive(tmp_path):
    store = ArtifactStore(tmp_path, stale_after=0.6, heartbeat=0.1)
    lock = BuildLock(store.fs, store._at("locks", "a", "k.lock"), "a/k", stale_after=0.6, heartbeat=0.1)
    lock.acquire()
    time.sleep(1.0)  # longer than stale_after: only the heartbeat keeps the lock fresh
    holder = json.loads(store.fs.cat_file(lock.path))
    assert time.time() - holder["heartbeat"] < 0.6
    lock.release()
    assert not store.fs.exists(lock.path)
