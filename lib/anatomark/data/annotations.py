"""Landmark annotation formats.

All readers return points as a ``(K, 2)`` float array in landmark-set order, ``(x, y)`` in pixels of the
image (origin at the centre of the top-left pixel); a landmark that is absent is ``NaN`` (never ``(0, 0)``).

Every reader is strict about what it is given, so that a malformed label never silently becomes a wrong point: a
coordinate must be a finite JSON number (``NaN``, ``Infinity``, strings and ``true``/``false`` are refused), each
landmark may appear once (a second copy is refused even when one of the copies is empty), and an absent landmark is
said by leaving it out (or ``null`` / an empty CSV cell / ``positionStatus: undefined``), never by a half-given point.

Formats:
- CSV (the project's native format, as in ``../shared/datasets/isbi2015``): one row per image,
  columns ``image, <name>_x, <name>_y, ...`` in landmark-set order.
- LabelMe JSON: ``shapes`` of ``shape_type: point`` whose ``label`` is a landmark name.
- 3D Slicer point-list markups JSON (``.mrk.json``): positions in LPS mm (or RAS, converted); pixel
  ``(x, y)`` sits at LPS ``(origin_x + x * sx, origin_y + y * sy, 0)`` for an axis-aligned 2D image.
"""

from __future__ import annotations

import csv
import json
import math
import numbers
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from anatomark.errors import AnnotationError
from anatomark.paths import atomic_write

SLICER_MARKUPS_SCHEMA = (
    "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/Schema/"
    "markups-schema-v1.0.3.json#"
)


def _atomic_write_text(path: str | Path, text: str) -> Path:
    path = Path(path)
    with atomic_write(path) as tmp, open(tmp, "w", newline="") as f:
        f.write(text)
    return path


