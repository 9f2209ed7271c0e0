"""One record per asset: everything the Dagster shell needs to know about it, declared in one place.

An `AssetDecl` names the asset, its stage group, how it is partitioned, what it reads (assets and observable
sources, with how their partitions map), which manifest sections it reads, its implementation version, kinds,
description, checks and the compute function. `factory.py` derives from these records the Dagster assets
(deps, partition mappings, code versions, checks, automation), `runtime.run_step` derives the inputs of the
cache key, and release lineage is the set of graph ancestors. Nothing else lists assets by hand.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional, Union

if TYPE_CHECKING:
    from ..core.manifest import LoadedManifest, Manifest
    from ..core.store import Artifact

# How an input's partitions map onto the reading asset's partition:
#   None   the input is unpartitioned
#   "same" identity (shard -> same shard)
#   "all"  every partition of the input (only into aggregators and small fan-ins such as oracle seeds)
#   a callable manifest -> [partition keys] (e.g. the release's chosen method)
PartitionMap = Union[None, str, Callable[["Manifest"], list]]

SHARDS, SEEDS, METHODS = "shards", "seeds", "methods"


@dataclass(frozen=True)
class Input:
    asset: str
    partitions: PartitionMap = None
    when: Optional[Callable[[Manifest], bool]] = None  # an input some manifests don't have

    def active(self, manifest: Manifest) -> bool:
        return self.when is None or bool(self.when(manifest))


@dataclass(frozen=True)
class Check:
    name: str
    description: str


@dataclass(frozen=True)
class AssetDecl:
    """A gmates asset. `compute(step, out_dir) -> metadata` fills out_dir; `observe(loaded) -> version` instead
    makes it an observable source (a data version per partition: {key: version})."""

    name: str
    group: str
    description: str
    compute: Optional[Callable[..., dict]] = None
    observe: Optional[Callable[[LoadedManifest], Any]] = None
    inputs: tuple[Input, ...] = ()
    sections: tuple[str, ...] = ()
    version: str = "1"
    partitioning: Optional[str] = None  # SHARDS | SEEDS | METHODS
    kinds: frozenset[str] = frozenset()
    resumable: bool = False
    # Input identities that are not assets (an encoder's weights, a tokenizer revision, a release's lineage):
    # (raw manifest, Dagster instance, AssetGraph) -> dict, folded into the cache key.
    identity: Optional[Callable[[LoadedManifest, Any, Any], dict]] = None
    checks: tuple[Check, ...] = ()
    # Asset checks evaluated on the stored artifact (so they also run on a reuse): (step, artifact) -> results.
    check_fn: Optional[Callable[[Any, Artifact], list]] = None
    enabled: Optional[Callable[[Manifest], bool]] = None
    # Validation run before building (on the unrecorded manifest): it may only raise, never shape the output,
    # so it can read settings outside `sections` (e.g. the reference set fits probe.seq_len).
    precheck: Optional[Callable[[Any], None]] = None
    # The input versions its cache key uses, when they are not simply what it reads now (probe.pool: frozen
    # keys on the shards its frozen documents come from): (raw manifest, instance, store, versions) -> versions.
    key_versions: Optional[Callable[[LoadedManifest, Any, Any, dict], dict]] = None
    # Weights, labels or scores: a NaN or inf anywhere in the built folder fails the step before the commit,
    # naming this manifest setting as the likely cause (core/finite.py).
    finite: Optional[str] = None

    @property
    def is_source(self) -> bool:
        return self.observe is not None

    def active(self, manifest: Manifest) -> bool:
        return self.enabled is None or bool(self.enabled(manifest))

    def active_inputs(self, manifest: Manifest) -> list[Input]:
        return [i for i in self.inputs if i.active(manifest)]
