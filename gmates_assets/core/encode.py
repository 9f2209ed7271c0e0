"""Sentence-encoder embeddings of pool documents (docs/method.md §3.2, §3.4, §7 d, §8).

A document is prepared (§3.4: strip every line, join with single spaces), tokenized to `max_length`
tokens and split into C = max_length / chunk_size chunks. Each chunk with real tokens is encoded and pooled
("cls": the output at position 0; "mean": masked mean over positions, as sentence-transformers does for
MiniLM). h ("pooled") is the mean of the L2-normalised chunk vectors (a mean of unit vectors, not
re-normalised, so ||h|| <= 1).

Chunk framing (`cls_rule`):
- "every" (default): every chunk with content is framed by the encoder's own special tokens
  ([CLS] ... [SEP] for BERT), so each chunk is a well-formed encoder input; the content budget is
  C * (chunk_size - n_special). Chunk 0 always counts as real, even for an empty document.
- "paper": the reference code's rule: tokenize with special tokens to max_length and cut into chunks, so only
  chunk 0 starts with [CLS] and later chunks start mid-text.

All-padding chunks (`padding_chunks`):
- "skip" (default): they are not encoded, and h averages the real chunks only.
- "include": the paper's behaviour, h averages all C chunks. The all-padding chunk is the same input for
  every document, so it is encoded once and shared (§7 d); the result equals encoding each one.
`chunk_mask` always marks the chunks with real tokens; the group attribute `pooled_over` says which chunks
h averages ("masked_chunks" or "all_chunks").
"""
from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from .bundled_encoder import default_encoder_dir
from .devices import resolve_device as pick_device
from .hashing import cached_sha256_file, hash_dir, stable_hash
from .progress import PROGRESS_FILE, ChunkProgress, ProgressFn
from .validation import loading_model

EMBEDDINGS_NAME = "embeddings.zarr"
# Documents per block: the zarr chunk and the unit that encoder batches are formed in. Fixed, so the stored
# bytes never depend on how often work is committed (encoder.commit_every_docs is not part of the cache key).
EMBED_BLOCK_DOCS = 256
Pooling = Literal["cls", "mean"]
ClsRule = Literal["every", "paper"]
PaddingChunks = Literal["skip", "include"]


# --------------------------------------------------------------------------------------------- loading


def load_encoder(name_or_dir: str | None = None, revision: str | None = None, trust_remote_code: bool = False,
                 device: str | torch.device | None = None):
    """(model, tokenizer) for any HF encoder; None loads the bundled all-MiniLM-L6-v2 (offline).

    Kept for the life of the process (one entry): `gmates sync` runs every shard's step in one process, and
    reloading the encoder per shard cost more than embedding a small shard. A local folder's content hash is
    part of the key, so an edited model is loaded again. Callers only run inference with it.
    """
    name = name_or_dir or default_encoder_dir()
    return _load_encoder_cached(name, revision, trust_remote_code, str(pick_device(device)), _folder_stamp(name))


def _folder_stamp(name: str) -> str:
    """A local folder's content hash (digests re-computed only for files whose stat changed), as observed."""
    return hash_dir(name, file_digest=cached_sha256_file) if os.path.isdir(name) else ""


@functools.lru_cache(maxsize=1)
def _load_encoder_cached(name: str, revision: str | None, trust_remote_code: bool, device: str, _stamp: str):
    from transformers import AutoModel, AutoTokenizer

    kwargs = {}
    if revision and not os.path.isdir(name):
        kwargs["revision"] = revision
    # Always passed (False unless the manifest opts in): transformers never prompts to run a folder's code.
    trust = bool(trust_remote_code)
    with loading_model("encoder.model", str(name)):
        model = AutoModel.from_pretrained(name, trust_remote_code=trust, **kwargs).to(device).eval()
        tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=trust, **kwargs)
    return model, tokenizer


# ------------------------------------------------------------------------------------- text and chunks


def prepare_text(text: str) -> str:
    """§3.4: strip each line and join the non-empty lines with single spaces."""
    return " ".join(line for line in (raw.strip() for raw in text.splitlines()) if line)


