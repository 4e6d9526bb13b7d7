"""Labels put into the datastore by hand, and label maps for Slicer's vector NIfTI, in the frame 3D Slicer shows.

A label map dropped into ``labels/final`` is read like a saved one: on the stored pixel grid of an EXIF-oriented
JPEG (what ITK, hence Slicer, shows), converted to anatomark's upright points. SimpleITK reads the files as Slicer.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from anatomark.config import load_landmark_set
from anatomark.data.image_io import load_image
from anatomark.monailabel.labels import draw_labelmap, read_label_points, write_labelmap_like

LS = load_landmark_set("isbi2015_cephalometric")
H, W = 40, 60  # stored rows, columns
STORED = np.array([[7.0, 5.0], [44.0, 12.0], [20.0, 31.0]])  # (x, y) stored pixels of landmarks 1..3


def _labelmap_on_stored_grid() -> np.ndarray:
    yy, xx = np.mgrid[:H, :W]
    lm = np.zeros((H, W), np.uint8)
    for k, (x, y) in enumerate(STORED, start=1):
        lm[(xx - x) ** 2 + (yy - y) ** 2 <= 2.0**2] = k
    return lm


def test_a_label_map_dropped_into_the_folder_is_read_in_the_stored_frame(tmp_path):
    from anatomark.monailabel.datastore import LandmarkDatastore

    studies = tmp_path / "studies"
    (studies / "labels" / "final").mkdir(parents=True)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 60x40, shown (by anatomark, OHIF) rotated to 40x60
    Image.fromarray(np.full((H, W), 60, np.uint8)).save(studies / "a.jpg", exif=exif)
    Image.fromarray(_labelmap_on_stored_grid()).save(studies / "labels" / "final" / "a.png")  # as Slicer saves it
    assert sitk.ReadImage(str(studies / "labels" / "final" / "a.png")).GetSize() == (W, H)
    ds = LandmarkDatastore(str(studies), LS, extensions=["*.jpg", "*.png"])
    got = ds.label_points("a", "final")
    assert got is not None
    points, _ = got
    # orientation 6: stored pixel (xs, ys) is upright pixel (H - 1 - ys, xs)
    upright = np.stack([(H - 1) - STORED[:, 1], STORED[:, 0]], axis=1)
    np.testing.assert_allclose(points[:3], upright, atol=1e-9)
    assert np.isnan(points[3:]).all()
    assert load_image(studies / "a.jpg").shape == (W, H)


def test_label_map_for_a_vector_nifti_overlays_it_in_itk(tmp_path):
    """Slicer's colour JPG saved as NIfTI, (W, H, 1, 1, 3): our label map is a scalar image on its exact grid."""
    rgb = tmp_path / "colour.jpg"
    Image.fromarray(np.full((H, W, 3), 90, np.uint8)).save(rgb, dpi=(254, 127))
    nii = tmp_path / "colour.nii.gz"
    sitk.WriteImage(sitk.ReadImage(str(rgb)), str(nii))
    image = load_image(nii)
    assert image.shape == (H, W)
    pts = np.full((len(LS), 2), np.nan)
    pts[:3] = STORED  # NIfTI has no EXIF: both frames are the same
    out = write_labelmap_like(draw_labelmap(pts, image, 2.0, len(LS)), nii, str(tmp_path))
    ref, label = sitk.ReadImage(str(nii)), sitk.ReadImage(out)
    assert label.GetNumberOfComponentsPerPixel() == 1 and ref.GetNumberOfComponentsPerPixel() == 3
    assert label.GetSize()[:2] == ref.GetSize()[:2] == (W, H)
    assert label.GetSpacing()[:2] == pytest.approx(ref.GetSpacing()[:2])
    assert ref.GetSpacing()[:2] == pytest.approx((0.1, 0.2))
    assert label.GetOrigin()[:2] == pytest.approx(ref.GetOrigin()[:2])
    arr = sitk.GetArrayFromImage(label).reshape(H, W)
    for k, (x, y) in enumerate(STORED, start=1):
        ys, xs = np.nonzero(arr == k)
        assert (xs.mean(), ys.mean()) == pytest.approx((x, y), abs=1e-6)
    np.testing.assert_allclose(read_label_points(out, image, nii, LS)[:3], STORED, atol=1e-6)
