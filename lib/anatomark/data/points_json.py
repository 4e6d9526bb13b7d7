"""The points JSON: anatomark's own landmark document, read and written here only.

``{"landmarks": [{"index", "name", "x", "y", ...}, ...], ...}``: what ``anatomark infer`` writes, what the server's
``/infer`` answers, what the server keeps as an image's ``original`` label and what it accepts as a label (besides
Slicer markups, LabelMe and label maps, see :mod:`anatomark.monailabel.labels`).

Each landmark entry has (the writer's keys, a superset of what every earlier writer wrote):

* ``index`` (1-based, the landmark-set order) and ``name``;
* ``x``, ``y``: pixels of the image (origin at the centre of the top-left pixel), ``null`` when the landmark is
  absent;
* with a spacing: ``x_mm``, ``y_mm`` (``x * sx``, ``y * sy``); with confidences: ``confidence``;
* any further per-landmark column the caller gives (``shape_prior_replaced``, ``expected_error_mm``, ...).

The document may carry more keys (``image``, ``size_wh``, ``spacing_mm``, ``landmark_set``, ``model``, ``quality``,
``orientation``, ``measurements`` ...); the reader looks at ``landmarks`` only. It is strict, as every reader of
:mod:`anatomark.data.annotations`: a landmark is absent when it is left out or has ``"x": null, "y": null``; ``x``
and ``y`` must otherwise both be finite JSON numbers, and each landmark may be given once.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from anatomark.data.annotations import _atomic_write_text, coordinate
from anatomark.errors import AnnotationError

#: the key of the landmark list
LANDMARKS = "landmarks"


# ---------------------------------------------------------------------------------------------------- reading
def load_points_json(path: str | Path) -> dict[str, Any]:
    """The JSON object in ``path``.

    Raises:
        AnnotationError: the file cannot be read, is not JSON, or does not hold an object.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise AnnotationError(f"{path} is not a readable points JSON: {str(e)[:200]}") from e
    if not isinstance(doc, dict):
        raise AnnotationError(f"{path} must hold a JSON object")
    return doc


def read_points_json(
    source: Mapping[str, Any] | str | Path, names: Sequence[str], set_name: str | None = None
) -> np.ndarray:
    """The points of a points JSON document, in the order of ``names``.

    Args:
        source: the parsed document, or a file holding it.
        names: landmark names in set order; entries are matched by ``name``.
        set_name: the landmark set's name, for the messages.

    Returns:
        ``(K, 2)`` float array ``(x, y)`` in pixels; absent landmarks are ``NaN``.

    Raises:
        AnnotationError: no ``landmarks`` list, an entry that is not an object with a ``name``, unknown or repeated
            names (any copy, also a null one), non-numeric, boolean or non-finite coordinates, or only one of
            ``x`` / ``y``.
    """
    doc = source if isinstance(source, Mapping) else load_points_json(source)
    items = doc.get(LANDMARKS)
    if not isinstance(items, list):
        raise AnnotationError(
            "expected a JSON object with a 'landmarks' list: {'landmarks': [{'name', 'x', 'y'}, ...]}"
        )
    index = {n: i for i, n in enumerate(names)}
    pts = np.full((len(names), 2), np.nan)
    seen: dict[str, int] = {}
    the_set = f"the set {set_name!r}" if set_name else "the landmark set"
    for i, e in enumerate(items):
        if not isinstance(e, Mapping) or "name" not in e:
            raise AnnotationError("each entry of 'landmarks' must be an object with 'name', 'x' and 'y'")
        name = str(e["name"])
        if name not in index:
            raise AnnotationError(f"unknown landmark {name!r}; {the_set} has: {', '.join(names)}")
        if name in seen:
            raise AnnotationError(
                f"landmark {name!r} is given twice (entries {seen[name] + 1} and {i + 1} of 'landmarks'); give each "
                "landmark once, with null x/y (or left out) when it is missing"
            )
        seen[name] = i
        x, y = e.get("x"), e.get("y")
        if x is None and y is None:
            continue
        if x is None or y is None:
            given, missing = ("x", "y") if y is None else ("y", "x")
            raise AnnotationError(
                f"landmark {name!r} has {given} but no {missing}; give both, or neither (null) when it is missing"
            )
        pts[index[name]] = (coordinate(x, f"landmark {name!r}: x"), coordinate(y, f"landmark {name!r}: y"))
    return pts


