"""What 3D Slicer's stock MONAILabel module sends for a ``detection`` model (box ROIs, see
:func:`anatomark.monailabel.labels.rois_as_point_list`), read as landmarks without a server."""

from __future__ import annotations

import numpy as np
import pytest

from anatomark.config import LandmarkSet
from anatomark.data.geometry import ViewerGeometry
from anatomark.errors import AnnotationError
from anatomark.monailabel.labels import json_points

LS = LandmarkSet.from_dict({"name": "two", "landmarks": [{"name": "a"}, {"name": "b"}]})
GEOMETRY = ViewerGeometry(spacing=(0.5, 0.25), origin=(10.0, 20.0))


def roi(center, label=None, cp_position=None) -> dict:
    cps = [] if label is None else [{"label": label, "position": cp_position or center, "positionStatus": "defined"}]
    return {"type": "ROI", "coordinateSystem": "LPS", "roiType": "Box", "center": center, "controlPoints": cps}


def test_rois_are_read_by_label_at_their_centre():
    sam2 = {"type": "ROI", "coordinateSystem": "LPS", "controlPoints": []}  # the module's never placed ROI
    doc = {"markups": [sam2, roi([12.0, 21.0, 0.0], "b", cp_position=[0.0, 0.0, 0.0]), roi([10.5, 20.5, 0.0], "a")]}
    np.testing.assert_allclose(json_points(doc, LS, GEOMETRY), [[1.0, 2.0], [4.0, 4.0]])


def test_exactly_k_unlabelled_rois_are_taken_in_order():
    doc = {"markups": [roi([10.5, 20.5, 0.0]), roi([12.0, 21.0, 0.0])]}
    np.testing.assert_allclose(json_points(doc, LS, GEOMETRY), [[1.0, 2.0], [4.0, 4.0]])


@pytest.mark.parametrize(
    "markups",
    [
        [roi([10.5, 20.5, 0.0])],  # one unlabelled ROI for two landmarks
        [roi([10.5, 20.5, 0.0], "a"), roi([12.0, 21.0, 0.0], "a")],  # a landmark twice
        [roi([float("nan"), 20.5, 0.0], "a")],  # no usable centre, and the control point is not finite either
    ],
)
def test_unreadable_rois_are_refused(markups):
    with pytest.raises(AnnotationError):
        json_points({"markups": markups}, LS, GEOMETRY)
