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
        limit=shard.limit,
        max_chars=shard.max_chars,
        long_documents=shard.long_documents,
        trust_remote_code=shard.trust_remote_code,
        demo_params=demo_params(loaded) if shard.format == "demo" else None,
        demo_shard_index=shard.demo_shard,
    )


def shard_by_name(loaded: LoadedManifest, name: str) -> ShardSource:
    for shard in loaded.manifest.sources.shards:
        if shard.name == name:
            return shard
    raise KeyError(f"no shard named {name!r} in {loaded.path}")


# ----------------------------------------------------------------------------- reference and held-out sets
def textset_identity(loaded: LoadedManifest, which: str) -> str:
    """Content identity of a reference/held-out set: the file's sha256, or the demo generator's parameters."""
    from ..core.hashing import sha256_file, stable_hash

    spec = _textset_spec(loaded, which)
    if spec.format == "demo":
        from ..core.demo_corpus import DEMO_VERSION

        return stable_hash({"demo": loaded.manifest.demo, "version": DEMO_VERSION, "set": which}, 64)
    path = loaded.resolve(spec.path)
    if not path.is_file():
        raise FileNotFoundError(f"{which}: file not found: {spec.path} (resolved to {path})")
    digest = sha256_file(path)
    if spec.sha256 and spec.sha256 != digest:
        raise ValueError(f"{spec.path}: sha256 mismatch: manifest says {spec.sha256}, file has {digest}")
    return digest


def _textset_spec(loaded: LoadedManifest, which: str):
    if which in ("reference", "heldout_reference"):
        return getattr(loaded.manifest.sources, which)
    if which == "heldout_text":
        return loaded.manifest.eval.heldout_text
    raise KeyError(which)


def reference_examples(loaded: LoadedManifest, which: str = "reference") -> list[dict]:
    """[{prompt, answer}] of the reference set (which="reference") or the held-out reference set."""
    from ..core.textsets import read_jsonl_fields

    spec = _textset_spec(loaded, which)
    if spec.format == "demo":
        from ..core.demo_corpus import generate_reference

        rows = generate_reference(demo_params(loaded), "reference" if which == "reference" else "heldout")
        return rows[: spec.max_examples] if spec.max_examples else rows
    return read_jsonl_fields(loaded.resolve(spec.path), [spec.prompt_field, spec.answer_field],
                             ["prompt", "answer"], spec.max_examples)


def heldout_texts(loaded: LoadedManifest) -> list[str]:
    from ..core.textsets import read_jsonl_fields

    spec = loaded.manifest.eval.heldout_text
    if spec.format == "demo":
        from ..core.demo_corpus import generate_heldout_text

        rows = generate_heldout_text(demo_params(loaded))
    else:
        rows = read_jsonl_fields(loaded.resolve(spec.path), [spec.text_field], ["text"], spec.max_examples)
    return [r["text"] for r in rows][: spec.max_examples or None]
