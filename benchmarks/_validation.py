"""The ISBI 2015 validation images of the shipped recipes, for the benchmarks that choose between models.

The recipes' shared split of the 150 training images (``train.val_fraction`` 0.1, ``val_seed`` 0) holds out 15
images; with the mean of both annotators they are what the refiner benchmarks score. No test image is read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class ValidationImages:
    """The held-out images, loaded once.

    Attributes:
        landmark_set: the ISBI 2015 landmark set.
        items: the dataset items (paths, landmarks, spacing).
        images: the loaded X-rays.
        truth: ``(N, K, 2)`` (x, y) mean annotation in px.
        spacing: ``(N, 2)`` mm/px.
    """

    landmark_set: Any
    items: list[dict[str, Any]]
    images: list[Any]
    truth: np.ndarray
    spacing: np.ndarray

    def errors(self, points: np.ndarray) -> np.ndarray:
        """``(N, K)`` radial errors in mm of ``(N, K, 2)`` predicted points."""
        from anatomark.metrics import radial_errors

        return radial_errors(points, self.truth, self.spacing)


def isbi_validation(dataset: str | Path) -> ValidationImages:
    """Load the 15 validation images of ``dataset`` (an ISBI 2015 folder) with the mean annotation."""
    from anatomark.config import load_landmark_set
    from anatomark.data.dataset import LandmarkDataset
    from anatomark.data.image_io import load_image
    from anatomark.training import recipe_split

    ls = load_landmark_set("isbi2015_cephalometric")
    ds = LandmarkDataset(dataset, split="train", annotator="mean", landmark_set=ls.name)
    _, va = recipe_split(len(ds.items), {"val_fraction": 0.1, "val_seed": 0})
    items = [ds.items[i] for i in va]
    images = [load_image(it["image"], spacing=it.get("spacing")) for it in items]
    truth = np.stack([it["landmarks"] for it in items])
    return ValidationImages(ls, items, images, truth, np.stack([im.spacing for im in images]))
