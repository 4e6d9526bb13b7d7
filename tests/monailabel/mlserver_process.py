"""Start and stop a real MONAI Label server running the anatomark app, plus small helpers for training tasks (a plain
module, imported by bare name by conftest.py and by tests that need a server with their own ``--conf`` options)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from monailabel.client.client import MONAILabelUtils

REPO = Path(__file__).resolve().parents[2]


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


def isbi_studies(root: Path, isbi: Path, images: list[int] | tuple[int, ...]) -> Path:
    """``root/studies`` holding copies of ISBI images ``<i>.jpg`` (copied at test time, never into the repo)."""
    studies = root / "studies"
    studies.mkdir(parents=True)
    for i in images:
        shutil.copy(isbi / "images" / f"{i}.jpg", studies / f"{i}.jpg")
    return studies


def start_server(root: Path, studies: Path, conf: dict[str, str], timeout: float = 120) -> Server:
    """``python -m monailabel.main start_server`` for the app on a free loopback port, with ``--conf`` options;
    returns once ``/info/`` answers. Caches, sessions and the log (``server.log``) go under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    env = {
        **os.environ,
        "ANATOMARK_CACHE": str(root / "cache"),
        "MONAI_LABEL_SESSION_PATH": str(root / "sessions"),
        "MONAI_LABEL_INFER_CONCURRENCY": "1",
    }
    conf_args = [a for k, v in conf.items() for a in ("--conf", k, str(v))]
    cmd = [
        sys.executable, "-m", "monailabel.main", "start_server",
        "--app", str(REPO / "apps" / "landmarks"), "--studies", str(studies), *conf_args,
        "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    log = root / "server.log"
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    srv = Server(f"http://127.0.0.1:{port}", studies, proc, log)
    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{srv.url}/info/", timeout=5) as r:
                if r.status == 200:
                    return srv
        except OSError:
            pass
        if not srv.alive() or time.time() > deadline:
            proc.kill()
            pytest.fail(f"MONAI Label server did not start:\n{srv.log_tail()}")
        time.sleep(0.5)


def stop_server(srv: Server) -> None:
    srv.proc.terminate()
    try:
        srv.proc.wait(20)
    except subprocess.TimeoutExpired:
        srv.proc.kill()


def train_tasks(server) -> list[dict]:
    """All training tasks of the server (``GET /train/?all=true``), oldest first."""
    status, body, _, _ = MONAILabelUtils.http_method("GET", server.url, "/train/?all=true")
    if status == 404:  # MONAI Label: "No Train Tasks Found"
        return []
    assert status == 200, body
    tasks = json.loads(body)
    return tasks if isinstance(tasks, list) else []


def wait_done(server, task_id: str, timeout: float = 150) -> dict:
    """Wait for a training task to end; fail with its output unless it is ``DONE``."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        task = next(t for t in train_tasks(server) if t["id"] == task_id)
        if task["status"] in ("DONE", "ERROR", "STOPPED"):
            assert task["status"] == "DONE", "\n".join(task.get("details", []))
            return task
        time.sleep(0.5)
    pytest.fail(f"training {task_id} did not finish within {timeout} s:\n{server.log_tail()}")


def save_truth(client, tmp_path, image: str, senior, names, shift: float = 0.0) -> None:
    """Save the senior annotation of ISBI ``image`` (x shifted by ``shift`` px) as its ``final`` label (our JSON)."""
    pts = senior[f"{image}.jpg"]
    doc = {"landmarks": [{"name": n, "x": float(p[0]) + shift, "y": float(p[1])} for n, p in zip(names, pts)]}
    path = tmp_path / f"{image}.json"
    path.write_text(json.dumps(doc))
    client.save_label(image, str(path), tag="final")