def _special_frame(tokenizer) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after a text (e.g. [CLS] and [SEP] for BERT)."""
    bare = tokenizer("hello", add_special_tokens=False)["input_ids"]
    full = tokenizer("hello", add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(bare) + 1):
        if full[start:start + len(bare)] == bare:
            return full[:start], full[start + len(bare):]
    raise ValueError("cannot locate the text inside the tokenizer's special-token frame")


def _pad_id(tokenizer) -> int:
    return int(tokenizer.pad_token_id) if tokenizer.pad_token_id is not None else 0


def chunk_encoder_inputs(tokenizer, texts: Sequence[str], max_length: int, chunk_size: int,
                         cls_rule: ClsRule = "every", prepare: bool = True) -> dict[str, torch.Tensor]:
    """Tokenize to `max_length` and split into C = max_length/chunk_size chunks (see module doc for the
    framing rules). Returns int64 `input_ids` and `attention_mask`, both [n, C, chunk_size]."""
    if max_length % chunk_size:
        raise ValueError(f"max_length ({max_length}) must be a multiple of chunk_size ({chunk_size})")
    if cls_rule not in ("every", "paper"):
        raise ValueError(f"cls_rule must be 'every' or 'paper', got {cls_rule!r}")
    texts = [prepare_text(t) for t in texts] if prepare else list(texts)
    n, n_chunks = len(texts), max_length // chunk_size
    input_ids = np.full((n, n_chunks, chunk_size), _pad_id(tokenizer), dtype=np.int64)
    mask = np.zeros((n, n_chunks, chunk_size), dtype=np.int64)
    if n == 0:
        return {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(mask)}
    if cls_rule == "paper":
        encoded = tokenizer(texts, add_special_tokens=True, truncation=True, max_length=max_length)["input_ids"]
        flat_ids, flat_mask = input_ids.reshape(n, -1), mask.reshape(n, -1)
        for i, ids in enumerate(encoded):
            flat_ids[i, :len(ids)] = ids
            flat_mask[i, :len(ids)] = 1
    else:
        prefix, suffix = _special_frame(tokenizer)
        body = chunk_size - len(prefix) - len(suffix)
        if body <= 0:
            raise ValueError(f"chunk_size {chunk_size} leaves no room for text between the special tokens")
        encoded = tokenizer(texts, add_special_tokens=False, truncation=True,
                            max_length=n_chunks * body)["input_ids"]
        for i, ids in enumerate(encoded):
            for c in range(n_chunks):
                content = ids[c * body:(c + 1) * body]
                if not content and c > 0:
                    break
                row = prefix + list(content) + suffix
                input_ids[i, c, :len(row)] = row
                mask[i, c, :len(row)] = 1
    return {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(mask)}


def pool_chunk_outputs(last_hidden_state: torch.Tensor, attention_mask: torch.Tensor,
                       pooling: Pooling = "mean") -> torch.Tensor:
    """[m, L, d] encoder outputs -> [m, d] chunk vectors.

    "cls": the output at position 0. "mean": mean over positions with attention_mask 1; a row with no real
    position (an all-padding chunk) falls back to the mean over all positions, so the shared padding chunk
    gets the encoder's actual padding representation rather than a zero vector.
    """
    if pooling == "cls":
        return last_hidden_state[:, 0]
    if pooling != "mean":
        raise ValueError(f"pooling must be 'cls' or 'mean', got {pooling!r}")
    weights = attention_mask.to(last_hidden_state.dtype).unsqueeze(-1)
    counts = weights.sum(dim=1)
    pooled = (last_hidden_state * weights).sum(dim=1) / counts.clamp(min=1.0)
    empty = counts.squeeze(-1) == 0
    if bool(empty.any()):
        pooled[empty] = last_hidden_state[empty].mean(dim=1)
    return pooled


def mean_of_normalized(chunks: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """h = mean over the weighted chunks of the L2-normalised chunk vectors ([n, C, d], [n, C] -> [n, d])."""
    chunks = chunks.astype(np.float64)
    norms = np.maximum(np.linalg.norm(chunks, axis=-1, keepdims=True), 1e-12)
    w = weights.astype(np.float64)[..., None]
    return ((chunks / norms * w).sum(axis=1) / np.maximum(w.sum(axis=1), 1.0)).astype(np.float32)


# ------------------------------------------------------------------------------------------ encoding


def _model_device(encoder) -> torch.device:
    return next(encoder.parameters()).device


@torch.inference_mode()
def _encode_rows(encoder, input_ids: torch.Tensor, attention_mask: torch.Tensor, pooling: Pooling,
                 device: torch.device) -> torch.Tensor:
    output = encoder(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device))
    return pool_chunk_outputs(output.last_hidden_state, attention_mask.to(device), pooling).float().cpu()


def _encode_real_chunks(encoder, inputs: dict[str, torch.Tensor], real: np.ndarray, dim: int, pooling: Pooling,
                        batch_size: int, device: torch.device) -> np.ndarray:
    """Encode every real chunk into [n, C, dim] (zeros elsewhere). Batches are formed by length (longest
    first) and trimmed to their longest row, then scattered back, so the output order never depends on
    the batching."""
    n, n_chunks, _ = inputs["input_ids"].shape
    vectors = np.zeros((n, n_chunks, dim), dtype=np.float32)
    docs, chunk_idx = np.nonzero(real)
    ids = inputs["input_ids"][torch.from_numpy(docs), torch.from_numpy(chunk_idx)]
    mask = inputs["attention_mask"][torch.from_numpy(docs), torch.from_numpy(chunk_idx)]
    lengths = mask.sum(dim=1).numpy()
    order = np.argsort(-lengths, kind="stable")
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        width = int(lengths[rows].max())  # real tokens always sit at the front of a chunk
        index = torch.from_numpy(rows)
        pooled = _encode_rows(encoder, ids[index, :width], mask[index, :width], pooling, device)
        vectors[docs[rows], chunk_idx[rows]] = pooled.numpy()
    return vectors


def padding_chunk_vector(encoder, tokenizer, chunk_size: int, pooling: Pooling,
                         device: torch.device | None = None) -> np.ndarray:
    """The encoder's vector for the all-padding chunk (identical for every document, §7 d)."""
    device = device or _model_device(encoder)
    ids = torch.full((1, chunk_size), _pad_id(tokenizer), dtype=torch.long)
    return _encode_rows(encoder, ids, torch.zeros_like(ids), pooling, device).numpy()[0]


