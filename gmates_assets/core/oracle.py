"""Oracle probing (docs/method.md §3.1): group-level influence labels from short training rollouts.

For each rollout (x_0 .. x_{T-1}) the probe model M_0 (weights and full AdamW state from the checkpoint) is
restored, then trained one AdamW step per element on that single sequence; after each step the reference loss
is measured and c_t = L_ref(M_{t+1}) - L_ref(M_0) is recorded (cumulative deltas; negative = good).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import polars as pl
import torch

from .hashing import hash_dir, stable_hash
from .lm import (
    ReferenceSet,
    TokenSequences,
    as_token_sequences,
    autocast_context,
    deterministic_torch,
    load_checkpoint,
    resolve_device,
    sequence_loss,
    set_lr,
)
from .progress import PROGRESS_FILE, ChunkProgress, ProgressFn, atomic_write_bytes, atomic_write_text

ROLLOUTS_FILE = "rollouts.parquet"
ORACLE_META_FILE = "oracle.json"
ROLLOUT_SCHEMA = {
    "rollout_id": pl.Int64,
    "seed": pl.Int32,
    "position": pl.Int32,
    "item": pl.Int64,
    "doc_id": pl.String,
    "cumulative_delta": pl.Float64,
    "base_loss": pl.Float64,
}


# ----------------------------------------------------------------------------------------------------------
# Sampling


def sample_probe_pool(n_total_docs: int, pool_size: int, seed: int) -> np.ndarray:
    """Sorted indices of `pool_size` distinct items drawn uniformly from range(n_total_docs)."""
    if not 0 < pool_size <= n_total_docs:
        raise ValueError(f"pool_size: must be in [1, n_total_docs={n_total_docs}], got {pool_size}")
    chosen = np.random.default_rng(seed).choice(n_total_docs, size=pool_size, replace=False)
    return np.sort(chosen).astype(np.int64)


def sample_random_rollouts(pool_size: int, n_rollouts: int, length: int, seed: int) -> np.ndarray:
    """int64 [n_rollouts, length] of probe-pool indices, distinct within a rollout (docs/method.md §2 A6).

    As in the reference code: numpy's legacy generator seeded with the seed id, one permutation of the pool
    per rollout, its first `length` entries.
    """
    if not 0 < length <= pool_size:
        raise ValueError(f"length: must be in [1, pool_size={pool_size}], got {length}")
    if n_rollouts < 0:
        raise ValueError(f"n_rollouts: must be >= 0, got {n_rollouts}")
    rng = np.random.RandomState(seed)
    rollouts = np.empty((n_rollouts, length), dtype=np.int64)
    for r in range(n_rollouts):
        rollouts[r] = rng.permutation(pool_size)[:length]
    return rollouts


# ----------------------------------------------------------------------------------------------------------
# Cumulative <-> marginal influence


LABEL_CONVERSIONS = ("first_difference", "official_inplace")


def marginals_from_cumulative(cumulative: np.ndarray, conversion: str = "first_difference") -> np.ndarray:
    """Marginal influences along the last axis ([R, T] or [T]) of cumulative deltas c.

    first_difference: I_0 = c_0, I_t = c_t - c_{t-1} (method.md §1). official_inplace: the official code's
    in-place loop, which subtracts the already converted previous entry, I_t = c_t - I_{t-1}, i.e. the
    alternating sums c_t - c_{t-1} + c_{t-2} - ...; c = [1, 3, 6, 10] gives [1, 2, 4, 6] instead of [1, 2, 3, 4].
    """
    c = np.asarray(cumulative, dtype=np.float64)
    if c.ndim not in (1, 2):
        raise ValueError(f"cumulative: expected [T] or [R, T], got shape {c.shape}")
    if conversion not in LABEL_CONVERSIONS:
        raise ValueError(f"conversion: expected one of {LABEL_CONVERSIONS}, got {conversion!r}")
    marginals = c.copy()
    if conversion == "first_difference":
        marginals[..., 1:] = c[..., 1:] - c[..., :-1]
        return marginals
    for t in range(1, c.shape[-1]):
        marginals[..., t] -= marginals[..., t - 1]
    return marginals


def cumulative_from_marginals(marginals: np.ndarray) -> np.ndarray:
    """Inverse of marginals_from_cumulative: a cumulative sum along the last axis."""
    m = np.asarray(marginals, dtype=np.float64)
    if m.ndim not in (1, 2):
        raise ValueError(f"marginals: expected [T] or [R, T], got shape {m.shape}")
    return np.cumsum(m, axis=-1)


# ----------------------------------------------------------------------------------------------------------
# The rollout engine


class RolloutProber:
    """Holds M_0 (weights + AdamW state) in memory and replays rollouts from it.

    Restoring copies the pristine tensors back in place (no disk reads, no reallocation), so every rollout
    starts from bit-identical weights, moments and step counts.
    """

    def __init__(self, model, optimizer, reference: ReferenceSet, z_loss: float, grad_clip: float,
                 precision: str = "fp32"):
        self.model, self.optimizer, self.reference = model, optimizer, reference
        self.z_loss, self.grad_clip = z_loss, grad_clip
        self.autocast = lambda: autocast_context(precision, next(model.parameters()).device)
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        self.pristine_params = [p.detach().clone() for p in self.params]
        self.pristine_state = [
            {k: v.detach().clone() for k, v in optimizer.state[p].items()} if p in optimizer.state else None
            for p in self.params
        ]
        self.pristine_lrs = [group["lr"] for group in optimizer.param_groups]
        self.model.eval()  # dropout off for both the steps and L_ref, whatever the checkpoint's config says

    @torch.no_grad()
    def restore(self) -> None:
        for p, saved, saved_state in zip(self.params, self.pristine_params, self.pristine_state):
            p.copy_(saved)
            p.grad = None
            if saved_state is None:
                self.optimizer.state.pop(p, None)
                continue
            state = self.optimizer.state.get(p)
            if state is None or set(state) != set(saved_state):
                self.optimizer.state[p] = {k: v.clone() for k, v in saved_state.items()}
            else:
                for key, value in saved_state.items():
                    state[key].copy_(value)
        for group, lr in zip(self.optimizer.param_groups, self.pristine_lrs):
            group["lr"] = lr

    def train_step(self, tokens: torch.Tensor, labels: torch.Tensor) -> None:
        """One AdamW step on one sequence (batch 1): CE + z-loss, grad-norm clip."""
        with self.autocast():
            loss, _ = sequence_loss(self.model, tokens, labels, self.z_loss)
        loss.backward()
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def reference_loss(self) -> float:
        with self.autocast():
            return self.reference.loss(self.model)

    def run(self, tokens: torch.Tensor, labels: torch.Tensor, base_loss: float) -> list[float]:
        """Cumulative deltas c_t for one rollout given its sequences as tokens [T, L+1], labels [T, L]."""
        self.restore()
        deltas = []
        for t in range(tokens.shape[0]):
            self.train_step(tokens[t : t + 1], labels[t : t + 1])
            deltas.append(self.reference_loss() - base_loss)
        return deltas


# ----------------------------------------------------------------------------------------------------------
# Chunked, resumable probing


@dataclass
class OracleSummary:
    out_dir: str
    base_loss: float
    lr: float
    lr_source: str  # "checkpoint" or "override"
    n_rollouts: int
    length: int
    chunks_computed: int  # chunks this call computed (0 when the finished result was already there)
    chunks_resumed: int  # chunks found committed by an earlier, interrupted call


def _chunk_path(out_dir: Path, chunk: int) -> Path:
    return out_dir / f"chunk-{chunk:05d}.parquet"


def _parquet_bytes(frame: pl.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.write_parquet(buffer, compression="zstd", statistics=True)
    return buffer.getvalue()


def _chunk_frame(rollout_ids, seed, items, doc_ids, deltas, base_loss) -> pl.DataFrame:
    n, length = items.shape
    return pl.DataFrame(
        {
            "rollout_id": np.repeat(rollout_ids, length),
            "seed": np.full(n * length, seed, dtype=np.int32),
            "position": np.tile(np.arange(length, dtype=np.int32), n),
            "item": items.reshape(-1),
            "doc_id": [doc_ids[i] if doc_ids is not None else "" for i in items.reshape(-1)],
            "cumulative_delta": np.asarray(deltas, dtype=np.float64).reshape(-1),
            "base_loss": np.full(n * length, base_loss, dtype=np.float64),
        },
        schema=ROLLOUT_SCHEMA,
    )


def _validate_rollouts(rollouts: np.ndarray, n_items: int) -> np.ndarray:
    array = np.asarray(rollouts)
    if array.ndim != 2 or array.shape[1] < 1 or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"rollouts: expected an integer array [R, T] with T >= 1, got {array.dtype} {array.shape}")
    if array.size and (array.min() < 0 or array.max() >= n_items):
        bad = np.argwhere((array < 0) | (array >= n_items))[0]
        raise ValueError(f"rollouts[{bad[0]}, {bad[1]}]: item {array[tuple(bad)]} outside the probe pool "
                         f"of {n_items} sequences")
    return array.astype(np.int64, copy=False)


def _array_hash(array: np.ndarray) -> str:
    digest = hashlib.sha256(str(array.shape).encode())
    digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def probe_rollouts(
    checkpoint_dir: str | os.PathLike,
    sequences: TokenSequences | np.ndarray,
    ref_batches,
    rollouts: np.ndarray,
    out_dir: str | os.PathLike,
    chunk_rollouts: int,
    lr_policy: str | float = "checkpoint",
    seed: int = 0,
    progress: ProgressFn = None,
    device=None,
    doc_ids: Optional[Sequence[str]] = None,
    rollout_ids: Optional[np.ndarray] = None,
    z_loss: float = 1e-4,
    grad_clip: float = 1.0,
    precision: str = "fp32",
) -> OracleSummary:
    """Probe every rollout from the checkpoint and write rollouts.parquet + oracle.json into out_dir.

    sequences: the probe pool ([N, L+1] packed ids, or TokenSequences with a label mask); rollouts index it.
    ref_batches: (input_ids, labels) pairs, labels -100 off the answer (lm.make_reference_batches).
    lr_policy: "checkpoint" keeps the LR saved in the checkpoint's param groups (docs/method.md §3.1 item 3);
    a float overrides it. seed: the oracle seed, stored per row; rollout_ids default to seed * R + r.
    precision: "fp32", or "bf16" autocast for the training steps and reference losses (the official default).
    Work is committed every `chunk_rollouts` rollouts (chunk-NNNNN.parquet) and a killed call resumes from
    the committed chunks; the finished files are byte-identical to an uninterrupted run, whatever
    `chunk_rollouts` is (it is not recorded, and every rollout starts from the checkpoint).
    """
    if chunk_rollouts < 1:
        raise ValueError(f"chunk_rollouts: must be >= 1, got {chunk_rollouts}")
    data = as_token_sequences(sequences)
    rollouts = _validate_rollouts(rollouts, len(data))
    n_rollouts, length = rollouts.shape
    if doc_ids is not None and len(doc_ids) != len(data):
        raise ValueError(f"doc_ids: {len(doc_ids)} ids for {len(data)} probe-pool sequences")
    if rollout_ids is None:
        rollout_ids = seed * n_rollouts + np.arange(n_rollouts, dtype=np.int64)
    rollout_ids = np.asarray(rollout_ids, dtype=np.int64)
    if rollout_ids.shape != (n_rollouts,):
        raise ValueError(f"rollout_ids: expected shape ({n_rollouts},), got {rollout_ids.shape}")
    if not (lr_policy == "checkpoint" or isinstance(lr_policy, (int, float)) and not isinstance(lr_policy, bool)):
        raise ValueError(f"lr_policy: expected 'checkpoint' or a float, got {lr_policy!r}")

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(device)
    reference = ReferenceSet(ref_batches, device)
    fingerprint = stable_hash({
        "checkpoint": hash_dir(checkpoint_dir),
        "sequences": data.content_hash(),
        "reference": reference.content_hash(),
        "rollouts": _array_hash(rollouts),
        "rollout_ids": _array_hash(rollout_ids),
        "doc_ids": stable_hash(list(doc_ids)) if doc_ids is not None else None,
        "lr_policy": lr_policy,
        "seed": seed,
        "z_loss": z_loss,
        "grad_clip": grad_clip,
        "precision": precision,
    })
    finished = _finished_summary(out, fingerprint)
    if finished is not None:
        return finished

    model, optimizer, state = load_checkpoint(checkpoint_dir, device)
    checkpoint_lr = float(state["lr"])
    if lr_policy != "checkpoint":
        set_lr(optimizer, float(lr_policy))
    lr_used = float(optimizer.param_groups[0]["lr"])

    tokens, labels, rollout_rows = (torch.tensor(a, device=device) for a in (data.tokens, data.labels, rollouts))
    # Chunk numbers depend on chunk_rollouts, so progress is kept per chunking; the result never is (each rollout
    # restarts from the checkpoint, so the stored bytes are the same for every commit_every_rollouts).
    chunk_progress = ChunkProgress(out, stable_hash({"job": fingerprint, "chunk_rollouts": chunk_rollouts}),
                                   n_rollouts, "rollouts", chunk_rollouts)
    n_chunks = -(-n_rollouts // chunk_rollouts)
    computed = resumed = 0
    with deterministic_torch():
        prober = RolloutProber(model, optimizer, reference, z_loss, grad_clip, precision)
        base_loss = prober.reference_loss()  # L_ref(M_0), measured once per call
        for chunk in range(n_chunks):
            lo, hi = chunk * chunk_rollouts, min((chunk + 1) * chunk_rollouts, n_rollouts)
            if chunk_progress.is_done(chunk) and _chunk_path(out, chunk).is_file():
                resumed += 1
            else:
                deltas = []
                for r in range(lo, hi):
                    idx = rollout_rows[r]
                    deltas.append(prober.run(tokens[idx], labels[idx], base_loss))
                frame = _chunk_frame(rollout_ids[lo:hi], seed, rollouts[lo:hi], doc_ids, deltas, base_loss)
                atomic_write_bytes(_chunk_path(out, chunk), _parquet_bytes(frame))
                chunk_progress.mark_done(chunk)
                computed += 1
            if progress is not None:
                progress(hi, n_rollouts, "rollouts")

    meta = {
        "fingerprint": fingerprint,
        "base_loss": base_loss,
        "lr": lr_used,
        "lr_source": "checkpoint" if lr_policy == "checkpoint" else "override",
        "checkpoint_lr": checkpoint_lr,
        "checkpoint_step": int(state["step"]),
        "length": length,
        "n_rollouts": n_rollouts,
        "n_rows": n_rollouts * length,
        "n_pool_sequences": len(data),
        "seq_len": data.seq_len,
        "n_reference_batches": len(reference.batches),
        "seed": seed,
        "z_loss": z_loss,
        "grad_clip": grad_clip,
        "precision": precision,
        "delta": "cumulative: c_t = L_ref(M_{t+1}) - L_ref(M_0)",
    }
    _finish(out, n_chunks, meta, chunk_progress)
    return _summary(out, meta, computed, resumed)


def _finish(out: Path, n_chunks: int, meta: dict, chunk_progress: ChunkProgress) -> None:
    """Concatenate the chunks into rollouts.parquet, write oracle.json, then drop chunks and bookkeeping."""
    frames = [pl.read_parquet(_chunk_path(out, chunk)) for chunk in range(n_chunks)]
    table = pl.concat(frames, rechunk=True) if frames else pl.DataFrame(schema=ROLLOUT_SCHEMA)
    atomic_write_bytes(out / ROLLOUTS_FILE, _parquet_bytes(table))
    atomic_write_text(out / ORACLE_META_FILE, json.dumps(meta, indent=2, sort_keys=True) + "\n")
    for chunk in out.glob("chunk-*.parquet"):  # this chunking's, and any an earlier chunking left behind
        chunk.unlink()
    chunk_progress.finish()


def _finished_summary(out: Path, fingerprint: str) -> Optional[OracleSummary]:
    meta_path = out / ORACLE_META_FILE
    if not (meta_path.is_file() and (out / ROLLOUTS_FILE).is_file()):
        return None
    meta = json.loads(meta_path.read_text())
    if meta.get("fingerprint") != fingerprint:
        return None
    for stale in out.glob("chunk-*.parquet"):  # a kill after oracle.json was written can leave these
        stale.unlink()
    (out / PROGRESS_FILE).unlink(missing_ok=True)
    return _summary(out, meta, 0, 0)


def _summary(out: Path, meta: dict, computed: int, resumed: int) -> OracleSummary:
    return OracleSummary(
        out_dir=str(out), base_loss=meta["base_loss"], lr=meta["lr"], lr_source=meta["lr_source"],
        n_rollouts=meta["n_rollouts"], length=meta["length"], chunks_computed=computed, chunks_resumed=resumed,
    )


def read_rollouts(out_dir: str | os.PathLike) -> tuple[pl.DataFrame, np.ndarray, np.ndarray]:
    """(table, items [R, T], cumulative [R, T]) from a finished oracle directory, in the probed order."""
    table = pl.read_parquet(Path(out_dir) / ROLLOUTS_FILE)
    length = int(table["position"].max()) + 1 if table.height else 0
    n = table.height // max(length, 1)
    items = table["item"].to_numpy().reshape(n, length)
    cumulative = table["cumulative_delta"].to_numpy().reshape(n, length)
    return table, items, cumulative
