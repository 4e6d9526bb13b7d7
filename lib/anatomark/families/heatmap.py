"""The whole-image heatmap family (``kind: heatmap``): a U-Net, per-landmark spatial-softmax cross-entropy against
Gaussian targets, decoded by argmax + local mean (:class:`anatomark.model.LandmarkModel` is its model).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anatomark.config import LandmarkSet
from anatomark.errors import AnatomarkError
from anatomark.family import TrainRun, register_family
from anatomark.model import LandmarkModel
from anatomark.networks import build_network, load_network
from anatomark.training import (
    HeatmapTrainingSet,
    build_loss,
    cache_and_split,
    evaluate_items,
    train_single_stage,
)


class HeatmapStage:
    """Training pieces of a whole-image heatmap model for :func:`anatomark.training.fit`."""

    def __init__(self, recipe: dict[str, Any], ls: LandmarkSet, items, val_items, progress: bool) -> None:  # noqa: ANN001
        self.recipe, self.ls = recipe, ls
        size_hw = tuple(int(s) for s in recipe["input"]["size_hw"])
        if any(s % 16 for s in size_hw):
            raise AnatomarkError(f"input.size_hw {size_hw} must be divisible by 16 (four 2x poolings)")
        self.train_c, self.val_c, _ = cache_and_split(items, val_items, ls, recipe["train"], progress, size_hw=size_hw)
        self.dataset = HeatmapTrainingSet(self.train_c, recipe, augment=True)

    def build_network(self) -> torch.nn.Module:
        return build_network(self.recipe["network"], out_channels=len(self.ls))

    def loss(self) -> torch.nn.Module:
        return build_loss(self.recipe)

    def set_random_state(self, seed: int) -> None:
        self.dataset.set_random_state(seed)

    def evaluate(self, net: torch.nn.Module) -> np.ndarray:
        return evaluate_items(LandmarkModel(net, self.recipe, self.ls), self.val_c)[0]


class HeatmapFamily:
    """``kind: heatmap``."""

    kind = "heatmap"
    required_sections = ("landmark_set", "network", "input", "train")

    def load(
        self, recipe: dict[str, Any], landmark_set: LandmarkSet, states: dict[str, Any], info: dict[str, Any]
    ) -> LandmarkModel:
        return LandmarkModel(
            load_network(recipe["network"], len(landmark_set), states["network"]), recipe, landmark_set, info
        )

    def train(
        self,
        recipe: dict[str, Any],
        landmark_set: LandmarkSet,
        items: Sequence[dict[str, Any]],
        out_dir: Path,
        run: TrainRun,
    ) -> dict[str, Any]:
        return train_single_stage(
            HeatmapStage,
            lambda fitted, stage, init: LandmarkModel(fitted.network, recipe, landmark_set, fitted.meta),
            recipe,
            landmark_set,
            items,
            out_dir,
            run,
        )


register_family(HeatmapFamily())
