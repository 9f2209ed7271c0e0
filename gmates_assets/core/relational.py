"""Relational data influence model (DIM) and its training (docs/method.md §3.2); the bootstrap is in bootstrap.py.

Everything lives in the z-space of the oracle labels: y = (I − μ)/σ, lower is better (negative marginal
influence = the step lowered the reference loss).

Model, per rollout x_0..x_{T-1} (0-based positions):
    h(x)  = mean over real chunks of normalize(chunk vector)          (‖h‖ ≤ 1, not re-normalized)
    s(x)  = w·dropout(h) + b                                           (individual head)
    p_0   = s_0
    p_t   = α · s_t · (1/t) · Σ_{j<t} (1 − R_tj/τ),  R_tj = h_t·h_j     (relation within one rollout only)

Two embedding modes: "adapter" (frozen encoder, cached per-chunk vectors + residual linear adapter initialised
to the identity; the CPU default of the small recipe, §8) and "finetune" (a Hugging Face encoder from a local
directory, trained end to end; the paper's setting, meant for GPUs).
"""
from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes
from scipy import stats
from torch import nn

from gmates_assets.core.encode import pool_chunk_outputs
from gmates_assets.core.progress import ProgressFn, atomic_write_bytes, atomic_write_text

from .devices import resolve_device as default_device

MODES = ("adapter", "finetune")
SCHEDULES = ("linear", "cosine")
LABEL_STATS = ("train", "all")
MODEL_FORMAT = "gmates-relational-influence-v1"
MODEL_WEIGHTS = "model.safetensors"
MODEL_CONFIG = "config.json"


# --------------------------------------------------------------------------------------------------------
# Labels
# --------------------------------------------------------------------------------------------------------

def zscore_labels(marginals: np.ndarray, stats_rows: Optional[np.ndarray] = None
                  ) -> tuple[np.ndarray, float, float]:
    """y = (I − μ)/σ with μ, σ (population std) over every position of the rows in `stats_rows`.

    `stats_rows` is a boolean mask [R] or an index array; None uses every rollout, which is what the original
    code does (held-out rollouts included, docs/method.md §4.8). The tool passes the training rows.
    """
    values = np.asarray(marginals, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"marginals: expected shape [R, T], got {values.shape}")
    if not np.all(np.isfinite(values)):
        bad = np.argwhere(~np.isfinite(values))[0]
        raise ValueError(f"marginals: non-finite value at rollout {bad[0]}, position {bad[1]}")
    rows = values if stats_rows is None else values[np.asarray(stats_rows)]
    if rows.size == 0:
        raise ValueError("zscore_labels: stats_rows selects no rollouts")
    mu = float(rows.mean())
    sigma = float(rows.std())
    if not sigma > 0:
        raise ValueError("zscore_labels: labels have zero spread (σ = 0); cannot z-score")
    return (values - mu) / sigma, mu, sigma


# --------------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------------

def relational_predictions(s: torch.Tensor, h: torch.Tensor, tau: torch.Tensor, alpha: torch.Tensor
                           ) -> torch.Tensor:
    """p [B, T] from s [B, T] and h [B, T, d]; R is a per-rollout [T, T] Gram matrix (no cross-rollout term)."""
    length = s.shape[-1]
    relation = torch.matmul(h, h.transpose(-1, -2))  # [B, T, T], one Gram matrix per rollout
    earlier = torch.ones(length, length, dtype=torch.bool, device=s.device).tril(-1)  # j < t
    summed = ((1.0 - relation / tau) * earlier).sum(-1)  # Σ_{j<t} (1 − R_tj/τ)
    position = torch.arange(length, device=s.device)
    factor = alpha * summed / position.clamp(min=1).to(s.dtype)
    factor = torch.where(position == 0, torch.ones_like(factor), factor)  # p_0 = s_0 exactly
    return s * factor


def masked_mean_of_unit_vectors(vectors: torch.Tensor, chunk_mask: torch.Tensor) -> torch.Tensor:
    """h = mean over real chunks of normalize(v); an item without real chunks gets h = 0."""
    unit = F.normalize(vectors, dim=-1)
    weights = chunk_mask.to(unit.dtype).unsqueeze(-1)
    return (unit * weights).sum(-2) / weights.sum(-2).clamp(min=1.0)


