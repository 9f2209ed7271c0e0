"""Code versions: implementation version + fingerprint of exactly the manifest sections an asset reads.

Bump an asset's IMPL_VERSION when its logic changes; edit a manifest value and only the assets that read it
get a new code version (Dagster shows them as unsynced, and the store misses for them alone).
"""
from __future__ import annotations

from ..core.manifest import Manifest, fingerprint

# asset -> (implementation version, manifest sections it reads)
ASSET_VERSIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "documents": ("1", ("sources.shards", "sources.on_bad_record", "demo")),
    "lm_tokenizer": ("1", ("tokenizer",)),
    "tokenized_pool": ("1", ("tokenizer",)),
    "embeddings": ("1", ("encoder",)),
    "probe_checkpoint": ("1", ("probe",)),
    "probe_pool": ("1", ("oracle.pool_size", "oracle.pool_seed", "probe.seq_len")),
    "oracle_random": ("1", ("oracle.rollouts", "oracle.rollout_length", "oracle.lr", "oracle.reference_batch_size",
                            "sources.reference", "demo", "oracle.precision")),
    "relational_model_init": ("1", ("relational",)),
    "bootstrap_rollouts": ("1", ("bootstrap", "oracle.rollout_length", "oracle.seeds")),
    "oracle_bootstrap": ("1", ("oracle.lr", "oracle.reference_batch_size", "sources.reference", "demo",
                               "oracle.seeds", "oracle.precision")),
    "relational_model": ("1", ("relational", "bootstrap.enabled")),
    "influence_scores": ("1", ("encoder.padding_chunks",)),
    "cluster_assignments": ("1", ("clustering",)),
    "selected_subset": ("1", ("selection", "clustering")),
    "pretrained_checkpoint": ("1", ("pretrain",)),
    "eval_scores": ("2", ("eval", "demo")),
    "method_comparison": ("2", ("eval.tasks",)),
    "dataset_release": ("1", ("release",)),
}


def code_version(manifest: Manifest, asset: str) -> str:
    impl, sections = ASSET_VERSIONS[asset]
    return f"{impl}-{fingerprint(manifest, *sections)}"


def owner_sections(asset: str) -> str:
    return ", ".join(ASSET_VERSIONS[asset][1])
