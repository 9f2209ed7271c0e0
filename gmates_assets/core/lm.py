"""Causal LMs for the probe and target models (docs/method.md §3.1, §3.8, §8).

- a transformers model factory (Llama or GPT-NeoX layout, any size, seeded init);
- token windows: packed sequences (open_lm style; in memory, or streamed into a file that training reads
  batch by batch) and one-document-per-row sequences with a label mask;
- a plain AdamW loop (warmup + cosine to min_lr, grad-norm clip, open_lm z-loss, optional bf16 autocast)
  that checkpoints as it goes and resumes to a byte-identical end state; the same loop runs data-parallel
  under torch.distributed (`Replicas`: one process per device, e.g. launched by torchrun);
- checkpoint IO without pickle: safetensors for weights and optimizer moments, JSON for hyperparameters;
- the reference loss L_ref: token-mean CE over answer tokens, averaged over batches.

A training sequence is a row of L+1 token ids: the model reads the first L and predicts the last L. Its
`labels` row holds those L targets with -100 where no loss is taken (padding).
"""
from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import math
import os
import shutil
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, load_model, save_file, save_model

from .devices import resolve_device
from .hashing import hash_dir, stable_hash
from .progress import ProgressFn, atomic_write_text
from .rows import RowFile

IGNORE_INDEX = -100
FAMILIES = ("llama", "gpt_neox")
SCHEDULES = ("cosine", "constant")

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
OPTIMIZER_META_FILE = "optimizer.json"  # written last: its presence marks a complete checkpoint
CONFIG_FILE = "config.json"
CHECKPOINT_FORMAT = "gmates-adamw-checkpoint-v1"
_STATE_KEYS = ("exp_avg", "exp_avg_sq", "step")


@contextlib.contextmanager
def deterministic_torch() -> Iterator[None]:
    """Ask torch for deterministic kernels for the duration (matters on CUDA), then restore the setting."""
    was_on = torch.are_deterministic_algorithms_enabled()
    was_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # only effective before cuBLAS starts
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was_on, warn_only=was_warn_only)


PRECISIONS = ("fp32", "bf16")


