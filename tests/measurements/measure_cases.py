"""Constructed landmark geometries shared by the measurement tests (imported by bare name)."""

from __future__ import annotations

import math

import numpy as np

from anatomark.config import load_landmark_set

ISBI_NAMES = load_landmark_set("isbi2015_cephalometric").names


def polar(origin: tuple[float, float], angle_from_neg_x_deg: float, r: float) -> tuple[float, float]:
    """Point at distance r from origin whose direction makes the given angle with -x, turning towards +y (down)."""
    a = math.radians(angle_from_neg_x_deg)
    return (origin[0] - r * math.cos(a), origin[1] + r * math.sin(a))


def isbi_points(**overrides: tuple[float, float]) -> np.ndarray:
    """A 19-point ISBI array with a simple hand-worked face (pixels, 0.1 mm/px).

    S=(0, 1000), N=(1000, 1000): N->S points along -x. A and B sit at 82 and 78 deg from N->S (SNA 82, SNB 78,
    ANB 4). Po->Or and PNS->ANS are horizontal (PP = 0). Override any landmark by name.
    """
    n = (1000.0, 1000.0)
    pts = {
        "sella": (0.0, 1000.0),
        "nasion": n,
        "orbitale": (900.0, 1100.0),
        "porion": (200.0, 1100.0),
        "subspinale": polar(n, 82.0, 600.0),
        "supramentale": polar(n, 78.0, 1000.0),
        "pogonion": (1000.0, 2000.0),
        "menton": (1000.0, 2100.0),
        "gnathion": (1050.0, 2050.0),
        "gonion": (300.0, 1700.0),
        "lower_incisal_incision": (1000.0, 1500.0),
        "upper_incisal_incision": (1030.0, 1500.0),
        "upper_lip": (1200.0, 1400.0),
        "lower_lip": (1200.0, 1600.0),
        "subnasale": (1150.0, 1300.0),
        "soft_tissue_pogonion": (1150.0, 2000.0),
        "posterior_nasal_spine": (500.0, 1300.0),
        "anterior_nasal_spine": (1100.0, 1300.0),
        "articulare": (200.0, 1300.0),
    }
    pts.update(overrides)
    return np.array([pts[k] for k in ISBI_NAMES], dtype=np.float64)


def spine_points(tilts_deg: list[float], centres_x: list[float], y0: float = 100.0, step: float = 50.0) -> np.ndarray:
    """68 AASCE corners (TL, TR, BL, BR per vertebra) of 17 vertebrae 60 x 40 px rotated by ``tilts_deg``."""
    out = []
    for i, (t, cx) in enumerate(zip(tilts_deg, centres_x)):
        a = math.radians(t)
        rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        c = np.array([cx, y0 + step * i])
        for dx, dy in ((-30, -20), (30, -20), (-30, 20), (30, 20)):
            out.append(c + rot @ np.array([dx, dy]))
    return np.array(out)
