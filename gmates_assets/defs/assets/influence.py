"""Influence stage: probe checkpoint, oracle rollouts (random, then bootstrap), relational model, scores."""
from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import zarr
from safetensors.numpy import load_file, save_file

from ...core import sampling, validation
from ...core.hashing import hash_dir
from ...core.rows import ShardLayout
from ...core.tokenize import load_lm_tokenizer, special_ids
from ...lazy import lazy_module
from ..artifacts import documents_column, gather_embeddings, pool_tokens, zarr_group
from ..declare import SEEDS, SHARDS, AssetDecl, Input
from ..frozen import frozen_key_versions, is_frozen, previous_docs, write_frozen_docs
from ..graph import seed_from_key
from ..runtime import png_md
from ..wiring import reference_examples, textset_identity
from .common import shard_index
from .pool import encoder_location

bootstrap, lm, oracle, probe, relational, plots = (
    lazy_module(f"gmates_assets.core.{m}") for m in ("bootstrap", "lm", "oracle", "probe", "relational", "plots"))

GROUP = "influence"
MODEL_ORIGIN_FILE = "origin.json"
PROBE_FEATURES_FILE = "features.safetensors"  # the probe items' embedding chunks (chunks, chunk_mask)
# What probing reads besides the oracle section: the reference set and the probe's sequence length and loss.
PROBING_SECTIONS = ("oracle.lr", "oracle.reference_batch_size", "oracle.precision", "sources.reference", "demo",
                    "probe.seq_len", "probe.optim.z_loss", "probe.optim.grad_clip")


# ------------------------------------------------------------------------------------------ helpers
def lm_architecture(spec, vocab_size: int) -> lm.LMArchitecture:
    return lm.LMArchitecture(vocab_size=vocab_size, **spec.model_dump())  # spec: LMArchitectureSpec


def optim_config(spec, total_steps: int) -> lm.OptimConfig:
    return lm.OptimConfig(total_steps=total_steps, **spec.model_dump())


def _tokenizer(step):
    return load_lm_tokenizer(str(step.input("lm_tokenizer").path))


def _reference_batches(step, tok):
    examples = reference_examples(step.loaded, "reference")
    pairs = lm.tokenize_reference(tok, examples, step.manifest.probe.seq_len, setting="probe.seq_len",
                                  on_too_long=step.manifest.sources.reference.too_long)
    return lm.make_reference_batches(pairs, step.manifest.oracle.reference_batch_size, special_ids(tok)[1])


def _probe_pool_frame(step) -> pl.DataFrame:
    return pl.read_parquet(step.input("probe_pool").file("probe_pool.parquet"))


def _probe_sequences(step) -> tuple[lm.TokenSequences, list[str]]:
    arrays = load_file(str(step.input("probe_pool").file("sequences.safetensors")))
    return lm.TokenSequences(arrays["tokens"], arrays["labels"]), _probe_pool_frame(step)["doc_id"].to_list()


def _read_rollouts(step, asset: str) -> tuple[np.ndarray, np.ndarray]:
    """(items [R, T], cumulative deltas [R, T]) over all seeds of an oracle asset, in seed order."""
    items, cumulative = [], []
    for key in sorted(step.inputs(asset), key=seed_from_key):
        _, it, cum = oracle.read_rollouts(step.input(asset, key).path)
        items.append(it)
        cumulative.append(cum)
    if not items:
        return np.zeros((0, 0), np.int64), np.zeros((0, 0))
    return np.concatenate(items), np.concatenate(cumulative)


def _model_features(step, chunk_arrays: Callable[[], dict], texts: Callable[[], list[str]]) -> dict[str, np.ndarray]:
    """Inputs of the influence model: cached chunk vectors (adapter mode) or encoder token ids (finetune)."""
    section = step.manifest.encoder
    if step.manifest.relational.mode == "adapter":
        arrays = chunk_arrays()
        # With padding_chunks 'include' the paper averages over every chunk, padding ones too (quirk §4.4).
        return {"chunks": arrays["chunks"]} if section.padding_chunks == "include" else arrays
    from ...core.encode import chunk_encoder_inputs, load_encoder

    _, tok = load_encoder(encoder_location(step.loaded), section.revision, section.trust_remote_code)
    return chunk_encoder_inputs(tok, texts(), section.max_length, section.chunk_size, section.cls_rule)


