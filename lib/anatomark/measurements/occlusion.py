"""YEN angle and mandibular occlusion class (Fernandes et al., 2023).

Restated from ``../shared/docs/measurements.md`` section 4. With M the midpoint of the anterior maxilla, S the
sella and G the centre of the circle inscribed in the symphysis near gnathion (points ``(x, y)`` in pixels):

    YEN = arccos( (M->S) . (M->G) / (|M->S| |M->G|) )   (degrees, the angle at M)

Class I (normal occlusion) 117 <= YEN <= 123 deg (both bounds included); Class II below 117 deg (prominent
maxilla); Class III above 123 deg (protruding mandible). The paper's worked example: YEN 150 deg -> Class III.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from anatomark.measurements.base import (
    MeasurementResult,
    Points,
    angle_deg,
    check_points,
    check_spacing,
    classify_range,
    run_measurement,
    vec,
)

LANDMARK_SET = "fernandes2023_yen"
YEN_LOW, YEN_HIGH = 117.0, 123.0
CLASS_DESCRIPTIONS = {
    "I": "Class I (normal occlusion)",
    "II": "Class II (prominent maxilla)",
    "III": "Class III (protruding mandible)",
}


def yen_class(angle_deg_value: float) -> str:
    """Occlusion class of a YEN angle in degrees: ``"I"`` for 117-123 (bounds included), ``"II"`` below, ``"III"`` above."""
    return classify_range(angle_deg_value, YEN_LOW, YEN_HIGH, "II", "III", "I")


def yen_measurements(
    points: Any,
    spacing: float | Sequence[float] | None = None,
    names: Sequence[str] | None = None,
    s: str = "sella",
    m: str = "maxilla_midpoint",
    g: str = "symphysis_center",
) -> list[MeasurementResult]:
    """The YEN angle with its occlusion class.

    Args:
        points: ``(K, 2)`` (x, y) pixels in the order of ``names`` (``NaN`` rows = missing).
        spacing: ``(sx, sy)`` mm/px; only its aspect ratio matters for an angle (``None`` = square pixels).
        names: landmark names; default the ``fernandes2023_yen`` set.
        s, m, g: the names of the S, M and G landmarks in ``names`` (for your own landmark sets).

    Returns:
        ``[YEN]``: value in degrees, ``klass`` ``"I"``/``"II"``/``"III"``; ``value=None`` with a reason when a
        point is missing or M coincides with S or G.
    """
    if names is None:
        from anatomark.config import load_landmark_set

        names = load_landmark_set(LANDMARK_SET).names
    p = Points(check_points(points, names, "YEN angle"), names, check_spacing(spacing))

    def compute() -> tuple:
        value = angle_deg(vec(p.geo(m), p.geo(s), "M-S"), vec(p.geo(m), p.geo(g), "M-G"))
        k = yen_class(value)
        details = {"class_I_range": [YEN_LOW, YEN_HIGH]}
        return value, k, CLASS_DESCRIPTIONS[k], details, [(p.px_of(m), p.px_of(s)), (p.px_of(m), p.px_of(g))]

    return [
        run_measurement("YEN", "deg", "angle at M between M->S and M->G (Fernandes et al. 2023)", (s, m, g), p, compute)
    ]