# ---------------------------------------------------------------------------------------------------- writing
def _rounded(value: float, decimals: int | None) -> float | None:
    v = float(value)
    if not np.isfinite(v):
        return None
    return v if decimals is None else round(v, decimals)


def _plain(value: Any) -> Any:
    """A numpy scalar as the Python value JSON can hold (``np.bool_`` -> ``bool``)."""
    return value.item() if isinstance(value, np.generic) else value


def landmark_entries(
    points: np.ndarray,
    names: Sequence[str],
    spacing: Sequence[float] | None = None,
    confidence: Sequence[float] | None = None,
    decimals: int | None = 2,
    **columns: Sequence[Any] | None,
) -> list[dict[str, Any]]:
    """One JSON-ready entry per landmark (see the module docstring for the keys).

    Args:
        points: ``(K, 2)`` ``(x, y)`` pixels, ``NaN`` where a landmark is absent (written as ``null``).
        names: the ``K`` landmark names.
        spacing: ``(sx, sy)`` mm/px: adds ``x_mm`` and ``y_mm`` (3 decimals).
        confidence: ``(K,)``: adds ``confidence`` (4 decimals).
        decimals: decimals of ``x`` and ``y`` (``None``: as given).
        **columns: further per-landmark values, ``K`` each, added under their keyword (``None`` adds nothing).

    Raises:
        AnnotationError: ``points`` is not ``(K, 2)`` for the ``K`` names, or a column has another length.
    """
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2 or pts.shape[0] != len(names):
        raise AnnotationError(f"points JSON: points must have shape ({len(names)}, 2), got {pts.shape}")
    given = {k: list(v) for k, v in columns.items() if v is not None}
    if confidence is not None:
        given = {"confidence": [_rounded(c, 4) for c in confidence], **given}
    wrong = [k for k, v in given.items() if len(v) != len(names)]
    if wrong:
        raise AnnotationError(f"points JSON: {', '.join(wrong)} must have one value per landmark ({len(names)})")
    mm = None if spacing is None else pts * np.asarray(spacing, dtype=np.float64)
    out = []
    for k, (n, p) in enumerate(zip(names, pts)):
        e: dict[str, Any] = {"index": k + 1, "name": n, "x": _rounded(p[0], decimals), "y": _rounded(p[1], decimals)}
        if e["x"] is None or e["y"] is None:
            e["x"] = e["y"] = None
        if mm is not None:
            e["x_mm"], e["y_mm"] = (None, None) if e["x"] is None else (_rounded(mm[k, 0], 3), _rounded(mm[k, 1], 3))
        for key, values in given.items():
            e[key] = _plain(values[k])
        out.append(e)
    return out


def points_document(points: np.ndarray, names: Sequence[str], **fields: Any) -> dict[str, Any]:
    """``{"landmarks": landmark_entries(points, names, ...)}``; ``fields`` are passed to :func:`landmark_entries`."""
    return {LANDMARKS: landmark_entries(points, names, **fields)}


def write_points_json(path: str | Path, doc: Mapping[str, Any], indent: int | None = 2) -> Path:
    """Write a points JSON document (e.g. from :func:`points_document`, with more keys) to ``path``, atomically.

    Raises:
        AnnotationError: ``doc`` has no ``landmarks`` list.
    """
    if not isinstance(doc.get(LANDMARKS), list):
        raise AnnotationError("a points JSON document needs a 'landmarks' list")
    return _atomic_write_text(path, json.dumps(doc, indent=indent))
