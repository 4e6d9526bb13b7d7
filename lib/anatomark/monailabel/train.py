"""MONAI Label training task: fine-tune a landmark model on the datastore's ``final`` labels.

Runs in MONAI Label's training subprocess (one at a time). Uses :func:`anatomark.training.train`; the validation
split is fixed per image id (a hash), so an image stays in the same split across retrainings however many labels
arrive. The best weights of the run are published atomically to the path the infer task reads, after every
improving epoch; the server's infer task picks them up on its next request (mtime check), without a restart.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from monailabel.interfaces.datastore import Datastore, DefaultLabelTag
from monailabel.interfaces.tasks.train import TrainTask

from anatomark.errors import AnatomarkError
from anatomark.monailabel.infer import PublishedModel, file_version

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


class LandmarkTrainTask(TrainTask):
    """``POST /train/<model>``: fine-tune from the current weights on all images with a ``final`` label.

    Request options: ``max_epochs`` (default from the app's ``train_epochs``), ``val_fraction``, ``lr``,
    ``batch_size``.

    Args:
        handle: the served model (current weights to start from, where to publish).
        work_dir: folder for training runs (``<work_dir>/<model>/``: ``model.pt``, ``last.pt``, ``history.json``).
        epochs: default number of epochs per fine-tuning run.
        val_fraction: share of labelled images held out for validation (fixed per image id).
    """

    def __init__(self, handle: PublishedModel, work_dir: str | Path, epochs: int = 10, val_fraction: float = 0.2):
        super().__init__(f"Fine-tune {handle.name} on the datastore's final landmark labels")
        self.handle = handle
        self.run_dir = Path(work_dir) / handle.name
        self.epochs = int(epochs)
        self.val_fraction = float(val_fraction)

    def config(self) -> dict[str, Any]:
        return {"max_epochs": self.epochs, "val_fraction": self.val_fraction}

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
        for key in ("lr", "batch_size"):
            if key in request:
                recipe["train"][key] = request[key]
        epochs = int(request.get("max_epochs", self.epochs))
        init = self.handle.path()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for stale in ("model.pt", "last.pt"):
            (self.run_dir / stale).unlink(missing_ok=True)
        published: list[str] = []

        def on_epoch(rec: dict[str, Any]) -> None:
            best = self.run_dir / "model.pt"
            if best.is_file() and (not published or os.path.getmtime(best) > float(published[-1].split("@")[1])):
                self.handle.publish(best)
                published.append(f"{rec['epoch']}@{os.path.getmtime(best)}")
                logger.info(f"Published weights of epoch {rec['epoch']} to {self.handle.published_path}")

        logger.info(
            f"Fine-tuning {self.handle.name} (version {version}) on {len(train_items)} images, "
            f"validating on {len(val_items)}, {epochs} epoch(s)"
        )
        res = train(
            recipe,
            train_items,
            self.run_dir,
            init_weights=init,
            epochs=epochs,
            val_items=val_items or None,
            progress=False,
            on_epoch=on_epoch,
            info={"fine_tuned_from": version, "train_images": [it["id"] for it in train_items]},
        )
        best = self.run_dir / "model.pt"  # a cascade assembles its model file after the last stage's last epoch
        if best.is_file() and (not published or os.path.getmtime(best) > float(published[-1].split("@")[1])):
            self.handle.publish(best)
            published.append(f"{epochs}@{os.path.getmtime(best)}")
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
            "published_epochs": [int(p.split("@")[0]) for p in published],
            "total_time": round(time.time() - t0, 2),
            "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        tmp = self.run_dir / "stats.json.tmp"
        tmp.write_text(json.dumps(stats, indent=1))
        tmp.replace(self.run_dir / "stats.json")
        logger.info(f"Training done: {stats}")
        return stats
