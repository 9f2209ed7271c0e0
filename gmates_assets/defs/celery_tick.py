"""A quicker check on Celery steps: dagster-celery's executor polls its steps' results 10 times a second, not once.

`dagster_celery.core_execution_loop.core_celery_execution_loop` (dagster-celery 0.29) submits the steps that are
ready, then sleeps `TICK_SECONDS` = 1 before asking the result backend whether they finished. A step of a small
partition takes well under a second, so every step waited half a second on average for the next look, and a run
of two steps in sequence a second; in the cluster test (tests/test_cluster.py) a run spent 1.8 s on average
outside its steps and Celery's pick-up, more than in its steps (1.0 s). A look costs a GET on the result backend
per step in flight. Set in every process that loads Definitions with a dagster_celery executor: the run's own
process is the one that runs the loop. dagster-celery exposes no setting for it, hence a module attribute
(tests/test_cluster.py checks that it still exists).
"""
from __future__ import annotations

CELERY_TICK_SECONDS = 0.1


def quicken_celery_loop(executor_module: str) -> None:
    """Make dagster-celery's execution loop look at its steps every CELERY_TICK_SECONDS (dagster_celery and the
    executors built on its loop: dagster_celery_k8s, dagster_celery_docker)."""
    if not executor_module.startswith("dagster_celery"):
        return
    from dagster_celery import core_execution_loop  # private, pinned dagster-celery

    if hasattr(core_execution_loop, "TICK_SECONDS"):
        core_execution_loop.TICK_SECONDS = min(core_execution_loop.TICK_SECONDS, CELERY_TICK_SECONDS)