def _probe_item_features(step) -> dict[str, np.ndarray]:
    """The probe items' model inputs, stored in the probe pool so the models never read the whole pool."""
    return _model_features(step, lambda: load_file(str(step.input("probe_pool").file(PROBE_FEATURES_FILE))),
                           lambda: _probe_pool_frame(step)["text"].to_list())


def _frozen_rows(step, asset: str) -> np.ndarray | None:
    """probe.pool frozen: global indices of the documents the asset's last build read (None: sample afresh)."""
    if not is_frozen(step.manifest):
        return None
    prev = previous_docs(step.context.instance, step.store, asset)
    if prev is None:
        return None
    rows = documents_column(step, "doc_id").find(prev["doc_id"])
    if len(rows) < len(prev):
        step.log(f"probe.pool frozen: {len(prev) - len(rows)} of the {len(prev)} frozen documents of {asset} are no "
                 f"longer in the pool")
    return rows


def _pool_sample(step, positions: np.ndarray, size: int | None, purpose: str, seed: int) -> np.ndarray:
    """A stable (or, with `sampling: positional`, the earlier positional) sample of these pool positions."""
    if size is None or size >= len(positions):
        return positions
    ids = documents_column(step, "doc_id")[positions].to_list() if step.manifest.sampling == "stable" else positions
    return positions[sampling.sample_documents(ids, size, purpose, seed, step.manifest.sampling)]


def _write_read_docs(step, out: Path, rows: np.ndarray) -> None:
    shard_rows = step.shard_rows("documents")
    names, layout = list(shard_rows), ShardLayout(list(shard_rows.values()))
    write_frozen_docs(out, [names[s] for s in layout.shard_of(rows)], documents_column(step, "doc_id")[rows].to_list())


def _shard_features(step) -> dict[str, np.ndarray]:
    def chunk_arrays() -> dict:
        group = zarr_group(step.input("embeddings"), "embeddings")
        return {"chunks": group["chunks"][...], "chunk_mask": group["chunk_mask"][...]}

    def texts() -> list[str]:
        return pl.read_parquet(step.input("documents").file("documents.parquet"))["text"].to_list()

    return _model_features(step, chunk_arrays, texts)


def _train(step, items: np.ndarray, cumulative: np.ndarray, individual_only: bool) -> relational.TrainedModel:
    section = step.manifest.relational
    config = relational.InfluenceTrainConfig(
        mode=section.mode, encoder_dir=encoder_location(step.loaded) if section.mode == "finetune" else None,
        pooling=step.manifest.encoder.pooling, label_stats=section.label_stats, lr=section.lr, epochs=section.epochs,
        rollouts_per_step=section.rollouts_per_step, heldout_fraction=section.heldout_fraction,
        split_seed=section.split_seed, weight_decay=section.weight_decay, warmup_steps=section.warmup_steps,
        schedule=section.schedule, dropout=section.dropout, eval_every=section.eval_every, seed=section.seed,
        individual_only=individual_only)
    return relational.train_influence_model(
        _probe_item_features(step), items, oracle.marginals_from_cumulative(cumulative, section.label_conversion),
        config,
        progress=step.progress("individual" if individual_only else "relational"), device=step.device)


def _model_metadata(trained: relational.TrainedModel, prefix: str) -> dict:
    out = {f"{prefix}_{k}": (round(v, 4) if isinstance(v, float) else v)
           for k, v in trained.metrics.items() if isinstance(v, (int, float))}
    out[f"{prefix}_tau"] = round(float(trained.tau), 4)
    out[f"{prefix}_alpha"] = round(float(trained.alpha), 4)
    curves = trained.curves
    if curves.get("step") and curves.get("eval_step"):
        losses = {"train loss": curves["train_loss"], "held-out loss": curves["eval_loss"]}
        steps = {"train loss": curves["step"], "held-out loss": curves["eval_step"]}
        out[f"{prefix}_loss_curve"] = png_md(
            plots.line_plot(losses, f"{prefix}: MSE on z-scored labels", x=steps), "loss")
        out[f"{prefix}_spearman_curve"] = png_md(plots.line_plot(
            {"held-out Spearman": curves["eval_spearman"]}, f"{prefix}: held-out Spearman",
            x={"held-out Spearman": curves["eval_step"]}), "spearman")
    return out


