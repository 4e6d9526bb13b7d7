"""Cobb angles from the 68 vertebral corners of the AASCE 2019 challenge, and the SMAPE metric.

Restated from ``../shared/docs/measurements.md`` section 2, which follows the challenge's MATLAB ``angleCal``/``isS``
(and its Python port): points are ``(x, y)`` pixels; 17 vertebrae T1..L5 top to bottom, 4 corners each in the
order top-left, top-right, bottom-left, bottom-right (image left/right).

1. Vertebra direction v_i = (TR + BR)/2 - (TL + BL)/2 (mean of the two endplate vectors).
2. M(i, j) = θ(v_i, v_j), unsigned degrees.
3. Angle 1 = max M at the pair u < l (first in row-major order): the upper and lower end vertebrae.
4. S test: endplate midpoints c_1..c_34 (upper, lower per vertebra) and, for k = 1..32,
   d_k = (y_k - y_34)/(y_1 - y_34) - (x_k - x_34)/(x_1 - x_34). The spine is S-shaped when the d_k do not all
   share a sign; a vertical or horizontal chord (division by zero) counts as S, as in the MATLAB code.
5. C curve: angle 2 = M(1, u), angle 3 = M(17, l). S curve with y(lower midpoint of u) + y(lower midpoint of l) < H
   (H = full image height): angle 2 = max_{k<=u} M(u, k), angle 3 = max_{k>=l} M(l, k). Otherwise: angle 2 =
   max_{k<=u} M(u, k) reached at k*, angle 3 = max_{k<=k*} M(k*, k).

The output [angle 1, angle 2, angle 3] is stored by the challenge under the column names PT, MT and TL/L, but
column 1 is always the largest curve and columns 2-3 depend on the branch: they are not anatomical regions.

SMAPE (challenge metric) = 100/N * sum_i [ sum_j |a_ij - b_ij| / sum_j (a_ij + b_ij) ].
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from anatomark.errors import AnatomarkError
from anatomark.measurements.base import (
    EPS_MM,
    MeasurementResult,
    check_points,
    check_spacing,
    not_computable,
)

LANDMARK_SET = "aasce2019_spine"
VERTEBRAE = [f"T{i}" for i in range(1, 13)] + [f"L{i}" for i in range(1, 6)]
CORNERS = ("TL", "TR", "BL", "BR")
ANGLE_NAMES = ("cobb_PT", "cobb_MT", "cobb_TL")
ANGLE_DESCRIPTIONS = (
    "AASCE angle 1 (column 'PT'): the largest angle between any two vertebrae (main curve)",
    "AASCE angle 2 (column 'MT'): curve above the main curve (or T1 to its upper end vertebra for a C curve)",
    "AASCE angle 3 (column 'TL/L'): curve below the main curve, or the next one further up for an S curve "
    "whose main curve lies in the lower image half (L5 to its lower end vertebra for a C curve)",
)


def landmark_names() -> list[str]:
    """The 68 names ``T1_TL, T1_TR, T1_BL, T1_BR, ..., L5_BR`` in AASCE order."""
    return [f"{v}_{c}" for v in VERTEBRAE for c in CORNERS]


def sort_corners(points: np.ndarray) -> np.ndarray:
    """Reorder each vertebra's 4 corners to TL, TR, BL, BR: split by x into a left and a right pair, then by y.

    Args:
        points: ``(68, 2)`` (x, y) pixels, any corner order within each vertebra.
    """
    pts = np.asarray(points, dtype=np.float64).reshape(17, 4, 2).copy()
    for v in range(17):
        q = pts[v][np.argsort(pts[v][:, 0], kind="stable")]
        left, right = q[:2][np.argsort(q[:2, 1], kind="stable")], q[2:][np.argsort(q[2:, 1], kind="stable")]
        pts[v] = [left[0], right[0], left[1], right[1]]
    return pts.reshape(68, 2)


def _theta_matrix(v: np.ndarray) -> np.ndarray:
    n = np.hypot(v[:, 0], v[:, 1])
    c = (v @ v.T) / np.outer(n, n)
    return np.degrees(np.arccos(np.clip(c, -1.0, 1.0)))


def is_s_shaped(mid: np.ndarray) -> tuple[bool, bool]:
    """The AASCE S test on the 34 endplate midpoints ``(34, 2)``; returns ``(is_s, degenerate_chord)``."""
    x, y = mid[:, 0], mid[:, 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        d = (y[:32] - y[33]) / (y[0] - y[33]) - (x[:32] - x[33]) / (x[0] - x[33])
    if not np.all(np.isfinite(d)):
        return True, True
    return bool(np.any(d > 0) and np.any(d < 0)), False


def cobb_angles_array(
    points: np.ndarray, image_height: float | None, spacing: float | Sequence[float] | None = None
) -> dict[str, Any]:
    """The three AASCE Cobb angles of one spine (all 68 points required).

    Args:
        points: ``(68, 2)`` (x, y) pixels, corners TL, TR, BL, BR per vertebra, T1..L5.
        image_height: full height H (px) of the image the points refer to; needed only for S-shaped spines.
        spacing: ``(sx, sy)`` mm/px; only the aspect ratio matters (``None`` = square pixels, as AASCE).

    Returns:
        ``{"angles": [a1, a2, a3] (deg; a2/a3 ``None`` for an S spine without ``image_height``), "branch": "C" |
        "S-upper" | "S-lower" | "S", "end_vertebrae": [[i, j] per angle, 0-based], "degenerate_chord": bool}``.

    Raises:
        ValueError: missing points or a vertebra whose left and right side midpoints coincide.
    """
    sx, sy = check_spacing(spacing)
    pts = np.asarray(points, dtype=np.float64).reshape(68, 2) * np.array([1.0, sy / sx])
    if not np.all(np.isfinite(pts)):
        raise ValueError("missing landmark(s)")
    c = pts.reshape(17, 4, 2)
    v = (c[:, 1] + c[:, 3]) / 2 - (c[:, 0] + c[:, 2]) / 2
    short = np.hypot(v[:, 0], v[:, 1]) <= EPS_MM
    if short.any():
        bad = ", ".join(VERTEBRAE[i] for i in np.flatnonzero(short))
        raise ValueError(f"degenerate geometry: left and right sides of {bad} coincide")
    m = _theta_matrix(v)
    u, low = divmod(int(np.argmax(m)), 17)
    a1 = float(m[u, low])
    mid = np.empty((34, 2))
    mid[0::2] = (c[:, 0] + c[:, 1]) / 2
    mid[1::2] = (c[:, 2] + c[:, 3]) / 2
    s_shape, degenerate = is_s_shaped(mid)
    if not s_shape:
        return {
            "angles": [a1, float(m[0, u]), float(m[16, low])],
            "branch": "C",
            "end_vertebrae": [[u, low], [0, u], [low, 16]],
            "degenerate_chord": degenerate,
        }
    k_up = int(np.argmax(m[u, : u + 1]))
    a2 = float(m[u, k_up])
    if image_height is None:
        return {
            "angles": [a1, None, None],
            "branch": "S",
            "end_vertebrae": [[u, low], None, None],
            "degenerate_chord": degenerate,
        }
    # pixel y of the lower-endplate midpoints (back from geometry units)
    y_u, y_l = mid[2 * u + 1, 1] / (sy / sx), mid[2 * low + 1, 1] / (sy / sx)
    if y_u + y_l < float(image_height):
        k_down = low + int(np.argmax(m[low, low:]))
        return {
            "angles": [a1, a2, float(m[low, k_down])],
            "branch": "S-upper",
            "end_vertebrae": [[u, low], [k_up, u], [low, k_down]],
            "degenerate_chord": degenerate,
        }
    k2 = int(np.argmax(m[k_up, : k_up + 1]))
    return {
        "angles": [a1, a2, float(m[k_up, k2])],
        "branch": "S-lower",
        "end_vertebrae": [[u, low], [k_up, u], [k2, k_up]],
        "degenerate_chord": degenerate,
    }


def cobb_measurements(
    points: Any,
    spacing: float | Sequence[float] | None = None,
    names: Sequence[str] | None = None,
    image_height: float | None = None,
    resort_corners: bool = False,
) -> list[MeasurementResult]:
    """The three AASCE Cobb angles as :class:`MeasurementResult` s (``cobb_PT``, ``cobb_MT``, ``cobb_TL``).

    Args:
        points: ``(68, 2)`` (x, y) pixels in ``aasce2019_spine`` order (``NaN`` rows = missing).
        spacing: ``(sx, sy)`` mm/px (only the aspect ratio matters).
        names: landmark names (default the 68 AASCE names); only the count is checked.
        image_height: full image height in pixels (decides the S-curve branch; without it angles 2 and 3 of
            an S-shaped spine are reported as not computable).
        resort_corners: reorder corners with :func:`sort_corners` first (for predictors without a fixed order).
    """
    names = list(names) if names is not None else landmark_names()
    pts = check_points(points, names, "Cobb angles")
    if len(names) != 68:
        raise AnatomarkError(f"Cobb angles need the 68 AASCE corners, the landmark set has {len(names)}")
    missing = [names[i] for i in np.flatnonzero(np.isnan(pts).any(axis=1))]
    if missing:
        why = f"missing landmark(s): {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}"
        return [not_computable(n, "deg", why, d, names) for n, d in zip(ANGLE_NAMES, ANGLE_DESCRIPTIONS)]
    if resort_corners:
        pts = sort_corners(pts)
    try:
        res = cobb_angles_array(pts, image_height, spacing)
    except ValueError as e:
        return [not_computable(n, "deg", str(e), d, names) for n, d in zip(ANGLE_NAMES, ANGLE_DESCRIPTIONS)]
    c = pts.reshape(17, 4, 2)
    side_mid = ((c[:, 0] + c[:, 2]) / 2, (c[:, 1] + c[:, 3]) / 2)
    out = []
    for j, (n, d) in enumerate(zip(ANGLE_NAMES, ANGLE_DESCRIPTIONS)):
        val, ev = res["angles"][j], res["end_vertebrae"][j]
        if val is None:
            out.append(
                not_computable(n, "deg", "S-shaped spine: the branch needs the image height (pass image_height)", d)
            )
            continue
        # end-vertebra direction lines, drawn twice the vertebra width so the angle is visible in reports
        lines = [(1.5 * side_mid[0][i] - 0.5 * side_mid[1][i], 1.5 * side_mid[1][i] - 0.5 * side_mid[0][i]) for i in ev]
        details = {
            "end_vertebrae": [VERTEBRAE[i] for i in ev],
            "branch": res["branch"],
            "convention": "AASCE 2019 angleCal: column order of angles.csv, not anatomical regions",
        }
        if res["degenerate_chord"]:
            details["note"] = "vertical/horizontal T1-L5 chord: S test undefined, treated as S (as the MATLAB code)"
        out.append(MeasurementResult(n, val, "deg", d, landmarks=[], details=details, lines=lines))
    return out


def smape(truth: Any, pred: Any) -> float:
    """Symmetric mean absolute percentage error of the AASCE challenge, in percent.

    Args:
        truth, pred: ``(N, 3)`` Cobb angles in degrees (ground truth, prediction).

    Returns:
        ``100 / N * sum_i [sum_j |a_ij - b_ij| / sum_j (a_ij + b_ij)]``; an image whose angles are all 0 in both
        counts as 0 error.
    """
    a, b = np.asarray(truth, dtype=np.float64), np.asarray(pred, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise AnatomarkError(f"SMAPE needs two (N, 3) arrays of equal shape, got {a.shape} and {b.shape}")
    num = np.abs(a - b).sum(axis=1)
    den = (a + b).sum(axis=1)
    ratio = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
    return float(100.0 * ratio.mean())


def smape_per_angle(truth: Any, pred: Any) -> list[float]:
    """Per-angle variant (SMAPE1/2/3): ``100/N * sum_i |a_ij - b_ij| / (a_ij + b_ij)`` for each column j."""
    a, b = np.asarray(truth, dtype=np.float64), np.asarray(pred, dtype=np.float64)
    num, den = np.abs(a - b), a + b
    ratio = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
    return [float(100.0 * r) for r in ratio.mean(axis=0)]
