"""Ctrl-C that no handler can lose: a sync stops after the run it interrupted.

Dagster turns SIGINT inside a run into DagsterExecutionInterruptedError raised wherever the main thread is. When
that is inside a weakref callback or a `__del__` (garbage collection), Python prints "Exception ignored in ..." and
drops it, and the sync went on through the whole graph. `InterruptWatch` sees every SIGINT and SIGTERM through
`signal.set_wakeup_fd` (written by the interpreter whatever Python handler is installed), silences the dropped
interrupt's report, and `check()` raises KeyboardInterrupt between runs once one arrived.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Optional

WATCHED = (signal.SIGINT, signal.SIGTERM)


def _is_interrupt(exc: Optional[BaseException]) -> bool:
    return isinstance(exc, KeyboardInterrupt) or type(exc).__name__ == "DagsterExecutionInterruptedError"


class InterruptWatch:
    def __init__(self) -> None:
        self._read: Optional[int] = None
        self._write: Optional[int] = None
        self._previous_fd = -1
        self._previous_hook = None
        self.received = False

    def __enter__(self) -> InterruptWatch:
        if threading.current_thread() is not threading.main_thread():
            return self  # signals are only delivered to the main thread's handlers and wakeup fd
        self._read, self._write = os.pipe()
        for fd in (self._read, self._write):
            os.set_blocking(fd, False)
        self._previous_fd = signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        self._previous_hook = sys.unraisablehook
        sys.unraisablehook = self._unraisable
        return self

    def __exit__(self, *exc) -> None:
        if self._read is None:
            return
        signal.set_wakeup_fd(self._previous_fd)
        sys.unraisablehook = self._previous_hook
        os.close(self._read)
        os.close(self._write)
        self._read = self._write = None

    def _unraisable(self, unraisable) -> None:
        if _is_interrupt(unraisable.exc_value):
            self.received = True  # the interrupt a callback swallowed: check() raises it
            return
        self._previous_hook(unraisable)

    def check(self) -> None:
        """Raise KeyboardInterrupt when SIGINT or SIGTERM arrived since the watch began."""
        if self._read is not None:
            try:
                received = os.read(self._read, 1024)
            except BlockingIOError:
                received = b""
            self.received = self.received or any(number in received for number in WATCHED)
        if self.received:
            raise KeyboardInterrupt("interrupted")
