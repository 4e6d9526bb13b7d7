"""The shipped default model through :func:`anatomark.inference.analyse` on real ISBI 2015 images and images that
are not what it expects: mirrored, turned, cropped, a spine, blank, noise."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from anatomark.data.image_io import XrayImage, load_image
from anatomark.errors import AnatomarkError
from anatomark.inference import analyse
from anatomark.model import load_model

ISBI = Path(os.environ.get("ANATOMARK_ISBI", Path(__file__).resolve().parents[2] / "shared" / "datasets" / "isbi2015"))
KEYS = {"index", "name", "x", "y", "x_mm", "y_mm", "confidence", "expected_error_mm", "in_image", "reliable"}


@pytest.fixture(scope="module")
def model():
    m = load_model("default")
    assert m.quality is not None, "the shipped default model must carry its quality calibration (anatomark calibrate)"
    return m


@pytest.fixture(scope="module")
def ceph(isbi_dir_module) -> XrayImage:
    return load_image(isbi_dir_module / "images" / "008.jpg", default_spacing=(0.1, 0.1))


@pytest.fixture(scope="module")
def isbi_dir_module():
    if not (ISBI / "images").is_dir():
        pytest.skip(f"ISBI 2015 dataset not found at {ISBI} (set ANATOMARK_ISBI or place ../shared/datasets)")
    return ISBI


@pytest.fixture(scope="module")
def plain(model, ceph):
    return analyse(model, ceph)


def like(img: XrayImage, array: np.ndarray) -> XrayImage:
    return XrayImage(np.ascontiguousarray(array, dtype=np.float32), img.spacing, img.spacing_source)


def inside(doc: dict, size_wh) -> bool:
    w, h = size_wh
    return all(0 <= d["x"] <= w - 1 and 0 <= d["y"] <= h - 1 for d in doc["landmarks"] if d["x"] is not None)


def test_a_cephalogram_is_reliable_with_expected_errors(plain, ceph):
    doc = plain.to_dict()
    assert doc["quality"]["reliable"] is True and 0 < doc["quality"]["score"] <= 1
    assert doc["orientation"]["applied"] == "identity"
    assert all(set(d) == KEYS for d in doc["landmarks"])
    assert all(d["in_image"] and d["expected_error_mm"] > 0 for d in doc["landmarks"])
    assert inside(doc, ceph.size_wh)
    sna = next(m for m in doc["measurements"] if m["name"] == "SNA")
    assert sna["value"] is not None or "unreliable" in sna["reason"]


def test_a_mirrored_cephalogram_gives_the_mirror_of_the_points(model, ceph, plain):
    res = analyse(model, like(ceph, ceph.array[:, ::-1]))
    assert res.orientation.name == "flip_x" and res.reliable
    w = ceph.size_wh[0]
    back = res.prediction.points * np.array([-1.0, 1.0]) + np.array([w - 1.0, 0.0])
    mean_mm = float(np.linalg.norm((back - plain.prediction.points) * 0.1, axis=1).mean())
    assert mean_mm < 1.0, f"mirrored image: {mean_mm:.2f} mm from the mirror of the original's points"
    doc = res.to_dict()
    assert doc["orientation"]["facing_mirrored"] is True
    assert any("mirrored" in x for x in doc["quality"]["warnings"])
    # measurements are the anatomy's, not the mirror's: ANB keeps its sign
    a = {m["name"]: m["value"] for m in plain.to_dict()["measurements"]}
    b = {m["name"]: m["value"] for m in doc["measurements"]}
    for k, v in a.items():
        if v is not None and b[k] is not None:
            assert abs(v - b[k]) < 2.0, k


def test_a_turned_cephalogram_is_turned_back(model, ceph, plain):
    res = analyse(model, like(ceph, np.rot90(ceph.array, 1)))
    assert res.orientation.name == "rot270" and res.reliable
    assert inside(res.to_dict(), res.size_wh)


def test_orientation_none_does_not_search(model, ceph):
    res = analyse(model, like(ceph, ceph.array[:, ::-1]), orientation="none")
    assert res.orientation.name == "identity" and res.reliable is False
    assert all(m["value"] is None and m["reason"] for m in res.to_dict()["measurements"])
    with pytest.raises(AnatomarkError, match="orientation must be one of"):
        analyse(model, ceph, orientation="sideways")


@pytest.mark.parametrize("kind", ["blank", "noise", "lower_half"])
def test_not_a_whole_cephalogram_is_unreliable(model, ceph, kind):
    a = ceph.array
    arr = {
        "blank": np.zeros_like(a),
        "noise": np.random.default_rng(0).uniform(0, 255, a.shape),
        "lower_half": a[a.shape[0] // 2 :],
    }[kind]
    img = like(ceph, arr)
    doc = analyse(model, img).to_dict()
    assert doc["quality"]["reliable"] is False and doc["quality"]["warnings"]
    assert inside(doc, img.size_wh)
    assert all(m["value"] is None and "not computed" in m["reason"] for m in doc["measurements"])
    assert all(d["reliable"] is False for d in doc["landmarks"])
    if kind == "lower_half":
        assert any("landmarks are not in the image (" in w for w in doc["quality"]["warnings"])


def test_a_crop_whose_answer_fits_the_anatomy_is_still_unreliable_when_landmarks_are_outside(model, isbi_dir_module):
    """The lower half of ISBI 154: the default model places sella and nasion above the picture, where they are, and the
    rest fits the shape model (found by benchmarks/trust.py); the image does not show the whole anatomy, so it is not
    reliable, and the verdict says which landmarks are missing."""
    img = load_image(isbi_dir_module / "images" / "154.jpg", default_spacing=(0.1, 0.1))
    half = like(img, img.array[img.shape[0] // 2 :])
    doc = analyse(model, half).to_dict()
    out = [d["name"] for d in doc["landmarks"] if not d["in_image"]]
    assert "sella" in out and "nasion" in out
    assert all(d["x"] is None and d["y"] is None for d in doc["landmarks"] if not d["in_image"])
    assert doc["quality"]["reliable"] is False
    assert any(f"{len(out)} of 19 landmarks are not in the image" in w for w in doc["quality"]["warnings"])
    assert all(m["value"] is None and m["reason"] for m in doc["measurements"])


def test_a_spine_xray_is_unreliable(model, aasce_dir):
    p = sorted((aasce_dir / "images").glob("*.jpg"))[0]
    img = load_image(p, default_spacing=(0.1, 0.1))
    doc = analyse(model, img).to_dict()
    assert doc["quality"]["reliable"] is False
    assert any("implausible shape" in w for w in doc["quality"]["warnings"])
    assert inside(doc, img.size_wh)
