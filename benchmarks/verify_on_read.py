"""Verify on read: what checking a step's inputs against their content hashes costs, next to the step's compute.

Every step gets its input artifacts through ArtifactStore.require_verified: the files are hashed and compared
with the recorded content hash before the step runs; a file whose (device, inode, size, mtime, ctime) matches
the stamp this host remembered is not read again. Two inputs, at two pool sizes:

* embeddings[shard] (chunks float32 [n, C, d], chunk_mask, pooled; zarr, `commit_every_docs` rows per chunk),
  read by influence_scores[shard]. Step compute, measured: what build_influence_scores does for a shard in
  adapter mode (read the chunk arrays, score every document with the relational and the individual model, write
  scores.zarr), with RelationalInfluenceModel modules of the real architecture and size (weights random:
  the cost does not depend on them).
* influence_scores[shard] (h float32 [n, d], s, s_individual; zarr, 4096 rows per chunk), read by
  cluster_assignments over the whole pool. Step compute, measured: methods.cluster (faiss spherical k-means,
  the manifest's default k and niter) over h of the whole pool read shard by shard from the zarr arrays, as
  build_cluster_assignments runs it (its parquet output, a small part, is left out).

The artifacts are written with the real shapes, chunking and zarr codecs (random values, like embeddings they
barely compress) and committed through the store, so records and content hashes are real. They are older than
the racy window when read, as a real pool's are. Cold: an empty digest cache, every file hashed (the bytes are
in the OS page cache, just written; a step reading from disk pays that I/O for its own read too). Warm: the
stamps cached, a stat per file and one sqlite lookup per file. All numbers are wall-clock times measured on
this machine by this script; nothing is estimated.

Usage: python benchmarks/verify_on_read.py [--docs 20000 200000] [--docs-per-shard 5000]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import zarr

from gmates_assets.core import methods, relational
from gmates_assets.core.hashing import RACY_SECONDS
from gmates_assets.core.manifest import ClusteringSection, EncoderSection
from gmates_assets.core.rows import ConcatRows
from gmates_assets.core.store import ArtifactStore

DIM = 384  # builtin all-MiniLM-L6-v2
N_CHUNKS = EncoderSection.model_fields["max_length"].default // EncoderSection.model_fields["chunk_size"].default
CHUNK_DOCS = EncoderSection.model_fields["commit_every_docs"].default  # rows per zarr chunk
SCORE_ROWS = 4096  # build_influence_scores' chunk rows


def write_embeddings(out: Path, n: int, rng: np.random.Generator) -> None:
    group = zarr.open_group(str(out / "embeddings.zarr"), mode="w", zarr_format=3)
    chunks = rng.standard_normal((n, N_CHUNKS, DIM), dtype=np.float32)
    group.create_array("chunks", shape=chunks.shape, dtype="float32", chunks=(CHUNK_DOCS, N_CHUNKS, DIM),
                       fill_value=0.0)[...] = chunks
    group.create_array("chunk_mask", shape=(n, N_CHUNKS), dtype="bool", chunks=(CHUNK_DOCS, N_CHUNKS),
                       fill_value=False)[...] = np.ones((n, N_CHUNKS), bool)
    group.create_array("pooled", shape=(n, DIM), dtype="float32", chunks=(CHUNK_DOCS, DIM),
                       fill_value=0.0)[...] = chunks.mean(axis=1)


def write_scores(out: Path, h: np.ndarray, s: np.ndarray, s_ind: np.ndarray) -> None:
    group = zarr.open_group(str(out / "scores.zarr"), mode="w")
    for name, values in (("h", h), ("s", s), ("s_individual", s_ind)):
        arr = np.ascontiguousarray(values, dtype=np.float32)
        group.create_array(name, shape=arr.shape, dtype=arr.dtype,
                           chunks=(min(SCORE_ROWS, max(1, arr.shape[0])),) + arr.shape[1:])[...] = arr


def influence_scores_compute(embeddings, models, scratch: Path) -> float:
    """One shard's influence_scores compute (adapter mode), timed: read, score twice, write."""
    start = time.perf_counter()
    group = zarr.open_group(str(embeddings.file("embeddings.zarr")), mode="r")
    features = {"chunks": group["chunks"][...], "chunk_mask": group["chunk_mask"][...]}
    with torch.no_grad():
        h, s = relational.score_items(models[0], features)
        _, s_ind = relational.score_items(models[1], features)
    write_scores(scratch, h, s, s_ind)
    return time.perf_counter() - start