class RelationalInfluenceModel(nn.Module):
    """Embedding h, individual head s, and the learned relation scalars τ and α (both start at 1.0).

    Features are a mapping of tensors whose leading dims are the items ([n] for `embed`, [B, T] for
    `forward`): adapter mode reads `chunks` [.., C, d] and optional `chunk_mask` [.., C]; finetune mode reads
    `input_ids` / `attention_mask` [.., C, L] and optional `chunk_mask` (default: every chunk is encoded, as
    in the original code, padding chunks included).
    """

    def __init__(self, dim: int, mode: str = "adapter", encoder: nn.Module | None = None,
                 pooling: str = "cls", dropout: float = 0.1):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
        if pooling not in ("cls", "mean"):
            raise ValueError(f"pooling: expected 'cls' or 'mean', got {pooling!r}")
        self.mode, self.dim, self.pooling = mode, int(dim), pooling
        if mode == "adapter":
            self.adapter = nn.Linear(self.dim, self.dim, bias=False)
            nn.init.zeros_(self.adapter.weight)  # v' = v + A v starts as the frozen encoder's vector
            self.encoder = None
        else:
            if encoder is None:
                raise ValueError("finetune mode needs an encoder module (see from_encoder_dir)")
            self.encoder = encoder
            self.adapter = None
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.dim, 1)
        self.tau = nn.Parameter(torch.tensor(1.0))
        self.alpha = nn.Parameter(torch.tensor(1.0))

    @classmethod
    def from_encoder_dir(cls, encoder_dir: str | os.PathLike, pooling: str = "cls", dropout: float = 0.1
                         ) -> RelationalInfluenceModel:
        from transformers import AutoModel

        encoder = AutoModel.from_pretrained(str(encoder_dir), local_files_only=True, trust_remote_code=False)
        return cls(encoder.config.hidden_size, mode="finetune", encoder=encoder, pooling=pooling,
                   dropout=dropout)

    def _device(self) -> torch.device:
        return self.head.weight.device

    def embed(self, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """h [n, d] for flat items."""
        if self.mode == "adapter":
            chunks = features["chunks"].to(self._device(), torch.float32)
            mask = features.get("chunk_mask")
            mask = torch.ones(chunks.shape[:-1], dtype=torch.bool) if mask is None else mask
            adapted = chunks + self.adapter(chunks)
            return masked_mean_of_unit_vectors(adapted, mask.to(chunks.device))
        return self._embed_finetune(features)

    def _embed_finetune(self, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        device = self._device()
        input_ids = features["input_ids"].to(device)
        attention = features["attention_mask"].to(device)
        n, chunks, length = input_ids.shape
        mask = features.get("chunk_mask")
        mask = torch.ones(n, chunks, dtype=torch.bool) if mask is None else mask
        flat_mask = mask.to(device).reshape(-1).bool()
        ids = input_ids.reshape(n * chunks, length)[flat_mask]
        att = attention.reshape(n * chunks, length)[flat_mask]
        pooled = torch.zeros(n * chunks, self.dim, device=device)
        if ids.shape[0] > 0:
            hidden = self.encoder(input_ids=ids, attention_mask=att).last_hidden_state
            encoded = pool_chunk_outputs(hidden, att, self.pooling).float()
            pooled = pooled.index_put((flat_mask.nonzero(as_tuple=True)[0],), encoded)
        return masked_mean_of_unit_vectors(pooled.view(n, chunks, self.dim), mask.to(device))

    def individual(self, h: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(h)).squeeze(-1)

    def forward(self, features: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Features with leading dims [B, T] → (p [B, T], s [B, T], h [B, T, d])."""
        first = next(iter(features.values()))
        batch, length = first.shape[:2]
        flat = {k: v.reshape(batch * length, *v.shape[2:]) for k, v in features.items()}
        h = self.embed(flat).view(batch, length, self.dim)
        s = self.individual(h)
        return relational_predictions(s, h, self.tau, self.alpha), s, h


# --------------------------------------------------------------------------------------------------------
# Feature handling
# --------------------------------------------------------------------------------------------------------

_FEATURE_KEYS = {"adapter": ("chunks",), "finetune": ("input_ids", "attention_mask")}
_OPTIONAL_KEYS = ("chunk_mask",)


def _select_features(features: Mapping[str, Any], mode: str) -> tuple[dict[str, Any], int]:
    """The feature arrays `mode` reads (other keys, e.g. encode.read_embeddings' "pooled"/"attrs", are
    ignored), checked for presence and matching item counts; returns them and the item count."""
    required = _FEATURE_KEYS[mode]
    for key in required:
        if key not in features:
            raise KeyError(f"features: mode {mode!r} needs key {key!r} (got {sorted(features)})")
    used = {k: features[k] for k in (*required, *_OPTIONAL_KEYS) if k in features and features[k] is not None}
    shape = tuple(np.shape(used[required[0]]))
    for key, value in used.items():
        if len(value) != shape[0]:
            raise ValueError(f"features[{key!r}]: {len(value)} items, but {required[0]!r} has {shape[0]}")
    if "chunk_mask" in used and tuple(np.shape(used["chunk_mask"])) != shape[:2]:
        raise ValueError(f"features['chunk_mask']: shape {np.shape(used['chunk_mask'])} must be {shape[:2]} "
                         f"(items, chunks of {required[0]!r})")
    return used, shape[0]


def _as_tensor(value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    array = np.asarray(value)
    return torch.from_numpy(np.ascontiguousarray(array))


def _gather(features: Mapping[str, torch.Tensor], items: torch.Tensor) -> dict[str, torch.Tensor]:
    """Rows `items` (any shape) of every feature tensor; the result has leading dims items.shape."""
    return {k: v[items.reshape(-1)].reshape(*items.shape, *v.shape[1:]) for k, v in features.items()}


# --------------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------------

@dataclass
class TrainedModel:
    """A trained influence model: weights, learned scalars, label statistics, metrics and curves."""

    config: dict  # mode, dim, pooling, dropout, individual_only, encoder_config
    state_dict: dict[str, torch.Tensor]
    tau: float
    alpha: float
    mu: float
    sigma: float
    label_stats: str
    metrics: dict = field(default_factory=dict)
    curves: dict = field(default_factory=dict)
    hyperparameters: dict = field(default_factory=dict)
    module: Optional[RelationalInfluenceModel] = field(default=None, repr=False, compare=False)

    def build_module(self, device: str | torch.device | None = None) -> RelationalInfluenceModel:
        """A fresh module with these weights, in eval mode, on `device`."""
        module = _module_from_config(self.config)
        module.load_state_dict(self.state_dict)
        return module.to(default_device(device)).eval()


def _module_from_config(config: Mapping[str, Any]) -> RelationalInfluenceModel:
    encoder = None
    if config["mode"] == "finetune":
        from transformers import CONFIG_MAPPING, AutoModel

        encoder_config = dict(config["encoder_config"])
        encoder = AutoModel.from_config(CONFIG_MAPPING[encoder_config["model_type"]].from_dict(encoder_config))
    return RelationalInfluenceModel(config["dim"], mode=config["mode"], encoder=encoder,
                                    pooling=config["pooling"], dropout=config["dropout"])


def _lr_lambda(schedule: str, warmup_steps: int, total_steps: int):
    """HF-style schedules: linear warmup, then linear (the code) or cosine (the paper) decay to 0."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return float(step) / float(max(1, warmup_steps))
        progress = float(step - warmup_steps) / float(max(1, total_steps - warmup_steps))
        if schedule == "linear":
            return max(0.0, 1.0 - progress)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0))))
    return factor


