"""Dataset release: parquet shards, a lineage manifest with content hashes, a dataset card, and verification.

Layout of a release directory:

    data/train-00000-of-0000N.parquet   the selected documents (doc_id, text, source, influence_score, cluster,
                                        then any extra columns in the order given), rows_per_shard per shard
    README.md                           dataset card; its YAML front matter points `datasets` at data/*.parquet
    manifest.json                       {"format", "content_hash", "content", "volatile"}

`content` holds everything that is a function of the inputs: the caller's lineage (build-manifest fingerprint
and text, per-asset/partition code and data versions, seeds, ...), package versions, dataset counts, the
sha256 of the sorted selected ids and the sha256 of every file (shards and README.md; manifest.json cannot hash
itself). `content_hash` = sha256 of the canonical JSON of `content` (core.hashing.stable_json), so two
releases of the same inputs have the same content hash and byte-identical shards and card. Run ids,
timestamps and the hostname live in `volatile`, outside the hash.

Rows are sorted by doc_id by default (order="doc_id"), which makes the release independent of the order the
upstream table arrived in; order="given" keeps the caller's order (e.g. selection rank).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import math
import os
import re
import shutil
import socket
import sys
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Optional

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from gmates_assets.core.hashing import sha256_bytes, sha256_file, stable_json
from gmates_assets.core.rows import compact

RELEASE_FORMAT = "gmates-release/1"
MANIFEST_NAME = "manifest.json"
CARD_NAME = "README.md"
DATA_DIR = "data"
REQUIRED_COLUMNS = {"doc_id": pa.string(), "text": pa.string(), "source": pa.string(),
                    "influence_score": pa.float64(), "cluster": pa.int64()}
NON_NULL_COLUMNS = ("doc_id", "text", "source")
ROW_GROUP_SIZE = 10_000
MAX_JSON_DEPTH = 100  # a release manifest nests about 10 levels; deeper input is refused before parsing
RECORDED_PACKAGES = ("gmates", "polars", "pyarrow", "numpy", "torch", "transformers", "tokenizers", "faiss-cpu",
                     "zarr", "datasets", "dagster")
_VIEW_TYPES = {pa.string_view(): pa.string(), pa.large_string(): pa.string(), pa.binary_view(): pa.binary(),
               pa.large_binary(): pa.binary()}


class ReleaseError(ValueError):
    """The table or arguments cannot make a release; the message names the column or argument."""


@dataclass(frozen=True)
class ReleaseSummary:
    path: Path
    content_hash: str
    n_rows: int
    n_shards: int
    files: dict[str, str]  # path relative to the release -> sha256
    selected_ids_sha256: str


# ----------------------------------------------------------------------------------------------------------
# Table preparation: pieces are checked and spilled to disk, then each release shard is gathered from them

SPILL_DIR = ".pieces"


def _check_columns(table: pl.DataFrame) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise ReleaseError(f"release table is missing column(s) {missing}; it has {table.columns}")


def _arrow_piece(table: pl.DataFrame, order: str) -> pa.Table:
    """A piece with the release's column order and plain arrow types, sorted by doc_id in doc_id order."""
    if order == "doc_id":
        table = table.sort("doc_id")
    columns = list(REQUIRED_COLUMNS) + [c for c in table.columns if c not in REQUIRED_COLUMNS]
    arrow = table.select(columns).to_arrow()
    return pa.Table.from_arrays([_cast_column(arrow, name) for name in columns], names=columns)


