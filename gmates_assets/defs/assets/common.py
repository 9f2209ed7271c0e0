"""One decorator for every gmates asset: versions, grouping and UI metadata (automation: ../automation.py)."""
from __future__ import annotations

from typing import Iterable, Optional, Sequence

import dagster as dg

from ...core.manifest import Manifest
from ..resources import GmatesResource
from ..versioning import code_version, owner_sections

__all__ = ["gmates_asset", "GmatesResource", "all_of", "same_partition", "only"]


def all_of(asset: str) -> dg.AssetDep:
    return dg.AssetDep(asset, partition_mapping=dg.AllPartitionMapping())


def same_partition(asset: str) -> dg.AssetDep:
    return dg.AssetDep(asset, partition_mapping=dg.IdentityPartitionMapping())


def only(asset: str, keys: Sequence[str]) -> dg.AssetDep:
    return dg.AssetDep(asset, partition_mapping=dg.SpecificPartitionsPartitionMapping(list(keys)))


def gmates_asset(
    manifest: Manifest,
    name: str,
    *,
    group: str,
    description: str,
    deps: Iterable = (),
    partitions_def: Optional[dg.PartitionsDefinition] = None,
    kinds: Iterable[str] = (),
    check_specs: Sequence[dg.AssetCheckSpec] = (),
):
    return dg.asset(
        check_specs=list(check_specs) or None,
        name=name,
        group_name=group,
        description=description,
        deps=list(deps),
        partitions_def=partitions_def,
        code_version=code_version(manifest, name),
        kinds=set(kinds) | {"python"},
        tags={"gmates/stage": group},
        metadata={"manifest_sections": owner_sections(name)},
    )
