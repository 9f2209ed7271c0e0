"""`sync`/`asset_statuses` on toy definitions: pins the private Dagster staleness API they rely on."""
from __future__ import annotations

import dagster as dg

from gmates_assets.defs.sync import FRESH, MISSING, STALE, asset_statuses, sync

PARTS = dg.StaticPartitionsDefinition(["p0", "p1"])


def toy_defs(source_versions: dict, code: str = "1", payload: dict | None = None) -> dg.Definitions:
    """src[p] (observable) -> docs[p] -> agg: data versions echo the source, so edits propagate by content."""
    payload = payload if payload is not None else {}

    @dg.observable_source_asset(partitions_def=PARTS)
    def src():
        return dg.DataVersionsByPartition({k: dg.DataVersion(v) for k, v in source_versions.items()})

    @dg.asset(partitions_def=PARTS, deps=[src], code_version="1")
    def docs(context):
        return dg.MaterializeResult(data_version=dg.DataVersion(source_versions[context.partition_key]))

    @dg.asset(deps=[docs], code_version=code)
    def agg():
        return dg.MaterializeResult(data_version=dg.DataVersion(payload.get("agg", "same")))

    return dg.Definitions(assets=[src, docs, agg])


def statuses(defs, instance):
    return {(s.asset, s.partition): s.status for s in asset_statuses(defs, instance)}


def test_first_sync_builds_missing_in_waves_then_nothing():
    with dg.instance_for_test() as instance:
        defs = toy_defs({"p0": "a", "p1": "a"})
        assert set(statuses(defs, instance).values()) == {MISSING}
        report = sync(defs, instance)
        assert report.waves == [[("docs", "p0"), ("docs", "p1")], [("agg", None)]]
        assert set(statuses(defs, instance).values()) == {FRESH}
        assert sync(defs, instance).executed == []


def test_one_changed_source_partition_rebuilds_that_partition_and_its_dependents():
    with dg.instance_for_test() as instance:
        sync(toy_defs({"p0": "a", "p1": "a"}), instance)
        defs = toy_defs({"p0": "a", "p1": "b"})
        report = sync(defs, instance)
        assert report.waves == [[("docs", "p1")], [("agg", None)]]


def test_code_version_edit_is_stale_with_a_cause_and_early_cutoff_stops_downstream():
    with dg.instance_for_test() as instance:
        sync(toy_defs({"p0": "a", "p1": "a"}), instance)
        edited = toy_defs({"p0": "a", "p1": "a"}, code="2")
        status = {s.asset: s for s in asset_statuses(edited, instance)}
        assert status["agg"].status == STALE and any("code version" in c for c in status["agg"].causes)
        assert sync(edited, instance).executed == [("agg", None)]


def test_select_limits_the_sync_to_an_asset_and_its_upstream():
    with dg.instance_for_test() as instance:
        report = sync(toy_defs({"p0": "a", "p1": "a"}), instance, select=["docs"])
        assert {a for a, _ in report.executed} == {"docs"}


def _source_and_docs():
    """An observed partitioned source and the docs asset that reads it, partition by partition."""
    @dg.observable_source_asset(partitions_def=PARTS)
    def src():
        return dg.DataVersionsByPartition({"p0": dg.DataVersion("a"), "p1": dg.DataVersion("a")})

    @dg.asset(partitions_def=PARTS, deps=[src])
    def docs():
        return dg.MaterializeResult(data_version=dg.DataVersion("d"))

    return src, docs


def test_same_partition_chains_share_a_run_and_other_fan_ins_wait():
    """emb[p] reads only docs[p] (identity): it joins docs[p]'s run. tok[p] also reads agg (all of docs), so
    it waits for agg's wave. A run covers one partition key, so the runs are p0, p1, agg, p0, p1."""
    src, docs = _source_and_docs()

    @dg.asset(partitions_def=PARTS, deps=[dg.AssetDep(docs, partition_mapping=dg.IdentityPartitionMapping())])
    def emb():
        return None

    @dg.asset(deps=[docs])
    def agg():
        return None

    @dg.asset(partitions_def=PARTS, deps=[docs, agg])
    def tok():
        return None

    defs = dg.Definitions(assets=[src, docs, emb, agg, tok])
    with dg.instance_for_test() as instance:
        report = sync(defs, instance)
        assert report.waves == [[("docs", "p0"), ("docs", "p1"), ("emb", "p0"), ("emb", "p1")], [("agg", None)],
                                [("tok", "p0"), ("tok", "p1")]]
        assert len(report.runs) == 1 + 5  # the observation, then one run per partition key and wave
        assert set(statuses(defs, instance).values()) == {FRESH}


def test_a_chain_of_unpartitioned_assets_shares_one_run():
    """idx and tok_model read only unpartitioned assets of the wave before them (idx <- agg <- docs[*]): they join
    agg's run, whose steps Dagster orders, instead of one wave (a run's start, queue and launch) each. `late` reads emb[*],
    not yet built: it waits."""
    src, docs = _source_and_docs()

    @dg.asset(deps=[docs])
    def agg():
        return None

    @dg.asset(deps=[agg])
    def idx():
        return None

    @dg.asset(deps=[idx, agg])
    def tok_model():
        return None

    @dg.asset(partitions_def=PARTS, deps=[docs, tok_model])
    def emb():
        return None

    @dg.asset(deps=[emb, tok_model])
    def late():
        return None

    defs = dg.Definitions(assets=[src, docs, agg, idx, tok_model, emb, late])
    with dg.instance_for_test() as instance:
        report = sync(defs, instance)
        assert report.waves == [[("docs", "p0"), ("docs", "p1")], [("agg", None), ("idx", None), ("tok_model", None)],
                                [("emb", "p0"), ("emb", "p1")], [("late", None)]]
        assert len(report.runs) == 1 + 2 + 1 + 2 + 1
        assert set(statuses(defs, instance).values()) == {FRESH}


def test_sync_runs_execute_their_assets_own_checks_not_up_to_date_and_record_their_selection():
    """InProcessRuns goes through Dagster's private core_execute_in_process (launch.execute_in_process) to leave the
    up_to_date check out of a run while recording its asset selection (what the run list shows)."""
    from gmates_assets.defs.launch import InProcessRuns

    @dg.asset(partitions_def=PARTS, code_version="1", check_specs=[dg.AssetCheckSpec("own", asset="docs")])
    def docs(context):
        yield dg.MaterializeResult(data_version=dg.DataVersion("v"))
        yield dg.AssetCheckResult(check_name="own", passed=True)

    @dg.multi_asset_check(specs=[dg.AssetCheckSpec("up_to_date", asset="docs")], can_subset=True)
    def up_to_date(context):
        raise AssertionError("a sync run executed the up_to_date check")

    defs = dg.Definitions(assets=[docs], asset_checks=[up_to_date])
    with dg.instance_for_test() as instance:
        (run_id,) = InProcessRuns(defs, instance).run_all([("p1", ["docs"])], log=print)
        run = instance.get_run_by_id(run_id)
        assert run.asset_selection == {dg.AssetKey("docs")} and run.tags["dagster/partition"] == "p1"
        checks = instance.event_log_storage.get_latest_asset_check_execution_by_key(
            [dg.AssetCheckKey(dg.AssetKey("docs"), "own"), dg.AssetCheckKey(dg.AssetKey("docs"), "up_to_date")])
        assert {k.name for k in checks} == {"own"}
