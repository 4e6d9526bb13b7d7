r"""Write 2D X-rays as valid single-frame DICOM: DX, CR or secondary capture (for demos, tests and PACS uploads).

``write_dicom(image, out, spacing=...)`` takes a PNG/JPG/any file :func:`anatomark.data.image_io.load_image` reads
(or an :class:`XrayImage`) and writes an uncompressed (explicit VR little endian) DICOM file:

- ``DX``: Digital X-Ray Image Storage - For Presentation; spacing in ``ImagerPixelSpacing`` (what DX detectors
  give, and what our loader falls back to when ``PixelSpacing`` is absent).
- ``CR``: Computed Radiography Image Storage; spacing in ``ImagerPixelSpacing`` and ``PixelSpacing``.
- ``SC`` (Modality ``OT``): Secondary Capture Image Storage; spacing in ``PixelSpacing``.

Pixel data is ``MONOCHROME2`` (bone bright), 8-bit when the source is 8-bit, else 16-bit unsigned, with a default
window from the 1st-99th percentiles. Every file gets its own SOP instance UID; study and series UIDs are new unless
given (pass the same ones to put several images into one series).

Metadata that the pixels alone cannot tell:

- ``PatientOrientation`` (0020,0020), PS3.3 C.7.6.1.1.1: the patient direction of the rows (toward increasing column
  index) and of the columns (toward increasing row index). A lateral cephalogram facing right (the ISBI 2015
  convention anatomark's cephalometric models use) has the face toward +x and the feet down: ``A\F``; facing left it
  would be ``P\F``. The default is ``A\F`` for ``body_part="SKULL"`` and empty (Type 2: unknown) otherwise.
- ``BurnedInAnnotation`` (0028,0301) says whether the pixels carry text identifying the patient. A converted PNG/JPG
  may well (film labels, a name typed by the exporting software) and nothing here reads the pixels, so the file says
  ``YES`` unless the caller knows better (``burned_in_annotation=False``); claiming ``NO`` would let
  de-identification tools pass the image through unchecked.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from anatomark.data.image_io import XrayImage, load_image
from anatomark.errors import AnatomarkError
from anatomark.paths import atomic_write

#: DICOM SOP classes written (modality -> (SOP Class UID, Modality value))
SOP_CLASSES = {
    "DX": ("1.2.840.10008.5.1.4.1.1.1.1", "DX"),  # Digital X-Ray Image Storage - For Presentation
    "CR": ("1.2.840.10008.5.1.4.1.1.1", "CR"),  # Computed Radiography Image Storage
    "SC": ("1.2.840.10008.5.1.4.1.1.7", "OT"),  # Secondary Capture Image Storage
}
#: PatientOrientation of a lateral cephalogram facing right: rows toward the face (anterior), columns to the feet.
RIGHT_FACING_LATERAL = ("A", "F")
_DIRECTIONS = set("APRLHF")


@dataclass
class DicomIds:
    """UIDs and names of a written file."""

    patient_id: str
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    path: Path


def _pixels(img: XrayImage) -> tuple[np.ndarray, int]:
    arr = np.asarray(img.array, dtype=np.float64)
    lo, hi = float(arr.min()), float(arr.max())
    bits_in = int(img.meta.get("bits", 0) or 0)
    integral = np.allclose(arr, np.round(arr))
    if integral and lo >= 0 and hi <= 255 and bits_in <= 8:
        return arr.astype(np.uint8), 8
    if integral and lo >= 0 and hi <= 65535:
        return arr.astype(np.uint16), 16
    # float or signed data: rescale linearly to the full unsigned 16-bit range (display intent is kept)
    scaled = (arr - lo) / (hi - lo) * 65535.0 if hi > lo else np.zeros_like(arr)
    return np.round(scaled).astype(np.uint16), 16


def _patient_orientation(value: str | Sequence[str] | None, body_part: str) -> list[str] | str:
    """``PatientOrientation`` values from ``"A\\F"`` / ``("A", "F")``; the default for ``body_part``; ``""`` = unknown."""
    if value is None:
        return list(RIGHT_FACING_LATERAL) if str(body_part).upper() == "SKULL" else ""
    parts = [p.strip().upper() for p in (value.split("\\") if isinstance(value, str) else value)]
    if parts == [""]:
        return ""
    if len(parts) != 2 or not all(p and set(p) <= _DIRECTIONS for p in parts):
        raise AnatomarkError(
            f"Patient orientation must be two directions such as A\\F (rows toward the face, columns to the feet), "
            f"made of the letters A P R L H F; got {value!r}"
        )
    return parts


def write_dicom(
    image: str | Path | XrayImage,
    out: str | Path,
    spacing: float | tuple[float, float] | None = None,
    modality: str = "DX",
    patient_id: str | None = None,
    patient_name: str | None = None,
    study_instance_uid: str | None = None,
    series_instance_uid: str | None = None,
    study_description: str = "anatomark",
    series_description: str | None = None,
    instance_number: int = 1,
    body_part: str = "SKULL",
    patient_orientation: str | Sequence[str] | None = None,
    burned_in_annotation: bool = True,
) -> DicomIds:
    """Write ``image`` as a single-frame DICOM X-ray.

    Args:
        image: a file :func:`load_image` reads, or an :class:`XrayImage`.
        out: output ``.dcm`` path (parent folders are created).
        spacing: mm/px ``(sx, sy)`` or one number; default: the image's own spacing when it came from the file.
        modality: ``DX``, ``CR`` or ``SC``.
        patient_id, patient_name: default: the input file's stem.
        study_instance_uid, series_instance_uid: default: new UIDs.
        study_description, series_description, instance_number, body_part: written as given.
        patient_orientation: ``PatientOrientation`` as ``"A\\F"`` or ``("A", "F")`` (row direction, column direction;
            letters A P R L H F); default: :data:`RIGHT_FACING_LATERAL` for ``body_part="SKULL"``, else empty
            (unknown). Secondary captures get none (their module has no patient orientation).
        burned_in_annotation: whether the pixels may carry identifying text (``BurnedInAnnotation`` ``YES``, the
            default, since a converted picture is not checked); ``False`` writes ``NO``.

    Returns:
        The UIDs written.

    Raises:
        AnatomarkError: unknown modality, non-positive spacing, no spacing known, or a patient orientation that is
            not two values of the letters A, P, R, L, H, F.
    """
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    modality = modality.upper()
    if modality not in SOP_CLASSES:
        raise AnatomarkError(f"Unknown modality {modality!r}; use one of {', '.join(SOP_CLASSES)}")
    img = image if isinstance(image, XrayImage) else load_image(image)
    stem = Path(img.path).name.split(".")[0] if img.path else "image"
    if spacing is None:
        if not img.spacing_from_file and img.spacing_source != "override":
            raise AnatomarkError(f"{stem}: no pixel spacing in the file; give one (mm/px)")
        sx, sy = img.spacing
    elif np.isscalar(spacing):
        sx = sy = float(spacing)  # type: ignore[arg-type]
    else:
        sx, sy = (float(s) for s in spacing)  # type: ignore[union-attr]
    if not (sx > 0 and sy > 0):
        raise AnatomarkError(f"Pixel spacing must be positive, got {(sx, sy)}")
    orientation = _patient_orientation(patient_orientation, body_part)
    pixels, bits = _pixels(img)
    sop_class, modality_value = SOP_CLASSES[modality]
    sop_uid = generate_uid()
    study_uid = study_instance_uid or generate_uid()
    series_uid = series_instance_uid or generate_uid()
    pid = patient_id or stem

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
    ds = FileDataset(str(out), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.is_little_endian, ds.is_implicit_VR = True, False
    now = _dt.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["DERIVED", "PRIMARY"] if modality != "SC" else ["DERIVED", "SECONDARY"]
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = time
    ds.AccessionNumber = ""
    ds.Modality = modality_value
    ds.Manufacturer = "anatomark"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = study_description
    ds.SeriesDescription = series_description or f"{modality} {stem}"
    ds.PatientName = patient_name or stem
    ds.PatientID = pid
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.BodyPartExamined = body_part
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = int(instance_number)
    ds.PatientOrientation = orientation if modality != "SC" else ""
    ds.BurnedInAnnotation = "YES" if burned_in_annotation else "NO"
    ds.LossyImageCompression = "00"
    if modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.DetectorType = "DIRECT"
        ds.PixelIntensityRelationship = "LOG"
        ds.PixelIntensityRelationshipSign = 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
    if modality == "SC":
        ds.ConversionType = "WSD"
    # DICOM spacing is (row spacing = y, column spacing = x)
    if modality in ("DX", "CR"):
        ds.ImagerPixelSpacing = [f"{sy:.6g}", f"{sx:.6g}"]
    if modality in ("CR", "SC"):
        ds.PixelSpacing = [f"{sy:.6g}", f"{sx:.6g}"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    ds.BitsAllocated = ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    lo, hi = np.percentile(pixels, [1, 99])
    if hi <= lo:
        lo, hi = float(pixels.min()), float(pixels.max()) + 1
    ds.WindowCenter = f"{(lo + hi) / 2:.1f}"
    ds.WindowWidth = f"{max(hi - lo, 1):.1f}"
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    out = Path(out)
    with atomic_write(out) as tmp:
        ds.save_as(str(tmp), write_like_original=False)
    return DicomIds(pid, study_uid, series_uid, sop_uid, out)