def _cast_column(arrow: pa.Table, name: str) -> pa.ChunkedArray:
    """Plain, widely readable arrow types (polars hands out string views), fixed for the required columns."""
    column = arrow.column(name)
    target = REQUIRED_COLUMNS.get(name) or _VIEW_TYPES.get(column.type, column.type)
    try:
        return column.cast(target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
        raise ReleaseError(f"release table column {name!r} of type {column.type} cannot be stored as {target}: "
                           f"{err}") from None


@dataclass
class _Spill:
    """The checked pieces on disk (arrow IPC, one file per piece) and what the layout needs in memory."""

    directory: Path
    schema: Optional[pa.Schema] = None
    rows: list[int] = field(default_factory=list)  # rows per piece
    ids: list[pl.Series] = field(default_factory=list)  # doc_ids per piece, in the piece's stored order
    nulls: dict[str, int] = field(default_factory=dict)

    def add(self, table: pl.DataFrame, order: str) -> None:
        _check_columns(table)
        for column in NON_NULL_COLUMNS:
            self.nulls[column] = self.nulls.get(column, 0) + table[column].null_count()
        arrow = _arrow_piece(table, order)
        if self.schema is None:
            self.schema = arrow.schema
        elif arrow.schema != self.schema:
            raise ReleaseError(f"release table piece {len(self.rows)} has columns {arrow.schema.names} of types "
                               f"{arrow.schema.types}; the first piece has {self.schema.names} {self.schema.types}")
        with pa.OSFile(str(self.path(len(self.rows))), "wb") as sink, pa.ipc.new_file(sink, arrow.schema) as out:
            out.write_table(arrow)
        self.rows.append(arrow.num_rows)
        self.ids.append(compact(table["doc_id"].sort() if order == "doc_id" else table["doc_id"]))

    def path(self, piece: int) -> Path:
        return self.directory / f"piece-{piece:06d}.arrow"

    def check(self) -> pl.Series:
        """All doc_ids (pieces concatenated); raises on nulls or duplicates as a whole table would."""
        if self.schema is None:
            _check_columns(pl.DataFrame())
        for column in NON_NULL_COLUMNS:
            if self.nulls[column]:
                raise ReleaseError(f"release table column {column!r} has {self.nulls[column]} null value(s)")
        ids = pl.concat(self.ids)
        duplicates = ids.filter(ids.is_duplicated()).unique().sort()
        if len(duplicates):
            raise ReleaseError(f"release table column 'doc_id' has duplicates, e.g. {duplicates.head(3).to_list()}")
        return ids

    def gather(self, piece_rows: list[tuple[int, int, int]], take: np.ndarray) -> pa.Table:
        """Rows [start, stop) of each listed piece (piece, start, stop), concatenated, then taken in `take` order."""
        parts = [self.schema.empty_table()]  # slices of memory maps, unmapped once `take` has copied the rows
        for piece, start, stop in piece_rows:
            parts.append(pa.ipc.open_file(pa.memory_map(str(self.path(piece)))).read_all().slice(start, stop - start))
        return pa.concat_tables(parts).take(take).combine_chunks()


def shard_names(n_shards: int) -> list[str]:
    return [f"{DATA_DIR}/train-{i:05d}-of-{n_shards:05d}.parquet" for i in range(n_shards)]


def _write_shards(spill: _Spill, ids: pl.Series, root: Path, rows_per_shard: int, order: str,
                  stats: _StatsBuilder) -> list[dict[str, Any]]:
    """One release shard at a time. The release visits each piece's rows in their stored order (sorted by doc_id,
    or as given), so a shard takes one contiguous row range [cursor, cursor + count) of every piece."""
    # release row -> row of the concatenated pieces
    positions = ids.arg_sort().to_numpy().astype(np.int64) if order == "doc_id" else np.arange(len(ids))
    starts = np.concatenate([[0], np.cumsum(spill.rows)]).astype(np.int64)
    piece_of = np.searchsorted(starts, positions, side="right") - 1
    cursor = starts[:-1].copy()  # next unread row of each piece
    n_shards = max(1, math.ceil(len(ids) / rows_per_shard))
    (root / DATA_DIR).mkdir(parents=True)
    shards = []
    for index, name in enumerate(shard_names(n_shards)):
        rows = positions[index * rows_per_shard:(index + 1) * rows_per_shard]
        pieces = piece_of[index * rows_per_shard:(index + 1) * rows_per_shard]
        counts = np.bincount(pieces, minlength=len(spill.rows))
        ranges = [(int(i), int(cursor[i] - starts[i]), int(cursor[i] - starts[i] + counts[i]))
                  for i in np.flatnonzero(counts)]
        part = spill.gather(ranges, (np.cumsum(counts) - counts)[pieces] + rows - cursor[pieces])
        cursor += counts
        pq.write_table(part, root / name, compression="zstd", row_group_size=ROW_GROUP_SIZE,
                       write_statistics=True)
        stats.add(part)
        shards.append({"path": name, "rows": part.num_rows})
    return shards


def selected_ids_sha256(doc_ids: Sequence[str] | pl.Series) -> str:
    """sha256 of the sorted ids, each followed by a newline (UTF-8); independent of the row order."""
    ids = (doc_ids if isinstance(doc_ids, pl.Series) else pl.Series("doc_id", list(doc_ids), dtype=pl.String)).sort()
    digest = hashlib.sha256()
    for start in range(0, len(ids), 1 << 16):
        digest.update("".join(f"{doc_id}\n" for doc_id in ids.slice(start, 1 << 16).to_list()).encode("utf-8"))
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------------------
# Manifest content

def package_versions() -> dict[str, str]:
    versions = {}
    for name in RECORDED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


class _StatsBuilder:
    """Dataset counts accumulated shard by shard, in release row order."""

    def __init__(self) -> None:
        self.rows_per_source: dict[str, int] = {}
        self.clusters: set[int] = set()
        self.scores: list[np.ndarray] = []  # finite influence scores, float64

    def add(self, part: pa.Table) -> None:
        frame = pl.from_arrow(part.select(["source", "influence_score", "cluster"]))
        for source, count in frame.group_by("source").len().iter_rows():
            self.rows_per_source[source] = self.rows_per_source.get(source, 0) + count
        self.clusters.update(frame.filter(pl.col("cluster") >= 0)["cluster"].unique().to_list())
        scores = frame["influence_score"].drop_nulls().cast(pl.Float64)
        self.scores.append(scores.filter(scores.is_finite()).to_numpy())

    def result(self, schema: pa.Schema, ids: pl.Series, shards: list[dict[str, Any]], rows_per_shard: int,
               order: str) -> dict[str, Any]:
        scores = np.concatenate(self.scores)
        return {
            "rows": len(ids),
            "rows_per_shard": rows_per_shard,
            "order": order,
            "shards": shards,
            "columns": [{"name": f.name, "type": str(f.type)} for f in schema],
            "rows_per_source": dict(sorted(self.rows_per_source.items())),
            "clusters": len(self.clusters),
            # fsum: exactly rounded, so the mean does not depend on how the column happens to be chunked;
            # argmin/argmax: the first extreme in row order, as min()/max() over the rows would give
            "influence_score": ({"min": float(scores[np.argmin(scores)]), "mean": math.fsum(scores) / len(scores),
                                 "max": float(scores[np.argmax(scores)])} if scores.size else None),
            "selected_ids_sha256": selected_ids_sha256(ids.cast(pl.String)),
        }


def content_hash(content: dict[str, Any]) -> str:
    return sha256_bytes(stable_json(content).encode("utf-8"))


def _canonical_copy(value: Any, what: str) -> Any:
    try:
        return json.loads(stable_json(value))
    except TypeError as err:
        raise ReleaseError(f"{what} must be JSON-like (dicts, lists, str, numbers, bools, null): {err}") from None


# ----------------------------------------------------------------------------------------------------------
# Dataset card

def _size_category(n: int) -> str:
    for bound, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                         (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M")):
        if n < bound:
            return label
    return "n>100M"


def _front_matter(card: dict[str, Any], n_rows: int) -> str:
    meta: dict[str, Any] = {"pretty_name": card.get("pretty_name", "gmates selected subset")}
    for key in ("license", "language", "tags", "task_categories"):
        if key in card:
            meta[key] = card[key]
    meta["size_categories"] = [_size_category(n_rows)]
    meta["configs"] = [{"config_name": "default", "data_files": [{"split": "train", "path": f"{DATA_DIR}/*.parquet"}]}]
    return yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, default_flow_style=False)


DEFAULT_METHOD = (
    "Documents were selected with Group-MATES (group-level data influence): a relational data influence model "
    "predicts each document's influence on a reference loss, the pool is clustered with spherical k-means on "
    "the model's embeddings, and within each cluster a greedy pass picks documents whose predicted influence, "
    "discounted by their relation to the documents already picked, is best (lower is better).")


def _lineage_rows(assets: Any) -> list[tuple[str, str, str, str]]:
    """(asset, partition, code version, data version) from {asset: {partition: versions}} or {asset: versions}."""
    rows = []
    if not isinstance(assets, dict):
        return rows
    for asset, entry in sorted(assets.items()):
        if not isinstance(entry, dict):
            continue
        per_partition = {"": entry} if {"code_version", "data_version"} & set(entry) else entry
        for partition, versions in sorted(per_partition.items()):
            if isinstance(versions, dict):
                rows.append((asset, partition or "-", str(versions.get("code_version", "-")),
                             str(versions.get("data_version", "-"))))
    return rows


def _fmt(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def render_card(card: dict[str, Any], lineage: dict[str, Any], stats: dict[str, Any]) -> str:
    """The README.md text: a pure function of its arguments (no timestamps), so it is content-hashed."""
    manifest = lineage.get("build_manifest") or {}
    lines = ["---", _front_matter(card, stats["rows"]).rstrip("\n"), "---", "",
             f"# {card.get('pretty_name', 'gmates selected subset')}", "",
             str(card.get("description", "A subset of a pretraining pool selected with gmates.")), "",
             "## Selection method", "", str(card.get("method", DEFAULT_METHOD)), "",
             "## Contents", "",
             f"- rows: {stats['rows']} in {len(stats['shards'])} parquet shard(s) under `{DATA_DIR}/`, "
             f"ordered by {'doc_id' if stats['order'] == 'doc_id' else 'the selection order'}",
             f"- clusters represented: {stats['clusters']}"]
    if stats["influence_score"]:
        s = stats["influence_score"]
        lines.append(f"- influence_score (lower is better): min {_fmt(s['min'])}, mean {_fmt(s['mean'])}, "
                     f"max {_fmt(s['max'])}")
    lines += ["", "| column | type |", "|---|---|"] + [f"| {c['name']} | {c['type']} |" for c in stats["columns"]]
    lines += ["", "| source | rows |", "|---|---|"]
    lines += [f"| {source} | {count} |" for source, count in stats["rows_per_source"].items()]
    lines += ["", "## Lineage", "",
              f"- build manifest fingerprint: `{manifest.get('fingerprint', 'not recorded')}` "
              "(full text in manifest.json)",
              f"- selected ids sha256 (sorted ids, one per line): `{stats['selected_ids_sha256']}`"]
    if "seeds" in lineage:
        lines.append(f"- seeds: `{stable_json(lineage['seeds'])}`")
    rows = _lineage_rows(lineage.get("assets"))
    if rows:
        lines += ["", "| asset | partition | code version | data version |", "|---|---|---|---|"]
        lines += [f"| {a} | {p} | `{c}` | `{d}` |" for a, p, c, d in rows]
    lines += ["", "## Loading", "", "```python",
              "import datasets, polars",
              f'ds = datasets.load_dataset("parquet", data_dir="<release>/{DATA_DIR}", split="train")',
              f'df = polars.read_parquet("<release>/{DATA_DIR}/*.parquet")', "```", "",
              "## Verifying", "",
              "`manifest.json` lists the sha256 of every file in this release and a `content_hash` over its "
              "deterministic `content` section (lineage, package versions, counts, file hashes). Check a copy with:",
              "", "```", "gmates release verify <release>", "```", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------
# Writing

def _volatile(lineage: dict[str, Any], extra: dict[str, Any] | None) -> dict[str, Any]:
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    return {"created_at": now, "hostname": socket.gethostname(), **(lineage.get("volatile") or {}), **(extra or {})}


def _install(tmp: Path, out: Path, overwrite: bool) -> None:
    """Move the finished temp directory into place in one rename."""
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            shutil.rmtree(tmp)
            raise FileExistsError(f"release directory {out} is not empty (pass overwrite=True to replace it)")
        trash = out.with_name(f".{out.name}.old-{uuid.uuid4().hex}")
        os.rename(out, trash)
        os.rename(tmp, out)
        shutil.rmtree(trash)
        return
    if out.exists():
        out.rmdir()
    os.rename(tmp, out)


def write_release(out_dir: str | os.PathLike, table: pl.DataFrame | Iterable[pl.DataFrame], rows_per_shard: int,
                  lineage: dict[str, Any], card: dict[str, Any], *, order: str = "doc_id",
                  volatile: dict[str, Any] | None = None, overwrite: bool = False) -> ReleaseSummary:
    """Write a release into `out_dir` (which must be absent or empty unless overwrite=True).

    table: one DataFrame, or an iterable of DataFrames with the same columns (e.g. one per pool shard) that
    together form the table; the release is the same bytes either way. Pieces are checked and spilled to
    disk one at a time, then every release shard is gathered from them, so memory holds one piece or one
    release shard plus the doc_ids, never the whole table. order="given" keeps the concatenation order.

    lineage: JSON-like; recognised keys (all optional) are `build_manifest` {"fingerprint", "text"}, `assets`
    {asset: {partition: {"code_version", "data_version"}}} (or {asset: {...versions}} when unpartitioned),
    `seeds`; anything else is kept as given. A `volatile` key (run ids, ...) goes to the volatile section.
    card: `pretty_name`, `description`, `method`, `license`, `language`, `tags`, `task_categories` (optional).
    """
    if rows_per_shard < 1:
        raise ReleaseError(f"rows_per_shard must be >= 1, got {rows_per_shard}")
    if order not in ("doc_id", "given"):
        raise ReleaseError(f"order must be 'doc_id' or 'given', got {order!r}")
    stable_lineage = _canonical_copy({k: v for k, v in lineage.items() if k != "volatile"}, "lineage")
    stable_card = _canonical_copy(card, "card")
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex}")
    try:
        spill = _Spill(tmp / SPILL_DIR)
        spill.directory.mkdir(parents=True)
        for piece in [table] if isinstance(table, pl.DataFrame) else table:
            spill.add(piece, order)
        ids = spill.check()
        if not len(ids):  # an empty release would verify ("every file matches") and fail only when used
            raise ReleaseError("the release table has no rows (an empty selection? see selection.ratio); an empty "
                               "release is never written")
        builder = _StatsBuilder()
        shards = _write_shards(spill, ids, tmp, rows_per_shard, order, builder)
        shutil.rmtree(spill.directory)
        stats = builder.result(spill.schema, ids, shards, rows_per_shard, order)
        (tmp / CARD_NAME).write_text(render_card(stable_card, stable_lineage, stats), encoding="utf-8")
        files = {name: sha256_file(tmp / name) for name in sorted([s["path"] for s in shards] + [CARD_NAME])}
        content = _canonical_copy({"format": RELEASE_FORMAT, "lineage": stable_lineage, "card": stable_card,
                                   "packages": package_versions(), "dataset": stats, "files": files}, "content")
        manifest = {"format": RELEASE_FORMAT, "content_hash": content_hash(content), "content": content,
                    "volatile": _canonical_copy(_volatile(lineage, volatile), "volatile")}
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n",
                                         encoding="utf-8")
        _install(tmp, out, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ReleaseSummary(out, manifest["content_hash"], stats["rows"], len(shards), files,
                          stats["selected_ids_sha256"])


# ----------------------------------------------------------------------------------------------------------
# Verification

def read_manifest(release_dir: str | os.PathLike) -> dict[str, Any]:
    return load_json_bounded((Path(release_dir) / MANIFEST_NAME).read_text(encoding="utf-8"))


_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')


def json_depth(text: str) -> int:
    """The deepest nesting of [ and { in a JSON text (strings left out), found without parsing it."""
    brackets = re.sub(r"[^\[\]{}]", "", _JSON_STRING.sub("", text))
    if not brackets:
        return 0
    steps = np.frombuffer(brackets.encode("ascii"), dtype=np.uint8)
    return int(np.cumsum(np.where((steps == ord("[")) | (steps == ord("{")), 1, -1)).max())


class TooDeep(ValueError):
    pass


def load_json_bounded(text: str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """json.loads that refuses input nested deeper than `max_depth` (deep input would raise RecursionError)."""
    depth = json_depth(text)
    if depth > max_depth:
        raise TooDeep(f"nested {depth} levels deep, deeper than the {max_depth} a release manifest may have")
    return json.loads(text)


def _links_out(root: Path) -> tuple[list[str], set[str]]:
    """Problems for every symbolic link under `root` that points outside it (never followed), and their
    relative paths. Links that stay inside the release are allowed."""
    problems, names = [], set()
    inside = root.resolve()
    for folder, dirs, files in os.walk(root):
        for name in sorted(dirs + files):
            path = Path(folder) / name
            if path.is_symlink() and not path.resolve().is_relative_to(inside):
                rel = path.relative_to(root).as_posix()
                problems.append(f"link out of the release: {rel} -> {path.resolve()}")
                names.add(rel)
    return problems, names


def _listed_files(root: Path) -> set[str]:
    """Every file but the top-level manifest.json: a release holds no bookkeeping, so a planted
    `_artifact.json` or `_progress.json` is an extra file like any other."""
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()} - {MANIFEST_NAME}


def _check_manifest(manifest: Any) -> tuple[dict[str, str], list[str]]:
    if not isinstance(manifest, dict) or not isinstance(manifest.get("content"), dict):
        return {}, ["manifest.json has no 'content' section"]
    problems = []
    content = manifest["content"]
    recorded = manifest.get("content_hash")
    actual = content_hash(content)
    if recorded != actual:
        problems.append(f"manifest.json: content_hash is {recorded}, but its content hashes to {actual}")
    files = content.get("files")
    if not isinstance(files, dict):
        return {}, problems + ["manifest.json: content has no 'files' table"]
    return files, problems


def verify_release(release_dir: str | os.PathLike) -> list[str]:
    """Problems found (empty when the release matches its manifest): missing, changed and extra files by name,
    and a content hash that does not match the manifest's content."""
    root = Path(release_dir)
    if not root.is_dir():
        return [f"{root} is not a directory"]
    links, linked = _links_out(root)
    if MANIFEST_NAME in linked:
        return links
    try:
        manifest = read_manifest(root)
    except FileNotFoundError:
        return links + [f"missing file: {MANIFEST_NAME}"]
    except TooDeep as err:
        return links + [f"{MANIFEST_NAME} is refused: {err}"]
    except (ValueError, UnicodeDecodeError) as err:
        return links + [f"{MANIFEST_NAME} is not valid JSON: {err}"]
    files, problems = _check_manifest(manifest)
    problems = links + problems
    for name, expected in sorted(files.items()):
        path = root / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            problems.append(f"manifest.json lists a path outside the release: {name}")
        elif not path.resolve().is_relative_to(root.resolve()):
            continue  # reached through a link out of the release: named above, never read
        elif not path.is_file():
            problems.append(f"missing file: {name}")
        elif (actual := sha256_file(path)) != expected:
            problems.append(f"changed file: {name} (sha256 {actual}, manifest says {expected})")
    problems += [f"extra file: {name}" for name in sorted(_listed_files(root) - set(files) - linked)]
    return problems


def export_release(source: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Copy a release into `target` (absent or an empty folder): copied into a temp folder beside it, verified
    there, then renamed into place, so a failure (a corrupt source, a full disk) leaves no copy behind."""
    source, target = Path(source), Path(target)
    links, _ = _links_out(source)
    if links:  # copytree would copy what they point at
        raise ReleaseError(f"{source}: {links[0]}; nothing was exported")
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ReleaseError(f"{target} exists and is not an empty folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:12]}")
    try:
        shutil.copytree(source, tmp)
        problems = verify_release(tmp)
        if problems:
            raise ReleaseError(f"{source} does not match its manifest ({problems[0]}"
                               f"{f' and {len(problems) - 1} more' if len(problems) > 1 else ''}); nothing was "
                               f"exported. If it is a store artifact, `gmates verify --repair` rebuilds it")
        if target.exists():
            target.rmdir()
        os.rename(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def main_verify(argv: Sequence[str] | None = None) -> int:
    """`gmates release verify DIR`: exit 0 when every file matches the manifest, 1 otherwise."""
    parser = argparse.ArgumentParser(prog="gmates release verify",
                                     description="Re-hash a release and compare it with its manifest.json")
    parser.add_argument("release_dir", help="directory written by the dataset_release asset")
    args = parser.parse_args(argv)
    problems = verify_release(args.release_dir)
    if problems:
        print(f"FAILED {args.release_dir}: {len(problems)} problem(s)", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    manifest = read_manifest(args.release_dir)
    print(f"OK {args.release_dir}: {len(manifest['content']['files'])} files match, "
          f"content_hash {manifest['content_hash']}")
    return 0


if __name__ == "__main__":  # python -m gmates_assets.core.release DIR
    raise SystemExit(main_verify())
