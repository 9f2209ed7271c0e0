"""Dagster entry point: `dagster dev -w workspace.yaml`. The manifest comes from $GMATES_MANIFEST."""
import os
from pathlib import Path

os.environ.setdefault("GMATES_MANIFEST", str(Path(__file__).resolve().parent / "data_manifests" / "quickstart.yaml"))

from gmates_assets.code_location import defs  # noqa: E402  (reads GMATES_MANIFEST)

__all__ = ["defs"]
