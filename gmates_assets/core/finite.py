"""No artifact with non-finite numbers (NaN, +-inf) is ever committed.

A diverged training run (a learning rate too large) leaves NaN weights, and everything downstream inherits them:
oracle labels, influence scores, eval scores. Nothing fails until much later, and then without naming the
setting. Assets that hold trained weights, labels or scores scan their work folder before the store commits it
(`require_finite`) and fail naming the file, the tensor or column and the manifest setting most likely at fault.

Scanned: safetensors tensors, parquet float columns (also inside lists), zarr float arrays, numbers in JSON
(`NaN`/`Infinity` literals; `null` is not a number). Reads go block by block, so a large artifact is never
held whole in memory.
"""
from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import numpy as np

BLOCK_ROWS = 65_536


class NonFiniteError(ValueError):
    """An artifact holds NaN or infinite numbers; the message names the file, the field and the setting."""


def _count_array(values: np.ndarray) -> int:
    return int(values.size - np.count_nonzero(np.isfinite(values)))


def _safetensors(path: Path) -> Iterator[tuple[str, int]]:
    import torch
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        for name in handle.keys():
            tensor = handle.get_tensor(name)
            if tensor.is_floating_point():
                yield name, int(tensor.numel() - torch.isfinite(tensor).sum().item())


def _float_values(array) -> Optional[Any]:
    """The float leaves of an arrow array (lists flattened), or None when it holds no floats."""
    import pyarrow as pa

    while pa.types.is_list(array.type) or pa.types.is_large_list(array.type) or \
            pa.types.is_fixed_size_list(array.type):
        array = array.flatten()
    return array if pa.types.is_floating(array.type) else None


def _parquet(path: Path) -> Iterator[tuple[str, int]]:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    for name in parquet.schema_arrow.names:
        bad = 0
        for batch in parquet.iter_batches(batch_size=BLOCK_ROWS, columns=[name]):
            values = _float_values(batch.column(0))
            if values is None:
                break
            values = values.drop_null()
            bad += len(values) - (pc.sum(pc.is_finite(values)).as_py() or 0)
        yield name, bad


def _zarr(path: Path) -> Iterator[tuple[str, int]]:
    import zarr

    group = zarr.open_group(str(path), mode="r")
    for name, array in group.arrays():
        if np.issubdtype(array.dtype, np.floating):
            rows = array.shape[0] if array.shape else 1
            yield name, sum(_count_array(np.asarray(array[start:start + BLOCK_ROWS] if array.shape else array[...]))
                            for start in range(0, rows, BLOCK_ROWS))
    for name, _sub in group.groups():
        yield from ((f"{name}/{inner}", bad) for inner, bad in _zarr(Path(path) / name))


def _json_numbers(value: Any, where: str = "") -> Iterator[tuple[str, int]]:
    if isinstance(value, float) and not math.isfinite(value):
        yield where or "(value)", 1
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _json_numbers(item, f"{where}.{key}" if where else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _json_numbers(item, f"{where}[{index}]")


def _json(path: Path) -> Iterator[tuple[str, int]]:
    yield from _json_numbers(json.loads(path.read_text(encoding="utf-8")))


def _scanners(folder: Path) -> Iterator[tuple[Path, Any]]:
    for path in sorted(folder.rglob("*")):
        if any(part.endswith(".zarr") for part in path.relative_to(folder).parts[:-1]):
            continue  # inside a zarr store: scanned as a whole below
        if path.is_dir() and path.suffix == ".zarr":
            yield path, _zarr
        elif path.is_file() and path.suffix in _BY_SUFFIX:
            yield path, _BY_SUFFIX[path.suffix]


_BY_SUFFIX = {".safetensors": _safetensors, ".parquet": _parquet, ".json": _json}


def first_non_finite(folder: str | Path) -> Optional[tuple[str, str, int]]:
    """(file relative to folder, tensor/column/field, how many values) of the first non-finite find, or None."""
    folder = Path(folder)
    for path, scan in _scanners(folder):
        for name, bad in scan(path):
            if bad:
                return str(path.relative_to(folder)), name, bad
    return None


def require_finite(folder: str | Path, artifact: str, setting: str) -> None:
    """Raise NonFiniteError naming the file, the field and the manifest setting when anything is NaN or inf."""
    found = first_non_finite(folder)
    if found is not None:
        file, name, bad = found
        raise NonFiniteError(
            f"{artifact}: {bad} non-finite value(s) (NaN or inf) in {file} [{name}]; nothing was stored. The "
            f"likely cause is {setting} (training diverged, e.g. a learning rate too large): lower it and run "
            f"`gmates sync` again")