def autocast_context(precision: str, device: str | torch.device):
    """fp32: no autocast. bf16: torch.autocast to bfloat16 on the device's type (open_lm's amp_bfloat16, the
    official code's default); weights, optimizer state and the loss reduction stay float32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


# ----------------------------------------------------------------------------------------------------------
# Model factory


@dataclass(frozen=True)
class LMArchitecture:
    family: str
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_seq_len: int
    vocab_size: int
    tie_word_embeddings: bool = False

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"LMArchitecture.family: {self.family!r} is not one of {FAMILIES}")
        for name in ("hidden_size", "num_layers", "num_heads", "intermediate_size", "max_seq_len", "vocab_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"LMArchitecture.{name}: must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"LMArchitecture.hidden_size: {self.hidden_size} is not divisible by num_heads {self.num_heads}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> LMArchitecture:
        return cls(**values)


def hf_config(arch: LMArchitecture):
    """transformers config for the architecture; dropout is 0 and no special token ids are assumed."""
    from transformers import GPTNeoXConfig, LlamaConfig

    common = dict(
        vocab_size=arch.vocab_size,
        hidden_size=arch.hidden_size,
        num_hidden_layers=arch.num_layers,
        num_attention_heads=arch.num_heads,
        intermediate_size=arch.intermediate_size,
        max_position_embeddings=arch.max_seq_len,
        tie_word_embeddings=arch.tie_word_embeddings,
        use_cache=False,
        attention_dropout=0.0,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    if arch.family == "llama":
        config = LlamaConfig(num_key_value_heads=arch.num_heads, **common)
    else:
        config = GPTNeoXConfig(hidden_dropout=0.0, **common)
    config.gmates_architecture = arch.to_dict()
    return config


def build_causal_lm(arch: LMArchitecture, seed: int):
    """A freshly initialised causal LM; the same (arch, seed) always gives the same weights."""
    return _model_from_config(hf_config(arch), seed)


def _model_from_config(config, seed: int):
    from transformers import AutoModelForCausalLM

    # fork_rng keeps the caller's global RNG untouched while the init draws from a seeded one.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    return model.float()


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------------------------------------
# Token data


@dataclass(frozen=True)
class TokenSequences:
    """Rows of L+1 token ids (`tokens`, int64 [m, L+1]) and their L next-token targets (`labels`, int64
    [m, L], -100 where no loss is taken)."""

    tokens: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        if self.tokens.ndim != 2 or self.tokens.shape[1] < 2:
            raise ValueError(f"TokenSequences.tokens: expected shape [m, L+1] with L >= 1, got {self.tokens.shape}")
        expected = (self.tokens.shape[0], self.tokens.shape[1] - 1)
        if self.labels.shape != expected:
            raise ValueError(f"TokenSequences.labels: expected shape {expected}, got {self.labels.shape}")

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.labels.shape[1])

    def content_hash(self) -> str:
        digest = hashlib.sha256()
        for array in (self.tokens, self.labels):
            digest.update(str(array.shape).encode())
            digest.update(np.ascontiguousarray(array, dtype=np.int64).tobytes())
        return digest.hexdigest()

    def batch(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.tokens[index], self.labels[index]

    def token_bounds(self) -> Optional[tuple[int, int]]:
        return (int(self.tokens.min()), int(self.tokens.max())) if self.tokens.size else None


@dataclass(frozen=True)
class PackedSequences:
    """Packed rows [m, L+1] (every next token is a target) in a raw int32 file, read one batch at a time.

    Behaves in training exactly like `TokenSequences(rows, rows[:, 1:])` of the same rows (same batches, same
    content hash) without holding them: `pack_sequences_to_file` writes it from a stream of documents.
    """

    path: Path
    n_rows: int
    width: int
    bounds: Optional[tuple[int, int]]  # smallest and largest token id, None when empty

    def __len__(self) -> int:
        return self.n_rows

    @property
    def seq_len(self) -> int:
        return self.width - 1

    def _rows(self) -> RowFile:
        return RowFile(self.path, (self.n_rows, self.width), np.int32)

    def batch(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows = self._rows()[index].astype(np.int64)
        return rows, rows[:, 1:].copy()

    def token_bounds(self) -> Optional[tuple[int, int]]:
        return self.bounds

    def content_hash(self, block_rows: int = 1 << 14) -> str:
        """TokenSequences.content_hash of the same rows, read block by block."""
        digest = hashlib.sha256()
        rows = self._rows()
        for shape, columns in (((self.n_rows, self.width), slice(None)), ((self.n_rows, self.seq_len), slice(1, None))):
            digest.update(str(shape).encode())
            for start in range(0, self.n_rows, block_rows):
                block = rows[start:start + block_rows].astype(np.int64)
                digest.update(np.ascontiguousarray(block[:, columns]).tobytes())
        return digest.hexdigest()


def as_token_sequences(sequences: TokenSequences | np.ndarray) -> TokenSequences:
    """Accept TokenSequences, or a packed int array [m, L+1] whose every next token is a target."""
    if isinstance(sequences, TokenSequences):
        return TokenSequences(np.asarray(sequences.tokens, np.int64), np.asarray(sequences.labels, np.int64))
    tokens = np.asarray(sequences)
    if tokens.ndim != 2 or not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(f"sequences: expected an integer array [m, L+1], got {tokens.dtype} {tokens.shape}")
    tokens = tokens.astype(np.int64, copy=False)
    return TokenSequences(tokens, tokens[:, 1:].copy())


def pack_sequences(token_lists: Iterable[Sequence[int]], seq_len: int, eos_id: int) -> np.ndarray:
    """Concatenate documents, each followed by EOS, and cut the stream into rows of seq_len+1 tokens.

    Rows do not overlap and the incomplete tail is dropped (open_lm / DCLM packing, docs/method.md §2 A2).
    """
    blocks = list(iter_packed_rows(token_lists, seq_len, eos_id))
    return np.concatenate(blocks) if blocks else np.zeros((0, seq_len + 1), np.int64)


def iter_packed_rows(token_lists: Iterable[Sequence[int]], seq_len: int, eos_id: int,
                     block_tokens: int = 1 << 20) -> Iterator[np.ndarray]:
    """The rows of pack_sequences, int64 [r, seq_len+1] blocks of about block_tokens, as documents stream in."""
    if seq_len < 1:
        raise ValueError(f"seq_len: must be >= 1, got {seq_len}")
    width = seq_len + 1
    eos = np.array([eos_id], dtype=np.int64)
    pending: list[np.ndarray] = []
    size = 0
    for doc in token_lists:
        pending += [np.asarray(doc, dtype=np.int64).reshape(-1), eos]
        size += pending[-2].size + 1
        if size >= block_tokens:
            rows, rest = _cut_rows(np.concatenate(pending), width)
            pending, size = [rest], rest.size
            yield rows
    rows, _ = _cut_rows(np.concatenate(pending) if pending else np.zeros(0, np.int64), width)
    if len(rows):
        yield rows


def _cut_rows(stream: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    n_rows = stream.size // width
    return stream[: n_rows * width].reshape(n_rows, width), stream[n_rows * width:]


def pack_sequences_to_file(token_lists: Iterable[Sequence[int]], seq_len: int, eos_id: int,
                           path: str | os.PathLike) -> PackedSequences:
    """pack_sequences written block by block to `path` (int32): memory holds one block, not the rows."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    n_rows, low, high = 0, None, None
    with open(target, "wb") as handle:
        for rows in iter_packed_rows(token_lists, seq_len, eos_id):
            lo, hi = int(rows.min()), int(rows.max())
            if lo < 0 or hi > np.iinfo(np.int32).max:
                raise ValueError(f"token ids span [{lo}, {hi}], outside int32")
            low, high = (lo, hi) if low is None else (min(low, lo), max(high, hi))
            handle.write(rows.astype(np.int32).tobytes())
            n_rows += len(rows)
    return PackedSequences(target, n_rows, seq_len + 1, None if low is None else (low, high))


