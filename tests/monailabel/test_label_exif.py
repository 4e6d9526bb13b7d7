"""Results written "like the image" and labels read back from 3D Slicer use the stored frame of EXIF-oriented files.

anatomark's points are upright (EXIF ``Orientation`` applied, as OHIF shows the image); ITK, hence 3D Slicer, ignores
EXIF and shows the stored pixels. SimpleITK reads every file here as Slicer would: label maps and markups must land
on the pixels it shows, and what Slicer sends back in its frame must come back as the upright points.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from anatomark.config import load_landmark_set
from anatomark.data.annotations import slicer_markups_document
from anatomark.data.image_io import load_image
from anatomark.errors import AnnotationError
from anatomark.monailabel.labels import (
    draw_labelmap,
    file_exif_orientation,
    itk_raster_spacing,
    read_label_points,
    viewer_geometry,
    write_labelmap_like,
    write_markups_like,
)

LS = load_landmark_set("isbi2015_cephalometric")
ORIENTATIONS = [None, 1, 2, 3, 4, 5, 6, 7, 8]
H, W = 40, 60  # stored size (rows, columns): 5..8 show it as 40 wide, 60 high
# Landmarks 1..3 at these stored-pixel centres (x, y): asymmetric, so any wrong flip or transpose moves them.
STORED_POINTS = np.array([[7.0, 5.0], [44.0, 12.0], [20.0, 31.0]])


def _make_image(path: Path, orientation: int | None, dpi: tuple[int, int] | None = None) -> None:
    """A gray image with bright 3x3 markers at ``STORED_POINTS`` of its stored pixels, tagged with ``orientation``."""
    stored = np.full((H, W), 40, np.uint8)
    for x, y in STORED_POINTS.astype(int):
        stored[y - 1 : y + 2, x - 1 : x + 2] = 250
    kwargs: dict = {}
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kwargs["exif"] = exif
    if dpi:
        kwargs["dpi"] = dpi
    if path.suffix == ".jpg":
        kwargs["quality"] = 100
    Image.fromarray(stored).save(path, **kwargs)


def _markers(array: np.ndarray) -> np.ndarray:
    """(x, y) centroids of the bright markers of an image array, in ``STORED_POINTS`` order after matching."""
    from scipy import ndimage

    regions, n = ndimage.label(np.asarray(array) > 150)
    assert n == len(STORED_POINTS)
    return np.array([c[::-1] for c in ndimage.center_of_mass(np.ones_like(regions), regions, range(1, n + 1))])


def _upright_points(path: Path) -> np.ndarray:
    """Where anatomark (``load_image``, EXIF applied) sees the markers, in ``STORED_POINTS`` order.

    Matched to the stored markers through the pixel value written beside each one, not through the helpers under
    test: the marker found in the upright image is the one whose stored neighbourhood it is.
    """
    image = load_image(path)
    upright = _markers(image.array)
    stored = _markers(sitk.GetArrayFromImage(sitk.ReadImage(str(path))))  # ITK: the stored pixels
    np.testing.assert_allclose(np.sort(stored, axis=0), np.sort(STORED_POINTS, axis=0), atol=0.05)

    # the three markers form a triangle with distinct side lengths: match each upright marker by its distances
    def signature(p: np.ndarray) -> np.ndarray:
        return np.sort(np.linalg.norm(p[:, None] - p[None], axis=-1), axis=1)

    want, got = signature(STORED_POINTS), signature(upright)
    order = [int(np.argmin(np.abs(got - w).sum(axis=1))) for w in want]
    assert sorted(order) == [0, 1, 2]
    return upright[order]


def _landmark_points(points3: np.ndarray) -> np.ndarray:
    """``(K, 2)`` points of the set: the three given, the others missing."""
    pts = np.full((len(LS), 2), np.nan)
    pts[:3] = points3
    return pts


def _region_centroids(array: np.ndarray, values=(1, 2, 3)) -> np.ndarray:
    out = []
    for v in values:
        ys, xs = np.nonzero(np.asarray(array) == v)
        assert xs.size, f"value {v} absent"
        out.append([xs.mean(), ys.mean()])
    return np.array(out)


@pytest.fixture(params=[".jpg", ".png"])
def ext(request) -> str:
    return request.param


# ---------------------------------------------------------------------------------------------------- the frames
@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_upright_and_itk_frames_of_the_test_images(tmp_path, ext, orientation):
    """The fixture itself: anatomark shows the image turned by its tag, ITK as stored (no EXIF)."""
    path = tmp_path / f"img{ext}"
    _make_image(path, orientation)
    image = load_image(path)
    swaps = orientation in (5, 6, 7, 8)
    assert image.shape == ((W, H) if swaps else (H, W))
    assert sitk.ReadImage(str(path)).GetSize() == (W, H)
    assert file_exif_orientation(path) == (None if orientation in (None, 1) else orientation)
    up = _upright_points(path)
    if orientation in (None, 1):
        np.testing.assert_allclose(up, STORED_POINTS, atol=0.05)
    else:
        assert np.abs(up - STORED_POINTS).max() > 1  # the frames really differ


# ---------------------------------------------------------------------------------------------------- results
@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_infer_labelmap_overlays_the_image_as_itk_shows_it(tmp_path, ext, orientation):
    path = tmp_path / f"img{ext}"
    dpi = (150, 100) if ext == ".jpg" else None  # ITK reads a JPEG's JFIF density (anisotropic: a swap shows)
    _make_image(path, orientation, dpi)
    image = load_image(path)
    upright = _landmark_points(_upright_points(path))
    lm = draw_labelmap(upright, image, 1.0, len(LS))
    assert lm.shape == image.shape  # what the server draws: the upright frame
    out = write_labelmap_like(lm, path, str(tmp_path))

    itk_image, itk_label = sitk.ReadImage(str(path)), sitk.ReadImage(out)
    assert itk_label.GetSize() == itk_image.GetSize() == (W, H)
    assert itk_label.GetSpacing() == pytest.approx(itk_image.GetSpacing(), rel=1e-9)
    assert itk_label.GetOrigin() == itk_image.GetOrigin()
    assert itk_label.GetDirection() == itk_image.GetDirection()
    if dpi:
        assert itk_label.GetSpacing() == pytest.approx((25.4 / 150, 25.4 / 100))
        with Image.open(out) as im:  # the dpi copied is that of the stored grid, x still 150
            assert im.info["dpi"] == pytest.approx(dpi, abs=0.05)  # pHYs: integer dots per metre
    # each landmark's disk sits on its marker as ITK shows the image
    np.testing.assert_allclose(_region_centroids(sitk.GetArrayFromImage(itk_label)), STORED_POINTS, atol=0.05)


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_infer_markups_land_on_the_itk_pixels(tmp_path, ext, orientation):
    path = tmp_path / f"img{ext}"
    _make_image(path, orientation, (150, 100) if ext == ".jpg" else None)
    image = load_image(path)
    upright = _landmark_points(_upright_points(path))
    doc = json.loads(Path(write_markups_like(upright, LS, viewer_geometry(path, image), str(tmp_path))).read_text())
    cps = doc["markups"][0]["controlPoints"]
    itk_image = sitk.ReadImage(str(path))
    for cp, (x, y) in zip(cps[:3], STORED_POINTS):
        assert cp["positionStatus"] == "defined"
        want = itk_image.TransformContinuousIndexToPhysicalPoint((float(x), float(y)))  # LPS, as Slicer places it
        assert cp["position"][:2] == pytest.approx(want, abs=0.03), cp["label"]
    assert all(cp["positionStatus"] == "undefined" for cp in cps[3:])


def test_labelmap_that_does_not_fit_the_stored_image_is_refused(tmp_path):
    path = tmp_path / "img.jpg"
    _make_image(path, 6)
    with pytest.raises(ValueError, match="stored 60x40"):
        write_labelmap_like(np.zeros((H, W), np.uint8), path, str(tmp_path))  # a stored-frame map passed as upright


# ---------------------------------------------------------------------------------------------------- labels from Slicer
def _slicer_labelmap(tmp_path: Path, image_path: Path) -> Path:
    """What Slicer saves: a label map on the image's ITK grid (its geometry copied), disks k at the markers."""
    ref = sitk.ReadImage(str(image_path))
    yy, xx = np.mgrid[:H, :W]
    arr = np.zeros((H, W), np.uint8)
    for k, (x, y) in enumerate(STORED_POINTS, start=1):
        arr[(xx - x) ** 2 + (yy - y) ** 2 <= 2.0**2] = 10 + k
    label = sitk.GetImageFromArray(arr)
    label.CopyInformation(ref)
    out = tmp_path / "slicer_label.png"
    sitk.WriteImage(label, str(out))
    return out


