"""Pool readers: local jsonl / parquet / text files, Hugging Face datasets and the generated demo corpus.

Every reader yields `Document`s in a stable order with a stable id `"<source>:<row>"`:
- local files: source = the file path as the manifest wrote it (relative paths and glob matches relative to
  the manifest's folder, absolute ones as given; normalized, posix separators), so an identical manifest run
  from another folder gives identical ids; row = 0-based line index (jsonl, text) or row index (parquet);
- hub datasets: source = `"hf:<name>/<config>/<split>"`, row = 0-based row index.

Bad input raises `SourceError` naming the file, line/row and field. With `on_bad_record="skip"` the
record-level problems (malformed JSON, missing or null text field, invalid UTF-8, a lone surrogate escape such
as `"\\ud800"` in any field, empty text, a document over `max_chars` with `long_documents="reject"`) are
skipped and counted by reason instead; file-level problems (missing file, a directory, an empty file, a
non-parquet `.parquet` file, sha256 mismatch, wrong column type, one file listed under two spellings) and a
shard left with no documents always raise, before or instead of any downstream work.

The bytes a shard's documents come from are the bytes hashed: readers hash each file as they read it, and
`read_shard(expected=...)` fails when they differ from the content the build was keyed on (a file rewritten
between hashing and reading), so a stored documents artifact can never hold text of another version.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal, Optional

from .hashing import FileHashCache, cached_sha256_file, sha256_bytes, stable_hash

Format = Literal["jsonl", "parquet", "text", "hf", "demo"]
OnBadRecord = Literal["error", "skip"]
LongDocuments = Literal["truncate", "reject"]
FORMATS = ("jsonl", "parquet", "text", "hf", "demo")
LOCAL_FORMATS = ("jsonl", "parquet", "text")
_CHUNK = 1 << 20

# Reasons a record can be skipped; the keys of ReadStats.skipped.
MALFORMED, MISSING_FIELD, NULL, INVALID_UTF8, EMPTY, TOO_LONG, LONE_SURROGATE = (
    "malformed", "missing_field", "null", "invalid_utf8", "empty", "too_long", "lone_surrogate")
# A JSON escape of a UTF-16 surrogate (\ud800-\udfff): only a pair of them is a character.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


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
    """What a shard read saw: rows read, documents kept, records skipped per reason, documents truncated,
    and the sha256 of every local file as it was read."""

    n_read: int = 0
    n_kept: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    truncated: int = 0
    file_sha256: dict[str, str] = field(default_factory=dict)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def as_dict(self) -> dict:
        return {"n_read": self.n_read, "n_kept": self.n_kept, "skipped": dict(sorted(self.skipped.items())),
                "truncated": self.truncated}

    @classmethod
    def from_dict(cls, data: dict) -> ReadStats:
        return cls(data.get("n_read", 0), data.get("n_kept", 0), dict(data.get("skipped", {})),
                   data.get("truncated", 0))

    def notes(self) -> list[str]:
        """What a person should hear about: skipped records by reason, truncated documents."""
        notes = []
        if self.skipped:
            reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(self.skipped.items()))
            notes.append(f"skipped {sum(self.skipped.values())} of {self.n_read} record(s): {reasons}")
        if self.truncated:
            notes.append(f"truncated {self.truncated} document(s) to the shard's max_chars")
        return notes


@dataclass(frozen=True)
class ShardSpec:
    """One pool shard. `paths` are relative to `base_dir` (globs allowed); ids use them as written.

    format "text": `text_mode` "line" = one document per line, "file" = one document per file (row 0).
    format "hf": `hf_name` is a hub id or a local dataset directory (`save_to_disk` output or a builder
    name such as "json" with `hf_data_files`), plus config / split / revision / streaming.
    format "demo": the built-in generated corpus (`demo_params`, `demo_shard_index`).
    `sha256`: optional {relative path: hex digest}; a mismatch is always an error.
    `limit`: read only the first `limit` records of the shard (any format).
    `max_chars`: documents longer than this are truncated to it (`long_documents="truncate"`) or rejected as
    bad records (`"reject"`); None = no cap.
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
    limit: Optional[int] = None
    max_chars: Optional[int] = None
    long_documents: LongDocuments = "truncate"
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
        if self.long_documents not in ("truncate", "reject"):
            raise SourceError(f"long_documents must be 'truncate' or 'reject', got {self.long_documents!r}",
                              field="long_documents")


