"""Modules imported on first use.

The asset modules name torch-, scipy- and matplotlib-backed core modules at the top, but loading the
Definitions (the CLI, the code server, every launched run's process) should not pay for torch unless a step
computes with it: a launched run that only hashes a shard, or reuses a stored artifact, starts seconds faster.

Not importlib's LazyLoader: its half-made module sits in sys.modules, and `inspect.getmodule` (which torch calls
while importing) touches every module there, so an unrelated lazy module was executed in the middle of another
import and hit a circular import. This stand-in stays out of sys.modules and does a plain import when first used.
"""
from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType


class _OnFirstUse(ModuleType):
    def __getattr__(self, attr: str):  # called only for names the stand-in itself lacks
        if attr.startswith("__"):  # introspection (copy, pickle, inspect) must not trigger the import
            raise AttributeError(attr)
        return getattr(importlib.import_module(self.__name__), attr)


def lazy_module(name: str) -> ModuleType:
    """`name` (absolute), imported the normal way on first attribute access."""
    if importlib.util.find_spec(name) is None:
        raise ModuleNotFoundError(f"no module named {name!r}", name=name)
    return _OnFirstUse(name)
