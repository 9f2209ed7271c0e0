"""The torchrun pretraining worker with a fault: every rank fails after step 3 (a worker that dies mid-run)."""
from __future__ import annotations

from gmates_assets.pipes import pretrain_worker


def fail_after_step_3(done: int, total: int, unit: str) -> None:
    if done == 3:
        raise RuntimeError("injected worker failure after step 3")


if __name__ == "__main__":
    pretrain_worker.main(after_step=fail_after_step_3)
