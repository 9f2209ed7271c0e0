"""Per-rank bodies of the data-parallel tests, started by torch.multiprocessing (kept apart from the test
modules so that a spawned rank imports little)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from gmates_assets.core import lm

from .tiny import TINY


class Interrupted(Exception):
    pass


def padded_docs() -> lm.TokenSequences:
    """Documents of uneven length, one per row: ranks see different numbers of targets in every batch."""
    from .tiny import counting_docs

    return lm.document_sequences(counting_docs(np.random.default_rng(3), 40), seq_len=16, pad_id=0, eos_id=63)


CFG = lm.OptimConfig(lr=3e-3, min_lr=3e-5, warmup_steps=2, total_steps=12)
STEPS, BATCH, SEED = 6, 8, 5


def train(out_dir: Path, replicas: lm.Replicas = lm.SINGLE_PROCESS, **kwargs) -> lm.TrainSummary:
    model = lm.build_causal_lm(TINY, seed=0)
    return lm.train_lm(model, padded_docs(), CFG, STEPS, BATCH, SEED, out_dir, checkpoint_every=2, device="cpu",
                       replicas=replicas, **kwargs)


def interrupt_after_step_3(done, total, unit):
    if done == 3:
        raise Interrupted("simulated kill of every rank after step 3")


def run_rank(rank: int, world: int, root: str) -> None:
    """An uninterrupted DDP run into root/full; a run killed after step 3 and resumed in root/crashed."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{root}/rendezvous", rank=rank, world_size=world)
    try:
        replicas = lm.Replicas(rank, world)
        full = train(Path(root) / "full", replicas)
        try:
            train(Path(root) / "crashed", replicas, progress=interrupt_after_step_3)
        except Interrupted:
            pass
        kept = sorted(os.listdir(Path(root) / "crashed" / "checkpoints"))
        resumed = train(Path(root) / "crashed", replicas)
        if rank == 0:
            report = {"full_losses": full.losses, "full_tokens": full.tokens_seen, "kept": kept,
                      "resumed_from": resumed.resumed_from_step, "resumed_losses": resumed.losses}
            (Path(root) / "report.json").write_text(json.dumps(report))
    finally:
        dist.destroy_process_group()
