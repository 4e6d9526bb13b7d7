"""PNG/JPG -> DICOM DX/CR/SC: valid files that our loader reads back with the same pixels and spacing."""

from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest
from PIL import Image

from anatomark.cli import main
from anatomark.data.dicom_write import SOP_CLASSES, write_dicom
from anatomark.data.image_io import load_image
from anatomark.errors import AnatomarkError


@pytest.fixture
def gradient_png(tmp_path):
    yy, xx = np.mgrid[0:40, 0:30]
    Image.fromarray(((3 * yy + xx) % 256).astype(np.uint8)).save(tmp_path / "g.png")
    return tmp_path / "g.png"


@pytest.mark.parametrize("modality", ["DX", "CR", "SC"])
def test_roundtrip_8bit(tmp_path, gradient_png, modality):
    ids = write_dicom(gradient_png, tmp_path / "g.dcm", spacing=(0.12, 0.15), modality=modality)
    ds = pydicom.dcmread(ids.path)
    assert ds.SOPClassUID == SOP_CLASSES[modality][0] == ds.file_meta.MediaStorageSOPClassUID
    assert ds.Modality == SOP_CLASSES[modality][1]
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert ds.StudyInstanceUID == ids.study_instance_uid and ds.SeriesInstanceUID == ids.series_instance_uid
    assert ds.PatientID == "g" and ds.PhotometricInterpretation == "MONOCHROME2"
    assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit) == (8, 8, 7)
    if modality == "DX":
        assert ds.PresentationIntentType == "FOR PRESENTATION" and "PixelSpacing" not in ds
        assert [float(v) for v in ds.ImagerPixelSpacing] == [0.15, 0.12]  # (row, column)
    img = load_image(ids.path)
    src = load_image(gradient_png)
    np.testing.assert_array_equal(img.array, src.array)
    assert img.spacing == pytest.approx((0.12, 0.15)) and img.spacing_source == "file"
    assert img.meta["modality"] == SOP_CLASSES[modality][1]


def test_roundtrip_16bit_and_float(tmp_path):
    yy, xx = np.mgrid[0:40, 0:30]
    g16 = (100 * yy + xx).astype(np.uint16)
    Image.fromarray(g16).save(tmp_path / "a.png")
    ids = write_dicom(tmp_path / "a.png", tmp_path / "a.dcm", spacing=0.1)
    assert pydicom.dcmread(ids.path).BitsStored == 16
    img = load_image(ids.path)
    assert img.array[39, 29] == 3929 and img.spacing == (0.1, 0.1)
    # float data (e.g. NIfTI) is rescaled to 16 bits, keeping the order of values
    import nibabel as nib

    nib.save(nib.Nifti1Image((g16.T / 7.0 - 3).astype(np.float32), np.diag([0.2, 0.3, 1, 1])), tmp_path / "f.nii.gz")
    ids = write_dicom(tmp_path / "f.nii.gz", tmp_path / "f.dcm")  # spacing from the NIfTI header
    img = load_image(ids.path)
    assert img.spacing == pytest.approx((0.2, 0.3))
    assert img.array[0, 0] == 0 and img.array[39, 29] == 65535
    assert np.all(np.diff(img.array[:, 0]) > 0)


def test_shared_series_and_errors(tmp_path, gradient_png):
    a = write_dicom(
        gradient_png, tmp_path / "a.dcm", spacing=0.1, study_instance_uid="1.2.3", series_instance_uid="1.2.3.4"
    )
    b = write_dicom(
        gradient_png, tmp_path / "b.dcm", spacing=0.1, study_instance_uid="1.2.3", series_instance_uid="1.2.3.4"
    )
    assert a.series_instance_uid == b.series_instance_uid == "1.2.3.4" and a.sop_instance_uid != b.sop_instance_uid
    with pytest.raises(AnatomarkError, match="no pixel spacing"):
        write_dicom(gradient_png, tmp_path / "c.dcm")
    with pytest.raises(AnatomarkError, match="modality"):
        write_dicom(gradient_png, tmp_path / "c.dcm", spacing=0.1, modality="CT")
    with pytest.raises(AnatomarkError, match="positive"):
        write_dicom(gradient_png, tmp_path / "c.dcm", spacing=0)
    assert not (tmp_path / "c.dcm").exists()


