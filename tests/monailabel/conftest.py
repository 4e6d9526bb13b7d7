"""A real MONAI Label server (``python -m monailabel.main start_server``) on a free loopback port.

The studies folder is a temp dir with a few ISBI 2015 images copied at test time (never into the repo) plus a
small PNG made from one of them. Tests skip with a clear message when the dataset or the shipped weights are absent.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from mlserver_constants import AUTO_TRAIN_EVERY, LABELLED, MODEL, SMALL, UNLABELLED

REPO = Path(__file__).resolve().parents[2]
ISBI = Path(os.environ.get("ANATOMARK_ISBI", REPO.parent / "shared" / "datasets" / "isbi2015"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, url: str, studies: Path, proc: subprocess.Popen, log: Path):
        self.url, self.studies, self.proc, self.log = url, studies, proc, log

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:]) if self.log.is_file() else ""


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
    studies = root / "studies"
    studies.mkdir()
    for i in LABELLED + UNLABELLED:
        shutil.copy(isbi / "images" / f"{i}.jpg", studies / f"{i}.jpg")
    with Image.open(isbi / "images" / "151.jpg") as im:
        im.convert("L").resize((387, 480), Image.BILINEAR).save(studies / f"{SMALL}.png", dpi=(254, 254))
    port = _free_port()
    env = {
        **os.environ,
        "ANATOMARK_CACHE": str(root / "cache"),
        "MONAI_LABEL_SESSION_PATH": str(root / "sessions"),
        "MONAI_LABEL_INFER_CONCURRENCY": "1",
    }
    cmd = [
        sys.executable, "-m", "monailabel.main", "start_server",
        "--app", str(REPO / "apps" / "landmarks"), "--studies", str(studies),
        "--conf", "models", MODEL, "--conf", "train_epochs", "1",
        "--conf", "auto_train_every_n_labels", str(AUTO_TRAIN_EVERY),
        "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    log = root / "server.log"
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    srv = Server(f"http://127.0.0.1:{port}", studies, proc, log)
    deadline = time.time() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{srv.url}/info/", timeout=5) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if not srv.alive() or time.time() > deadline:
            proc.kill()
            pytest.fail(f"MONAI Label server did not start:\n{srv.log_tail()}")
        time.sleep(0.5)
    yield srv
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()


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
