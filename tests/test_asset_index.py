"""An asset's index entry left on an older materialization by two concurrent runs is put back on the latest."""
from __future__ import annotations

import dagster as dg


def _index_storage_id(instance, key: dg.AssetKey) -> int:
    (record,) = instance.get_asset_records([key])
    return record.asset_entry.last_materialization_record.storage_id


def test_an_asset_index_left_on_an_older_materialization_is_put_back_on_the_latest(tmp_path):
    """Dagster stores an asset event, then points the asset's index entry at it in a second transaction; two runs
    materializing partitions of one asset at once can interleave so that the index names the older event (seen
    on Postgres in the cluster test: a downstream partition stayed stale after every rebuild). The interleaving is
    replayed here by pointing the index back at the older event, as the slower run's second transaction does."""
    from gmates_assets.defs.asset_index import repair_latest_materialization

    parts = dg.StaticPartitionsDefinition(["a", "b"])

    @dg.asset(partitions_def=parts)
    def shard() -> int:
        return 1

    @dg.asset
    def other() -> int:
        return 2

    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        for key in ("a", "b"):
            assert dg.materialize([shard], instance=instance, partition_key=key).success
        assert dg.materialize([other], instance=instance).success
        older, latest = reversed(instance.fetch_materializations(shard.key, limit=2).records)
        instance.event_log_storage.store_asset_event(older.event_log_entry, older.storage_id)  # the race's end
        assert _index_storage_id(instance, shard.key) == older.storage_id

        assert repair_latest_materialization(instance, ["shard", "other"]) == ["shard"]
        assert _index_storage_id(instance, shard.key) == latest.storage_id
        assert repair_latest_materialization(instance, ["shard", "other"]) == []  # nothing left to repair


def test_sync_repairs_index_entries_only_on_an_event_log_that_does_not_order_them_and_says_so(monkeypatch):
    """gmates' event logs (sqlite and Postgres) order an event and its index entry in one transaction: sync
    neither warns nor spends queries repairing there; on another storage (Dagster's own) it warns once and
    repairs after each wave."""
    import gmates_assets.defs.sync as sync_module
    from gmates_assets.defs.asset_index import orders_asset_index
    from gmates_assets.event_log import ConsolidatedEventLogStorage
    from tests.test_sync_private_api import toy_defs

    assert ConsolidatedEventLogStorage.orders_asset_index
    repairs = []
    real_repair = sync_module.repair_latest_materialization
    monkeypatch.setattr(sync_module, "repair_latest_materialization",
                        lambda instance, names: repairs.append(sorted(names)) or real_repair(instance, names))
    for ordered in (False, True):
        repairs.clear()
        lines: list[str] = []
        with dg.instance_for_test() as instance:
            if ordered:
                monkeypatch.setattr(instance.event_log_storage, "orders_asset_index", True, raising=False)
            assert orders_asset_index(instance) == ordered
            sync_module.sync(toy_defs({"p0": "a", "p1": "a"}), instance, log=lines.append)
        warnings = [line for line in lines if line.startswith("warning: this instance's event log storage")]
        if ordered:
            assert warnings == [] and repairs == []
        else:
            assert len(warnings) == 1 and "OrderedPostgresEventLogStorage" in warnings[0]
            assert repairs == [["docs"], ["agg"]]  # after each of the two waves
