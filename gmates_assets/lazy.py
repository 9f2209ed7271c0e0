"""Modules imported on first use.

The asset modules name torch-, scipy- and matplotlib-backed core modules at the top, but loading the
Definitions (the CLI, the code server, every launched run's process) should not pay for torch unless a step
computes with it: a launched run that only hashes a shard, or reuses a stored artifact, starts seconds faster.
"""
from __future__ import annotations

import importlib.util
import sys
from types import ModuleType


def lazy_module(name: str) -> ModuleType:
    """`name` (absolute), executed on first attribute access (importlib's LazyLoader)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError(f"no module named {name!r}", name=name)
    spec.loader = importlib.util.LazyLoader(spec.loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
