"""Eval task files: every line checked against its task kind, naming file, line and field.

Kept free of torch so that observing the eval inputs (`gmates status`, the start of `gmates sync`) can
validate the files before any compute: a `gold` out of range fails there, not after pretraining.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .hashing import cache_dir


class TaskFormatError(ValueError):
    """A task file line that does not match its declared format; the message names file, line and field."""


_STR_FIELDS = {
    "multiple_choice": {"query": False},  # field -> must be non-empty
    "schema": {"continuation": True},
    "language_modeling": {"context": False, "continuation": True},
}
_LIST_FIELD = {"multiple_choice": "choices", "schema": "context_options"}


def _fail(path: Path, line: int, message: str) -> TaskFormatError:
    return TaskFormatError(f"{path}:{line}: {message}")


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _check_strings(obj: dict, fields: dict[str, bool], path: Path, line: int) -> None:
    for name, non_empty in fields.items():
        if name not in obj:
            raise _fail(path, line, f"missing field {name!r}")
        if not isinstance(obj[name], str):
            raise _fail(path, line, f"field {name!r} must be a string, got {_type_name(obj[name])}")
        if non_empty and not obj[name].strip():
            raise _fail(path, line, f"field {name!r} must be a non-empty string")


def _check_item(obj: Any, kind: str, has_categories: bool, path: Path, line: int) -> dict:
    if not isinstance(obj, dict):
        raise _fail(path, line, f"expected a JSON object, got {_type_name(obj)}")
    _check_strings(obj, {**_STR_FIELDS[kind], **({"category": True} if has_categories else {})}, path, line)
    list_field = _LIST_FIELD.get(kind)
    if list_field is None:
        return obj
    options = obj.get(list_field)
    if list_field not in obj:
        raise _fail(path, line, f"missing field {list_field!r}")
    if not isinstance(options, list):
        raise _fail(path, line, f"field {list_field!r} must be a list of strings, got {_type_name(options)}")
    if not options:
        raise _fail(path, line, f"field {list_field!r} is empty")
    for i, option in enumerate(options):
        if not isinstance(option, str):
            raise _fail(path, line, f"field '{list_field}[{i}]' must be a string, got {_type_name(option)}")
        if kind == "multiple_choice" and not option:
            raise _fail(path, line, f"field '{list_field}[{i}]' must be a non-empty string")
    if "gold" not in obj:
        raise _fail(path, line, "missing field 'gold'")
    gold = obj["gold"]
    if isinstance(gold, bool) or not isinstance(gold, int):
        raise _fail(path, line, f"field 'gold' must be an integer, got {_type_name(gold)}")
    if not 0 <= gold < len(options):
        raise _fail(path, line, f"field 'gold' = {gold} is out of range for {len(options)} {list_field}")
    return obj


def read_task_items(path: str | Path, kind: str, has_categories: bool = False) -> list[dict]:
    """Read and validate every line of a task file (blank lines are skipped)."""
    path = Path(path)
    items: list[dict] = []
    with open(path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise _fail(path, line_no, f"invalid JSON ({err.msg} at column {err.colno})") from None
            items.append(_check_item(obj, kind, has_categories, path, line_no))
    if not items:
        raise TaskFormatError(f"{path}: task file has no items")
    return items


RULES_VERSION = "1"  # bump when the item checks change: files validated under older rules are checked again


def validate_task_file(path: str | Path, sha256: str, kind: str, has_categories: bool = False) -> None:
    """read_task_items once per file content: a valid content is remembered under $GMATES_CACHE, so
    `gmates status` does not parse a large eval bundle every time (a bad file is never remembered)."""
    marker = cache_dir() / "valid-task-files" / f"{sha256}-{kind}-{int(has_categories)}-v{RULES_VERSION}"
    if marker.exists():
        return
    read_task_items(path, kind, has_categories)
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
    except OSError:  # advisory, like the file-hash cache
        pass
