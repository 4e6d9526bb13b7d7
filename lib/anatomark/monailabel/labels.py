"""Label files <-> landmark points for the MONAI Label app (format glue; the point maths lives in the library).

A label arriving at the server can be:

- a label map (PNG/NIfTI/NRRD/...; what 3D Slicer sends when saving a segmentation) where landmark k is the
  region of value k, or of the value ``idx`` given for its name in ``label_info=[{"name", "idx"}]``;
- a 3D Slicer point-list markups JSON (LPS or RAS, in the image geometry the viewer uses);
- our own JSON ``{"landmarks": [{"name", "x", "y"}, ...]}`` (the ``/infer`` result);
- a LabelMe JSON.

Every reader returns ``(K, 2)`` points (x, y) in original pixels in landmark-set order, NaN for missing landmarks.
Results are written as label maps in the input's exact geometry (PNG for raster and DICOM inputs, NIfTI/NRRD for
NIfTI/NRRD inputs) so that a viewer overlays them on the image without resampling.

Frames: anatomark's points are in the upright frame of a raster image (its EXIF ``Orientation`` applied, as
:func:`~anatomark.data.image_io.load_image` and web viewers such as OHIF show it). ITK, hence 3D Slicer and its
MONAI Label module, ignores EXIF and shows the pixels as stored. So what is written "like the image" (label maps,
Slicer markups) and what comes back from Slicer (label maps, markups JSON) is in the stored frame, converted here and
only here; our own ``{"landmarks": [...]}`` JSON and LabelMe JSON stay in the upright frame. DICOM, NIfTI and NRRD
have no EXIF: both frames are the same.
"""

from __future__ import annotations

import io
import json
import math
import os
import struct
import tempfile
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from anatomark.config import LandmarkSet
from anatomark.data.annotations import read_labelme
from anatomark.data.geometry import (  # re-exported: the server's names for the geometry rules
    PNG_SIGNATURE,
    ViewerGeometry,
    file_exif_orientation,
    itk_raster_spacing,
    markups_document,
    markups_points,
    viewer_geometry,
)
from anatomark.data.image_io import (
    NIFTI_EXTENSIONS,
    NRRD_EXTENSIONS,
    RASTER_EXTENSIONS,
    XrayImage,
    exif_from_stored,
    exif_stored_array,
    exif_stored_size_wh,
    image_extension,
    load_image,
)
from anatomark.data.points_json import read_points_json
from anatomark.errors import AnnotationError
from anatomark.transforms import functional as Fn

RESULT_FORMATS = ("labelmap", "slicer_markups")


def label_radius_px(points: np.ndarray, spacing: Sequence[float], radius_mm: float, min_px: float = 2.0) -> float:
    """Disk radius for drawing landmarks: ``radius_mm`` (at least ``min_px``), shrunk so that disks don't overlap.

    Non-overlapping disks keep each disk's centroid (what label readers decode) on its landmark.
    """
    r = max(min_px, float(radius_mm) / float(np.mean(spacing)))
    p = np.asarray(points, dtype=np.float64)
    p = p[np.isfinite(p).all(axis=1)]
    if len(p) > 1:
        d = np.sqrt(((p[:, None, :] - p[None, :, :]) ** 2).sum(-1))
        d[np.diag_indices(len(p))] = np.inf
        r = min(r, max(min_px, (float(d.min()) - 1.0) / 2.0))
    return r


def draw_labelmap(points: np.ndarray, image: XrayImage, radius_px: float, num_landmarks: int) -> np.ndarray:
    """``(H, W)`` label map of the image's size: landmark k = disk of value k."""
    dtype = np.uint8 if num_landmarks < 256 else np.uint16
    return Fn.points_to_labelmap(points, image.shape, radius=radius_px, dtype=dtype)


def _tmp_path(suffix: str, directory: str | None = None) -> str:
    fd, path = tempfile.mkstemp(suffix=suffix, prefix="anatomark-", dir=directory)
    os.close(fd)
    return path


def labelmap_extension(image_path: str | Path) -> str:
    """Extension of the label map :func:`write_labelmap_like` writes for ``image_path``."""
    ext = image_extension(image_path)
    return ".nii.gz" if ext in NIFTI_EXTENSIONS else ".nrrd" if ext in NRRD_EXTENSIONS else ".png"


