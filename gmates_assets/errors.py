"""What gmates shows of an error raised inside Dagster (no Dagster import: the CLI uses it for any failure)."""
from __future__ import annotations


def user_cause(err: BaseException) -> BaseException:
    """The user-facing exception inside Dagster's wrappers (never the low-level error it was raised from)."""
    while getattr(err, "user_exception", None) is not None:
        err = err.user_exception
    return err
