"""A read-only view of a manifest that records which fields a step reads.

Code versions hash the manifest sections an asset *declares*. A step that reads a field outside them would
be cached under a key that ignores that field: editing it would silently change nothing. Steps therefore see
the manifest through `ManifestView`, and the shell compares what was read against what was declared.
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class ManifestView:
    """Attribute access like the wrapped pydantic model; nested sections come back as views, leaves are recorded
    by dotted path ("oracle.rollouts"). Calling a model method (model_dump, ...) records the whole section."""

    __slots__ = ("_model", "_path", "_reads")

    def __init__(self, model: BaseModel, path: str = "", reads: set[str] | None = None):
        object.__setattr__(self, "_model", model)
        object.__setattr__(self, "_path", path)
        object.__setattr__(self, "_reads", reads if reads is not None else set())

    @property
    def reads(self) -> set[str]:
        return self._reads

    def _child(self, name: str) -> str:
        return f"{self._path}.{name}" if self._path else name

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._model, name)
        if name.startswith("model_") or name.startswith("_"):
            self._reads.add(self._path or "*")
            return value
        if isinstance(value, BaseModel):
            return ManifestView(value, self._child(name), self._reads)
        if not _is_volatile(self._model, name):  # volatile fields cannot change a result (commit intervals...)
            self._reads.add(self._child(name))
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("the build manifest is read-only inside a step")

    def __repr__(self) -> str:
        return f"ManifestView({self._path or 'manifest'})"


def _is_volatile(model: BaseModel, name: str) -> bool:
    field = type(model).model_fields.get(name)
    extra = field.json_schema_extra if field is not None and isinstance(field.json_schema_extra, dict) else {}
    return bool(extra.get("volatile"))


def unwrap(value: Any) -> Any:
    """The model behind a view (recording the whole section as read), or the value itself."""
    if isinstance(value, ManifestView):
        value._reads.add(value._path or "*")
        return value._model
    return value


def covered(read: str, declared: tuple[str, ...] | list[str]) -> bool:
    """Is a read field inside one of the declared (dotted) sections?"""
    return any(read == d or read.startswith(d + ".") for d in declared)


def undeclared_reads(reads: set[str], declared: tuple[str, ...] | list[str]) -> list[str]:
    return sorted(r for r in reads if not covered(r, declared))
