"""The automation sensor: each tick compares with what `gmates status` computes and requests the next wave.

Plain function tests of the planning core (`plan_tick`) on a toy graph with the shapes of the real one:
shards A[p] -> B -> methods C[m] -> D[m] -> E (all of D) and F[p] (all of D, partitioned by shards). Then the
sensor itself on that toy graph (ephemeral instance): from any state it converges, one run per partition, and
waits while runs are in flight. Last, the real Definitions: a UI started after an edit made while it was down
requests the stale partitions at its first tick (before: 0 runs per tick while `gmates status` said stale,
because the declarative-automation sensor only reacted to code-version changes it saw between its own ticks).
"""
from __future__ import annotations

import dagster as dg

from gmates_assets.defs.automation import (
    MANIFEST_CHANGED,
    SENSOR_TAG,
    automation_sensor,
    plan_tick,
)
from gmates_assets.defs.sync import FRESH, MISSING, STALE, PartitionStatus
from gmates_assets.defs.uptodate import UP_TO_DATE

SHARDS = dg.StaticPartitionsDefinition(["p1", "p2"])
METHODS = dg.StaticPartitionsDefinition(["m1", "m2"])
ALL = dg.AllPartitionMapping()
TOY_ITEMS = [("A", "p1"), ("A", "p2"), ("B", None), ("C", "m1"), ("C", "m2"), ("D", "m1"), ("D", "m2"),
             ("E", None), ("F", "p1"), ("F", "p2")]


def toy_assets(version: str) -> list[dg.AssetsDefinition]:
    """A's code version is `version`; every data version changes with it, so the edit reaches everything."""
    def data(context) -> dg.MaterializeResult:
        partition = context.partition_key if context.has_partition_key else ""
        return dg.MaterializeResult(data_version=dg.DataVersion(f"{version}/{partition}"))

    @dg.asset(partitions_def=SHARDS, code_version=version)
    def A(context):
        return data(context)

    @dg.asset(deps=[dg.AssetDep(A, partition_mapping=ALL)], code_version="1")
    def B(context):
        return data(context)

    @dg.asset(deps=[B], partitions_def=METHODS, code_version="1")
    def C(context):
        return data(context)

    @dg.asset(deps=[C], partitions_def=METHODS, code_version="1")
    def D(context):
        return data(context)

    @dg.asset(deps=[dg.AssetDep(D, partition_mapping=ALL)], code_version="1")
    def E(context):
        return data(context)

    @dg.asset(deps=[dg.AssetDep(D, partition_mapping=ALL)], partitions_def=SHARDS, code_version="1")
    def F(context):
        return data(context)

    return [A, B, C, D, E, F]


def toy_defs(version: str, guard=lambda: None) -> dg.Definitions:
    holder: dict = {}
    sensor = automation_sensor(lambda: holder["defs"], guard=guard, loaded_at=0.0)
    holder["defs"] = dg.Definitions(assets=toy_assets(version), sensors=[sensor])
    return holder["defs"]


def statuses(stale=(), missing=()) -> list[PartitionStatus]:
    def state(item):
        return STALE if item in stale else MISSING if item in missing else FRESH
    return [PartitionStatus(a, p, state((a, p)), (f"{a}: has a new code version",) if (a, p) in stale else ())
            for a, p in TOY_ITEMS]


GRAPH = toy_defs("1").resolve_asset_graph()


# ------------------------------------------------------------------------------------------ the planning core
def test_plan_requests_the_next_wave_one_run_per_partition():
    plan = plan_tick(statuses(stale={("A", "p1"), ("A", "p2"), ("C", "m2")}, missing={("E", None)}), GRAPH)
    assert plan.runs == [("p1", ["A"]), ("p2", ["A"])]  # C[m2] and E wait for A (their ancestor) to be rebuilt
    assert plan.reason.startswith("4 partitions stale or missing: A[p1], A[p2], C[m2], E")


def test_plan_joins_identity_linked_partitions_in_one_run_like_sync():
    plan = plan_tick(statuses(stale={("C", "m1"), ("D", "m1"), ("D", "m2")}), GRAPH)
    assert plan.runs == [("m1", ["C", "D"]), ("m2", ["D"])]


def test_plan_waits_while_runs_are_in_flight():
    plan = plan_tick(statuses(stale={("A", "p1")}), GRAPH, busy=["run 1 (A[p2])", "backfill x"])
    assert plan.runs == [] and plan.reason.startswith("waiting for 2 runs in flight: run 1 (A[p2]), backfill x")


def test_plan_launches_nothing_from_definitions_of_another_manifest():
    plan = plan_tick(statuses(stale={("A", "p1")}), GRAPH, changed="manifest m.yaml changed on disk since ...")
    assert plan.runs == [] and plan.reason.startswith(MANIFEST_CHANGED)