def write_labelmap_like(labelmap: np.ndarray, image_path: str | Path, directory: str | None = None) -> str:
    """Write an ``(H, W)`` label map in the geometry and file family of ``image_path``; returns a new temp file.

    PNG for raster/DICOM inputs (never JPEG), NIfTI with the input's affine for NIfTI inputs, NRRD with the input's
    space fields for NRRD inputs. ``labelmap`` is in anatomark's (upright) frame, the image's shape. For a raster
    file with an EXIF orientation the PNG holds the *stored* pixel grid (what ITK / 3D Slicer show, 5..8 swap the
    axes), so that it overlays the image there; the raster file's resolution is copied as is (dpi, and an ``sCAL``
    chunk with the spacing ITK gives the image), since both are of the stored grid.

    Raises:
        ValueError: a raster image with an EXIF orientation whose stored size does not fit ``labelmap``.
    """
    ext = image_extension(image_path)
    lm = np.asarray(labelmap)
    if ext in NIFTI_EXTENSIONS:
        import nibabel as nib

        ref = nib.load(str(image_path))
        data = lm.T.reshape(ref.shape[:2] + (1,) * (len(ref.shape) - 2)) if len(ref.shape) >= 2 else lm.T
        hdr = ref.header.copy()
        if len(ref.shape) == 3 and ref.shape[2] != 1:  # RGB stored as a vector dimension
            data = lm.T
        elif len(ref.shape) == 5 and ref.shape[2:4] == (1, 1):  # a vector volume (Slicer's colour image): scalar map
            data = lm.T[:, :, None]
            hdr.set_intent("none")
        out = _tmp_path(".nii.gz", directory)
        hdr.set_data_dtype(lm.dtype)
        nib.save(nib.Nifti1Image(np.ascontiguousarray(data), ref.affine, hdr), out)
        return out
    if ext in NRRD_EXTENSIONS:
        import nrrd

        header = nrrd.read_header(str(image_path))
        keep = {k: header[k] for k in ("space", "space directions", "space origin", "spacings", "kinds") if k in header}
        sizes = [int(s) for s in header.get("sizes", [])]
        data = lm.T
        if len(sizes) > 2 and sizes[0] not in (3, 4):
            data = data.reshape(data.shape + (1,) * (len(sizes) - 2))
        elif len(sizes) > 2:  # a leading vector (RGB) axis: write a scalar 2D image with the spatial fields only
            keep = {k: v for k, v in keep.items() if k in ("space", "space origin")}
        out = _tmp_path(".nrrd", directory)
        nrrd.write(out, np.ascontiguousarray(data), keep, index_order="F")
        return out
    from PIL import Image

    kwargs: dict[str, Any] = {"format": "PNG", "compress_level": 1}
    spacing = None
    if ext in RASTER_EXTENSIONS:
        with Image.open(image_path) as im:
            dpi, stored_wh = im.info.get("dpi"), im.size
        orientation = file_exif_orientation(image_path)
        if orientation is not None:
            h, w = lm.shape[:2]
            lm = exif_stored_array(lm, orientation)
            if lm.shape != (stored_wh[1], stored_wh[0]):
                raise ValueError(
                    f"label map of {w}x{h} px does not fit {Path(image_path).name} "
                    f"(stored {stored_wh[0]}x{stored_wh[1]} px, EXIF orientation {orientation})"
                )
        if dpi:
            kwargs["dpi"] = dpi
        spacing = itk_raster_spacing(image_path)
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(lm)).save(buffer, **kwargs)
    png = buffer.getvalue()
    if spacing is not None:  # ITK reads a PNG's spacing from sCAL only (it ignores pHYs); Pillow cannot write it
        data = b"\x01" + repr(float(spacing[0])).encode() + b"\0" + repr(float(spacing[1])).encode()
        scal = struct.pack(">I", len(data)) + b"sCAL" + data + struct.pack(">I", zlib.crc32(b"sCAL" + data))
        end_of_ihdr = len(PNG_SIGNATURE) + 8 + 13 + 4  # length + type, 13 bytes of IHDR data, CRC
        png = png[:end_of_ihdr] + scal + png[end_of_ihdr:]
    out = _tmp_path(".png", directory)
    Path(out).write_bytes(png)
    return out


def write_markups_like(
    points: np.ndarray, landmark_set: LandmarkSet, geometry: ViewerGeometry, directory: str | None = None
) -> str:
    """Write a 3D Slicer point-list markups JSON (LPS) for ``points``; returns a new temp ``.mrk.json`` file.

    Args:
        points: ``(K, 2)`` upright (anatomark) pixel points, NaN = missing.
        landmark_set: names and descriptions of the points.
        geometry: :func:`viewer_geometry` of the image (points are placed on the grid the viewer shows).
        directory: where to create the file (the system temp folder by default).
    """
    doc = markups_document(points, landmark_set.names, geometry, landmark_set.descriptions)
    out = _tmp_path(".mrk.json", directory)
    Path(out).write_text(json.dumps(doc, indent=1))
    return out


