"""The one training loop learns, checkpoints, resumes and is deterministic."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from anatomark.config import LandmarkSet
from anatomark.data.image_io import load_image
from anatomark.errors import AnatomarkError
from anatomark.metrics import radial_errors
from anatomark.model import load_model
from anatomark.training import split_train_val, train

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


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("dots")
    items = make_dot_images(root / "train", 64, seed=1)
    res = train(tiny_recipe(), items, root / "run", progress=False)
    return root, res


def test_synthetic_training_finds_bright_dots_within_2px(trained):
    root, res = trained
    model = load_model(res["model_path"])
    assert model.landmark_set.names == ["left_dot", "right_dot"]
    test_items = make_dot_images(root / "test", 10, seed=99)
    errs = []
    for it in test_items:
        pred = model.predict(load_image(it["image"], spacing=1.0))
        errs.append(radial_errors(pred.points, it["landmarks"], (1.0, 1.0)))
        assert pred.confidence.shape == (2,) and (0 <= pred.confidence).all() and (pred.confidence <= 1).all()
    errs = np.array(errs)
    assert errs.max() < 2.0, f"max error {errs.max():.2f} px"
    hist = json.loads((root / "run" / "history.json").read_text())
    assert len(hist) == 12 and hist[-1]["loss"] < hist[0]["loss"]
    assert hist[-1]["val_mre_mm"] < 2.0


def test_resume_continues_from_checkpoint(tmp_path):
    items = make_dot_images(tmp_path / "imgs", 16, seed=2)
    r1 = train(tiny_recipe(epochs=2), items, tmp_path / "run", progress=False)
    assert len(r1["history"]) == 2
    r2 = train(tiny_recipe(epochs=3), items, tmp_path / "run", resume=True, progress=False)
    assert [h["epoch"] for h in r2["history"]] == [1, 2, 3]
    assert r2["history"][:2] == r1["history"][:2]


def test_deterministic_with_seed(tmp_path):
    items = make_dot_images(tmp_path / "imgs", 16, seed=3)
    a = train(tiny_recipe(epochs=1), items, tmp_path / "a", progress=False)
    b = train(tiny_recipe(epochs=1), items, tmp_path / "b", progress=False)
    assert a["history"][0]["loss"] == b["history"][0]["loss"]
    assert a["history"][0]["val_mre_mm"] == b["history"][0]["val_mre_mm"]


def test_fixed_validation_split():
    assert split_train_val(150, 0.1, 0) == split_train_val(150, 0.1, 0)
    tr, va = split_train_val(150, 0.1, 0)
    assert len(va) == 15 and not set(tr) & set(va) and len(tr) + len(va) == 150


def test_wrong_landmark_count_is_an_error(tmp_path):
    items = make_dot_images(tmp_path / "imgs", 4, seed=4)
    items[2]["landmarks"] = np.zeros((3, 2))
    with pytest.raises(AnatomarkError, match="3 landmarks but the set 'dots' has 2"):
        train(tiny_recipe(epochs=1), items, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "model.pt").exists()


def test_empty_split_is_an_error(tmp_path):
    with pytest.raises(AnatomarkError, match="empty"):
        train(tiny_recipe(epochs=1), [], tmp_path / "run", progress=False)
