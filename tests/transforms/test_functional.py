"""Points survive every encode/decode and spatial step."""

from __future__ import annotations

import numpy as np
import pytest

from anatomark.transforms import (
    HeatmapToPoints,
    HeatmapToPointsd,
    LabelMapToPoints,
    MaskToPoints,
    PointsToHeatmap,
    PointsToHeatmapd,
    PointsToLabelMap,
    PointsToMask,
    RandAffineWithPoints,
    RandAffineWithPointsd,
    ResizeWithPoints,
    ResizeWithPointsd,
)
from anatomark.transforms import functional as Fn


def _points(rng, k=7, hw=(96, 80), margin=12):
    return np.stack([rng.uniform(margin, hw[1] - margin, k), rng.uniform(margin, hw[0] - margin, k)], axis=1)


@pytest.mark.parametrize("sigma", [1.5, 2.0, 3.0, 5.0])
def test_heatmap_round_trip_subpixel(rng, sigma):
    pts = _points(rng)
    hm = PointsToHeatmap((96, 80), sigma)(pts)
    assert hm.shape == (7, 96, 80) and np.isclose(hm.max(), 1.0, atol=0.15)
    dec = HeatmapToPoints("local_mean", radius=int(3 * sigma))(hm)
    assert np.abs(dec - pts).max() < 0.5
    # sub-pixel is better than the integer argmax on average
    arg = HeatmapToPoints("argmax")(hm)
    assert np.abs(arg - pts).max() <= 0.5 + 1e-9
    assert np.abs(dec - pts).mean() < np.abs(arg - pts).mean()


def test_missing_points_stay_missing(rng):
    pts = _points(rng, 3)
    pts[1] = np.nan
    hm = Fn.points_to_heatmaps(pts, (96, 80), 2.0)
    assert hm[1].max() == 0
    masks = Fn.points_to_masks(pts, (96, 80), 3)
    assert masks[1].sum() == 0
    dec, n = Fn.masks_to_points(masks)
    assert np.isnan(dec[1]).all() and n[1] == 0
    assert np.abs(dec[[0, 2]] - pts[[0, 2]]).max() < 0.5 + 1e-9


@pytest.mark.parametrize("shape", ["disk", "square"])
def test_mask_centroid_round_trip(rng, shape):
    pts = np.round(_points(rng))
    masks = PointsToMask((96, 80), radius=4, shape=shape)(pts)
    assert masks.dtype == np.uint8
    assert np.abs(MaskToPoints()(masks) - pts).max() < 1e-9
    if shape == "square":
        assert masks[0].sum() == 81


def test_mask_to_points_counts_extra_regions():
    m = np.zeros((1, 40, 40), np.uint8)
    m[0, 5:10, 5:10] = 1
    m[0, 20:30, 20:30] = 1
    pts, n = Fn.masks_to_points(m)
    assert n[0] == 2
    assert np.allclose(pts[0], (24.5, 24.5))  # the largest region wins


def test_mask_to_points_peak_region_and_weighted_centroid():
    prob = np.zeros((1, 40, 40))
    prob[0, 20:30, 20:30] = 0.6  # a large blob
    prob[0, 5:8, 5:8] = 0.7  # a small blob holding the maximum
    prob[0, 6, 7] = 0.99
    pts, n = Fn.masks_to_points(prob, region="peak")
    assert n[0] == 2 and np.allclose(pts[0], (6.0, 6.0))  # the other blob does not move the point
    w, _ = Fn.masks_to_points(prob, region="peak", weighted=True)
    assert w[0, 0] > 6.0 and abs(w[0, 1] - 6.0) < 1e-9  # pulled towards the maximum at x=7
    with pytest.raises(ValueError, match="region"):
        Fn.masks_to_points(prob, region="biggest")


def test_labelmap_round_trip(rng):
    pts = np.round(_points(rng, 5)) + 0.0
    pts[3] = np.nan
    lm = PointsToLabelMap((96, 80), radius=2)(pts)
    assert set(np.unique(lm)) == {0, 1, 2, 3, 5}
    back = LabelMapToPoints(5)(lm[None])
    assert np.isnan(back[3]).all()
    ok = ~np.isnan(pts[:, 0])
    assert np.abs(back[ok] - pts[ok]).max() < 1e-9


def test_resize_moves_points_with_the_image():
    img = np.zeros((1, 200, 160), np.float32)
    pts = np.array([[40.0, 50.0], [120.0, 170.0]])
    for x, y in pts.astype(int):
        img[0, y - 2 : y + 3, x - 2 : x + 3] = 1.0
    out, moved = ResizeWithPoints((100, 80))(img, pts)
    assert out.shape == (1, 100, 80)
    found = Fn.heatmaps_to_points(np.stack([_window(out[0], p) for p in moved]), "local_mean", 3)[0]
    assert np.abs(found - moved).max() < 0.5
    # and back to the original grid exactly
    assert np.allclose(Fn.resize_points(moved, (100, 80), (200, 160)), pts)
    d = ResizeWithPointsd("image", "points", (100, 80))({"image": img, "points": pts})
    assert np.allclose(d["points"], moved)


def _window(img, p, r=4):
    m = np.zeros_like(img)
    x, y = int(round(p[0])), int(round(p[1]))
    m[y - r : y + r + 1, x - r : x + r + 1] = img[y - r : y + r + 1, x - r : x + r + 1]
    return m


