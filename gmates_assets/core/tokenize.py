"""LM tokenization: a byte-level BPE trained on the pool (or any HF tokenizer) into ragged zarr arrays.

The tokenized pool is stored as two arrays (docs/contracts.md): `values` int32 holds every document's token
ids back to back, `offsets` int64 [n+1] marks where row i starts and ends (values[offsets[i]:offsets[i+1]]).
"""
from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from .hashing import stable_hash
from .progress import ProgressFn, atomic_write_text

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
SPECIAL_TOKENS = (EOS_TOKEN, PAD_TOKEN)
RAGGED_NAME = "tokens.zarr"
_VALUES_CHUNK = 1 << 20
_OFFSETS_CHUNK = 1 << 18


# ------------------------------------------------------------------------------------------ tokenizers


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int, special_tokens: Sequence[str] = SPECIAL_TOKENS,
                        min_frequency: int = 2):
    """Train a byte-level BPE on `texts` (returns a `tokenizers.Tokenizer`).

    Training has no random choices: merges are taken by count with ties broken by the pair itself, so the
    same texts give the same tokenizer.json bytes (checked in the tests, across processes).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=list(special_tokens), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    texts = list(texts)
    tokenizer.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return tokenizer


def save_tokenizer_dir(tokenizer, out_dir: str | os.PathLike, model_max_length: int | None = None) -> Path:
    """Write tokenizer.json + tokenizer_config.json + special_tokens_map.json (AutoTokenizer-loadable)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "tokenizer.json", tokenizer.to_str(pretty=True))
    specials = {"bos_token": EOS_TOKEN, "eos_token": EOS_TOKEN, "unk_token": EOS_TOKEN, "pad_token": PAD_TOKEN}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "add_prefix_space": False,
              "clean_up_tokenization_spaces": False, **specials}
    if model_max_length is not None:
        config["model_max_length"] = int(model_max_length)
    atomic_write_text(out / "tokenizer_config.json", json.dumps(config, indent=2, sort_keys=True) + "\n")
    atomic_write_text(out / "special_tokens_map.json", json.dumps(specials, indent=2, sort_keys=True) + "\n")
    return out


def load_lm_tokenizer(name_or_dir: str, revision: str | None = None, trust_remote_code: bool = False,
                      setting: str = "tokenizer.name"):
    """Any HF tokenizer: a local directory (offline) or a hub name (from the local cache when offline).

    `trust_remote_code` is always passed (False unless the manifest opts in), so transformers never asks on a
    terminal whether to run a folder's own python code; a folder that needs it fails naming `setting`."""
    from transformers import AutoTokenizer

    from .validation import loading_model

    kwargs = {}
    if revision and not os.path.isdir(name_or_dir):
        kwargs["revision"] = revision
    with loading_model(setting, name_or_dir):
        return AutoTokenizer.from_pretrained(name_or_dir, trust_remote_code=bool(trust_remote_code), **kwargs)


def _rust_tokenizer(tokenizer):
    """The underlying `tokenizers.Tokenizer` (fast path), or None for a pure-Python tokenizer."""
    from tokenizers import Tokenizer

    if isinstance(tokenizer, Tokenizer):
        return tokenizer
    return getattr(tokenizer, "backend_tokenizer", None)


def _eos_id(tokenizer) -> int:
    from tokenizers import Tokenizer

    eos = tokenizer.token_to_id(EOS_TOKEN) if isinstance(tokenizer, Tokenizer) else tokenizer.eos_token_id
    if eos is None:
        raise ValueError("add_eos=True but the tokenizer has no end-of-sequence token")
    return int(eos)