def _probe_oracle(step, out: Path, rollouts: np.ndarray, rollout_ids: np.ndarray, seed: int) -> dict:
    tok = _tokenizer(step)
    sequences, ids = _probe_sequences(step)
    section, optim = step.manifest.oracle, step.manifest.probe.optim
    summary = oracle.probe_rollouts(
        step.input("probe_checkpoint").path, sequences, _reference_batches(step, tok), rollouts, out,
        chunk_rollouts=section.commit_every_rollouts, lr_policy=section.lr, seed=seed,
        progress=step.progress("rollouts"), doc_ids=ids, rollout_ids=rollout_ids,
        z_loss=optim.z_loss, grad_clip=optim.grad_clip, precision=section.precision, device=step.device)
    _, _, cumulative = oracle.read_rollouts(out)
    final = cumulative[:, -1] if cumulative.size else np.zeros(0)
    return {"dagster/row_count": int(summary.n_rollouts), "rollout_length": int(summary.length),
            "base_reference_loss": round(float(summary.base_loss), 5),
            "lr_used": float(summary.lr), "lr_source": summary.lr_source,
            "mean_final_cumulative_delta": round(float(final.mean()), 6) if final.size else 0.0,
            "chunks_resumed": int(summary.chunks_resumed)}


def check_pool_settings(step) -> None:
    """The pool is large enough for clustering.k, oracle.pool_size and a non-empty selection (known once every
    shard is read): a fresh build fails here, before warm-up, not after hours of influence work."""
    rows = sum(step.shard_rows("tokenized_pool").values())
    validation.check_pool_size(rows, step.manifest.clustering.k, step.manifest.oracle.pool_size,
                               step.manifest.selection.ratio)


def check_before_probing(step) -> None:
    """Settings that only the pool and the tokenizer can refute fail here, before warm-up and oracle work."""
    check_pool_settings(step)
    _reference_batches(step, _tokenizer(step))  # every reference example fits probe.seq_len


# ------------------------------------------------------------------------------------------ compute
def observe_reference(loaded) -> str:
    return textset_identity(loaded, "reference")


def observe_user_checkpoint(loaded) -> str:
    return hash_dir(loaded.resolve(loaded.manifest.probe.checkpoint))


def build_probe_checkpoint(step, out: Path) -> dict:
    section = step.manifest.probe
    if section.checkpoint:
        src = step.loaded.resolve(section.checkpoint)
        if not lm.is_complete_checkpoint(src):
            raise ValueError(f"probe.checkpoint {section.checkpoint}: not a complete gmates checkpoint folder "
                             f"(needs {lm.MODEL_FILE}, {lm.OPTIMIZER_FILE}, {lm.OPTIMIZER_META_FILE})")
        shutil.copytree(src, out, dirs_exist_ok=True)
        return {"source": "user checkpoint", **lm.read_checkpoint_meta(out)}
    tok = _tokenizer(step)
    config = probe.WarmUpConfig(
        arch=lm_architecture(section.model, len(tok)), optim=optim_config(section.optim, section.total_steps),
        save_step=section.save_step, batch_size=section.batch_size, seq_len=section.seq_len, seed=section.seed,
        sample_docs=section.sample_docs, checkpoint_every=section.checkpoint_every)
    documents = pool_tokens(step)
    pick = _frozen_rows(step, "probe_checkpoint")
    if pick is None:
        pick = _pool_sample(step, np.arange(len(documents), dtype=np.int64), section.sample_docs, "warm-up",
                            section.seed)
    summary = probe.warm_up(documents, special_ids(tok)[0], config, out, progress=step.progress("warm-up"),
                            device=step.device, pick=pick)
    _write_read_docs(step, out, pick)
    losses = summary.pop("losses")
    curve = plots.line_plot({"train loss": losses}, "probe warm-up loss")
    return {**summary, "loss_curve": png_md(curve, "loss curve")}


def build_probe_pool(step, out: Path) -> dict:
    section = step.manifest.oracle
    tokens = pool_tokens(step)
    lengths = tokens.lengths()
    # A training row needs at least 2 tokens; shorter documents can never be probed.
    eligible = np.flatnonzero(lengths >= 2).astype(np.int64)
    items = _frozen_rows(step, "probe_pool")
    if items is not None:
        items = items[lengths[items] >= 2]
    else:
        if section.pool_size > len(eligible):
            raise ValueError(f"oracle.pool_size ({section.pool_size}) exceeds the {len(eligible)} pool documents "
                             f"with at least 2 tokens")
        items = _pool_sample(step, eligible, section.pool_size, "probe-pool", section.pool_seed)
    _, pad = special_ids(_tokenizer(step))
    seqs = lm.document_sequences(list(tokens.rows(items)), step.manifest.probe.seq_len, pad)
    save_file({"tokens": seqs.tokens, "labels": seqs.labels}, str(out / "sequences.safetensors"))
    save_file(gather_embeddings(step, items), str(out / PROBE_FEATURES_FILE))
    # No global index: positions move when shards are added or reordered; ids and features do not.
    pl.DataFrame({"item": np.arange(len(items), dtype=np.int64), "doc_id": documents_column(step, "doc_id")[items],
                  "text": documents_column(step, "text")[items]}).write_parquet(out / "probe_pool.parquet")
    _write_read_docs(step, out, items)
    return {"dagster/row_count": int(len(items)), "pool_documents": len(lengths),
            "too_short_to_probe": int(len(lengths) - len(eligible))}