def _slicer_markups(tmp_path: Path, image_path: Path, coordinate_system: str = "LPS") -> Path:
    """A point list placed in Slicer on the markers (positions = ITK physical points of the stored pixels)."""
    ref = sitk.ReadImage(str(image_path))
    doc = slicer_markups_document(
        _landmark_points(STORED_POINTS), LS.names, ref.GetSpacing(), ref.GetOrigin()
    )  # pixel -> LPS with the ITK spacing and origin
    for cp, (x, y) in zip(doc["markups"][0]["controlPoints"], STORED_POINTS):
        assert cp["position"][:2] == pytest.approx(ref.TransformContinuousIndexToPhysicalPoint((x, y)))
    if coordinate_system == "RAS":
        doc["markups"][0]["coordinateSystem"] = "RAS"
        for cp in doc["markups"][0]["controlPoints"]:
            cp["position"] = [-cp["position"][0], -cp["position"][1], cp["position"][2]]
    out = tmp_path / "slicer.mrk.json"
    out.write_text(json.dumps(doc))
    return out


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_slicer_labelmap_is_read_back_as_upright_points(tmp_path, ext, orientation):
    path = tmp_path / f"img{ext}"
    _make_image(path, orientation, (150, 100) if ext == ".jpg" else None)
    image = load_image(path)
    label = _slicer_labelmap(tmp_path, path)
    info = [{"name": n, "idx": 10 + k} for k, n in enumerate(LS.names[:3], start=1)]
    pts = read_label_points(label, image, path, LS, info)
    np.testing.assert_allclose(pts[:3], _upright_points(path), atol=0.5)
    assert np.isnan(pts[3:]).all()