# ---------------------------------------------------------------- reading labels
def _label_index(name: str, idx: Any) -> int:
    """The label-map value ``idx`` given for ``name`` in ``label_info`` as a positive integer."""
    value: Any = idx
    if isinstance(idx, str) and idx.strip().isdigit():
        value = int(idx.strip())
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer() or value < 1:
        raise AnnotationError(
            f"label_info entry {name!r} has no integer 'idx' >= 1 (got {json.dumps(idx, default=str)[:40]}); "
            "idx is the label-map value of the landmark's region"
        )
    return int(value)


def _label_values(label_info: Any, landmark_set: LandmarkSet) -> dict[int, int]:
    """Map label-map value -> landmark index k (1..K) from Slicer's ``label_info`` (or identity).

    Raises:
        AnnotationError: malformed entries, names that are not landmarks of the set, a landmark named twice or a
            value given to two landmarks.
    """
    k_max = len(landmark_set)
    if not label_info:
        return {k: k for k in range(1, k_max + 1)}
    pairs: list[tuple[str, Any]] = []
    if isinstance(label_info, Mapping):
        pairs = [(str(n), v) for n, v in label_info.items()]
    elif isinstance(label_info, list):
        for e in label_info:
            if not isinstance(e, Mapping) or "name" not in e:
                raise AnnotationError("label_info must be a list of {name, idx} objects")
            pairs.append((str(e["name"]), e.get("idx", e.get("value"))))
    else:
        raise AnnotationError("label_info must be a list of {name, idx} objects or a {name: idx} mapping")
    labels = landmark_set.labels
    out: dict[int, int] = {}
    named: dict[str, int] = {}
    for name, idx in pairs:
        if name.lower() == "background":
            continue
        if name not in labels:
            raise AnnotationError(
                f"label_info names {name!r}, which is not a landmark of the set {landmark_set.name!r} "
                f"(expected names: {', '.join(landmark_set.names)})"
            )
        v = _label_index(name, idx)
        if name in named:
            raise AnnotationError(
                f"label_info names landmark {name!r} twice (idx {named[name]} and {v}); a landmark is one region "
                "of one value"
            )
        if v in out:
            other = landmark_set.names[out[v] - 1]
            raise AnnotationError(f"label_info gives value {v} to both {other!r} and {name!r}; use one value each")
        named[name] = v
        out[v] = labels[name]
    return out


def _check_single_regions(labelmap: np.ndarray, landmark_set: LandmarkSet) -> None:
    """Refuse a landmark (value k of ``labelmap``, 1..K) drawn as more than one connected region (8-connected).

    The centroid of two spots is a point between them, on neither: such a label is refused instead of stored there.
    """
    from scipy import ndimage

    problems = []
    for k, box in enumerate(ndimage.find_objects(labelmap, max_label=len(landmark_set)), start=1):
        if box is None:
            continue
        regions, n = ndimage.label(labelmap[box] == k, structure=np.ones((3, 3), dtype=bool))
        if n <= 1:
            continue
        sizes = np.bincount(regions.ravel())[1:]
        centres = ndimage.center_of_mass(np.ones_like(regions), regions, range(1, n + 1))
        order = np.argsort(-sizes)[:3]
        where = ", ".join(
            f"{int(sizes[j])} px at ({centres[j][1] + box[1].start:.0f}, {centres[j][0] + box[0].start:.0f})"
            for j in order
        )
        more = f" and {n - 3} more" if n > 3 else ""
        problems.append(f"{landmark_set.names[k - 1]!r} is {n} separate regions ({where}{more})")
    if problems:
        raise AnnotationError(
            f"In the label map, landmark {'; '.join(problems[:5])}: each landmark must be one spot (its centre is the "
            "landmark); erase the extra regions, or leave the landmark out if it is not visible"
        )


