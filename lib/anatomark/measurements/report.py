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
#: One colour per measurement, in result order, chosen far apart on a gray X-ray (lines get a black edge): for the
#: ISBI order ANB, SNB, SNA, ODI, APDI, FHI, FMA, MW -> magenta, blue, yellow, green, cyan, white, red, orange.
LINE_COLORS = ("#ff3dff", "#3a6bff", "#ffee00", "#3dff3d", "#00e5ff", "#ffffff", "#ff2a2a", "#ff8c00")


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


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one fixed-size bitmap font
        return ImageFont.load_default()


def measurement_colors(results: Sequence[MeasurementResult]) -> list[str]:
    """The ``#rrggbb`` colour of each result in a report (:data:`LINE_COLORS` in order, cycled)."""
    return [LINE_COLORS[i % len(LINE_COLORS)] for i in range(len(results))]


def _unit(unit: str) -> str:
    return "°" if unit == "deg" else "" if unit == "ratio" else f" {unit}"


def legend_entries(results: Sequence[MeasurementResult]) -> list[dict[str, Any]]:
    """What the report's legend says about each result: ``{"name", "title", "lines", "color"}``.

    ``name`` is the result's name as in the JSON/CSV tables; ``title`` starts with it (value, unit, class);
    ``lines`` are the explanation (the result's description, end vertebrae for Cobb angles, or why there is no value).
    """
    out = []
    for res, col in zip(results, measurement_colors(results)):
        if res.value is None:
            title, color = f"{res.name}: n/a", "#b0b0b0"
            lines = [str(res.reason or "not computable")]
        else:
            title, color = f"{res.name}  {res.value:.2f}{_unit(res.unit)}", col
            if res.klass is not None:
                title += f"   type {res.klass}: {res.class_description}"
            lines = [res.description] if res.description else []
            ends = res.details.get("end_vertebrae") if isinstance(res.details, dict) else None
            if ends:
                lines.append(f"end vertebrae {ends[0]}-{ends[-1]}")
        out.append({"name": res.name, "title": title, "lines": lines, "color": color})
    return out


def _wrap(text: str, font: Any, width: float, draw: Any) -> list[str]:
    words, lines, line = text.split(), [], ""
    for w in words:
        trial = f"{line} {w}".strip()
        if line and draw.textlength(trial, font=font) > width:
            lines.append(line)
            line = w
        else:
            line = trial
    return lines + ([line] if line else [])


def _landmark_labels(labels: Sequence[str]) -> list[str | None]:
    """Labels drawn beside the points: all of them, or one per group for many grid-named landmarks.

    More than 40 labels of the form ``<group><part>`` with every group having the same parts (``T1TL, T1TR, T1BL,
    T1BR, T2TL, ...``: 17 vertebrae x 4 corners) are labelled once per group (``T1``) at the group's first point.
    """
    if len(labels) <= 40:
        return list(labels)
    best: list[str] | None = None
    for n in (1, 2, 3):  # the coarsest grid wins (T1 x {TL, TR, BL, BR} rather than T1T x {L, R})
        groups = [lab[:-n] for lab in labels]
        parts = {lab[-n:] for lab in labels}
        if len(set(groups)) * len(parts) == len(labels) and len(parts) > 1 and all(groups):
            if best is None or len(set(groups)) < len(set(best)):
                best = groups
    if best is None:
        return list(labels)
    return [g if k == 0 or best[k - 1] != g else None for k, g in enumerate(best)]


