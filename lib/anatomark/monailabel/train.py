"""MONAI Label training task: fine-tune a landmark model on the datastore's ``final`` labels.

Runs in MONAI Label's training subprocess (one at a time). Uses :func:`anatomark.training.train`; the validation
split is fixed per image id (a hash), so an image stays in the same split across retrainings however many labels
arrive. The best weights of the run are published atomically to the path the infer task reads, after every
improving epoch; the server's infer task picks them up on its next request (mtime check), without a restart.

Multi-GPU: the same request options as MONAI Label's ``BasicTrainTask`` (``multi_gpu``, ``gpus``) train with
DistributedDataParallel in one process per GPU (:mod:`anatomark.distributed`); only rank 0 validates and publishes.
Without GPUs, ``cpu_processes`` >= 2 (or ``ANATOMARK_DDP_CPU_PROCESSES``) runs that path in CPU processes (gloo).

Every run records the ``final`` labels it read (``labels_used.json``: image id -> label timestamp), so the app's
scheduled retraining (``auto_train_interval``) can tell whether labels arrived since the last training.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
from monailabel.interfaces.datastore import Datastore, DefaultLabelTag
from monailabel.interfaces.tasks.train import TrainTask

from anatomark import distributed
from anatomark.errors import AnatomarkError
from anatomark.monailabel.published import PublishedModel, file_version
from anatomark.paths import atomic_write

logger = logging.getLogger(__name__)


def in_validation(image_id: str, val_fraction: float) -> bool:
    """Fixed split: an image is a validation image when the hash of its id falls below ``val_fraction``."""
    h = int(hashlib.sha1(image_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return h < val_fraction


def collect_items(datastore: Datastore, landmark_set_names: list[str]) -> list[dict[str, Any]]:
    """Training items ``{"image", "landmarks" (K, 2) NaN = missing, "spacing", "id"}`` from ``final`` labels."""
    items = []
    for image_id in sorted(datastore.get_labeled_images()):
        try:
            got = datastore.label_points(image_id, DefaultLabelTag.FINAL.value)  # type: ignore[attr-defined]
        except AnatomarkError as e:
            logger.warning(f"Skipping {image_id}: {e}")
            continue
        if got is None:
            continue
        pts, spacing = got
        if pts.shape != (len(landmark_set_names), 2) or np.isnan(pts).all():
            continue
        items.append({"image": datastore.get_image_uri(image_id), "landmarks": pts, "spacing": spacing, "id": image_id})
    return items


def final_labels(datastore: Datastore) -> dict[str, float]:
    """Image id -> timestamp of its ``final`` label (changes when a label is saved again)."""
    tag = DefaultLabelTag.FINAL.value
    return {i: float(datastore.get_label_info(i, tag).get("ts", 0)) for i in sorted(datastore.get_labeled_images())}


#: Default learning rate of a server fine-tuning. The recipes' rates (1e-3 .. 2e-3) are for training from scratch; with
#: a fresh AdamW state every parameter moves by about the learning rate in the first step. Fine-tuning the shipped
#: cascade on two ISBI images (one more for validation), MRE on three others (benchmarks/fine_tune_lr.py): 1.55 mm
#: shipped; 1 epoch at 2e-3 -> 30.1 mm, 3e-4 -> 1.52, 1e-4 -> 1.51; 3 epochs at 2e-3 -> 15.3, 3e-4 -> 1.55, 1e-4 -> 1.52.
FINE_TUNE_LR = 1e-4


class PublishBest:
    """``on_epoch`` callback: publish ``<run_dir>/model.pt`` atomically to ``published_path`` whenever it changed.

    Picklable (paths only), so it also runs inside rank 0 of a multi-process training.
    """

    def __init__(self, run_dir: Path, published_path: Path) -> None:
        self.run_dir, self.published_path = Path(run_dir), Path(published_path)
        self.published: list[tuple[int, float]] = []  # (epoch, mtime of the model file published)

    def __call__(self, rec: dict[str, Any]) -> None:
        best = self.run_dir / "model.pt"
        if best.is_file() and (not self.published or os.path.getmtime(best) > self.published[-1][1]):
            with atomic_write(self.published_path) as tmp:
                shutil.copyfile(best, tmp)
            self.published.append((int(rec["epoch"]), os.path.getmtime(best)))
            logger.info(f"Published weights of epoch {rec['epoch']} to {self.published_path}")


class LandmarkTrainTask(TrainTask):
    """``POST /train/<model>``: fine-tune from the current weights on all images with a ``final`` label.

    Request options: ``max_epochs`` (default from the app's ``train_epochs``), ``val_fraction``, ``lr`` (default
    from the app's ``train_lr``, :data:`FINE_TUNE_LR`), ``batch_size``; ``multi_gpu`` (default from the app's ``multi_gpu``, false) and ``gpus`` (``all`` or
    ``"0,1"``) as in MONAI Label; ``cpu_processes`` (CPU stand-in for several GPUs, see :mod:`anatomark.distributed`).

    Args:
        handle: the served model (current weights to start from, where to publish).
        work_dir: folder for training runs (``<work_dir>/<model>/``: ``model.pt``, ``last.pt``, ``history.json``).
        epochs: default number of epochs per fine-tuning run.
        val_fraction: share of labelled images held out for validation (fixed per image id).
    """

    def __init__(
        self,
        handle: PublishedModel,
        work_dir: str | Path,
        epochs: int = 10,
        val_fraction: float = 0.2,
        multi_gpu: bool = False,
        lr: float = FINE_TUNE_LR,
    ):
        super().__init__(f"Fine-tune {handle.name} on the datastore's final landmark labels")
        self.handle = handle
        self.run_dir = Path(work_dir) / handle.name
        self.epochs = int(epochs)
        self.val_fraction = float(val_fraction)
        self.multi_gpu = bool(multi_gpu)
        self.lr = float(lr)

    def config(self) -> dict[str, Any]:
        return {
            "max_epochs": self.epochs,
            "val_fraction": self.val_fraction,
            "lr": self.lr,
            "multi_gpu": self.multi_gpu,
            "gpus": "all",
        }

    def labels_used(self) -> dict[str, float] | None:
        """The ``final`` labels (id -> timestamp) the latest training of this model read; ``None`` if none ran."""
        p = self.run_dir / "labels_used.json"
        try:
            return {k: float(v) for k, v in json.loads(p.read_text())["labels"].items()} if p.is_file() else None
        except (OSError, ValueError, KeyError, AttributeError):
            return None

    def stats(self) -> dict[str, Any]:
        p = self.run_dir / "stats.json"
        try:
            return json.loads(p.read_text()) if p.is_file() else {}
        except (OSError, json.JSONDecodeError):
            return {}

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any]:
        from anatomark.training import train

        t0 = time.time()
        model, version = self.handle.get()
        names = list(model.landmark_set.names)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with atomic_write(self.run_dir / "labels_used.json") as tmp:  # before anything can fail: no retry loop
            tmp.write_text(json.dumps({"labels": final_labels(datastore), "started": time.time()}))
        items = collect_items(datastore, names)
        if not items:
            raise AnatomarkError("No image has a 'final' landmark label yet; save labels before training")
        val_fraction = float(request.get("val_fraction", self.val_fraction))
        train_items = [it for it in items if not in_validation(it["id"], val_fraction)]
        val_items = [it for it in items if in_validation(it["id"], val_fraction)]
        if not train_items:  # every labelled image hashed into validation: train on them rather than on nothing
            train_items, val_items = val_items, []
        recipe = json.loads(json.dumps(model.recipe))
        recipe["landmark_set"] = model.landmark_set.to_dict()  # the set travels with the model, not only its name
        recipe["train"]["val_fraction"] = 0.0
        recipe["train"]["lr"] = float(request.get("lr", self.lr))  # fine-tuning, not the recipe's from-scratch rate
        if "batch_size" in request:
            recipe["train"]["batch_size"] = request["batch_size"]
        epochs = int(request.get("max_epochs", self.epochs))
        init = self.handle.path()
        for stale in ("model.pt", "last.pt"):
            (self.run_dir / stale).unlink(missing_ok=True)
        publisher = PublishBest(self.run_dir, self.handle.published_path)
        plan = distributed.plan(
            request.get("multi_gpu", self.multi_gpu), request.get("gpus", "all"), request.get("cpu_processes")
        )
        logger.info(
            f"Fine-tuning {self.handle.name} (version {version}) on {len(train_items)} images, "
            f"validating on {len(val_items)}, {epochs} epoch(s), "
            + (f"{plan.world_size} processes ({plan.backend}: {', '.join(plan.devices)})" if plan else "one process")
        )
        args = (recipe, train_items, self.run_dir)
        kwargs: dict[str, Any] = {
            "init_weights": init,
            "epochs": epochs,
            "val_items": val_items or None,
            "progress": False,
            "on_epoch": publisher,
            "info": {"fine_tuned_from": version, "train_images": [it["id"] for it in train_items]},
        }
        res = distributed.train_distributed(plan, *args, **kwargs) if plan else train(*args, **kwargs)
        publisher({"epoch": epochs})  # a cascade assembles its model file after the last stage's last epoch
        new_version = file_version(self.handle.published_path) if self.handle.published_path.is_file() else version
        stats = {
            "model": self.handle.name,
            "started_from_version": version,
            "model_version": new_version,
            "epochs": epochs,
            "n_train": len(train_items),
            "n_val": len(val_items),
            "val_images": [it["id"] for it in val_items],
            "best_val_mre_mm": res.get("best_val_mre_mm"),
            "published_epochs": [e for e, _ in publisher.published],
            "processes": plan.world_size if plan else 1,
            "backend": plan.backend if plan else None,
            "total_time": round(time.time() - t0, 2),
            "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        tmp = self.run_dir / "stats.json.tmp"
        tmp.write_text(json.dumps(stats, indent=1))
        tmp.replace(self.run_dir / "stats.json")
        logger.info(f"Training done: {stats}")
        return stats
