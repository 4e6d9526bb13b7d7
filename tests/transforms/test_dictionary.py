"""The dictionary transforms drive training: one random state through a MONAI ``Compose`` gives the draws of the
array transforms called in the same order, and the training set's samples are exactly the hand-written chain it
replaced (affine, gamma drawn from the affine's state, points pushed out marked missing)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from monai.transforms import Compose

from anatomark.model import to_model_input
from anatomark.training import HeatmapTrainingSet
from anatomark.transforms import (
    MarkPointsOutside,
    MarkPointsOutsided,
    RandAffineWithPoints,
    RandAffineWithPointsd,
    RandIntensityGamma,
    RandIntensityGammad,
)
from anatomark.transforms import functional as Fn

HW = (48, 40)


def _item(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    img = rng.uniform(0, 1, HW).astype(np.float32)
    pts = np.array([[3.0, 4.0], [20.0, 24.0], [38.0, 46.0]])  # the last one near the corner: often pushed out
    return {"image": img, "points": pts}


def _reference(item: dict, seed: int, prob: float, rotate: float, scale, shift: float, gamma) -> tuple:
    """The training augmentation as it was written by hand before the dictionary transforms drove it."""
    affine = RandAffineWithPoints(prob=prob, rotate_deg=rotate, scale=scale, translate_px=shift)
    affine.set_random_state(seed)
    img, pts = affine(item["image"], item["points"])
    g = math.exp(affine.R.uniform(math.log(gamma[0]), math.log(gamma[1])))
    img = np.clip(img, 0.0, 1.0) ** g
    return img, MarkPointsOutside(HW)(pts)


@pytest.mark.parametrize("prob", [1.0, 0.5])
def test_a_shared_state_reproduces_the_hand_written_chain(prob):
    settings = {"prob": prob, "rotate": 15.0, "scale": (0.8, 1.2), "shift": 6.0, "gamma": (0.7, 1.4)}
    pipe = Compose(
        [
            RandAffineWithPointsd("image", "points", prob, settings["rotate"], settings["scale"], settings["shift"]),
            RandIntensityGammad("image", settings["gamma"]),
            MarkPointsOutsided("points", HW),
        ]
    )
    for seed in range(6):
        state = np.random.RandomState(seed)
        for t in pipe.transforms[:2]:
            t.set_random_state(state=state)
        got = pipe(_item(seed))
        img, pts = _reference(_item(seed), seed, **settings)
        np.testing.assert_array_equal(got["image"], img)
        np.testing.assert_array_equal(got["points"], pts)


def test_the_training_set_is_that_pipeline():
    recipe = {
        "input": {"size_hw": list(HW)},
        "target": {"sigma": 1.5},
        "augment": {
            "prob": 1.0,
            "rotate_deg": 15.0,
            "scale": [0.8, 1.2],
            "translate_px": 6.0,
            "intensity_gamma": [0.7, 1.4],
        },
    }
    it = _item(3)
    ds = HeatmapTrainingSet([{"scaled": it["image"], "points": it["points"]}], recipe)
    assert isinstance(ds.transform, Compose) and len(ds.transform.transforms) == 3
    ds.set_random_state(4)
    a = [ds[0] for _ in range(3)]
    ds.set_random_state(4)
    b = [ds[0] for _ in range(3)]
    ds.set_random_state(5)
    c = ds[0]
    assert all(np.array_equal(x[0], y[0]) and np.array_equal(x[1], y[1]) for x, y in zip(a, b))  # seeded
    assert not np.array_equal(a[0][0], c[0]) and not np.array_equal(a[0][0], a[1][0])  # and random
    ref_img, ref_pts = _reference(it, 4, 1.0, 15.0, (0.8, 1.2), 6.0, (0.7, 1.4))
    np.testing.assert_array_equal(a[0][0].numpy(), to_model_input(ref_img)[0].numpy())  # z-scored like training
    np.testing.assert_array_equal(a[0][1].numpy(), Fn.points_to_heatmaps(ref_pts, HW, 1.5))
    # without augmentation: the cached image itself, and only the pushed-out points marked
    plain = HeatmapTrainingSet([{"scaled": it["image"], "points": it["points"]}], recipe, augment=False)
    assert len(plain.transform.transforms) == 1
    np.testing.assert_array_equal(plain[0][0].numpy(), to_model_input(it["image"])[0].numpy())


def test_gamma_and_outside_marking():
    t = RandIntensityGamma((0.5, 2.0))
    t.set_random_state(0)
    img = np.linspace(-0.2, 1.2, 50, dtype=np.float32).reshape(5, 10)
    values = []
    for _ in range(20):
        out = t(img)
        values.append(t.value)
        assert out.min() >= 0.0 and out.max() <= 1.0
    assert 0.5 <= min(values) < max(values) <= 2.0
    with pytest.raises(ValueError, match="gamma must be a range"):
        RandIntensityGamma((1.2, 0.8))
    pts = MarkPointsOutside((10, 20))(np.array([[0.0, 0.0], [19.0, 9.0], [19.5, 3.0], [2.0, -0.1]]))
    assert np.isfinite(pts[:2]).all() and np.isnan(pts[2:]).all()