def build_oracle_random(step, out: Path) -> dict:
    section, seed = step.manifest.oracle, seed_from_key(step.partition)
    rollouts = oracle.sample_random_rollouts(len(_probe_pool_frame(step)), section.rollouts, section.rollout_length,
                                             seed)
    ids = np.arange(len(rollouts), dtype=np.int64) + seed * section.rollouts
    return _probe_oracle(step, out, rollouts, ids, seed)


def build_relational_model_init(step, out: Path) -> dict:
    items, cumulative = _read_rollouts(step, "oracle_random")
    trained = _train(step, items, cumulative, individual_only=False)
    relational.save_influence_model(out, trained)
    return {"rollouts": int(len(items)), **_model_metadata(trained, "relational")}


def build_bootstrap_rollouts(step, out: Path) -> dict:
    section, length = step.manifest.bootstrap, step.manifest.oracle.rollout_length
    ids = _probe_pool_frame(step)["doc_id"].to_list()
    trained = relational.load_influence_model(step.input("relational_model_init").path, step.device)
    h, s = relational.score_items(trained, _probe_item_features(step))
    result = bootstrap.bootstrap_rollouts(h, s, trained.tau, trained.alpha, length, section.beam_k,
                                          section.rollouts_per_direction, section.step0)
    _bootstrap_frame(result.rollouts, result.directions, result.predicted, ids).write_parquet(
        out / "bootstrap_rollouts.parquet")
    first = result.rollouts[:, 0] if len(result.rollouts) else np.zeros(0)
    return {"dagster/row_count": int(len(result.rollouts)), "step0": section.step0,
            "distinct_first_items": int(len(np.unique(first)))}


def build_oracle_bootstrap(step, out: Path) -> dict:
    seeds, length = list(step.manifest.oracle.seeds), step.manifest.oracle.rollout_length
    seed = seed_from_key(step.partition)
    frame = pl.read_parquet(step.input("bootstrap_rollouts").file("bootstrap_rollouts.parquet"))
    mine = bootstrap.seed_share(frame["rollout_id"].to_numpy(), seeds.index(seed), len(seeds))
    sub = frame.filter(pl.col("rollout_id").is_in(mine)).sort(["rollout_id", "position"])
    rollouts = sub["item"].to_numpy().reshape(-1, length) if len(sub) else np.zeros((0, length), np.int64)
    return _probe_oracle(step, out, rollouts, mine.astype(np.int64) + bootstrap.BOOTSTRAP_ID_OFFSET, seed)


def frozen_model_dir(loaded) -> Path:
    """The folder of the trained model `relational.from` names (an artifact folder or store:<content hash>)."""
    from ...core.store import ArtifactStore, store_root_from_env

    value = loaded.manifest.relational.from_
    if value.startswith("store:"):
        return ArtifactStore(store_root_from_env()).require_by_content("relational_model", value[6:]).path
    path = loaded.resolve(value)
    if not (path / "relational").is_dir():
        raise ValueError(f"relational.from {value}: {path} is not a relational_model artifact folder (it needs "
                         f"relational/ and individual/); give the artifact_path of a relational_model "
                         f"materialization, or store:<its content hash>")
    return path


def observe_frozen_model(loaded) -> str:
    return hash_dir(frozen_model_dir(loaded))


def frozen_model_lineage(loaded) -> dict:
    """What a release records about a frozen model: where it came from, its content hash, what it was trained on."""
    path = frozen_model_dir(loaded)
    origin = path / MODEL_ORIGIN_FILE
    return {"from": loaded.manifest.relational.from_, "content_hash": hash_dir(path),
            "trained_on": json.loads(origin.read_text()) if origin.exists() else None}


def _copy_frozen_model(step, out: Path) -> dict:
    shutil.copytree(frozen_model_dir(step.raw_loaded), out, dirs_exist_ok=True)  # versioned by its content hash
    return {"frozen_from": step.manifest.relational.from_, "content_hash": hash_dir(out)}


