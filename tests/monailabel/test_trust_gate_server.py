"""The learning loop never makes the served model worse (issue 14), against a real MONAI Label server of its own
(heatmap model, ISBI images copied into a temp studies folder).

Tests run in file order on one server:
- fine-tuning on garbage labels (every training landmark moved to another landmark's place) is refused by the gate:
  ``train_stats`` says ``rejected`` with both MREs and the number of validation images, the served version does not
  change, the candidate file is kept;
- fine-tuning on the true labels is published (twice: two versions kept);
- ``anatomark served <model> --rollback`` serves the previous version again (no restart), then the shipped one;
- five parallel ``POST /train`` requests: one 200 and four 409 saying a training is running, every time;
- images deleted (``DELETE /datastore/image``) during a training: the training finishes and lists them as skipped.

ISBI ids 154 and 157 hash into the fixed validation split (``val_fraction`` 0.2), 151-153 into training.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
from mlserver_constants import MODEL
from mlserver_process import isbi_studies, start_server, stop_server, train_tasks, wait_done

TRAIN_IDS = ["151", "152", "153"]
VAL_IDS = ["154", "157"]
OTHER = "155"  # never labelled: the image versions are read on
BAD = {"max_epochs": 2, "lr": 2e-3}  # enough to fit garbage labels (the from-scratch rate)
GOOD = {"max_epochs": 1, "lr": 1e-8}  # a fine-tuning that cannot drift (fp16 weights stay): the gate must publish it


@pytest.fixture(scope="module")
def gated(isbi, tmp_path_factory):
    from anatomark.monailabel.train import in_validation
    from anatomark.paths import model_dir

    if not (model_dir() / f"{MODEL}.pt").is_file():
        pytest.skip(f"Shipped weights {model_dir() / (MODEL + '.pt')} not found")
    assert all(in_validation(i, 0.2) for i in VAL_IDS) and not any(in_validation(i, 0.2) for i in TRAIN_IDS)
    root = tmp_path_factory.mktemp("gate")
    studies = isbi_studies(root, isbi, TRAIN_IDS + VAL_IDS + [OTHER])
    srv = start_server(root, studies, {"models": MODEL, "train_epochs": "1"})
    yield srv
    stop_server(srv)


@pytest.fixture(scope="module")
def state() -> dict:
    return {}


def save_points(server, image: str, names: list[str], pts: np.ndarray) -> None:
    doc = {"landmarks": [{"name": n, "x": float(p[0]), "y": float(p[1])} for n, p in zip(names, pts)]}
    r = requests.put(
        f"{server.url}/datastore/label",
        params={"image": image, "tag": "final"},
        files={"label": (f"{image}.json", json.dumps(doc).encode())},
        timeout=60,
    )
    assert r.status_code == 200, r.text


def served_version(server) -> str:
    r = requests.post(
        f"{server.url}/infer/{MODEL}", params={"image": OTHER, "output": "json"}, data={"params": "{}"}, timeout=120
    )
    assert r.status_code == 200, r.text
    return r.json()["model_version"]


def train(server, params: dict) -> requests.Response:
    return requests.post(f"{server.url}/train/{MODEL}", json=params, timeout=60)


def train_stats(server) -> dict:
    return requests.get(f"{server.url}/info/", timeout=60).json()["train_stats"][MODEL]


def test_garbage_labels_are_refused_by_the_gate(gated, state, senior, landmark_set):
    state["shipped"] = served_version(gated)
    for i in TRAIN_IDS:  # every landmark placed where another one is (tens of mm off)
        save_points(gated, i, landmark_set.names, np.roll(senior[f"{i}.jpg"], 7, axis=0))
    for i in VAL_IDS:
        save_points(gated, i, landmark_set.names, senior[f"{i}.jpg"])
    r = train(gated, BAD)
    assert r.status_code == 200, r.text
    wait_done(gated, r.json()["id"], timeout=240)
    stats = train_stats(gated)
    gate = stats["gate"]
    assert stats["published"] is False and gate["decision"] == "rejected", gate
    assert "worse than the served model" in gate["reason"]
    assert gate["n_val"] == 2 and sorted(gate["val_images_scored"]) == VAL_IDS
    assert gate["served_val_mre_mm"] < 5 < gate["candidate_val_mre_mm"], gate
    assert gate["served_version"] == state["shipped"] and gate["candidate_version"] != state["shipped"]
    assert Path(gate["candidate_file"]).is_file() and Path(gate["candidate_file"]).with_suffix(".json").is_file()
    assert stats["model_version"] == state["shipped"] == served_version(gated)
    assert requests.get(f"{gated.url}/info/", timeout=60).json()["anatomark"]["versions"][MODEL] == []


def test_true_labels_are_published_as_new_versions(gated, state, senior, landmark_set):
    for i in TRAIN_IDS:
        save_points(gated, i, landmark_set.names, senior[f"{i}.jpg"])
    published = []
    for _ in range(2):
        r = train(gated, GOOD)
        assert r.status_code == 200, r.text
        wait_done(gated, r.json()["id"], timeout=240)
        stats = train_stats(gated)
        gate = stats["gate"]
        assert stats["published"] is True and gate["decision"] == "published", gate
        assert gate["n_val"] == 2 and gate["candidate_val_mre_mm"] <= gate["served_val_mre_mm"] + gate["tolerance_mm"]
        assert stats["model_version"] == gate["candidate_version"] == served_version(gated)
        published.append(stats["model_version"])
    assert published[0] != published[1] and state["shipped"] not in published
    versions = requests.get(f"{gated.url}/info/", timeout=60).json()["anatomark"]["versions"][MODEL]
    assert [v["version"] for v in versions] == published
    assert versions[-1]["info"]["n_val"] == 2
    state["published"] = published


def served_cli(server, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "anatomark.cli", "served", MODEL, "--studies", str(server.studies), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_rollback_serves_the_previous_version_without_restart(gated, state):
    v1, v2 = state["published"]
    pid = gated.proc.pid
    out = served_cli(gated, "--rollback")
    assert out.returncode == 0, out.stderr
    assert f"rolled back from {v2} to {v1}" in out.stdout
    assert served_version(gated) == v1
    out = served_cli(gated, "--rollback", "shipped")
    assert out.returncode == 0, out.stderr
    assert served_version(gated) == state["shipped"]
    assert gated.proc.pid == pid and gated.alive()
    listing = served_cli(gated, "--json")
    assert json.loads(listing.stdout)["served"] == state["shipped"]


def test_concurrent_train_requests_one_runs_the_others_get_409(gated):
    for _ in range(2):
        with ThreadPoolExecutor(5) as pool:
            answers = list(pool.map(lambda _: train(gated, GOOD), range(5)))
        codes = sorted(a.status_code for a in answers)
        assert codes == [200, 409, 409, 409, 409], [(a.status_code, a.text) for a in answers]
        task = next(a.json() for a in answers if a.status_code == 200)
        for a in answers:
            if a.status_code == 409:
                detail = a.json()["detail"]
                assert "already" in detail and task["id"] in detail and "DELETE /train/" in detail, detail
        stopped = requests.delete(f"{gated.url}/train/", timeout=60)  # the documented way to stop it
        assert stopped.status_code == 200, stopped.text
        deadline = time.time() + 60
        while any(t["status"] in ("SUBMITTED", "RUNNING") for t in train_tasks(gated)):
            assert time.time() < deadline, "the stopped training is still listed as running"
            time.sleep(0.3)


def test_images_deleted_during_training_are_skipped(gated):
    r = train(gated, {**GOOD, "max_epochs": 6})
    assert r.status_code == 200, r.text
    task_id = r.json()["id"]
    deadline = time.time() + 120
    while True:  # the training subprocess has read the datastore and announced its split
        task = next(t for t in train_tasks(gated) if t["id"] == task_id)
        if any("Fine-tuning" in line for line in task.get("details", [])):
            break
        assert task["status"] in ("SUBMITTED", "RUNNING") and time.time() < deadline, task
        time.sleep(0.2)
    for image in ("153", "157"):  # one training image, one validation image
        d = requests.delete(f"{gated.url}/datastore/image", params={"id": image}, timeout=60)
        assert d.status_code == 200, d.text
    wait_done(gated, task_id, timeout=240)
    stats = train_stats(gated)
    assert stats["n_train"] == 3 and stats["n_val"] == 2  # the split it started with
    assert stats["skipped_images"] == ["153", "157"]
    assert stats["gate"]["n_val"] == 1 and stats["gate"]["val_images_scored"] == ["154"]
