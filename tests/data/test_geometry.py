"""Slicer markups land on the pixels 3D Slicer shows: every file read by SimpleITK, as Slicer (ITK) reads it.

A point written for pixel (x, y) must come back from ITK's ``TransformPhysicalPointToContinuousIndex`` as (x, y) of
the grid ITK shows (the stored grid of an EXIF-oriented JPEG), and :func:`viewer_geometry` must give ITK's spacing.
The CLI (``anatomark infer --markups``) and the server use the same function.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from PIL import Image

from anatomark.cli import main
from anatomark.config import LandmarkSet
from anatomark.data.dicom_write import write_dicom
from anatomark.data.geometry import itk_raster_spacing, markups_document, markups_points, viewer_geometry
from anatomark.data.image_io import load_image
from anatomark.model import save_model_file
from anatomark.monailabel.labels import write_markups_like
from anatomark.networks import build_network

H, W = 40, 60
NAMES = ["a", "b", "c", "d"]
# pixel centres, a sub-pixel point and a missing one
POINTS = np.array([[3.0, 4.0], [51.0, 7.0], [20.25, 33.5], [np.nan, np.nan]])


def _gray() -> Image.Image:
    return Image.fromarray(((np.arange(H * W).reshape(H, W) * 7) % 251).astype(np.uint8))


def _jfif(path: Path, unit: int, density: tuple[int, int]) -> None:
    """A JPEG with the JFIF density fields set by hand (Pillow writes units 0 and 1 only)."""
    buf = io.BytesIO()
    _gray().save(buf, "JPEG")
    b = bytearray(buf.getvalue())
    i = b.find(b"JFIF\0")
    b[i + 7] = unit
    b[i + 8 : i + 10], b[i + 10 : i + 12] = density[0].to_bytes(2, "big"), density[1].to_bytes(2, "big")
    path.write_bytes(bytes(b))


def _raster(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    im = _gray()
    if name == "plain.png":
        im.save(path)
    elif name == "dpi72.png":
        im.save(path, dpi=(72, 72))  # pHYs: ITK ignores it (1 mm/px)
    elif name == "dpi254x127.png":
        im.save(path, dpi=(254, 127))
    elif name == "scal.png":
        itk = sitk.GetImageFromArray(np.asarray(im))
        itk.SetSpacing((0.2, 0.35))  # ITK writes (and reads) sCAL
        sitk.WriteImage(itk, str(path))
    elif name == "dpi72.bmp":
        im.save(path, dpi=(72, 72))  # ITK ignores a BMP's resolution
    elif name == "dpi254.bmp":
        im.save(path, dpi=(254, 254))
    elif name == "plain.jpg":
        im.save(path, quality=95)  # JFIF unit 0, density 1:1
    elif name == "dpi72.jpg":
        im.save(path, dpi=(72, 72))
    elif name == "dpi254x127.jpg":
        im.save(path, dpi=(254, 127))
    elif name == "cm.jpg":
        _jfif(path, 2, (100, 50))  # dots per cm: 0.1 x 0.2 mm
    elif name == "aspect.jpg":
        _jfif(path, 0, (2, 1))  # unit 0: an aspect ratio only, ITK ignores it
    elif name == "inch.tif":
        im.save(path, tiffinfo={282: 254.0, 283: 127.0, 296: 2})
    elif name == "cm.tif":
        im.save(path, tiffinfo={282: 100.0, 283: 50.0, 296: 3})
    elif name == "nounit.tif":
        im.save(path, tiffinfo={282: 254.0, 283: 127.0, 296: 1})
    elif name == "default_unit.tif":
        im.save(path, tiffinfo={282: 254.0, 283: 127.0})  # no unit tag: Pillow says 254 dpi, ITK 1 mm
    else:
        raise KeyError(name)
    return path


RASTERS = [
    "plain.png", "dpi72.png", "dpi254x127.png", "scal.png", "dpi72.bmp", "dpi254.bmp", "plain.jpg", "dpi72.jpg",
    "dpi254x127.jpg", "cm.jpg", "aspect.jpg", "inch.tif", "cm.tif", "nounit.tif", "default_unit.tif",
]  # fmt: skip


def _assert_on_itk_pixels(doc: dict, itk: sitk.Image, grid_points: np.ndarray, atol: float = 1e-6) -> None:
    """Each defined control point, mapped back by ITK, is the grid pixel it was written for."""
    cps = doc["markups"][0]["controlPoints"]
    assert doc["markups"][0]["coordinateSystem"] == "LPS"
    for cp, p in zip(cps, grid_points):
        if np.isnan(p).any():
            assert cp["positionStatus"] == "undefined"
            continue
        assert cp["positionStatus"] == "defined"
        pos = cp["position"] if itk.GetDimension() == 3 else cp["position"][:2]
        index = itk.TransformPhysicalPointToContinuousIndex([float(v) for v in pos])
        assert index[:2] == pytest.approx(tuple(p), abs=atol), cp["label"]
        if itk.GetDimension() == 3:
            assert index[2] == pytest.approx(0.0, abs=1e-6)  # on the image plane


@pytest.mark.parametrize("name", RASTERS)
def test_raster_markups_land_on_the_itk_pixels(tmp_path, name):
    path = _raster(tmp_path, name)
    itk = sitk.ReadImage(str(path))
    geometry = viewer_geometry(path, load_image(path))
    assert geometry.spacing == pytest.approx(itk.GetSpacing(), rel=1e-9)
    assert (itk_raster_spacing(path) or (1.0, 1.0)) == pytest.approx(itk.GetSpacing(), rel=1e-9)
    doc = markups_document(POINTS, NAMES, geometry)
    _assert_on_itk_pixels(doc, itk, POINTS)
    np.testing.assert_allclose(markups_points(doc, NAMES, geometry), POINTS, atol=1e-9)


def test_a_72_dpi_png_is_at_1_mm_per_pixel_as_itk_reads_it(tmp_path):
    """The bug this guards against: pHYs taken for the spacing put points at 0.35x their pixel."""
    path = _raster(tmp_path, "dpi72.png")
    doc = markups_document(POINTS, NAMES, viewer_geometry(path, load_image(path)))
    assert doc["markups"][0]["controlPoints"][1]["position"] == [51.0, 7.0, 0.0]


def _dicom(tmp_path: Path, name: str) -> Path:
    src = tmp_path / "src.png"
    _gray().save(src)
    modality = {"CR": "CR", "SC": "SC"}.get(name.split("_")[0], "DX")
    path = write_dicom(src, tmp_path / f"{name}.dcm", spacing=(0.1, 0.2), modality=modality).path
    ds = pydicom.dcmread(path)
    if name == "DX_magnified":
        ds.EstimatedRadiographicMagnificationFactor = 1.1  # our loader divides, ITK does not
    elif name == "CR_pixelspacing":
        ds.PixelSpacing = [0.3, 0.4]  # ITK takes ImagerPixelSpacing for CR/DX
    elif name == "DX_position":
        ds.ImagePositionPatient = [10.0, -20.0, 30.0]
    elif name == "DX_flipped":
        ds.ImagePositionPatient = [5.0, 6.0, 7.0]
        ds.ImageOrientationPatient = [-1, 0, 0, 0, -1, 0]
    elif name == "DX_transposed":
        ds.ImagePositionPatient = [5.0, 6.0, 7.0]
        ds.ImageOrientationPatient = [0, 1, 0, 1, 0, 0]
    elif name == "DX_sagittal":  # a lateral projection declared in the sagittal plane: rows anterior-ward, columns down
        ds.ImagePositionPatient = [0.0, -100.0, 120.0]
        ds.ImageOrientationPatient = [0, -1, 0, 0, 0, -1]
    ds.save_as(path)
    return Path(path)


DICOMS = ["DX", "CR", "SC", "DX_magnified", "CR_pixelspacing", "DX_position", "DX_flipped", "DX_transposed",
          "DX_sagittal"]  # fmt: skip


@pytest.mark.parametrize("name", DICOMS)
def test_dicom_markups_land_on_the_itk_pixels(tmp_path, name):
    path = _dicom(tmp_path, name)
    itk = sitk.ReadImage(str(path))
    image = load_image(path)
    geometry = viewer_geometry(path, image)
    assert geometry.spacing == pytest.approx(itk.GetSpacing()[:2], rel=1e-9)
    if name == "DX_magnified":
        assert image.spacing != pytest.approx(geometry.spacing)  # measured in mm at the patient, shown at the detector
    doc = markups_document(POINTS, NAMES, geometry)
    _assert_on_itk_pixels(doc, itk, POINTS)
    np.testing.assert_allclose(markups_points(doc, NAMES, geometry), POINTS, atol=1e-9)


def test_user_spacing_does_not_move_the_points_in_slicer(tmp_path):
    path = _dicom(tmp_path, "DX")
    overridden = load_image(path, spacing=0.5)  # what `infer --spacing 0.5` measures in
    doc = markups_document(POINTS, NAMES, viewer_geometry(path, overridden))
    _assert_on_itk_pixels(doc, sitk.ReadImage(str(path)), POINTS)


def _volume_file(tmp_path: Path, name: str) -> Path:
    import nibabel as nib
    import nrrd

    data = np.asarray(_gray()).T.astype(np.float32)  # [x, y]
    if name == "axial.nii.gz":
        nib.save(nib.Nifti1Image(data[:, :, None], np.diag([-0.2, -0.3, 1.0, 1.0])), tmp_path / name)
    elif name == "shifted.nii.gz":
        affine = np.diag([0.2, -0.3, 1.0, 1.0])
        affine[:3, 3] = [12.0, -7.0, 3.0]
        nib.save(nib.Nifti1Image(data[:, :, None], affine), tmp_path / name)
    elif name == "rotated.nii.gz":  # x along RAS y, y along RAS -x
        affine = np.array([[0.0, -0.3, 0.0, 4.0], [0.2, 0.0, 0.0, 5.0], [0.0, 0.0, 1.0, 6.0], [0, 0, 0, 1.0]])
        nib.save(nib.Nifti1Image(data[:, :, None], affine), tmp_path / name)
    elif name == "vector.nii.gz":  # what Slicer saves for a colour JPG: a (W, H, 1, 1, 3) vector volume
        rgb = tmp_path / "colour.jpg"
        Image.fromarray(np.stack([np.asarray(_gray())] * 3, axis=-1)).save(rgb, dpi=(254, 254))
        sitk.WriteImage(sitk.ReadImage(str(rgb)), str(tmp_path / name))
    elif name == "ras.nrrd":
        header = {"space": "right-anterior-superior", "space directions": np.diag([-0.25, 0.5, 1.0]),
                  "space origin": np.array([3.0, 4.0, 5.0])}  # fmt: skip
        nrrd.write(str(tmp_path / name), data[:, :, None], header, index_order="F")
    elif name == "plain2d.nrrd":  # 2D space without a name (ITK: as LPS)
        header = {"space dimension": 2, "space directions": np.diag([0.25, 0.5]), "space origin": np.array([1.0, 2.0])}
        nrrd.write(str(tmp_path / name), data, header, index_order="F")
    else:
        raise KeyError(name)
    return tmp_path / name


@pytest.mark.parametrize("name", ["axial.nii.gz", "shifted.nii.gz", "rotated.nii.gz", "vector.nii.gz", "ras.nrrd",
                                  "plain2d.nrrd"])  # fmt: skip
def test_nifti_and_nrrd_markups_land_on_the_itk_pixels(tmp_path, name):
    path = _volume_file(tmp_path, name)
    itk = sitk.ReadImage(str(path))
    image = load_image(path)
    assert image.size_wh == (W, H)
    geometry = viewer_geometry(path, image)
    assert geometry.spacing == pytest.approx(itk.GetSpacing()[:2], rel=1e-6)
    doc = markups_document(POINTS, NAMES, geometry)
    _assert_on_itk_pixels(doc, itk, POINTS)
    np.testing.assert_allclose(markups_points(doc, NAMES, geometry), POINTS, atol=1e-9)


def test_markups_sent_in_ras_or_off_the_plane_come_back_on_the_pixels(tmp_path):
    path = _dicom(tmp_path, "DX_sagittal")
    geometry = viewer_geometry(path, load_image(path))
    doc = markups_document(POINTS, NAMES, geometry)
    m = doc["markups"][0]
    m["coordinateSystem"] = "RAS"
    for cp in m["controlPoints"]:
        x, y, z = cp["position"]
        cp["position"] = [-x - 0.7, -y, z]  # RAS, and 0.7 mm off the sagittal plane (along its normal, LPS x)
    np.testing.assert_allclose(markups_points(doc, NAMES, geometry), POINTS, atol=1e-9)


# ---------------------------------------------------------------------------------------------------- CLI = server
TWO_SET = LandmarkSet(name="four", names=NAMES, default_spacing_mm=(0.1, 0.1))


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """An untrained four-landmark model (0.1 mm/px default, as the ISBI set): file handling, not accuracy."""
    recipe = {
        "name": "tiny",
        "landmark_set": "four",
        "network": {"name": "heatmap_unet", "spatial_dims": 2, "features": [4, 4, 8, 8, 8, 4]},
        "input": {"size_hw": [32, 32]},
        "train": {},
    }
    net = build_network(recipe["network"], out_channels=len(NAMES))
    return save_model_file(tmp_path_factory.mktemp("m") / "tiny.pt", net, recipe, TWO_SET)


def _cli_case(tmp_path: Path, name: str) -> tuple[Path, int | None]:
    if name == "exif6.jpg":  # stored 60x40, shown upright 40x60 by anatomark; Slicer shows it as stored
        exif = Image.Exif()
        exif[0x0112] = 6
        _gray().save(tmp_path / name, dpi=(150, 100), exif=exif)
        return tmp_path / name, 6
    if name.endswith(".dcm"):
        return _dicom(tmp_path, "DX_magnified"), None
    return _raster(tmp_path, name), None


@pytest.mark.parametrize("name", ["plain.jpg", "dpi72.png", "dpi72.bmp", "exif6.jpg", "dx.dcm"])
def test_cli_markups_are_on_the_itk_pixels_and_equal_the_servers(tiny_model, tmp_path, name):
    path, orientation = _cli_case(tmp_path, name)
    out = tmp_path / "out"
    assert main(["infer", str(path), "--model", str(tiny_model), "--out", str(out), "--markups", "--no-overlay"]) == 0
    stem = path.name.split(".")[0]
    result = json.loads((out / f"{stem}.json").read_text())
    doc = json.loads((out / f"{stem}.mrk.json").read_text())
    upright = np.array(
        [[np.nan, np.nan] if e.get("x") is None or not e.get("in_image", True) else [e["x"], e["y"]]
         for e in result["landmarks"]]
    )  # fmt: skip
    assert np.isfinite(upright).all(axis=1).any()
    if orientation == 6:  # upright (x, y) of a 40-wide, 60-high view is stored pixel (y, 39 - x)
        grid = np.stack([upright[:, 1], (H - 1) - upright[:, 0]], axis=1)
    else:
        grid = upright
    _assert_on_itk_pixels(doc, sitk.ReadImage(str(path)), grid, atol=6e-3)  # the JSON rounds to 0.01 px
    # the server writes the same document for the same points
    image = load_image(path, default_spacing=TWO_SET.default_spacing_mm)
    server = json.loads(
        Path(write_markups_like(upright, TWO_SET, viewer_geometry(path, image), str(tmp_path))).read_text()
    )
    for a, b in zip(doc["markups"][0]["controlPoints"], server["markups"][0]["controlPoints"]):
        assert a["label"] == b["label"] and a["positionStatus"] == b["positionStatus"]
        assert a["position"] == pytest.approx(b["position"], abs=6e-3)
