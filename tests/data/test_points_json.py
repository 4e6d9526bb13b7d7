"""The points JSON reader and writer (:mod:`anatomark.data.points_json`)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from anatomark.data.points_json import (
    landmark_entries,
    load_points_json,
    points_document,
    read_points_json,
    write_points_json,
)
from anatomark.errors import AnnotationError

NAMES = ["sella", "nasion", "orbitale"]
PTS = np.array([[10.123456, 20.5], [np.nan, np.nan], [30.0, 40.987654]])


def test_entries_have_the_infer_keys_and_null_for_absent_points():
    out = landmark_entries(PTS, NAMES, spacing=(0.1, 0.2), confidence=[0.912345, 0.1, np.float32(0.5)], flag=[1, 2, 3])
    assert out[0] == {
        "index": 1, "name": "sella", "x": 10.12, "y": 20.5, "x_mm": 1.012, "y_mm": 4.1, "confidence": 0.9123, "flag": 1,
    }  # fmt: skip
    assert out[1]["x"] is None and out[1]["y"] is None and out[1]["x_mm"] is None and out[1]["y_mm"] is None
    assert out[2]["index"] == 3 and out[2]["y"] == 40.99 and isinstance(out[2]["confidence"], float)
    json.dumps(out, allow_nan=False)  # strict JSON: no NaN anywhere


def test_the_plain_document_and_its_decimals():
    doc = points_document(PTS, NAMES, decimals=3)
    assert doc == {
        "landmarks": [
            {"index": 1, "name": "sella", "x": 10.123, "y": 20.5},
            {"index": 2, "name": "nasion", "x": None, "y": None},
            {"index": 3, "name": "orbitale", "x": 30.0, "y": 40.988},
        ]
    }
    assert points_document(PTS, NAMES, decimals=None)["landmarks"][0]["x"] == 10.123456


def test_the_same_entries_as_a_prediction():
    """The infer JSON's landmark entries are what ``Prediction.to_list`` gave before the writer was shared."""
    from anatomark.model import Prediction

    pts = np.array([[1.005, 2.4449], [100.5, 3.0], [7.25, 8.125]])
    pred = Prediction(pts, np.array([0.11119, 0.5, 1.0]), (0.1, 0.125), NAMES, replaced=np.array([True, False, True]))
    replaced = [bool(r) for r in pred.replaced]
    assert landmark_entries(pts, NAMES, pred.spacing, pred.confidence, shape_prior_replaced=replaced) == pred.to_list()


def test_writer_refuses_a_wrong_shape_or_column():
    with pytest.raises(AnnotationError, match=r"shape \(3, 2\)"):
        landmark_entries(np.zeros((2, 2)), NAMES)
    with pytest.raises(AnnotationError, match="flag must have one value per landmark"):
        landmark_entries(PTS, NAMES, flag=[1])
    with pytest.raises(AnnotationError, match="'landmarks' list"):
        write_points_json("unused.json", {"points": []})


def test_write_then_read_round_trip(tmp_path):
    path = write_points_json(tmp_path / "sub" / "p.json", {"landmark_set": "x", **points_document(PTS, NAMES)})
    assert json.loads(path.read_text())["landmark_set"] == "x"
    assert not list(tmp_path.rglob(".tmp-*"))  # written atomically, no temp file left
    back = read_points_json(path, NAMES)
    np.testing.assert_allclose(back, np.round(PTS, 2), equal_nan=True)
    np.testing.assert_allclose(read_points_json(load_points_json(path), NAMES), back, equal_nan=True)


def test_reader_accepts_the_older_minimal_entries_in_any_order():
    doc = {"landmarks": [{"name": "orbitale", "x": 3, "y": 4.5}, {"name": "sella", "x": None, "y": None}]}
    pts = read_points_json(doc, NAMES)
    assert np.isnan(pts[:2]).all() and pts[2].tolist() == [3.0, 4.5]


@pytest.mark.parametrize(
    ("landmarks", "message"),
    [
        ([{"name": "chin", "x": 1, "y": 2}], "unknown landmark 'chin'; the set 'ceph' has: sella, nasion, orbitale"),
        (
            [{"name": "sella", "x": 1, "y": 2}, {"name": "sella", "x": None, "y": None}],
            "landmark 'sella' is given twice (entries 1 and 2 of 'landmarks')",
        ),
        ([{"name": "sella", "x": 1}], "landmark 'sella' has x but no y; give both, or neither (null)"),
        ([{"name": "sella", "x": "1", "y": 2}], "landmark 'sella': x is \"1\", not a number"),
        ([{"name": "sella", "x": True, "y": 2}], "landmark 'sella': x is true, not a number"),
        ([{"name": "sella", "x": float("nan"), "y": 2}], "coordinates must be finite numbers"),
        (["sella"], "each entry of 'landmarks' must be an object with 'name', 'x' and 'y'"),
    ],
)
def test_reader_is_strict(landmarks, message):
    with pytest.raises(AnnotationError) as e:
        read_points_json({"landmarks": landmarks}, NAMES, "ceph")
    assert message in str(e.value)


def test_reader_needs_a_landmark_list_in_a_json_object(tmp_path):
    with pytest.raises(AnnotationError, match="'landmarks' list"):
        read_points_json({"markups": []}, NAMES)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(AnnotationError, match="not a readable points JSON"):
        load_points_json(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(AnnotationError, match="must hold a JSON object"):
        read_points_json(bad, NAMES)
    with pytest.raises(AnnotationError, match="not a readable points JSON"):
        load_points_json(tmp_path / "missing.json")
