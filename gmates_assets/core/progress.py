"""Resumable chunked work and progress reporting shared by the long steps (embedding, oracle, training).

A long step writes into an output directory in numbered chunks. Each finished chunk is recorded in
`_progress.json` (written atomically), so a killed step restarts from the first unfinished chunk and, because
every chunk is a pure function of its inputs and seed, ends byte-identical to an uninterrupted run.
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Optional

# progress(done, total, unit) -> None; the Dagster shell turns it into log lines with percent and rate.
ProgressFn = Optional[Callable[[int, int, str], None]]

PROGRESS_FILE = "_progress.json"


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write a file so readers see either the old content or the new, never a torn one."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and err.filename is None:  # e.g. disk full: say which file
            raise OSError(err.errno, err.strerror, str(target)) from err
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


class ChunkProgress:
    """Which chunks of a resumable step are finished; persisted in `<out_dir>/_progress.json`.

    `fingerprint` identifies the job (its inputs and settings); progress recorded for a different job is
    discarded rather than resumed, so a stale partial directory can never leak into a new result.
    """

    def __init__(self, out_dir: str | os.PathLike, fingerprint: str, total: Optional[int] = None,
                 unit: str = "chunks", chunk_size: int = 1):
        self.path = Path(out_dir) / PROGRESS_FILE
        self.fingerprint = fingerprint
        self.units = {"total": total, "unit": unit, "chunk_size": chunk_size} if total is not None else {}
        self.done: set[int] = set()
        if self.path.exists():
            state = json.loads(self.path.read_text())
            if state.get("fingerprint") == fingerprint:
                self.done = set(state.get("done", []))

    def is_done(self, chunk: int) -> bool:
        return chunk in self.done

    def mark_done(self, chunk: int) -> None:
        self.done.add(chunk)
        state = {"fingerprint": self.fingerprint, "done": sorted(self.done), **self.units}
        atomic_write_text(self.path, json.dumps(state))

    def finish(self) -> None:
        """Remove the bookkeeping once the output is complete."""
        self.path.unlink(missing_ok=True)


def partial_progress(work_dir: str | os.PathLike) -> Optional[str]:
    """How far an interrupted resumable step got, from the `_progress.json` files in its work directory
    ('112/128 rollouts done'); None when none records its units."""
    parts = []
    for path in sorted(Path(work_dir).rglob(PROGRESS_FILE)):
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(state.get("total"), int):
            done = min(len(state.get("done", [])) * int(state.get("chunk_size", 1)), state["total"])
            parts.append(f"{done}/{state['total']} {state.get('unit', 'chunks')} done")
    return ", ".join(parts) or None


class RateMeter:
    """Formats progress as 'done/total (pct%), rate unit/s (or s/unit below 1/s), eta'; throttled to one line
    per interval."""

    def __init__(self, emit: Callable[[str], None], label: str, min_interval_s: float = 2.0):
        self.emit, self.label, self.min_interval_s = emit, label, min_interval_s
        self.start = time.monotonic()
        self.last = 0.0

    def __call__(self, done: int, total: int, unit: str = "items") -> None:
        now = time.monotonic()
        if done < total and now - self.last < self.min_interval_s:
            return
        self.last = now
        elapsed = max(now - self.start, 1e-9)
        rate = done / elapsed
        pct = 100.0 * done / max(total, 1)
        eta = (total - done) / rate if rate > 0 else float("inf")
        self.emit(f"{self.label}: {done}/{total} {unit} ({pct:.1f}%), {format_rate(rate, unit)}, eta {eta:.0f}s")


def format_rate(rate: float, unit: str) -> str:
    """'12.5 docs/s', or below one per second (where that would print 0.0) '40.0 s/doc'."""
    if rate >= 1 or rate <= 0:
        return f"{rate:.1f} {unit}/s"
    return f"{1 / rate:.1f} s/{unit.removesuffix('s') if len(unit) > 1 else unit}"
