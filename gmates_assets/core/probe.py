"""Stage 1 of the paper's two stages (docs/method.md §2 A3, §8): warm the probe model up on random pool data and
keep model + optimizer state at `save_step`, the checkpoint every oracle rollout restores."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from . import lm
from .progress import ProgressFn
from .tokenize import RaggedShards


@dataclass(frozen=True)
class WarmUpConfig:
    arch: lm.LMArchitecture
    optim: lm.OptimConfig  # total_steps = the length of the schedule (stage 1)
    save_step: int
    batch_size: int
    seq_len: int
    seed: int
    sample_docs: Optional[int] = None  # a seeded sample of pool documents; all if None
    checkpoint_every: int = 50


def sample_documents(n_docs: int, sample_docs: Optional[int], seed: int) -> np.ndarray:
    """Sorted indices of the documents the warm-up trains on."""
    if not sample_docs or sample_docs >= n_docs:
        return np.arange(n_docs, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).choice(n_docs, sample_docs, replace=False))


def warm_up(documents: RaggedShards, eos_id: int, config: WarmUpConfig, out_dir: Path,
            progress: ProgressFn = None, device=None, pick: Optional[np.ndarray] = None) -> dict:
    """Train from scratch for `save_step` steps of a `optim.total_steps` schedule; resumable in `out_dir`.

    `pick`: the documents to train on (sorted global indices; the shell's stable sample), else a positional
    sample of `sample_docs`. The sampled documents are packed shard by shard into a scratch file under out_dir
    (removed afterwards).
    """
    if pick is None:
        pick = sample_documents(len(documents), config.sample_docs, config.seed)
    model = lm.build_causal_lm(config.arch, config.seed)
    with lm.packed_scratch(documents.rows(pick), config.seq_len, eos_id, out_dir) as sequences:
        summary = lm.train_lm(model, sequences, config.optim, steps=config.save_step,
                              batch_size=config.batch_size, seed=config.seed, out_dir=out_dir,
                              checkpoint_every=config.checkpoint_every, progress=progress, device=device)
    losses = list(summary.losses)
    return {"steps": config.save_step, "schedule_steps": config.optim.total_steps, "sequences": int(len(sequences)),
            "tokens_seen": int(summary.tokens_seen), "final_loss": round(float(losses[-1]), 4) if losses else None,
            "parameters": lm.count_parameters(model), "losses": losses}
