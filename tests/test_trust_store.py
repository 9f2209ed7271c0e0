"""Trust in the store: no step reads bytes that differ from their recorded content hash, repair rebuilds everything
built from corrupt bytes, an unreadable record is quarantined and rebuilt, `release verify` stays inside its
folder, and `release export` exports the named manifest's release."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import yaml
import zarr

from gmates_assets.cli import main
from gmates_assets.core.hashing import FileHashCache
from gmates_assets.core.release import MANIFEST_NAME, verify_release, write_release
from gmates_assets.core.store import QUARANTINE_DIR, ArtifactStore, CorruptInput

from .pipeline import Build
from .test_release import CARD, LINEAGE, make_table


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GMATES_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("GMATES_VERBOSE", raising=False)


def use(build: Build, monkeypatch) -> None:
    for name, value in build.env().items():
        monkeypatch.setenv(name, value)


def shard_artifact(build: Build, asset: str, shard: str = "shard-000"):
    store = ArtifactStore(build.store)
    return next(a for a in store.artifacts(asset) if a.partition == shard)


def release_hash(build: Build) -> str:
    """Content hash of the release the latest dataset_release materialization points at, read from the store."""
    art = ArtifactStore(build.store).by_content("dataset_release", build.latest_metadata("dataset_release")["content_hash"])
    return json.loads((art.path / "release" / MANIFEST_NAME).read_text())["content_hash"]


def flip_bytes(path, count: int = 4) -> None:
    raw = bytearray(path.read_bytes())
    for i in range(count):
        raw[len(raw) // 2 + i] ^= 0xFF
    path.write_bytes(bytes(raw))


# ------------------------------------------------------------------------------ verify on read
def test_a_corrupt_input_fails_the_step_before_compute_and_names_artifact_and_file(full_build, tmp_path):
    build = full_build.copy_to(tmp_path / "b")
    scores = shard_artifact(build, "influence_scores")
    chunk = scores.path / "scores.zarr" / "s" / "c" / "0"
    flip_bytes(chunk)
    build.edit("selection.ratio", 0.4)  # selected_subset now reads the scores again
    before = {a.input_key for a in ArtifactStore(build.store).artifacts("selected_subset")}
    with pytest.raises(Exception) as failure:
        build.sync(select=["selected_subset"])
    text = str(failure.value) + "".join(str(getattr(failure.value, "user_exception", "")))
    assert "input influence_scores[shard-000]" in text and "changed file scores.zarr/s/c/0" in text
    assert "gmates verify --repair" in text
    assert {a.input_key for a in ArtifactStore(build.store).artifacts("selected_subset")} == before  # nothing built


def test_unchanged_files_are_not_reread_and_an_edit_with_mtime_restored_is_caught(tmp_path):
    store = ArtifactStore(tmp_path / "store")
    store.digest_cache = FileHashCache(tmp_path / "stamps.sqlite", racy_seconds=0)
    with store.build("a", "k1") as work:
        (work / "x.bin").write_bytes(b"0123456789" * 1000)
        (work / "sub").mkdir()
        (work / "sub" / "y.bin").write_bytes(b"y" * 100)
    art = store.get("a", "k1")
    assert store.verify_on_read(art) == 2  # cold: both files hashed
    assert store.verify_on_read(art) == 0  # warm: stamps match, nothing read
    target = art.file("x.bin")
    stat = target.stat()
    with open(target, "r+b") as handle:  # same size, mtime put back: only ctime tells
        handle.seek(10)
        handle.write(b"X")
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(CorruptInput, match=r"input a at .* \(changed file x\.bin\).*gmates verify --repair"):
        store.verify_on_read(art)


def test_repair_rebuilds_every_descendant_built_from_corrupt_bytes(full_build, tmp_path, monkeypatch, capsys):
    clean = release_hash(full_build)
    build = full_build.copy_to(tmp_path / "b")
    use(build, monkeypatch)
    scores = zarr.open_group(str(shard_artifact(build, "influence_scores").path / "scores.zarr"), mode="r+")
    scores["s"][...] = -np.asarray(scores["s"][...])  # plausible values, opposite ranking
    ArtifactStore(build.store).discard(shard_artifact(build, "selected_subset", "group_mates"))  # rebuilt from
    with monkeypatch.context() as unchecked:  # the corrupt bytes, as before reads were verified
        unchecked.setattr(ArtifactStore, "verify_on_read", lambda self, artifact: 0)
        build.sync(select=["dataset_release"])
    assert release_hash(build) != clean  # the corrupt scores changed the release
    assert main(["verify", "-m", str(build.manifest), "--repair"]) == 0
    assert release_hash(build) == clean and not build.not_fresh()
    out = capsys.readouterr().out
    assert "influence_scores[shard-000] - files hash to" in out
    assert "repair: discarded selected_subset[group_mates]" in out and "dataset_release" in out


# ------------------------------------------------------------------------------ unreadable record
def test_repair_quarantines_an_unreadable_record_and_rebuilds_it(full_build, tmp_path, monkeypatch, capsys):
    build = full_build.copy_to(tmp_path / "b")
    use(build, monkeypatch)
    art = shard_artifact(build, "documents")
    (art.path / "_artifact.json").write_text('{"content_hash": ')
    assert main(["verify", "-m", str(build.manifest)]) == 1
    assert "documents[shard-000] - " in capsys.readouterr().out
    assert main(["verify", "-m", str(build.manifest), "--repair"]) == 0
    out = capsys.readouterr().out
    quarantined = list((build.store / QUARANTINE_DIR / "documents").iterdir())
    assert len(quarantined) == 1 and (quarantined[0] / "_artifact.json").read_text() == '{"content_hash": '
    assert f"moved aside to {quarantined[0]}" in out
    assert shard_artifact(build, "documents").content_hash == art.content_hash and not build.not_fresh()


# ------------------------------------------------------------------------------ release verify: links and depth
@pytest.fixture
def release(tmp_path):
    return write_release(tmp_path / "rel", make_table(), rows_per_shard=10, lineage=LINEAGE, card=CARD)


def test_release_verify_refuses_a_data_file_linked_outside_the_folder(release, tmp_path):
    name = next(name for name in sorted(release.files) if name.startswith("data/"))
    outside = tmp_path / "outside.parquet"
    shutil.move(release.path / name, outside)
    (release.path / name).symlink_to(outside)  # same bytes, so a hash alone would say OK
    assert verify_release(release.path) == [f"link out of the release: {name} -> {outside.resolve()}"]


def test_release_verify_refuses_a_linked_manifest_and_a_linked_folder(release, tmp_path):
    outside = tmp_path / "elsewhere"
    shutil.move(release.path / "data", outside)
    (release.path / "data").symlink_to(outside, target_is_directory=True)
    assert any(p.startswith("link out of the release: data") for p in verify_release(release.path))


def test_release_verify_bounds_the_manifest_depth(release):
    (release.path / MANIFEST_NAME).write_text("[" * 100_000 + "]" * 100_000)
    problems = verify_release(release.path)
    assert problems == ["manifest.json is refused: nested 100000 levels deep, deeper than the 100 a release manifest may have"]


# ------------------------------------------------------------------------------ release export --manifest
def test_release_export_exports_the_named_manifests_release(full_build, tmp_path, monkeypatch, capsys):
    build = full_build.copy_to(tmp_path / "b")
    use(build, monkeypatch)
    other = build.root / "ratio-0.4.yaml"
    data = yaml.safe_load(build.manifest.read_text())
    data["selection"]["ratio"] = 0.4
    other.write_text(yaml.safe_dump(data, sort_keys=False))
    assert main(["sync", "-m", str(other), "--select", "dataset_release"]) == 0  # built last on this DAGSTER_HOME
    capsys.readouterr()
    assert main(["release", "export", str(tmp_path / "out"), "-m", str(build.manifest)]) == 1
    err = capsys.readouterr().err
    assert f"the dataset release of {build.manifest} is stale" in err and f"gmates sync -m {build.manifest}" in err
    assert not (tmp_path / "out").exists()
    assert main(["release", "export", str(tmp_path / "out2"), "-m", str(other)]) == 0
    assert f"the release of {other} " in capsys.readouterr().out
    exported = json.loads((tmp_path / "out2" / MANIFEST_NAME).read_text())["content_hash"]
    assert exported == release_hash(build) != release_hash(full_build) and verify_release(tmp_path / "out2") == []
