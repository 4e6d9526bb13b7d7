from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from anatomark.config import load_landmark_set
from anatomark.measurements.occlusion import yen_class, yen_measurements

REPO = Path(__file__).resolve().parents[2]


def yen_points(angle_deg: float) -> np.ndarray:
    """S, M, G, nose, upper lip, lower lip with the angle S-M-G = angle_deg (M at the origin, S up-left)."""
    m = np.array([1000.0, 1500.0])
    s = m + 700 * np.array([-math.cos(math.radians(30)), -math.sin(math.radians(30))])
    a = math.radians(210 - angle_deg)  # S is at direction 210 deg (screen angle, y down), G turned by angle_deg
    g = m + 500 * np.array([math.cos(a), math.sin(a)])
    return np.array([s, m, g, [1300, 1400], [1200, 1550], [1200, 1700]])


@pytest.mark.parametrize(
    "angle, klass",
    [(120, "I"), (117.001, "I"), (122.999, "I"), (116.9, "II"), (100, "II"), (123.1, "III"), (150, "III")],
)
def test_yen_angle_and_class(angle, klass):
    (r,) = yen_measurements(yen_points(angle))
    assert r.value == pytest.approx(angle, abs=1e-9)
    assert r.klass == klass and r.unit == "deg"


def test_yen_class_bounds():
    assert yen_class(117.0) == "I" and yen_class(123.0) == "I"
    assert yen_class(np.nextafter(117.0, 0)) == "II" and yen_class(np.nextafter(123.0, 200)) == "III"


def test_yen_anisotropic_spacing():
    pts = np.array([[-10, -10], [0, 0], [0, 10], [5, 5], [6, 6], [7, 7]], dtype=float)
    (r,) = yen_measurements(pts, spacing=(1.0, 2.0))
    expected = math.degrees(math.acos((-10 * 0 + -20 * 20) / (math.hypot(10, 20) * 20)))
    assert r.value == pytest.approx(expected)


def test_yen_not_computable():
    pts = yen_points(120)
    pts[2] = np.nan
    (r,) = yen_measurements(pts)
    assert r.value is None and "symphysis_center" in r.reason
    pts = yen_points(120)
    pts[0] = pts[1]  # S on M
    (r,) = yen_measurements(pts)
    assert r.value is None and "coincide" in r.reason
    # collinear S, M, G on one side: a real 0 deg angle, reported as such
    pts = yen_points(120)
    pts[2] = pts[1] + 0.5 * (pts[0] - pts[1])
    (r,) = yen_measurements(pts)
    assert r.value == pytest.approx(0.0, abs=1e-6) and r.klass == "II"


def test_yen_landmark_set():
    ls = load_landmark_set("fernandes2023_yen")
    assert ls.shorts == ["S", "M", "G", "Nt", "UL", "LL"]
    assert ls.default_spacing_mm == (0.1, 0.1)


def test_sample_app_runs(tmp_path):
    app = REPO / "sample-apps" / "yen_occlusion" / "yen_occlusion.py"
    out = subprocess.run(
        [sys.executable, str(app), "--out", str(tmp_path)], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    assert "YEN" in out.stdout and "Class" in out.stdout
    assert (tmp_path / "yen_report.png").is_file()
