"""Run a pretraining job under torchrun through Dagster Pipes (`pretrain.backend: torchrun`).

The step writes the job (core/pretrain_job.py) as JSON into its work directory and launches

    python -m torch.distributed.run --standalone --nproc_per_node N -m gmates_assets.pipes.pretrain_worker --spec F

inside a Pipes session (temp-file context and messages): rank 0's logs become this step's logs and its reported
metadata comes back here. The worker's output is echoed to this process's stderr; when the worker fails, the
step fails with its exit code and the tail of that output (torchrun's summary names the failing rank and its
traceback).
"""
from __future__ import annotations

import os
import subprocess
import sys
from collections import deque
from pathlib import Path
from typing import Any

import dagster as dg

import gmates_assets

WORKER_MODULE = "gmates_assets.pipes.pretrain_worker"
TAIL_LINES = 40
TERMINATE_WAIT_S = 30


class WorkerFailed(RuntimeError):
    pass


def torchrun_command(spec: Path, nproc: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", WORKER_MODULE, "--spec", str(spec)]


def _worker_env(bootstrap: dict[str, str]) -> dict[str, str]:
    # The worker must import this very gmates_assets (a checkout may shadow an installed copy).
    root = str(Path(gmates_assets.__file__).resolve().parents[1])
    path = os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])])
    return {**os.environ, "PYTHONPATH": path, **bootstrap}


def _run_echoing(command: list[str], env: dict[str, str]) -> tuple[int, str]:
    """(exit code, last lines of output); output is echoed to stderr as it comes."""
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               errors="replace", bufsize=1)
    try:
        for line in process.stdout:
            sys.stderr.write(line)
            tail.append(line.rstrip("\n"))
        return process.wait(), "\n".join(tail)
    except BaseException:  # interrupted (run cancelled, Ctrl-C): torchrun stops its workers on SIGTERM
        process.terminate()
        try:
            process.wait(timeout=TERMINATE_WAIT_S)
        except subprocess.TimeoutExpired:
            process.kill()
        raise


def run_pretrain_worker(context, spec: Path, nproc: int) -> dict[str, Any]:
    """Launch the worker on `spec` under torchrun; -> the metadata rank 0 reported over Pipes."""
    command = torchrun_command(spec, nproc)
    with dg.open_pipes_session(context=context, context_injector=dg.PipesTempFileContextInjector(),
                               message_reader=dg.PipesTempFileMessageReader()) as session:
        context.log.info(f"launching {' '.join(command)}")
        code, tail = _run_echoing(command, _worker_env(session.get_bootstrap_env_vars()))
    if code != 0:
        raise WorkerFailed(f"pretraining worker ({nproc} process(es) under torchrun, job {spec}) failed with exit "
                           f"code {code}; its last output:\n{tail}")
    reported = [r for r in session.get_reported_results() if isinstance(r, dg.MaterializeResult)]
    if not reported:
        raise WorkerFailed(f"pretraining worker (job {spec}) exited 0 but reported no result over Dagster Pipes; "
                           f"its last output:\n{tail}")
    return {key: value.value for key, value in (reported[-1].metadata or {}).items()}
