"""The eight flips and quarter turns: arrays and points move together, and each transform is undone exactly."""

from __future__ import annotations

import numpy as np
import pytest

from anatomark.data.image_io import XrayImage
from anatomark.orientation import DESCRIPTIONS, IDENTITY, ORIENTATIONS


@pytest.mark.parametrize("name", list(ORIENTATIONS))
def test_points_follow_the_array(name):
    o = ORIENTATIONS[name]
    h, w = 5, 7
    pts = np.array([[0.0, 0.0], [6.0, 1.0], [2.0, 4.0], [3.0, 2.0]])  # (x, y)
    for x, y in pts.astype(int):
        a = np.zeros((h, w), np.float32)
        a[y, x] = 1.0
        t = o.apply_array(a)
        assert t.shape == ((w, h) if o.swaps_axes else (h, w))
        ty, tx = np.unravel_index(int(t.argmax()), t.shape)
        np.testing.assert_allclose(o.points_forward([[x, y]], (w, h))[0], [tx, ty], atol=1e-9)
    fwd = o.points_forward(pts, (w, h))
    np.testing.assert_allclose(o.points_back(fwd, (w, h)), pts, atol=1e-9)


def test_image_spacing_swaps_with_the_axes_and_nan_stays_missing():
    img = XrayImage(np.zeros((4, 6), np.float32), spacing=(0.1, 0.2), spacing_source="file")
    assert ORIENTATIONS["rot90"].apply_image(img).spacing == (0.2, 0.1)
    assert ORIENTATIONS["flip_x"].apply_image(img).spacing == (0.1, 0.2)
    assert ORIENTATIONS["flip_x"].apply_image(img).meta["orientation"] == "flip_x"
    back = ORIENTATIONS["rot270"].points_back(np.array([[np.nan, np.nan], [1.0, 2.0]]), (6, 4))
    assert np.isnan(back[0]).all() and np.isfinite(back[1]).all()


def test_eight_distinct_transforms_with_descriptions():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    seen = {o.apply_array(a).tobytes() + bytes(o.apply_array(a).shape) for o in ORIENTATIONS.values()}
    assert len(seen) == 8
    assert set(DESCRIPTIONS) == set(ORIENTATIONS)
    assert IDENTITY.apply_array(a).tobytes() == a.tobytes()
