"""The automation sensor's condition: an asset that fans in over partitions waits for every upstream chain.

A toy graph with the shapes of the real one: shards A[p] -> B -> methods C[m] -> D[m] -> E (all of D) and
F[p] (all of D, partitioned by shards). After a code change in A, C[m1] finishes while C[m2] is still running.
Guarding only the direct dependencies lets D[m1], then E and F run before C[m2] is done (and again after it);
the ancestor guard holds everything below C until the whole wave is done, so each asset partition runs once.
"""
from __future__ import annotations

import dagster as dg

from gmates_assets.defs.automation import sync_condition, with_sync_conditions

SHARDS = dg.StaticPartitionsDefinition(["p1", "p2"])
METHODS = dg.StaticPartitionsDefinition(["m1", "m2"])
ALL = dg.AllPartitionMapping()


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


def guarded(version: str) -> dg.Definitions:
    return dg.Definitions(assets=with_sync_conditions(toy_assets(version)))


def direct_deps_only(version: str) -> dg.Definitions:
    """The condition before the ancestor guard (direct dependencies only), for contrast."""
    cond = sync_condition()
    return dg.Definitions(assets=[a.map_asset_specs(lambda s: s.replace_attributes(automation_condition=cond))
                                  for a in toy_assets(version)])


class Ticks:
    """Evaluate the automation conditions tick by tick; record what each tick requested."""

    def __init__(self, defs: dg.Definitions, instance: dg.DagsterInstance):
        self.defs, self.instance, self.cursor = defs, instance, None
        self.requested: list[set[tuple[str, str | None]]] = []

    def tick(self) -> set[tuple[str, str | None]]:
        result = dg.evaluate_automation_conditions(defs=self.defs, instance=self.instance, cursor=self.cursor)
        self.cursor = result.cursor
        requested = set()
        for key in self.defs.resolve_asset_graph().materializable_asset_keys:
            if result.get_num_requested(key):
                parts = result.get_requested_partitions(key)
                requested |= {(key.to_user_string(), p) for p in parts}
        self.requested.append(requested)
        return requested


def materialize(defs: dg.Definitions, instance, assets: str, partition: str | None = None) -> None:
    defs.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=instance, asset_selection=[dg.AssetKey(a) for a in assets], partition_key=partition)


def start_run(defs: dg.Definitions, instance, asset: str, partition: str) -> None:
    """A run that has started and not finished (what a launched, still running sensor run looks like)."""
    job = defs.resolve_implicit_global_asset_job_def().get_subset(asset_selection={dg.AssetKey(asset)})
    instance.create_run_for_job(job_def=job, asset_selection=frozenset({dg.AssetKey(asset)}),
                                tags={"dagster/partition": partition}, status=dg.DagsterRunStatus.STARTED)


def build_all(defs: dg.Definitions, instance) -> None:
    for p in ("p1", "p2"):
        materialize(defs, instance, "A", p)
    materialize(defs, instance, "B")
    for m in ("m1", "m2"):
        materialize(defs, instance, "CD", m)
    materialize(defs, instance, "E")
    for p in ("p1", "p2"):
        materialize(defs, instance, "F", p)


def edit_until_c_m1_done(make_defs, instance) -> Ticks:
    """Build v1, switch to v2, run what the sensor requests, until C[m1] is done and C[m2] still running."""
    ticks = Ticks(make_defs("1"), instance)
    build_all(ticks.defs, instance)
    assert ticks.tick() == set()  # a built graph: nothing to do (and the cursor now knows the v1 code versions)
    defs = ticks.defs = make_defs("2")  # what "Reload definitions" does after an edit
    assert ticks.tick() == {("A", "p1"), ("A", "p2")}
    for p in ("p1", "p2"):
        materialize(defs, instance, "A", p)
    assert ticks.tick() == {("B", None)}
    materialize(defs, instance, "B")
    assert ticks.tick() == {("C", "m1"), ("C", "m2")}
    materialize(defs, instance, "C", "m1")
    start_run(defs, instance, "C", "m2")
    return ticks


def test_direct_dependency_guard_alone_requests_the_fan_in_early():
    with dg.DagsterInstance.ephemeral() as instance:
        ticks = edit_until_c_m1_done(direct_deps_only, instance)
        assert ticks.tick() == {("D", "m1")}
        materialize(ticks.defs, instance, "D", "m1")
        assert {"E", "F"} <= {asset for asset, _ in ticks.tick()}  # C[m2] still runs: E and F would run twice


def test_fan_in_assets_wait_for_every_upstream_chain_then_run_once():
    with dg.DagsterInstance.ephemeral() as instance:
        ticks = edit_until_c_m1_done(guarded, instance)
        assert ticks.tick() == set()  # the wave barrier: nothing below C starts while any C partition runs
        materialize(ticks.defs, instance, "C", "m2")  # the run in flight finishes (a newer run stands for it)
        assert ticks.tick() == {("D", "m1"), ("D", "m2")}
        for m in ("m1", "m2"):
            materialize(ticks.defs, instance, "D", m)
        assert ticks.tick() == {("E", None), ("F", "p1"), ("F", "p2")}
        for p in ("p1", "p2"):
            materialize(ticks.defs, instance, "F", p)
        materialize(ticks.defs, instance, "E")
        assert ticks.tick() == set()
        flat = [item for tick in ticks.requested for item in tick]
        assert len(flat) == len(set(flat)), f"something was requested twice: {ticks.requested}"
