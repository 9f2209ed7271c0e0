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