# ---------------------------------------------------------------------------------------------- files


def _has_glob(pattern: str) -> bool:
    return any(ch in pattern for ch in "*?[")


def _as_written(path: str) -> str:
    """The path as ids show it: as the manifest wrote it (relative stays relative), normalized, posix."""
    return Path(os.path.normpath(path)).as_posix()


def resolve_files(spec: ShardSpec) -> list[str]:
    """The shard's files as sorted, de-duplicated paths as written (globs expanded against base_dir)."""
    found: set[str] = set()
    for pattern in spec.paths:
        if _has_glob(pattern):
            root = None if os.path.isabs(pattern) else spec.base_dir
            matches = [m for m in glob.glob(pattern, root_dir=root, recursive=True)
                       if os.path.isfile(os.path.join(spec.base_dir, m))]
            if not matches:
                raise SourceError(f"no files match the pattern (base dir {spec.base_dir!r})", file=pattern,
                                  reason="missing_file")
            found.update(_as_written(m) for m in matches)
        else:
            found.add(_as_written(pattern))
    files = sorted(found)
    _check_listed_once(spec, files)
    return files


def _real_path(rel: str, spec: ShardSpec) -> str:
    """The file a path names, whatever its spelling (relative or absolute, `..`, symlinks)."""
    return os.path.realpath(_absolute(rel, spec))


def _check_listed_once(spec: ShardSpec, files: list[str]) -> None:
    """Two spellings of one file in a shard (relative and absolute, a symlink, a glob that matches both)
    would read its documents twice."""
    seen: dict[str, str] = {}
    for rel in files:
        real = _real_path(rel, spec)
        if real in seen:
            raise SourceError(f"the same file as {seen[real]!r} (listed twice in shard {spec.name!r} under two "
                              f"spellings), so its documents would be read twice; list it once", file=rel,
                              field="paths", reason="duplicate_source")
        seen[real] = rel


def _absolute(rel: str, spec: ShardSpec) -> str:
    return os.path.join(spec.base_dir, rel)


def _check_local_file(rel: str, spec: ShardSpec) -> None:
    path = _absolute(rel, spec)
    if os.path.isdir(path):
        raise SourceError("is a directory, not a file (list its files or use a glob such as dir/*.jsonl)",
                          file=rel, field="paths", reason="not_a_file")
    if not os.path.isfile(path):
        raise SourceError(f"file does not exist (base dir {spec.base_dir!r})", file=rel, reason="missing_file")
    if os.path.getsize(path) == 0:
        raise SourceError("file is empty (0 bytes): a shard file must hold at least one document", file=rel,
                          reason="empty_file")
    if spec.format == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            pq.read_metadata(path)
        except (pa.ArrowInvalid, OSError) as err:
            raise SourceError(f"not a parquet file ({err})", file=rel, reason="not_parquet") from None


def check_files(spec: ShardSpec) -> list[str]:
    """Cheap validation before any expensive work: every file exists, is a non-empty file (a readable parquet
    footer for parquet shards) and matches its given sha256.

    Returns the shard's file paths (as written) in read order. Hub and demo shards have no local files to
    check (a local hub dataset directory must exist).
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
        _check_local_file(rel, spec)
    for rel, expected in sorted((spec.sha256 or {}).items()):
        key = _as_written(rel)
        if key not in files:
            raise SourceError(f"sha256 given for a file that is not part of shard {spec.name!r}", file=rel,
                              field="sha256", reason="sha256_mismatch")
        actual = cached_sha256_file(_absolute(key, spec))
        if actual.lower() != expected.lower():
            raise SourceError(f"sha256 mismatch: expected {expected}, file has {actual}", file=key,
                              field="sha256", reason="sha256_mismatch")
    return files


@dataclass(frozen=True)
class ShardContent:
    """What a shard's documents are built from: the sha256 of each local file, and one hash over them."""

    hash: str
    files: dict[str, str] = field(default_factory=dict)


