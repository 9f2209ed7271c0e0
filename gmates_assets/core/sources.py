"""Pool readers: local jsonl / parquet / text files, Hugging Face datasets and the generated demo corpus.

Every reader yields `Document`s in a stable order with a stable id `"<source>:<row>"`:
- local files: source = the file path relative to the shard's base directory (as the manifest wrote it,
  never absolute), row = 0-based line index (jsonl, text) or row index (parquet);
- hub datasets: source = `"hf:<name>/<config>/<split>"`, row = 0-based row index.

Bad input raises `SourceError` naming the file, line/row and field. With `on_bad_record="skip"` the
record-level problems (malformed JSON, missing text field, invalid UTF-8, empty text) are skipped and counted
by reason instead; file-level problems (missing file, sha256 mismatch, wrong column type) always raise.
"""
from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal, Optional

from .hashing import sha256_bytes, sha256_file, stable_hash

Format = Literal["jsonl", "parquet", "text", "hf", "demo"]
OnBadRecord = Literal["error", "skip"]
FORMATS = ("jsonl", "parquet", "text", "hf", "demo")

# Reasons a record can be skipped; the keys of ReadStats.skipped.
MALFORMED, MISSING_FIELD, INVALID_UTF8, EMPTY = "malformed", "missing_field", "invalid_utf8", "empty"


class SourceError(ValueError):
    """Bad source input; the message names the file, the line/row and the field."""

    def __init__(self, message: str, *, file: str | None = None, row: int | None = None,
                 field: str | None = None, reason: str | None = None):
        self.file, self.row, self.field, self.reason = file, row, field, reason
        where = []
        if file is not None:
            where.append(str(file))
        if row is not None:
            where.append(f"line {row + 1} (row {row})")
        if field is not None:
            where.append(f"field {field!r}")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)


@dataclass
class Document:
    doc_id: str
    text: str
    source: str
    row: int
    meta: dict = field(default_factory=dict)


@dataclass
class ReadStats:
    """What a shard read saw: rows read, documents kept, records skipped per reason."""

    n_read: int = 0
    n_kept: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def as_dict(self) -> dict:
        return {"n_read": self.n_read, "n_kept": self.n_kept, "skipped": dict(sorted(self.skipped.items()))}


@dataclass(frozen=True)
class ShardSpec:
    """One pool shard. `paths` are relative to `base_dir` (globs allowed); ids use them as written.

    format "text": `text_mode` "line" = one document per line, "file" = one document per file (row 0).
    format "hf": `hf_name` is a hub id or a local dataset directory (`save_to_disk` output or a builder
    name such as "json" with `hf_data_files`), plus config / split / revision / streaming / limit.
    format "demo": the built-in generated corpus (`demo_params`, `demo_shard_index`).
    `sha256`: optional {relative path: hex digest}; a mismatch is always an error.
    """

    name: str
    format: Format
    paths: tuple[str, ...] = ()
    base_dir: str = "."
    text_field: str = "text"
    text_mode: Literal["line", "file"] = "line"
    sha256: Optional[dict[str, str]] = None
    hf_name: Optional[str] = None
    hf_config: Optional[str] = None
    hf_split: str = "train"
    hf_revision: Optional[str] = None
    hf_data_files: Optional[tuple[str, ...]] = None
    hf_streaming: bool = False
    hf_limit: Optional[int] = None
    trust_remote_code: bool = False
    demo_params: Any = None  # demo_corpus.DemoCorpusParams
    demo_shard_index: int = 0

    def __post_init__(self):
        if self.format not in FORMATS:
            raise SourceError(f"unknown format {self.format!r}; expected one of {FORMATS}", field="format")
        if isinstance(self.paths, (str, os.PathLike)):
            object.__setattr__(self, "paths", (str(self.paths),))
        else:
            object.__setattr__(self, "paths", tuple(str(p) for p in self.paths))
        if self.hf_data_files is not None and not isinstance(self.hf_data_files, tuple):
            files = self.hf_data_files
            object.__setattr__(self, "hf_data_files", (files,) if isinstance(files, str) else tuple(files))
        if self.format in ("jsonl", "parquet", "text") and not self.paths:
            raise SourceError(f"shard {self.name!r} ({self.format}) lists no paths", field="paths")
        if self.format == "hf" and not self.hf_name:
            raise SourceError(f"shard {self.name!r} (hf) needs hf_name", field="hf_name")
        if self.format == "demo" and self.demo_params is None:
            raise SourceError(f"shard {self.name!r} (demo) needs demo_params", field="demo_params")
        if self.text_mode not in ("line", "file"):
            raise SourceError(f"text_mode must be 'line' or 'file', got {self.text_mode!r}", field="text_mode")


# ---------------------------------------------------------------------------------------------- files


def _has_glob(pattern: str) -> bool:
    return any(ch in pattern for ch in "*?[")


