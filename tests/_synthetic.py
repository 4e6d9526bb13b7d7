"""Synthetic images shared by tests: noisy images with two bright dots (left half, right half)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from anatomark.config import LandmarkSet

DOTS = LandmarkSet(name="dots", names=["left_dot", "right_dot"], default_spacing_mm=(1.0, 1.0))


def make_dot_images(folder, n, seed, size=64):
    """Noisy images with one bright 3x3 dot in the left half and one in the right half."""
    rng = np.random.default_rng(seed)
    items = []
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = rng.normal(60, 12, (size, size))
        pts = np.array(
            [
                [rng.integers(6, size // 2 - 6), rng.integers(6, size - 6)],
                [rng.integers(size // 2 + 6, size - 6), rng.integers(6, size - 6)],
            ],
            dtype=float,
        )
        for x, y in pts.astype(int):
            img[y - 1 : y + 2, x - 1 : x + 2] = 230
        path = folder / f"{i:03d}.png"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path)
        items.append({"image": str(path), "landmarks": pts, "spacing": (1.0, 1.0), "id": path.name})
    return items


def tiny_recipe(epochs=12):
    return {
        "name": "dots_test",
        "landmark_set": DOTS.to_dict(),
        "network": {"name": "heatmap_unet", "spatial_dims": 2, "in_channels": 1, "features": [8, 8, 16, 16, 32, 8]},
        "input": {"size_hw": [64, 64]},
        "target": {"sigma": 1.5},
        "decode": {"method": "local_mean", "radius": 2},
        "augment": {"rotate_deg": 5, "translate_px": 3, "prob": 0.5},
        "train": {"epochs": epochs, "batch_size": 8, "lr": 0.01, "val_fraction": 0.1, "seed": 0},
    }


# ---- tiny recipes of the zoo families (tests/families/test_zoo.py, tests/monailabel/test_model_selection.py)
NETS = {
    "unet_seg": {"name": "unet_seg", "features": [8, 16, 16, 32, 32], "dropout": 0.0},
    "fpn_seg": {"name": "fpn_seg", "features": [8, 16, 16, 32], "dropout": 0.0},
    "appearance_context": {
        "name": "appearance_context",
        "features": [8, 16, 16, 32],
        "context_features": 16,
        "context_downscale": 4,
    },
    "seg_regression": {
        "name": "seg_regression",
        "unet_features": [8, 16, 16, 32],
        "vgg_features": [8, 16, 16, 32],
        "fc_features": 64,
        "dropout": 0.0,
    },
    "farnet": {
        "name": "farnet",
        "init_features": 8,
        "growth_rate": 8,
        "block_config": [2, 2, 2, 2],
        "msfa_channels": [16, 8, 8, 8],
        "refine_channels": [8, 8],
    },
}
TARGETS = {
    "unet_seg": {"radius": 3, "shape": "square"},
    "fpn_seg": {"radius": 3, "shape": "disk"},
    "appearance_context": {"sigma": 1.5},
    "seg_regression": {"radius": 3},
    "farnet": {"sigma": 1.5},
}
LOSS = {
    "unet_seg": {"name": "dice"},
    "fpn_seg": {"name": "dice"},
    "appearance_context": {"name": "heatmap_mse"},
    "seg_regression": {"name": "seg_regression", "alpha": 0.2},
    "farnet": {"name": "ewc", "alpha": 40.0},
}
LR = {"seg_regression": 0.003}
EPOCHS = {"farnet": 90}  # 60 epochs left one of 64 dots on the wrong side


def zoo_recipe(kind: str, epochs: int = 60, val_fraction: float = 0.0) -> dict:
    return {
        "name": f"dots_{kind}",
        "kind": kind,
        "landmark_set": DOTS.to_dict(),
        "network": {"spatial_dims": 2, **NETS[kind]},
        "input": {"size_hw": [64, 64]},
        "target": dict(TARGETS[kind]),
        "loss": dict(LOSS[kind]),
        "decode": {"method": "local_mean", "radius": 2},
        "train": {"epochs": epochs, "batch_size": 8, "lr": LR.get(kind, 0.01), "val_fraction": val_fraction, "seed": 0},
    }


def tiny_cascade_recipe(stage1_path: str, epochs: int = 2) -> dict:
    """A cascade of a trained dots heatmap model (``global.weights``) and a tiny refiner at 0.5 px spacing."""
    return {
        "name": "dots_cascade",
        "kind": "cascade",
        "landmark_set": DOTS.to_dict(),
        "global": {"weights": stage1_path},
        "local": {
            "network": {"name": "heatmap_unet", "spatial_dims": 2, "in_channels": 1, "features": [8, 8, 16, 16, 32, 8]},
            "spacing_mm": 0.5,
            "patch_size": 32,
            "iterations": 1,
            "decode": {"method": "local_mean", "radius": 3},
        },
        "train": {
            "epochs": epochs,
            "batch_size": 16,
            "patches_per_image": 4,
            "lr": 0.01,
            "val_fraction": 0.0,
            "seed": 0,
        },
    }
