"""PNG reports: the legend names what the JSON names, colours are distinct, every line and arc is visible."""

from __future__ import annotations

import math
from itertools import combinations

import numpy as np
import pytest
from measure_cases import isbi_points, spine_points

from anatomark.config import load_landmark_set
from anatomark.measurements.base import angle_arc
from anatomark.measurements.cephalometric import cephalometric_measurements
from anatomark.measurements.report import _landmark_labels, draw_measurements, legend_entries, measurement_colors
from anatomark.measurements.spine import cobb_measurements

CEPH = load_landmark_set("isbi2015_cephalometric")
SPINE = load_landmark_set("aasce2019_spine")
TILTS = [0, 3, 6, 2, -8, -12, -10, -6, 0, 6, 10, 14, 12, 8, 6, 4, 3]
S_X = [100 + 30 * math.sin(2 * math.pi * i / 16) for i in range(17)]


def _rgb(color: str) -> np.ndarray:
    return np.array([int(color[i : i + 2], 16) for i in (1, 3, 5)], dtype=np.int64)


def _count(picture: np.ndarray, color: str) -> int:
    return int(np.all(picture == _rgb(color), axis=-1).sum())


def test_legend_uses_the_json_names_and_their_descriptions():
    results = cephalometric_measurements(isbi_points())
    entries = legend_entries(results)
    assert [e["name"] for e in entries] == [r.to_dict()["name"] for r in results]
    for e, r in zip(entries, results):
        assert e["title"].startswith(r.name + " ") and r.description in e["lines"]
    fma = next(e for e in entries if e["name"] == "FMA")  # the picture says what "FMA" is: S-N to Go-Gn
    assert any("S-N line to Go-Gn" in line for line in fma["lines"])


def test_measurement_colours_are_far_apart():
    results = cephalometric_measurements(isbi_points())
    colors = dict(zip([r.name for r in results], measurement_colors(results)))
    assert len(set(colors.values())) == len(colors)
    dist = {(a, b): float(np.linalg.norm(_rgb(colors[a]) - _rgb(colors[b]))) for a, b in combinations(colors, 2)}
    assert min(dist.values()) >= 90
    for a, b in combinations(("SNA", "FHI", "ANB"), 2):  # yellow / orange / red in the issue
        assert dist.get((a, b), dist.get((b, a))) >= 150, (a, b)


@pytest.mark.parametrize("name", ["SNA", "SNB", "ANB", "FMA"])
def test_arcs_span_exactly_the_measured_angle(name):
    (r,) = cephalometric_measurements(isbi_points(gonion=(300.0, 1750.0)), truncate=False, which=[name])
    (arc,) = r.arcs
    c, a, b = (np.asarray(p) for p in arc)
    u, v = a - c, b - c
    shown = math.degrees(math.acos(float(np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v)))))
    assert shown == pytest.approx(abs(r.value), abs=1e-9)
    if name != "FMA":
        assert tuple(c) == pytest.approx(tuple(isbi_points()[CEPH.names.index("nasion")]))


def test_angle_arc_of_two_separate_lines_sits_at_their_crossing():
    vertex, a, b = angle_arc((0, 0), (10, 0), (20, -5), (30, 5))  # y = 0 and y = x - 25 cross at (25, 0)
    assert vertex == pytest.approx((25.0, 0.0)) and a[0] > 25 and b[0] > 25
    assert angle_arc((0, 0), (1, 0), (0, 1), (5, 1)) is None  # parallel


def test_report_draws_the_arcs():
    results = cephalometric_measurements(isbi_points())
    sna = [r.name for r in results].index("SNA")
    color = measurement_colors(results)[sna]
    kw = {"image": None, "size_wh": (1400, 2300)}
    with_arcs = draw_measurements(isbi_points(), CEPH.shorts, CEPH.colors, results, **kw)
    for r in results:
        r.arcs = []
    without = draw_measurements(isbi_points(), CEPH.shorts, CEPH.colors, results, **kw)
    assert _count(with_arcs, color) > _count(without, color) + 50


def test_each_cobb_angle_is_drawn_in_its_colour_on_its_own_end_vertebrae():
    """S curve: T6 ends angles 1 and 2, T12 angles 1 and 3; no angle's line may hide under another's."""
    pts = spine_points(TILTS, S_X)
    results = cobb_measurements(pts, image_height=2000)
    ends = [r.details["end_vertebrae"] for r in results]
    assert ends == [["T6", "T12"], ["T3", "T6"], ["T12", "L5"]]
    picture = draw_measurements(pts, SPINE.shorts, SPINE.colors, results, image=None, size_wh=(300, 1100))
    centres = pts.reshape(17, 4, 2).mean(axis=1)
    vertebrae = [f"T{i}" for i in range(1, 13)] + [f"L{i}" for i in range(1, 6)]
    colors = measurement_colors(results)
    assert len(set(colors)) == 3
    for r, col in zip(results, colors):
        for v in r.details["end_vertebrae"]:
            x, y = np.round(centres[vertebrae.index(v)]).astype(int)
            window = picture[y - 10 : y + 11, x - 10 : x + 11]
            assert _count(window, col) >= 5, (r.name, v)
        for v in set(vertebrae) - set(r.details["end_vertebrae"]):
            x, y = np.round(centres[vertebrae.index(v)]).astype(int)
            assert _count(picture[y - 10 : y + 11, x - 10 : x + 11], col) == 0, (r.name, v)  # only its own


def test_spine_corner_labels_are_one_per_vertebra():
    labels = _landmark_labels(SPINE.shorts)
    assert [lab for lab in labels if lab] == [f"T{i}" for i in range(1, 13)] + [f"L{i}" for i in range(1, 6)]
    assert _landmark_labels(CEPH.shorts) == list(CEPH.shorts)
