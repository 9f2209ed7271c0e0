"""Stable content hashes: files, directories and semantic values (no paths, key order or float noise)."""
from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

_CHUNK = 1 << 20
# Files that describe an artifact's bookkeeping, not its content, are left out of directory hashes.
BOOKKEEPING_NAMES = frozenset({"_progress.json", "_artifact.json"})


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
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


def hash_dir(path: str | os.PathLike) -> str:
    """Content hash of a directory tree: relative paths and file bytes, bookkeeping files excluded."""
    root = Path(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = file.relative_to(root).as_posix()
        if file.name in BOOKKEEPING_NAMES:
            continue
        digest.update(rel.encode("utf-8") + b"\0" + sha256_file(file).encode("ascii") + b"\n")
    return digest.hexdigest()
