"""Influence stage: probe checkpoint, oracle rollouts (random, then bootstrap), relational model, scores."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import zarr
from safetensors.numpy import load_file, save_file

from ...core import lm, oracle, relational, validation
from ...core.hashing import hash_dir
from ...core.plots import line_plot
from ...core.tokenize import load_lm_tokenizer
from ..artifacts import doc_ids, gather_embeddings, shard_order, token_lists
from ..partitions import Partitions, seed_from_key
from ..runtime import Dep, png_md, run_step
from ..wiring import reference_examples, textset_identity
from .common import GmatesResource, all_of, gmates_asset, same_partition

GROUP = "influence"
BOOTSTRAP_ID_OFFSET = 1_000_000_000  # bootstrap rollout ids never collide with random ones


# ------------------------------------------------------------------------------------------ helpers
def lm_architecture(spec, vocab_size: int) -> lm.LMArchitecture:
    return lm.LMArchitecture(vocab_size=vocab_size, **spec.model_dump())  # spec: LMArchitectureSpec


def optim_config(spec, total_steps: int) -> lm.OptimConfig:
    return lm.OptimConfig(total_steps=total_steps, **spec.model_dump())


def _tokenizer(step):
    return load_lm_tokenizer(str(step.input("lm_tokenizer").path))


def _special_ids(tok) -> tuple[int, int]:
    eos = tok.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    return int(eos), int(pad)


def _reference_batches(step, tok):
    examples = reference_examples(step.loaded, "reference")
    pairs = lm.tokenize_reference(tok, examples, step.manifest.probe.seq_len, setting="probe.seq_len",
                                  on_too_long=step.manifest.sources.reference.too_long)
    return lm.make_reference_batches(pairs, step.manifest.oracle.reference_batch_size, _special_ids(tok)[1])


def _probe_sequences(step) -> tuple[lm.TokenSequences, list[str]]:
    pool = step.input("probe_pool")
    arrays = load_file(str(pool.file("sequences.safetensors")))
    ids = pl.read_parquet(pool.file("probe_pool.parquet"))["doc_id"].to_list()
    return lm.TokenSequences(arrays["tokens"], arrays["labels"]), ids


def _probe_items(step) -> np.ndarray:
    return pl.read_parquet(step.input("probe_pool").file("probe_pool.parquet"))["global_index"].to_numpy()


def _read_rollouts(step, asset: str) -> tuple[np.ndarray, np.ndarray]:
    """(items [R, T], cumulative deltas [R, T]) over all seeds of an oracle asset, in seed order."""
    items, cumulative = [], []
    for key in sorted(step.inputs(asset), key=seed_from_key):
        frame, it, cum = oracle.read_rollouts(step.input(asset, key).path)
        items.append(it)
        cumulative.append(cum)
    if not items:
        return np.zeros((0, 0), np.int64), np.zeros((0, 0))
    return np.concatenate(items), np.concatenate(cumulative)


def _features(step, mode: str) -> dict[str, np.ndarray]:
    """Per probe-pool item inputs of the influence model: cached chunk vectors (adapter) or encoder ids."""
    items = _probe_items(step)
    if mode == "adapter":
        return _adapter_features(step, gather_embeddings(step, items))
    from ...core.encode import chunk_encoder_inputs, load_encoder
    from .pool import _encoder_location

    section = step.manifest.encoder
    texts = _texts_for(step, items)
    _, enc_tok = load_encoder(_encoder_location(step.loaded), section.revision, section.trust_remote_code)
    return chunk_encoder_inputs(enc_tok, texts, section.max_length, section.chunk_size, section.cls_rule)


def _adapter_features(step, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """With padding_chunks 'include' the paper averages over every chunk, padding ones too (quirk §4.4)."""
    if step.manifest.encoder.padding_chunks == "include":
        return {"chunks": arrays["chunks"]}
    return arrays


def _texts_for(step, items: np.ndarray) -> list[str]:
    texts = []
    for shard in shard_order(step):
        texts.extend(pl.read_parquet(step.input("documents", shard).file("documents.parquet"))["text"].to_list())
    return [texts[i] for i in items]


def _train(step, items: np.ndarray, cumulative: np.ndarray, individual_only: bool) -> relational.TrainedModel:
    section = step.manifest.relational
    from .pool import _encoder_location

    return relational.train_influence_model(
        _features(step, section.mode), items, oracle.marginals_from_cumulative(cumulative),
        mode=section.mode, encoder_dir=_encoder_location(step.loaded) if section.mode == "finetune" else None,
        pooling=step.manifest.encoder.pooling, label_stats=section.label_stats, lr=section.lr, epochs=section.epochs,
        rollouts_per_step=section.rollouts_per_step, heldout_fraction=section.heldout_fraction,
        split_seed=section.split_seed, weight_decay=section.weight_decay, warmup_steps=section.warmup_steps,
        schedule=section.schedule, dropout=section.dropout, eval_every=section.eval_every, seed=section.seed,
        individual_only=individual_only, progress=step.progress("individual" if individual_only else "relational"))


def _model_metadata(trained: relational.TrainedModel, prefix: str) -> dict:
    out = {f"{prefix}_{k}": (round(v, 4) if isinstance(v, float) else v)
           for k, v in trained.metrics.items() if isinstance(v, (int, float))}
    out[f"{prefix}_tau"] = round(float(trained.tau), 4)
    out[f"{prefix}_alpha"] = round(float(trained.alpha), 4)
    curves = trained.curves
    if curves.get("step") and curves.get("eval_step"):
        losses = {"train loss": curves["train_loss"], "held-out loss": curves["eval_loss"]}
        steps = {"train loss": curves["step"], "held-out loss": curves["eval_step"]}
        out[f"{prefix}_loss_curve"] = png_md(line_plot(losses, f"{prefix}: MSE on z-scored labels", x=steps), "loss")
        out[f"{prefix}_spearman_curve"] = png_md(line_plot(
            {"held-out Spearman": curves["eval_spearman"]}, f"{prefix}: held-out Spearman",
            x={"held-out Spearman": curves["eval_step"]}), "spearman")
    return out


def _probe_oracle(step, out: Path, rollouts: np.ndarray, rollout_ids: np.ndarray, seed: int) -> dict:
    tok = _tokenizer(step)
    sequences, ids = _probe_sequences(step)
    section = step.manifest.oracle
    summary = oracle.probe_rollouts(
        step.input("probe_checkpoint").path, sequences, _reference_batches(step, tok), rollouts, out,
        chunk_rollouts=section.commit_every_rollouts, lr_policy=section.lr, seed=seed,
        progress=step.progress("rollouts"), doc_ids=ids, rollout_ids=rollout_ids,
        z_loss=step.manifest.probe.optim.z_loss, grad_clip=step.manifest.probe.optim.grad_clip)
    _, _, cumulative = oracle.read_rollouts(out)
    final = cumulative[:, -1] if cumulative.size else np.zeros(0)
    return {"dagster/row_count": int(summary.n_rollouts), "rollout_length": int(summary.length),
            "base_reference_loss": round(float(summary.base_loss), 5),
            "lr_used": float(summary.lr), "lr_source": summary.lr_source,
            "mean_final_cumulative_delta": round(float(final.mean()), 6) if final.size else 0.0,
            "chunks_resumed": int(summary.chunks_resumed)}


# ------------------------------------------------------------------------------------------ assets
def influence_assets(manifest, parts: Partitions) -> list:
    assets = []
    user_checkpoint = manifest.probe.checkpoint

    @dg.observable_source_asset(name="reference_set", group_name=GROUP, tags={"gmates/stage": GROUP},
                                description="The reference set D_r (prompt/answer) whose loss defines influence.",
                                metadata={"manifest_sections": "sources.reference"})
    def reference_set(context, gmates: GmatesResource):
        return dg.DataVersion(textset_identity(gmates.manifest(), "reference"))

    assets.append(reference_set)
    probe_deps = [all_of("tokenized_pool"), "lm_tokenizer"]
    if user_checkpoint:
        @dg.observable_source_asset(name="user_probe_checkpoint", group_name=GROUP, tags={"gmates/stage": GROUP},
                                    description="A user-supplied probe checkpoint, versioned by content hash.",
                                    metadata={"manifest_sections": "probe.checkpoint"})
        def user_probe_checkpoint(context, gmates: GmatesResource):
            loaded = gmates.manifest()
            return dg.DataVersion(hash_dir(loaded.resolve(loaded.manifest.probe.checkpoint)))

        assets.append(user_probe_checkpoint)
        probe_deps.append("user_probe_checkpoint")

    @gmates_asset(manifest, "probe_checkpoint", group=GROUP, deps=probe_deps, kinds={"pytorch", "safetensors"},
                  description="Model + AdamW state after warm-up on random pool data (stage 1), or a user checkpoint.")
    def probe_checkpoint(context, gmates: GmatesResource):
        loaded = gmates.manifest()
        extra = {"user_checkpoint": hash_dir(loaded.resolve(user_checkpoint))} if user_checkpoint else {}

        def compute(step, out: Path) -> dict:
            if user_checkpoint:
                src = step.loaded.resolve(user_checkpoint)
                if not lm.is_complete_checkpoint(src):
                    raise ValueError(f"probe.checkpoint {user_checkpoint}: not a complete gmates checkpoint folder "
                                     f"(needs {lm.MODEL_FILE}, {lm.OPTIMIZER_FILE}, {lm.OPTIMIZER_META_FILE})")
                shutil.copytree(src, out, dirs_exist_ok=True)
                return {"source": "user checkpoint", **lm.read_checkpoint_meta(out)}
            return _warm_up(step, out)

        return run_step(context, gmates, "probe_checkpoint", [Dep("tokenized_pool", "all"), Dep("lm_tokenizer")],
                        compute, resumable=True, extra_key=extra)

    @gmates_asset(manifest, "probe_pool", group=GROUP, deps=[all_of("tokenized_pool"), all_of("documents"), "lm_tokenizer"],
                  kinds={"safetensors", "parquet"},
                  description="The seeded sample of pool documents that rollouts draw from, as LM training rows.")
    def probe_pool(context, gmates: GmatesResource):
        def compute(step, out: Path) -> dict:
            section = step.manifest.oracle
            tokens = token_lists(step)
            validation.check_pool_size(len(tokens), step.manifest.clustering.k, section.pool_size)
            # A training row needs at least 2 tokens; shorter documents can never be probed.
            eligible = np.array([i for i, t in enumerate(tokens) if len(t) >= 2], dtype=np.int64)
            if section.pool_size > len(eligible):
                raise ValueError(f"oracle.pool_size ({section.pool_size}) exceeds the {len(eligible)} pool documents "
                                 f"with at least 2 tokens")
            items = eligible[oracle.sample_probe_pool(len(eligible), section.pool_size, section.pool_seed)]
            eos, pad = _special_ids(_tokenizer(step))
            seqs = lm.document_sequences([tokens[i] for i in items], step.manifest.probe.seq_len, pad)
            save_file({"tokens": seqs.tokens, "labels": seqs.labels}, str(out / "sequences.safetensors"))
            ids = doc_ids(step)
            pl.DataFrame({"item": np.arange(len(items), dtype=np.int64), "global_index": items.astype(np.int64),
                          "doc_id": [ids[i] for i in items]}).write_parquet(out / "probe_pool.parquet")
            return {"dagster/row_count": int(len(items)), "pool_documents": len(tokens),
                    "too_short_to_probe": int(len(tokens) - len(eligible))}

        return run_step(context, gmates, "probe_pool",
                        [Dep("tokenized_pool", "all"), Dep("documents", "all"), Dep("lm_tokenizer")], compute)

    oracle_deps = ["probe_checkpoint", "probe_pool", "lm_tokenizer", "reference_set"]
    oracle_inputs = [Dep("probe_checkpoint"), Dep("probe_pool"), Dep("lm_tokenizer")]

    @gmates_asset(manifest, "oracle_random", group=GROUP, partitions_def=parts.seeds, deps=oracle_deps,
                  kinds={"pytorch", "parquet"},
                  description="Oracle group influences of random rollouts: restore, one step per element, L_ref.")
    def oracle_random(context, gmates: GmatesResource):
        reference = textset_identity(gmates.manifest(), "reference")

        def compute(step, out: Path) -> dict:
            section, seed = step.manifest.oracle, seed_from_key(step.partition)
            rollouts = oracle.sample_random_rollouts(section.pool_size, section.rollouts, section.rollout_length, seed)
            ids = np.arange(len(rollouts), dtype=np.int64) + seed * section.rollouts
            return _probe_oracle(step, out, rollouts, ids, seed)

        return run_step(context, gmates, "oracle_random", oracle_inputs, compute, resumable=True,
                        extra_key={"reference": reference})

    @gmates_asset(manifest, "relational_model_init", group=GROUP,
                  deps=[all_of("oracle_random"), "probe_pool", all_of("embeddings"), all_of("documents")],
                  kinds={"pytorch", "safetensors"},
                  description="DIM-init: the relational influence model trained on the random rollouts (§3.2).")
    def relational_model_init(context, gmates: GmatesResource):
        def compute(step, out: Path) -> dict:
            items, cumulative = _read_rollouts(step, "oracle_random")
            trained = _train(step, items, cumulative, individual_only=False)
            relational.save_influence_model(out, trained)
            return {"rollouts": int(len(items)), **_model_metadata(trained, "relational")}

        return run_step(context, gmates, "relational_model_init",
                        [Dep("oracle_random", "all"), Dep("probe_pool"), Dep("embeddings", "all"),
                         Dep("documents", "all")], compute)

    @gmates_asset(manifest, "bootstrap_rollouts", group=GROUP,
                  deps=["relational_model_init", "probe_pool", all_of("embeddings"), all_of("documents")],
                  kinds={"parquet"},
                  description="Beam-searched rollouts toward both ends of predicted group influence (§3.3).")
    def bootstrap_rollouts(context, gmates: GmatesResource):
        def compute(step, out: Path) -> dict:
            section, length = step.manifest.bootstrap, step.manifest.oracle.rollout_length
            ids = pl.read_parquet(step.input("probe_pool").file("probe_pool.parquet"))["doc_id"].to_list()
            if not section.enabled:
                _bootstrap_frame(np.zeros((0, length), np.int64), np.zeros(0, np.int8), np.zeros((0, length)),
                                 ids).write_parquet(out / "bootstrap_rollouts.parquet")
                return {"dagster/row_count": 0, "enabled": False}
            trained = relational.load_influence_model(step.input("relational_model_init").path)
            h, s = relational.score_items(trained, _features(step, step.manifest.relational.mode))
            result = relational.bootstrap_rollouts(h, s, trained.tau, trained.alpha, length, section.beam_k,
                                                   section.rollouts_per_direction, section.step0)
            frame = _bootstrap_frame(result.rollouts, result.directions, result.predicted, ids)
            frame.write_parquet(out / "bootstrap_rollouts.parquet")
            first = result.rollouts[:, 0] if len(result.rollouts) else np.zeros(0)
            return {"dagster/row_count": int(len(result.rollouts)), "enabled": True, "step0": section.step0,
                    "distinct_first_items": int(len(np.unique(first)))}

        return run_step(context, gmates, "bootstrap_rollouts",
                        [Dep("relational_model_init"), Dep("probe_pool"), Dep("embeddings", "all"),
                         Dep("documents", "all")], compute)

    @gmates_asset(manifest, "oracle_bootstrap", group=GROUP, partitions_def=parts.seeds,
                  deps=["bootstrap_rollouts"] + oracle_deps, kinds={"pytorch", "parquet"},
                  description="Oracle group influences of the bootstrap rollouts, split across the oracle seeds.")
    def oracle_bootstrap(context, gmates: GmatesResource):
        reference = textset_identity(gmates.manifest(), "reference")

        def compute(step, out: Path) -> dict:
            seeds = list(step.manifest.oracle.seeds)
            seed = seed_from_key(step.partition)
            frame = pl.read_parquet(step.input("bootstrap_rollouts").file("bootstrap_rollouts.parquet"))
            rollouts, ids = _bootstrap_share(frame, seeds.index(seed), len(seeds), step.manifest.oracle.rollout_length)
            return _probe_oracle(step, out, rollouts, ids, seed)

        return run_step(context, gmates, "oracle_bootstrap", [Dep("bootstrap_rollouts")] + oracle_inputs, compute,
                        resumable=True, extra_key={"reference": reference})

    @gmates_asset(manifest, "relational_model", group=GROUP,
                  deps=[all_of("oracle_random"), all_of("oracle_bootstrap"), "probe_pool", all_of("embeddings"),
                        all_of("documents")],
                  kinds={"pytorch", "safetensors"},
                  description="DIM-final (random + bootstrap rollouts) and the individual-only MATES model.")
    def relational_model(context, gmates: GmatesResource):
        def compute(step, out: Path) -> dict:
            items, cumulative = _read_rollouts(step, "oracle_random")
            if step.manifest.bootstrap.enabled:
                b_items, b_cum = _read_rollouts(step, "oracle_bootstrap")
                if len(b_items):
                    items, cumulative = np.concatenate([items, b_items]), np.concatenate([cumulative, b_cum])
            final = _train(step, items, cumulative, individual_only=False)
            individual = _train(step, items, cumulative, individual_only=True)
            relational.save_influence_model(out / "relational", final)
            relational.save_influence_model(out / "individual", individual)
            meta = {"rollouts": int(len(items)), **_model_metadata(final, "relational"),
                    **_model_metadata(individual, "individual")}
            (out / "comparison.json").write_text(json.dumps(
                {"relational": final.metrics, "individual": individual.metrics}, indent=2, sort_keys=True, default=float))
            return meta

        return run_step(context, gmates, "relational_model",
                        [Dep("oracle_random", "all"), Dep("oracle_bootstrap", "all"), Dep("probe_pool"),
                         Dep("embeddings", "all"), Dep("documents", "all")], compute)

    @gmates_asset(manifest, "influence_scores", group=GROUP, partitions_def=parts.shards,
                  deps=["relational_model", same_partition("embeddings"), same_partition("documents")],
                  kinds={"zarr", "pytorch"},
                  description="Per-document h and s from DIM-final (and s of the individual model): zarr.")
    def influence_scores(context, gmates: GmatesResource):
        def compute(step, out: Path) -> dict:
            mode = step.manifest.relational.mode
            shard = step.partition
            features = _shard_features(step, shard, mode)
            model_dir = step.input("relational_model").path
            final = relational.load_influence_model(model_dir / "relational")
            individual = relational.load_influence_model(model_dir / "individual")
            h, s = relational.score_items(final, features)
            _, s_ind = relational.score_items(individual, features)
            group = zarr.open_group(str(out / "scores.zarr"), mode="w")
            for name, values in (("h", h), ("s", s), ("s_individual", s_ind)):
                arr = np.ascontiguousarray(values, dtype=np.float32)
                group.create_array(name, shape=arr.shape, dtype=arr.dtype,
                                   chunks=(min(4096, max(1, arr.shape[0])),) + arr.shape[1:])[...] = arr
            return {"dagster/row_count": int(len(s)), "s_mean": round(float(s.mean()), 4),
                    "s_negative_fraction": round(float((s < 0).mean()), 4),
                    "h_norm_mean": round(float(np.linalg.norm(h, axis=1).mean()), 4)}

        return run_step(context, gmates, "influence_scores",
                        [Dep("relational_model"), Dep("embeddings", "same"), Dep("documents", "same")], compute)

    return assets + [probe_checkpoint, probe_pool, oracle_random, relational_model_init, bootstrap_rollouts,
                     oracle_bootstrap, relational_model, influence_scores]


def _shard_features(step, shard: str, mode: str) -> dict[str, np.ndarray]:
    if mode == "adapter":
        group = zarr.open_group(str(step.input("embeddings", shard).file("embeddings.zarr")), mode="r")
        return _adapter_features(step, {"chunks": group["chunks"][...], "chunk_mask": group["chunk_mask"][...]})
    from ...core.encode import chunk_encoder_inputs, load_encoder
    from .pool import _encoder_location

    section = step.manifest.encoder
    texts = pl.read_parquet(step.input("documents", shard).file("documents.parquet"))["text"].to_list()
    _, tok = load_encoder(_encoder_location(step.loaded), section.revision, section.trust_remote_code)
    return chunk_encoder_inputs(tok, texts, section.max_length, section.chunk_size, section.cls_rule)


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


def _bootstrap_share(frame: pl.DataFrame, index: int, n_seeds: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    """This seed's share of the bootstrap rollouts (every n_seeds-th), with ids offset from random ones."""
    ids = np.unique(frame["rollout_id"].to_numpy())
    mine = ids[index::n_seeds]
    sub = frame.filter(pl.col("rollout_id").is_in(mine)).sort(["rollout_id", "position"])
    rollouts = sub["item"].to_numpy().reshape(-1, length) if len(sub) else np.zeros((0, length), np.int64)
    return rollouts, mine.astype(np.int64) + BOOTSTRAP_ID_OFFSET