PACKED_SCRATCH_NAME = ".packed-sequences.int32"


@contextlib.contextmanager
def packed_scratch(token_lists: Iterable[Sequence[int]], seq_len: int, eos_id: int,
                   directory: str | os.PathLike) -> Iterator[PackedSequences]:
    """pack_sequences_to_file into a scratch file under `directory` that is removed afterwards."""
    path = Path(directory) / PACKED_SCRATCH_NAME
    try:
        yield pack_sequences_to_file(token_lists, seq_len, eos_id, path)
    finally:
        path.unlink(missing_ok=True)


def document_sequences(
    token_lists: Sequence[Sequence[int]], seq_len: int, pad_id: int, eos_id: Optional[int] = None
) -> TokenSequences:
    """One document per row: optional EOS appended, truncated to seq_len+1 tokens, right-padded with pad_id.

    Targets that fall on padding carry -100. With right padding and causal attention, real tokens never
    attend to pads, so no attention mask is needed.
    """
    if seq_len < 1:
        raise ValueError(f"seq_len: must be >= 1, got {seq_len}")
    width = seq_len + 1
    tokens = np.full((len(token_lists), width), pad_id, dtype=np.int64)
    labels = np.full((len(token_lists), seq_len), IGNORE_INDEX, dtype=np.int64)
    for row, doc in enumerate(token_lists):
        ids = np.asarray(doc, dtype=np.int64).reshape(-1)
        if eos_id is not None:
            ids = np.append(ids, eos_id)
        ids = ids[:width]
        if ids.size < 2:
            raise ValueError(f"document {row}: has {ids.size} token(s); a training row needs at least 2")
        tokens[row, : ids.size] = ids
        labels[row, : ids.size - 1] = ids[1:]
    return TokenSequences(tokens, labels)


class SeededBatchSampler:
    """Batch indices as a pure function of (seed, step): epoch e visits a permutation seeded by (seed, e).

    Because a batch depends only on the step number, a resumed run sees exactly the batches an
    uninterrupted run would have seen, with no sampler state to save.
    """

    def __init__(self, n_items: int, batch_size: int, seed: int):
        if n_items < 1 or batch_size < 1:
            raise ValueError(f"SeededBatchSampler: need n_items >= 1 and batch_size >= 1, got {n_items}, {batch_size}")
        self.n_items, self.batch_size, self.seed = n_items, batch_size, seed
        self._cache: dict[int, np.ndarray] = {}

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if epoch not in self._cache:
            if len(self._cache) > 4:
                self._cache.clear()
            self._cache[epoch] = np.random.default_rng([self.seed, epoch]).permutation(self.n_items)
        return self._cache[epoch]

    def indices(self, step: int) -> np.ndarray:
        positions = step * self.batch_size + np.arange(self.batch_size, dtype=np.int64)
        epochs, offsets = np.divmod(positions, self.n_items)
        return np.array([self._epoch_order(int(e))[o] for e, o in zip(epochs, offsets)], dtype=np.int64)


# ----------------------------------------------------------------------------------------------------------
# Loss and optimizer


