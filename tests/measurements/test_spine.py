from __future__ import annotations

import math

import numpy as np
import pytest
from measure_cases import spine_points

from anatomark.errors import AnnotationError
from anatomark.measurements.spine import (
    ANGLE_NAMES,
    cobb_angles_array,
    cobb_measurements,
    smape,
    smape_per_angle,
    sort_corners,
)

# Vertebra tilts (deg). With pure rotations M(i, j) = |t_i - t_j|. Max 14 - (-12) = 26 between T6 (5) and T12 (11).
TILTS = [0, 3, 6, 2, -8, -12, -10, -6, 0, 6, 10, 14, 12, 8, 6, 4, 3]
C_X = [100 + 30 * math.sin(math.pi * i / 16) for i in range(17)]  # one bump: C curve
S_X = [100 + 30 * math.sin(2 * math.pi * i / 16) for i in range(17)]  # two bumps: S curve
# lower-endplate midpoint y of T6 and T12: (100 + 250 + 20) + (100 + 550 + 20) = 1040


def test_c_curve_hand_worked():
    r = cobb_angles_array(spine_points(TILTS, C_X), image_height=None)
    assert r["branch"] == "C"
    # angle 1 = 26 (T6-T12); angle 2 = M(T1, T6) = 12; angle 3 = M(L5, T12) = |3 - 14| = 11
    np.testing.assert_allclose(r["angles"], [26.0, 12.0, 11.0], atol=1e-9)
    assert r["end_vertebrae"][0] == [5, 11]


def test_s_curve_upper_and_lower_branches_and_the_boundary():
    pts = spine_points(TILTS, S_X)
    up = cobb_angles_array(pts, image_height=2000)
    assert up["branch"] == "S-upper"
    # angle 2 = max_{k<=5} |-12 - t_k| = 18 (k = 2, T3); angle 3 = max_{k>=11} |14 - t_k| = 11 (L5)
    np.testing.assert_allclose(up["angles"], [26.0, 18.0, 11.0], atol=1e-9)
    low = cobb_angles_array(pts, image_height=1000)
    assert low["branch"] == "S-lower"
    # angle 2 = 18 reached at k* = 2; angle 3 = max_{k<=2} |t_2 - t_k| = |6 - 0| = 6
    np.testing.assert_allclose(low["angles"], [26.0, 18.0, 6.0], atol=1e-9)
    # on the boundary y_u + y_l == H the spine counts as "lower half" (the test is y_u + y_l < H)
    c = pts.reshape(17, 4, 2)
    h = (c[5, 2, 1] + c[5, 3, 1]) / 2 + (c[11, 2, 1] + c[11, 3, 1]) / 2  # lower-endplate midpoints of T6, T12
    assert h == pytest.approx(1040, abs=2.0)  # 1040 before the tilts move the midpoints
    assert cobb_angles_array(pts, image_height=h)["branch"] == "S-lower"
    assert cobb_angles_array(pts, image_height=h + 1e-6)["branch"] == "S-upper"


def test_s_curve_without_image_height_reports_angles_2_3_not_computable():
    res = {r.name: r for r in cobb_measurements(spine_points(TILTS, S_X))}
    assert res["cobb_PT"].value == pytest.approx(26.0)
    assert res["cobb_PT"].details["end_vertebrae"] == ["T6", "T12"]
    for n in ("cobb_MT", "cobb_TL"):
        assert res[n].value is None and "image height" in res[n].reason


def test_straight_spine_vertical_chord_counts_as_s():
    r = cobb_angles_array(spine_points([0] * 17, [100] * 17), image_height=3000)
    assert r["degenerate_chord"] and r["branch"] == "S-upper"
    np.testing.assert_allclose(r["angles"], [0, 0, 0], atol=1e-9)


def test_missing_and_degenerate_vertebrae():
    pts = spine_points(TILTS, C_X)
    pts[13] = np.nan
    res = cobb_measurements(pts, image_height=2000)
    assert [r.name for r in res] == list(ANGLE_NAMES)
    assert all(r.value is None and "T4_TR" in r.reason for r in res)
    pts = spine_points(TILTS, C_X)
    pts[8:12] = pts[8]  # T3 collapsed to one point
    res = cobb_measurements(pts, image_height=2000)
    assert all(r.value is None and "T3" in r.reason and "coincide" in r.reason for r in res)


def test_sort_corners_restores_order():
    pts = spine_points(TILTS, C_X)
    shuffled = pts.reshape(17, 4, 2)[:, [3, 0, 2, 1]].reshape(68, 2)
    np.testing.assert_allclose(sort_corners(shuffled), pts)
    a = cobb_measurements(shuffled, image_height=2000, resort_corners=True)
    assert a[0].value == pytest.approx(26.0)


def test_smape_hand_worked():
    assert smape([[10, 20, 30]], [[12, 18, 30]]) == pytest.approx(100 * 4 / 120)
    assert smape([[10, 20, 30], [5, 5, 0]], [[10, 20, 30], [5, 5, 10]]) == pytest.approx(100 * (0 + 10 / 30) / 2)
    assert smape([[0, 0, 0]], [[0, 0, 0]]) == 0.0
    np.testing.assert_allclose(smape_per_angle([[10, 20, 30]], [[12, 18, 30]]), [100 * 2 / 22, 100 * 2 / 38, 0])


def test_aasce_labels_reproduce_angles_csv(aasce_dir):
    """Cobb angles from labels/*.jpg.mat reproduce angles.csv for all 481 images within 0.01 deg (0.02 from CSV)."""
    from anatomark.data.aasce import load_aasce

    for source, tol in (("mat", 0.01), ("csv", 0.02)):
        items = load_aasce(aasce_dir, source)
        assert len(items) == 481
        pred = np.array([cobb_angles_array(it["landmarks"], it["size_wh"][1])["angles"] for it in items])
        truth = np.array([it["angles"] for it in items])
        assert np.abs(pred - truth).max() < tol, source
        assert smape(truth, pred) < 0.01


def test_aasce_reader_errors(tmp_path):
    from anatomark.data.aasce import load_aasce, read_aasce_mat

    with pytest.raises(AnnotationError, match="not found"):
        read_aasce_mat(tmp_path / "x.jpg.mat")
    (tmp_path / "bad.mat").write_text("not matlab")
    with pytest.raises(AnnotationError, match="MATLAB"):
        read_aasce_mat(tmp_path / "bad.mat")
    with pytest.raises(AnnotationError, match="not found"):
        load_aasce(tmp_path)
