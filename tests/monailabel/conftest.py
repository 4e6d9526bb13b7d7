"""A real MONAI Label server (``python -m monailabel.main start_server``) on a free loopback port.

The studies folder is a temp dir with a few ISBI 2015 images copied at test time (never into the repo) plus a
small PNG made from one of them. Tests skip with a clear message when the dataset or the shipped weights are absent.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from mlserver_constants import AUTO_TRAIN_EVERY, LABELLED, MODEL, SMALL, UNLABELLED
from mlserver_process import Server, isbi_studies, start_server, stop_server

REPO = Path(__file__).resolve().parents[2]
ISBI = Path(os.environ.get("ANATOMARK_ISBI", REPO.parent / "shared" / "datasets" / "isbi2015"))


@pytest.fixture(scope="session")
def isbi() -> Path:
    if not (ISBI / "images").is_dir():
        pytest.skip(f"ISBI 2015 dataset not found at {ISBI} (set ANATOMARK_ISBI or place ../shared/datasets)")
    return ISBI


@pytest.fixture(scope="session")
def server(isbi: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    from anatomark.paths import model_dir

    if not (model_dir() / f"{MODEL}.pt").is_file():
        pytest.skip(
            f"Shipped weights {model_dir() / (MODEL + '.pt')} not found; train or fetch the default model first"
        )
    from PIL import Image

    root = tmp_path_factory.mktemp("monailabel")
    studies = isbi_studies(root, isbi, LABELLED + UNLABELLED)
    with Image.open(isbi / "images" / "151.jpg") as im:
        im.convert("L").resize((387, 480), Image.BILINEAR).save(studies / f"{SMALL}.png", dpi=(254, 254))
    srv = start_server(
        root,
        studies,
        # these labels hold no validation image: publication without the gate (the gate: test_trust_gate_server.py)
        {
            "models": MODEL,
            "train_epochs": "1",
            "auto_train_every_n_labels": str(AUTO_TRAIN_EVERY),
            "gate_min_val_images": "0",
        },
    )
    yield srv
    stop_server(srv)


@pytest.fixture(scope="session")
def client(server: Server, tmp_path_factory: pytest.TempPathFactory):
    from monailabel.client import MONAILabelClient

    return MONAILabelClient(server.url, tmpdir=str(tmp_path_factory.mktemp("client")))


@pytest.fixture(scope="session")
def landmark_set():
    from anatomark.config import load_landmark_set

    return load_landmark_set("isbi2015_cephalometric")


@pytest.fixture(scope="session")
def senior(isbi: Path, landmark_set) -> dict[str, np.ndarray]:
    from anatomark.data.annotations import read_landmark_csv

    return read_landmark_csv(isbi / "landmarks_senior.csv", landmark_set.names)
