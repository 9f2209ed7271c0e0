"""Pool stage: source files -> documents -> LM tokens and sentence-encoder embeddings, per shard."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ...core import sampling, sources, tokenize
from ...core.bundled_encoder import default_encoder_dir
from ...core.hashing import cached_sha256_file, hash_dir, stable_hash
from ...core.manifest import BUILTIN_ENCODER
from ...core.validation import loading_model
from ...lazy import lazy_module
from ..artifacts import documents_column
from ..declare import SHARDS, AssetDecl, Input
from ..runtime import table
from ..wiring import shard_by_name, shard_spec
from .common import shard_index

encode = lazy_module("gmates_assets.core.encode")

GROUP = "pool"


def encoder_location(loaded) -> str:
    """The encoder to load: the bundled MiniLM folder, a local folder (relative to the manifest) or a hub name."""
    model = loaded.manifest.encoder.model
    return default_encoder_dir() if model == BUILTIN_ENCODER else loaded.model_location(model)


def model_version(location: str, name: str, revision: str | None) -> str:
    """The data version of a model or tokenizer: a local folder's content hash (its files' bytes, re-hashed
    only when their stat changes), or for a hub name its pinned revision (`main` when none is pinned)."""
    if Path(location).is_dir():
        return hash_dir(location, file_digest=cached_sha256_file)
    return f"{name}@{revision or 'main'}"


def observe_encoder(loaded) -> str:
    section = loaded.manifest.encoder
    return model_version(encoder_location(loaded), section.model, section.revision)


def observe_tokenizer(loaded) -> str:
    section = loaded.manifest.tokenizer
    return model_version(loaded.model_location(section.name), section.name, section.revision)


def _require_observed(step, source: str, version: str, setting: str) -> None:
    """A model folder edited between observation and this step would be loaded under the old version's key."""
    if version != step.versions[source][""]:  # an unpartitioned source
        raise RuntimeError(f"{setting}: the model folder changed since it was observed; run `gmates sync` again "
                           f"(it re-observes the sources first)")


def _sample_rows(documents: list, limit: int = 3) -> dict:
    return table([{"doc_id": d.doc_id, "text": d.text[:160]} for d in documents[:limit]])


# ------------------------------------------------------------------------------------------ compute
def shard_version(shard, content_hash: str) -> str:
    """pool_source's data version of a shard: its files' content hash and its own settings. The shard's documents
    depend on nothing else of `sources.shards`, so appending a shard leaves every other shard's documents fresh."""
    return stable_hash({"content": content_hash, "settings": shard.model_dump(mode="json")}, 32)


def observe_pool(loaded) -> dict[str, str]:
    shards = list(loaded.manifest.sources.shards)
    specs = [shard_spec(loaded, s) for s in shards]
    sources.check_shards_disjoint(specs)  # colliding document ids: found here, before any work
    return {spec.name: shard_version(shard, sources.file_content_hash(spec)) for shard, spec in zip(shards, specs)}


def build_documents(step, out: Path) -> dict:
    shard = shard_by_name(step.raw_loaded, step.partition)  # unrecorded: its settings are in pool_source's version
    spec = shard_spec(step.raw_loaded, shard)
    content = sources.shard_content(spec)  # bad files and sha256 mismatches fail before anything else
    if shard_version(shard, content.hash) != step.input_version("pool_source"):
        raise sources.SourceError(f"shard {spec.name}: its files changed since they were observed; run "
                                  f"`gmates sync` again (it re-observes the sources first)")
    # The bytes read must be the bytes hashed: a file rewritten meanwhile is an error, never stored text.
    docs, stats = sources.read_shard(spec, step.manifest.sources.on_bad_record, expected=content)
    for note in stats.notes():
        step.log(note)
    sources.write_documents_parquet(docs, out / "documents.parquet")
    return {"dagster/row_count": len(docs), "read_stats": stats.as_dict(), "sample": _sample_rows(docs)}


def build_lm_tokenizer(step, out: Path) -> dict:
    section = step.manifest.tokenizer
    if section.kind == "pretrained":
        with loading_model("tokenizer.name", section.name):
            tok = tokenize.load_lm_tokenizer(step.loaded.model_location(section.name), section.revision,
                                             section.trust_remote_code)
        _require_observed(step, "tokenizer_model", observe_tokenizer(step.raw_loaded), "tokenizer.name")
        tok.save_pretrained(str(out))
        return {"kind": "pretrained", "name": section.name, "vocab_size": len(tok)}
    texts = _training_texts(step, section.train_docs)
    tok = tokenize.train_bpe_tokenizer(texts, section.vocab_size)
    tokenize.save_tokenizer_dir(tok, out)
    return {"kind": "train_bpe", "trained_on_docs": len(texts), "vocab_size": tok.get_vocab_size()}


