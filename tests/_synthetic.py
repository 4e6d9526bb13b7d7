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
