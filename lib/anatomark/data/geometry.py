"""The world geometry 3D Slicer (ITK) gives an image file, and Slicer markups placed in it.

One rule for every writer of Slicer markups (``anatomark infer --markups`` and the server's ``slicer_markups``
result) and every reader of what Slicer sends back. 3D Slicer reads 2D files through ITK, so a pixel ``(i, j)`` of
the grid it shows sits at ``origin + direction @ (i * sx, j * sy, 0)`` in LPS, with what ITK reads from the file:

- PNG/JPEG/BMP/TIFF: origin 0, identity direction, spacing 1 mm unless the file carries one ITK reads: a JPEG's JFIF
  density (inch or cm), a TIFF resolution with an inch/cm unit tag, a PNG ``sCAL`` chunk. ITK ignores a PNG's
  ``pHYs`` (dpi), a BMP's resolution, a TIFF resolution without a unit tag and every EXIF field (also the
  orientation: the grid shown is the stored one; :class:`ViewerGeometry` converts to anatomark's upright frame).
- DICOM (GDCM): ``ImagerPixelSpacing`` for the projection-radiography SOP classes (CR, DX, MG, IO, XA, RF; their
  ``PixelSpacing`` and magnification factor are ignored), ``PixelSpacing`` for the others; origin from
  ``ImagePositionPatient``, direction from ``ImageOrientationPatient`` (identity without).
- NIfTI: its (RAS) affine turned to LPS; NRRD: ``space directions`` / ``space origin`` (turned to LPS).

This can differ from the physical spacing anatomark measures in (``XrayImage.spacing``: a magnification-corrected
or user-given one, or a 0.1 mm/px landmark-set default for a JPEG that ITK shows at 1 mm/px).
"""

from __future__ import annotations

import copy
import math
import numbers
import os
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from anatomark.data.image_io import (
    DICOM_EXTENSIONS,
    NIFTI_EXTENSIONS,
    NRRD_EXTENSIONS,
    RASTER_EXTENSIONS,
    XrayImage,
    _exif_orientation,
    exif_from_stored,
    exif_to_stored,
    image_extension,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
IDENTITY_DIRECTION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
#: SOP classes whose spacing GDCM (ITK's DICOM reader) takes from ImagerPixelSpacing (0018,1164).
IMAGER_SPACING_SOP_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.1",  # CR
        "1.2.840.10008.5.1.4.1.1.1.1",  # DX for presentation
        "1.2.840.10008.5.1.4.1.1.1.1.1",  # DX for processing
        "1.2.840.10008.5.1.4.1.1.1.2",  # mammography for presentation
        "1.2.840.10008.5.1.4.1.1.1.2.1",  # mammography for processing
        "1.2.840.10008.5.1.4.1.1.1.3",  # intra-oral for presentation
        "1.2.840.10008.5.1.4.1.1.1.3.1",  # intra-oral for processing
        "1.2.840.10008.5.1.4.1.1.12.1",  # X-ray angiographic
        "1.2.840.10008.5.1.4.1.1.12.2",  # X-ray radiofluoroscopic
    }
)
_LPS_SIGNS = {  # NRRD space -> signs turning its (x, y, z) into LPS
    "left-posterior-superior": (1.0, 1.0, 1.0),
    "lps": (1.0, 1.0, 1.0),
    "right-anterior-superior": (-1.0, -1.0, 1.0),
    "ras": (-1.0, -1.0, 1.0),
    "left-anterior-superior": (1.0, -1.0, 1.0),
    "las": (1.0, -1.0, 1.0),
}