def verify_all(store: ArtifactStore, artifacts) -> tuple[float, int]:
    start = time.perf_counter()
    read = sum(store.verify_on_read(a) for a in artifacts)
    return time.perf_counter() - start, read


def run(n_docs: int, per_shard: int, root: Path) -> dict:
    os.environ["GMATES_CACHE"] = str(root / "cache")
    store = ArtifactStore(root / "store")
    rng = np.random.default_rng(0)
    shards = [f"shard-{i:03d}" for i in range(max(1, n_docs // per_shard))]
    embeddings = []
    for shard in shards:
        with store.build("embeddings", f"emb-{shard}", shard) as work:
            write_embeddings(work, per_shard, rng)
        embeddings.append(store.get("embeddings", f"emb-{shard}"))
    models = [relational.RelationalInfluenceModel(DIM, mode="adapter", pooling="mean") for _ in range(2)]
    emb_compute, scores = 0.0, []
    for art in embeddings:
        with store.build("influence_scores", f"sc-{art.partition}", art.partition) as work:
            emb_compute += influence_scores_compute(art, models, work)
        scores.append(store.get("influence_scores", f"sc-{art.partition}"))
    time.sleep(RACY_SECONDS + 0.5)  # older than the racy window, as committed inputs are when read later
    result = {"docs": n_docs, "shards": len(shards)}
    for name, arts in (("embeddings", embeddings), ("influence_scores", scores)):
        files = sum(len([p for p in a.path.rglob("*") if p.is_file()]) for a in arts)
        size = sum(p.stat().st_size for a in arts for p in a.path.rglob("*") if p.is_file())
        cold, read_cold = verify_all(store, arts)
        warm, read_warm = verify_all(store, arts)
        assert read_cold >= files - len(arts) and read_warm == 0  # every content file, then none
        result[name] = {"files": files, "mb": size / 2**20, "cold": cold, "warm": warm}
    config = methods.ClusterConfig(ClusteringSection.model_fields["k"].default,
                                   ClusteringSection.model_fields["niter"].default)
    start = time.perf_counter()  # h read from the shards' zarr arrays as the step reads it (artifacts.pool_rows)
    methods.cluster(ConcatRows([zarr.open_group(str(a.file("scores.zarr")), mode="r")["h"] for a in scores]), config)
    result["embeddings"]["compute"] = emb_compute
    result["influence_scores"]["compute"] = time.perf_counter() - start
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, nargs="+", default=[20_000, 200_000])
    parser.add_argument("--docs-per-shard", type=int, default=5_000)
    parser.add_argument("--smoke", action="store_true", help="400 documents in 2 shards (checks the script runs)")
    args = parser.parse_args()
    if args.smoke:
        args.docs, args.docs_per_shard = [400], 200
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    print(f"torch threads {torch.get_num_threads()}; embeddings [n, {N_CHUNKS}, {DIM}] float32 in chunks of "
          f"{CHUNK_DOCS} docs; {args.docs_per_shard} docs per shard")
    print("input             docs  shards  files      MB   cold s   warm s  compute s  cold/compute  warm/compute")
    for n_docs in args.docs:
        with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
            result = run(n_docs, args.docs_per_shard, Path(tmp))
        for name, reader in (("embeddings", "influence_scores[shard], all shards"),
                             ("influence_scores", "cluster_assignments (k-means on h)")):
            r = result[name]
            print(f"{name:<16} {n_docs:>6}  {result['shards']:>6} {r['files']:>6} {r['mb']:>7.1f} {r['cold']:>8.3f} "
                  f"{r['warm']:>8.3f} {r['compute']:>10.2f} {r['cold'] / r['compute']:>13.4f} "
                  f"{r['warm'] / r['compute']:>13.5f}   compute = {reader}")


if __name__ == "__main__":
    main()
