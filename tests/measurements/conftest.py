from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
AASCE = Path(os.environ.get("ANATOMARK_AASCE", REPO.parent / "shared" / "datasets" / "aasce2019-spine"))


@pytest.fixture
def aasce_dir() -> Path:
    if not (AASCE / "labels" / "angles.csv").is_file():
        pytest.skip(f"AASCE 2019 dataset not found at {AASCE} (set ANATOMARK_AASCE or place ../shared/datasets)")
    return AASCE
