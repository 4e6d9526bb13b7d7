"""Overlay PNGs: landmarks drawn on the X-ray with their short names."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from anatomark.data.image_io import XrayImage, save_png
from anatomark.transforms.functional import scale_intensity


def draw_overlay(
    image: XrayImage,
    points: np.ndarray,
    labels: Sequence[str],
    colors: Sequence[str],
    truth: np.ndarray | None = None,
    max_size: int = 1200,
    unreliable: Sequence[bool] | None = None,
    banner: str | None = None,
) -> np.ndarray:
    """Return an ``(H', W', 3)`` uint8 RGB overlay (downscaled so the long side <= ``max_size``).

    Predicted points are filled circles with labels; ``truth`` (optional) are hollow white circles joined
    to the prediction by a line. Landmarks flagged in ``unreliable`` are hollow rings labelled ``name?``; a
    ``banner`` (e.g. the quality warnings of an unreliable answer) is written in red across the top.
    """
    from PIL import Image, ImageDraw, ImageFont

    g = (scale_intensity(image.array) * 255).astype(np.uint8)
    im = Image.fromarray(g).convert("RGB")
    s = min(1.0, max_size / max(im.size))
    if s < 1.0:
        im = im.resize((round(im.width * s), round(im.height * s)), Image.BILINEAR)
    d = ImageDraw.Draw(im)
    r = max(3, round(min(im.size) / 150))
    for k, (p, lab, col) in enumerate(zip(points, labels, colors)):
        if np.isnan(p).any():
            continue
        x, y = (p + 0.5) * s - 0.5
        if truth is not None and not np.isnan(truth[k]).any():
            tx, ty = (truth[k] + 0.5) * s - 0.5
            d.line([(x, y), (tx, ty)], fill="white", width=1)
            d.ellipse([tx - r, ty - r, tx + r, ty + r], outline="white", width=1)
        if unreliable is not None and unreliable[k]:
            d.ellipse([x - r, y - r, x + r, y + r], outline=col, width=2)
            d.text((x + r + 2, y - r - 2), f"{lab}?", fill=col)
        else:
            d.ellipse([x - r, y - r, x + r, y + r], fill=col, outline="black")
            d.text((x + r + 2, y - r - 2), lab, fill=col)
    if banner:
        size = max(14, round(im.width / 45))
        try:
            font = ImageFont.load_default(size=size)
        except TypeError:  # Pillow < 10.1: fixed-size bitmap font
            font = ImageFont.load_default()
        import textwrap

        lines = textwrap.wrap(banner, width=max(20, int(im.width / (0.55 * size))))[:6]
        d.rectangle([0, 0, im.width, (len(lines) + 0.5) * (size + 4)], fill=(0, 0, 0))
        for j, line in enumerate(lines):
            d.text((6, 4 + j * (size + 4)), line, fill=(255, 60, 60), font=font)
    return np.asarray(im)


def save_overlay(path: str | Path, *args, **kwargs) -> Path:  # noqa: ANN002, ANN003
    """:func:`draw_overlay` written to a PNG file (atomically)."""
    return save_png(draw_overlay(*args, **kwargs), path)
