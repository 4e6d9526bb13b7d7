from __future__ import annotations

import math

import numpy as np
import pytest

from anatomark.config import load_landmark_set
from anatomark.measurements.lower_limb import LEG_POINTS, lower_limb_measurements

NAMES = load_landmark_set("lower_limb_amador2024").names


def right_leg(knee=(100.0, 400.0), lateral_condyle=(70.0, 420.0), medial_condyle=(130.0, 420.0)) -> dict:
    """Right leg on the image's left (radiological view): lateral = smaller x. Straight vertical leg by default."""
    return {
        "femoral_head_center": (100.0, 0.0),
        "knee_center": knee,
        "femoral_condyle_lateral": lateral_condyle,
        "femoral_condyle_medial": medial_condyle,
        "tibial_plateau_lateral": (70.0, 430.0),
        "tibial_plateau_medial": (130.0, 430.0),
        "lateral_malleolus": (80.0, 800.0),
        "medial_malleolus": (120.0, 800.0),  # ankle centre (100, 800)
        "femoral_diaphysis_center": (100.0 + 300 * math.sin(math.radians(6)), 400.0 - 300 * math.cos(math.radians(6))),
    }


def mirror(leg: dict, axis_x: float = 500.0) -> dict:
    return {k: (2 * axis_x - x, y) for k, (x, y) in leg.items()}


def points(right: dict | None = None, left: dict | None = None) -> np.ndarray:
    pts = np.full((len(NAMES), 2), np.nan)
    for side, leg in (("right_", right), ("left_", left)):
        for k, v in (leg or {}).items():
            pts[NAMES.index(side + k)] = v
    return pts


def res(pts, spacing=1.0):
    return {r.name: r for r in lower_limb_measurements(pts, spacing)}


def test_landmark_set_has_nine_points_per_leg():
    assert len(NAMES) == 18
    assert NAMES[:9] == ["right_" + n for n in LEG_POINTS] and NAMES[9:] == ["left_" + n for n in LEG_POINTS]


def test_straight_leg():
    r = res(points(right_leg()))
    assert r["right_mLDFA"].value == pytest.approx(90.0)
    assert r["right_mMPTA"].value == pytest.approx(90.0)
    assert r["right_FVA"].value == pytest.approx(6.0)
    assert r["right_HKA"].value == pytest.approx(0.0, abs=1e-9) and r["right_HKA"].klass == "neutral"
    assert r["right_MAD"].value == pytest.approx(0.0, abs=1e-9) and r["right_MAD"].klass == "none"
    assert r["right_mLDFA"].details["reference_range"] == [85.0, 90.0]
    # the left leg is absent: clear reasons, no numbers
    assert all(r[f"left_{n}"].value is None and "missing" in r[f"left_{n}"].reason for n in ("HKA", "MAD", "FVA"))


def test_mldfa_87_when_the_lateral_condyle_is_higher():
    d = 60 * math.tan(math.radians(3))  # joint line turned 3 deg: lateral end up
    r = res(points(right_leg(lateral_condyle=(70.0, 420.0 - d / 2), medial_condyle=(130.0, 420.0 + d / 2))))
    assert r["right_mLDFA"].value == pytest.approx(87.0)


@pytest.mark.parametrize("side", ["right", "left"])
def test_varus_and_valgus(side):
    expected_hka = 2 * math.degrees(math.atan(20 / 400))
    for knee_x, klass, mad_side in ((80.0, "varus", "medial"), (120.0, "valgus", "lateral")):
        leg = right_leg(knee=(knee_x, 400.0))
        pts = points(right=leg) if side == "right" else points(left=mirror(leg))
        r = res(pts, spacing=0.5)
        hka, mad = r[f"{side}_HKA"], r[f"{side}_MAD"]
        assert hka.value == pytest.approx(expected_hka)
        assert hka.klass == klass
        assert hka.details["signed_deg"] == pytest.approx(-expected_hka if klass == "varus" else expected_hka)
        assert mad.value == pytest.approx(10.0) and mad.unit == "mm"  # 20 px at 0.5 mm/px
        assert mad.klass == mad_side


def test_anisotropic_spacing_hka():
    leg = right_leg(knee=(80.0, 400.0))
    r = res(points(leg), spacing=(1.0, 2.0))
    assert r["right_HKA"].value == pytest.approx(2 * math.degrees(math.atan(20 / 800)))
    assert r["right_MAD"].value == pytest.approx(20.0)  # horizontal offset 20 px x 1 mm; axis vertical


def test_degenerate_legs():
    leg = right_leg()
    leg["knee_center"] = leg["femoral_head_center"]  # head on the knee
    r = res(points(leg))
    for n in ("mLDFA", "FVA", "HKA", "MAD"):
        assert r[f"right_{n}"].value is None and "coincide" in r[f"right_{n}"].reason
    leg = right_leg(lateral_condyle=(100.0, 420.0), medial_condyle=(100.0, 420.0))
    r = res(points(leg))
    assert r["right_mLDFA"].value is None and "condylar line" in r["right_mLDFA"].reason
    assert r["right_HKA"].value is not None


def test_side_undetermined_without_medial_direction():
    leg = right_leg(knee=(80.0, 400.0))
    pts = points(leg)
    for n in ("femoral_condyle_lateral", "femoral_condyle_medial", "tibial_plateau_lateral", "tibial_plateau_medial"):
        pts[NAMES.index("right_" + n)] = np.nan
    pts[NAMES.index("right_medial_malleolus")] = pts[NAMES.index("right_lateral_malleolus")]  # no direction left
    r = res(pts)
    assert r["right_HKA"].value is not None and r["right_HKA"].klass is None
    assert "undetermined" in r["right_HKA"].details["note"]
    assert r["right_mLDFA"].value is None and "missing" in r["right_mLDFA"].reason
