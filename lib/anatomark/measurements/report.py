"""Measurement reports: flat tables (CSV/JSON) and PNG overlays with the lines and values drawn."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from anatomark.measurements.base import MeasurementResult

TABLE_COLUMNS = ("image", "landmark_set", "name", "value", "unit", "class", "class_description", "reason")
LINE_COLORS = ("#ff4040", "#40c0ff", "#ffd000", "#60ff60", "#ff70ff", "#ff9030", "#a0a0ff", "#00e0c0")


def table_rows(image: str, landmark_set: str, results: Sequence[MeasurementResult]) -> list[dict[str, Any]]:
    """One flat row per measurement with the :data:`TABLE_COLUMNS` (value rounded to 4 decimals)."""
    return [
        {
            "image": image,
            "landmark_set": landmark_set,
            "name": r.name,
            "value": None if r.value is None else round(float(r.value), 4),
            "unit": r.unit,
            "class": r.klass,
            "class_description": r.class_description,
            "reason": r.reason,
        }
        for r in results
    ]


def write_table(path: str | Path, rows: Sequence[dict[str, Any]], documents: Sequence[dict[str, Any]] = ()) -> Path:
    """Write rows as CSV (``.csv``) or, for any other suffix, JSON ``{"images": documents}`` (atomically)."""
    from anatomark.data.annotations import _atomic_write_text

    path = Path(path)
    if path.suffix.lower() == ".csv":
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(TABLE_COLUMNS), extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: "" if r.get(k) is None else r.get(k) for k in TABLE_COLUMNS})
        return _atomic_write_text(path, buf.getvalue())
    return _atomic_write_text(path, json.dumps({"images": list(documents)}, indent=2))


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """Plain-text table for the terminal."""
    out = []
    for r in rows:
        if r["value"] is None:
            out.append(f"{r['image']}  {r['name']:<10} not computable: {r['reason']}")
            continue
        cls = f"  class {r['class']} ({r['class_description']})" if r["class"] is not None else ""
        out.append(f"{r['image']}  {r['name']:<10} {r['value']:>9.2f} {r['unit']:<5}{cls}")
    return "\n".join(out)


def draw_measurements(
    points: np.ndarray,
    labels: Sequence[str],
    colors: Sequence[str],
    results: Sequence[MeasurementResult],
    image: Any = None,
    size_wh: Sequence[int] | None = None,
    max_size: int = 1200,
) -> np.ndarray:
    """``(H', W', 3)`` uint8 RGB report: the X-ray (or a dark canvas), landmarks, each measurement's lines in its
    colour and a legend with ``name value unit class``.

    Args:
        points: ``(K, 2)`` (x, y) pixels.
        labels, colors: short name and ``#rrggbb`` colour per landmark.
        results: measurements (their ``lines`` are pixel segments).
        image: an :class:`anatomark.data.image_io.XrayImage`, or ``None`` for a blank canvas of ``size_wh``
            (default: the points' extent plus a margin).
        max_size: long side of the output, pixels.
    """
    from PIL import Image, ImageDraw

    pts = np.asarray(points, dtype=np.float64)
    if image is not None:
        from anatomark.visualize import draw_overlay

        w, h = image.size_wh
        im = Image.fromarray(draw_overlay(image, pts, labels, colors, max_size=max_size))
        s = im.width / w
        d = ImageDraw.Draw(im)
    else:
        finite = pts[np.isfinite(pts).all(axis=1)]
        if size_wh is None:
            hi = finite.max(axis=0) if len(finite) else np.array([100.0, 100.0])
            size_wh = (int(hi[0] * 1.1) + 20, int(hi[1] * 1.1) + 20)
        w, h = int(size_wh[0]), int(size_wh[1])
        s = min(1.0, max_size / max(w, h))
        im = Image.new("RGB", (max(1, round(w * s)), max(1, round(h * s))), (24, 24, 24))
        d = ImageDraw.Draw(im)
        r = max(3, round(min(im.size) / 150))
        for p, lab, col in zip(pts, labels, colors):
            if np.isnan(p).any():
                continue
            x, y = (p + 0.5) * s - 0.5
            d.ellipse([x - r, y - r, x + r, y + r], fill=col, outline="black")
            d.text((x + r + 2, y - r - 2), lab, fill=col)
    width = max(1, round(min(im.size) / 400))
    legend = []
    for i, res in enumerate(results):
        col = LINE_COLORS[i % len(LINE_COLORS)]
        for a, b in res.lines:
            (x0, y0), (x1, y1) = ((np.asarray(a) + 0.5) * s - 0.5), ((np.asarray(b) + 0.5) * s - 0.5)
            d.line([(x0, y0), (x1, y1)], fill=col, width=width)
        if res.value is None:
            legend.append((f"{res.name}: n/a ({res.reason})", "#c0c0c0"))
        else:
            cls = f"  [{res.klass}: {res.class_description}]" if res.klass is not None else ""
            legend.append((f"{res.name}: {res.value:.2f} {res.unit}{cls}", col))
    y = 4
    for text, col in legend:
        d.rectangle([2, y - 1, 8 + 6 * len(text), y + 11], fill=(0, 0, 0))
        d.text((5, y), text, fill=col)
        y += 13
    return np.asarray(im)


def save_measurement_report(path: str | Path, *args: Any, **kwargs: Any) -> Path:
    """:func:`draw_measurements` written to a PNG (atomically)."""
    from anatomark.data.image_io import save_png

    return save_png(draw_measurements(*args, **kwargs), path)
