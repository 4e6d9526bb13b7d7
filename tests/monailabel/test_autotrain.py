"""The automatic retraining (:class:`anatomark.monailabel.autotrain.AutoTrainer`) without a server: MONAI Label's
task queue is replaced by a list."""

from __future__ import annotations

import time
from typing import Any

import pytest

from anatomark.monailabel import autotrain
from anatomark.monailabel.autotrain import AutoTrainer


class _Trainer:
    def __init__(self, used: dict[str, float] | None) -> None:
        self.used = used

    def labels_used(self) -> dict[str, float] | None:
        return self.used


class _App:
    def __init__(self) -> None:
        self.trainers = {"a": _Trainer(None), "b": _Trainer({"x": 1.0})}
        self.labels = {"x": 1.0}
        self.queue: list[dict[str, Any]] = []

    def datastore(self) -> _App:
        return self


@pytest.fixture
def app(monkeypatch) -> _App:
    app = _App()
    monkeypatch.setattr(autotrain, "server_mode", lambda a: True)
    monkeypatch.setattr(autotrain, "app_tasks", lambda a, kind: a.trainers)
    monkeypatch.setattr(autotrain, "final_labels", lambda ds: dict(ds.labels))
    monkeypatch.setattr(
        autotrain, "train_tasks", lambda statuses: [t for t in app.queue if t["status"] in set(statuses)]
    )

    def queue(request: dict[str, Any]) -> tuple[str, bool]:
        app.queue.append({"status": "SUBMITTED", "request": request, "id": f"t{len(app.queue)}"})
        return app.queue[-1]["id"], False

    monkeypatch.setattr(autotrain, "queue_training", queue)
    return app


def test_every_n_final_labels_queue_one_training_per_model(app, tmp_path):
    trainer = AutoTrainer.from_conf(app, tmp_path, {"auto_train_every_n_labels": "2", "train_epochs": "3"})
    trainer.on_label_saved("i1", "final")
    trainer.on_label_saved("i2", "original")  # only final labels count
    assert app.queue == []
    trainer.on_label_saved("i3", "final")
    assert [t["request"] for t in app.queue] == [
        {"model": m, "max_epochs": 3, "trigger": "auto: 2 new final label(s)"} for m in ("a", "b")
    ]
    trainer.on_label_saved("i4", "final")
    trainer.on_label_saved("i5", "final")
    assert len(app.queue) == 2  # both models already have a training waiting
    info = trainer.info()
    assert info["auto_train_every_n_labels"] == 2 and info["auto_train_interval"] == 0
    assert [e["model"] for e in info["auto_train_log"]] == ["a", "b"]


def test_a_tick_trains_only_models_whose_last_training_did_not_read_the_current_labels(app, tmp_path):
    trainer = AutoTrainer.from_conf(app, tmp_path, {"auto_train_interval": "7200"})
    assert trainer.interval_seconds == 7200
    assert trainer.tick() == ["a"]
    assert trainer.tick() == []  # a is queued now
    app.queue.clear()
    app.labels = {}
    assert trainer.tick() == []  # no final label: nothing to train on


def test_nothing_is_queued_outside_server_mode(app, tmp_path, monkeypatch):
    monkeypatch.setattr(autotrain, "server_mode", lambda a: False)
    trainer = AutoTrainer.from_conf(app, tmp_path, {"auto_train_every_n_labels": "1"})
    trainer.on_label_saved("i1", "final")
    assert app.queue == [] and trainer.trigger("test") == []


def test_a_schedule_change_resets_the_count_and_wakes_the_thread(app, tmp_path):
    trainer = AutoTrainer.from_conf(app, tmp_path, {"auto_train_every_n_labels": "2"})
    trainer.on_label_saved("i1", "final")
    assert trainer.start() and not trainer.start()
    trainer.store.update({"every_n_labels": 2, "interval_hours": 0.1 / 3600})  # stored, source "viewer"
    assert (tmp_path / "schedule.json").is_file() and trainer.info()["schedule"]["source"] == "viewer"
    trainer.on_label_saved("i2", "final")
    assert not [t for t in app.queue if "label" in t["request"]["trigger"]]  # the count restarted
    deadline = time.monotonic() + 10
    while not app.queue and time.monotonic() < deadline:
        time.sleep(0.05)
    trainer.stop()
    assert app.queue and app.queue[0]["request"]["model"] == "a"  # the interval thread ticked
    assert "schedule every 0.1 s" in app.queue[0]["request"]["trigger"]
