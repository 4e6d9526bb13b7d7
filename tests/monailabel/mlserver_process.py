"""Start and stop a real MONAI Label server running the anatomark app (:class:`anatomark.launch.MonaiLabelServer`),
plus small helpers for training tasks (a plain module, imported by bare name by conftest.py and by tests that need a
server with their own ``--conf`` options)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from monailabel.client.client import MONAILabelUtils

from anatomark.data.points_json import points_document, write_points_json
from anatomark.launch import MonaiLabelServer, ServerError

REPO = Path(__file__).resolve().parents[2]

#: a started server: ``url``, ``studies``, ``proc``, ``log``, ``alive()``, ``log_tail()``
Server = MonaiLabelServer


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
    srv = MonaiLabelServer(
        studies,
        root,
        conf,
        env={"ANATOMARK_CACHE": str(root / "cache"), "MONAI_LABEL_INFER_CONCURRENCY": "1"},
        timeout=timeout,
        poll=0.5,
    )
    try:
        return srv.start()
    except ServerError as e:
        pytest.fail(f"MONAI Label server did not start:\n{e}")


def stop_server(srv: Server) -> None:
    srv.stop()


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
    pts = senior[f"{image}.jpg"] + [shift, 0.0]
    path = write_points_json(tmp_path / f"{image}.json", points_document(pts, names, decimals=None))
    client.save_label(image, str(path), tag="final")