def _model_fingerprint(encoder) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(encoder.state_dict().items()):
        digest.update(name.encode() + str(tuple(tensor.shape)).encode() + str(tensor.dtype).encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _texts_fingerprint(texts: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8") + b"\0")
    return digest.hexdigest()


def _remove_stray_temp_files(out_dir: Path) -> None:
    """A kill during an atomic progress write leaves a temp file behind; it is not part of the result."""
    for stray in out_dir.glob(f".{PROGRESS_FILE}.tmp-*"):
        stray.unlink(missing_ok=True)


def _create_group(path: Path, n: int, n_chunks: int, dim: int, block_docs: int, attrs: dict):
    import zarr

    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    group.attrs.update(attrs)
    group.create_array("chunks", shape=(n, n_chunks, dim), dtype="float32", chunks=(block_docs, n_chunks, dim),
                       fill_value=0.0)
    group.create_array("chunk_mask", shape=(n, n_chunks), dtype="bool", chunks=(block_docs, n_chunks),
                       fill_value=False)
    group.create_array("pooled", shape=(n, dim), dtype="float32", chunks=(block_docs, dim), fill_value=0.0)
    return group


def embed_documents(encoder, tokenizer, texts: Sequence[str], max_length: int, chunk_size: int,
                    pooling: Pooling, batch_size: int, out_dir: str | os.PathLike, chunk_docs: int = 512,
                    padding_chunks: PaddingChunks = "skip", progress: ProgressFn = None,
                    device: str | torch.device | None = None, cls_rule: ClsRule = "every",
                    name: str = EMBEDDINGS_NAME, block_docs: int | None = None) -> Path:
    """Embed documents into `<out_dir>/embeddings.zarr` (`chunks` float32 [n, C, d], `chunk_mask` bool
    [n, C], `pooled` float32 [n, d]); returns the group path.

    `batch_size` counts encoder rows (chunks) per forward pass. Documents are encoded in fixed blocks of
    `block_docs` (the zarr chunk; batches never span two blocks), and work is committed after every
    ceil(`chunk_docs` / `block_docs`) blocks. The bytes are therefore the same for every `chunk_docs`, and a
    killed run resumes from its last committed block and ends byte-identical to an uninterrupted one (every
    block is a pure function of its documents and the settings).
    """
    import zarr

    if pooling not in ("cls", "mean"):
        raise ValueError(f"pooling must be 'cls' or 'mean', got {pooling!r}")
    if padding_chunks not in ("skip", "include"):
        raise ValueError(f"padding_chunks must be 'skip' or 'include', got {padding_chunks!r}")
    block_docs = block_docs or EMBED_BLOCK_DOCS  # read at call time (progress units are blocks)
    if chunk_docs < 1 or batch_size < 1 or block_docs < 1:
        raise ValueError("chunk_docs, batch_size and block_docs must be >= 1")
    texts = list(texts)
    device = torch.device(device) if device is not None else _model_device(encoder)
    encoder.to(device).eval()
    n, n_chunks = len(texts), max_length // chunk_size
    settings = {"max_length": max_length, "chunk_size": chunk_size, "pooling": pooling,
                "padding_chunks": padding_chunks, "cls_rule": cls_rule, "batch_size": batch_size,
                "block_docs": block_docs, "n_docs": n}
    fingerprint = stable_hash({**settings, "texts": _texts_fingerprint(texts), "model": _model_fingerprint(encoder),
                               "tokenizer": type(tokenizer).__name__, "frame": _special_frame(tokenizer)}, 32)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _remove_stray_temp_files(out)
    path = out / name
    pad_vector = padding_chunk_vector(encoder, tokenizer, chunk_size, pooling, device)
    attrs = {**settings, "dim": int(pad_vector.shape[0]), "n_chunks": n_chunks,
             "pooled_over": "all_chunks" if padding_chunks == "include" else "masked_chunks",
             "pooled": "mean of L2-normalised chunk vectors (not re-normalised)"}
    state = ChunkProgress(out, fingerprint, n, "docs", block_docs)
    if state.done and not (path / "zarr.json").exists():
        state.finish()  # progress without its data cannot be resumed
        state = ChunkProgress(out, fingerprint, n, "docs", block_docs)
    if not state.done:
        group = _create_group(path, n, n_chunks, attrs["dim"], block_docs, attrs)
    else:
        group = zarr.open_group(str(path), mode="r+")

    n_blocks = (n + block_docs - 1) // block_docs
    blocks_per_commit = -(-chunk_docs // block_docs)
    for block in range(n_blocks):
        start, stop = block * block_docs, min(n, (block + 1) * block_docs)
        if not state.is_done(block):
            inputs = chunk_encoder_inputs(tokenizer, texts[start:stop], max_length, chunk_size, cls_rule)
            real = inputs["attention_mask"].sum(dim=-1).numpy() > 0
            vectors = _encode_real_chunks(encoder, inputs, real, attrs["dim"], pooling, batch_size, device)
            if padding_chunks == "include":
                vectors[~real] = pad_vector
            weights = np.ones_like(real) if padding_chunks == "include" else real
            group["chunks"][start:stop] = vectors
            group["chunk_mask"][start:stop] = real
            group["pooled"][start:stop] = mean_of_normalized(vectors, weights)
            state.done.add(block)
            if (block + 1) % blocks_per_commit == 0 or block == n_blocks - 1:
                state.mark_done(block)  # persists every block written so far
        if progress:
            progress(stop, n, "docs")
    state.finish()
    return path


def read_embeddings(out_dir: str | os.PathLike, name: str = EMBEDDINGS_NAME) -> dict:
    """{"chunks", "chunk_mask", "pooled"} as numpy arrays, plus "attrs" (the settings used)."""
    import zarr

    group = zarr.open_group(str(Path(out_dir) / name), mode="r")
    return {"chunks": group["chunks"][:], "chunk_mask": group["chunk_mask"][:], "pooled": group["pooled"][:],
            "attrs": dict(group.attrs)}
