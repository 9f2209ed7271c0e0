"""Dagster entry point: `dagster dev -w workspace.yaml`. The manifest comes from $GMATES_MANIFEST."""
import os
from pathlib import Path

from gmates_assets.defs import build_definitions

_here = Path(__file__).resolve().parent
defs = build_definitions(os.environ.get("GMATES_MANIFEST", str(_here / "data_manifests" / "demo.yaml")))