def build_relational_model(step, out: Path) -> dict:
    if _uses_frozen_model(step.manifest):
        return _copy_frozen_model(step, out)
    items, cumulative = _read_rollouts(step, "oracle_random")
    if step.manifest.bootstrap.enabled:
        b_items, b_cum = _read_rollouts(step, "oracle_bootstrap")
        if len(b_items):
            items, cumulative = np.concatenate([items, b_items]), np.concatenate([cumulative, b_cum])
    final = _train(step, items, cumulative, individual_only=False)
    individual = _train(step, items, cumulative, individual_only=True)
    relational.save_influence_model(out / "relational", final)
    relational.save_influence_model(out / "individual", individual)
    (out / "comparison.json").write_text(json.dumps(
        {"relational": final.metrics, "individual": individual.metrics}, indent=2, sort_keys=True, default=float))
    # The build that made the model (data versions of the oracles and probe pool it learned from): a frozen reuse
    # (relational.from) carries it into its release lineage.
    (out / MODEL_ORIGIN_FILE).write_text(json.dumps(step.versions, indent=1, sort_keys=True) + "\n")
    return {"rollouts": int(len(items)), **_model_metadata(final, "relational"),
            **_model_metadata(individual, "individual")}


def build_influence_scores(step, out: Path) -> dict:
    features = _shard_features(step)
    model_dir = step.input("relational_model").path
    h, s = relational.score_items(relational.load_influence_model(model_dir / "relational", step.device), features)
    _, s_ind = relational.score_items(relational.load_influence_model(model_dir / "individual", step.device),
                                      features)
    group = zarr.open_group(str(out / "scores.zarr"), mode="w")
    for name, values in (("h", h), ("s", s), ("s_individual", s_ind)):
        arr = np.ascontiguousarray(values, dtype=np.float32)
        group.create_array(name, shape=arr.shape, dtype=arr.dtype,
                           chunks=(min(4096, max(1, arr.shape[0])),) + arr.shape[1:])[...] = arr
    return {"dagster/row_count": int(len(s)), "s_mean": round(float(s.mean()), 4),
            "s_negative_fraction": round(float((s < 0).mean()), 4),
            "h_norm_mean": round(float(np.linalg.norm(h, axis=1).mean()), 4)}


def _bootstrap_frame(rollouts: np.ndarray, directions: np.ndarray, scores: np.ndarray, ids: list[str]) -> pl.DataFrame:
    n, length = rollouts.shape
    return pl.DataFrame({
        "rollout_id": np.repeat(np.arange(n, dtype=np.int64), length),
        "direction": np.repeat(np.asarray(directions, dtype=np.int8), length),
        "position": np.tile(np.arange(length, dtype=np.int32), n),
        "item": rollouts.reshape(-1).astype(np.int64),
        "doc_id": [ids[i] for i in rollouts.reshape(-1)],
        "predicted": np.asarray(scores, dtype=np.float64).reshape(-1),
    })


# ------------------------------------------------------------------------------------------ declarations
def _has_user_checkpoint(manifest) -> bool:
    return bool(manifest.probe.checkpoint)


def _uses_frozen_model(manifest) -> bool:
    return bool(manifest.relational.from_)


def _probes(manifest) -> bool:
    return not _uses_frozen_model(manifest)


def _bootstraps(manifest) -> bool:
    return bool(manifest.bootstrap.enabled) and _probes(manifest)


def _finetunes(manifest) -> bool:
    return manifest.relational.mode == "finetune"  # loads the encoder's weights and tokenizer itself


_TORCH = frozenset({"pytorch", "safetensors"})
_ORACLE_LR = "oracle.lr (probe.optim.lr when oracle.lr is 'checkpoint')"
_ORACLE_INPUTS = (Input("probe_checkpoint"), Input("probe_pool"), Input("lm_tokenizer"), Input("reference_set"))
# The probe pool carries its items' features: no whole-pool input (finetune mode also loads the encoder itself).
_MODEL_INPUTS = (Input("probe_pool"), Input("encoder_model", when=_finetunes))


def _frozen_key(asset: str):
    return lambda loaded, instance, store, versions: frozen_key_versions(loaded, instance, store, asset, versions)