def test_plan_fresh():
    plan = plan_tick(statuses(), GRAPH)
    assert plan.runs == [] and plan.reason == f"fresh: {len(TOY_ITEMS)} asset partitions"


def test_plan_leaves_out_what_depends_on_a_failed_run():
    plan = plan_tick(statuses(stale={("A", "p1"), ("C", "m1")}), GRAPH, failed={("A", "p1"): "run r1"})
    assert plan.runs == [] and "failed" in plan.reason and "run r1" in plan.reason  # C is below A: held too


# ------------------------------------------------------------------------------------------ the sensor (toy graph)
class Ticks:
    """Evaluate the sensor tick by tick and run what it requests (as the daemon and the run queue would)."""

    def __init__(self, defs: dg.Definitions, instance: dg.DagsterInstance):
        self.defs, self.instance = defs, instance
        self.requested: list[tuple[str, str | None]] = []

    def tick(self):
        sensor = self.defs.get_sensor_def("gmates_automation")
        return sensor.evaluate_tick(dg.build_sensor_context(instance=self.instance, definitions=self.defs))

    def run_until_fresh(self, max_ticks: int = 10) -> list[str]:
        reasons = []
        for _ in range(max_ticks):
            data = self.tick()
            if not data.run_requests:
                reasons.append(data.skip_message)
                if data.skip_message.startswith("fresh"):
                    return reasons
                continue
            for request in data.run_requests:
                assert request.tags[SENSOR_TAG] == "1"
                assets = [k.to_user_string() for k in request.asset_selection]
                self.requested += [(a, request.partition_key) for a in assets]
                assert not any(k.name == UP_TO_DATE for k in request.asset_check_keys or ())
                materialize(self.defs, self.instance, assets, request.partition_key)
            reasons.append(f"{len(data.run_requests)} runs")
        raise AssertionError(f"not fresh after {max_ticks} ticks: {reasons}")


def materialize(defs: dg.Definitions, instance, assets, partition: str | None = None) -> None:
    defs.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=instance, asset_selection=[dg.AssetKey(a) for a in assets], partition_key=partition)


def start_run(defs: dg.Definitions, instance, asset: str, partition: str) -> None:
    """A run that has started and not finished (a sensor's or a button's run, still running)."""
    job = defs.resolve_implicit_global_asset_job_def().get_subset(asset_selection={dg.AssetKey(asset)})
    instance.create_run_for_job(job_def=job, asset_selection=frozenset({dg.AssetKey(asset)}),
                                tags={"dagster/partition": partition}, status=dg.DagsterRunStatus.STARTED)


def test_sensor_builds_a_missing_graph_wave_by_wave_each_partition_once():
    with dg.DagsterInstance.ephemeral() as instance:
        ticks = Ticks(toy_defs("1"), instance)
        ticks.run_until_fresh()
        assert sorted(ticks.requested, key=str) == sorted(TOY_ITEMS, key=str)


def test_sensor_started_after_an_edit_rebuilds_what_it_reaches_once():
    """The UI was down during the edit: the first tick of the new Definitions sees A's new code version."""
    with dg.DagsterInstance.ephemeral() as instance:
        Ticks(toy_defs("1"), instance).run_until_fresh()
        ticks = Ticks(toy_defs("2"), instance)
        ticks.run_until_fresh()
        assert sorted(ticks.requested, key=str) == sorted(TOY_ITEMS, key=str)  # A's new data reaches everything


def test_sensor_finishes_what_a_partial_materialization_left():
    """E.g. "Materialize all" anchored on one partitions set: A and B rebuilt, the method partitions not."""
    with dg.DagsterInstance.ephemeral() as instance:
        Ticks(toy_defs("1"), instance).run_until_fresh()
        defs = toy_defs("2")
        for p in ("p1", "p2"):
            materialize(defs, instance, ["A"], p)
        materialize(defs, instance, ["B"])
        ticks = Ticks(defs, instance)
        ticks.run_until_fresh()
        assert sorted(ticks.requested, key=str) == sorted(set(TOY_ITEMS) - {("A", "p1"), ("A", "p2"), ("B", None)},
                                                          key=str)


def test_sensor_waits_for_a_run_in_flight():
    with dg.DagsterInstance.ephemeral() as instance:
        defs = toy_defs("1")
        start_run(defs, instance, "A", "p1")
        data = Ticks(defs, instance).tick()
        assert not data.run_requests and data.skip_message.startswith("waiting for 1 run in flight")


