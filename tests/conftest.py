from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
ISBI = Path(os.environ.get("ANATOMARK_ISBI", REPO.parent / "shared" / "datasets" / "isbi2015"))
AASCE = Path(os.environ.get("ANATOMARK_AASCE", REPO.parent / "shared" / "datasets" / "aasce2019-spine"))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("ANATOMARK_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture
def isbi_dir() -> Path:
    if not (ISBI / "images").is_dir():
        pytest.skip(f"ISBI 2015 dataset not found at {ISBI} (set ANATOMARK_ISBI or place ../shared/datasets)")
    return ISBI


@pytest.fixture
def aasce_dir() -> Path:
    if not (AASCE / "labels" / "angles.csv").is_file():
        pytest.skip(f"AASCE 2019 dataset not found at {AASCE} (set ANATOMARK_AASCE or place ../shared/datasets)")
    return AASCE


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def dots_model(tmp_path_factory):
    """A small heatmap model trained once per session on synthetic two-dot images (about a minute)."""
    from tests.test_training import make_dot_images, tiny_recipe

    from anatomark.training import train

    root = tmp_path_factory.mktemp("dots")
    items = make_dot_images(root / "train", 64, seed=1)
    res = train(tiny_recipe(), items, root / "run", progress=False)
    return root, res
