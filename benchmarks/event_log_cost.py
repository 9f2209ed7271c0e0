"""What storing one Dagster event costs in the local instance's event log, before and after gmates' changes.

`dagster` is Dagster's own way on gmates' storage class: a new engine and connection per query, WAL with
synchronous=FULL (an fsync per commit) and an asset event committed in two transactions (the event, then the
asset index). `gmates` is what gmates_assets/event_log.py does now: a kept connection (kept_sqlite.py),
synchronous=NORMAL and one transaction per asset event. Each stores the same
events (a run's worth of plain events and materializations, in a loop) into its own fresh home, measured side by
side in one process.

    python benchmarks/event_log_cost.py --events 300
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _events(n: int, run_id: str):
    import dagster as dg
    from dagster._core.events import StepMaterializationData

    for i in range(n):
        if i % 3 == 0:  # about a third of a run's events are materializations or other asset events
            data = StepMaterializationData(dg.AssetMaterialization(asset_key="a", partition=f"p{i}",
                                                                   tags={"dagster/data_version": str(i)}))
            event = dg.DagsterEvent(event_type_value=dg.DagsterEventType.ASSET_MATERIALIZATION.value,
                                    job_name="job", event_specific_data=data)
            yield dg.EventLogEntry(error_info=None, level="debug", user_message="", run_id=run_id,
                                   timestamp=time.time(), dagster_event=event)
        else:
            yield dg.EventLogEntry(error_info=None, level="info", user_message=f"message {i}", run_id=run_id,
                                   timestamp=time.time())


def measure(way: str, n: int) -> dict:
    import dagster as dg

    from gmates_assets import event_log
    from gmates_assets.local_instance import ensure_local_instance

    with tempfile.TemporaryDirectory() as tmp:
        ensure_local_instance(Path(tmp))
        instance = dg.DagsterInstance.from_config(tmp)
        storage = instance.event_log_storage
        if way == "dagster":  # Dagster's own methods: an engine and connection per query, two transactions
            storage.store_event = super(event_log.ConsolidatedEventLogStorage, storage).store_event
            storage._connect = super(event_log.ConsolidatedEventLogStorage, storage)._connect  # noqa: SLF001
        events = list(_events(n, "r"))
        started = time.perf_counter()
        for event in events:
            storage.store_event(event)
        seconds = time.perf_counter() - started
        instance.dispose()
    return {"way": way, "events": n, "ms_per_event": round(1000 * seconds / n, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=300)
    parser.add_argument("--smoke", action="store_true", help="30 events: checks the script still runs")
    args = parser.parse_args()
    n = 30 if args.smoke else args.events
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for way in ("dagster", "gmates", "dagster", "gmates"):  # twice, interleaved, against drift in the load
        print(measure(way, n), flush=True)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
