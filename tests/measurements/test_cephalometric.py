from __future__ import annotations

import math

import numpy as np
import pytest
from measure_cases import ISBI_NAMES, isbi_points, polar

from anatomark.measurements.cephalometric import (
    MEASUREMENTS,
    TYPE_TABLE,
    ab_plane_angle,
    cephalometric_measurements,
    classify,
    palatal_plane_angle,
)


def by_name(results):
    return {r.name: r for r in results}


def run(pts, **kw):
    return by_name(cephalometric_measurements(pts, spacing=(0.1, 0.1), truncate=False, **kw))


def test_sna_snb_anb_hand_worked():
    r = run(isbi_points())
    assert r["SNA"].value == pytest.approx(82.0, abs=1e-9)
    assert r["SNB"].value == pytest.approx(78.0, abs=1e-9)
    assert r["ANB"].value == pytest.approx(4.0, abs=1e-9)
    assert (r["SNA"].klass, r["SNB"].klass, r["ANB"].klass) == (1, 1, 1)
    # A behind B: negative ANB, Class III
    r = run(isbi_points(subspinale=polar((1000.0, 1000.0), 76.0, 600.0)))
    assert r["ANB"].value == pytest.approx(-2.0, abs=1e-9)
    assert r["ANB"].klass == 3 and r["SNA"].klass == 3 and r["ANB"].unit == "deg"


def test_palatal_and_ab_plane_signs():
    po, or_ = np.array([0.0, 0.0]), np.array([100.0, 0.0])
    pns = np.array([0.0, 50.0])
    down = pns + 100 * np.array([math.cos(math.radians(10)), math.sin(math.radians(10))])  # y down: ANS tips down
    up = pns + 100 * np.array([math.cos(math.radians(10)), -math.sin(math.radians(10))])
    assert palatal_plane_angle(po, or_, pns, down) == pytest.approx(10.0)
    assert palatal_plane_angle(po, or_, pns, up) == pytest.approx(-10.0)
    n, pog = np.array([0.0, 0.0]), np.array([0.0, 100.0])
    a = np.array([0.0, 40.0])
    b_ahead = a + 50 * np.array([math.sin(math.radians(10)), math.cos(math.radians(10))])  # B anterior (+x) of A
    b_behind = a + 50 * np.array([-math.sin(math.radians(10)), math.cos(math.radians(10))])
    assert ab_plane_angle(n, pog, a, b_ahead) == pytest.approx(10.0)
    assert ab_plane_angle(n, pog, a, b_behind) == pytest.approx(-10.0)


def test_odi_apdi_hand_worked():
    base = dict(
        menton=(1000.0, 2100.0),
        gonion=(0.0, 2100.0),  # Me->Go = -x
        supramentale=(1000.0, 1800.0),
        subspinale=(1000.0, 1200.0),  # B->A = -y: 90 deg to Me->Go
        nasion=(1000.0, 1000.0),
        pogonion=(1000.0, 2000.0),  # N->Pog = +y: 90 deg to Or->Po (-x); A->B parallel -> AB = 0
        porion=(200.0, 1100.0),
        orbitale=(900.0, 1100.0),
        posterior_nasal_spine=(500.0, 1300.0),
        anterior_nasal_spine=(1100.0, 1300.0),  # PP = 0
    )
    r = run(isbi_points(**base))
    assert r["ODI"].value == pytest.approx(90.0) and r["ODI"].klass == 2
    assert r["APDI"].value == pytest.approx(90.0) and r["APDI"].klass == 3
    assert r["APDI"].details["facial_angle"] == pytest.approx(90.0)
    # tip ANS down by 12 deg: PP = +12 adds to both
    ans = (500.0 + 600 * math.cos(math.radians(12)), 1300.0 + 600 * math.sin(math.radians(12)))
    r = run(isbi_points(**{**base, "anterior_nasal_spine": ans}))
    assert r["ODI"].details["PP"] == pytest.approx(12.0)
    assert r["ODI"].value == pytest.approx(102.0) and r["APDI"].value == pytest.approx(102.0)
    # B 8 deg ahead of A relative to N-Pog: AB = +8 (APDI only)
    b = (1000.0 + 600 * math.sin(math.radians(8)), 1200.0 + 600 * math.cos(math.radians(8)))
    r = run(isbi_points(**{**base, "supramentale": b}))
    assert r["APDI"].details["AB"] == pytest.approx(8.0)
    assert r["APDI"].value == pytest.approx(98.0)
    assert r["ODI"].value == pytest.approx(90.0 - 8.0)  # B->A = (-sin 8, -cos 8) is 82 deg from Me->Go = (-1, 0)