def labelmap_points(labelmap: np.ndarray, landmark_set: LandmarkSet, label_info: Any = None) -> np.ndarray:
    """Centroid of each landmark's region in an ``(H, W)`` label map -> ``(K, 2)`` (NaN where absent).

    Raises:
        AnnotationError: values that are not integers or name no landmark of the set, a malformed ``label_info``,
            or a landmark drawn as more than one connected region.
    """
    lm = np.asarray(labelmap)
    if not np.all(np.isfinite(lm)) or not np.all(np.mod(lm, 1) == 0) or lm.min(initial=0) < 0:
        raise AnnotationError("The label map must hold non-negative integer values (landmark k = value k)")
    mapping = _label_values(label_info, landmark_set)
    values = [int(v) for v in np.unique(lm) if v != 0]
    unknown = [v for v in values if v not in mapping]
    if unknown:
        raise AnnotationError(
            f"The label map has value(s) {unknown[:5]} that are not landmarks of the set {landmark_set.name!r} "
            f"(values 1..{len(landmark_set)}, or as named in label_info)"
        )
    lmi = lm.astype(np.int64)
    remap = np.zeros(int(lmi.max(initial=0)) + 1, dtype=np.int64)
    for v, k in mapping.items():
        if v < len(remap):
            remap[v] = k
    landmarks = remap[lmi]
    _check_single_regions(landmarks, landmark_set)
    return Fn.labelmap_to_points(landmarks, len(landmark_set))


def json_points(doc: Mapping[str, Any], landmark_set: LandmarkSet, geometry: ViewerGeometry) -> np.ndarray:
    """Points from a JSON label: Slicer markups, our ``{"landmarks": [...]}`` (e.g. an infer result) -> ``(K, 2)``.

    Markups positions are on the grid the viewer shows (``geometry``; the stored grid of a raster file with an EXIF
    orientation) and are converted to the upright frame; our format (read by
    :func:`anatomark.data.points_json.read_points_json`) is in the upright frame already. In our format a landmark is
    absent when it is left out or has ``"x": null, "y": null``; ``x`` and ``y`` must otherwise both be finite JSON
    numbers.

    Raises:
        AnnotationError: unknown or repeated names (any copy, also a null one), non-numeric, boolean or non-finite
            coordinates, or only one of ``x`` / ``y``.
    """
    if "markups" in doc:
        return markups_points(rois_as_point_list(doc, landmark_set.names), landmark_set.names, geometry)
    items = doc.get("landmarks")
    if not isinstance(items, list):
        raise AnnotationError(
            "JSON label not understood: expected a 3D Slicer markups document ('markups') or "
            "{'landmarks': [{'name', 'x', 'y'}, ...]}"
        )
    return read_points_json(doc, landmark_set.names, landmark_set.name)


def rois_as_point_list(doc: Mapping[str, Any], names: Sequence[str]) -> Mapping[str, Any]:
    """A markups document whose box ROIs (what 3D Slicer's stock MONAILabel module saves for a ``detection`` model:
    every ROI node of the scene, see :class:`anatomark.monailabel.infer.LandmarkPointsInferTask`) are replaced by one
    point list: each ROI whose control point is labelled with a landmark name gives that landmark at the ROI's
    ``center`` (else its control point's position). ROIs without a landmark label (the module's own empty "SAM2 ROI",
    "Scribbles ROI") are left out, unless no ROI is labelled and there are exactly ``len(names)``: then in order.
    Documents without ROIs are returned as they are; the point list is checked by the markups reader as any other.

    Raises:
        AnnotationError: ROIs only, and none of them can be read as a landmark.
    """
    markups = doc.get("markups")
    if not isinstance(markups, list) or not any(isinstance(m, Mapping) and m.get("type") == "ROI" for m in markups):
        return doc
    others = [m for m in markups if not (isinstance(m, Mapping) and m.get("type") == "ROI")]
    found = []  # (label or None, position, status, coordinate system)
    for m in markups:
        if not (isinstance(m, Mapping) and m.get("type") == "ROI"):
            continue
        cps = m.get("controlPoints")
        cp = cps[0] if isinstance(cps, list) and cps and isinstance(cps[0], Mapping) else {}
        center = m.get("center")
        if not (isinstance(center, (list, tuple)) and 2 <= len(center) <= 3 and all(map(_finite, center))):
            center = cp.get("position")
        if center is None:
            continue  # an ROI that was never placed
        label = cp.get("label")
        found.append((label if label in names else None, center, cp.get("positionStatus", "defined"), m))
    labelled = [f for f in found if f[0] is not None]
    if not labelled and len(found) == len(names):
        labelled = [(n, *f[1:]) for n, f in zip(names, found)]
    if not labelled and not others:
        raise AnnotationError(
            f"The markups hold {len(found)} ROI(s), none labelled with a landmark name (and not one per landmark): "
            "save the ROIs the detection model returned"
        )
    points = [
        {
            "type": "Fiducial",
            "coordinateSystem": m.get("coordinateSystem", "LPS"),
            "controlPoints": [{"label": n, "position": list(c), "positionStatus": st}],
        }
        for n, c, st, m in labelled
    ]
    return {**doc, "markups": others + points}


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


