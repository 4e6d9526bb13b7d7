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


# ---------------------------------------------------------------- strict coordinates (issue 14)
#: JSON coordinate texts that must be refused, and what the error must say about them
BAD_COORDINATES = [
    ("NaN", "NaN"),
    ("Infinity", "Infinity"),
    ("-Infinity", "-Infinity"),
    ("1e999", "Infinity"),  # json.loads gives inf
    ("true", "true"),
    ("false", "false"),
    ('"12.5"', "not a number"),
    ("[1]", "not a number"),
    ("{}", "not a number"),
]


@pytest.mark.parametrize("text,said", BAD_COORDINATES)
def test_labelme_refuses_bad_coordinates(tmp_path, text, said):
    good = '{"label": "nasion", "points": [[3, 4]], "shape_type": "point"}'
    bad = f'{{"label": "sella", "points": [[{text}, 20]], "shape_type": "point"}}'
    (tmp_path / "l.json").write_text(f'{{"shapes": [{good}, {bad}]}}')
    with pytest.raises(AnnotationError, match="'sella'") as ei:
        read_labelme(tmp_path / "l.json", NAMES)
    assert said in str(ei.value)


@pytest.mark.parametrize("text,said", BAD_COORDINATES)
def test_slicer_markups_refuses_bad_coordinates(text, said):
    doc = json.loads(f'{{"markups": [{{"controlPoints": [{{"label": "sella", "position": [1.0, {text}, 0.0]}}]}}]}}')
    with pytest.raises(AnnotationError, match=r"'sella' position\[1\]") as ei:
        read_slicer_markups(doc, NAMES)
    assert said in str(ei.value)


def test_labelme_point_must_be_one_xy(tmp_path):
    for points in ([], [[1, 2], [3, 4]], [[1, 2, 3]], None, [5]):
        doc = {"shapes": [{"label": "sella", "points": points, "shape_type": "point"}]}
        (tmp_path / "l.json").write_text(json.dumps(doc))
        with pytest.raises(AnnotationError, match="point 'sella' has no valid"):
            read_labelme(tmp_path / "l.json", NAMES)


def test_slicer_markups_repeated_label_is_refused_even_when_one_copy_is_undefined():
    defined = {"label": "sella", "position": [1.0, 2.0, 0.0]}
    undefined = {"label": "sella", "position": [0.0, 0.0, 0.0], "positionStatus": "undefined"}
    for cps in ([defined, undefined], [undefined, defined], [undefined, undefined], [defined, defined]):
        with pytest.raises(AnnotationError, match="'sella' is given twice"):
            read_slicer_markups({"markups": [{"controlPoints": cps}]}, NAMES)
    # across two point lists of one file too
    doc = {"markups": [{"controlPoints": [defined]}, {"controlPoints": [undefined]}]}
    with pytest.raises(AnnotationError, match="given twice"):
        read_slicer_markups(doc, NAMES)
    # one undefined copy alone is a missing landmark, as before
    back = read_slicer_markups({"markups": [{"controlPoints": [undefined, {**defined, "label": "nasion"}]}]}, NAMES)
    assert np.isnan(back[0]).all() and back[1].tolist() == [1.0, 2.0]


def test_slicer_markups_unknown_position_status():
    cp = {"label": "sella", "position": [1.0, 2.0, 0.0], "positionStatus": "maybe"}
    with pytest.raises(AnnotationError, match="positionStatus"):
        read_slicer_markups({"markups": [{"controlPoints": [cp]}]}, NAMES)


@pytest.mark.parametrize("cell", ["inf", "-inf", "nan", "NaN", "Infinity"])
def test_csv_refuses_non_finite_cells(tmp_path, pts, cell):
    path = write_landmark_csv(tmp_path / "l.csv", {"a.png": pts}, NAMES)
    header, row = path.read_text().splitlines()
    cells = row.split(",")
    cells[3] = cell  # nasion_x
    (tmp_path / "bad.csv").write_text("\n".join([header, ",".join(cells)]))
    with pytest.raises(AnnotationError, match=f"nasion_x='{cell}' is not a finite number"):
        read_landmark_csv(tmp_path / "bad.csv", NAMES)


def test_csv_refuses_a_half_given_landmark(tmp_path, pts):
    path = write_landmark_csv(tmp_path / "l.csv", {"a.png": pts}, NAMES)
    header, row = path.read_text().splitlines()
    cells = row.split(",")
    cells[4] = ""  # nasion_y
    (tmp_path / "bad.csv").write_text("\n".join([header, ",".join(cells)]))
    with pytest.raises(AnnotationError, match="landmark 'nasion' has x but an empty nasion_y"):
        read_landmark_csv(tmp_path / "bad.csv", NAMES)