def _shown(value: Any) -> str:
    """``value`` as the user wrote it in JSON (``true``, ``"12"``, ``NaN``), shortened."""
    try:
        text = json.dumps(value, default=str)
    except (TypeError, ValueError, RecursionError):
        text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def coordinate(value: Any, what: str) -> float:
    """A coordinate read from a label file as a finite float.

    Args:
        value: the parsed JSON value.
        what: how to name it in the error, e.g. ``"landmark 'sella': x"``.

    Raises:
        AnnotationError: ``value`` is a boolean, not a number (a string, a list, ``null``) or not finite.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise AnnotationError(
            f"{what} is {_shown(value)}, not a number; coordinates must be JSON numbers such as 123.4 "
            "(leave the landmark out, or null, if it is not visible)"
        )
    try:
        v = float(value)
    except OverflowError:
        v = math.inf
    if not math.isfinite(v):
        raise AnnotationError(
            f"{what} is {_shown(value)}: coordinates must be finite numbers; leave the landmark out (or null) if it "
            "is not visible"
        )
    return v


def _check_points(points: np.ndarray, names: Sequence[str], what: str) -> np.ndarray:
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2:
        raise AnnotationError(f"{what}: points must have shape (K, 2), got {points.shape}")
    if points.shape[0] != len(names):
        raise AnnotationError(f"{what}: {points.shape[0]} points given but the landmark set has {len(names)}")
    return points


# ---------------------------------------------------------------- CSV
def read_landmark_csv(path: str | Path, names: Sequence[str]) -> dict[str, np.ndarray]:
    """Read a landmark CSV.

    Args:
        path: CSV with columns ``image, <name>_x, <name>_y`` for every name (extra columns are ignored).
        names: landmark names in set order.

    Returns:
        ``{image file name: (K, 2) array}``; empty cells become ``NaN``.

    Raises:
        AnnotationError: file missing, columns missing, non-numeric or non-finite values, a landmark with only one
            of its two coordinates, or duplicate images.
    """
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(f"Landmark CSV not found: {path}")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        required = ["image"] + [f"{n}_{c}" for n in names for c in ("x", "y")]
        missing = [c for c in required if c not in header]
        if missing:
            shown = ", ".join(missing[:6]) + (" ..." if len(missing) > 6 else "")
            raise AnnotationError(
                f"{path.name} lacks {len(missing)} required column(s): {shown}. Expected 'image' and "
                f"'<name>_x', '<name>_y' for each of the {len(names)} landmarks of the set"
            )
        out: dict[str, np.ndarray] = {}
        for line, row in enumerate(reader, start=2):
            img = (row.get("image") or "").strip()
            if not img:
                raise AnnotationError(f"{path.name} line {line}: empty 'image' cell")
            if img in out:
                raise AnnotationError(f"{path.name} line {line}: image {img!r} appears twice")
            pts = np.full((len(names), 2), np.nan)
            for k, n in enumerate(names):
                for j, c in enumerate(("x", "y")):
                    cell = (row.get(f"{n}_{c}") or "").strip()
                    if cell == "":
                        continue
                    try:
                        pts[k, j] = float(cell)
                    except ValueError as e:
                        raise AnnotationError(f"{path.name} line {line}: {n}_{c}={cell!r} is not a number") from e
                    if not math.isfinite(pts[k, j]):
                        raise AnnotationError(
                            f"{path.name} line {line}: {n}_{c}={cell!r} is not a finite number; leave both cells of "
                            "a landmark empty when it is missing"
                        )
                if np.isnan(pts[k]).sum() == 1:
                    given, empty = ("x", "y") if np.isnan(pts[k, 1]) else ("y", "x")
                    raise AnnotationError(
                        f"{path.name} line {line}: landmark {n!r} has {given} but an empty {n}_{empty}; give both "
                        "coordinates, or leave both cells empty when the landmark is missing"
                    )
            out[img] = pts
    return out


def write_landmark_csv(path: str | Path, points: Mapping[str, np.ndarray], names: Sequence[str]) -> Path:
    """Write ``{image: (K, 2)}`` as a landmark CSV (``NaN`` -> empty cell), atomically."""
    import io

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["image"] + [f"{n}_{c}" for n in names for c in ("x", "y")])
    for img, pts in points.items():
        pts = _check_points(pts, names, f"CSV row {img}")
        w.writerow([img] + ["" if np.isnan(v) else f"{v:.3f}" for v in pts.reshape(-1)])
    return _atomic_write_text(path, buf.getvalue())


# ---------------------------------------------------------------- LabelMe
def read_labelme(path: str | Path, names: Sequence[str]) -> np.ndarray:
    """Read a LabelMe JSON file: point shapes labelled by landmark name -> ``(K, 2)``.

    Raises:
        AnnotationError: unknown or repeated landmark names, or a point shape without exactly one finite ``[x, y]``.
    """
    data = _load_json(path)
    what = Path(path).name
    shapes = data.get("shapes")
    if not isinstance(shapes, list):
        raise AnnotationError(f"{what} is not a LabelMe file: no 'shapes' list")
    index = {n: i for i, n in enumerate(names)}
    pts = np.full((len(names), 2), np.nan)
    seen: set[str] = set()
    for s in shapes:
        if not isinstance(s, dict) or s.get("shape_type", "point") != "point":
            continue
        label = str(s.get("label", ""))
        if label not in index:
            raise AnnotationError(f"{what}: unknown landmark {label!r}; expected one of the set's names")
        if label in seen:
            raise AnnotationError(f"{what}: landmark {label!r} is given twice; keep one point per landmark")
        seen.add(label)
        xy = s.get("points")
        if not (isinstance(xy, list) and len(xy) == 1 and isinstance(xy[0], list) and len(xy[0]) == 2):
            raise AnnotationError(
                f"{what}: point {label!r} has no valid [x, y]; a LabelMe point shape has 'points': [[x, y]]"
            )
        pts[index[label]] = (
            coordinate(xy[0][0], f"{what}: point {label!r} x"),
            coordinate(xy[0][1], f"{what}: point {label!r} y"),
        )
    return pts


def write_labelme(
    path: str | Path,
    points: np.ndarray,
    names: Sequence[str],
    image_path: str = "",
    image_size_hw: tuple[int, int] | None = None,
) -> Path:
    """Write ``(K, 2)`` points as LabelMe JSON (missing landmarks are left out)."""
    points = _check_points(points, names, "LabelMe")
    shapes = [
        {"label": n, "points": [[float(p[0]), float(p[1])]], "group_id": None, "shape_type": "point", "flags": {}}
        for n, p in zip(names, points)
        if not np.isnan(p).any()
    ]
    doc: dict[str, Any] = {
        "version": "5.2.1",
        "flags": {},
        "shapes": shapes,
        "imagePath": image_path,
        "imageData": None,
    }
    if image_size_hw:
        doc["imageHeight"], doc["imageWidth"] = int(image_size_hw[0]), int(image_size_hw[1])
    return _atomic_write_text(path, json.dumps(doc, indent=2))


# ---------------------------------------------------------------- 3D Slicer markups
def read_slicer_markups(
    path_or_doc: str | Path | Mapping[str, Any],
    names: Sequence[str],
    spacing: tuple[float, float] = (1.0, 1.0),
    origin: tuple[float, float] = (0.0, 0.0),
) -> np.ndarray:
    """Read a Slicer point-list markups JSON and convert positions to pixels.

    Args:
        path_or_doc: ``.mrk.json`` path or the parsed document.
        names: landmark names; control points are matched by ``label``.
        spacing: ``(sx, sy)`` mm/px of the image the markups were placed on.
        origin: LPS ``(x, y)`` of the image's top-left pixel centre.

    Returns:
        ``(K, 2)`` pixel points; landmarks not present (or with ``positionStatus: undefined``) are ``NaN``.

    Raises:
        AnnotationError: not a markups document, unknown or repeated labels (also when a copy is undefined), an
            unknown ``positionStatus``, or a defined point whose ``position`` is not finite numbers.
    """
    doc = path_or_doc if isinstance(path_or_doc, Mapping) else _load_json(path_or_doc)
    what = "markups" if isinstance(path_or_doc, Mapping) else Path(path_or_doc).name
    markups = doc.get("markups")
    if not isinstance(markups, list) or not markups:
        raise AnnotationError(f"{what} is not a Slicer markups file: no 'markups' list")
    index = {n: i for i, n in enumerate(names)}
    pts = np.full((len(names), 2), np.nan)
    seen: set[str] = set()
    for m in markups:
        if not isinstance(m, dict):
            raise AnnotationError(f"{what}: each entry of 'markups' must be an object")
        system = str(m.get("coordinateSystem", "LPS")).upper()
        if system not in ("LPS", "RAS"):
            raise AnnotationError(f"{what}: unsupported coordinateSystem {system!r} (use LPS or RAS)")
        cps = m.get("controlPoints", [])
        if not isinstance(cps, list):
            raise AnnotationError(f"{what}: 'controlPoints' must be a list")
        for cp in cps:
            if not isinstance(cp, dict):
                raise AnnotationError(f"{what}: each control point must be an object")
            label = str(cp.get("label", ""))
            if label not in index:
                raise AnnotationError(f"{what}: unknown landmark {label!r}; expected one of the set's names")
            if label in seen:
                raise AnnotationError(
                    f"{what}: landmark {label!r} is given twice; keep one control point per landmark (an undefined "
                    "copy counts too)"
                )
            seen.add(label)
            status = cp.get("positionStatus", "defined")
            if status == "undefined":
                continue
            if status not in ("defined", "preview"):
                raise AnnotationError(
                    f"{what}: control point {label!r} has positionStatus {_shown(status)}; use 'defined', 'preview' "
                    "or 'undefined'"
                )
            position = cp.get("position")
            if not isinstance(position, (list, tuple)) or not 2 <= len(position) <= 3:
                raise AnnotationError(
                    f"{what}: control point {label!r} has no valid 'position' (expected [x, y, z] in mm, got "
                    f"{_shown(position)})"
                )
            pos = [coordinate(v, f"{what}: control point {label!r} position[{j}]") for j, v in enumerate(position)]
            if system == "RAS":
                pos[0], pos[1] = -pos[0], -pos[1]
            pts[index[label]] = ((pos[0] - origin[0]) / spacing[0], (pos[1] - origin[1]) / spacing[1])
    return pts


def slicer_markups_document(
    points: np.ndarray,
    names: Sequence[str],
    spacing: tuple[float, float] = (1.0, 1.0),
    origin: tuple[float, float] = (0.0, 0.0),
    descriptions: Sequence[str] | None = None,
    node_name: str = "landmarks",
) -> dict[str, Any]:
    """Build a Slicer point-list markups document (LPS) from ``(K, 2)`` pixel points."""
    points = _check_points(points, names, "Slicer markups")
    cps = []
    for k, (n, p) in enumerate(zip(names, points)):
        defined = not np.isnan(p).any()
        pos = (
            [origin[0] + float(p[0]) * spacing[0], origin[1] + float(p[1]) * spacing[1], 0.0]
            if defined
            else [0.0, 0.0, 0.0]
        )
        cps.append(
            {
                "id": str(k + 1),
                "label": n,
                "description": descriptions[k] if descriptions else "",
                "associatedNodeID": "",
                "position": pos,
                "orientation": [-1.0, -0.0, -0.0, -0.0, -1.0, -0.0, 0.0, 0.0, 1.0],
                "selected": True,
                "locked": False,
                "visibility": True,
                "positionStatus": "defined" if defined else "undefined",
            }
        )
    return {
        "@schema": SLICER_MARKUPS_SCHEMA,
        "markups": [
            {
                "type": "Fiducial",
                "coordinateSystem": "LPS",
                "coordinateUnits": "mm",
                "locked": False,
                "fixedNumberOfControlPoints": False,
                "labelFormat": "%N-%d",
                "lastUsedControlPointNumber": len(cps),
                "controlPoints": cps,
                "measurements": [],
                "display": {"visibility": True, "textScale": 3.0, "glyphScale": 1.5, "pointLabelsVisibility": True},
                "name": node_name,
            }
        ],
    }


def write_slicer_markups(
    path: str | Path,
    points: np.ndarray,
    names: Sequence[str],
    spacing: tuple[float, float] = (1.0, 1.0),
    origin: tuple[float, float] = (0.0, 0.0),
    descriptions: Sequence[str] | None = None,
) -> Path:
    """Write ``(K, 2)`` pixel points as a Slicer ``.mrk.json`` in LPS, atomically."""
    doc = slicer_markups_document(points, names, spacing, origin, descriptions)
    return _atomic_write_text(path, json.dumps(doc, indent=2))


def _load_json(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(f"Annotation file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AnnotationError(f"{path.name} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise AnnotationError(f"{path.name} must hold a JSON object")
    return data