def _parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """HF Trainer convention: no decay on biases and LayerNorm weights; decay everything else, τ and α too."""
    decay, no_decay = [], []
    norm_params = {id(p) for m in model.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters()}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if name.endswith("bias") or id(param) in norm_params else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _correlations(prediction: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    prediction, target = np.ravel(prediction), np.ravel(target)
    if prediction.size < 2:
        return float("nan"), float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant input → nan, handled by the caller
        spearman = stats.spearmanr(prediction, target).statistic
        pearson = stats.pearsonr(prediction, target).statistic
    return float(spearman), float(pearson)


def evaluation_metrics(p: np.ndarray, s: np.ndarray, y: np.ndarray, individual_only: bool) -> dict:
    """Held-out metrics. `p` is what the model predicts per position: the relational p, or s itself for the
    individual-only model (so the keys compare like with like across the two)."""
    prediction = s if individual_only else p
    metrics: dict[str, float] = {"mse_all": float(np.mean((prediction - y) ** 2))}
    parts = {"all": np.s_[:, :], "ge1": np.s_[:, 1:], "pos0": np.s_[:, 0]}
    for name, part in parts.items():
        rho, r = _correlations(prediction[part], y[part])
        metrics[f"spearman_{name}"], metrics[f"pearson_{name}"] = rho, r
        rho, r = _correlations(s[part], y[part])
        metrics[f"s_only_spearman_{name}"], metrics[f"s_only_pearson_{name}"] = rho, r
    return metrics


def _selection_value(metrics: dict, individual_only: bool) -> float:
    value = metrics["spearman_pos0" if individual_only else "spearman_all"]
    return -math.inf if math.isnan(value) else value


def _split_rollouts(n_rollouts: int, heldout_fraction: float, split_seed: int) -> tuple[np.ndarray, np.ndarray]:
    if not 0.0 <= heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction: expected a value in [0, 1), got {heldout_fraction}")
    n_held = int(round(heldout_fraction * n_rollouts))
    if heldout_fraction > 0:
        n_held = max(1, n_held)
    if n_held >= n_rollouts:
        raise ValueError(f"heldout_fraction {heldout_fraction} leaves no training rollouts of {n_rollouts}")
    order = np.random.default_rng(split_seed).permutation(n_rollouts)
    return np.sort(order[n_held:]), np.sort(order[:n_held])


@torch.no_grad()
def _predict_rollouts(model: RelationalInfluenceModel, features: Mapping[str, torch.Tensor],
                      items: torch.Tensor, micro_batch: int) -> tuple[np.ndarray, np.ndarray]:
    model.eval()
    ps, ss = [], []
    for start in range(0, items.shape[0], micro_batch):
        p, s, _ = model(_gather(features, items[start:start + micro_batch]))
        ps.append(p.float().cpu())
        ss.append(s.float().cpu())
    return torch.cat(ps).double().numpy(), torch.cat(ss).double().numpy()


def _check_rollouts(rollout_items: np.ndarray, marginals: np.ndarray, n_items: int) -> None:
    if rollout_items.ndim != 2:
        raise ValueError(f"rollout_items: expected shape [R, T], got {rollout_items.shape}")
    if marginals.shape != rollout_items.shape:
        raise ValueError(f"marginals: shape {marginals.shape} differs from rollout_items {rollout_items.shape}")
    if not np.issubdtype(rollout_items.dtype, np.integer):
        raise TypeError(f"rollout_items: expected integer item indices, got {rollout_items.dtype}")
    if rollout_items.size and (rollout_items.min() < 0 or rollout_items.max() >= n_items):
        bad = np.argwhere((rollout_items < 0) | (rollout_items >= n_items))[0]
        raise IndexError(f"rollout_items[{bad[0]}, {bad[1]}] = {rollout_items[tuple(bad)]} is outside the "
                         f"{n_items} feature rows")


@dataclass(frozen=True)
class InfluenceTrainConfig:
    """How the relational model (or, with `individual_only`, the MATES baseline) is trained (§3.2, §8).

    `micro_batch_rollouts` splits each step for memory (gradient accumulation, exact because the relation never
    crosses rollouts). `bf16` autocasts on CUDA only. `label_stats`: z-score statistics from the training
    rollouts ("train") or from all rollouts ("all", the original code's mild leak).
    """

    mode: str = "adapter"
    encoder_dir: Optional[str] = None  # a local encoder folder (finetune mode)
    pooling: str = "cls"
    label_stats: str = "train"
    lr: float = 1e-3
    epochs: int = 50
    rollouts_per_step: int = 16
    micro_batch_rollouts: Optional[int] = None
    heldout_fraction: float = 0.15
    split_seed: int = 1234
    weight_decay: float = 0.01
    warmup_steps: int = 50
    schedule: str = "linear"
    dropout: float = 0.1
    eval_every: int = 50
    max_grad_norm: Optional[float] = 1.0
    seed: int = 0
    individual_only: bool = False
    bf16: bool = False

    def __post_init__(self) -> None:
        for name, allowed in (("mode", MODES), ("schedule", SCHEDULES), ("label_stats", LABEL_STATS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}: expected one of {allowed}, got {getattr(self, name)!r}")
        if self.mode == "finetune" and self.encoder_dir is None:
            raise ValueError("encoder_dir: finetune mode needs a local encoder directory")
        for name in ("epochs", "rollouts_per_step", "eval_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}: expected a positive integer, got {getattr(self, name)}")


def train_influence_model(features: Mapping[str, Any], rollout_items: np.ndarray, marginals: np.ndarray,
                          config: Optional[InfluenceTrainConfig] = None, *, progress: ProgressFn = None,
                          device: str | torch.device | None = None, **settings: Any) -> TrainedModel:
    """Train on rollouts: MSE(p_t, y_t) over all positions (relational) or on position-0 labels only (MATES).
    Keeps the checkpoint with the best held-out Spearman (all positions; position 0 for the individual model),
    evaluated every `eval_every` steps and at the end.

    features: pool item features (see RelationalInfluenceModel); rollout_items [R, T] rows into them;
    marginals [R, T] raw marginal influences I_t (z-scored here). `settings` override fields of `config`.
    """
    config = replace(config or InfluenceTrainConfig(), **settings)
    features, n_items = _select_features(features, config.mode)
    rollout_items = np.asarray(rollout_items)
    marginals = np.asarray(marginals, dtype=np.float64)
    _check_rollouts(rollout_items, marginals, n_items)
    device = default_device(device)

    train_rows, held_rows = _split_rollouts(len(rollout_items), config.heldout_fraction, config.split_seed)
    y, mu, sigma = zscore_labels(marginals, train_rows if config.label_stats == "train" else None)
    feats = {k: _as_tensor(v) for k, v in features.items()}
    items = torch.from_numpy(rollout_items.astype(np.int64))
    total_steps = math.ceil(len(train_rows) / config.rollouts_per_step) * int(config.epochs)

    fork_devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(config.seed)  # init and dropout; the caller's RNG state is restored afterwards
        model = _new_model(config, feats, device)
        fit = _fit(model, config, feats, items, y, train_rows, held_rows, total_steps, device, progress)

    model.load_state_dict(fit.best_state)
    model.eval()
    metrics = _final_metrics(model, config, feats, items, y, train_rows, held_rows, fit, total_steps)
    hyper = {**asdict(config), "total_steps": total_steps}
    hyper.pop("encoder_dir")  # a path of this machine: never part of a stored artifact
    model_config = {"mode": config.mode, "dim": model.dim, "pooling": config.pooling, "dropout": config.dropout,
                    "individual_only": config.individual_only,
                    "encoder_config": model.encoder.config.to_dict() if config.mode == "finetune" else None}
    return TrainedModel(config=model_config, state_dict=fit.best_state, tau=float(fit.best_state["tau"]),
                        alpha=float(fit.best_state["alpha"]), mu=mu, sigma=sigma, label_stats=config.label_stats,
                        metrics=metrics, curves=fit.curves, hyperparameters=hyper, module=model)


def _new_model(config: InfluenceTrainConfig, feats: Mapping[str, torch.Tensor], device) -> RelationalInfluenceModel:
    if config.mode == "adapter":
        model = RelationalInfluenceModel(feats["chunks"].shape[-1], "adapter", pooling=config.pooling,
                                         dropout=config.dropout)
    else:
        model = RelationalInfluenceModel.from_encoder_dir(config.encoder_dir, pooling=config.pooling,
                                                          dropout=config.dropout)
    model.to(device)
    if config.individual_only:  # the MATES baseline has no relation: freeze τ, α so nothing (not even decay) moves them
        model.tau.requires_grad_(False)
        model.alpha.requires_grad_(False)
    return model


@dataclass
class _Fit:
    best_state: dict
    best_step: int
    steps: int
    curves: dict


def _fit(model, config: InfluenceTrainConfig, feats, items: torch.Tensor, y: np.ndarray, train_rows: np.ndarray,
         held_rows: np.ndarray, total_steps: int, device, progress: ProgressFn) -> _Fit:
    """The training loop; evaluates on held-out rollouts and keeps the best state by Spearman."""
    targets = torch.from_numpy(y.astype(np.float32))
    micro_batch = int(config.micro_batch_rollouts or config.rollouts_per_step)
    optimizer = torch.optim.AdamW(_parameter_groups(model, config.weight_decay), lr=config.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_lambda(config.schedule, min(config.warmup_steps, total_steps), total_steps))
    shuffler = torch.Generator().manual_seed(config.seed)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=config.bf16 and device.type == "cuda")
    curves: dict[str, list] = {"step": [], "train_loss": [], "lr": [], "eval_step": [], "eval_loss": [],
                               "eval_spearman": [], "eval_pearson": []}
    held_items = items[torch.from_numpy(held_rows)]
    best_value, best_step, best_state = -math.inf, 0, None
    step = 0
    for _ in range(int(config.epochs)):
        order = torch.from_numpy(train_rows)[torch.randperm(len(train_rows), generator=shuffler)]
        for start in range(0, len(order), config.rollouts_per_step):
            batch = order[start:start + config.rollouts_per_step]
            model.train()
            loss_value = 0.0
            count = batch.numel() if config.individual_only else batch.numel() * items.shape[1]
            for micro in batch.split(micro_batch):
                with autocast:
                    loss = _batch_loss(model, feats, items[micro], targets[micro].to(device), config.individual_only)
                (loss / count).backward()
                loss_value += float(loss.detach()) / count
            if config.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            curves["lr"].append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            curves["step"].append(step)
            curves["train_loss"].append(loss_value)
            if len(held_rows) and (step % config.eval_every == 0 or step == total_steps):
                value = _record_eval(model, config, feats, held_items, y[held_rows], micro_batch, curves, step)
                if value > best_value or best_state is None:
                    best_value, best_step = value, step
                    best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            if progress is not None:
                progress(step, total_steps, "steps")
    if best_state is None:  # no held-out rollouts: the final weights
        best_step = step
        best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return _Fit(best_state, best_step, step, curves)


def _record_eval(model, config: InfluenceTrainConfig, feats, held_items, y_held: np.ndarray, micro_batch: int,
                 curves: dict, step: int) -> float:
    individual = config.individual_only
    p, s = _predict_rollouts(model, feats, held_items, micro_batch)
    metrics = evaluation_metrics(p, s, y_held, individual)
    curves["eval_step"].append(step)
    curves["eval_loss"].append(metrics["mse_all"] if not individual else float(np.mean((s[:, 0] - y_held[:, 0]) ** 2)))
    curves["eval_spearman"].append(metrics["spearman_pos0" if individual else "spearman_all"])
    curves["eval_pearson"].append(metrics["pearson_pos0" if individual else "pearson_all"])
    return _selection_value(metrics, individual)


def _final_metrics(model, config: InfluenceTrainConfig, feats, items, y, train_rows, held_rows, fit: _Fit,
                   total_steps: int) -> dict[str, Any]:
    selection_metric = "spearman_pos0" if config.individual_only else "spearman_all"
    metrics: dict[str, Any] = {"best_step": fit.best_step, "total_steps": total_steps,
                               "n_train_rollouts": int(len(train_rows)), "n_heldout_rollouts": int(len(held_rows)),
                               "selection_metric": selection_metric}
    if len(held_rows):
        micro_batch = int(config.micro_batch_rollouts or config.rollouts_per_step)
        p, s = _predict_rollouts(model, feats, items[torch.from_numpy(held_rows)], micro_batch)
        metrics.update(evaluation_metrics(p, s, y[held_rows], config.individual_only))
        metrics["heldout_spearman"] = metrics[selection_metric]
        metrics["heldout_pearson"] = metrics[selection_metric.replace("spearman", "pearson")]
    return metrics


def _batch_loss(model: RelationalInfluenceModel, features: Mapping[str, torch.Tensor], items: torch.Tensor,
                targets: torch.Tensor, individual_only: bool) -> torch.Tensor:
    """Summed squared error of one micro-batch of rollouts (the caller divides by the step's count)."""
    if individual_only:
        s = model.individual(model.embed(_gather(features, items[:, 0])))
        return ((s.float() - targets[:, 0]) ** 2).sum()
    p, _, _ = model(_gather(features, items))
    return ((p.float() - targets) ** 2).sum()


# --------------------------------------------------------------------------------------------------------
# Save / load / score
# --------------------------------------------------------------------------------------------------------

def _json_safe(value: Any) -> Any:
    """Plain JSON: NaN/inf become null (strict JSON has no NaN)."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def save_influence_model(directory: str | os.PathLike, trained: TrainedModel) -> None:
    """Write `model.safetensors` (weights, τ and α included) and `config.json` (mode, d, τ, α, μ, σ, …)."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in trained.state_dict.items()}
    atomic_write_bytes(out / MODEL_WEIGHTS, save_safetensors_bytes(tensors))
    config = {"format": MODEL_FORMAT, **trained.config, "tau": trained.tau, "alpha": trained.alpha,
              "mu": trained.mu, "sigma": trained.sigma, "label_stats": trained.label_stats,
              "metrics": trained.metrics, "hyperparameters": trained.hyperparameters, "curves": trained.curves}
    atomic_write_text(out / MODEL_CONFIG, json.dumps(_json_safe(config), indent=1, sort_keys=True))


def load_influence_model(directory: str | os.PathLike, device: str | torch.device | None = None) -> TrainedModel:
    """Read a model written by save_influence_model; `.module` is ready on `device` in eval mode."""
    root = Path(directory)
    config_path, weights_path = root / MODEL_CONFIG, root / MODEL_WEIGHTS
    for path in (config_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(f"influence model: missing {path}")
    config = json.loads(config_path.read_text())
    if config.get("format") != MODEL_FORMAT:
        raise ValueError(f"{config_path}: field 'format' is {config.get('format')!r}, expected {MODEL_FORMAT!r}")
    for key in ("mode", "dim", "pooling", "dropout", "individual_only", "mu", "sigma"):
        if key not in config:
            raise KeyError(f"{config_path}: missing field {key!r}")
    state = load_safetensors_bytes(weights_path.read_bytes())
    model_config = {k: config.get(k) for k in ("mode", "dim", "pooling", "dropout", "individual_only",
                                               "encoder_config")}
    trained = TrainedModel(config=model_config, state_dict=state, tau=float(state["tau"]),
                           alpha=float(state["alpha"]), mu=config["mu"], sigma=config["sigma"],
                           label_stats=config.get("label_stats", "train"), metrics=config.get("metrics", {}),
                           curves=config.get("curves", {}), hyperparameters=config.get("hyperparameters", {}))
    try:
        trained.module = trained.build_module(device)
    except RuntimeError as error:
        raise ValueError(f"{weights_path}: weights do not match config ({error})") from error
    return trained


@torch.no_grad()
def score_items(model: RelationalInfluenceModel | TrainedModel, features: Mapping[str, Any],
                batch_size: int = 256, progress: ProgressFn = None) -> tuple[np.ndarray, np.ndarray]:
    """h [n, d] float32 and s [n] float32 (z-space, lower is better) for every item, in eval mode.

    Features may be numpy arrays, torch tensors or zarr arrays (read one slice per batch)."""
    module = model.module if isinstance(model, TrainedModel) else model
    if module is None:
        module = model.build_module()
    module.eval()
    features, n = _select_features(features, module.mode)
    hs, ss = [], []
    for start in range(0, n, batch_size):
        batch = {k: _as_tensor(v[start:start + batch_size]) for k, v in features.items()}
        h = module.embed(batch)
        hs.append(h.float().cpu())
        ss.append(module.individual(h).float().cpu())
        if progress is not None:
            progress(min(start + batch_size, n), n, "items")
    if not hs:
        return np.zeros((0, module.dim), np.float32), np.zeros(0, np.float32)
    return torch.cat(hs).numpy(), torch.cat(ss).numpy()
