"""``anatomark calibrate``: a model trained on every image is refused unless its expected-error regression comes
from a model that held its validation images out; then that regression is taken as it is."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anatomark.calibrate import calibrate, trained_without_holdout
from anatomark.data.dataset import LandmarkDataset
from anatomark.model import load_model


@pytest.fixture
def shipped(isbi_dir):
    """A shipped model and 10 ISBI training images (1 of them its validation image at val_fraction 0.1)."""
    model = load_model("isbi2015_unet_seg")
    items = LandmarkDataset(isbi_dir, split="train", annotator="mean", landmark_set=model.landmark_set).items[:10]
    return model, items


def test_trained_without_holdout_names_the_parts():
    info = {"n_val": 15, "local": {"members": [{"path": "a.pt", "n_val": 15}, {"path": "b.pt", "n_val": 0}]}}
    assert trained_without_holdout(info) == ["refiner b.pt"]
    assert trained_without_holdout({"n_val": 0, "stage2": {"n_val": 0}}) == ["model", "stage 2"]
    assert trained_without_holdout({"n_val": 3, "local": {"path": "c.pt", "n_val": 3}}) == []


def test_a_model_trained_on_every_image_takes_its_error_regression_from_another(shipped):
    model, items = shipped
    torch.set_num_threads(1)
    held_out, summary = calibrate(model, items, augments=("original",), progress=False, modes=4)
    assert summary["quality_validation_images"] == 1 and summary["quality_error_points"] == 19
    model.quality = held_out

    refit = load_model(model.path)
    refit.info = {**refit.info, "n_val": 0}
    with pytest.raises(ValueError, match="--errors-from"):
        calibrate(refit, items, progress=False, modes=4)
    q, summary = calibrate(refit, items, progress=False, errors_from=model, modes=4)
    assert torch.equal(q.coef, held_out.coef) and torch.equal(q.resid_var, held_out.resid_var)
    assert summary["quality_errors_from"] and "quality_error_points" not in summary
    np.testing.assert_allclose(q.mean.numpy(), held_out.mean.numpy())  # the shape model is still its own fit

    uncalibrated = load_model(model.path)
    uncalibrated.quality = None
    with pytest.raises(ValueError, match="no quality state"):
        calibrate(refit, items, progress=False, errors_from=uncalibrated, modes=4)