@pytest.mark.parametrize("coordinate_system", ["LPS", "RAS"])
@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_slicer_markups_are_read_back_as_upright_points(tmp_path, ext, orientation, coordinate_system):
    path = tmp_path / f"img{ext}"
    _make_image(path, orientation, (150, 100) if ext == ".jpg" else None)
    image = load_image(path)
    pts = read_label_points(_slicer_markups(tmp_path, path, coordinate_system), image, path, LS)
    np.testing.assert_allclose(pts[:3], _upright_points(path), atol=0.5)
    assert np.isnan(pts[3:]).all()


@pytest.mark.parametrize("orientation", [5, 6, 7, 8])
def test_upright_sized_labelmap_is_refused_naming_the_stored_frame(tmp_path, orientation):
    path = tmp_path / "img.jpg"
    _make_image(path, orientation)
    image = load_image(path)
    upright_map = draw_labelmap(_landmark_points(_upright_points(path)), image, 1.0, len(LS))
    label = tmp_path / "upright.png"
    Image.fromarray(upright_map).save(label)
    with pytest.raises(
        AnnotationError,
        match=rf"40x60 px but the image is stored as 60x40 px \(EXIF orientation {orientation}, shown upright as 40x60",
    ):
        read_label_points(label, image, path, LS)


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_round_trip_of_our_results_is_exact(tmp_path, ext, orientation):
    """A result written like the image and sent back unchanged (what Slicer does) gives the points again."""
    path = tmp_path / f"img{ext}"
    _make_image(path, orientation, (150, 100) if ext == ".jpg" else None)
    image = load_image(path)
    w, h = image.size_wh
    upright = _landmark_points(np.array([[3.0, 4.0], [w - 5.0, 10.0], [12.0, h - 6.0]]))  # on pixel centres
    geometry = viewer_geometry(path, image)
    markups = Path(write_markups_like(upright, LS, geometry, str(tmp_path)))
    np.testing.assert_allclose(read_label_points(markups, image, path, LS)[:3], upright[:3], atol=1e-9)
    labelmap = Path(write_labelmap_like(draw_labelmap(upright, image, 1.0, len(LS)), path, str(tmp_path)))
    np.testing.assert_allclose(read_label_points(labelmap, image, path, LS)[:3], upright[:3], atol=0.5)