def _relative(path: str, base_dir: str) -> str:
    """The path as ids should show it: relative to base_dir, posix separators, never absolute."""
    if os.path.isabs(path):
        path = os.path.relpath(path, base_dir)
    return Path(os.path.normpath(path)).as_posix()


def resolve_files(spec: ShardSpec) -> list[str]:
    """The shard's files as sorted, de-duplicated relative paths (globs expanded against base_dir)."""
    found: set[str] = set()
    for pattern in spec.paths:
        if _has_glob(pattern):
            full = pattern if os.path.isabs(pattern) else os.path.join(spec.base_dir, pattern)
            matches = [m for m in glob.glob(full, recursive=True) if os.path.isfile(m)]
            if not matches:
                raise SourceError(f"no files match the pattern (base dir {spec.base_dir!r})", file=pattern,
                                  reason="missing_file")
            found.update(_relative(os.path.relpath(m, spec.base_dir), spec.base_dir) for m in matches)
        else:
            found.add(_relative(pattern, spec.base_dir))
    return sorted(found)


def _absolute(rel: str, spec: ShardSpec) -> str:
    return os.path.join(spec.base_dir, rel)


def check_files(spec: ShardSpec) -> list[str]:
    """Cheap validation before any expensive work: every file exists and matches its given sha256.

    Returns the shard's relative file paths in read order. Hub and demo shards have no local files to check
    (a local hub dataset directory must exist).
    """
    if spec.format == "demo":
        return []
    if spec.format == "hf":
        local = _local_dataset_dir(spec)
        if local is not None and not os.path.isdir(local):
            raise SourceError("local dataset directory does not exist", file=spec.hf_name, reason="missing_file")
        return []
    files = resolve_files(spec)
    for rel in files:
        if not os.path.isfile(_absolute(rel, spec)):
            raise SourceError(f"file does not exist (base dir {spec.base_dir!r})", file=rel, reason="missing_file")
    for rel, expected in sorted((spec.sha256 or {}).items()):
        key = _relative(rel, spec.base_dir)
        if key not in files:
            raise SourceError(f"sha256 given for a file that is not part of shard {spec.name!r}", file=rel,
                              field="sha256", reason="sha256_mismatch")
        actual = sha256_file(_absolute(key, spec))
        if actual.lower() != expected.lower():
            raise SourceError(f"sha256 mismatch: expected {expected}, file has {actual}", file=key,
                              field="sha256", reason="sha256_mismatch")
    return files


def file_content_hash(spec: ShardSpec) -> str:
    """Content hash of a shard's input, for observable source assets (path-relative, order-independent).

    Local files: sha256 over (relative path, file sha256). Hub: the dataset identity (name, config, split,
    revision, data files), or the content of a local dataset directory. Demo: the generator version and its
    parameters (the generated text is a pure function of them).
    """
    if spec.format == "demo":
        from . import demo_corpus

        return stable_hash({"demo_version": demo_corpus.DEMO_VERSION, "params": spec.demo_params.as_dict(),
                            "shard": spec.demo_shard_index}, length=64)
    if spec.format == "hf":
        return _hf_content_hash(spec)
    lines = [f"{rel}\0{sha256_file(_absolute(rel, spec))}\n" for rel in check_files(spec)]
    return sha256_bytes("".join(lines).encode("utf-8"))


# -------------------------------------------------------------------------------------------- readers


def _text_problem(value: Any, file: str, row: int, field_name: str) -> tuple[str | None, str | None]:
    """(text, None) for a usable text, (None, reason) for a skippable problem; raise for a non-string."""
    if value is None:
        return None, MISSING_FIELD
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            return None, INVALID_UTF8
    if not isinstance(value, str):
        raise SourceError(f"text must be a string, got {type(value).__name__}", file=file, row=row,
                          field=field_name, reason="non_string")
    if not value.strip():
        return None, EMPTY
    return value, None


_MESSAGES = {
    MALFORMED: "malformed JSON line",
    MISSING_FIELD: "missing text field",
    INVALID_UTF8: "invalid UTF-8",
    EMPTY: "empty (whitespace-only) document",
}


def _bad_record(reason: str, detail: str, file: str, row: int, field_name: str | None,
                on_bad_record: OnBadRecord, stats: ReadStats) -> None:
    if on_bad_record == "skip":
        stats.skip(reason)
        return
    message = _MESSAGES[reason] + (f": {detail}" if detail else "")
    raise SourceError(message, file=file, row=row, field=field_name, reason=reason)


