"""Automatic retraining of a MONAI Label server: after every N saved final labels, and on an interval.

:class:`AutoTrainer` owns the retraining schedule (a :class:`~anatomark.monailabel.schedule.ScheduleStore`: the app
options ``auto_train_every_n_labels`` / ``auto_train_interval`` until ``PUT /anatomark/schedule`` stores one), the
label counter, the interval thread and the log shown in ``/info/`` (``anatomark.auto_train_log``):

- every N saved ``final`` labels (:meth:`AutoTrainer.on_label_saved`, the datastore's ``on_label_saved``) queues a
  fine-tuning of every served model;
- every ``interval`` (:meth:`AutoTrainer.tick`, run by the thread) queues a fine-tuning of each model whose latest
  training (automatic or requested, also before a restart; recorded by the train task in ``labels_used.json``) did
  not read the current final labels; nothing happens while the labels stay the same, or while a training of that
  model is queued or running.

A model that already has a training waiting is skipped; automatic trainings queue at most one behind the running one
(``POST /train`` meanwhile answers 409, :func:`anatomark.monailabel.patches.one_training_at_a_time`). Trainings are
queued only in server mode (not in MONAI Label's subprocesses).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from monailabel.interfaces.datastore import DefaultLabelTag

from anatomark.monailabel.patches import app_tasks, queue_training, server_mode, train_tasks, web_app
from anatomark.monailabel.schedule import Schedule, ScheduleStore, add_schedule_routes
from anatomark.monailabel.train import final_labels

logger = logging.getLogger(__name__)

#: Wake-up period of the interval thread while the interval is off (a schedule change wakes it at once anyway).
IDLE_WAKE_SECONDS = 60.0
#: Entries of the log shown in ``/info/``.
INFO_LOG_ENTRIES = 20


class AutoTrainer:
    """The automatic retraining of one app; see the module docstring.

    Args:
        app: the MONAI Label app (its train tasks and datastore are looked up when needed).
        schedule_path: where a schedule set from a viewer is stored (``<state>/schedule.json``).
        default: the schedule from the app options.
        epochs: epochs of an automatic fine-tuning.
    """

    def __init__(self, app: Any, schedule_path: str | Path, default: Schedule, epochs: int) -> None:
        self.app = app
        self.epochs = int(epochs)
        self.store = ScheduleStore(schedule_path, default, on_change=self._on_schedule_change)
        self.log: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._saves_since_train = 0
        self._changed = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def from_conf(cls, app: Any, state_dir: str | Path, conf: Mapping[str, Any]) -> AutoTrainer:
        """From the app options ``auto_train_every_n_labels`` (0), ``auto_train_interval`` (seconds, 0) and
        ``auto_train_epochs`` (default ``train_epochs``, 10).

        Args:
            app: the MONAI Label app.
            state_dir: the app's state folder (the schedule is kept in ``schedule.json`` there).
            conf: the app options.
        """
        default = Schedule(
            every_n_labels=max(0, int(conf.get("auto_train_every_n_labels", 0))),
            interval_hours=max(0.0, float(conf.get("auto_train_interval", 0))) / 3600.0,
        )
        epochs = int(conf.get("auto_train_epochs", conf.get("train_epochs", 10)))
        return cls(app, Path(state_dir) / "schedule.json", default, epochs)

    # ------------------------------------------------------------------ schedule
    @property
    def every_n_labels(self) -> int:
        """Fine-tune after every N saved final labels (0 = off): the stored schedule, else the app option."""
        return self.store.get().every_n_labels

    @property
    def interval_seconds(self) -> float:
        """Seconds between scheduled checks (0 = off): the stored schedule, else the app option."""
        return self.store.get().interval_seconds

    def _on_schedule_change(self, schedule: Schedule) -> None:
        with self._lock:
            self._saves_since_train = 0
        self._changed.set()  # the interval loop restarts its wait with the new interval

    def info(self) -> dict[str, Any]:
        """The ``/info/`` entries: ``auto_train_every_n_labels``, ``auto_train_interval``, ``schedule``,
        ``auto_train_log`` (the last :data:`INFO_LOG_ENTRIES`)."""
        return {
            "auto_train_every_n_labels": self.every_n_labels,
            "auto_train_interval": self.interval_seconds,
            "schedule": self.store.get().to_dict(),  # also GET/PUT /anatomark/schedule
            "auto_train_log": self.log[-INFO_LOG_ENTRIES:],
        }

    # ------------------------------------------------------------------ triggers
    def on_label_saved(self, image_id: str, tag: str) -> None:
        """Count a saved label; every ``every_n_labels`` final labels queue a fine-tuning of every model.

        Args:
            image_id: the labelled image.
            tag: the label's tag (only ``final`` counts).
        """
        every = self.every_n_labels
        if tag != DefaultLabelTag.FINAL.value or every <= 0:
            return
        with self._lock:
            self._saves_since_train += 1
            if self._saves_since_train < every:
                return
            self._saves_since_train = 0
        self.trigger(f"{every} new final label(s)")

    def trigger(self, reason: str, models: list[str] | None = None) -> list[str]:
        """Queue one fine-tuning per served model, or of ``models`` (skipped for a model that already has one
        waiting); nothing outside server mode.

        Args:
            reason: why (logged, and in the request's ``trigger``: ``auto: <reason>``).
            models: the models (default: every train task of the app).

        Returns:
            The models queued.
        """
        if not server_mode(self.app):
            return []
        started = []
        for m in app_tasks(self.app, "train") if models is None else models:
            if any(t["request"].get("model") == m for t in train_tasks(("SUBMITTED",))):
                logger.info(f"Auto-train of {m} skipped: a training is already queued")
                continue
            task_id, running = queue_training({"model": m, "max_epochs": self.epochs, "trigger": f"auto: {reason}"})
            self.log.append(
                {
                    "model": m,
                    "reason": reason,
                    "ts": int(time.time()),
                    "task": task_id,
                    "queued_behind_running": running,
                }
            )
            logger.info(f"Auto-train {m}: {reason}")
            started.append(m)
        return started

    def tick(self) -> list[str]:
        """One tick of the interval: queue a fine-tuning of every model whose latest training did not read the
        current final labels. Models with a training queued or running are left alone: the next tick compares
        against that run.

        Returns:
            The models queued.
        """
        current = final_labels(self.app.datastore())
        if not current:
            return []
        busy = {t["request"].get("model") for t in train_tasks(("SUBMITTED", "RUNNING"))}
        trainers = app_tasks(self.app, "train")
        due = [m for m, t in trainers.items() if m not in busy and t.labels_used() != current]
        if not due:
            return []
        return self.trigger(f"schedule every {self.interval_seconds:g} s: final labels changed", due)

    # ------------------------------------------------------------------ server
    def serve(self) -> None:
        """Server start: add ``GET``/``PUT /anatomark/schedule`` to MONAI Label's web app and start the interval
        thread (always, when the app has train tasks: the schedule can be switched on from a viewer)."""
        web = web_app()
        if web is not None:
            add_schedule_routes(web, self.store)
        if app_tasks(self.app, "train"):
            self.start()

    def start(self) -> bool:
        """Start the interval thread (a daemon); returns whether it was started now."""
        if self._thread is not None and self._thread.is_alive():
            return False
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="anatomark-auto-train", daemon=True)
        self._thread.start()
        return True

    def stop(self) -> None:
        """Stop the interval thread (it ends at its next wake-up)."""
        self._stop.set()
        self._changed.set()

    def _loop(self) -> None:
        """Call :meth:`tick` every ``interval_seconds`` while it is > 0; a schedule change
        (``PUT /anatomark/schedule``) restarts the wait with the new interval."""
        last = time.monotonic()
        while not self._stop.is_set():
            interval = self.interval_seconds
            timeout = max(0.0, last + interval - time.monotonic()) if interval > 0 else IDLE_WAKE_SECONDS
            if self._changed.wait(timeout):
                self._changed.clear()
                last = time.monotonic()
                continue
            if self._stop.is_set() or self.interval_seconds <= 0:
                continue
            last = time.monotonic()
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - the scheduler must survive
                logger.exception("auto-train schedule failed")
