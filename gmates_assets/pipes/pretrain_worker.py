"""torchrun entry point of `pretrained_checkpoint` with `pretrain.backend: torchrun`.

    python -m torch.distributed.run --standalone --nproc_per_node N -m gmates_assets.pipes.pretrain_worker \
        --spec job.json

Every rank reads the same job (core/pretrain_job.py, JSON), joins the process group (nccl on CUDA, gloo on the
CPU) and runs the data-parallel trainer; rank 0 alone writes checkpoints and alone talks to Dagster Pipes: its
progress lines become step logs, and at the end it reports the summary (final loss, tokens seen, losses) as
materialization metadata. Outside a Pipes session (a manual torchrun) the Pipes calls are no-ops.
"""
from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Sequence
from typing import Optional

from torch.distributed.elastic.multiprocessing.errors import record

from ..core import pretrain_job
from ..core.lm import Replicas
from ..core.progress import ProgressFn, RateMeter

StepHook = Optional[Callable[[int, int, str], None]]  # called on every rank after every step (tests inject faults)


def _progress(meter: ProgressFn, hook: StepHook) -> ProgressFn:
    if hook is None:
        return meter

    def call(done: int, total: int, unit: str) -> None:
        if meter is not None:
            meter(done, total, unit)
        hook(done, total, unit)

    return call


@record  # torchrun's failure summary then shows the failing rank's traceback
def main(argv: Sequence[str] | None = None, after_step: StepHook = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", required=True, help="the job file (core/pretrain_job.PretrainJob as JSON)")
    args = parser.parse_args(argv)
    replicas = Replicas.from_env()
    if not replicas.is_main:
        _train(args.spec, replicas, None, after_step)
        return
    from dagster_pipes import open_dagster_pipes

    with open_dagster_pipes() as pipes:  # opened first, so that any failure of rank 0 reaches Dagster too
        pipes.report_asset_materialization(metadata=_train(args.spec, replicas, pipes.log.info, after_step))


def _train(spec: str, replicas: Replicas, log: Optional[Callable[[str], None]], after_step: StepHook) -> dict:
    job = pretrain_job.PretrainJob.read(spec)
    replicas.check_batch(job.batch_size)
    device = pretrain_job.rank_device(job.device, int(os.environ.get("LOCAL_RANK", 0)),
                                      int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    started = time.monotonic()
    with pretrain_job.process_group(replicas, device):
        if log is not None:
            log(f"pretraining on {replicas.size} process(es), rank 0 on {device}, precision {job.precision}, "
                f"global batch {job.batch_size}, {job.steps} steps")
        meter = RateMeter(log, f"pretrain x{replicas.size}") if log is not None else None
        _, summary = pretrain_job.run(job, replicas, device, _progress(meter, after_step))
    return {**pretrain_job.summary_metadata(summary, replicas), "device": str(device),
            "worker_seconds": round(time.monotonic() - started, 3)}


if __name__ == "__main__":
    main()