def test_fhi_fma_mw_hand_worked():
    pts = isbi_points(
        sella=(0.0, 1000.0), gonion=(0.0, 1700.0), nasion=(1000.0, 1000.0), menton=(1000.0, 2000.0),
        gnathion=(0.0 + 1000 * math.cos(math.radians(30)), 1700.0 + 1000 * math.sin(math.radians(30))),
    )  # fmt: skip
    r = run(pts)
    assert r["FHI"].value == pytest.approx(0.7) and r["FHI"].unit == "ratio" and r["FHI"].klass == 1
    assert r["FHI"].details["anterior_face_height_mm"] == pytest.approx(100.0)
    assert r["FMA"].value == pytest.approx(30.0) and r["FMA"].klass == 1
    assert r["MW"].value == pytest.approx(3.0) and r["MW"].unit == "mm" and r["MW"].klass == 1


@pytest.mark.parametrize(
    "ui, value, klass",
    [
        ((1030.0, 1500.0), 3.0, 1),
        ((970.0, 1500.0), -3.0, 3),  # UI behind LI: crossbite
        ((1015.0, 1500.0), 1.5, 3),  # official-script quirk: 0 < MW < 2 is type 3 too
        ((1000.0, 1500.0), 0.0, 2),  # edge to edge
        ((1012.0, 1516.0), 2.0, 1),  # exactly on the low bound (20 px)
        ((1027.0, 1536.0), 4.5, 1),  # exactly on the high bound (45 px)
        ((1046.0, 1500.0), 4.6, 4),
        ((1000.0, 1530.0), 3.0, 1),  # same x: the script's sign is +
    ],
)
def test_mw_types(ui, value, klass):
    r = run(isbi_points(lower_incisal_incision=(1000.0, 1500.0), upper_incisal_incision=ui))["MW"]
    assert r.value == pytest.approx(value, abs=1e-12)
    assert r.klass == klass


@pytest.mark.parametrize("name", list(TYPE_TABLE))
def test_type_bounds_belong_to_type_1(name):
    low, high, below, above, _, _ = TYPE_TABLE[name]
    assert classify(name, low) == 1 and classify(name, high) == 1
    assert classify(name, np.nextafter(low, -np.inf)) == below
    assert classify(name, np.nextafter(high, np.inf)) == above
    assert {below, above} == {2, 3}


def test_type_directions_match_the_table():
    # SNB and APDI: type 2 is the low side; the others type 2 is the high side
    assert classify("SNB", 70) == 2 and classify("APDI", 70) == 2
    for name in ("ANB", "SNA", "ODI", "FHI", "FMA"):
        assert classify(name, 1e3) == 2
    assert classify("MW", 2.0) == 1 and classify("MW", 4.5) == 1 and classify("MW", 1.99) == 3
    assert classify("MW", -0.1) == 3 and classify("MW", 0.0) == 2 and classify("MW", 4.51) == 4


def test_missing_landmark_is_not_computable():
    pts = isbi_points()
    pts[ISBI_NAMES.index("subspinale")] = np.nan
    r = run(pts)
    for name in ("SNA", "ANB", "ODI", "APDI"):
        assert r[name].value is None and r[name].klass is None
        assert "subspinale" in r[name].reason
    for name in ("SNB", "FHI", "FMA", "MW"):
        assert r[name].value is not None


def test_coincident_points_are_not_computable():
    r = run(isbi_points(sella=(1000.0, 1000.0)))  # S on N
    assert r["SNA"].value is None and "coincide" in r["SNA"].reason
    assert r["FMA"].value is None
    r = run(isbi_points(menton=(1000.0, 1000.0)))  # N on Me: no anterior face height
    assert r["FHI"].value is None and "coincide" in r["FHI"].reason


def test_truncation_as_official_script():
    pts = isbi_points(upper_incisal_incision=(1030.0, 1500.0), lower_incisal_incision=(1000.9, 1500.9))
    exact = run(pts)["MW"].value
    official = by_name(cephalometric_measurements(pts))["MW"]
    assert official.value == pytest.approx(3.0) and exact < 3.0
    assert "truncated" in official.details["convention"]


def test_wrong_point_count_raises():
    from anatomark.errors import AnatomarkError

    with pytest.raises(AnatomarkError, match="19"):
        cephalometric_measurements(np.zeros((5, 2)))


def test_isbi_senior_statistics_match_measurements_doc(isbi_dir):
    """measurements.md: FMA mean 32.9 deg; 45/300 images with 0 <= MW < 2 and 73 with MW < 0 (senior)."""
    from anatomark.data.annotations import read_landmark_csv

    table = read_landmark_csv(isbi_dir / "landmarks_senior.csv", ISBI_NAMES)
    res = [by_name(cephalometric_measurements(p)) for p in table.values()]
    assert len(res) == 300 and all(r[m].value is not None for r in res for m in MEASUREMENTS)
    assert np.mean([r["FMA"].value for r in res]) == pytest.approx(32.9, abs=0.05)
    mw = np.array([r["MW"].value for r in res])
    assert ((mw >= 0) & (mw < 2)).sum() == 45 and (mw < 0).sum() == 73
    # N.x > S.x on every senior annotation (cephalograms face right)
    assert all(p[1, 0] > p[0, 0] for p in table.values())
