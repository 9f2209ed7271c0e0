"""The Dagster code location: `defs` for the build manifest named by $GMATES_MANIFEST.

`workspace.yaml` (via definitions.py) and runs launched by `gmates sync` with `execution.launcher: instance` load
this module, so the UI, the daemon and launched runs all see the same assets.
"""
import os

from .defs import DEFAULT_MANIFEST, build_definitions

defs = build_definitions(os.environ.get("GMATES_MANIFEST", DEFAULT_MANIFEST))