def _iter_jsonl(spec: ShardSpec, rel: str, on_bad_record: OnBadRecord, stats: ReadStats) -> Iterator[Document]:
    with open(_absolute(rel, spec), "rb") as handle:
        for row, raw in enumerate(handle):
            stats.n_read += 1
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                _bad_record(INVALID_UTF8, f"byte {err.start}", rel, row, None, on_bad_record, stats)
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                _bad_record(MALFORMED, err.msg + f" at column {err.colno}", rel, row, None, on_bad_record, stats)
                continue
            if not isinstance(record, dict):
                _bad_record(MALFORMED, f"expected a JSON object, got {type(record).__name__}", rel, row, None,
                            on_bad_record, stats)
                continue
            if spec.text_field not in record:
                _bad_record(MISSING_FIELD, "", rel, row, spec.text_field, on_bad_record, stats)
                continue
            text, reason = _text_problem(record.pop(spec.text_field), rel, row, spec.text_field)
            if reason:
                _bad_record(reason, "", rel, row, spec.text_field, on_bad_record, stats)
                continue
            stats.n_kept += 1
            yield Document(f"{rel}:{row}", text, rel, row, record)


def _iter_text(spec: ShardSpec, rel: str, on_bad_record: OnBadRecord, stats: ReadStats) -> Iterator[Document]:
    with open(_absolute(rel, spec), "rb") as handle:
        chunks = [handle.read()] if spec.text_mode == "file" else handle
        for row, raw in enumerate(chunks):
            stats.n_read += 1
            if spec.text_mode == "line":
                raw = raw.rstrip(b"\r\n")
            text, reason = _text_problem(raw, rel, row, None)
            if reason:
                _bad_record(reason, "", rel, row, None, on_bad_record, stats)
                continue
            stats.n_kept += 1
            yield Document(f"{rel}:{row}", text, rel, row, {})


def _iter_parquet(spec: ShardSpec, rel: str, on_bad_record: OnBadRecord, stats: ReadStats) -> Iterator[Document]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(_absolute(rel, spec))
    schema = parquet.schema_arrow
    if spec.text_field not in schema.names:
        raise SourceError(f"missing text column; columns are {schema.names}", file=rel, field=spec.text_field,
                          reason=MISSING_FIELD)
    text_type = schema.field(spec.text_field).type
    textual = (pa.types.is_string(text_type) or pa.types.is_large_string(text_type)
               or pa.types.is_binary(text_type) or pa.types.is_large_binary(text_type)
               or getattr(pa.types, "is_string_view", lambda t: False)(text_type))
    if not textual:
        raise SourceError(f"text column must be a string column, got {text_type}", file=rel,
                          field=spec.text_field, reason="non_string")
    meta_names = [n for n in schema.names if n != spec.text_field]
    row = 0
    for batch in parquet.iter_batches(batch_size=4096):
        # Read text as raw bytes and decode here, so invalid UTF-8 is reported per row instead of failing.
        texts = batch.column(spec.text_field).cast(pa.large_binary()).to_pylist()
        metas = batch.select(meta_names).to_pylist() if meta_names else [{} for _ in texts]
        for value, meta in zip(texts, metas):
            stats.n_read += 1
            text, reason = _text_problem(value, rel, row, spec.text_field)
            if reason:
                _bad_record(reason, "", rel, row, spec.text_field, on_bad_record, stats)
            else:
                stats.n_kept += 1
                yield Document(f"{rel}:{row}", text, rel, row, meta)
            row += 1


# --------------------------------------------------------------------------------------- hugging face


def _local_dataset_dir(spec: ShardSpec) -> str | None:
    """The local directory `hf_name` names, if it is one (an explicit path, or one existing under base_dir)."""
    name = spec.hf_name or ""
    candidate = name if os.path.isabs(name) else os.path.join(spec.base_dir, name)
    if name.startswith((".", "/", "~")) or os.path.isdir(candidate):
        return candidate
    return None


def hf_source_name(spec: ShardSpec) -> str:
    name = _relative(spec.hf_name, spec.base_dir) if _local_dataset_dir(spec) else spec.hf_name
    return f"hf:{name}/{spec.hf_config or 'default'}/{spec.hf_split}"


def _hf_content_hash(spec: ShardSpec) -> str:
    from .hashing import hash_dir

    local = _local_dataset_dir(spec)
    if local is not None and os.path.isdir(local):
        return hash_dir(local)
    data_files = []
    for pattern in spec.hf_data_files or ():
        data_files.extend(resolve_files(ShardSpec(name=spec.name, format="jsonl", paths=(pattern,),
                                                  base_dir=spec.base_dir)))
    hashed = [(rel, sha256_file(_absolute(rel, spec))) for rel in data_files]
    return stable_hash({"name": spec.hf_name, "config": spec.hf_config, "split": spec.hf_split,
                        "revision": spec.hf_revision, "data_files": hashed, "limit": spec.hf_limit}, length=64)