def _combine(files: dict[str, str]) -> str:
    return sha256_bytes("".join(f"{rel}\0{digest}\n" for rel, digest in sorted(files.items())).encode("utf-8"))


def shard_content(spec: ShardSpec) -> ShardContent:
    """Content identity of a shard's input, for observable source assets (paths as written, order-free).

    Local files: sha256 over (path, file sha256), each file hashed again only when its size, mtime or inode
    changed (hashing.cached_sha256_file). Hub: the dataset identity (name, config, split, revision, data
    files), or the content of a local dataset directory. Demo: the generator version and its parameters (the
    generated text is a pure function of them).
    """
    if spec.format == "demo":
        from . import demo_corpus

        return ShardContent(stable_hash({"demo_version": demo_corpus.DEMO_VERSION,
                                         "params": spec.demo_params.as_dict(), "shard": spec.demo_shard_index},
                                        length=64))
    if spec.format == "hf":
        return ShardContent(_hf_content_hash(spec))
    files = {rel: cached_sha256_file(_absolute(rel, spec)) for rel in check_files(spec)}
    return ShardContent(_combine(files), files)


def file_content_hash(spec: ShardSpec) -> str:
    return shard_content(spec).hash


def id_sources(spec: ShardSpec) -> list[str]:
    """The `source` part of every document id the shard can produce (without reading it)."""
    if spec.format == "demo":
        from .demo_corpus import demo_shard_source

        return [demo_shard_source(spec.demo_shard_index)]
    if spec.format == "hf":
        return [hf_source_name(spec)]
    return resolve_files(spec)


def _source_identities(spec: ShardSpec) -> list[tuple[str, str]]:
    """(what is read, as the ids write it) for each source of a shard: local files and local dataset folders
    by real path, so two spellings of one file are one source."""
    if spec.format in LOCAL_FORMATS:
        return [(_real_path(rel, spec), rel) for rel in resolve_files(spec)]
    local = _local_dataset_dir(spec) if spec.format == "hf" else None
    if local is not None:
        real = f"hf:{os.path.realpath(local)}/{spec.hf_config or 'default'}/{spec.hf_split}"
        return [(real, hf_source_name(spec))]
    return [(source, source) for source in id_sources(spec)]


def check_shards_disjoint(specs: Sequence[ShardSpec]) -> None:
    """Fail before any work when two shards would read the same source (the same file under any spelling,
    the same hub dataset split, or the same demo shard listed twice): the pool would silently double."""
    owner: dict[str, tuple[str, str]] = {}
    for index, spec in enumerate(specs):
        for identity, source in _source_identities(spec):
            first_shard, first_spelling = owner.get(identity, (spec.name, source))
            if first_shard != spec.name and first_spelling == source:
                raise SourceError(f"shards {first_shard!r} and {spec.name!r} both read it, so their document "
                                  f"ids would collide; list each file in one shard only", file=source,
                                  field=f"sources.shards[{index}]", reason="duplicate_source")
            if first_shard != spec.name:
                raise SourceError(f"the same file as {first_spelling!r} in shard {first_shard!r}, so shards "
                                  f"{first_shard!r} and {spec.name!r} would both read its documents; list each "
                                  f"file in one shard only", file=source, field=f"sources.shards[{index}]",
                                  reason="duplicate_source")
            owner[identity] = (spec.name, source)


# -------------------------------------------------------------------------------------------- readers


