"""Images of every supported type load with the right orientation and spacing; bad files fail clearly."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from anatomark.data.image_io import load_image, save_png
from anatomark.errors import ImageReadError


@pytest.fixture
def gradient():
    """(H=40, W=30) image whose value encodes the position: 100 * row + col."""
    yy, xx = np.mgrid[0:40, 0:30]
    return (100 * yy + xx).astype(np.uint16)


def test_png_16bit(tmp_path, gradient):
    Image.fromarray(gradient).save(tmp_path / "a.png")
    img = load_image(tmp_path / "a.png")
    assert img.shape == (40, 30)
    assert img.array[39, 29] == 3929 and img.array[0, 5] == 5
    assert img.spacing_source == "none" and img.spacing == (1.0, 1.0)
    assert img.meta["bits"] == 16


@pytest.mark.parametrize("ext", [".png", ".bmp", ".jpg"])
def test_8bit_rgb_folded_to_gray(tmp_path, ext):
    rgb = np.zeros((20, 16, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 30, 60, 90
    Image.fromarray(rgb).save(tmp_path / f"a{ext}")
    img = load_image(tmp_path / f"a{ext}", default_spacing=(0.1, 0.1))
    assert img.array.ndim == 2 and img.shape == (20, 16)
    assert abs(float(img.array.mean()) - (0.299 * 30 + 0.587 * 60 + 0.114 * 90)) < 3  # luma
    assert img.spacing == (0.1, 0.1) and img.spacing_source == "default"


#: What a viewer shows for stored pixels ``s`` under each EXIF Orientation (from the EXIF 2.3 definitions: where the
#: stored 0th row and 0th column appear), written independently of PIL's table.
EXIF_DISPLAY = {
    1: lambda s: s,
    2: lambda s: s[:, ::-1],  # 0th row top, 0th column right
    3: lambda s: s[::-1, ::-1],  # bottom, right
    4: lambda s: s[::-1, :],  # bottom, left
    5: lambda s: s.T,  # 0th row left, 0th column top
    6: lambda s: np.rot90(s, -1),  # right, top: a phone held upright; the viewer turns it 90 deg clockwise
    7: lambda s: s.T[::-1, ::-1],  # right, bottom
    8: lambda s: np.rot90(s, 1),  # left, bottom
}


def save_with_orientation(path, stored, orientation, **kwargs):
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    Image.fromarray(stored).save(path, exif=exif, **kwargs)
    return path


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_applied(tmp_path, gradient, orientation):
    p = save_with_orientation(tmp_path / "a.png", gradient, orientation)
    img = load_image(p)
    expected = EXIF_DISPLAY[orientation](gradient)
    assert img.shape == expected.shape
    np.testing.assert_array_equal(img.array, expected.astype(np.float32))
    assert img.exif_orientation == orientation


def test_exif_rotated_jpeg_read_upright(tmp_path):
    """A JPEG stored sideways with Orientation=6 (what viewers show upright) is read upright: (H, W) = (60, 40)."""
    upright = np.zeros((60, 40), np.uint8)
    upright[:20, :20] = 250  # bright top-left block
    upright[40:, 30:] = 120  # grey bottom-right block
    stored = np.rot90(upright, 1)  # the pixels as a sensor lying on its side stores them: (40, 60)
    p = save_with_orientation(tmp_path / "side.jpg", np.ascontiguousarray(stored), 6, quality=95)
    img = load_image(p)
    assert img.shape == (60, 40) and img.size_wh == (40, 60) and img.exif_orientation == 6
    assert float(np.abs(img.array - upright).mean()) < 3
    assert img.array[5, 5] > 200 and img.array[55, 35] == pytest.approx(120, abs=10) and img.array[5, 35] < 20


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_frame_helpers_map_back_to_stored_pixels(gradient, orientation):
    """What a tool that ignores EXIF (ITK / 3D Slicer) needs: upright points and label maps in the stored frame."""
    from anatomark.data.image_io import exif_from_stored, exif_stored_array, exif_stored_size_wh, exif_to_stored

    stored = gradient  # (H=40, W=30); value = 100 * row + col
    upright = EXIF_DISPLAY[orientation](stored)
    size_wh = (upright.shape[1], upright.shape[0])
    assert exif_stored_size_wh(size_wh, orientation) == (30, 40)
    np.testing.assert_array_equal(exif_stored_array(upright, orientation), stored)
    yy, xx = np.mgrid[0 : upright.shape[0], 0 : upright.shape[1]]
    pts = np.stack([xx.ravel(), yy.ravel()], axis=1).astype(np.float64)
    sp = exif_to_stored(pts, orientation, size_wh)
    np.testing.assert_array_equal(stored[sp[:, 1].astype(int), sp[:, 0].astype(int)], upright.ravel())
    np.testing.assert_allclose(exif_from_stored(sp, orientation, size_wh), pts)
    sub = np.array([[2.25, 3.5], [np.nan, np.nan]])
    np.testing.assert_allclose(exif_from_stored(exif_to_stored(sub, orientation, size_wh), orientation, size_wh), sub)


@pytest.mark.parametrize("orientation", [None, 0, 9])
def test_no_or_invalid_exif_orientation_leaves_pixels(tmp_path, gradient, orientation):
    p = save_with_orientation(tmp_path / "a.png", gradient, orientation)
    img = load_image(p)
    np.testing.assert_array_equal(img.array, gradient.astype(np.float32))
    assert img.exif_orientation is None


def test_spacing_override_wins(tmp_path, gradient):
    Image.fromarray(gradient).save(tmp_path / "a.png")
    assert load_image(tmp_path / "a.png", spacing=0.2, default_spacing=(0.1, 0.1)).spacing == (0.2, 0.2)
    assert load_image(tmp_path / "a.png", spacing=(0.1, 0.3)).spacing_source == "override"


def test_dicom_pixel_spacing_and_monochrome1(tmp_path, gradient):
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    def write(name, tag, photometric="MONOCHROME2"):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # DX
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(tmp_path / name), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.is_little_endian, ds.is_implicit_VR = True, False
        ds.Modality, ds.Rows, ds.Columns = "DX", 40, 30
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        setattr(ds, tag, [0.15, 0.12])  # (row spacing, column spacing)
        ds.PixelData = gradient.tobytes()
        ds.save_as(str(tmp_path / name), write_like_original=False)
        return tmp_path / name

    img = load_image(write("a.dcm", "PixelSpacing"))
    assert img.shape == (40, 30) and img.array[39, 29] == 3929
    assert img.spacing == (0.12, 0.15) and img.spacing_source == "file"
    img = load_image(write("b.dcm", "ImagerPixelSpacing", "MONOCHROME1"), default_spacing=(1, 1))
    assert img.spacing == (0.12, 0.15)
    assert img.array[0, 0] == 3929  # inverted: display convention


def test_nifti_and_nrrd_orientation_and_spacing(tmp_path, gradient):
    import nibabel as nib
    import nrrd

    nib.save(nib.Nifti1Image(gradient.T.astype(np.float32), np.diag([0.2, 0.3, 1.0, 1.0])), tmp_path / "a.nii.gz")
    img = load_image(tmp_path / "a.nii.gz")
    assert img.shape == (40, 30) and img.array[39, 29] == 3929 and img.array[0, 5] == 5
    assert img.spacing == pytest.approx((0.2, 0.3))
    nrrd.write(
        str(tmp_path / "a.nrrd"),
        gradient.T.copy(),
        {"space directions": np.diag([0.25, 0.5]), "space": "left-posterior"},
    )
    img = load_image(tmp_path / "a.nrrd")
    assert img.shape == (40, 30) and img.array[39, 29] == 3929
    assert img.spacing == pytest.approx((0.25, 0.5)) and img.spacing_source == "file"


def test_3d_volume_rejected(tmp_path):
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.zeros((20, 20, 5), np.float32), np.eye(4)), tmp_path / "v.nii.gz")
    with pytest.raises(ImageReadError, match="single 2D X-ray"):
        load_image(tmp_path / "v.nii.gz")


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_vector_nifti_from_slicer_is_read_as_gray(tmp_path, dtype):
    """3D Slicer saves a colour JPG as a vector NIfTI of shape (W, H, 1, 1, 3): read like the JPG, not refused."""
    import nibabel as nib
    import SimpleITK as sitk

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "colour.png")
    itk = sitk.ReadImage(str(tmp_path / "colour.png"))  # what Slicer loads: a 3-component vector image
    if dtype == "float32":
        itk = sitk.Cast(itk, sitk.sitkVectorFloat32)
    itk.SetSpacing((0.1, 0.2))
    sitk.WriteImage(itk, str(tmp_path / "colour.nii.gz"))
    assert nib.load(tmp_path / "colour.nii.gz").shape == (32, 24, 1, 1, 3)  # the shape the issue reports
    img = load_image(tmp_path / "colour.nii.gz")
    assert img.shape == (24, 32) and img.spacing == pytest.approx((0.1, 0.2)) and img.spacing_source == "file"
    if dtype == "uint8":  # exactly the gray the PNG itself gives (ITU-R 601 luma, as Pillow rounds it)
        np.testing.assert_array_equal(img.array, load_image(tmp_path / "colour.png").array)
    else:
        np.testing.assert_allclose(img.array, rgb.astype(np.float32).mean(axis=-1), atol=1e-4)
    # a real 4D/5D volume is still refused
    nib.save(nib.Nifti1Image(np.zeros((20, 20, 1, 2, 3), np.float32), np.eye(4)), tmp_path / "v5.nii.gz")
    with pytest.raises(ImageReadError, match="single 2D X-ray"):
        load_image(tmp_path / "v5.nii.gz")


def test_truncated_and_corrupt_files(tmp_path, gradient):
    Image.fromarray((gradient // 16).astype(np.uint8)).save(tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "trunc.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="corrupt or truncated"):
        load_image(tmp_path / "trunc.png")
    (tmp_path / "junk.jpg").write_bytes(b"this is not a jpeg")
    with pytest.raises(ImageReadError, match="junk.jpg"):
        load_image(tmp_path / "junk.jpg")
    (tmp_path / "empty.dcm").write_bytes(b"")
    with pytest.raises(ImageReadError):
        load_image(tmp_path / "empty.dcm")


def test_unknown_extension_and_missing_file(tmp_path):
    (tmp_path / "a.gif2").write_bytes(b"x")
    with pytest.raises(ImageReadError, match=r"Unsupported image type '.gif2'.*\.png"):
        load_image(tmp_path / "a.gif2")
    with pytest.raises(ImageReadError, match="not found"):
        load_image(tmp_path / "nope.png")


def test_oversize_image_rejected(tmp_path, monkeypatch):
    import anatomark.data.image_io as io

    monkeypatch.setattr(io, "MAX_PIXELS", 100)
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "big.png")
    with pytest.raises(ImageReadError, match="px limit"):
        load_image(tmp_path / "big.png")


def test_save_png_label_map(tmp_path):
    lm = np.zeros((10, 12), np.uint8)
    lm[2, 3] = 19
    p = save_png(lm, tmp_path / "l.png")
    back = np.asarray(Image.open(p))
    assert back.dtype == np.uint8 and back.shape == (10, 12) and back[2, 3] == 19
    assert list(tmp_path.iterdir()) == [p]
