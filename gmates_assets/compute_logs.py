"""The compute log manager of gmates' local instance: Dagster's local one, mirroring output with a thread.

Dagster's `LocalComputeLogManager` points a step's stdout and stderr at files (the UI's stdout/stderr view) and
mirrors each file back to the terminal through a `tail -F` process, watched by a Python process that kills the
tail if the step's process dies: four processes a step, ~0.1 s of CPU (two Python starts), paid by every step
of every run, in process or not. Here one thread per stream copies what the file gains to the original
terminal, every 0.1 s and once more when the step ends (waiting at most 5 s: a terminal that nobody reads, a
full pipe, blocks the copy but not the step); nothing outlives the process. The files, their place
(`storage/` in the home, Dagster's default) and the UI's view of them are Dagster's.

Relocatable like the event log: a relative `base_dir` (what gmates writes: `storage`) is resolved against the
home of the instance that opens it.
"""
from __future__ import annotations

import os
import sys
import threading
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

from dagster._core.execution.compute_logs import redirect_to_file  # private, pinned dagster
from dagster._core.storage.compute_log_manager import CapturedLogContext, ComputeIOType
from dagster._core.storage.local_compute_log_manager import IO_TYPE_EXTENSION, LocalComputeLogManager
from dagster._utils import ensure_file, touch_file

from .local_instance import in_home

POLL_SECONDS = 0.1  # how often output reaches the terminal while a step runs
READ_BYTES = 1 << 16
FINAL_COPY_SECONDS = 5.0  # how long a step's end waits for the last output to reach the terminal


class ThreadMirroredComputeLogManager(LocalComputeLogManager):
    def __init__(self, base_dir: str, polling_timeout: float | None = None, inst_data=None):
        super().__init__(base_dir, polling_timeout, inst_data)
        self._configured_dir = str(base_dir)

    @classmethod
    def from_config_value(cls, inst_data, config_value):
        return cls(inst_data=inst_data, **config_value)

    def register_instance(self, instance) -> None:
        self._base_dir = in_home(instance, self._configured_dir)
        super().register_instance(instance)

    @contextmanager
    def capture_logs(self, log_key: Sequence[str]):
        out = self.get_captured_local_path(log_key, IO_TYPE_EXTENSION[ComputeIOType.STDOUT])
        err = self.get_captured_local_path(log_key, IO_TYPE_EXTENSION[ComputeIOType.STDERR])
        with _mirrored(sys.stdout, out), _mirrored(sys.stderr, err):
            yield CapturedLogContext(log_key)
        touch_file(self.complete_artifact_path(log_key))  # Dagster's sign that the capture is complete


@contextmanager
def _mirrored(stream, path: str):
    """`stream`'s file descriptor writes to `path` (child processes included) while a thread copies what the file
    gains to where the descriptor pointed before."""
    ensure_file(path)
    try:
        terminal = os.dup(stream.fileno())
    except (AttributeError, OSError, ValueError):  # no descriptor (a test runner's stream): capture only
        with redirect_to_file(stream, path):
            yield
        return
    stop = threading.Event()
    copier = threading.Thread(target=_copy_until, args=(path, terminal, stop), daemon=True,
                              name=f"gmates-mirror-{Path(path).name}")
    copier.start()
    try:
        with redirect_to_file(stream, path):
            yield
    finally:
        stop.set()
        copier.join(FINAL_COPY_SECONDS)  # a terminal nobody reads blocks the copy: the step ends anyway


def _copy_until(path: str, terminal: int, stop: threading.Event) -> None:
    """Copy until `stop`, then what is left; owns `terminal` (closed when done, or never if a write blocks)."""
    try:
        with open(path, "rb") as source:
            while True:
                stopping = stop.wait(POLL_SECONDS)
                while chunk := source.read(READ_BYTES):
                    try:
                        os.write(terminal, chunk)
                    except OSError:  # the terminal went away (a closed pipe): the file still has everything
                        pass
                if stopping:
                    return
    finally:
        os.close(terminal)
