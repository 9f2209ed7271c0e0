"""A pretraining job as plain data, so another process can run it: the torchrun worker
(gmates_assets/pipes/pretrain_worker.py) reads it from a JSON file (no pickle) and runs it on every rank.

The job names files rather than holding data: the packed token rows (`lm.PackedSequences`' int32 file), the
checkpoint to continue from and the output directory, all on a filesystem every rank sees.
"""
from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors.torch import load_model

from . import lm
from .devices import resolve_device
from .progress import ProgressFn, atomic_write_text

JOB_FORMAT = "gmates-pretrain-job-v1"


@dataclass(frozen=True)
class PretrainJob:
    sequences: str  # packed rows, int32 [n_rows, width] (lm.pack_sequences_to_file)
    n_rows: int
    width: int
    token_bounds: Optional[tuple[int, int]]
    out_dir: str  # train_lm's out_dir: checkpoints while training, the end state at the end
    arch: dict[str, Any]  # lm.LMArchitecture
    model_seed: int  # initial weights when start_state is None
    optim: dict[str, Any]  # lm.OptimConfig
    steps: int
    batch_size: int  # the global batch (rows), divided equally among the ranks
    seed: int  # batch order
    checkpoint_every: int
    start_state: Optional[str] = None  # a checkpoint directory to continue from
    precision: str = "fp32"
    device: str = "auto"  # the step's device setting; each rank's device is rank_device(device, ...)

    def __post_init__(self) -> None:
        if self.token_bounds is not None:
            object.__setattr__(self, "token_bounds", tuple(int(b) for b in self.token_bounds))
        lm.LMArchitecture.from_dict(self.arch)  # fail on a bad architecture before any process starts
        lm.OptimConfig.from_dict(self.optim)
        if self.precision not in lm.PRECISIONS:
            raise ValueError(f"precision: expected one of {lm.PRECISIONS}, got {self.precision!r}")

    @classmethod
    def for_rows(cls, packed: lm.PackedSequences, **values: Any) -> PretrainJob:
        return cls(sequences=str(packed.path), n_rows=packed.n_rows, width=packed.width,
                   token_bounds=packed.bounds, **values)

    def packed(self) -> lm.PackedSequences:
        path = Path(self.sequences)
        expected = self.n_rows * self.width * 4
        if not path.is_file() or path.stat().st_size != expected:
            found = path.stat().st_size if path.is_file() else "no file"
            raise FileNotFoundError(f"{path}: packed sequences of {self.n_rows} x {self.width} int32 expected "
                                    f"({expected} bytes), found {found}")
        return lm.PackedSequences(path, self.n_rows, self.width, self.token_bounds)

    def write(self, path: str | os.PathLike) -> Path:
        atomic_write_text(path, json.dumps({"format": JOB_FORMAT, **asdict(self)}, indent=1, sort_keys=True) + "\n")
        return Path(path)

    @classmethod
    def read(cls, path: str | os.PathLike) -> PretrainJob:
        try:
            values = json.loads(Path(path).read_text())
        except (OSError, ValueError) as err:
            raise ValueError(f"{path}: cannot read the pretraining job ({err})") from None
        if not isinstance(values, dict) or values.pop("format", None) != JOB_FORMAT:
            raise ValueError(f"{path}: field 'format' must be {JOB_FORMAT!r}")
        known = {f.name for f in fields(cls)}
        required = {f.name for f in fields(cls) if f.default is MISSING}
        unknown, missing = sorted(set(values) - known), sorted(required - set(values))
        if unknown or missing:
            raise ValueError(f"{path}: unknown fields {unknown}, missing fields {missing}")
        try:
            return cls(**values)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}: {err}") from None


def rank_device(setting: str, local_rank: int, local_world: int) -> torch.device:
    """The CPU when `setting` resolves to it. On CUDA, a single process keeps the GPU the setting names (the
    run's gmates/gpu tag, or execution.device: cuda:N); several processes take cuda:LOCAL_RANK each."""
    resolved = resolve_device(setting)
    if resolved.type != "cuda":
        return torch.device("cpu")
    if local_world == 1 and resolved.index is not None:
        return resolved
    visible = torch.cuda.device_count()
    if local_rank >= visible:
        raise RuntimeError(f"local rank {local_rank} has no GPU: {visible} visible (CUDA_VISIBLE_DEVICES); "
                           f"pretrain.nproc_per_node must not exceed the GPUs of the node")
    return torch.device("cuda", local_rank)


@contextlib.contextmanager
def process_group(replicas: lm.Replicas, device: torch.device) -> Iterator[None]:
    """torch.distributed for the ranks (nccl on CUDA, gloo on the CPU), from torchrun's environment; nothing
    to do for a single process."""
    if replicas.size == 1:
        yield
        return
    import torch.distributed as dist

    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=replicas.rank,
                            world_size=replicas.size)
    try:
        yield
    finally:
        dist.destroy_process_group()


def run(job: PretrainJob, replicas: lm.Replicas = lm.SINGLE_PROCESS, device=None,
        progress: ProgressFn = None):
    """Build the model and train it as the job says; -> (model, lm.TrainSummary). Every rank calls this."""
    replicas.check_batch(job.batch_size)
    model = lm.build_causal_lm(lm.LMArchitecture.from_dict(job.arch), job.model_seed)
    summary = lm.train_lm(model, job.packed(), lm.OptimConfig.from_dict(job.optim), steps=job.steps,
                          batch_size=job.batch_size, seed=job.seed, out_dir=job.out_dir,
                          checkpoint_every=job.checkpoint_every, progress=progress,
                          device=device if device is not None else job.device, start_state=job.start_state,
                          precision=job.precision, replicas=replicas)
    return model, summary


def summary_metadata(summary: lm.TrainSummary, replicas: lm.Replicas) -> dict[str, Any]:
    """What a finished job reports (plain JSON values): the asset's metadata and the loss curve."""
    losses = [float(x) for x in summary.losses]
    return {"final_loss": round(losses[-1], 4) if losses else None, "tokens_seen": int(summary.tokens_seen),
            "losses": [round(x, 6) for x in losses], "world_size": replicas.size, "end_step": summary.end_step,
            "resumed_from_step": summary.resumed_from_step, "fingerprint": summary.extra["fingerprint"]}


def load_result(job: PretrainJob, summary: dict[str, Any]):
    """The trained model from the job's end state, checked against what the worker said it trained."""
    out = Path(job.out_dir)
    meta = lm.read_checkpoint_meta(out)
    if meta["extra"].get("fingerprint") != summary.get("fingerprint") or meta["step"] != summary.get("end_step"):
        raise ValueError(f"{out}: holds step {meta['step']} of job {meta['extra'].get('fingerprint')}, not the "
                         f"reported step {summary.get('end_step')} of job {summary.get('fingerprint')}")
    model = lm.build_causal_lm(lm.LMArchitecture.from_dict(job.arch), job.model_seed)
    load_model(model, out / lm.MODEL_FILE, strict=True)
    return model
