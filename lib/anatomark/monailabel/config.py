"""MONAI Label TaskConfig for one landmark model: weights, infer task and train task."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from monailabel.interfaces.config import TaskConfig

from anatomark.monailabel.infer import LandmarkInferTask, LandmarkPointsInferTask
from anatomark.monailabel.published import PublishedModel, default_device
from anatomark.monailabel.train import FINE_TUNE_LR, LandmarkTrainTask


class LandmarkTaskConfig(TaskConfig):
    """One served landmark model.

    ``init(name, model_dir, conf, planner, published_dir=..., work_dir=...)``: ``model_dir`` holds the shipped
    ``<name>.pt``; fine-tuned weights are published to ``published_dir/<name>.pt`` and served in preference.
    Conf keys used: ``train_epochs``, ``val_fraction``, ``train_lr`` (fine-tuning learning rate), ``multi_gpu``
    (default of the train request option), ``label_radius_mm``, ``infer_threads``, ``device``.
    """

    def init(self, name: str, model_dir: str, conf: dict[str, str], planner: Any, **kwargs: Any) -> None:
        super().init(name, model_dir, conf, planner, **kwargs)
        published_dir = Path(kwargs["published_dir"])
        self.work_dir = Path(kwargs["work_dir"])
        self.path = [str(Path(model_dir) / f"{name}.pt"), str(published_dir / f"{name}.pt")]
        device = conf.get("device") or default_device()
        self.handle = PublishedModel(name, Path(self.path[0]), Path(self.path[1]), device=device)

    def infer(self) -> LandmarkInferTask:
        return LandmarkInferTask(
            self.handle,
            label_radius_mm=float(self.conf.get("label_radius_mm", 2.0)),
            threads=_threads(self.conf.get("infer_threads", "auto")),
        )

    def points_infer(self) -> LandmarkPointsInferTask:
        """The same model as a ``detection`` task (3D Slicer's stock module: draggable, named landmark boxes)."""
        return LandmarkPointsInferTask(
            self.handle,
            label_radius_mm=float(self.conf.get("label_radius_mm", 2.0)),
            threads=_threads(self.conf.get("infer_threads", "auto")),
        )

    def trainer(self) -> LandmarkTrainTask:
        return LandmarkTrainTask(
            self.handle,
            self.work_dir,
            epochs=int(self.conf.get("train_epochs", 10)),
            val_fraction=float(self.conf.get("val_fraction", 0.2)),
            multi_gpu=str(self.conf.get("multi_gpu", "false")).strip().lower() in ("1", "true", "yes", "on"),
            lr=float(self.conf.get("train_lr", FINE_TUNE_LR)),
        )


def _threads(value: str | int) -> int:
    """``auto`` -> -1 (all cores, half of them while a training runs); a number -> that many; 0 -> torch default."""
    if str(value).lower() == "auto":
        return -1
    try:
        return max(0, int(value))
    except ValueError as e:
        raise ValueError(f"infer_threads must be 'auto' or a number, got {value!r}") from e