def draw_measurements(
    points: np.ndarray,
    labels: Sequence[str],
    colors: Sequence[str],
    results: Sequence[MeasurementResult],
    image: Any = None,
    size_wh: Sequence[int] | None = None,
    max_size: int = 1200,
) -> np.ndarray:
    """``(H', W', 3)`` uint8 RGB report: the X-ray (or a dark canvas) with the landmarks, each measurement's lines
    and angle arcs in its own colour with its name on the picture, and a legend panel on the right.

    Segments used by several measurements (S-N by SNA, SNB and FMA; an end vertebra shared by two Cobb angles) are
    drawn side by side, one strip per measurement, so that no colour hides another.

    Args:
        points: ``(K, 2)`` (x, y) pixels.
        labels, colors: short name and ``#rrggbb`` colour per landmark (the landmarks are drawn in white so that the
            colours belong to the measurements; ``colors`` is kept for callers).
        results: measurements (their ``lines`` are pixel segments, ``arcs`` the angles to mark).
        image: an :class:`anatomark.data.image_io.XrayImage`, or ``None`` for a blank canvas of ``size_wh``
            (default: the points' extent plus a margin).
        max_size: long side of the picture part, pixels.
    """
    from PIL import Image, ImageDraw

    del colors  # landmarks are white: colour means "measurement" in a report
    pts = np.asarray(points, dtype=np.float64)
    if image is not None:
        from anatomark.transforms.functional import scale_intensity

        w, h = image.size_wh
        pic = Image.fromarray((scale_intensity(image.array) * 255).astype(np.uint8)).convert("RGB")
        s = min(1.0, max_size / max(w, h))
        if s < 1.0:
            pic = pic.resize((max(1, round(w * s)), max(1, round(h * s))), Image.BILINEAR)
    else:
        finite = pts[np.isfinite(pts).all(axis=1)]
        if size_wh is None:
            hi = finite.max(axis=0) if len(finite) else np.array([100.0, 100.0])
            size_wh = (int(hi[0] * 1.1) + 20, int(hi[1] * 1.1) + 20)
        w, h = int(size_wh[0]), int(size_wh[1])
        s = min(1.0, max_size / max(w, h))
        pic = Image.new("RGB", (max(1, round(w * s)), max(1, round(h * s))), (24, 24, 24))
    long_side = max(pic.size)
    width = max(2, round(long_side / 350))  # line width
    tag_font = _font(max(13, round(long_side / 60)))
    label_font = _font(max(11, round(long_side / 80)))
    title_font, text_font = _font(max(15, round(long_side / 52))), _font(max(12, round(long_side / 72)))

    def px(p: Any) -> np.ndarray:
        return (np.asarray(p, dtype=np.float64) + 0.5) * s - 0.5

    # ---------------------------------------------------------------- the legend panel (decides the canvas height)
    entries = legend_entries(results)
    panel_w = max(380, round(long_side * 0.42))
    probe = ImageDraw.Draw(pic)
    pad = max(8, round(long_side / 110))
    swatch = 3 * width + 2
    blocks, panel_h = [], pad
    for e in entries:
        title = _wrap(e["title"], title_font, panel_w - 2 * pad, probe)
        text = [ln for t in e["lines"] for ln in _wrap(t, text_font, panel_w - 2 * pad - 8, probe)]
        th = probe.textbbox((0, 0), "Ag", font=title_font)[3] + 4
        xh = probe.textbbox((0, 0), "Ag", font=text_font)[3] + 3
        blocks.append((e, title, text, th, xh))
        panel_h += swatch + 4 + len(title) * th + len(text) * xh + pad
    im = Image.new("RGB", (pic.width + panel_w, max(pic.height, panel_h)), (16, 16, 16))
    im.paste(pic, (0, 0))
    d = ImageDraw.Draw(im)

    # ---------------------------------------------------------------- measurement lines (shared segments side by side)
    palette = measurement_colors(results)
    users: dict[frozenset, list[int]] = {}
    for i, res in enumerate(results):
        for a, b in res.lines:
            key = frozenset({tuple(np.round(a, 2)), tuple(np.round(b, 2))})
            if i not in users.setdefault(key, []):
                users[key].append(i)
    gap = 1.6 * width + 1
    tag_anchor: dict[int, tuple[float, float]] = {}
    for i, res in enumerate(results):
        for j, (a, b) in enumerate(res.lines):
            key = frozenset({tuple(np.round(a, 2)), tuple(np.round(b, 2))})
            share = users[key]
            p0, p1 = px(a), px(b)
            v = p1 - p0
            n = np.array([-v[1], v[0]]) / max(1e-9, float(np.hypot(*v)))
            off = n * (share.index(i) - (len(share) - 1) / 2) * gap
            q0, q1 = p0 + off, p1 + off
            d.line([tuple(q0), tuple(q1)], fill=(0, 0, 0), width=width + 2)
            d.line([tuple(q0), tuple(q1)], fill=palette[i], width=width)
            if j == 0:
                right = q0 if q0[0] >= q1[0] else q1
                tag_anchor[i] = (float(right[0]) + 2 * width, float(right[1]))

    # ---------------------------------------------------------------- angle arcs, at the vertex the value is measured
    at_vertex: dict[tuple[int, int], int] = {}  # arcs already drawn around a vertex (SNA, SNB, ANB at N): nest them
    for i, res in enumerate(results):
        ends = [px(q) for seg in res.lines for q in seg]
        for k, (vertex, a, b) in enumerate(res.arcs):
            c, pa, pb = px(vertex), px(a), px(b)
            da, db = pa - c, pb - c
            angle = float(
                np.degrees(np.arccos(np.clip(np.dot(da, db) / max(1e-12, np.hypot(*da) * np.hypot(*db)), -1, 1)))
            )
            dashed = False
            if not (0 <= c[0] < pic.width and 0 <= c[1] < pic.height):
                # the lines meet off the picture (S-N and Go-Gn behind the head): draw the same angle at the nearest
                # end of the second line, between that line and a dashed parallel of the first one
                on_b = [
                    e
                    for e in ends
                    if abs(float(db[0] * (e - c)[1] - db[1] * (e - c)[0])) <= 1e-6 * max(1.0, float(np.dot(db, db)))
                ]
                if angle < 8 or not on_b:
                    continue  # nearly parallel planes: an arc would be a dot far away
                c = min(on_b, key=lambda e: float(np.hypot(*(e - c))))
                pa, pb, dashed = c + da, c + (pb - c if np.dot(pb - c, db) > 0 else db), True
            ra, rb = float(np.hypot(*(pa - c))), float(np.hypot(*(pb - c)))
            key = (round(c[0] / 4), round(c[1] / 4))
            nth = at_vertex.get(key, 0)
            at_vertex[key] = nth + 1
            base = float(np.clip(0.22 * min(ra, rb), 4 * width + 6, long_side / 20))
            radius = base * (1.0 + 0.45 * nth)
            for j, end in enumerate((pa, pb)):  # the rays from the vertex (extensions where it lies off the segments)
                ray = (end - c) / max(1e-9, float(np.hypot(*(end - c))))
                if dashed and j == 0:
                    for t in np.arange(0.0, 1.6 * radius, 6.0):
                        d.line(
                            [tuple(c + ray * t), tuple(c + ray * min(t + 3.0, 1.6 * radius))],
                            fill=palette[i],
                            width=width,
                        )
                else:
                    d.line(
                        [tuple(c), tuple(c + ray * min(float(np.hypot(*(end - c))), 1.4 * radius))],
                        fill=palette[i],
                        width=1,
                    )
            t0 = float(np.degrees(np.arctan2(pa[1] - c[1], pa[0] - c[0])))
            t1 = float(np.degrees(np.arctan2(pb[1] - c[1], pb[0] - c[0])))
            start, stop = (t0, t1) if (t1 - t0) % 360 <= 180 else (t1, t0)
            box = [c[0] - radius, c[1] - radius, c[0] + radius, c[1] + radius]
            d.arc(box, start, start + (stop - start) % 360, fill=(0, 0, 0), width=width + 2)
            d.arc(box, start, start + (stop - start) % 360, fill=palette[i], width=width)
            if k == 0:
                mid = np.radians(start + ((stop - start) % 360) / 2)
                tag_anchor[i] = (
                    float(c[0] + (radius + 3 * width) * np.cos(mid)),
                    float(c[1] + (radius + 3 * width) * np.sin(mid)),
                )

    # ---------------------------------------------------------------- landmarks (white), labels with a dark outline
    r = max(3, round(min(pic.size) / 160))
    for p, lab in zip(pts, _landmark_labels(labels)):
        if np.isnan(p).any():
            continue
        x, y = px(p)
        d.ellipse([x - r, y - r, x + r, y + r], fill=(255, 255, 255), outline=(0, 0, 0))
        if lab:
            d.text(
                (x + r + 2, y - r - 2),
                lab,
                fill=(235, 235, 235),
                font=label_font,
                stroke_width=2,
                stroke_fill=(0, 0, 0),
            )

    # ---------------------------------------------------------------- name tags on the picture (no overlaps)
    placed: list[tuple[float, float, float, float]] = []
    for i, res in enumerate(results):
        if res.value is None or i not in tag_anchor:
            continue
        text = f"{res.name} {res.value:.1f}°" if res.unit == "deg" else f"{res.name} {res.value:.2f}{_unit(res.unit)}"
        x0, y0, x1, y1 = d.textbbox((0, 0), text, font=tag_font)
        tw, th = x1 - x0 + 6, y1 - y0 + 6
        x = float(np.clip(tag_anchor[i][0], 2, max(2, pic.width - tw - 2)))
        y = float(np.clip(tag_anchor[i][1] - th / 2, 2, max(2, pic.height - th - 2)))
        for _ in range(40):
            if not any(x < bx1 and bx0 < x + tw and y < by1 and by0 < y + th for bx0, by0, bx1, by1 in placed):
                break
            y = y + th + 2 if y + 2 * th + 2 < pic.height else 2.0
        placed.append((x, y, x + tw, y + th))
        d.rectangle([x, y, x + tw, y + th], fill=(0, 0, 0), outline=palette[i])
        d.text((x + 3 - x0, y + 3 - y0), text, fill=palette[i], font=tag_font)

    # ---------------------------------------------------------------- legend
    x, y = pic.width + pad, pad
    for e, title, text, th, xh in blocks:
        d.line([(x, y + swatch // 2), (x + 4 * swatch, y + swatch // 2)], fill=e["color"], width=swatch)
        y += swatch + 4
        for ln in title:
            d.text((x, y), ln, fill=e["color"], font=title_font)
            y += th
        for ln in text:
            d.text((x + 8, y), ln, fill=(200, 200, 200), font=text_font)
            y += xh
        y += pad
    return np.asarray(im)


def save_measurement_report(path: str | Path, *args: Any, **kwargs: Any) -> Path:
    """:func:`draw_measurements` written to a PNG (atomically)."""
    from anatomark.data.image_io import save_png

    return save_png(draw_measurements(*args, **kwargs), path)