def test_sensor_skips_and_says_so_when_the_manifest_changed():
    with dg.DagsterInstance.ephemeral() as instance:
        defs = toy_defs("1", guard=lambda: "manifest m.yaml changed on disk since these definitions were loaded")
        data = Ticks(defs, instance).tick()
        assert not data.run_requests and data.skip_message.startswith(MANIFEST_CHANGED)
        verdicts = {e.asset_key.to_user_string(): e for e in data.asset_events}
        assert set(verdicts) == {"A", "B", "C", "D", "E", "F"}
        assert all(not e.passed and e.description.startswith(MANIFEST_CHANGED) for e in verdicts.values())


def test_sensor_reports_up_to_date_only_when_a_verdict_changes():
    with dg.DagsterInstance.ephemeral() as instance:
        defs = toy_defs("1")
        ticks = Ticks(defs, instance)
        first = ticks.tick()  # nothing built: every asset's check fails, naming its missing partitions
        by_asset = {e.asset_key.to_user_string(): e for e in first.asset_events}
        assert not by_asset["C"].passed and "C[m1]" in by_asset["C"].description
        for event in first.asset_events:
            instance.report_runless_asset_event(event)  # what the daemon does with them
        assert Ticks(defs, instance).tick().asset_events == []  # same verdicts: nothing new to report


# ------------------------------------------------------------------------------------------ the real Definitions
def test_a_ui_started_after_an_edit_made_while_it_was_down_requests_the_stale_partitions(full_build, tmp_path):
    build = full_build.copy_to(tmp_path / "b")
    build.edit("selection.ratio", 0.4)  # while the UI was down
    defs = build.defs()  # the UI starts: its Definitions load the edited manifest
    with build.instance() as instance:
        data = defs.get_sensor_def("gmates_automation").evaluate_tick(
            dg.build_sensor_context(instance=instance, definitions=defs))
    methods = defs.resolve_asset_graph().get(dg.AssetKey("selected_subset")).partitions_def.get_partition_keys()
    requested = {(r.partition_key, tuple(k.to_user_string() for k in r.asset_selection)) for r in data.run_requests}
    assert requested == {(m, ("selected_subset",)) for m in methods}
    check = {e.asset_key.to_user_string(): e for e in data.asset_events}["selected_subset"]
    assert not check.passed and all(f"selected_subset[{m}]" in check.description for m in methods)


def test_sensor_does_not_retry_a_failed_run_of_these_definitions():
    """A failed run is not requested again at every tick (a broken step would loop); what depends on it waits."""
    with dg.DagsterInstance.ephemeral() as instance:
        defs = toy_defs("1")
        job = defs.resolve_implicit_global_asset_job_def().get_subset(asset_selection={dg.AssetKey("A")})
        run = instance.create_run_for_job(job_def=job, asset_selection=frozenset({dg.AssetKey("A")}),
                                          tags={"dagster/partition": "p1", SENSOR_TAG: "1"},
                                          status=dg.DagsterRunStatus.FAILURE)
        data = Ticks(defs, instance).tick()
        assert not data.run_requests  # A[p2] is held too, as sync holds the assets of a failed run
        assert "held back after a failed sensor run" in data.skip_message and run.run_id in data.skip_message


def test_an_edit_during_a_tick_skips_it_with_the_reason_instead_of_failing(monkeypatch):
    """The steps of status refuse a manifest edited since the load (ManifestChanged); the tick then says why."""
    from gmates_assets.defs import automation
    from gmates_assets.defs.resources import ManifestChanged

    calls = []

    def guard():
        calls.append(1)
        return None if len(calls) == 1 else "manifest m.yaml changed on disk since these definitions were loaded"

    def edited_meanwhile(_defs, _instance):
        raise ManifestChanged("manifest m.yaml changed on disk")

    monkeypatch.setattr(automation, "current_statuses", edited_meanwhile)
    with dg.DagsterInstance.ephemeral() as instance:
        data = Ticks(toy_defs("1", guard=guard), instance).tick()
    assert not data.run_requests and data.skip_message.startswith(MANIFEST_CHANGED)


def test_sensor_waits_for_a_backfill_in_flight():
    """"Materialize all" on partitioned assets starts a backfill, which launches its runs over several daemon
    loops (none may be in flight for a while): the sensor waits until the backfill ends."""
    import time

    from dagster._core.execution.backfill import PartitionBackfill  # private, pinned dagster

    with dg.DagsterInstance.ephemeral() as instance:
        defs = toy_defs("1")
        instance.add_backfill(PartitionBackfill.from_asset_partitions(
            backfill_id="bf1", asset_graph=defs.resolve_asset_graph(), partition_names=["p1", "p2"],
            asset_selection=[dg.AssetKey("A"), dg.AssetKey("B")], backfill_timestamp=time.time(), tags={},
            dynamic_partitions_store=instance, all_partitions=False, title=None, description=None, run_config=None))
        data = Ticks(defs, instance).tick()
        assert not data.run_requests and data.skip_message == "waiting for 1 run in flight: backfill bf1"
