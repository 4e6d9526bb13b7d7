"""Where configuration and shipped models live."""

from __future__ import annotations

import os
from pathlib import Path

#: Repository root (the library is installed in editable mode from ``lib/``).
REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = Path(os.environ.get("ANATOMARK_CONFIG_DIR", REPO_ROOT / "configs"))


def model_dir() -> Path:
    """Directory holding shipped/published model weights (``<name>.pt``)."""
    env = os.environ.get("ANATOMARK_MODEL_DIR")
    if env:
        return Path(env)
    from anatomark.config import load_yaml

    app = load_yaml(CONFIG_DIR / "app.yaml")
    return REPO_ROOT / app.get("model_dir", "apps/landmarks/model")


def cache_dir() -> Path:
    """Directory for cached preprocessed data (``ANATOMARK_CACHE`` overrides)."""
    return Path(os.environ.get("ANATOMARK_CACHE", Path.home() / ".cache" / "anatomark"))