def _warm_up(step, out: Path) -> dict:
    """Stage 1 of the paper's two stages: train on random pool data, keep model + optimizer at save_step."""
    section = step.manifest.probe
    tok = _tokenizer(step)
    eos, _ = _special_ids(tok)
    tokens = token_lists(step)
    # Settings that only the pool and the tokenizer can refute fail here, before warm-up and oracle work.
    validation.check_pool_size(len(tokens), step.manifest.clustering.k, step.manifest.oracle.pool_size)
    _reference_batches(step, tok)
    if section.sample_docs and section.sample_docs < len(tokens):
        pick = np.sort(np.random.default_rng(section.seed).choice(len(tokens), section.sample_docs, replace=False))
        tokens = [tokens[i] for i in pick]
    sequences = lm.pack_sequences(tokens, section.seq_len, eos)
    model = lm.build_causal_lm(lm_architecture(section.model, len(tok)), section.seed)
    summary = lm.train_lm(model, sequences, optim_config(section.optim, section.total_steps), steps=section.save_step,
                          batch_size=section.batch_size, seed=section.seed, out_dir=out,
                          checkpoint_every=section.checkpoint_every, progress=step.progress("warm-up"))
    losses = list(summary.losses)
    return {"steps": section.save_step, "schedule_steps": section.total_steps, "sequences": int(len(sequences)),
            "tokens_seen": int(summary.tokens_seen), "final_loss": round(float(losses[-1]), 4) if losses else None,
            "parameters": lm.count_parameters(model),
            "loss_curve": png_md(line_plot({"train loss": losses}, "probe warm-up loss"), "loss curve")}
