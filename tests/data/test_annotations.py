"""Annotation formats round-trip, and malformed files fail with clear messages."""

from __future__ import annotations

import json

import numpy as np
import pytest

from anatomark.config import load_landmark_set
from anatomark.data.annotations import (
    SLICER_MARKUPS_SCHEMA,
    read_labelme,
    read_landmark_csv,
    read_slicer_markups,
    write_labelme,
    write_landmark_csv,
    write_slicer_markups,
)
from anatomark.errors import AnnotationError

NAMES = load_landmark_set("isbi2015_cephalometric").names


@pytest.fixture
def pts(rng):
    p = rng.uniform(0, 1900, (19, 2)).round(3)
    p[4] = np.nan
    return p


def test_csv_round_trip(tmp_path, pts):
    path = write_landmark_csv(tmp_path / "l.csv", {"a.png": pts, "b.png": pts + 1}, NAMES)
    back = read_landmark_csv(path, NAMES)
    assert list(back) == ["a.png", "b.png"]
    np.testing.assert_allclose(back["a.png"], pts, atol=1e-3)
    assert np.isnan(back["b.png"][4]).all()


def test_csv_reads_the_isbi_header(isbi_dir):
    table = read_landmark_csv(isbi_dir / "landmarks_senior.csv", NAMES)
    assert len(table) == 300
    assert table["001.jpg"][0].tolist() == [835.0, 996.0]  # sella of the first image
    assert table["001.jpg"][18].tolist() == [664.0, 1340.0]  # articulare


def test_csv_missing_columns(tmp_path):
    (tmp_path / "bad.csv").write_text("image,sella_x,sella_y\na.png,1,2\n")
    with pytest.raises(AnnotationError, match=r"lacks 36 required column\(s\): nasion_x"):
        read_landmark_csv(tmp_path / "bad.csv", NAMES)


def test_csv_wrong_landmark_count_on_write(tmp_path):
    with pytest.raises(AnnotationError, match="18 points given but the landmark set has 19"):
        write_landmark_csv(tmp_path / "x.csv", {"a": np.zeros((18, 2))}, NAMES)
    assert not (tmp_path / "x.csv").exists()


def test_csv_non_numeric_and_duplicates(tmp_path, pts):
    path = write_landmark_csv(tmp_path / "l.csv", {"a.png": pts}, NAMES)
    text = path.read_text().splitlines()
    (tmp_path / "nan.csv").write_text("\n".join([text[0], text[1].replace("a.png,", "a.png,abc", 1)]))
    with pytest.raises(AnnotationError, match="is not a number"):
        read_landmark_csv(tmp_path / "nan.csv", NAMES)
    (tmp_path / "dup.csv").write_text("\n".join([text[0], text[1], text[1]]))
    with pytest.raises(AnnotationError, match="appears twice"):
        read_landmark_csv(tmp_path / "dup.csv", NAMES)


def test_labelme_round_trip(tmp_path, pts):
    path = write_labelme(tmp_path / "a.json", pts, NAMES, "a.png", (2400, 1935))
    doc = json.loads(path.read_text())
    assert len(doc["shapes"]) == 18 and doc["imageWidth"] == 1935
    back = read_labelme(path, NAMES)
    np.testing.assert_allclose(back, pts)


def test_labelme_unknown_and_duplicate_labels(tmp_path):
    doc = {"shapes": [{"label": "chin", "points": [[1, 2]], "shape_type": "point"}]}
    (tmp_path / "u.json").write_text(json.dumps(doc))
    with pytest.raises(AnnotationError, match="unknown landmark 'chin'"):
        read_labelme(tmp_path / "u.json", NAMES)
    doc = {"shapes": [{"label": "sella", "points": [[1, 2]], "shape_type": "point"}] * 2}
    (tmp_path / "d.json").write_text(json.dumps(doc))
    with pytest.raises(AnnotationError, match="given twice"):
        read_labelme(tmp_path / "d.json", NAMES)
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(AnnotationError, match="not valid JSON"):
        read_labelme(tmp_path / "x.json", NAMES)


def test_slicer_markups_round_trip_and_lps(tmp_path, pts):
    sp, origin = (0.1, 0.2), (5.0, -3.0)
    path = write_slicer_markups(tmp_path / "a.mrk.json", pts, NAMES, sp, origin)
    doc = json.loads(path.read_text())
    assert doc["@schema"] == SLICER_MARKUPS_SCHEMA
    m = doc["markups"][0]
    assert m["type"] == "Fiducial" and m["coordinateSystem"] == "LPS"
    cp = m["controlPoints"][0]
    assert cp["label"] == "sella"
    # LPS: pixel (x, y) sits at (origin_x + x * sx, origin_y + y * sy, 0); L and P grow with x and y
    assert cp["position"] == pytest.approx([5.0 + pts[0, 0] * 0.1, -3.0 + pts[0, 1] * 0.2, 0.0])
    assert m["controlPoints"][4]["positionStatus"] == "undefined"
    back = read_slicer_markups(path, NAMES, sp, origin)
    np.testing.assert_allclose(back, pts, atol=1e-9)


def test_slicer_markups_ras_is_converted(pts):
    doc = {
        "markups": [
            {
                "type": "Fiducial",
                "coordinateSystem": "RAS",
                "controlPoints": [{"label": "nasion", "position": [-12.0, -34.0, 0.0]}],
            }
        ]
    }
    back = read_slicer_markups(doc, NAMES, (0.1, 0.1))
    assert back[1] == pytest.approx([120.0, 340.0])
    assert np.isnan(back[0]).all()


def test_slicer_markups_malformed(tmp_path):
    with pytest.raises(AnnotationError, match="no 'markups' list"):
        read_slicer_markups({"foo": 1}, NAMES)
    with pytest.raises(AnnotationError, match="unknown landmark 'x'"):
        read_slicer_markups({"markups": [{"controlPoints": [{"label": "x", "position": [0, 0, 0]}]}]}, NAMES)
    with pytest.raises(AnnotationError, match="no valid 'position'"):
        read_slicer_markups({"markups": [{"controlPoints": [{"label": "sella", "position": ["a"]}]}]}, NAMES)
    with pytest.raises(AnnotationError, match="coordinateSystem"):
        read_slicer_markups({"markups": [{"coordinateSystem": "IJK", "controlPoints": []}]}, NAMES)
