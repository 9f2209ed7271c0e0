"""The console logger of every gmates run: one short line per step message, no Dagster event chatter.

Steps' own messages (progress, reuse, skip counts) print as `step: message`; a failure prints one line (the
CLI ends with the cause), never Dagster's multi-page traceback. With GMATES_VERBOSE=1 (`gmates --verbose`)
everything Dagster logs is printed in full. The event log in the Dagster instance (the UI) is unaffected.
"""
from __future__ import annotations

import logging
import os
import sys

import dagster as dg

VERBOSE_ENV = "GMATES_VERBOSE"


class _StepLineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        meta = getattr(record, "dagster_meta", None) or {}
        message = str(meta.get("orig_message", record.getMessage())).strip().splitlines()
        first = message[0] if message else ""
        step = meta.get("step_key")
        return f"  {step}: {first}" if step else f"  {first}"


@dg.logger(
    config_schema={"log_level": dg.Field(str, is_required=False, default_value="INFO")},
    description="Step messages as short lines (full Dagster logs with GMATES_VERBOSE=1).",
)
def gmates_console_logger(init_context) -> logging.Logger:
    verbose = bool(os.environ.get(VERBOSE_ENV))
    log = logging.Logger("gmates", logging.DEBUG if verbose else init_context.logger_config["log_level"])
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s") if verbose
                         else _StepLineFormatter())
    if not verbose:  # Dagster's own events (step start, failure with traceback): the CLI reports the cause
        handler.addFilter(lambda record: (getattr(record, "dagster_meta", None) or {}).get("dagster_event") is None)
    log.addHandler(handler)
    return log