@dataclass
class ViewerGeometry:
    """Where pixel ``(x, y)`` of the grid a viewer (3D Slicer / ITK) shows sits in its LPS world.

    ``LPS = (origin, origin_z) + direction @ (x * sx, y * sy, 0)``, ITK's ``TransformContinuousIndexToPhysicalPoint``.
    ``(x, y)`` are pixels of the grid the viewer shows: for a raster file with an EXIF orientation that is the stored
    grid, not anatomark's upright frame; :meth:`to_viewer` / :meth:`from_viewer` convert.

    Attributes:
        spacing: ``(sx, sy)`` mm per pixel of the viewer's grid (ITK's spacing).
        origin: LPS ``(x, y)`` of the viewer grid's first pixel centre.
        exif_orientation: EXIF ``Orientation`` (1..8) that anatomark applied to the image and the viewer does not;
            ``None`` when both frames are the same.
        size_wh: the upright image's ``(W, H)`` (needed with an orientation).
        direction: ITK's 3x3 direction matrix, row-major; its columns are the LPS directions of the grid's x and y
            and of the normal.
        origin_z: LPS z of the first pixel centre.
    """

    spacing: tuple[float, float]
    origin: tuple[float, float]
    exif_orientation: int | None = None
    size_wh: tuple[int, int] | None = None
    direction: tuple[float, ...] = IDENTITY_DIRECTION
    origin_z: float = 0.0

    def _size(self) -> tuple[int, int]:
        if self.size_wh is None:
            raise ValueError("ViewerGeometry with an EXIF orientation needs the image's size_wh")
        return self.size_wh

    def _axes(self) -> np.ndarray:
        """``(3, 2)``: the LPS step of one pixel along the grid's x and y."""
        return np.asarray(self.direction, dtype=np.float64).reshape(3, 3)[:, :2] * np.asarray(self.spacing, float)

    def _axial(self) -> bool:
        return tuple(float(v) for v in self.direction) == IDENTITY_DIRECTION

    def to_viewer(self, points: np.ndarray) -> np.ndarray:
        """``(N, 2)`` upright (anatomark) pixel points -> pixels of the viewer's grid (NaN rows stay NaN)."""
        if self.exif_orientation in (None, 1):
            return np.asarray(points, dtype=np.float64).reshape(-1, 2).copy()
        return exif_to_stored(points, self.exif_orientation, self._size())

    def from_viewer(self, points: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`to_viewer`: pixels of the viewer's grid -> upright (anatomark) pixel points."""
        if self.exif_orientation in (None, 1):
            return np.asarray(points, dtype=np.float64).reshape(-1, 2).copy()
        return exif_from_stored(points, self.exif_orientation, self._size())

    def viewer_to_lps(self, points: np.ndarray) -> np.ndarray:
        """``(N, 2)`` pixels of the viewer's grid -> ``(N, 3)`` LPS mm (NaN rows stay NaN)."""
        p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        if self._axial():  # the usual case, computed as ITK does it (no matrix rounding)
            out = np.empty((len(p), 3))
            out[:, 0] = self.origin[0] + p[:, 0] * self.spacing[0]
            out[:, 1] = self.origin[1] + p[:, 1] * self.spacing[1]
            out[:, 2] = self.origin_z
            out[np.isnan(p).any(axis=1)] = np.nan
            return out
        return np.array([*self.origin, self.origin_z], dtype=np.float64) + p @ self._axes().T

    def lps_to_viewer(self, lps: np.ndarray) -> np.ndarray:
        """``(N, 3)`` (or ``(N, 2)``, in the image plane) LPS mm -> ``(N, 2)`` pixels of the viewer's grid.

        A point off the image plane is projected onto it (Slicer places markups on the slice shown).
        """
        q = np.asarray(lps, dtype=np.float64)
        q = q.reshape(-1, q.shape[-1] if q.ndim > 1 else 3)
        if q.shape[1] == 2:
            q = np.concatenate([q, np.full((len(q), 1), self.origin_z)], axis=1)
        if self._axial():
            return np.stack(
                [(q[:, 0] - self.origin[0]) / self.spacing[0], (q[:, 1] - self.origin[1]) / self.spacing[1]], axis=1
            )
        rel = q - np.array([*self.origin, self.origin_z], dtype=np.float64)
        return rel @ np.linalg.pinv(self._axes()).T

    def to_lps(self, points: np.ndarray) -> np.ndarray:
        """``(N, 2)`` upright (anatomark) pixel points -> ``(N, 3)`` LPS mm where the viewer shows them."""
        return self.viewer_to_lps(self.to_viewer(points))

    def from_lps(self, lps: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`to_lps`."""
        return self.from_viewer(self.lps_to_viewer(lps))


# ---------------------------------------------------------------- raster files
def png_scal(path: str | Path) -> tuple[float, float] | None:
    """The ``sCAL`` pixel size of a PNG (what ITK reads as its spacing; Pillow does not parse it), if any."""
    try:
        with open(path, "rb") as f:
            if f.read(8) != PNG_SIGNATURE:
                return None
            while True:
                head = f.read(8)
                if len(head) < 8:
                    return None
                length, kind = struct.unpack(">I4s", head)
                if kind in (b"IDAT", b"IEND"):  # sCAL comes before the image data
                    return None
                if kind == b"sCAL":
                    fields = f.read(length)[1:].split(b"\0")  # unit byte, then "width\0height" in ASCII
                    w, h = float(fields[0]), float(fields[1])
                    return (w, h) if np.isfinite([w, h]).all() and w > 0 and h > 0 else None
                f.seek(length + 4, os.SEEK_CUR)  # data + CRC
    except (OSError, ValueError, IndexError, struct.error):
        return None


def itk_raster_spacing(path: str | Path) -> tuple[float, float] | None:
    """The spacing (mm, along the stored x and y) ITK gives a raster file; ``None`` for its default of 1 mm.

    ITK reads it from a JPEG's JFIF density (inch or cm), a TIFF's resolution when its unit tag says inch or cm, and
    a PNG's ``sCAL`` chunk; it ignores a PNG's ``pHYs`` (dpi), a BMP's resolution, a TIFF resolution without a unit
    tag and every EXIF field (all checked with SimpleITK).
    """
    from PIL import Image

    spacing: tuple[float, float] | None = None
    with Image.open(path) as im:
        fmt, info = im.format, dict(im.info)
        tiff_unit = im.tag_v2.get(296) if fmt == "TIFF" else None  # ResolutionUnit: 2 inch, 3 cm
    if fmt == "JPEG":
        unit, density = info.get("jfif_unit"), info.get("jfif_density")
        if unit in (1, 2) and density and len(density) == 2 and min(density) > 0:
            scale = 25.4 if unit == 1 else 10.0
            spacing = (scale / float(density[0]), scale / float(density[1]))
    elif fmt == "TIFF":
        dpi = info.get("dpi")  # Pillow gives a cm resolution as dpi too
        if tiff_unit in (2, 3) and dpi and len(dpi) == 2 and float(dpi[0]) > 0 and float(dpi[1]) > 0:
            spacing = (25.4 / float(dpi[0]), 25.4 / float(dpi[1]))
    elif fmt == "PNG":
        spacing = png_scal(path)
    return None if spacing is None or spacing == (1.0, 1.0) else spacing


def file_exif_orientation(path: str | Path) -> int | None:
    """The EXIF orientation :func:`~anatomark.data.image_io.load_image` applies to the raster file ``path``.

    ``None`` for other formats, for no (or an invalid) tag and for 1 (stored upright). Reads the header only, unless
    the file has a tag: then it is decoded, as the reader does, since Pillow applies (and drops) a TIFF's orientation
    itself when it loads the pixels.
    """
    if image_extension(path) not in RASTER_EXTENSIONS:
        return None
    from PIL import Image

    with Image.open(path) as im:
        if _exif_orientation(im) in (None, 1):
            return None
        im.load()
        orientation = _exif_orientation(im)
    return None if orientation in (None, 1) else orientation


# ---------------------------------------------------------------- DICOM, NIfTI, NRRD
def _numbers(value: Any, n: int) -> list[float] | None:
    """``n`` finite floats from a (DICOM multi-)value, else ``None``."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        value = [value]
    try:
        out = [float(v) for v in value]
    except (TypeError, ValueError):
        return None
    return out if len(out) == n and all(math.isfinite(v) for v in out) else None


def _direction_from_axes(x_axis: Sequence[float], y_axis: Sequence[float]) -> tuple[float, ...] | None:
    """ITK's row-major direction from the LPS unit vectors of the grid's x and y (normal = x cross y)."""
    u, v = np.asarray(x_axis, float), np.asarray(y_axis, float)
    nu, nv = float(np.linalg.norm(u)), float(np.linalg.norm(v))
    if nu <= 0 or nv <= 0:
        return None
    u, v = u / nu, v / nv
    w = np.cross(u, v)
    return tuple(float(a) for a in np.stack([u, v, w], axis=1).ravel())


def _dicom_geometry(path: Path) -> ViewerGeometry:
    import pydicom

    ds = pydicom.dcmread(str(path), stop_before_pixels=True)
    sop = str(getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", "") or ds.get("SOPClassUID", ""))
    tag = "ImagerPixelSpacing" if sop in IMAGER_SPACING_SOP_CLASSES else "PixelSpacing"
    raw = ds.get(tag)
    values = None if raw is None else (_numbers(raw, 2) or _numbers(raw, 1))
    spacing = (1.0, 1.0)
    if values is not None and all(v > 0 for v in values):
        row, col = values if len(values) == 2 else (values[0], values[0])
        spacing = (col, row)  # DICOM gives (row spacing = y, column spacing = x)
    ipp = _numbers(getattr(ds, "ImagePositionPatient", None) or (), 3) or [0.0, 0.0, 0.0]
    iop = _numbers(getattr(ds, "ImageOrientationPatient", None) or (), 6)
    direction = _direction_from_axes(iop[:3], iop[3:]) if iop else None
    return ViewerGeometry(spacing, (ipp[0], ipp[1]), direction=direction or IDENTITY_DIRECTION, origin_z=ipp[2])


def _from_lps_affine(x_step: np.ndarray, y_step: np.ndarray, origin: np.ndarray) -> ViewerGeometry:
    spacing = (float(np.linalg.norm(x_step)), float(np.linalg.norm(y_step)))
    direction = _direction_from_axes(x_step, y_step) or IDENTITY_DIRECTION
    return ViewerGeometry(spacing, (float(origin[0]), float(origin[1])), direction=direction, origin_z=float(origin[2]))


def _nifti_geometry(path: Path) -> ViewerGeometry:
    import nibabel as nib

    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ nib.load(str(path)).affine  # NIfTI affines are RAS
    return _from_lps_affine(lps[:3, 0], lps[:3, 1], lps[:3, 3])


def _nrrd_geometry(path: Path, image: XrayImage) -> ViewerGeometry:
    import nrrd

    header = nrrd.read_header(str(path))
    signs = np.array(_LPS_SIGNS.get(str(header.get("space", "")).lower(), (1.0, 1.0, 1.0)))
    dirs = header.get("space directions")
    steps = []
    if dirs is not None:
        for d in dirs:
            v = np.asarray(d, dtype=np.float64).ravel() if d is not None else np.empty(0)
            if v.size and np.all(np.isfinite(v)):  # a vector (RGB) axis has none / NaN
                steps.append(np.pad(v[:3], (0, 3 - min(3, v.size))) * signs)
    origin = np.zeros(3)
    if header.get("space origin") is not None:
        o = np.asarray(header["space origin"], dtype=np.float64).ravel()
        if o.size and np.all(np.isfinite(o)):
            origin = np.pad(o[:3], (0, 3 - min(3, o.size))) * signs
    if len(steps) >= 2:
        return _from_lps_affine(steps[0], steps[1], origin)
    return ViewerGeometry(tuple(image.spacing), (float(origin[0]), float(origin[1])), origin_z=float(origin[2]))  # type: ignore[arg-type]


def viewer_geometry(path: str | Path, image: XrayImage) -> ViewerGeometry:
    """The LPS geometry 3D Slicer (ITK) gives the image file ``path`` (see the module docstring for the rules).

    The file decides, not ``image.spacing``: a spacing given by the user or a landmark-set default does not change
    where Slicer shows the pixels.

    Args:
        path: the image file.
        image: ``path`` as :func:`~anatomark.data.image_io.load_image` read it (its EXIF orientation and size).
    """
    path = Path(path)
    ext = image_extension(path)
    if ext in RASTER_EXTENSIONS:
        orientation = image.exif_orientation if image.exif_orientation not in (None, 1) else None
        spacing = itk_raster_spacing(path) or (1.0, 1.0)  # of the stored grid (EXIF does not turn it)
        return ViewerGeometry(spacing, (0.0, 0.0), exif_orientation=orientation, size_wh=tuple(image.size_wh))
    if ext in DICOM_EXTENSIONS:
        return _dicom_geometry(path)
    if ext in NIFTI_EXTENSIONS:
        return _nifti_geometry(path)
    if ext in NRRD_EXTENSIONS:
        return _nrrd_geometry(path, image)
    return ViewerGeometry(tuple(image.spacing), tuple(image.origin))  # type: ignore[arg-type]


# ---------------------------------------------------------------- Slicer markups in that geometry
def markups_document(
    points: np.ndarray,
    names: Sequence[str],
    geometry: ViewerGeometry,
    descriptions: Sequence[str] | None = None,
) -> dict[str, Any]:
    """A 3D Slicer point-list markups document (LPS) placing upright pixel ``points`` where Slicer shows them.

    Args:
        points: ``(K, 2)`` upright (anatomark) pixel points, NaN = missing.
        names: landmark names (control point labels).
        geometry: :func:`viewer_geometry` of the image.
        descriptions: one per landmark, or ``None``.
    """
    from anatomark.data.annotations import slicer_markups_document

    viewer = geometry.to_viewer(points)
    doc = slicer_markups_document(viewer, names, (1.0, 1.0), (0.0, 0.0), descriptions)
    lps = geometry.viewer_to_lps(viewer)
    for cp, pos in zip(doc["markups"][0]["controlPoints"], lps):
        if cp["positionStatus"] == "defined":
            cp["position"] = [float(v) for v in pos]
    return doc


def _finite_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(float(v))


def markups_points(doc: Mapping[str, Any], names: Sequence[str], geometry: ViewerGeometry) -> np.ndarray:
    """Upright ``(K, 2)`` pixel points (NaN = absent) of a Slicer markups document placed in ``geometry``.

    Raises:
        AnnotationError: as :func:`~anatomark.data.annotations.read_slicer_markups` (checks and messages are its own).
    """
    from anatomark.data.annotations import read_slicer_markups

    grid = copy.deepcopy(dict(doc))
    for m in grid.get("markups") or []:
        if not isinstance(m, dict) or str(m.get("coordinateSystem", "LPS")).upper() not in ("LPS", "RAS"):
            continue
        ras = str(m.get("coordinateSystem", "LPS")).upper() == "RAS"
        for cp in m.get("controlPoints") or []:
            pos = cp.get("position") if isinstance(cp, dict) else None
            if not isinstance(pos, (list, tuple)) or not 2 <= len(pos) <= 3 or not all(map(_finite_number, pos)):
                continue  # left to the reader, which refuses it with its message
            q = [float(v) for v in pos]
            if ras:
                q[0], q[1] = -q[0], -q[1]
            cp["position"] = [float(v) for v in geometry.lps_to_viewer(np.array([q]))[0]] + [0.0]
        m["coordinateSystem"] = "LPS"
    return geometry.from_viewer(read_slicer_markups(grid, names, (1.0, 1.0), (0.0, 0.0)))


def write_markups(
    path: str | Path,
    points: np.ndarray,
    names: Sequence[str],
    geometry: ViewerGeometry,
    descriptions: Sequence[str] | None = None,
) -> Path:
    """Write :func:`markups_document` as a ``.mrk.json`` file, atomically."""
    import json

    from anatomark.data.annotations import _atomic_write_text

    return _atomic_write_text(path, json.dumps(markups_document(points, names, geometry, descriptions), indent=2))