def test_cli_to_dicom(tmp_path, gradient_png):
    Image.open(gradient_png).convert("RGB").save(tmp_path / "h.jpg", quality=95)
    rc = main(
        ["to-dicom", str(gradient_png), str(tmp_path / "h.jpg"), "--out", str(tmp_path / "dcm"), "--spacing", "0.1",
         "--modality", "CR", "--one-study", "--json", str(tmp_path / "ids.json")]
    )  # fmt: skip
    assert rc == 0
    rows = json.loads((tmp_path / "ids.json").read_text())
    assert [r["dicom"].rsplit("/", 1)[-1] for r in rows] == ["g.dcm", "h.dcm"]
    assert rows[0]["study_instance_uid"] == rows[1]["study_instance_uid"]
    assert rows[0]["series_instance_uid"] != rows[1]["series_instance_uid"]
    h = load_image(tmp_path / "dcm" / "h.dcm")
    assert h.shape == (40, 30) and h.spacing == (0.1, 0.1)
    assert main(["to-dicom", str(gradient_png), "--out", str(tmp_path / "x")]) == 2  # no spacing: clear error


def test_model_sees_the_same_image(tmp_path, isbi_dir):
    """Landmarks on the DICOM DX equal those on the JPG with the same spacing (ISBI image 151)."""
    from anatomark.model import load_model

    jpg = isbi_dir / "images" / "151.jpg"
    ids = write_dicom(jpg, tmp_path / "151.dcm", spacing=0.1)
    model = load_model("isbi2015_heatmap_unet")
    a = model.predict(load_image(jpg, spacing=0.1)).points
    b = model.predict(load_image(ids.path)).points
    np.testing.assert_allclose(a, b, atol=1e-3)


# ---------------------------------------------------------------------------------------------------- metadata
@pytest.mark.parametrize("modality", ["DX", "CR"])
def test_patient_orientation_of_a_right_facing_lateral_cephalogram(tmp_path, gradient_png, modality):
    """PS3.3 C.7.6.1.1.1: first value = direction of the rows (increasing column index), second = of the columns.

    A cephalogram facing right has the face toward +x (anterior) and the feet down: A\\F (it was P\\F).
    """
    ds = pydicom.dcmread(write_dicom(gradient_png, tmp_path / "g.dcm", spacing=0.1, modality=modality).path)
    assert list(ds.PatientOrientation) == ["A", "F"]
    other = write_dicom(gradient_png, tmp_path / "s.dcm", spacing=0.1, modality=modality, body_part="SPINE")
    assert pydicom.dcmread(other.path).PatientOrientation == ""  # unknown, not a guess (Type 2)
    for given in ("P\\F", ("p", "f")):
        left = write_dicom(gradient_png, tmp_path / "l.dcm", spacing=0.1, modality=modality, patient_orientation=given)
        assert list(pydicom.dcmread(left.path).PatientOrientation) == ["P", "F"]
    with pytest.raises(AnatomarkError, match="two directions"):
        write_dicom(gradient_png, tmp_path / "x.dcm", spacing=0.1, patient_orientation="A\\X")
    sc = write_dicom(gradient_png, tmp_path / "sc.dcm", spacing=0.1, modality="SC")
    assert pydicom.dcmread(sc.path).PatientOrientation == ""


def test_isbi_cephalograms_face_right_so_rows_point_anterior(isbi_dir):
    """The convention behind the default: on the ISBI images nasion lies at larger x than sella (face toward +x)."""
    from anatomark.data.dataset import LandmarkDataset

    ds = LandmarkDataset(isbi_dir, split="test1", annotator="senior", landmark_set="isbi2015_cephalometric")
    names = ds.landmark_set.names
    s, n = names.index("sella"), names.index("nasion")
    assert all(it["landmarks"][n, 0] > it["landmarks"][s, 0] for it in ds.items)


def test_burned_in_annotation_is_not_denied(tmp_path, gradient_png):
    """A converted picture may carry identifying text nobody checked: YES unless the caller says otherwise."""
    ds = pydicom.dcmread(write_dicom(gradient_png, tmp_path / "g.dcm", spacing=0.1).path)
    assert ds.BurnedInAnnotation == "YES"
    clean = write_dicom(gradient_png, tmp_path / "c.dcm", spacing=0.1, burned_in_annotation=False)
    assert pydicom.dcmread(clean.path).BurnedInAnnotation == "NO"


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_written_files_follow_the_umask_not_0600(tmp_path, gradient_png, umask):
    """atomic_write used mkstemp's private 0600: a PACS upload or web server run as another user could not read."""
    import os
    import stat

    from anatomark.data.annotations import _atomic_write_text

    old = os.umask(umask)
    try:
        dcm = write_dicom(gradient_png, tmp_path / "g.dcm", spacing=0.1).path
        text = _atomic_write_text(tmp_path / "sub" / "ids.json", "{}")
        assert main(["to-dicom", str(gradient_png), "--out", str(tmp_path / "cli"), "--spacing", "0.1"]) == 0
    finally:
        os.umask(old)
    for path in (dcm, text, tmp_path / "cli" / "g.dcm"):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~umask, path
    assert not [p for p in tmp_path.rglob(".tmp-*")]  # no temp file left behind