def _load_hf(spec: ShardSpec):
    import datasets

    local = _local_dataset_dir(spec) or ""
    if os.path.isdir(local) and (os.path.exists(os.path.join(local, "state.json"))
                                 or os.path.exists(os.path.join(local, "dataset_dict.json"))):
        loaded = datasets.load_from_disk(local)  # a `save_to_disk` directory
        if isinstance(loaded, datasets.DatasetDict):
            if spec.hf_split not in loaded:
                raise SourceError(f"split {spec.hf_split!r} not in {sorted(loaded)}", file=spec.hf_name,
                                  field="hf_split")
            loaded = loaded[spec.hf_split]
        return loaded.to_iterable_dataset() if spec.hf_streaming else loaded
    kwargs: dict[str, Any] = {"split": spec.hf_split, "streaming": spec.hf_streaming}
    if spec.hf_revision:
        kwargs["revision"] = spec.hf_revision
    if spec.hf_data_files:
        kwargs["data_files"] = [_absolute(rel, spec) for rel in spec.hf_data_files]
    if spec.trust_remote_code:  # only ever passed when explicitly requested
        kwargs["trust_remote_code"] = True
    name = local if os.path.isdir(local) else spec.hf_name
    return datasets.load_dataset(name, spec.hf_config, **kwargs)


def _iter_hf(spec: ShardSpec, on_bad_record: OnBadRecord, stats: ReadStats) -> Iterator[Document]:
    source = hf_source_name(spec)
    dataset = _load_hf(spec)
    columns = getattr(dataset, "column_names", None)
    if columns is not None and spec.text_field not in columns:
        raise SourceError(f"missing text column; columns are {columns}", file=source, field=spec.text_field,
                          reason=MISSING_FIELD)
    for row, record in enumerate(dataset):
        if spec.hf_limit is not None and row >= spec.hf_limit:
            break
        stats.n_read += 1
        record = dict(record)
        if spec.text_field not in record:
            _bad_record(MISSING_FIELD, "", source, row, spec.text_field, on_bad_record, stats)
            continue
        text, reason = _text_problem(record.pop(spec.text_field), source, row, spec.text_field)
        if reason:
            _bad_record(reason, "", source, row, spec.text_field, on_bad_record, stats)
            continue
        stats.n_kept += 1
        yield Document(f"{source}:{row}", text, source, row, record)


# ------------------------------------------------------------------------------------------ entry points


def iter_documents(spec: ShardSpec, on_bad_record: OnBadRecord = "error",
                   stats: ReadStats | None = None) -> Iterator[Document]:
    """Stream a shard's documents in stable order; `stats` (if given) is filled as records are read."""
    if on_bad_record not in ("error", "skip"):
        raise SourceError(f"on_bad_record must be 'error' or 'skip', got {on_bad_record!r}", field="on_bad_record")
    stats = stats if stats is not None else ReadStats()
    if spec.format == "demo":
        from .demo_corpus import generate_demo_shard

        for doc in generate_demo_shard(spec.demo_params, spec.demo_shard_index):
            stats.n_read += 1
            stats.n_kept += 1
            yield doc
        return
    if spec.format == "hf":
        check_files(spec)
        yield from _iter_hf(spec, on_bad_record, stats)
        return
    reader = {"jsonl": _iter_jsonl, "parquet": _iter_parquet, "text": _iter_text}[spec.format]
    for rel in check_files(spec):
        yield from reader(spec, rel, on_bad_record, stats)


def read_shard(spec: ShardSpec, on_bad_record: OnBadRecord = "error") -> tuple[list[Document], ReadStats]:
    """All documents of a shard (files checked first), plus what was read and skipped."""
    check_files(spec)
    stats = ReadStats()
    documents = list(iter_documents(spec, on_bad_record, stats))
    return documents, stats


# ------------------------------------------------------------------------------- documents.parquet io


def documents_to_table(documents: list[Document]):
    """The `documents.parquet` table of docs/contracts.md (meta as canonical JSON)."""
    import pyarrow as pa

    return pa.table({
        "doc_id": pa.array([d.doc_id for d in documents], pa.string()),
        "text": pa.array([d.text for d in documents], pa.string()),
        "source": pa.array([d.source for d in documents], pa.string()),
        "row": pa.array([d.row for d in documents], pa.int64()),
        "meta": pa.array([json.dumps(d.meta, sort_keys=True, ensure_ascii=False, default=str)
                          for d in documents], pa.string()),
    })


def write_documents_parquet(documents: list[Document], path: str | os.PathLike) -> None:
    import pyarrow.parquet as pq

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(documents_to_table(documents), str(path), compression="zstd")


def read_documents_parquet(path: str | os.PathLike) -> list[Document]:
    import pyarrow.parquet as pq

    table = pq.read_table(str(path)).to_pydict()
    return [Document(doc_id, text, source, row, json.loads(meta)) for doc_id, text, source, row, meta in
            zip(table["doc_id"], table["text"], table["source"], table["row"], table["meta"])]
