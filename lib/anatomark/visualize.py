"""Overlay PNGs: landmarks drawn on the X-ray with their short names."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from anatomark.data.image_io import XrayImage, save_png
from anatomark.model import scale_intensity


def draw_overlay(
    image: XrayImage,
    points: np.ndarray,
    labels: Sequence[str],
    colors: Sequence[str],
    truth: np.ndarray | None = None,
    max_size: int = 1200,
) -> np.ndarray:
    """Return an ``(H', W', 3)`` uint8 RGB overlay (downscaled so the long side <= ``max_size``).

    Predicted points are filled circles with labels; ``truth`` (optional) are hollow white circles joined
    to the prediction by a line.
    """
    from PIL import Image, ImageDraw

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
        d.ellipse([x - r, y - r, x + r, y + r], fill=col, outline="black")
        d.text((x + r + 2, y - r - 2), lab, fill=col)
    return np.asarray(im)


def save_overlay(path: str | Path, *args, **kwargs) -> Path:  # noqa: ANN002, ANN003
    """:func:`draw_overlay` written to a PNG file (atomically)."""
    return save_png(draw_overlay(*args, **kwargs), path)