def lm_loss(logits: torch.Tensor, targets: torch.Tensor, z_loss: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(training loss, token-mean CE) for logits [B, L, V] against aligned targets [B, L] (-100 ignored).

    The z-loss term is z_loss * mean(logsumexp(logits)^2) over the target positions (open_lm's 1e-4 · lse²).
    """
    logits = logits.float()
    flat_logits = logits.reshape(-1, logits.shape[-1])
    flat_targets = targets.reshape(-1)
    ce = F.cross_entropy(flat_logits, flat_targets, ignore_index=IGNORE_INDEX)
    if not z_loss:
        return ce, ce
    mask = flat_targets != IGNORE_INDEX
    lse = torch.logsumexp(flat_logits[mask], dim=-1)
    return ce + z_loss * lse.square().mean(), ce


def sequence_loss(model, tokens: torch.Tensor, labels: torch.Tensor, z_loss: float = 0.0):
    """Loss of a batch of training rows: tokens [B, L+1] (the model reads the first L), labels [B, L]."""
    logits = model(input_ids=tokens[:, :-1]).logits
    return lm_loss(logits, labels, z_loss)


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 3e-3
    min_lr: float = 3e-5
    warmup_steps: int = 0
    total_steps: int = 1000
    weight_decay: float = 0.033
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    grad_clip: float = 1.0
    z_loss: float = 1e-4
    schedule: str = "cosine"

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"OptimConfig.schedule: {self.schedule!r} is not one of {SCHEDULES}")
        if self.total_steps < 1 or self.warmup_steps < 0:
            raise ValueError(
                f"OptimConfig: need total_steps >= 1 and warmup_steps >= 0, got {self.total_steps}, {self.warmup_steps}"
            )
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))

    def lr_at(self, step: int) -> float:
        """LR of optimizer step `step` (0-based): linear warmup (open_lm's (step+1)/warmup), then cosine
        from lr to min_lr over the remaining steps; min_lr after total_steps."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        if self.schedule == "constant":
            return self.lr
        decay_steps = self.total_steps - self.warmup_steps
        if decay_steps <= 0 or step >= self.total_steps:
            return self.min_lr
        progress = (step - self.warmup_steps) / decay_steps
        return self.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (self.lr - self.min_lr)

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["betas"] = list(self.betas)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> OptimConfig:
        return cls(**values)


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig, step: int = 0) -> torch.optim.AdamW:
    # One group with weight decay on every parameter, as open_lm builds it (its no-decay group is empty).
    return torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=cfg.lr_at(step),
        betas=cfg.betas,
        eps=cfg.eps,
        weight_decay=cfg.weight_decay,
    )


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


# ----------------------------------------------------------------------------------------------------------
# Checkpoint IO (no pickle)


def _param_names(model: torch.nn.Module) -> dict[int, str]:
    """id(parameter) -> name; tied parameters appear once, under their first name."""
    return {id(p): name for name, p in model.named_parameters()}


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.item()
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    return value


def _atomic_replace(write_to, target: Path) -> None:
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    write_to(str(tmp))
    os.replace(tmp, target)


def save_checkpoint(
    directory: str | os.PathLike,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler_step: int,
    extra: Optional[dict[str, Any]] = None,
) -> Path:
    """Write model.safetensors, optimizer.safetensors (per-parameter exp_avg / exp_avg_sq / step),
    config.json and optimizer.json (param groups incl. the LR in effect, step, extra; written last)."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    (out / OPTIMIZER_META_FILE).unlink(missing_ok=True)  # the checkpoint is incomplete until rewritten
    names = _param_names(model)
    _atomic_replace(lambda path: save_model(model, path, metadata={"format": "pt"}), out / MODEL_FILE)

    tensors: dict[str, torch.Tensor] = {}
    groups = []
    for group in optimizer.param_groups:
        group_names = []
        for p in group["params"]:
            if id(p) not in names:
                raise ValueError("save_checkpoint: the optimizer holds a parameter that is not in the model")
            name = names[id(p)]
            group_names.append(name)
            for key, value in optimizer.state.get(p, {}).items():
                if key not in _STATE_KEYS:
                    raise ValueError(f"save_checkpoint: unsupported optimizer state {key!r} for {name}")
                tensors[f"{name}.{key}"] = value.detach().to("cpu").contiguous()
        hyper = {k: _jsonable(v) for k, v in group.items() if k != "params"}
        groups.append({"params": group_names, **hyper})
    _atomic_replace(lambda path: save_file(tensors, path, metadata={"format": "pt"}), out / OPTIMIZER_FILE)
    atomic_write_text(out / CONFIG_FILE, json.dumps(model.config.to_dict(), indent=2, sort_keys=True) + "\n")
    meta = {
        "format": CHECKPOINT_FORMAT,
        "optimizer": type(optimizer).__name__,
        "step": int(scheduler_step),
        "param_groups": groups,
        "extra": extra or {},
    }
    atomic_write_text(out / OPTIMIZER_META_FILE, json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return out


def is_complete_checkpoint(directory: str | os.PathLike) -> bool:
    d = Path(directory)
    return all((d / name).is_file() for name in (MODEL_FILE, OPTIMIZER_FILE, CONFIG_FILE, OPTIMIZER_META_FILE))


def read_checkpoint_meta(directory: str | os.PathLike) -> dict[str, Any]:
    path = Path(directory) / OPTIMIZER_META_FILE
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{path}: missing; not a complete checkpoint") from exc
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: field 'format' is {meta.get('format')!r}, expected {CHECKPOINT_FORMAT!r}")
    return meta


def _adamw_kwargs(hyper: dict[str, Any]) -> dict[str, Any]:
    accepted = set(inspect.signature(torch.optim.AdamW.__init__).parameters) - {"self", "params"}
    kwargs = {k: v for k, v in hyper.items() if k in accepted}
    if "betas" in kwargs:
        kwargs["betas"] = tuple(kwargs["betas"])
    return kwargs


def load_optimizer_into(model: torch.nn.Module, directory: str | os.PathLike) -> tuple[torch.optim.AdamW, dict]:
    """AdamW over `model`'s parameters with the checkpoint's groups, hyperparameters and moments."""
    d = Path(directory)
    meta = read_checkpoint_meta(d)
    if meta.get("optimizer") != "AdamW":
        raise ValueError(f"{d / OPTIMIZER_META_FILE}: field 'optimizer' is {meta.get('optimizer')!r}, expected 'AdamW'")
    named = dict(model.named_parameters())
    groups = []
    for g_index, saved in enumerate(meta["param_groups"]):
        missing = [n for n in saved["params"] if n not in named]
        if missing:
            raise ValueError(f"{d / OPTIMIZER_META_FILE}: param_groups[{g_index}] names unknown parameters "
                             f"{missing[:3]}")
        groups.append({"params": [named[n] for n in saved["params"]], **_adamw_kwargs(saved)})
    optimizer = torch.optim.AdamW(groups)
    for group, saved in zip(optimizer.param_groups, meta["param_groups"]):
        for key, value in saved.items():  # keys the constructor does not take (e.g. initial_lr)
            if key != "params" and key not in group:
                group[key] = value
    tensors = load_file(str(d / OPTIMIZER_FILE))
    names = _param_names(model)
    for group in optimizer.param_groups:
        on_param_device = bool(group.get("fused")) or bool(group.get("capturable"))
        for p in group["params"]:
            name = names[id(p)]
            state = {}
            for key in _STATE_KEYS:
                if f"{name}.{key}" in tensors:
                    value = tensors.pop(f"{name}.{key}")
                    # AdamW keeps `step` on the CPU unless fused/capturable; moments live with the parameter.
                    state[key] = value.to(p.device) if key != "step" or on_param_device else value
            if state:
                if set(state) != set(_STATE_KEYS):
                    raise ValueError(f"{d / OPTIMIZER_FILE}: incomplete AdamW state for {name}: {sorted(state)}")
                optimizer.state[p] = state
    if tensors:
        raise ValueError(f"{d / OPTIMIZER_FILE}: tensors for unknown parameters, e.g. {sorted(tensors)[:3]}")
    return optimizer, meta


def load_checkpoint_into(model: torch.nn.Module, directory: str | os.PathLike, device=None):
    """Load weights into an existing model (moved to `device`), then its optimizer; -> (optimizer, state)."""
    d = Path(directory)
    device = resolve_device(device)
    model.to(device)
    load_model(model, d / MODEL_FILE, strict=True, device=str(device))
    optimizer, meta = load_optimizer_into(model, d)
    state = {"step": meta["step"], "extra": meta["extra"], "lr": optimizer.param_groups[0]["lr"]}
    return optimizer, state


def load_checkpoint(directory: str | os.PathLike, device=None):
    """-> (model, optimizer, state) with state = {"step", "lr" (first group's LR in effect), "extra"}."""
    from transformers import AutoConfig

    d = Path(directory)
    if not is_complete_checkpoint(d):
        raise FileNotFoundError(f"{d}: not a complete checkpoint (needs {MODEL_FILE}, {OPTIMIZER_FILE}, "
                                f"{CONFIG_FILE}, {OPTIMIZER_META_FILE})")
    config = AutoConfig.from_pretrained(str(d), trust_remote_code=False)
    model = _model_from_config(config, seed=0)  # weights are overwritten right away
    optimizer, state = load_checkpoint_into(model, d, device)
    return model, optimizer, state


def save_hf_pretrained(model, tokenizer_dir_or_obj, out_dir: str | os.PathLike) -> Path:
    """A folder that transformers' AutoModelForCausalLM and AutoTokenizer load (safetensors)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))  # transformers >= 5 always writes safetensors
    if tokenizer_dir_or_obj is None:
        return out
    tokenizer = tokenizer_dir_or_obj
    if isinstance(tokenizer, (str, os.PathLike)):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer), trust_remote_code=False)
    tokenizer.save_pretrained(str(out))
    return out


def weights_hash(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu").contiguous().numpy().tobytes())
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------------------
# Training loop


@dataclass
class TrainSummary:
    losses: list[float]  # token-mean CE of each step this job ran (resumed steps included)
    lrs: list[float]  # LR used by each of those steps
    tokens_seen: int  # target tokens consumed by those steps
    start_step: int  # global optimizer step the job started from (0, or start_state's step)
    end_step: int
    resumed_from_step: Optional[int] = None
    checkpoint_dir: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


CHECKPOINTS_SUBDIR = "checkpoints"


def _step_dir(out_dir: Path, step: int) -> Path:
    return out_dir / CHECKPOINTS_SUBDIR / f"step-{step:08d}"


def _find_resume_point(out_dir: Path, fingerprint: str, end_step: int) -> Optional[Path]:
    candidates = [out_dir]
    sub = out_dir / CHECKPOINTS_SUBDIR
    if sub.is_dir():
        candidates += sorted(p for p in sub.iterdir() if p.name.startswith("step-"))
    best, best_step = None, -1
    for directory in candidates:
        if not is_complete_checkpoint(directory):
            continue
        meta = read_checkpoint_meta(directory)
        if meta["extra"].get("fingerprint") != fingerprint:
            continue  # a different job's checkpoint is never resumed
        if meta["step"] > end_step:
            raise ValueError(f"{directory}: holds step {meta['step']} of this job, beyond the requested end {end_step}")
        if meta["step"] > best_step:
            best, best_step = directory, meta["step"]
    return best


@dataclass(frozen=True)
class Replicas:
    """This process's place among data-parallel trainers; the default (size 1) is the single-process trainer.

    With size W > 1 (a torch.distributed process group must be initialised), rank r trains on rows
    [r*B/W, (r+1)*B/W) of every global batch of B rows, through DistributedDataParallel, and its loss is scaled so
    that the synchronised gradient is the gradient of the *global* token-mean loss (not a mean of per-rank means,
    which ranks with different numbers of targets would bias). Every rank then takes the same optimizer step;
    only rank 0 writes checkpoints.
    """

    rank: int = 0
    size: int = 1

    def __post_init__(self) -> None:
        if self.size < 1 or not 0 <= self.rank < self.size:
            raise ValueError(f"Replicas: need 0 <= rank < size, got rank {self.rank}, size {self.size}")

    @classmethod
    def from_env(cls) -> Replicas:
        """RANK / WORLD_SIZE as torchrun sets them (a single process when they are absent)."""
        return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def check_batch(self, batch_size: int) -> None:
        if batch_size % self.size:
            raise ValueError(f"batch_size {batch_size} is not divisible by the data-parallel world size {self.size}: "
                             f"every rank takes an equal slice of each global batch")

    def local_rows(self, global_rows: np.ndarray) -> np.ndarray:
        share = len(global_rows) // self.size
        return global_rows[self.rank * share:(self.rank + 1) * share]

    def wrap(self, model, device: torch.device):
        if self.size == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    def loss(self, net, tokens: torch.Tensor, labels: torch.Tensor, z_loss: float):
        """(loss to backpropagate, global token-mean CE, global target count) of this step's batch."""
        if self.size == 1:
            loss, ce = sequence_loss(net, tokens, labels, z_loss)
            return loss, ce.detach(), int((labels != IGNORE_INDEX).sum())
        logits = net(input_ids=tokens[:, :-1]).logits.float()
        flat_logits, flat_targets = logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)
        mask = flat_targets != IGNORE_INDEX
        ce_sum = F.cross_entropy(flat_logits, flat_targets, ignore_index=IGNORE_INDEX, reduction="sum")
        objective = ce_sum
        if z_loss:
            objective = objective + z_loss * torch.logsumexp(flat_logits[mask], dim=-1).square().sum()
        totals = torch.stack([mask.sum().double(), ce_sum.detach().double()])
        torch.distributed.all_reduce(totals)  # one collective: global target count and CE sum
        count = max(int(totals[0]), 1)
        # DDP averages gradients over ranks, hence the factor W: the synchronised gradient is that of
        # (sum of every rank's CE + z-loss terms) / global count, the single-process token-mean loss.
        return objective * (self.size / count), (totals[1] / count).float(), int(totals[0])

    def barrier(self) -> None:
        if self.size > 1:
            torch.distributed.barrier()


SINGLE_PROCESS = Replicas()


def _apply_hyperparameters(optimizer: torch.optim.Optimizer, cfg: OptimConfig) -> None:
    for group in optimizer.param_groups:
        group.update(betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)


def train_lm(
    model,
    sequences: TokenSequences | PackedSequences | np.ndarray,
    optim_cfg: OptimConfig,
    steps: int,
    batch_size: int,
    seed: int,
    out_dir: str | os.PathLike,
    checkpoint_every: int,
    progress: ProgressFn = None,
    device=None,
    start_state: Optional[str | os.PathLike] = None,
    precision: str = "fp32",
    replicas: Replicas = SINGLE_PROCESS,
) -> TrainSummary:
    """Train `model` in place for `steps` AdamW steps on seeded batches of `sequences`.

    precision: "fp32", or "bf16" autocast around forward and loss (weights, gradients, AdamW state stay float32).
    replicas: this process's rank among data-parallel trainers (see `Replicas`); every rank calls train_lm with
    the same arguments, `batch_size` is the global batch and must be divisible by the world size. At world size
    W the result equals the single-process one up to float summation order.

    start_state: a checkpoint directory to continue from (weights, AdamW moments and global step; the LR
    schedule continues at that step), or None to start fresh at step 0.
    out_dir: checkpoints go to out_dir/checkpoints/step-N every `checkpoint_every` steps; the final state is
    written as a checkpoint into out_dir itself and the intermediates are removed. A later call with the same
    job (data, config, batch size, seed, initial weights) resumes from the newest checkpoint and ends
    byte-identical to an uninterrupted run; a call with more steps continues a finished job.
    """
    if steps < 0 or batch_size < 1 or checkpoint_every < 1:
        raise ValueError(f"train_lm: need steps >= 0, batch_size >= 1, checkpoint_every >= 1; "
                         f"got {steps}, {batch_size}, {checkpoint_every}")
    replicas.check_batch(batch_size)
    if precision not in PRECISIONS:
        raise ValueError(f"train_lm: precision must be one of {PRECISIONS}, got {precision!r}")
    data = sequences if isinstance(sequences, PackedSequences) else as_token_sequences(sequences)
    _check_fits(model, data)
    device = resolve_device(device)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.to(device)

    start_step = read_checkpoint_meta(start_state)["step"] if start_state is not None else 0
    end_step = start_step + steps
    fingerprint = stable_hash({
        "data": data.content_hash(),
        "optim": optim_cfg.to_dict(),
        "batch_size": batch_size,
        "seed": seed,
        "start": hash_dir(start_state) if start_state is not None else weights_hash(model),
        **_variant(precision, replicas),  # a bf16 or W-rank run's checkpoints are never resumed by another
    })

    resume_dir = _find_resume_point(out, fingerprint, end_step)
    source = resume_dir if resume_dir is not None else start_state
    record: dict[str, Any] = {"losses": [], "lrs": [], "tokens_seen": 0}  # this job's per-step log
    if source is not None:
        optimizer, state = load_checkpoint_into(model, source, device)
        _apply_hyperparameters(optimizer, optim_cfg)
        step = state["step"]
        if resume_dir is not None:
            record = state["extra"]["record"]
    else:
        optimizer = build_optimizer(model, optim_cfg, step=0)
        step = 0
    resumed_from = step if resume_dir is not None else None

    def extra() -> dict[str, Any]:
        return {"fingerprint": fingerprint, "start_step": start_step, "optim_config": optim_cfg.to_dict(),
                "batch_size": batch_size, "seed": seed, "record": record, **_variant(precision, replicas)}

    sampler = SeededBatchSampler(len(data), batch_size, seed)
    params = [p for p in model.parameters() if p.requires_grad]
    model.eval()  # dropout off: the configs use 0 anyway, and eval makes user checkpoints deterministic too
    net = replicas.wrap(model, device)  # under DDP: broadcasts rank 0's weights (all ranks loaded the same)
    with deterministic_torch():
        while step < end_step:
            idx = replicas.local_rows(sampler.indices(step - start_step))
            tokens, labels = (torch.from_numpy(a).to(device) for a in data.batch(idx))
            lr = optim_cfg.lr_at(step)
            set_lr(optimizer, lr)
            with autocast_context(precision, device):
                loss, ce, n_targets = replicas.loss(net, tokens, labels, optim_cfg.z_loss)
            loss.backward()
            if optim_cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, optim_cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            # Like a PyTorch scheduler, leave the *next* step's LR in the groups, so a saved checkpoint
            # carries the LR in effect at that point (what the oracle uses, docs/method.md §3.1 item 3).
            set_lr(optimizer, optim_cfg.lr_at(step))
            record["losses"].append(float(ce))
            record["lrs"].append(lr)
            record["tokens_seen"] += n_targets
            checkpoint_due = (step - start_step) % checkpoint_every == 0 or step == end_step
            if checkpoint_due and replicas.is_main:  # the ranks hold identical states: rank 0 writes
                _commit_intermediate(out, model, optimizer, step, extra())
            if progress is not None:
                progress(step - start_step, steps, "steps")
    if replicas.is_main:
        if not (resume_dir == out and resumed_from == end_step):  # else out_dir already holds the end state
            # The end state also sits in checkpoints/step-N (committed in the loop), so a kill while the root
            # files are rewritten loses nothing.
            save_checkpoint(out, model, optimizer, end_step, extra())
        shutil.rmtree(out / CHECKPOINTS_SUBDIR, ignore_errors=True)
    replicas.barrier()  # on every rank, train_lm returns once out_dir holds the end state
    return TrainSummary(
        losses=list(record["losses"]), lrs=list(record["lrs"]), tokens_seen=int(record["tokens_seen"]),
        start_step=start_step, end_step=end_step, resumed_from_step=resumed_from, checkpoint_dir=str(out),
        extra={"fingerprint": fingerprint},
    )


def _variant(precision: str, replicas: Replicas) -> dict[str, Any]:
    """What sets a job apart from the default fp32 single-process one (empty for it, so existing fingerprints
    and checkpoints stay as they were)."""
    return {**({"precision": precision} if precision != "fp32" else {}),
            **({"world_size": replicas.size} if replicas.size != 1 else {})}


def _commit_intermediate(out: Path, model, optimizer, step: int, extra: dict[str, Any]) -> None:
    """Write checkpoints/step-N via a temp dir + rename, then drop older intermediates."""
    target = _step_dir(out, step)
    tmp = target.with_name(f".tmp-{target.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    save_checkpoint(tmp, model, optimizer, step, extra)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    for older in (out / CHECKPOINTS_SUBDIR).iterdir():
        if older.name.startswith("step-") and older != target:
            shutil.rmtree(older, ignore_errors=True)


def _check_fits(model, data: TokenSequences | PackedSequences) -> None:
    config = model.config
    if data.seq_len > getattr(config, "max_position_embeddings", data.seq_len):
        raise ValueError(f"sequences: length {data.seq_len} exceeds the model's max_position_embeddings "
                         f"{config.max_position_embeddings}")
    vocab = getattr(config, "vocab_size", None)
    bounds = data.token_bounds()
    if vocab is not None and bounds is not None and (bounds[1] >= vocab or bounds[0] < 0):
        raise ValueError(f"sequences: token ids span [{bounds[0]}, {bounds[1]}], outside the "
                         f"model vocabulary of {vocab}")


# ----------------------------------------------------------------------------------------------------------
# Reference loss


def tokenize_reference(tokenizer, examples: Sequence[dict], max_tokens: int, setting: str = "max_tokens",
                       on_too_long: str = "truncate_prompt") -> list[tuple[np.ndarray, np.ndarray]]:
    """(input_ids, labels) per {prompt, answer} example; labels are -100 on prompt tokens.

    Prompt and answer are tokenized separately (no special tokens) so the answer boundary is exact. A pair
    longer than max_tokens (the manifest `setting`) loses prompt tokens from the left, never answer tokens
    (validation.fit_prompt_answer; on_too_long="error" fails instead). An example with no answer token after
    position 0 is an error.
    """
    from .validation import fit_prompt_answer

    pairs = []
    for index, example in enumerate(examples):
        for key in ("prompt", "answer"):
            if not isinstance(example.get(key), str):
                raise ValueError(f"reference example {index + 1}: field {key!r} must be a string")
        answer = list(tokenizer(example["answer"], add_special_tokens=False)["input_ids"])
        prompt, _ = fit_prompt_answer(list(tokenizer(example["prompt"], add_special_tokens=False)["input_ids"]),
                                      answer, max_tokens, setting=setting, on_too_long=on_too_long,
                                      example=f"reference example {index + 1} ({example['prompt'][:40]!r})")
        ids = np.asarray(prompt + answer, dtype=np.int64)
        labels = np.asarray([IGNORE_INDEX] * len(prompt) + answer, dtype=np.int64)
        if not (labels[1:] != IGNORE_INDEX).any():
            raise ValueError(f"reference example {index + 1}: no answer token after the first position "
                             f"(prompt has {len(prompt)} tokens, answer {len(answer)})")
        pairs.append((ids, labels))
    return pairs


def make_reference_batches(
    pairs: Sequence[tuple[np.ndarray, np.ndarray]], batch_size: int, pad_id: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Consecutive batches of `batch_size` examples, right-padded (labels -100 on padding)."""
    batches = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        width = max(len(ids) for ids, _ in chunk)
        input_ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        labels = torch.full((len(chunk), width), IGNORE_INDEX, dtype=torch.long)
        for row, (ids, lab) in enumerate(chunk):
            input_ids[row, : len(ids)] = torch.as_tensor(np.asarray(ids), dtype=torch.long)
            labels[row, : len(lab)] = torch.as_tensor(np.asarray(lab), dtype=torch.long)
        batches.append((input_ids, labels))
    return batches


class ReferenceSet:
    """Reference batches moved to the model's device once, with targets pre-shifted for next-token CE."""

    def __init__(self, ref_batches, device):
        self.batches = []
        for index, (input_ids, labels) in enumerate(ref_batches):
            input_ids = torch.as_tensor(np.asarray(input_ids) if not torch.is_tensor(input_ids) else input_ids)
            labels = torch.as_tensor(np.asarray(labels) if not torch.is_tensor(labels) else labels)
            if input_ids.shape != labels.shape or input_ids.ndim != 2:
                raise ValueError(f"ref_batches[{index}]: input_ids {tuple(input_ids.shape)} and labels "
                                 f"{tuple(labels.shape)} must be equal 2-D shapes")
            targets = labels[:, 1:].long()
            if not (targets != IGNORE_INDEX).any():
                raise ValueError(f"ref_batches[{index}]: no label != -100 after position 0")
            self.batches.append((input_ids.long().to(device), targets.to(device)))
        if not self.batches:
            raise ValueError("ref_batches: empty")

    def content_hash(self) -> str:
        digest = hashlib.sha256()
        for input_ids, targets in self.batches:
            for t in (input_ids, targets):
                digest.update(str(tuple(t.shape)).encode())
                digest.update(t.cpu().numpy().tobytes())
        return digest.hexdigest()

    @torch.no_grad()
    def loss(self, model) -> float:
        """Mean over batches of each batch's token-mean CE; the model is evaluated in eval mode."""
        was_training = model.training
        model.eval()
        total = 0.0
        for input_ids, targets in self.batches:
            total += float(_masked_target_ce(model, input_ids[:, :-1], targets))
        model.train(was_training)
        return total / len(self.batches)


# Families whose logits are exactly lm_head(base_model(...).last_hidden_state) (no soft-capping or scaling).
_PLAIN_HEAD_MODEL_TYPES = ("llama", "gpt_neox")


def _masked_target_ce(model, input_ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Token-mean CE over targets != -100, projecting only those positions through the output head.

    Reference answers are a fraction of each padded row, so skipping the vocabulary projection elsewhere
    removes most of the head's cost (the dominant cost of oracle probing) without changing the loss.
    """
    mask = targets != IGNORE_INDEX
    if getattr(model.config, "model_type", None) not in _PLAIN_HEAD_MODEL_TYPES:
        return lm_loss(model(input_ids=input_ids).logits, targets)[1]
    hidden = model.base_model(input_ids=input_ids).last_hidden_state
    logits = model.get_output_embeddings()(hidden[mask])
    return F.cross_entropy(logits.float(), targets[mask])


def reference_loss(model, ref_batches) -> float:
    """L_ref (docs/method.md §1, §3.1): token-mean CE over labels != -100 per batch, averaged over batches.

    ref_batches: (input_ids [B, L], labels [B, L]) pairs with labels aligned to input_ids (HF convention).
    """
    device = next(model.parameters()).device
    return ReferenceSet(ref_batches, device).loss(model)
