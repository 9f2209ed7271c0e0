"""`WarmRunLauncher`: a Dagster run launcher whose runs execute in N long-lived worker processes.

The default launcher starts a process per run: Python, Dagster, the Definitions, then torch and the encoder
in the steps that need them, measured at 2.8 s a run here, 0.74x the compute of a 600-document shard. The warm
launcher starts `workers` processes once (warm_worker.py); each imports all of that once (the encoder when its
first embeddings run loads it, then kept) and then executes the
runs it is handed, one at a time, with Dagster's run worker API. Runs are created, recorded and shown exactly as
with any launcher; only where they execute changes.

* Configurable from dagster.yaml (the daemon then holds the workers):
  `run_launcher: {module: gmates_assets.warm, class: WarmRunLauncher, config: {workers: 2}}`;
  or chosen per build with `execution.launcher: warm` in the manifest: `gmates sync` then holds them
  (launch.WarmRuns), and they end with it.
* A worker that dies mid-run (killed, out of memory) fails that run, naming the worker and its exit; a new
  worker takes its place for the next runs. The launcher watches its own workers, so it does not offer
  Dagster's run-monitoring health check: the daemon asking a launcher object in another process (which knows
  none of these runs) would fail them.
* `dispose()` (the instance closing, e.g. at the end of or on Ctrl-C in `gmates sync`) interrupts the workers,
  waits for them to record their runs' end, kills any that do not stop, and fails runs still unfinished, so
  nothing is left running or STARTED. Workers also stop on their own when their launcher's process is gone.
* Runs on one host split its cores: a worker gets OMP_NUM_THREADS = cores / workers unless it is set.
* Only asset runs (the `__ASSET_JOB` that sync, the sensor, backfills and the UI's Materialize buttons launch) go
  to workers; other jobs' runs (`gmates_sync`, which waits for the asset runs it submits) get a process each
  from Dagster's default launcher, so they never hold a worker their own runs wait for.
* A worker executes what a fresh process would: before each run it checks the manifest on disk against the one
  it loaded (the UI's runs carry no manifest tag; after an edit and "Reload definitions" they must run the new
  Definitions) and gmates' own source files; on a change it hands the run to a fresh worker. An idle worker
  whose manifest or code changed is replaced at once (checked every second), so after an edit in the UI the
  fresh workers warm up while the user presses "Reload definitions".
* Terminate (from the UI, whose webserver holds another launcher object than the daemon holding the workers)
  marks the run CANCELING; the worker executing it watches for that and interrupts itself, and a run still
  waiting for a worker is canceled when a slot takes it.
"""
from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any, Optional

from dagster import DagsterRunStatus, Field
from dagster._core.launcher import DefaultRunLauncher, LaunchRunContext, RunLauncher
from dagster._serdes import ConfigurableClass, ConfigurableClassData, serialize_value

from .warm_worker import outdated

STOP_GRACE_SECONDS = 10.0
IDLE_CHECK_SECONDS = 1.0  # how often an idle slot checks that its worker's manifest and code are still current
WORKER_MODULE = "gmates_assets.warm_worker"
ASSET_JOB = "__ASSET_JOB"  # the runs a worker executes; other jobs' runs get a process each


def _is_asset_run(run) -> bool:
    return run.job_name == ASSET_JOB


class WorkerGone(RuntimeError):
    pass


