"""The `up_to_date` asset check: gmates' own status of each asset, where the UI shows asset health.

Dagster's graph shows a partitioned asset green while `gmates status` lists stale partitions (its staleness
ignores partitions on the global graph). Every asset therefore has a non-blocking check `up_to_date` whose
result says: fresh, or which partitions are stale or missing (with the first cause), or that the manifest on
disk changed and the definitions must be reloaded. The automation sensor refreshes it: each tick it reports a
runless evaluation for every asset whose verdict differs from the latest recorded one (automation.py). It is
also executable (UI: the asset's Checks tab > Execute, or a "Materialize" from the UI, which includes it), and
then computes the same verdict in the run. gmates' own runs (sync, the sensor's, the `gmates_sync` job) leave it
out (`checks_for_run`): the sensor reports it once a rebuild is over, and each run stays as cheap as before.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Optional

import dagster as dg

from .resources import GmatesResource

UP_TO_DATE = "up_to_date"
MANIFEST_CHANGED = "manifest changed on disk: Reload definitions"
SHOWN = 8  # partitions named in a description; the metadata lists all of them


@dataclass(frozen=True)
class Verdict:
    passed: bool
    description: str
    not_fresh: tuple[str, ...] = field(default=(), compare=False)  # "asset[partition]: status: first cause"


def _where(asset: str, partition: Optional[str]) -> str:
    return f"{asset}[{partition}]" if partition else asset


def verdicts(statuses: Iterable, assets: Optional[Iterable[str]] = None) -> dict[str, Verdict]:
    """One verdict per asset of `statuses` (PartitionStatus rows, sync.asset_statuses), or per name in `assets`."""
    by_asset: dict[str, list] = defaultdict(list)
    for row in statuses:
        by_asset[row.asset].append(row)
    names = list(assets) if assets is not None else list(by_asset)
    return {name: _verdict(by_asset.get(name, [])) for name in names}


def _verdict(rows: Sequence) -> Verdict:
    bad = [r for r in rows if r.status != "fresh"]
    if not bad:
        return Verdict(True, f"fresh ({len(rows)} partitions)" if len(rows) > 1 else "fresh")
    states = sorted({r.status for r in bad}, key=lambda state: (state != "stale", state))  # "stale or missing"
    named = ", ".join(_where(r.asset, r.partition) for r in bad[:SHOWN]) + (" ..." if len(bad) > SHOWN else "")
    of = f" of {len(rows)}" if len(rows) > 1 else ""
    noun = "partition" if len(bad) == 1 else "partitions"
    head = f"{len(bad)}{of} {noun} {' or '.join(states)}: {named}"
    rows_text = tuple(f"{_where(r.asset, r.partition)}: {r.status}" + (f": {r.causes[0]}" if r.causes else "")
                      for r in bad)
    first_cause = bad[0].causes[0] if bad[0].causes else ""
    return Verdict(False, f"{head} ({first_cause})" if first_cause else head, rows_text)


def changed_verdicts(assets: Iterable[str], changed: str) -> dict[str, Verdict]:
    return {name: Verdict(False, f"{MANIFEST_CHANGED} ({changed})") for name in assets}


def evaluation(asset: str, verdict: Verdict) -> dg.AssetCheckEvaluation:
    return dg.AssetCheckEvaluation(asset_key=dg.AssetKey(asset), check_name=UP_TO_DATE, passed=verdict.passed,
                                   severity=dg.AssetCheckSeverity.WARN, description=verdict.description,
                                   metadata=_metadata(verdict))


def _metadata(verdict: Verdict) -> dict:
    return {"not_fresh": dg.MetadataValue.json(list(verdict.not_fresh))} if verdict.not_fresh else {}


def new_evaluations(instance: dg.DagsterInstance, found: dict[str, Verdict]) -> list[dg.AssetCheckEvaluation]:
    """Evaluations for the assets whose verdict differs from the latest recorded `up_to_date` result, or was
    recorded before the asset's latest materialization (the UI shows a check against the latest one). So an
    unchanged state writes nothing, and a result a run recorded meanwhile is corrected at the next tick."""
    keys = [dg.AssetCheckKey(dg.AssetKey(name), UP_TO_DATE) for name in found]
    latest = instance.event_log_storage.get_latest_asset_check_execution_by_key(keys)  # private, pinned dagster
    built = {r.asset_entry.asset_key: r.asset_entry.last_materialization_record
             for r in instance.get_asset_records([k.asset_key for k in keys])}
    out = []
    for key in keys:
        name, record, materialized = key.asset_key.to_user_string(), latest.get(key), built.get(key.asset_key)
        outdated = record is not None and materialized is not None and record.create_timestamp < materialized.timestamp
        if outdated or _recorded(record) != (found[name].passed, found[name].description):
            out.append(evaluation(name, found[name]))
    return out


def _recorded(record) -> Optional[tuple[bool, str]]:
    data = record.event.dagster_event.event_specific_data if record is not None and record.event else None
    if not isinstance(data, dg.AssetCheckEvaluation):
        return None  # never evaluated, or planned in a run that has not evaluated it (yet)
    return data.passed, data.description


def checks_for_run(asset_graph, keys: Iterable[dg.AssetKey]) -> set[dg.AssetCheckKey]:
    """The checks a gmates run of these assets executes: their own (blocking) checks, not `up_to_date`."""
    wanted = set(keys)
    return {k for k in asset_graph.asset_check_keys if k.asset_key in wanted and k.name != UP_TO_DATE}


def up_to_date_checks(assets: Sequence[str]) -> dg.AssetChecksDefinition:
    """One non-blocking `up_to_date` check per asset, executed together (subsettable)."""
    specs = [dg.AssetCheckSpec(UP_TO_DATE, asset=name, blocking=False,
                               description="gmates status of this asset: fresh, or its stale or missing "
                                           "partitions; refreshed by the gmates_automation sensor")
             for name in assets]

    @dg.multi_asset_check(name="gmates_up_to_date", specs=specs, can_subset=True,
                          description="What `gmates status` says about each selected asset.")
    def gmates_up_to_date(context, gmates: GmatesResource):
        from . import build_definitions
        from .resources import changed_since_load
        from .sync import asset_statuses

        names = sorted(k.asset_key.to_user_string() for k in context.selected_asset_check_keys)
        changed = changed_since_load(gmates.manifest_path, gmates.manifest_fingerprint)
        if changed:
            found = changed_verdicts(names, changed)
        else:
            try:
                defs = build_definitions(gmates.manifest_path, home=gmates.home)
                found = verdicts(asset_statuses(defs, context.instance, names, current_sources=True), names)
            except Exception as err:  # a status that cannot be computed must not fail the run it is part of
                found = {name: Verdict(False, f"status not computed: {type(err).__name__}: {err}") for name in names}
        for name in names:
            verdict = found[name]
            yield dg.AssetCheckResult(asset_key=name, check_name=UP_TO_DATE, passed=verdict.passed,
                                      severity=dg.AssetCheckSeverity.WARN, description=verdict.description,
                                      metadata=_metadata(verdict))

    return gmates_up_to_date
