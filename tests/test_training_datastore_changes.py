"""Training survives images that disappear (deleted from the datastore) while it runs: they are skipped with a log line.

Before: ``cache_items`` stat-ed every image and a cascade's stage 2 re-caches at its own spacing, so an image deleted
during stage 1 raised ``FileNotFoundError`` in stage 2 and the stage-1 epochs were lost.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest

from _synthetic import DOTS, make_dot_images, tiny_recipe
from anatomark.errors import AnatomarkError
from anatomark.model import load_model
from anatomark.training import cache_and_split, cache_items, train


def test_cache_items_skips_missing_and_unreadable_images(tmp_path, caplog):
    items = make_dot_images(tmp_path / "img", 5, seed=3)
    os.unlink(items[1]["image"])
    (tmp_path / "img" / "003.png").write_bytes(b"not a png")
    with caplog.at_level(logging.WARNING, logger="anatomark.training"):
        out = cache_items(items, (64, 64), DOTS, progress=False)
    assert [c["id"] for c in out] == ["000.png", "002.png", "004.png"]
    assert [c["source_index"] for c in out] == [0, 2, 4]
    np.testing.assert_allclose(out[2]["landmarks"], items[4]["landmarks"])
    assert "Skipping 001.png" in caplog.text and "Skipping 003.png" in caplog.text
    # the cache of what was readable is reused (same key while the same files are there)
    again = cache_items(items, (64, 64), DOTS, progress=False)
    assert [c["id"] for c in again] == ["000.png", "002.png", "004.png"]


def test_split_keeps_its_images_when_one_disappears(tmp_path):
    items = make_dot_images(tmp_path / "img", 10, seed=4)
    tcfg = {"val_fraction": 0.3, "val_seed": 0}
    _, val_all, _ = cache_and_split(items, None, DOTS, tcfg, progress=False, size_hw=(64, 64))
    gone = next(i for i, it in enumerate(items) if it["id"] not in {c["id"] for c in val_all})
    os.unlink(items[gone]["image"])
    train_c, val_c, val_src = cache_and_split(items, None, DOTS, tcfg, progress=False, size_hw=(64, 64))
    assert [c["id"] for c in val_c] == [c["id"] for c in val_all]  # a missing training image moves nothing
    assert [s["id"] for s in val_src] == [c["id"] for c in val_c]
    assert items[gone]["id"] not in {c["id"] for c in train_c} and len(train_c) == 10 - len(val_c) - 1
    for it in items:
        if it["id"] != items[gone]["id"]:
            os.unlink(it["image"])
    with pytest.raises(AnatomarkError, match="missing or unreadable"):
        cache_and_split(items, None, DOTS, tcfg, progress=False, size_hw=(64, 64))


def test_cascade_finishes_when_images_are_deleted_during_stage_1(tmp_path, caplog):
    """Delete a training and a validation image at the end of stage 1 (``on_epoch``): stage 2 trains and validates
    on the others and the cascade model file is written."""
    items = make_dot_images(tmp_path / "train", 10, seed=5)
    val = make_dot_images(tmp_path / "val", 3, seed=6)
    stage1 = {**tiny_recipe(epochs=1), "name": "dots_stage1"}
    recipe = {
        "name": "dots_cascade",
        "kind": "cascade",
        "landmark_set": DOTS.to_dict(),
        "global": {"recipe": stage1},
        "local": {
            "network": {"name": "heatmap_unet", "spatial_dims": 2, "in_channels": 1, "features": [8, 8, 16, 16, 32, 8]},
            "spacing_mm": 0.5,
            "patch_size": 32,
            "sigma": 2.0,
            "offset_sigma_mm": 2.0,
            "max_offset_mm": 5.0,
            "iterations": 1,
            "decode": {"method": "local_mean", "radius": 3},
        },
        "train": {"epochs": 1, "batch_size": 16, "patches_per_image": 2, "lr": 0.01, "seed": 0},
    }
    calls = []

    def delete_after_stage_1(rec):
        calls.append(rec["epoch"])
        if len(calls) == 1:  # the one epoch of stage 1 is over
            os.unlink(items[2]["image"])
            os.unlink(val[1]["image"])

    with caplog.at_level(logging.WARNING, logger="anatomark.training"):
        res = train(recipe, items, tmp_path / "run", progress=False, val_items=val, on_epoch=delete_after_stage_1)
    assert len(calls) == 2, calls  # stage 1 and stage 2 each ran their epoch
    model = load_model(res["model_path"])
    assert model.recipe["kind"] == "cascade"
    assert model.info["stage1"]["n_train"] == 10 and model.info["stage1"]["n_val"] == 3
    assert model.info["n_train"] == 9 and model.info["n_val"] == 2
    assert f"Skipping {items[2]['id']}" in caplog.text and f"Skipping {val[1]['id']}" in caplog.text