class _Worker:
    """One worker process and the pipes to it; `run_id` is the run it executes now."""

    def __init__(self, env: Mapping[str, str], instance_ref_json: str):
        to_worker_r, to_worker_w = os.pipe()
        from_worker_r, from_worker_w = os.pipe()
        self.process = subprocess.Popen([sys.executable, "-m", WORKER_MODULE, str(to_worker_r), str(from_worker_w)],
                                        env=dict(env), pass_fds=(to_worker_r, from_worker_w))
        os.close(to_worker_r)
        os.close(from_worker_w)
        self.inbox = os.fdopen(to_worker_w, "w", encoding="utf-8")
        self.outbox = os.fdopen(from_worker_r, "r", encoding="utf-8")
        self.run_id: Optional[str] = None
        self.ready = False
        self.loaded: dict = {}  # what it loaded (warm_worker.loaded_state)
        self.send({"instance_ref": instance_ref_json})

    def send(self, message: dict) -> None:
        try:
            self.inbox.write(json.dumps(message) + "\n")
            self.inbox.flush()
        except (BrokenPipeError, ValueError) as err:
            raise WorkerGone(str(err)) from None

    def receive(self) -> dict:
        line = self.outbox.readline()
        if not line:
            raise WorkerGone(self.exit_text())
        return json.loads(line)

    def exit_text(self) -> str:
        try:
            code = self.process.wait(timeout=STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            return "stopped answering"
        if code < 0:
            return f"was killed by {signal.Signals(-code).name}"
        return f"exited with status {code}"

    def stop(self, grace: float) -> None:
        """End the worker: EOF on its inbox stops an idle one; SIGINT interrupts one executing a run, as Ctrl-C
        would (Dagster records the run's end); one still warming up is killed at once; after `grace` seconds
        any is killed. The outbox is left to the thread reading it (closing a reader that another thread is
        blocked in would wait for that read)."""
        try:
            self.inbox.close()
        except OSError:
            pass
        if self.process.poll() is None and self.run_id is None and not self.ready:
            self.process.kill()  # still warming up: nothing of a run to record, and nothing to wait for
        elif self.process.poll() is None and self.run_id is not None:
            self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def close(self) -> None:
        self.stop(0)
        self.outbox.close()


class WarmRunLauncher(RunLauncher, ConfigurableClass):
    def __init__(self, workers: int = 2, inst_data: Optional[ConfigurableClassData] = None):
        self._inst_data = inst_data
        self.workers = max(1, int(workers))
        self._queue: queue.Queue[Optional[str]] = queue.Queue()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._generation = 0
        self._slots: list[Optional[_Worker]] = []
        self._threads: list[threading.Thread] = []
        self._closing = False
        self._default: Optional[DefaultRunLauncher] = None
        self._known: set[str] = set()
        self._warmed: set[int] = set()  # slots whose first worker became ready
        self._started_at = 0.0
        self.warm_seconds: list[float] = []  # seconds from start() to each slot's first ready worker
        super().__init__()

    # ------------------------------------------------------------------ ConfigurableClass
    @property
    def inst_data(self) -> Optional[ConfigurableClassData]:
        return self._inst_data

    @classmethod
    def config_type(cls) -> dict:
        return {"workers": Field(int, is_required=False, default_value=2,
                                 description="worker processes, each executing one run at a time")}

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]) -> WarmRunLauncher:
        return cls(inst_data=inst_data, **config_value)

    # ------------------------------------------------------------------ workers
    def start(self) -> None:
        """Start the workers now (they warm up while the caller plans); launch_run does it when not done."""
        with self._lock:
            if self._threads or self._closing:
                return
            env = self._worker_env()
            ref = serialize_value(self._instance.get_ref())
            self._started_at = time.monotonic()
            self._slots = [None] * self.workers
            for index in range(self.workers):
                thread = threading.Thread(target=self._serve, args=(index, env, ref), daemon=True,
                                          name=f"warm-worker-{index}")
                self._threads.append(thread)
                thread.start()

    def _worker_env(self) -> dict[str, str]:
        env = dict(os.environ)
        if "OMP_NUM_THREADS" not in env:
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // self.workers))
        return env

    def _spawn(self, index: int, env, ref: str) -> _Worker:
        worker = _Worker(env, ref)
        with self._lock:
            self._slots[index] = worker
            closing = self._closing
        try:
            if closing:
                raise WorkerGone("was not used: the launcher is closing")
            ready = worker.receive()
            if "ready" not in ready:
                raise WorkerGone(f"answered {ready} instead of ready")
        except WorkerGone as gone:
            worker.close()
            raise WorkerGone(f"(pid {worker.process.pid}) {gone} while starting") from None
        worker.ready = True
        worker.loaded = ready.get("loaded") or {}
        self._mark_warm(index)
        return worker

    def _mark_warm(self, index: int) -> None:
        with self._lock:
            if index not in self._warmed:
                self._warmed.add(index)
                self.warm_seconds.append(time.monotonic() - self._started_at)
            self._generation += 1
            self._changed.notify_all()

    def _serve(self, index: int, env, ref: str) -> None:
        """One slot: keep a warm worker, hand it the next run, replace it when it dies. A worker is started
        before the slot waits for a run; one that cannot start is tried again once per run, which then fails
        with the reason (never a loop of restarts)."""
        worker = self._try_spawn(index, env, ref)
        retry: Optional[str] = None
        while True:
            try:
                run_id = retry or self._queue.get(timeout=IDLE_CHECK_SECONDS)
            except queue.Empty:
                worker = self._renew_if_outdated(index, env, ref, worker)
                continue
            if run_id is None or self._closing:
                break
            if not self._still_wanted(run_id):  # canceled while queued
                self._known.discard(run_id)
                continue
            worker, retry = self._run_on_worker(index, env, ref, worker, run_id, retry is not None)
            if retry is None:
                self._known.discard(run_id)  # ended (or failed): nothing left for dispose() to fail
            with self._lock:
                self._generation += 1
                self._changed.notify_all()
            if worker is None and retry is None and not self._closing:
                worker = self._try_spawn(index, env, ref)  # warm up the replacement before the next run
        if worker is not None:
            worker.stop(STOP_GRACE_SECONDS)
            worker.outbox.close()

    def _renew_if_outdated(self, index: int, env, ref: str, worker: Optional[_Worker]) -> Optional[_Worker]:
        """An idle worker whose manifest or code changed on disk (an edit in the UI, before its "Reload
        definitions") is replaced now, so the runs after the reload find a warm worker with the new ones."""
        if worker is None or self._closing or worker.process.poll() is not None or not outdated(worker.loaded):
            return worker
        worker.close()
        return self._try_spawn(index, env, ref)

    def _run_on_worker(self, index: int, env, ref: str, worker: Optional[_Worker], run_id: str,
                       retry: bool) -> tuple[Optional[_Worker], Optional[str]]:
        """Have a worker execute the run: (the worker to keep or None, the run to retry on a fresh worker)."""
        try:
            worker = self._hand_over(index, env, ref, worker, run_id, retry)
        except WorkerGone as gone:
            self._fail_unfinished(run_id, f"a warm run worker {gone}; nothing of this run executed")
            return None, None
        try:
            answer = worker.receive()
        except WorkerGone as gone:
            self._fail_unfinished(run_id, f"warm run worker pid {worker.process.pid} {gone} while executing "
                                          f"this run")
            worker.close()
            return None, None
        with self._lock:
            worker.run_id = None
        if "stale" in answer:  # it loaded another manifest than the run's: a fresh worker loads the current one
            worker.close()
            return None, run_id
        if answer.get("exiting"):  # an interrupt reached the run: the worker ends
            worker.close()
            return None, None
        return worker, None

    def _hand_over(self, index: int, env, ref: str, worker: Optional[_Worker], run_id: str, retry: bool) -> _Worker:
        """Send the run to the slot's worker. One that died while idle is replaced first: the run had not
        started, so it is not failed for that."""
        if worker is not None:
            try:
                return self._send_run(worker, run_id, retry)
            except WorkerGone:
                worker.close()
        return self._send_run(self._spawn(index, env, ref), run_id, retry)

    def _send_run(self, worker: _Worker, run_id: str, retry: bool) -> _Worker:
        with self._lock:
            worker.run_id = run_id
        try:
            worker.send({"run": run_id, "retry": retry})
        except WorkerGone:
            with self._lock:
                worker.run_id = None
            raise
        return worker

    def _try_spawn(self, index: int, env, ref: str) -> Optional[_Worker]:
        try:
            return self._spawn(index, env, ref)
        except WorkerGone:
            self._mark_warm(index)  # the slot takes runs; the next one retries the start and fails with why
            return None

    def _still_wanted(self, run_id: str) -> bool:
        """Not finished and not asked to stop; a run Terminate reached while it waited here ends canceled."""
        run = self._instance.get_run_by_id(run_id) if self.has_instance else None
        if run is not None and run.status == DagsterRunStatus.CANCELING:
            self._instance.report_run_canceled(run)
            return False
        return run is not None and not run.is_finished

    def _fail_unfinished(self, run_id: str, message: str) -> None:
        if not self.has_instance:
            return
        run = self._instance.get_run_by_id(run_id)
        if run is not None and not run.is_finished:
            self._instance.report_run_failed(run, message)

    @property
    def warm_workers(self) -> int:
        """Slots whose worker has been ready at least once: runs handed to them do not wait for a warm-up."""
        with self._lock:
            return len(self._warmed)

    def wait_for_change(self, timeout: float) -> None:
        """Return when a worker became ready, a run handed to a worker ended (or its worker died), or after
        `timeout` seconds."""
        with self._changed:
            seen = self._generation
            self._changed.wait_for(lambda: self._generation != seen, timeout=timeout)

    # ------------------------------------------------------------------ RunLauncher
    def launch_run(self, context: LaunchRunContext) -> None:
        if not _is_asset_run(context.dagster_run):
            self._process_launcher().launch_run(context)
            return
        if self._closing:
            raise RuntimeError("the warm run launcher is closed")
        self.start()
        run_id = context.dagster_run.run_id
        self._known.add(run_id)
        self._queue.put(run_id)

    def _process_launcher(self) -> DefaultRunLauncher:
        """Dagster's default launcher (a process per run, through the code server), for runs of other jobs:
        `gmates_sync` only waits for the asset runs it submits, so on a worker it would hold that worker while
        its own runs queue for one (with one worker, forever)."""
        with self._lock:
            if self._default is None:
                self._default = DefaultRunLauncher()
                self._default.register_instance(self._instance)
            return self._default

    def terminate(self, run_id: str) -> bool:
        """Cancel a run: mark it CANCELING; the worker executing it, held by this launcher or by the same
        launcher in another process (the UI's Terminate runs in the webserver, the workers live in the daemon),
        sees that and interrupts itself (Dagster then records the run canceled); a run still queued here is
        canceled at once, one queued in another process's launcher when a slot takes it."""
        run = self._instance.get_run_by_id(run_id) if self.has_instance else None
        if run is None or run.is_finished:
            return False
        if not _is_asset_run(run):
            return self._process_launcher().terminate(run_id)
        self._instance.report_run_canceling(run)
        with self._lock:
            executing = any(w is not None and w.run_id == run_id for w in self._slots)
        if run_id in self._known and not executing:
            self._instance.report_run_canceled(self._instance.get_run_by_id(run_id))
        return True

    def dispose(self) -> None:
        """Stop every worker: interrupt runs in progress (they record their end), kill what does not stop."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
            workers = [w for w in self._slots if w is not None]
            threads = list(self._threads)
        for _ in threads:
            self._queue.put(None)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for worker in workers:
            worker.stop(max(0.0, deadline - time.monotonic()))
        for thread in threads:
            thread.join(timeout=STOP_GRACE_SECONDS)
        for run_id in list(self._known):
            self._fail_unfinished(run_id, "the warm launcher was closed before this run finished")
        if self._default is not None:
            self._default.dispose()
