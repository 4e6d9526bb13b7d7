"""Metrics against hand-worked numbers."""

from __future__ import annotations

import numpy as np
import pytest

from anatomark.metrics import format_summary, radial_errors, sdr, summarize


def test_radial_error_hand_worked():
    # 3-4-5 triangle in pixels at 0.1 mm/px -> 0.5 mm; anisotropic spacing handled per axis
    pred = np.array([[[3.0, 4.0], [10.0, 0.0]]])
    gt = np.array([[[0.0, 0.0], [0.0, 0.0]]])
    e = radial_errors(pred, gt, (0.1, 0.1))
    assert e == pytest.approx(np.array([[0.5, 1.0]]))
    e2 = radial_errors(pred, gt, (0.2, 0.1))
    assert e2[0, 0] == pytest.approx(np.hypot(0.6, 0.4))
    # per-image spacing
    e3 = radial_errors(np.concatenate([pred, pred]), np.concatenate([gt, gt]), np.array([[0.1, 0.1], [1.0, 1.0]]))
    assert e3[1] == pytest.approx([5.0, 10.0])


def test_missing_truth_excluded_missing_prediction_fails():
    pred = np.array([[1.0, 1.0], [np.nan, np.nan], [0.0, 0.0]])
    gt = np.array([[1.0, 1.0], [5.0, 5.0], [np.nan, np.nan]])
    e = radial_errors(pred, gt, (1.0, 1.0))
    assert e[0] == 0 and np.isinf(e[1]) and np.isnan(e[2])
    s = summarize(e[None], ["a", "b", "c"])
    assert s["n_points"] == 2 and s["n_failed"] == 1
    assert s["sdr"]["2.0"] == pytest.approx(50.0)  # the failed point counts as a miss


def test_sdr_and_mre_hand_worked():
    errors = np.array([[1.0, 2.0, 2.5, 3.0], [4.0, 5.0, 0.5, 2.4]])
    r = sdr(errors, (2.0, 2.5, 3.0, 4.0))
    # <=2: 1.0, 2.0, 0.5 -> 3/8; <=2.5: +2.5, 2.4 -> 5/8; <=3: +3.0 -> 6/8; <=4: +4.0 -> 7/8
    assert r == {"2.0": 37.5, "2.5": 62.5, "3.0": 75.0, "4.0": 87.5}
    s = summarize(errors, ["p", "q", "r", "s"])
    assert s["mre_mm"] == pytest.approx(errors.mean())
    assert s["sd_mm"] == pytest.approx(errors.std())
    assert s["per_landmark"][1]["mre_mm"] == pytest.approx(3.5)
    assert s["per_landmark"][1]["max_mm"] == pytest.approx(5.0)
    assert s["per_landmark"][2]["sdr"]["2.0"] == pytest.approx(50.0)
    text = format_summary(s)
    assert "SDR 2.0 mm" in text and "| 2 | q | 3.50" in text


def test_configurable_radii():
    assert list(sdr(np.array([1.0, 3.0]), (1.0, 3.5))) == ["1.0", "3.5"]


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="same shape"):
        radial_errors(np.zeros((2, 2)), np.zeros((3, 2)), (1, 1))
