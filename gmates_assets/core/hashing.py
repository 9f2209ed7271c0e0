"""Stable content hashes: files, directories and semantic values (no paths, key order or float noise).

`cached_sha256_file` remembers file digests by (path, device, inode, size, mtime, ctime) in a small sqlite
file under $GMATES_CACHE (default ~/.cache/gmates), so `gmates status` and `sync` re-hash only files whose
metadata changed. A file modified in the last few seconds is never cached (its timestamps could still
repeat), and every cache failure falls back to hashing.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any, Optional

_CHUNK = 1 << 20
# Files that describe an artifact's bookkeeping, not its content, are left out of directory hashes.
BOOKKEEPING_NAMES = frozenset({"_progress.json", "_artifact.json"})
# Temp files of atomic writes (`.name.tmp-<id>`, `.tmp-name`): never content, whatever a crash left behind.
TEMP_MARKER = ".tmp-"
RACY_SECONDS = 3.0


def is_temp_name(name: str) -> bool:
    return name.startswith(".") and TEMP_MARKER in name


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    with open(path, "rb") as handle:
        return sha256_stream(handle)


def sha256_stream(handle) -> str:
    """sha256 of what is left in a binary file object, read in chunks (a local file or an fsspec one)."""
    digest = hashlib.sha256()
    while block := handle.read(_CHUNK):
        digest.update(block)
    return digest.hexdigest()


def _canonical(value: Any) -> Any:
    """Map a value to a JSON-able form whose serialisation is independent of key order and float noise."""
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if math.isfinite(value) and value == int(value) and abs(value) < 2**53:
            return int(value)  # 3.0 and 3 mean the same setting
        return float(f"{value:.12g}")  # 0.1+0.2 and 0.3 mean the same setting
    if hasattr(value, "model_dump"):
        return _canonical(value.model_dump(mode="json"))
    raise TypeError(f"cannot hash value of type {type(value).__name__}")


def stable_json(value: Any) -> str:
    return json.dumps(_canonical(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def stable_hash(value: Any, length: int = 16) -> str:
    """Hash of the semantic content of a JSON-like value."""
    return sha256_bytes(stable_json(value).encode("utf-8"))[:length]


def content_files(root: str | os.PathLike) -> list[Path]:
    """The files of a directory tree that make up its content: bookkeeping and temp files left out."""
    root = Path(root)
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name not in BOOKKEEPING_NAMES
                  and not any(is_temp_name(part) for part in p.relative_to(root).parts))


def hash_dir(path: str | os.PathLike, file_digest=sha256_file) -> str:
    """Content hash of a directory tree: relative paths and file bytes of its content files.

    `file_digest`: `cached_sha256_file` for inputs that are re-hashed on every observation (never for
    `gmates verify`, which must read stored artifacts again)."""
    return combine_file_digests(file_digests(path, file_digest))


def file_digests(path: str | os.PathLike, file_digest=sha256_file) -> list[tuple[str, str]]:
    """(relative posix path, sha256) of every content file of a directory tree, in sorted path order."""
    root = Path(path)
    return [(f.relative_to(root).as_posix(), file_digest(f)) for f in content_files(root)]


def combine_file_digests(pairs) -> str:
    """The directory hash from (relative posix path, sha256) pairs in sorted path order."""
    digest = hashlib.sha256()
    for rel, file_digest in pairs:
        digest.update(rel.encode("utf-8") + b"\0" + file_digest.encode("ascii") + b"\n")
    return digest.hexdigest()


def remove_temp_files(root: str | os.PathLike) -> list[Path]:
    """Delete what interrupted atomic writes left under `root`; returns what was removed."""
    removed = []
    for p in sorted(Path(root).rglob(".*"), reverse=True):
        if is_temp_name(p.name) and (p.exists() or p.is_symlink()):
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
            removed.append(p)
    return removed


# ------------------------------------------------------------------------------------ file digest cache
def cache_dir() -> Path:
    return Path(os.environ.get("GMATES_CACHE") or Path.home() / ".cache" / "gmates").expanduser()


def _stat_key(stat: os.stat_result) -> str:
    return f"{stat.st_dev}:{stat.st_ino}:{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ctime_ns}"


class FileHashCache:
    """sha256 of files by path and stat signature; advisory: any sqlite error means 'not cached'."""

    def __init__(self, path: Optional[Path] = None, racy_seconds: float = RACY_SECONDS):
        self.path = path or cache_dir() / "file_hashes.sqlite"
        self.racy_seconds = racy_seconds

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=10)
        db.execute("CREATE TABLE IF NOT EXISTS digests (path TEXT PRIMARY KEY, stat TEXT, sha256 TEXT)")
        return db

    def lookup(self, path: str, stat: os.stat_result) -> Optional[str]:
        try:
            with self._connect() as db:
                row = db.execute("SELECT stat, sha256 FROM digests WHERE path = ?", (path,)).fetchone()
        except (sqlite3.Error, OSError):
            return None
        return row[1] if row and row[0] == _stat_key(stat) else None

    def remember(self, path: str, stat: os.stat_result, digest: str) -> None:
        if time.time() - max(stat.st_mtime, stat.st_ctime) < self.racy_seconds:
            return  # a write in the same timestamp tick could go unnoticed
        try:
            with self._connect() as db:
                db.execute("INSERT OR REPLACE INTO digests VALUES (?, ?, ?)", (path, _stat_key(stat), digest))
        except (sqlite3.Error, OSError):
            pass

    def lookup_many(self, stamps: list[tuple[str, str]]) -> dict[str, str]:
        """{path: sha256} of the (path, stat key) pairs whose stat key is the one remembered (one connection)."""
        found = {}
        try:
            db = self._connect()
            try:
                for path, stat_key in stamps:
                    row = db.execute("SELECT stat, sha256 FROM digests WHERE path = ?", (path,)).fetchone()
                    if row and row[0] == stat_key:
                        found[path] = row[1]
            finally:
                db.close()
        except (sqlite3.Error, OSError):
            return found
        return found

    def remember_many(self, rows: list[tuple[str, os.stat_result, str]]) -> None:
        """Remember (path, stat, sha256) rows in one transaction; racy ones (just written) are left out."""
        now = time.time()
        keep = [(path, _stat_key(stat), digest) for path, stat, digest in rows
                if now - max(stat.st_mtime, stat.st_ctime) >= self.racy_seconds]
        if not keep:
            return
        try:
            db = self._connect()
            try:
                with db:
                    db.executemany("INSERT OR REPLACE INTO digests VALUES (?, ?, ?)", keep)
            finally:
                db.close()
        except (sqlite3.Error, OSError):
            pass

    def forget(self, path: str) -> None:
        try:
            with self._connect() as db:
                db.execute("DELETE FROM digests WHERE path = ?", (path,))
        except (sqlite3.Error, OSError):
            pass


def cached_sha256_file(path: str | os.PathLike, cache: Optional[FileHashCache] = None) -> str:
    """sha256 of a file, re-hashed only when its (device, inode, size, mtime, ctime) changed."""
    cache = cache or FileHashCache()
    key = os.path.abspath(path)
    with open(key, "rb") as handle:
        before = os.fstat(handle.fileno())
        found = cache.lookup(key, before)
        if found is not None:
            return found
        digest = sha256_stream(handle)
        after = os.fstat(handle.fileno())
    if _stat_key(after) == _stat_key(before):  # unchanged while it was hashed
        cache.remember(key, after, digest)
    return digest


def cached_file_digests(paths: list[Path], cache: Optional[FileHashCache] = None) -> tuple[list[str], int]:
    """(sha256 of each file, how many were read): a file is read only when its (device, inode, size, mtime,
    ctime) differs from the stamp remembered when this host last hashed it. ctime cannot be set by a user, so
    an in-place edit is re-read even if its mtime was restored."""
    cache = cache or FileHashCache()
    keys = [os.path.abspath(p) for p in paths]
    stats = [os.stat(k) for k in keys]
    known = cache.lookup_many([(k, _stat_key(s)) for k, s in zip(keys, stats)])
    digests, learned = [], []
    for key in keys:
        if key in known:
            digests.append(known[key])
            continue
        with open(key, "rb") as handle:
            before = os.fstat(handle.fileno())
            digest = sha256_stream(handle)
            after = os.fstat(handle.fileno())
        if _stat_key(after) == _stat_key(before):  # unchanged while it was hashed
            learned.append((key, after, digest))
        digests.append(digest)
    cache.remember_many(learned)
    return digests, len(keys) - len(known)
