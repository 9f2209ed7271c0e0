"""The automation condition that makes `dagster dev` rebuild what an edit made stale after a reload.

Eager, plus: a new code version (a manifest edit reaches an asset this way) or a dependency's new data version
requests a run; a dependency that re-materialized with identical content does not (early cutoff).
"""
from __future__ import annotations

import dagster as dg

AC = dg.AutomationCondition


def sync_condition() -> dg.AutomationCondition:
    return (
        (AC.missing() | AC.code_version_changed() | AC.any_deps_match(AC.data_version_changed()))
        .since_last_handled()
        & ~AC.any_deps_missing()
        & ~AC.any_deps_in_progress()
        & ~AC.in_progress()
    ).with_label("gmates_sync")
