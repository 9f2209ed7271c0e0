"""Pool samples that stay put when the pool grows (docs/method.md §9).

A document's membership in a sample is decided by the document alone: a keyed hash of (sample key, document id)
mapped to a number u in [0, 1). A rate sample keeps the documents with u < rate, so appending shards never changes
an existing document's membership; a size sample keeps the `size` documents with the smallest u (the rate is then
the size-th smallest u), so appending can only admit new documents, each one that enters pushing out the member
with the largest u. Either way a sample changes only by the new documents it admits, and editing a document's
text (its id is its source file and row) never moves it in or out.

`sampling: positional` keeps the earlier behaviour (a seeded draw over document positions), where appending a
shard can reshuffle every sample.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Optional

import numpy as np

SAMPLING_MODES = ("stable", "positional")
_SCALE = float(1 << 64)


def sample_key(purpose: str, seed: int) -> str:
    """The hash key of one sample: what it is for and its seed (different samples are independent)."""
    return f"{purpose}:{int(seed)}"


def membership_scores(doc_ids: Sequence[str], key: str) -> np.ndarray:
    """u in [0, 1) per document (float64): the first 8 bytes of blake2b(document id, keyed by `key`)."""
    key_bytes = key.encode("utf-8")[:64]
    out = np.empty(len(doc_ids), dtype=np.float64)
    for i, doc_id in enumerate(doc_ids):
        digest = hashlib.blake2b(str(doc_id).encode("utf-8"), digest_size=8, key=key_bytes).digest()
        out[i] = int.from_bytes(digest, "big") / _SCALE
    return out


def rate_sample(doc_ids: Sequence[str], rate: float, key: str) -> np.ndarray:
    """Sorted positions of the documents with u < rate."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate: must be in [0, 1], got {rate}")
    return np.flatnonzero(membership_scores(doc_ids, key) < rate).astype(np.int64)


def size_sample(doc_ids: Sequence[str], size: int, key: str) -> np.ndarray:
    """Sorted positions of the `size` documents with the smallest u (ties broken by position); all if fewer."""
    if size < 0:
        raise ValueError(f"size: must be >= 0, got {size}")
    if size >= len(doc_ids):
        return np.arange(len(doc_ids), dtype=np.int64)
    scores = membership_scores(doc_ids, key)
    chosen = np.lexsort((np.arange(len(scores)), scores))[:size]
    return np.sort(chosen).astype(np.int64)


def positional_sample(n_docs: int, size: int, seed: int) -> np.ndarray:
    """The earlier draw (`sampling: positional`): `size` distinct positions from numpy Generator(seed), sorted."""
    if size >= n_docs:
        return np.arange(n_docs, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).choice(n_docs, size=size, replace=False)).astype(np.int64)


def sample_documents(doc_ids: Sequence[str], size: Optional[int], purpose: str, seed: int,
                     mode: str = "stable") -> np.ndarray:
    """Sorted positions of a pool sample of `size` documents (all if None) by the manifest's sampling mode."""
    if mode not in SAMPLING_MODES:
        raise ValueError(f"sampling: must be one of {SAMPLING_MODES}, got {mode!r}")
    if size is None or size >= len(doc_ids):
        return np.arange(len(doc_ids), dtype=np.int64)
    if mode == "positional":
        return positional_sample(len(doc_ids), size, seed)
    return size_sample(doc_ids, size, sample_key(purpose, seed))
