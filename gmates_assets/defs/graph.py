"""The asset graph of one manifest, derived from the declarations: partitions, parents, ancestors, versions."""
from __future__ import annotations

from functools import cached_property
from typing import Optional

from ..core.manifest import Manifest, fingerprint
from .declare import METHODS, SEEDS, SHARDS, AssetDecl, Input


def seed_key(seed: int) -> str:
    return f"seed{seed}"


def seed_from_key(key: str) -> int:
    return int(key.removeprefix("seed"))


def partition_keys_for(manifest: Manifest, partitioning: str) -> list[str]:
    if partitioning == SHARDS:
        return [s.name for s in manifest.sources.shards]
    if partitioning == SEEDS:
        return [seed_key(s) for s in manifest.oracle.seeds]
    if partitioning == METHODS:
        return list(manifest.selection.methods)
    raise KeyError(f"unknown partitioning {partitioning!r}")


class AssetGraph:
    """The active declarations of a manifest (inputs a manifest doesn't use are dropped) and their relations."""

    def __init__(self, manifest: Manifest, decls: list[AssetDecl]):
        self.manifest = manifest
        self.decls = {d.name: d for d in decls if d.active(manifest)}
        for decl in self.decls.values():
            for inp in decl.active_inputs(manifest):
                if inp.asset not in self.decls:
                    raise KeyError(f"{decl.name} reads {inp.asset!r}, which is not declared for this manifest")

    def __getitem__(self, name: str) -> AssetDecl:
        return self.decls[name]

    def inputs(self, name: str) -> list[Input]:
        return self.decls[name].active_inputs(self.manifest)

    def partition_keys(self, name: str) -> list[Optional[str]]:
        decl = self.decls[name]
        return partition_keys_for(self.manifest, decl.partitioning) if decl.partitioning else [None]

    def input_partitions(self, inp: Input, own: Optional[str]) -> list[Optional[str]]:
        """The partitions of `inp.asset` that the reader's partition `own` reads."""
        if inp.partitions is None:
            return [None]
        if inp.partitions == "same":
            return [own]
        if inp.partitions == "all":
            return self.partition_keys(inp.asset)
        return list(inp.partitions(self.manifest))

    def code_version(self, name: str) -> str:
        decl = self.decls[name]
        return f"{decl.version}-{fingerprint(self.manifest, *decl.sections)}" if decl.sections else decl.version

    @cached_property
    def _parents(self) -> dict[str, set[str]]:
        return {name: {i.asset for i in self.inputs(name)} for name in self.decls}

    def ancestors(self, name: str) -> set[str]:
        seen: set[str] = set()
        todo = list(self._parents[name])
        while todo:
            parent = todo.pop()
            if parent not in seen:
                seen.add(parent)
                todo.extend(self._parents[parent])
        return seen

    def toposorted(self) -> list[str]:
        order: list[str] = []
        placed: set[str] = set()
        while len(order) < len(self.decls):
            for name in self.decls:  # declaration order breaks ties, so the order is stable
                if name not in placed and self._parents[name] <= placed:
                    order.append(name)
                    placed.add(name)
                    break
            else:
                raise ValueError("the asset declarations contain a cycle")
        return order