def test_random_affine_moves_points_with_the_image(rng):
    hw = (120, 100)
    pts = _points(rng, 5, hw, margin=30)
    img = Fn.points_to_heatmaps(pts, hw, 2.0)  # each channel has its point as a blob
    t = RandAffineWithPoints(prob=1.0, rotate_deg=20, scale=(0.8, 1.2), translate_px=8)
    t.set_random_state(3)
    for _ in range(5):
        out, moved = t(img, pts)
        found = HeatmapToPoints("local_mean", 6)(out)
        assert np.abs(found - moved).max() < 0.5
        assert np.abs(moved - pts).max() > 0.5  # it actually moved


def test_dictionary_affine_shares_one_draw(rng):
    hw = (64, 64)
    pts = _points(rng, 3, hw, margin=20)
    hm = Fn.points_to_heatmaps(pts, hw, 2.0)
    d = RandAffineWithPointsd(["image", "image2"], "points", prob=1.0, rotate_deg=30).set_random_state(1)(
        {"image": hm, "image2": hm.copy(), "points": pts}
    )
    assert np.allclose(d["image"], d["image2"])
    d = PointsToHeatmapd("points", hw, 2.0, output_keys="target")(d)
    d = HeatmapToPointsd("image", "local_mean", 6, output_keys="decoded")(d)
    assert np.abs(d["decoded"] - d["points"]).max() < 0.5
    assert d["target"].shape == (3, 64, 64)


def test_affine_matrix_direction():
    m = Fn.affine_matrix((0.0, 0.0), rotate_deg=90)
    # +90 deg turns the x axis onto +y (clockwise on screen, y down)
    assert np.allclose(Fn.transform_points(np.array([[1.0, 0.0]]), m), [[0.0, 1.0]], atol=1e-12)


def test_unknown_decoder_is_an_error():
    with pytest.raises(ValueError, match="local_mean"):
        Fn.heatmaps_to_points(np.zeros((1, 8, 8)), method="soft")


def test_patch_sampling_carries_points(rng):
    hw = (120, 100)
    pts = _points(rng, 4, hw, margin=30)
    img = Fn.points_to_heatmaps(pts, hw, 2.0).sum(0)
    for rot, scale in ((0.0, 1.0), (17.0, 0.5), (-8.0, 1.5)):
        m = Fn.patch_matrix(pts[0], 33, rotate_deg=rot, scale=scale)
        patch = Fn.sample_patch(img, m, 33)
        inside = Fn.transform_points(pts, np.linalg.inv(m))
        assert np.allclose(inside[0], (16.0, 16.0))  # the centre lands on the patch centre
        hm = np.zeros((1, 33, 33), np.float32)
        hm[0, 10:23, 10:23] = patch[10:23, 10:23]
        found = Fn.heatmaps_to_points(hm, "local_mean", 5)[0][0]
        assert np.abs(found - inside[0]).max() < 0.5 * max(1.0, 1 / scale)


def test_letterbox_pads_other_aspect_ratios_and_maps_points_back():
    from anatomark.transforms.functional import letterbox_frame, letterbox_image, letterbox_points_back

    assert letterbox_frame((2400, 1935), (320, 256)) == (0, 0, 2400, 1935)  # within 5 %: stretched as in training
    top, left, ph, pw = letterbox_frame((1200, 1935), (320, 256))  # a lower half: padded above and below
    assert left == 0 and pw == 1935 and ph == round(1935 * 320 / 256) and top == (ph - 1200) // 2
    img = np.zeros((100, 300), np.float32)
    img[40, 250] = 1.0
    out, frame = letterbox_image(img, (64, 64))
    assert out.shape == (64, 64) and frame == (100, 0, 300, 300)
    y, x = np.unravel_index(int(out.argmax()), out.shape)
    back = letterbox_points_back(np.array([[x, y]], float), frame, (64, 64))[0]
    assert abs(back[0] - 250) < 300 / 64 and abs(back[1] - 40) < 300 / 64
    above = letterbox_points_back(np.array([[32.0, 5.0]]), frame, (64, 64))[0]
    assert above[1] < 0  # the padding maps outside the image


def test_window_mass_sums_the_window_around_a_given_point():
    maps = np.zeros((2, 10, 10), np.float32)
    maps[0, 2, 3], maps[0, 8, 8] = 0.25, 0.75  # (y, x)
    maps[1, 0, 0] = 1.0
    pts = np.array([[3.4, 2.2], [np.nan, np.nan]])  # (x, y): rounds to (3, 2); the second point is missing
    np.testing.assert_allclose(Fn.window_mass(maps, pts, 1), [0.25, 0.0])
    off = np.array([[-5.0, 2.0], [3.0, 20.0]])  # windows wholly off the map are empty (not wrapped around)
    np.testing.assert_allclose(Fn.window_mass(maps, off, 1), [0.0, 0.0])
    # at the argmax it is heatmaps_to_points' mass
    _, _, mass = Fn.heatmaps_to_points(maps, "local_mean", 1)
    np.testing.assert_allclose(Fn.window_mass(maps, np.array([[8.0, 8.0], [0.0, 0.0]]), 1), mass)
