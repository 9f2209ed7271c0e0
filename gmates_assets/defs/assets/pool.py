"""Pool stage: source files -> documents -> LM tokens and sentence-encoder embeddings, per shard."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import dagster as dg
import numpy as np

from ...core import encode, sources, tokenize
from ...core.hashing import hash_dir, stable_hash
from ...core.manifest import BUILTIN_ENCODER, EncoderSection, TokenizerSection
from ..partitions import Partitions
from ..runtime import Dep, run_step, table
from ..wiring import shard_by_name, shard_spec
from .common import GmatesResource, all_of, gmates_asset, same_partition

GROUP = "pool"


@lru_cache(maxsize=16)
def _dir_hash(path: str, mtime_ns: int) -> str:
    return hash_dir(path)


def local_dir_identity(path: str) -> str:
    p = Path(path)
    return _dir_hash(str(p.resolve()), p.stat().st_mtime_ns)


def encoder_identity(section: EncoderSection) -> str:
    """What the embeddings depend on besides text and settings: the encoder's weights."""
    if section.model == BUILTIN_ENCODER:
        return local_dir_identity(str(encode.default_encoder_dir()))
    if Path(section.model).is_dir():
        return local_dir_identity(section.model)
    return f"{section.model}@{section.revision or 'main'}"


def tokenizer_identity(section: TokenizerSection) -> str:
    if section.kind == "pretrained" and section.name and Path(section.name).is_dir():
        return local_dir_identity(section.name)
    return f"{section.name}@{section.revision or 'main'}" if section.kind == "pretrained" else "trained"


def _sample_rows(documents: list, limit: int = 3) -> dict:
    return table([{"doc_id": d.doc_id, "text": d.text[:160]} for d in documents[:limit]])


def pool_assets(manifest, parts: Partitions) -> list:
    @dg.observable_source_asset(
        name="pool_source",
        group_name=GROUP,
        partitions_def=parts.shards,
        description="The raw pool files of each shard, versioned by content hash (sha256 of the bytes).",
        tags={"gmates/stage": GROUP},
        metadata={"manifest_sections": "sources.shards"},
    )
    def pool_source(context, gmates: GmatesResource):
        loaded = gmates.manifest()
        return dg.DataVersionsByPartition(
            {s.name: dg.DataVersion(sources.file_content_hash(shard_spec(loaded, s))) for s in loaded.manifest.sources.shards}
        )

    @gmates_asset(manifest, "documents", group=GROUP, partitions_def=parts.shards, deps=[same_partition("pool_source")],
                  kinds={"parquet"},
                  description="Documents of one pool shard with stable ids (source file, row): parquet.")
    def documents(context, gmates: GmatesResource):
        loaded = gmates.manifest()
        spec = shard_spec(loaded, shard_by_name(loaded, context.partition_key))
        sources.check_files(spec)  # missing files and sha256 mismatches fail before anything else
        content = sources.file_content_hash(spec)

        def compute(step, out: Path) -> dict:
            docs, stats = sources.read_shard(spec, step.manifest.sources.on_bad_record)
            sources.write_documents_parquet(docs, out / "documents.parquet")
            return {"dagster/row_count": len(docs), "read_stats": stats.as_dict(), "sample": _sample_rows(docs)}

        return run_step(context, gmates, "documents", [], compute, extra_key={"source_content": content})

    trains_on_pool = manifest.tokenizer.kind == "train_bpe"  # a pretrained tokenizer does not read the pool

    @gmates_asset(manifest, "lm_tokenizer", group=GROUP, deps=[all_of("documents")] if trains_on_pool else [],
                  kinds={"huggingface"},
                  description="The LM tokenizer: a byte-level BPE trained on the pool, or any HF tokenizer.")
    def lm_tokenizer(context, gmates: GmatesResource):
        section = gmates.manifest().manifest.tokenizer

        def compute(step, out: Path) -> dict:
            if section.kind == "pretrained":
                tok = tokenize.load_lm_tokenizer(section.name, section.revision, section.trust_remote_code)
                tok.save_pretrained(str(out))
                return {"kind": "pretrained", "name": section.name, "vocab_size": len(tok)}
            texts = _training_texts(step, section.train_max_docs)
            tok = tokenize.train_bpe_tokenizer(texts, section.vocab_size)
            tokenize.save_tokenizer_dir(tok, out)
            return {"kind": "train_bpe", "trained_on_docs": len(texts), "vocab_size": tok.get_vocab_size()}

        return run_step(context, gmates, "lm_tokenizer", [Dep("documents", "all")] if trains_on_pool else [], compute,
                        extra_key={"tokenizer": tokenizer_identity(section)})

    @gmates_asset(manifest, "tokenized_pool", group=GROUP, partitions_def=parts.shards,
                  deps=[same_partition("documents"), "lm_tokenizer"], kinds={"zarr"},
                  description="LM token ids of every document of the shard: ragged zarr (values + offsets).")
    def tokenized_pool(context, gmates: GmatesResource):
        def compute(step, out: Path) -> dict:
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

        return run_step(context, gmates, "tokenized_pool", [Dep("documents", "same"), Dep("lm_tokenizer")], compute)

    @gmates_asset(manifest, "embeddings", group=GROUP, partitions_def=parts.shards, deps=[same_partition("documents")],
                  kinds={"zarr", "pytorch"},
                  description="Sentence-encoder chunk vectors and pooled h per document (docs/method.md §3.2): zarr.")
    def embeddings(context, gmates: GmatesResource):
        section = gmates.manifest().manifest.encoder

        def compute(step, out: Path) -> dict:
            docs = sources.read_documents_parquet(step.input("documents").file("documents.parquet"))
            model, tok = encode.load_encoder(_encoder_location(section), section.revision, section.trust_remote_code)
            encode.embed_documents(
                model, tok, [d.text for d in docs], max_length=section.max_length, chunk_size=section.chunk_size,
                pooling=section.pooling, batch_size=section.batch_size, out_dir=out,
                chunk_docs=section.commit_every_docs, padding_chunks=section.padding_chunks,
                cls_rule=section.cls_rule, progress=step.progress("embed"))
            mask = encode.read_embeddings(out)["chunk_mask"]
            return {"dagster/row_count": len(docs), "encoder": section.model, "dim": int(model.config.hidden_size),
                    "chunks_per_doc_mean": round(float(mask.sum(axis=1).mean()), 3) if len(mask) else 0.0}

        return run_step(context, gmates, "embeddings", [Dep("documents", "same")], compute, resumable=True,
                        extra_key={"encoder": encoder_identity(section)})

    return [pool_source, documents, lm_tokenizer, tokenized_pool, embeddings]


def _encoder_location(section: EncoderSection) -> str:
    return str(encode.default_encoder_dir()) if section.model == BUILTIN_ENCODER else section.model


def _training_texts(step, limit: int) -> list[str]:
    """A deterministic, shard-balanced sample of pool texts for training the BPE tokenizer."""
    texts = []
    for shard in sorted(k for k in step.inputs("documents") if k is not None):
        docs = sources.read_documents_parquet(step.input("documents", shard).file("documents.parquet"))
        texts.extend(d.text for d in docs)
    if len(texts) <= limit:
        return texts
    order = np.random.default_rng(int(stable_hash("bpe-sample", 8), 16)).permutation(len(texts))[:limit]
    return [texts[i] for i in sorted(order)]