def build_tokenized_pool(step, out: Path) -> dict:
    section = step.manifest.tokenizer
    docs = sources.read_documents_parquet(step.input("documents").file("documents.parquet"))
    tok = tokenize.load_lm_tokenizer(str(step.input("lm_tokenizer").path))
    values, offsets = tokenize.tokenize_documents(
        tok, [d.text for d in docs], section.max_tokens, section.add_eos, section.batch_size,
        progress=step.progress("tokenize"))
    tokenize.write_ragged_zarr(out, values, offsets)
    lengths = np.diff(offsets)
    return {"dagster/row_count": len(docs), "tokens": int(values.size),
            "mean_tokens_per_doc": round(float(lengths.mean()) if len(lengths) else 0.0, 2),
            "truncated_docs": int((lengths >= section.max_tokens).sum())}


def build_embeddings(step, out: Path) -> dict:
    section = step.manifest.encoder
    docs = sources.read_documents_parquet(step.input("documents").file("documents.parquet"))
    model, tok = encode.load_encoder(encoder_location(step.loaded), section.revision, section.trust_remote_code,
                                     device=step.device)
    _require_observed(step, "encoder_model", observe_encoder(step.raw_loaded), "encoder.model")
    encode.embed_documents(
        model, tok, [d.text for d in docs], max_length=section.max_length, chunk_size=section.chunk_size,
        pooling=section.pooling, batch_size=section.batch_size, out_dir=out,
        chunk_docs=section.commit_every_docs, padding_chunks=section.padding_chunks,
        cls_rule=section.cls_rule, progress=step.progress("embed"))
    mask = encode.read_embeddings(out)["chunk_mask"]
    return {"dagster/row_count": len(docs), "encoder": section.model, "dim": int(model.config.hidden_size),
            "chunks_per_doc_mean": round(float(mask.sum(axis=1).mean()), 3) if len(mask) else 0.0}


def _training_texts(step, limit: int) -> list[str]:
    """The pool texts the BPE tokenizer trains on, read shard by shard: a stable sample of `limit` documents
    (keyed by document id, so an edit outside it leaves the tokenizer unchanged), or with `sampling:
    positional` the earlier positional draw."""
    texts = documents_column(step, "text")
    if step.manifest.sampling == "positional":
        return texts[tokenize.bpe_training_sample(len(texts), limit)].to_list()
    ids = documents_column(step, "doc_id")[np.arange(len(texts))].to_list()
    return texts[sampling.sample_documents(ids, limit, "bpe", 0)].to_list()


def _trains_on_pool(manifest) -> bool:
    return manifest.tokenizer.kind == "train_bpe"  # a pretrained tokenizer does not read the pool


def _pretrained_tokenizer(manifest) -> bool:
    return manifest.tokenizer.kind == "pretrained"


# ------------------------------------------------------------------------------------------ declarations
DECLS = [
    AssetDecl("pool_source", GROUP, "The raw pool files of each shard, versioned by content hash (sha256).",
              observe=observe_pool, partitioning=SHARDS, sections=("sources.shards",)),
    AssetDecl("documents", GROUP, "Documents of one pool shard with stable ids (source file, row): parquet.",
              compute=build_documents, partitioning=SHARDS, inputs=(Input("pool_source", "same"),),
              sections=("sources.on_bad_record", "demo"), kinds=frozenset({"parquet"}), version="2"),
    shard_index("documents", GROUP),
    AssetDecl("tokenizer_model", GROUP, "A pretrained LM tokenizer: a local folder versioned by content hash, or "
              "a hub name by its pinned revision.", observe=observe_tokenizer, enabled=_pretrained_tokenizer,
              sections=("tokenizer.name", "tokenizer.revision")),
    AssetDecl("lm_tokenizer", GROUP, "The LM tokenizer: a byte-level BPE trained on the pool, or any HF tokenizer.",
              compute=build_lm_tokenizer,
              inputs=(Input("documents_index", when=_trains_on_pool),
                      Input("tokenizer_model", when=_pretrained_tokenizer)),
              sections=("tokenizer", "sampling"), kinds=frozenset({"huggingface"})),
    AssetDecl("tokenized_pool", GROUP, "LM token ids of every document of the shard: ragged zarr (values + offsets).",
              compute=build_tokenized_pool, partitioning=SHARDS,
              inputs=(Input("documents", "same"), Input("lm_tokenizer")), sections=("tokenizer",),
              kinds=frozenset({"zarr"})),
    shard_index("tokenized_pool", GROUP),
    AssetDecl("encoder_model", GROUP, "The sentence encoder's weights and tokenizer: a local folder (the bundled "
              "MiniLM too) versioned by content hash, or a hub name by its pinned revision.",
              observe=observe_encoder, sections=("encoder.model", "encoder.revision")),
    AssetDecl("embeddings", GROUP, "Sentence-encoder chunk vectors and pooled h per document (method §3.2): zarr.",
              compute=build_embeddings, partitioning=SHARDS,
              inputs=(Input("documents", "same"), Input("encoder_model")), sections=("encoder",), resumable=True,
              kinds=frozenset({"zarr", "pytorch"})),
    shard_index("embeddings", GROUP),
]
