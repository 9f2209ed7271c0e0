"""A warm run worker: one long-lived process that executes Dagster runs one after another (warm.py starts it).

It pays Python, Dagster, the Definitions, torch and the encoder once, then executes each run it is handed with
Dagster's run worker API (`_execute_run_command_body`, what `dagster api execute_run` runs in the process the
default launcher starts per run). The launcher talks to it over two pipes given as file descriptors, one JSON
object per line (no pickle): it sends the instance ref (Dagster's own JSON serialization) once, then
`{"run": id}`; the worker answers `{"ready": pid, "loaded": ...}` once warm (what it loaded: warm.py replaces
an idle worker whose manifest or code changed on disk), then `{"done": id}` or `{"stale": id}` (the run
was submitted for another manifest than the one this process loaded, or what it loaded changed on disk since:
start a fresh worker for it).

Between runs the global random generators (random, numpy, torch) are put back to their state when the worker
became ready, so no run sees what an earlier run drew. A run that an interrupt (SIGINT/SIGTERM) reached ends the
worker after Dagster has recorded the run's end; so does the loss of its launcher (the watchdog interrupts the
run, as Ctrl-C would, then the worker exits).
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import sys
import threading
import time

WATCHDOG_SECONDS = 1.0
CANCEL_POLL_SECONDS = 0.5


class LauncherGone(Exception):
    pass


def _send(outbox, message: dict) -> None:
    try:
        outbox.write(json.dumps(message) + "\n")
        outbox.flush()
    except (BrokenPipeError, ValueError):
        raise LauncherGone from None


def _watch_launcher(launcher_pid: int) -> None:
    """Interrupt this worker when its launcher is gone (its pipes stay open while a run executes here)."""
    def watch() -> None:
        while os.getppid() == launcher_pid:
            time.sleep(WATCHDOG_SECONDS)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=watch, name="warm-worker-watchdog", daemon=True).start()


class RandomState:
    """The global generators' state at one moment, to give every run the same start. torch's only when it is
    imported by then: a worker whose runs execute their steps elsewhere (a Celery or multiprocess executor) never
    imports it, and one whose steps run here imports it while warming up."""

    def __init__(self) -> None:
        import numpy as np

        self.python = random.getstate()
        self.numpy = np.random.get_state()
        torch = sys.modules.get("torch")
        self.torch = torch.random.get_rng_state() if torch is not None else None
        self.torch_seed = torch.initial_seed() if torch is not None else None

    def restore(self) -> None:
        import numpy as np

        random.setstate(self.python)
        np.random.set_state(self.numpy)
        if self.torch is None:
            return
        import torch

        torch.random.set_rng_state(self.torch)
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.manual_seed_all(self.torch_seed)


def _code_location():
    """The gmates Definitions of $GMATES_MANIFEST: the module launched runs reconstruct their job from."""
    import importlib

    return importlib.import_module("gmates_assets.code_location")


def _steps_run_here(location) -> bool:
    """Do the runs' steps execute in this process (the in_process executor, the default)? With another executor
    (multiprocess, Celery, Kubernetes) a run only hands its steps to other processes."""
    gm = location.defs.resources.get("gmates")
    return gm is None or gm.manifest().manifest.execution.executor == "in_process"


def _warm_up(location) -> None:
    """Import torch now, once, rather than in the first run (every step uses it); nothing when the steps run in
    other processes (it would only cost this worker's start). The encoder is left to the first embeddings step
    (then kept for the worker's life by load_encoder's cache): workers restart at every "Reload definitions",
    and loading it cost 3.6 s of CPU and ~0.3 GB per worker whether any run embedded or not."""
    if _steps_run_here(location):
        import torch  # noqa: F401


def _loaded_digest(location) -> str | None:
    from .defs.run_manifest import manifest_digest

    gm = location.defs.resources.get("gmates")
    return manifest_digest(gm.manifest().text) if gm is not None else None


def _stale_for(instance, run_id: str, loaded_digest: str | None) -> bool:
    """Was the run submitted for another manifest content than the one loaded here?"""
    from .defs.run_manifest import MANIFEST_HASH_TAG

    run = instance.get_run_by_id(run_id)
    wanted = run.tags.get(MANIFEST_HASH_TAG) if run is not None else None
    return wanted is not None and loaded_digest is not None and wanted != loaded_digest


def _code_files() -> dict[str, int]:
    """gmates' own modules loaded in this process -> their files' mtime_ns (to notice an edit of the code)."""
    package = os.path.dirname(os.path.abspath(__file__))
    files = {}
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if path and os.path.abspath(path).startswith(package + os.sep):
            try:
                files[path] = os.stat(path).st_mtime_ns
            except OSError:
                files[path] = -1
    return files


def loaded_state(location) -> dict:
    """What this worker loaded and a fresh process would load again if it changed: the manifest (path, sha256 of
    its text) and gmates' source files (mtime_ns). Sent to the launcher with `ready`."""
    gm = location.defs.resources.get("gmates")
    state: dict = {"code": _code_files()}
    if gm is not None:
        state.update(manifest=gm.manifest_path, sha256=_loaded_digest(location))
    return state


def outdated(loaded: dict) -> str | None:
    """Why `loaded` (loaded_state) is no longer what is on disk: the manifest's text or gmates' code changed.
    The UI's runs carry no manifest tag: after an edit and "Reload definitions" they must not execute with the
    old Definitions (their steps would refuse them: ManifestChanged). None while all is as loaded."""
    path = loaded.get("manifest")
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as err:
            return f"manifest {path} unreadable: {err}"
        if hashlib.sha256(text.encode("utf-8")).hexdigest() != loaded["sha256"]:
            return f"manifest {path} changed on disk since this worker loaded it"
    for source, mtime in loaded.get("code", {}).items():
        try:
            if os.stat(source).st_mtime_ns != mtime:
                return f"{source} changed on disk since this worker loaded it"
        except OSError:
            return f"{source} is gone"
    return None


def _watch_for_cancel(instance, run_id: str, done: threading.Event) -> None:
    """Interrupt this worker (as Ctrl-C would) once the run it executes is asked to stop (CANCELING): the UI's
    Terminate reaches the launcher object of the webserver's process, not the daemon's that holds this worker,
    so the request travels through the run's status."""
    from dagster import DagsterRunStatus

    def watch() -> None:
        while not done.wait(CANCEL_POLL_SECONDS):
            run = instance.get_run_by_id(run_id)
            if run is not None and run.status == DagsterRunStatus.CANCELING:
                os.kill(os.getpid(), signal.SIGINT)
                return

    threading.Thread(target=watch, name="warm-worker-cancel-watch", daemon=True).start()


def _execute(instance, run_id: str) -> bool:
    """Execute one run with Dagster's run worker API; True when an interrupt reached it."""
    from dagster._cli.api import _execute_run_command_body  # private, pinned dagster
    from dagster._utils.interrupts import capture_interrupts, check_captured_interrupt  # private, pinned dagster

    done = threading.Event()
    with capture_interrupts():
        _watch_for_cancel(instance, run_id, done)
        try:
            _execute_run_command_body(run_id, instance, lambda _event: None, set_exit_code_on_failure=False)
        finally:
            done.set()
        return check_captured_interrupt()


def main(argv: list[str]) -> int:
    fd_in, fd_out = int(argv[1]), int(argv[2])
    inbox = os.fdopen(fd_in, "r", encoding="utf-8")
    outbox = os.fdopen(fd_out, "w", encoding="utf-8")
    _watch_launcher(os.getppid())
    hello = inbox.readline()
    if not hello:
        return 0
    import dagster as dg
    from dagster._core.instance.ref import InstanceRef  # private, pinned dagster
    from dagster._serdes import deserialize_value

    from .pooled import hold_connections

    instance = hold_connections(dg.DagsterInstance.from_ref(deserialize_value(json.loads(hello)["instance_ref"],
                                                                              InstanceRef)))
    location = _code_location()
    _warm_up(location)
    digest = _loaded_digest(location)
    loaded = loaded_state(location)
    fresh = RandomState()
    _send(outbox, {"ready": os.getpid(), "loaded": loaded})
    for line in inbox:
        message = json.loads(line)
        run_id = message["run"]
        if not message.get("retry") and (_stale_for(instance, run_id, digest) or outdated(loaded)):
            _send(outbox, {"stale": run_id})
            return 0
        fresh.restore()
        interrupted = _execute(instance, run_id)
        _send(outbox, {"done": run_id, "exiting": interrupted})
        if interrupted:
            return 130
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv))
    except KeyboardInterrupt:  # interrupted while idle or warming up: nothing of a run to record
        sys.exit(130)
    except LauncherGone:
        sys.exit(0)