def special_ids(tokenizer) -> tuple[int, int]:
    """(eos, pad) ids of an HF tokenizer; pad falls back to eos only when the tokenizer has none (id 0 is an id)."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the LM tokenizer has no end-of-sequence token")
    pad = tokenizer.pad_token_id
    return int(eos), int(eos if pad is None else pad)


def _batch_encoder(tokenizer):
    """texts -> list of id lists, without special tokens (EOS is appended by tokenize_documents)."""
    rust = _rust_tokenizer(tokenizer)
    if rust is not None:
        encode = getattr(rust, "encode_batch_fast", rust.encode_batch)  # fast variant skips offsets
        return lambda texts: [e.ids for e in encode(texts, add_special_tokens=False)]
    return lambda texts: tokenizer(list(texts), add_special_tokens=False)["input_ids"]


def tokenize_documents(tokenizer, texts: Sequence[str], max_tokens: int | None = None, add_eos: bool = True,
                       batch_size: int = 1024, progress: ProgressFn = None) -> tuple[np.ndarray, np.ndarray]:
    """Tokenize documents into ragged arrays (values int32, offsets int64 [n+1]).

    Each document is encoded without special tokens, truncated so that with the EOS (if `add_eos`) it has
    at most `max_tokens` tokens, then EOS is appended. Batches go through the Rust tokenizer; Python only
    touches each document, never each token.
    """
    texts = texts if isinstance(texts, Sequence) else list(texts)
    encode = _batch_encoder(tokenizer)
    eos = _eos_id(tokenizer) if add_eos else None
    cap = None if max_tokens is None else max_tokens - (1 if add_eos else 0)
    if cap is not None and cap < 0:
        raise ValueError(f"max_tokens={max_tokens} leaves no room for the EOS token")
    n = len(texts)
    lengths = np.zeros(n, dtype=np.int64)
    pieces: list[np.ndarray] = []
    for start in range(0, n, batch_size):
        rows = encode(texts[start:start + batch_size])
        for ids in rows:
            if cap is not None and len(ids) > cap:
                del ids[cap:]
            if eos is not None:
                ids.append(eos)
        batch_lengths = [len(ids) for ids in rows]
        lengths[start:start + len(rows)] = batch_lengths
        flat = itertools.chain.from_iterable(rows)
        pieces.append(np.fromiter(flat, dtype=np.int32, count=sum(batch_lengths)))
        if progress:
            progress(min(start + batch_size, n), n, "docs")
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    values = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int32)
    return values, offsets


# ----------------------------------------------------------------------------------------- ragged zarr


def write_ragged_zarr(out_dir: str | os.PathLike, values: np.ndarray, offsets: np.ndarray,
                      name: str = RAGGED_NAME) -> Path:
    """Write `<out_dir>/<name>`: a zarr v3 group with chunked `values` and `offsets` (deterministic bytes)."""
    import zarr

    values = np.ascontiguousarray(values, dtype=np.int32)
    offsets = np.ascontiguousarray(offsets, dtype=np.int64)
    _check_ragged(values, offsets, name)
    path = Path(out_dir) / name
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    group.attrs.update({"layout": "ragged: row i = values[offsets[i]:offsets[i+1]]",
                        "n_rows": int(len(offsets) - 1)})
    for key, array, chunk in (("values", values, _VALUES_CHUNK), ("offsets", offsets, _OFFSETS_CHUNK)):
        target = group.create_array(key, shape=array.shape, dtype=array.dtype,
                                    chunks=(max(1, min(chunk, len(array))),))
        if len(array):
            target[:] = array
    return path


def read_ragged_zarr(out_dir: str | os.PathLike, name: str = RAGGED_NAME) -> tuple[np.ndarray, np.ndarray]:
    import zarr

    path = Path(out_dir) / name
    if not path.exists():
        raise FileNotFoundError(f"{path}: no ragged token group here")
    group = zarr.open_group(str(path), mode="r")
    values = np.asarray(group["values"][:], dtype=np.int32)
    offsets = np.asarray(group["offsets"][:], dtype=np.int64)
    _check_ragged(values, offsets, str(path))
    return values, offsets


class RaggedShards:
    """The tokenized pool: one ragged zarr group per shard, in pool order, read one shard at a time."""

    def __init__(self, dirs: Sequence[str | os.PathLike], name: str = RAGGED_NAME):
        self.dirs = [Path(d) for d in dirs]
        self.name = name

    def _offsets_array(self, shard: int):
        import zarr

        path = self.dirs[shard] / self.name
        if not path.exists():
            raise FileNotFoundError(f"{path}: no ragged token group here")
        return zarr.open_group(str(path), mode="r")["offsets"]

    def _offsets(self, shard: int) -> np.ndarray:
        return np.asarray(self._offsets_array(shard)[:], dtype=np.int64)

    def __len__(self) -> int:
        return sum(self._offsets_array(s).shape[0] - 1 for s in range(len(self.dirs)))

    def lengths(self) -> np.ndarray:
        """Token count of every document of the pool (int64 [n]); reads only the offsets."""
        return np.concatenate([np.diff(self._offsets(s)) for s in range(len(self.dirs))] or [np.zeros(0, np.int64)])

    def rows(self, global_index: np.ndarray) -> Iterator[np.ndarray]:
        """Token rows (int32 copies) of these documents, which must be sorted ascending; one shard in memory."""
        index = np.asarray(global_index, dtype=np.int64).reshape(-1)
        if np.any(np.diff(index) < 0):
            raise ValueError("RaggedShards.rows: document indices must be sorted ascending")
        start = 0
        for shard in range(len(self.dirs)):
            stop = start + self._offsets_array(shard).shape[0] - 1
            local = index[(index >= start) & (index < stop)] - start
            if local.size:
                values, offsets = read_ragged_zarr(self.dirs[shard], self.name)
                for i in local:
                    yield values[offsets[i]:offsets[i + 1]].copy()
            start = stop
        if index.size and index[-1] >= start:
            raise IndexError(f"document index {int(index[-1])} is beyond the {start} documents of the pool")


def bpe_training_sample(n_docs: int, limit: int) -> np.ndarray:
    """Sorted indices of the documents a BPE tokenizer trains on: all of them, or a fixed-seed sample of limit."""
    if n_docs <= limit:
        return np.arange(n_docs, dtype=np.int64)
    seed = int(stable_hash("bpe-sample", 8), 16)
    return np.sort(np.random.default_rng(seed).permutation(n_docs)[:limit])


def _check_ragged(values: np.ndarray, offsets: np.ndarray, where: str) -> None:
    if offsets.ndim != 1 or len(offsets) < 1 or offsets[0] != 0:
        raise ValueError(f"{where}: offsets must be 1-d and start at 0")
    if np.any(np.diff(offsets) < 0) or offsets[-1] != len(values):
        raise ValueError(f"{where}: offsets must be non-decreasing and end at len(values)={len(values)}")
