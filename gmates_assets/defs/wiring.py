"""Manifest sections -> the plain arguments of the core functions. No logic beyond the mapping."""
from __future__ import annotations

from ..core import sources
from ..core.manifest import LoadedManifest, ShardSource


def demo_params(loaded: LoadedManifest):
    from ..core.demo_corpus import DemoCorpusParams

    return DemoCorpusParams(**loaded.manifest.demo.model_dump())


def shard_spec(loaded: LoadedManifest, shard: ShardSource) -> sources.ShardSpec:
    return sources.ShardSpec(
        name=shard.name,
        format=shard.format,
        paths=tuple(shard.paths),
        base_dir=str(loaded.base_dir),
        text_field=shard.text_field,
        text_mode=shard.text_mode,
        sha256=dict(shard.sha256) if shard.sha256 else None,
        hf_name=shard.dataset,
        hf_config=shard.config,
        hf_split=shard.split,
        hf_revision=shard.revision,
        hf_data_files=tuple(shard.data_files) if shard.data_files else None,
        hf_streaming=shard.streaming,
        hf_limit=shard.limit,
        trust_remote_code=shard.trust_remote_code,
        demo_params=demo_params(loaded) if shard.format == "demo" else None,
        demo_shard_index=shard.demo_shard,
    )


def shard_by_name(loaded: LoadedManifest, name: str) -> ShardSource:
    for shard in loaded.manifest.sources.shards:
        if shard.name == name:
            return shard
    raise KeyError(f"no shard named {name!r} in {loaded.path}")
