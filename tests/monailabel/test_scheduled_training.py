"""Scheduled retraining (``--conf auto_train_interval <seconds>``) and the multi-GPU request options (run as two CPU
processes), against a real MONAI Label server of their own.

Tests run in file order on one server: nothing fires without labels; saving labels fires one training on the next
tick (no train request) whose weights are then served; nothing fires again while the labels stay the same, not even
after an explicit (multi-process) training; changing a label fires again.

Every training passes the publication gate (issue 14): image 154 is a validation image (its id hashes into the fixed
split) and ``train_lr`` 1e-8 leaves the (fp16) weights as they were, so each fine-tuning scores the same as the model it
starts from and is published every time (a new file: a new version): the schedule is what is tested here.
"""

from __future__ import annotations

import time

import pytest
from mlserver_constants import MODEL
from mlserver_process import isbi_studies, save_truth, start_server, stop_server, train_tasks, wait_done
from monailabel.client import MONAILabelClient

INTERVAL = 2.0  # seconds between schedule ticks
IMAGES = ["151", "152", "153", "154"]
LABELLED = ["151", "152", "154"]  # 154: the validation image


@pytest.fixture(scope="module")
def sched(isbi, tmp_path_factory):
    from anatomark.paths import model_dir

    if not (model_dir() / f"{MODEL}.pt").is_file():
        pytest.skip(f"Shipped weights {model_dir() / (MODEL + '.pt')} not found")
    root = tmp_path_factory.mktemp("scheduled")
    studies = isbi_studies(root, isbi, IMAGES)
    conf = {"models": MODEL, "train_epochs": "1", "auto_train_interval": str(INTERVAL), "train_lr": "1e-8"}
    srv = start_server(root, studies, conf)
    yield srv
    stop_server(srv)


@pytest.fixture(scope="module")
def sclient(sched, tmp_path_factory):
    return MONAILabelClient(sched.url, tmpdir=str(tmp_path_factory.mktemp("sched_client")))


@pytest.fixture(scope="module")
def state() -> dict:
    return {}


def wait_for_new_task(server, n_before: int, within: float) -> tuple[dict, float]:
    t0 = time.time()
    while time.time() - t0 < within:
        tasks = train_tasks(server)
        if len(tasks) > n_before:
            return tasks[n_before], time.time() - t0
        time.sleep(0.2)
    pytest.fail(f"no scheduled training within {within} s:\n{server.log_tail()}")


def test_nothing_fires_without_labels(sched, sclient, state):
    assert sclient.info()["anatomark"]["auto_train_interval"] == INTERVAL
    _, res = sclient.infer(MODEL, "153", {"result_format": "slicer_markups"})
    state["shipped"] = res["model_version"]
    time.sleep(2.5 * INTERVAL)
    assert train_tasks(sched) == []


def test_saved_labels_train_on_schedule_and_new_weights_are_served(
    sched, sclient, state, senior, landmark_set, tmp_path
):
    for i in LABELLED:
        save_truth(sclient, tmp_path, i, senior, landmark_set.names)
    task, after = wait_for_new_task(sched, 0, within=INTERVAL + 5)
    assert after <= INTERVAL + 3, f"fired {after:.1f} s after the labels, the interval is {INTERVAL} s"
    assert task["request"]["trigger"].startswith("auto: schedule"), task["request"]
    assert task["request"]["max_epochs"] == 1
    wait_done(sched, task["id"])
    # one run only: ticks during the training (every 2 s) did not queue a second one
    assert len(train_tasks(sched)) == 1
    _, res = sclient.infer(MODEL, "153", {"result_format": "slicer_markups"})
    assert res["model_version"] != state["shipped"]
    stats = sclient.info()["train_stats"][MODEL]
    assert stats["n_train"] == 2 and stats["n_val"] == 1 and stats["model_version"] == res["model_version"]
    assert stats["published"] and stats["gate"]["n_val"] == 1, stats["gate"]
    assert stats["processes"] == 1
    log = sclient.info()["anatomark"]["auto_train_log"]
    assert len(log) == 1 and log[0]["reason"].startswith("schedule")
    state["scheduled"] = res["model_version"]


def test_no_retraining_while_labels_stay_the_same(sched):
    time.sleep(3 * INTERVAL)
    assert len(train_tasks(sched)) == 1


def test_multi_gpu_option_trains_in_two_cpu_processes(sched, sclient, state):
    """MONAI Label's ``multi_gpu`` request option; without GPUs ``cpu_processes`` 2 runs the same DDP path (gloo)."""
    task = sclient.train_start(MODEL, {"max_epochs": 1, "multi_gpu": True, "cpu_processes": 2})
    wait_done(sched, task["id"], timeout=180)
    stats = sclient.info()["train_stats"][MODEL]
    assert stats["processes"] == 2 and stats["backend"] == "gloo"
    assert stats["started_from_version"] == state["scheduled"]
    _, res = sclient.infer(MODEL, "153", {"result_format": "slicer_markups"})
    assert res["model_version"] == stats["model_version"] != state["scheduled"]
    state["multi"] = res["model_version"]
    # the explicit training read the same labels: the schedule has nothing new to train
    time.sleep(1.5 * INTERVAL)
    assert len(train_tasks(sched)) == 2


def test_changed_label_fires_again(sched, sclient, state, senior, landmark_set, tmp_path):
    n = len(train_tasks(sched))
    save_truth(sclient, tmp_path, "152", senior, landmark_set.names, shift=3.0)  # a corrected label
    task, _ = wait_for_new_task(sched, n, within=INTERVAL + 5)
    assert task["request"]["trigger"].startswith("auto: schedule")
    wait_done(sched, task["id"])
    stats = sclient.info()["train_stats"][MODEL]
    assert stats["started_from_version"] == state["multi"]
    assert stats["n_train"] + stats["n_val"] == 3


def test_restart_remembers_what_the_last_training_read(sched, tmp_path):
    """The record of the labels each training read (``labels_used.json``) lives with the studies: a restarted server
    does not retrain labels that were already trained, and does train labels no training has read."""
    stop_server(sched)
    conf = {"models": MODEL, "train_epochs": "1", "auto_train_interval": str(INTERVAL), "train_lr": "1e-8"}
    again = start_server(tmp_path / "a", sched.studies, conf)
    try:
        time.sleep(2.5 * INTERVAL)
        assert train_tasks(again) == []
    finally:
        stop_server(again)
    (sched.studies / ".anatomark" / "train" / MODEL / "labels_used.json").unlink()  # as if never trained
    again = start_server(tmp_path / "b", sched.studies, conf)
    try:
        task, _ = wait_for_new_task(again, 0, within=INTERVAL + 5)
        assert task["request"]["trigger"].startswith("auto: schedule")
        wait_done(again, task["id"])
    finally:
        stop_server(again)
