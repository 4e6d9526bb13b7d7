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
