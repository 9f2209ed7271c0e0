"""Example sets read from jsonl: the reference set (prompt/answer) and held-out text. Clear errors by line."""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Optional


class TextSetError(ValueError):
    pass


def read_jsonl_fields(path: str | os.PathLike, fields: Sequence[str], rename: Optional[Sequence[str]] = None,
                      max_examples: Optional[int] = None) -> list[dict]:
    """Rows of a jsonl file keeping `fields` (non-empty strings), renamed to `rename`; errors name file:line."""
    path = Path(path)
    if not path.is_file():
        raise TextSetError(f"{path}: file not found")
    names = list(rename or fields)
    rows = []
    with open(path, "rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            if max_examples is not None and len(rows) >= max_examples:
                break
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise TextSetError(f"{path}:{line_no}: invalid UTF-8 ({exc.reason})") from None
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                raise TextSetError(f"{path}:{line_no}: malformed JSON ({exc.msg})") from None
            if not isinstance(obj, dict):
                raise TextSetError(f"{path}:{line_no}: expected a JSON object")
            row = {}
            for field, name in zip(fields, names):
                value = obj.get(field)
                if not isinstance(value, str) or not value.strip():
                    raise TextSetError(f"{path}:{line_no}: field {field!r} must be a non-empty string")
                row[name] = value
            rows.append(row)
    if not rows:
        raise TextSetError(f"{path}: no examples")
    return rows