@pytest.mark.parametrize("orientation", [None, 3, 6])
def test_our_json_points_stay_upright(tmp_path, orientation):
    path = tmp_path / "img.jpg"
    _make_image(path, orientation)
    image = load_image(path)
    doc = {"landmarks": [{"name": LS.names[0], "x": 3.0, "y": 17.5}, {"name": LS.names[1], "x": 30.25, "y": 2.0}]}
    label = tmp_path / "ours.json"
    label.write_text(json.dumps(doc))
    pts = read_label_points(label, image, path, LS)
    assert pts[:2].tolist() == [[3.0, 17.5], [30.25, 2.0]]


def test_geometry_of_files_without_exif_is_unchanged(tmp_path):
    import nibabel as nib

    nii = tmp_path / "img.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((W, H, 1), np.float32), np.diag([-0.2, -0.3, 1.0, 1.0])), nii)
    image = load_image(nii)
    geometry = viewer_geometry(nii, image)
    assert geometry.exif_orientation is None and file_exif_orientation(nii) is None
    pts = np.array([[1.0, 2.0], [np.nan, np.nan]])
    np.testing.assert_array_equal(geometry.to_viewer(pts), pts)
    lm = np.zeros(image.shape, np.uint8)
    lm[2, 1] = 1
    back = nib.load(write_labelmap_like(lm, nii, str(tmp_path)))
    assert back.shape[:2] == (W, H) and np.asarray(back.dataobj)[1, 2, 0] == 1


def test_itk_spacing_rules(tmp_path):
    """ITK's raster spacing: JPEG JFIF density, PNG sCAL (not pHYs); our label PNG carries it in sCAL."""
    a = np.zeros((H, W), np.uint8)
    Image.fromarray(a).save(tmp_path / "dpi.jpg", dpi=(150, 100))
    Image.fromarray(a).save(tmp_path / "nodpi.jpg")
    Image.fromarray(a).save(tmp_path / "dpi.png", dpi=(254, 254))
    scal = sitk.GetImageFromArray(a)
    scal.SetSpacing((0.2, 0.35))
    sitk.WriteImage(scal, str(tmp_path / "scal.png"))
    for name in ("dpi.jpg", "nodpi.jpg", "dpi.png", "scal.png"):
        itk = sitk.ReadImage(str(tmp_path / name)).GetSpacing()
        ours = itk_raster_spacing(tmp_path / name)
        assert (ours or (1.0, 1.0)) == pytest.approx(itk, rel=1e-9), name
    out = write_labelmap_like(a, tmp_path / "scal.png", str(tmp_path))
    assert sitk.ReadImage(out).GetSpacing() == pytest.approx((0.2, 0.35))