DECLS = [
    AssetDecl("frozen_relational_model", GROUP,
              "An already trained relational model (relational.from), versioned by content hash.",
              observe=observe_frozen_model, sections=("relational.from_",), enabled=_uses_frozen_model),
    AssetDecl("reference_set", GROUP, "The reference set D_r (prompt/answer) whose loss defines influence.",
              observe=observe_reference, sections=("sources.reference",)),
    AssetDecl("user_probe_checkpoint", GROUP, "A user-supplied probe checkpoint, versioned by content hash.",
              observe=observe_user_checkpoint, sections=("probe.checkpoint",), enabled=_has_user_checkpoint),
    AssetDecl("probe_checkpoint", GROUP,
              "Model + AdamW state after warm-up on random pool data (stage 1), or a user checkpoint.",
              compute=build_probe_checkpoint, resumable=True, sections=("probe", "sampling"), kinds=_TORCH,
              finite="probe.optim.lr",
              precheck=check_before_probing, version="2", key_versions=_frozen_key("probe_checkpoint"),
              inputs=(Input("tokenized_pool_index"), Input("documents_index"), Input("lm_tokenizer"),
                      Input("user_probe_checkpoint", when=_has_user_checkpoint))),
    AssetDecl("probe_pool", GROUP, "The seeded sample of pool documents that rollouts draw from, as LM training rows.",
              compute=build_probe_pool, kinds=frozenset({"safetensors", "parquet"}), precheck=check_pool_settings,
              inputs=(Input("tokenized_pool_index"), Input("documents_index"), Input("embeddings_index"),
                      Input("lm_tokenizer")),
              sections=("oracle.pool_size", "oracle.pool_seed", "probe.seq_len", "probe.pool", "sampling"),
              version="2", key_versions=_frozen_key("probe_pool"), enabled=_probes),
    AssetDecl("oracle_random", GROUP,
              "Oracle group influences of random rollouts: restore, one step per element, L_ref.",
              compute=build_oracle_random, finite=_ORACLE_LR, partitioning=SEEDS, resumable=True,
              inputs=_ORACLE_INPUTS, enabled=_probes,
              sections=("oracle.rollouts", "oracle.rollout_length") + PROBING_SECTIONS,
              kinds=frozenset({"pytorch", "parquet"})),
    AssetDecl("relational_model_init", GROUP,
              "DIM-init: the relational influence model trained on the random rollouts (§3.2).",
              compute=build_relational_model_init, inputs=(Input("oracle_random", "all"),) + _MODEL_INPUTS,
              enabled=_probes, finite="relational.lr",
              sections=("relational", "encoder"), kinds=_TORCH),
    AssetDecl("bootstrap_rollouts", GROUP,
              "Beam-searched rollouts toward both ends of predicted group influence (§3.3).",
              compute=build_bootstrap_rollouts, finite="relational.lr", enabled=_bootstraps,
              inputs=(Input("relational_model_init"),) + _MODEL_INPUTS,
              sections=("bootstrap", "oracle.rollout_length", "relational.mode", "encoder"),
              kinds=frozenset({"parquet"})),
    AssetDecl("oracle_bootstrap", GROUP,
              "Oracle group influences of the bootstrap rollouts, split across the oracle seeds.",
              compute=build_oracle_bootstrap, partitioning=SEEDS, resumable=True, enabled=_bootstraps,
              finite=_ORACLE_LR,
              inputs=(Input("bootstrap_rollouts"),) + _ORACLE_INPUTS,
              sections=("oracle.seeds", "oracle.rollout_length") + PROBING_SECTIONS,
              kinds=frozenset({"pytorch", "parquet"})),
    AssetDecl("relational_model", GROUP,
              "DIM-final (random + bootstrap rollouts) and the individual-only MATES model.",
              compute=build_relational_model, version="2", finite="relational.lr",
              inputs=(Input("oracle_random", "all", when=_probes), Input("oracle_bootstrap", "all", when=_bootstraps),
                      Input("probe_pool", when=_probes), Input("frozen_relational_model", when=_uses_frozen_model),
                      Input("encoder_model", when=_finetunes)),
              sections=("relational", "bootstrap.enabled", "encoder"), kinds=_TORCH),
    AssetDecl("influence_scores", GROUP, "Per-document h and s from DIM-final (and s of the individual model): zarr.",
              compute=build_influence_scores, finite="relational.lr", partitioning=SHARDS,
              inputs=(Input("relational_model"), Input("embeddings", "same"), Input("documents", "same"),
                      Input("encoder_model", when=_finetunes)),
              sections=("relational.mode", "encoder"), kinds=frozenset({"zarr", "pytorch"})),
    shard_index("influence_scores", GROUP),
]
