"""Observing a pool: content hashes of every shard file, first time versus with the digest cache.

`gmates status` and `gmates sync` hash every source file to see what changed. The digest cache
(hashing.cached_sha256_file) re-hashes a file only when its size, mtime, ctime or inode changed. Prints the wall
time of `shard_content` over the pool with an empty cache, again with the cache warm, and after touching one
file (only that file is re-hashed).

Usage: python benchmarks/source_hashing.py [--files 16] [--mb 32]
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from gmates_assets.core.hashing import RACY_SECONDS
from gmates_assets.core.sources import ShardSpec, shard_content


def write_pool(folder: Path, files: int, mb: int) -> None:
    line = json.dumps({"text": "lorem ipsum dolor sit amet " * 40}) + "\n"
    repeats = mb * (1 << 20) // len(line)
    for index in range(files):
        (folder / f"part-{index:03d}.jsonl").write_text(line * repeats)
    time.sleep(RACY_SECONDS + 0.5)  # older than the racy window, as a real pool's files are


def timed(spec: ShardSpec) -> tuple[float, str]:
    start = time.perf_counter()
    content = shard_content(spec)
    return time.perf_counter() - start, content.hash


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=16)
    parser.add_argument("--mb", type=int, default=32)
    parser.add_argument("--smoke", action="store_true",
                        help="smallest size, in seconds: checks the script still runs (tests/test_benchmarks_run.py)")
    args = parser.parse_args()
    if args.smoke:
        args.files, args.mb = 2, 1
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "pool"
        folder.mkdir()
        os.environ["GMATES_CACHE"] = str(Path(tmp) / "cache")
        write_pool(folder, args.files, args.mb)
        spec = ShardSpec("pool", "jsonl", ("pool/*.jsonl",), base_dir=tmp)
        cold, first = timed(spec)
        warm, second = timed(spec)
        touched = folder / "part-000.jsonl"
        os.utime(touched)  # same bytes, new mtime: re-hashed (it is also inside the racy window now)
        one, third = timed(spec)
        assert first == second == third
        total = args.files * args.mb
        print(f"pool: {args.files} files x {args.mb} MB = {total} MB")
        print(f"empty cache: {cold:.3f} s ({total / cold:.0f} MB/s)")
        print(f"warm cache:  {warm:.3f} s ({cold / warm:.0f}x faster)")
        print(f"one file touched: {one:.3f} s (re-hashed {args.mb} MB)")


if __name__ == "__main__":
    main()