# ---------------------------------------------------------------------------------------------------- real server
def test_server_round_trip_of_an_orientation_6_jpeg(isbi, tmp_path_factory):
    from mlserver_constants import MODEL
    from mlserver_process import start_server, stop_server
    from monailabel.client import MONAILabelClient

    from anatomark.data.annotations import read_landmark_csv
    from anatomark.paths import model_dir

    if not (model_dir() / f"{MODEL}.pt").is_file():
        pytest.skip(f"Shipped weights {model_dir() / (MODEL + '.pt')} not found")
    root = tmp_path_factory.mktemp("exif_server")
    studies = root / "studies"
    studies.mkdir()
    uw, uh = 387, 480  # upright size (ISBI 151 at 1/5)
    with Image.open(isbi / "images" / "151.jpg") as im:
        upright_im = im.convert("L").resize((uw, uh), Image.BILINEAR)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to show": stored turned counter-clockwise (PIL's ROTATE_90)
    upright_im.transpose(Image.Transpose.ROTATE_90).save(studies / "rot6.jpg", exif=exif, dpi=(254, 127), quality=95)
    image_path = studies / "rot6.jpg"
    itk_image = sitk.ReadImage(str(image_path))
    assert itk_image.GetSize() == (uh, uw)  # Slicer shows it 480 wide, 387 high
    assert itk_image.GetSpacing() == pytest.approx((0.1, 0.2))

    def to_stored(p: np.ndarray) -> np.ndarray:  # upright (x, y) -> stored pixel, written out for ROTATE_90
        return np.column_stack([p[:, 1], uw - 1 - p[:, 0]])

    truth = read_landmark_csv(isbi / "landmarks_senior.csv", LS.names)["151.jpg"] * (uw / 1935, uh / 2400)
    srv = start_server(root, studies, {"models": MODEL})
    try:
        client = MONAILabelClient(srv.url, tmpdir=str(tmp_path_factory.mktemp("exif_client")))
        path, res = client.infer(MODEL, "rot6", {})
        assert res["size_wh"] == [uw, uh]  # the JSON points are upright (OHIF's frame)
        itk_label = sitk.ReadImage(path)
        assert itk_label.GetSize() == itk_image.GetSize()
        assert itk_label.GetSpacing() == pytest.approx(itk_image.GetSpacing())
        pred = np.array([[e["x"], e["y"]] for e in res["landmarks"]])
        error_px = float(np.linalg.norm(pred - truth, axis=1).mean())
        assert error_px < 15  # the model saw the image upright
        label = sitk.GetArrayFromImage(itk_label)
        stored_pred = to_stored(pred)
        far = 2 * res["label_radius_px"] + 2  # a disk with no close neighbour has value k at its centre
        for k, (x, y) in enumerate(stored_pred, start=1):
            if np.linalg.norm(np.delete(stored_pred, k - 1, axis=0) - (x, y), axis=1).min() > far:
                assert label[int(round(y)), int(round(x))] == k, LS.names[k - 1]

        # a point list placed in Slicer on the stored grid it shows
        stored_truth = to_stored(truth)
        doc = slicer_markups_document(stored_truth, LS.names, itk_image.GetSpacing(), itk_image.GetOrigin())
        for cp, (x, y) in zip(doc["markups"][0]["controlPoints"], stored_truth):
            assert cp["position"][:2] == pytest.approx(itk_image.TransformContinuousIndexToPhysicalPoint((x, y)))
        mrk = root / "rot6.mrk.json"
        mrk.write_text(json.dumps(doc))
        client.save_label("rot6", str(mrk), tag="final")
        stored = client.datastore()["objects"]["rot6"]["labels"]["final"]["info"]["landmarks"]
        np.testing.assert_allclose(np.array(stored, dtype=float), truth, atol=0.5)  # upright points in the datastore
        saved = sitk.ReadImage(client.download_label("rot6", "final"))  # the stored label map overlays in Slicer
        assert saved.GetSize() == itk_image.GetSize()
        x0, y0 = np.round(stored_truth[0]).astype(int)
        assert sitk.GetArrayFromImage(saved)[y0, x0] == 1
    finally:
        stop_server(srv)
