"""The artifact store: memoized, atomically committed, content-hashed artifact directories.

Layout under the root (`GMATES_HOME`, default `.gmates/`):

    artifacts/<asset>/<input_key>/            a committed artifact (complete by construction)
    artifacts/<asset>/<input_key>/_artifact.json   its record: input key, content hash, partition, inputs
    artifacts/<asset>/.partial-<input_key>/   work in progress; long steps resume from what it holds
    by_content/<asset>/<content_hash>         the input key that produced that content (lookup by data version)

An artifact is keyed by `input_key = hash(asset, code version, partition, content hashes of every input)`, so a
repeated or reverted build finds what exists and reuses it; the key never contains a path of this machine.
A directory becomes visible under its key only by one `rename` after all its files are written: a killed step
leaves at most a `.partial-` directory, which never looks complete.
"""
from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

from .hashing import hash_dir, stable_hash
from .progress import atomic_write_text

RECORD_FILE = "_artifact.json"
DEFAULT_HOME = ".gmates"


class StoreError(RuntimeError):
    pass


@dataclass(frozen=True)
class Artifact:
    asset: str
    input_key: str
    path: Path
    content_hash: str
    partition: Optional[str] = None
    record: Mapping[str, Any] = field(default_factory=dict)

    def file(self, name: str) -> Path:
        return self.path / name


def store_root_from_env() -> Path:
    return Path(os.environ.get("GMATES_HOME", DEFAULT_HOME)).expanduser()


class ArtifactStore:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser().resolve()

    # ------------------------------------------------------------------ keys and lookups
    @staticmethod
    def input_key(asset: str, code_version: str, inputs: Mapping[str, Any], partition: Optional[str] = None) -> str:
        """Key of the artifact that `asset` computes from these inputs (content hashes, never paths)."""
        return stable_hash(
            {"asset": asset, "code_version": code_version, "partition": partition, "inputs": dict(inputs)}, 32
        )

    def _asset_dir(self, asset: str) -> Path:
        return self.root / "artifacts" / asset

    def _final_dir(self, asset: str, input_key: str) -> Path:
        return self._asset_dir(asset) / input_key

    def partial_dir(self, asset: str, input_key: str) -> Path:
        return self._asset_dir(asset) / f".partial-{input_key}"

    def _content_index(self, asset: str, content_hash: str) -> Path:
        return self.root / "by_content" / asset / content_hash

    def get(self, asset: str, input_key: str) -> Optional[Artifact]:
        final = self._final_dir(asset, input_key)
        record_path = final / RECORD_FILE
        if not record_path.is_file():
            return None
        record = json.loads(record_path.read_text())
        return Artifact(asset, input_key, final, record["content_hash"], record.get("partition"), record)

    def by_content(self, asset: str, content_hash: str) -> Optional[Artifact]:
        """The artifact of `asset` whose content hash (its Dagster data version) is `content_hash`."""
        index = self._content_index(asset, content_hash)
        if not index.is_file():
            return None
        return self.get(asset, index.read_text().strip())

    def require_by_content(self, asset: str, content_hash: str, partition: Optional[str] = None) -> Artifact:
        art = self.by_content(asset, content_hash)
        if art is None:
            where = f"{asset}[{partition}]" if partition else asset
            raise StoreError(
                f"the store at {self.root} has no artifact of {where} with content hash {content_hash[:16]}…; "
                f"it was built against another GMATES_HOME or deleted. Re-materialize {where} (gmates sync)."
            )
        return art

    # ------------------------------------------------------------------ writing
    @contextmanager
    def build(
        self,
        asset: str,
        input_key: str,
        partition: Optional[str] = None,
        record: Optional[Mapping[str, Any]] = None,
        resumable: bool = False,
    ) -> Iterator[Path]:
        """Yield a work directory; on success hash it, record it and rename it into place.

        The work directory is stable for the key, so a resumable step that was killed finds its finished
        chunks there. On an exception nothing is committed; a step that is not resumable also has its
        partial directory removed, so bad input leaves no trace in the store.
        """
        partial = self.partial_dir(asset, input_key)
        if not resumable:
            shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True, exist_ok=True)
        try:
            yield partial
        except BaseException:
            if not resumable:
                shutil.rmtree(partial, ignore_errors=True)
            raise
        self._commit(asset, input_key, partial, partition, record or {})

    def _commit(self, asset: str, input_key: str, partial: Path, partition, record: Mapping[str, Any]) -> None:
        content_hash = hash_dir(partial)
        full_record = {
            "asset": asset,
            "input_key": input_key,
            "partition": partition,
            "content_hash": content_hash,
            **dict(record),
        }
        atomic_write_text(partial / RECORD_FILE, json.dumps(full_record, indent=2, sort_keys=True))
        final = self._final_dir(asset, input_key)
        try:
            os.rename(partial, final)
        except OSError:
            if self.get(asset, input_key) is None:  # not a concurrent identical commit: a real failure
                raise
            shutil.rmtree(partial, ignore_errors=True)
        atomic_write_text(self._content_index(asset, content_hash), input_key)

    def discard_partial(self, asset: str, input_key: str) -> None:
        shutil.rmtree(self.partial_dir(asset, input_key), ignore_errors=True)

    # ------------------------------------------------------------------ inspection
    def artifacts(self, asset: str) -> list[Artifact]:
        base = self._asset_dir(asset)
        if not base.is_dir():
            return []
        found = (self.get(asset, p.name) for p in sorted(base.iterdir()) if not p.name.startswith("."))
        return [a for a in found if a is not None]

    def partials(self, asset: str) -> list[Path]:
        base = self._asset_dir(asset)
        return sorted(base.glob(".partial-*")) if base.is_dir() else []