def read_label_points(
    label_path: str | Path,
    image: XrayImage,
    image_path: str | Path,
    landmark_set: LandmarkSet,
    label_info: Any = None,
) -> np.ndarray:
    """Read any accepted label file for ``image`` -> ``(K, 2)`` pixel points (NaN = missing), in the upright frame.

    Label maps and Slicer markups are in the frame 3D Slicer (ITK) shows: a raster image's stored pixel grid, EXIF
    orientation ignored (also the label map's own); our ``{"landmarks": [...]}`` JSON and LabelMe JSON are upright.

    Args:
        label_path: the label file.
        image: the image as :func:`~anatomark.data.image_io.load_image` read it (upright).
        image_path: the image file (for the geometry a viewer gives it).
        landmark_set: the landmarks to read.
        label_info: Slicer's ``[{"name", "idx"}]`` for label maps (see :func:`labelmap_points`).

    Raises:
        AnnotationError: unreadable label, wrong geometry, landmarks not in the set, or no landmark at all.
    """
    label_path = Path(label_path)
    name = label_path.name.lower()
    if name.endswith(".json"):
        try:
            doc = json.loads(label_path.read_text())
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
            raise AnnotationError(f"The label is not valid JSON: {str(e)[:200]}") from e
        if not isinstance(doc, dict):
            raise AnnotationError("A JSON label must be an object")
        if "shapes" in doc:
            pts = read_labelme(label_path, landmark_set.names)
        else:
            pts = json_points(doc, landmark_set, viewer_geometry(image_path, image))
    else:
        lm = load_image(label_path)  # raises ImageReadError (an AnatomarkError) on corrupt files
        grid = exif_stored_array(lm.array, lm.exif_orientation)  # its pixels as stored, as ITK reads it
        orientation = image.exif_orientation if image.exif_orientation not in (None, 1) else None
        ws, hs = exif_stored_size_wh(image.size_wh, orientation)
        if grid.shape != (hs, ws):
            if orientation is None:
                problem = f"the image is {ws}x{hs} px: a label map must have the image's exact size and orientation"
            else:
                problem = (
                    f"the image is stored as {ws}x{hs} px (EXIF orientation {orientation}, shown upright as "
                    f"{image.shape[1]}x{image.shape[0]}): a label map must have the size and orientation of the "
                    "stored pixel grid, as 3D Slicer shows the file"
                )
            raise AnnotationError(f"The label map is {grid.shape[1]}x{grid.shape[0]} px but {problem}")
        pts = exif_from_stored(labelmap_points(grid, landmark_set, label_info), orientation, image.size_wh)
    if np.isnan(pts).all():
        raise AnnotationError(
            f"The label holds none of the {len(landmark_set)} landmarks of the set {landmark_set.name!r}"
        )
    h, w = image.shape
    outside = [
        f"{landmark_set.names[k]} ({p[0]:.6g}, {p[1]:.6g})"
        for k, p in enumerate(pts)
        if np.isfinite(p).all() and not (-0.5 <= p[0] <= w - 0.5 and -0.5 <= p[1] <= h - 0.5)
    ]
    if outside:
        raise AnnotationError(
            f"Landmark(s) outside the {w}x{h} px image: {', '.join(outside[:5])}; points are (x, y) pixels of this "
            "image (Slicer markups: in the geometry the viewer gives it); leave a landmark out if it is not visible"
        )
    return pts


def points_to_json(points: np.ndarray) -> list[list[float] | None]:
    """``(K, 2)`` -> JSON-able list, ``None`` for missing landmarks (never (0, 0))."""
    return [None if not np.isfinite(p).all() else [round(float(p[0]), 3), round(float(p[1]), 3)] for p in points]


def points_from_json(values: Sequence[Any], num_landmarks: int) -> np.ndarray:
    """Inverse of :func:`points_to_json`."""
    if not isinstance(values, (list, tuple)) or len(values) != num_landmarks:
        raise AnnotationError(f"stored landmarks must be a list of {num_landmarks} [x, y] or null entries")
    return np.array([[np.nan, np.nan] if v is None else [float(v[0]), float(v[1])] for v in values], dtype=np.float64)


def stored_label_info(landmark_set: LandmarkSet) -> list[dict[str, Any]]:
    """Slicer's ``label_info`` of the label maps the server stores and serves: landmark k (1..K, the set's order) is
    value k, whatever order the client's label map used (it is re-encoded into this order when saved)."""
    return [{"name": n, "idx": k} for k, n in enumerate(landmark_set.names, start=1)]