def _text_problem(value: Any, file: str, row: int, field_name: str) -> tuple[str | None, str | None]:
    """(text, None) for a usable text, (None, reason) for a skippable problem; raise for a non-string."""
    if value is None:
        return None, NULL
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            return None, INVALID_UTF8
    if not isinstance(value, str):
        raise SourceError(f"text must be a string, got {type(value).__name__}", file=file, row=row,
                          field=field_name, reason="non_string")
    if _has_lone_surrogate(value):
        return None, LONE_SURROGATE
    if not value.strip():
        return None, EMPTY
    return value, None


_MESSAGES = {
    MALFORMED: "malformed JSON line",
    MISSING_FIELD: "missing text field",
    NULL: "text is null",
    INVALID_UTF8: "invalid UTF-8",
    EMPTY: "empty (whitespace-only) document",
    TOO_LONG: "document longer than the shard's max_chars",
    LONE_SURROGATE: "lone surrogate escape (such as \\ud800): not valid Unicode text, it cannot be stored",
}


def _has_lone_surrogate(value: Any) -> bool:
    """A string (or any string inside a JSON value, keys too) that is not valid Unicode text."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(_has_lone_surrogate(k) or _has_lone_surrogate(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return any(_has_lone_surrogate(v) for v in value)
    return False


def _lone_surrogate_field(record: dict) -> Optional[str]:
    """The first field of a record whose name or value holds a lone surrogate, or None."""
    return next((str(key) for key, value in record.items()
                 if _has_lone_surrogate(key) or _has_lone_surrogate(value)), None)


def _bad_record(reason: str, detail: str, file: str, row: int, field_name: str | None,
                on_bad_record: OnBadRecord, stats: ReadStats) -> None:
    if on_bad_record == "skip":
        stats.skip(reason)
        return
    message = _MESSAGES[reason] + (f": {detail}" if detail else "")
    raise SourceError(message, file=file, row=row, field=field_name, reason=reason)


def _keep(value: Any, spec: ShardSpec, file: str, row: int, field_name: str | None, on_bad_record: OnBadRecord,
          stats: ReadStats) -> Optional[str]:
    """The document text of a raw value (capped at max_chars), or None for a skipped record."""
    text, reason = _text_problem(value, file, row, field_name)
    detail = ""
    if text is not None and spec.max_chars is not None and len(text) > spec.max_chars:
        if spec.long_documents == "truncate":
            stats.truncated += 1
            text = text[: spec.max_chars]
        else:
            reason, detail = TOO_LONG, f"{len(text)} characters, max_chars is {spec.max_chars}"
    if reason:
        _bad_record(reason, detail, file, row, field_name, on_bad_record, stats)
        return None
    stats.n_kept += 1
    return text


def _limit_reached(spec: ShardSpec, stats: ReadStats) -> bool:
    return spec.limit is not None and stats.n_read >= spec.limit


class _HashedFile:
    """A local file hashed as it is read, so the digest is of exactly the bytes the documents came from."""

    def __init__(self, path: str):
        self.handle: BinaryIO = open(path, "rb")
        self.digest = hashlib.sha256()

    def __enter__(self) -> _HashedFile:
        return self

    def __exit__(self, *exc) -> None:
        self.handle.close()

    def lines(self) -> Iterator[bytes]:
        for raw in self.handle:
            self.digest.update(raw)
            yield raw

    def read(self) -> bytes:
        data = self.handle.read()
        self.digest.update(data)
        return data

    def finish(self) -> str:
        """The digest of the whole file (the rest, after a `limit`, is hashed unread)."""
        while block := self.handle.read(_CHUNK):
            self.digest.update(block)
        return self.digest.hexdigest()


def _iter_jsonl(spec: ShardSpec, rel: str, on_bad_record: OnBadRecord, stats: ReadStats) -> Iterator[Document]:
    with _HashedFile(_absolute(rel, spec)) as source:
        for row, raw in enumerate(source.lines()):
            if _limit_reached(spec, stats):
                break
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
            if _SURROGATE_ESCAPE.search(raw) and (bad := _lone_surrogate_field(record)) is not None:
                _bad_record(LONE_SURROGATE, "", rel, row, bad, on_bad_record, stats)
                continue
            if spec.text_field not in record:
                _bad_record(MISSING_FIELD, "", rel, row, spec.text_field, on_bad_record, stats)
                continue
            text = _keep(record.pop(spec.text_field), spec, rel, row, spec.text_field, on_bad_record, stats)
            if text is not None:
                yield Document(f"{rel}:{row}", text, rel, row, record)
        stats.file_sha256[rel] = source.finish()


def _iter_text(spec: ShardSpec, rel: str, on_bad_record: OnBadRecord, stats: ReadStats) -> Iterator[Document]:
    with _HashedFile(_absolute(rel, spec)) as source:
        chunks = [source.read()] if spec.text_mode == "file" else source.lines()
        for row, raw in enumerate(chunks):
            if _limit_reached(spec, stats):
                break
            stats.n_read += 1
            if spec.text_mode == "line":
                raw = raw.rstrip(b"\r\n")
            text = _keep(raw, spec, rel, row, None, on_bad_record, stats)
            if text is not None:
                yield Document(f"{rel}:{row}", text, rel, row, {})
        stats.file_sha256[rel] = source.finish()


def _parquet_text_check(schema, spec: ShardSpec, rel: str) -> None:
    import pyarrow as pa

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


def _iter_parquet(spec: ShardSpec, rel: str, on_bad_record: OnBadRecord, stats: ReadStats) -> Iterator[Document]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    with _HashedFile(_absolute(rel, spec)) as source:
        before = os.fstat(source.handle.fileno())
        digest = source.finish()  # parquet is read by seeking: hash first, then read through the same handle
        source.handle.seek(0)
        try:
            parquet = pq.ParquetFile(source.handle)
        except pa.ArrowInvalid as err:
            raise SourceError(f"not a parquet file ({err})", file=rel, reason="not_parquet") from None
        schema = parquet.schema_arrow
        _parquet_text_check(schema, spec, rel)
        meta_names = [n for n in schema.names if n != spec.text_field]
        row = 0
        for batch in parquet.iter_batches(batch_size=4096):
            if _limit_reached(spec, stats):
                break
            # Read text as raw bytes and decode here, so invalid UTF-8 is reported per row instead of failing.
            texts = batch.column(spec.text_field).cast(pa.large_binary()).to_pylist()
            metas = batch.select(meta_names).to_pylist() if meta_names else [{} for _ in texts]
            for value, meta in zip(texts[: spec.limit - stats.n_read] if spec.limit else texts, metas):
                stats.n_read += 1
                text = _keep(value, spec, rel, row, spec.text_field, on_bad_record, stats)
                if text is not None:
                    yield Document(f"{rel}:{row}", text, rel, row, meta)
                row += 1
        after = os.fstat(source.handle.fileno())
    if (before.st_size, before.st_mtime_ns, before.st_ctime_ns) != (after.st_size, after.st_mtime_ns,
                                                                     after.st_ctime_ns):
        raise SourceError("file changed while it was being read; run again", file=rel,
                          reason="changed_during_read")
    stats.file_sha256[rel] = digest


# --------------------------------------------------------------------------------------- hugging face


def _local_dataset_dir(spec: ShardSpec) -> str | None:
    """The local directory `hf_name` names, if it is one (an explicit path, or one existing under base_dir)."""
    name = spec.hf_name or ""
    candidate = name if os.path.isabs(name) else os.path.join(spec.base_dir, name)
    if name.startswith((".", "/", "~")) or os.path.isdir(candidate):
        return candidate
    return None


def hf_source_name(spec: ShardSpec) -> str:
    name = _as_written(spec.hf_name) if _local_dataset_dir(spec) else spec.hf_name
    return f"hf:{name}/{spec.hf_config or 'default'}/{spec.hf_split}"


def _hf_content_hash(spec: ShardSpec) -> str:
    from .hashing import hash_dir

    local = _local_dataset_dir(spec)
    if local is not None and os.path.isdir(local):
        return hash_dir(local, file_digest=cached_sha256_file)
    data_files = []
    for pattern in spec.hf_data_files or ():
        data_files.extend(resolve_files(ShardSpec(name=spec.name, format="jsonl", paths=(pattern,),
                                                  base_dir=spec.base_dir)))
    hashed = [(rel, cached_sha256_file(_absolute(rel, spec))) for rel in data_files]
    return stable_hash({"name": spec.hf_name, "config": spec.hf_config, "split": spec.hf_split,
                        "revision": spec.hf_revision, "data_files": hashed, "limit": spec.limit}, length=64)


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
    name = local if os.path.isdir(local) else spec.hf_name
    # Always said, never left to a library default or a prompt.
    return datasets.load_dataset(name, spec.hf_config, trust_remote_code=spec.trust_remote_code, **kwargs)


def _iter_hf(spec: ShardSpec, on_bad_record: OnBadRecord, stats: ReadStats) -> Iterator[Document]:
    source = hf_source_name(spec)
    dataset = _load_hf(spec)
    columns = getattr(dataset, "column_names", None)
    if columns is not None and spec.text_field not in columns:
        raise SourceError(f"missing text column; columns are {columns}", file=source, field=spec.text_field,
                          reason=MISSING_FIELD)
    for row, record in enumerate(dataset):
        if _limit_reached(spec, stats):
            break
        stats.n_read += 1
        record = dict(record)
        if (bad := _lone_surrogate_field(record)) is not None:
            _bad_record(LONE_SURROGATE, "", source, row, bad, on_bad_record, stats)
            continue
        if spec.text_field not in record:
            _bad_record(MISSING_FIELD, "", source, row, spec.text_field, on_bad_record, stats)
            continue
        text = _keep(record.pop(spec.text_field), spec, source, row, spec.text_field, on_bad_record, stats)
        if text is not None:
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
            if _limit_reached(spec, stats):
                return
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
        if _limit_reached(spec, stats):
            return
        yield from reader(spec, rel, on_bad_record, stats)


def read_shard(spec: ShardSpec, on_bad_record: OnBadRecord = "error",
               expected: Optional[ShardContent] = None) -> tuple[list[Document], ReadStats]:
    """All documents of a shard (files checked first), plus what was read and skipped.

    `expected`: the content the caller keyed its result on (`shard_content`); a file whose bytes as read
    differ from it is an error. A shard that yields no document is an error too (it would fail much later).
    """
    check_files(spec)
    stats = ReadStats()
    documents = list(iter_documents(spec, on_bad_record, stats))
    _check_read_matches(spec, stats, expected)
    if not documents:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(stats.skipped.items()))
        what = f"all {stats.n_read} records were skipped ({reasons})" if stats.n_read else "it holds no records"
        raise SourceError(f"shard {spec.name!r} has no documents: {what}",
                          file=", ".join(id_sources(spec)[:3]) or None, reason="empty_shard")
    return documents, stats


def _check_read_matches(spec: ShardSpec, stats: ReadStats, expected: Optional[ShardContent]) -> None:
    if expected is None or not expected.files:
        return
    changed = sorted(rel for rel, digest in stats.file_sha256.items() if expected.files.get(rel) != digest)
    if not changed:
        return
    cache = FileHashCache()
    for rel in changed:  # the next run hashes them afresh
        cache.forget(os.path.abspath(_absolute(rel, spec)))
    raise SourceError("changed while the shard was being read (its bytes no longer match the content hash this "
                      "build was keyed on); nothing was stored, run `gmates sync` again", file=changed[0],
                      reason="changed_during_read")


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
