"""Lower-limb alignment on full-leg AP X-rays (Amador Sanchez et al., IEEE Access 2024, Fig. 1).

Restated from ``../shared/docs/measurements.md`` section 5. Nine points per leg, ``(x, y)`` pixels: (1) centre of
the femoral head, (2) centre of the knee, (3)-(4) lateral and medial ends of the line tangent to the femoral
condyles, (5)-(6) lateral and medial ends of the line joining the tibial plateaus, (7)-(8) lateral and medial
malleolus (their midpoint is the ankle centre A, the paper's point 7), (9) centre of the femoral diaphysis (the
paper's point 8). H = head, K = knee, A = ankle centre, D = diaphysis; θ is the unsigned angle in degrees.

- mLDFA = θ(K->H, condyle_medial->condyle_lateral): the lateral distal femoral angle between the femoral
  mechanical axis and the condylar line, measured on the lateral side inside the femur (normal 85-90 deg).
- mMPTA = θ(K->A, plateau_lateral->plateau_medial): the medial proximal tibial angle between the tibial mechanical
  axis and the plateau line, on the medial side inside the tibia (normal 85-90 deg).
- FVA = θ(K->H, K->D): femoral mechanical axis against the anatomical axis D-K.
- HKA = θ(H->K, K->A): deviation of the tibial axis from the extended femoral axis, 0 when straight. Its class is
  ``varus`` when the knee lies lateral of the line H-A (the axis passes medial to the knee), ``valgus`` when it
  lies medial, ``neutral`` on the line. ``details["signed_deg"]`` is negative for varus.
- MAD = distance (mm) from K to the line H-A; class ``medial`` / ``lateral`` = side of the knee centre on which
  the mechanical axis passes (medial = varus).

Medial is found from the landmarks themselves (the mean of the lateral->medial directions of the condyle,
plateau and malleolus pairs present), so neither the image orientation nor the leg side needs to be known.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from anatomark.measurements.base import (
    EPS_MM,
    MeasurementResult,
    Points,
    angle_deg,
    check_points,
    check_spacing,
    run_measurement,
    vec,
)

LANDMARK_SET = "lower_limb_amador2024"
HEAD, KNEE = "femoral_head_center", "knee_center"
COND_L, COND_M = "femoral_condyle_lateral", "femoral_condyle_medial"
PLAT_L, PLAT_M = "tibial_plateau_lateral", "tibial_plateau_medial"
MAL_L, MAL_M = "lateral_malleolus", "medial_malleolus"
DIAPH = "femoral_diaphysis_center"
LEG_POINTS = (HEAD, KNEE, COND_L, COND_M, PLAT_L, PLAT_M, MAL_L, MAL_M, DIAPH)
REFERENCE_RANGE = {"mLDFA": [85.0, 90.0], "mMPTA": [85.0, 90.0]}  # Paley, commonly cited normal values
SIDES = ("right_", "left_")


def _medial_unit(p: Points, pre: str) -> np.ndarray | None:
    """Mean unit lateral->medial direction (geometry units) of the pairs present, or ``None``."""
    acc = np.zeros(2)
    for lat, med in ((COND_L, COND_M), (PLAT_L, PLAT_M), (MAL_L, MAL_M)):
        if p.has(pre + lat, pre + med):
            d = p.geo(pre + med) - p.geo(pre + lat)
            n = float(np.hypot(*d))
            if n > EPS_MM:
                acc += d / n
    n = float(np.hypot(*acc))
    return acc / n if n > EPS_MM else None


def _ankle(p: Points, pre: str) -> tuple[np.ndarray, np.ndarray]:
    """Ankle centre (geometry units, pixels) = midpoint of the malleoli."""
    return (p.geo(pre + MAL_L) + p.geo(pre + MAL_M)) / 2, (p.px_of(pre + MAL_L) + p.px_of(pre + MAL_M)) / 2


def _knee_offset(p: Points, pre: str) -> tuple[float, str | None, np.ndarray]:
    """Signed offset (geometry units, + medial) of the knee from the line head-ankle, its side and the foot (px)."""
    h, k = p.geo(pre + HEAD), p.geo(pre + KNEE)
    a, _ = _ankle(p, pre)
    vec(h, k, "femoral mechanical axis head-knee")  # coincident head and knee: no leg to measure
    vec(k, a, "tibial mechanical axis knee-ankle")
    axis = vec(h, a, "mechanical axis head-ankle")
    t = float(np.dot(k - h, axis) / np.dot(axis, axis))
    foot = h + t * axis
    off = k - foot
    dist = float(np.hypot(*off))
    sy_sx = p.spacing[1] / p.spacing[0]
    foot_px = np.array([foot[0], foot[1] / sy_sx])
    if dist <= EPS_MM:
        return 0.0, "on_axis", foot_px
    m = _medial_unit(p, pre)
    normal = np.array([-axis[1], axis[0]]) / float(np.hypot(*axis))
    if m is None or abs(float(np.dot(m, normal))) < 0.5:
        return dist, None, foot_px  # medial direction unknown or nearly parallel to the axis
    return (dist if float(np.dot(off, m)) > 0 else -dist), "known", foot_px


def leg_measurements(p: Points, prefix: str = "") -> list[MeasurementResult]:
    """mLDFA, mMPTA, FVA, HKA and MAD of one leg whose landmark names start with ``prefix``."""
    pre = prefix
    out = []

    def mldfa() -> tuple:
        v = angle_deg(vec(p.geo(pre + KNEE), p.geo(pre + HEAD), "femoral mechanical axis"),
                      vec(p.geo(pre + COND_M), p.geo(pre + COND_L), "condylar line"))  # fmt: skip
        lines = [(p.px_of(pre + HEAD), p.px_of(pre + KNEE)), (p.px_of(pre + COND_L), p.px_of(pre + COND_M))]
        return v, None, None, {"reference_range": REFERENCE_RANGE["mLDFA"]}, lines

    def mmpta() -> tuple:
        a, a_px = _ankle(p, pre)
        v = angle_deg(vec(p.geo(pre + KNEE), a, "tibial mechanical axis"),
                      vec(p.geo(pre + PLAT_L), p.geo(pre + PLAT_M), "tibial plateau line"))  # fmt: skip
        lines = [(p.px_of(pre + KNEE), a_px), (p.px_of(pre + PLAT_L), p.px_of(pre + PLAT_M))]
        return v, None, None, {"reference_range": REFERENCE_RANGE["mMPTA"]}, lines

    def fva() -> tuple:
        k = p.geo(pre + KNEE)
        v = angle_deg(vec(k, p.geo(pre + HEAD), "femoral mechanical axis"),
                      vec(k, p.geo(pre + DIAPH), "femoral anatomical axis"))  # fmt: skip
        lines = [(p.px_of(pre + HEAD), p.px_of(pre + KNEE)), (p.px_of(pre + DIAPH), p.px_of(pre + KNEE))]
        return v, None, None, {}, lines

    def hka() -> tuple:
        h, k = p.geo(pre + HEAD), p.geo(pre + KNEE)
        a, a_px = _ankle(p, pre)
        v = angle_deg(vec(h, k, "femoral mechanical axis"), vec(k, a, "tibial mechanical axis"))
        off, side, _ = _knee_offset(p, pre)
        details: dict[str, Any] = {"sign_convention": "signed_deg < 0 varus, > 0 valgus"}
        if side == "on_axis":
            klass, cdesc = "neutral", "neutral (knee centre on the hip-ankle line)"
            details["signed_deg"] = 0.0
        elif side is None:
            klass, cdesc = None, None
            details["note"] = "varus/valgus undetermined: medial direction not available from the landmarks"
        else:
            klass = "varus" if off < 0 else "valgus"
            cdesc = "varus (knee lateral of the hip-ankle line)" if off < 0 else "valgus (knee medial of the line)"
            details["signed_deg"] = -v if off < 0 else v
        lines = [(p.px_of(pre + HEAD), p.px_of(pre + KNEE)), (p.px_of(pre + KNEE), a_px)]
        return v, klass, cdesc, details, lines

    def mad() -> tuple:
        off, side, foot_px = _knee_offset(p, pre)
        value = p.to_mm(abs(off))
        _, a_px = _ankle(p, pre)
        lines = [(p.px_of(pre + HEAD), a_px), (p.px_of(pre + KNEE), foot_px)]
        if side == "on_axis":
            return 0.0, "none", "mechanical axis through the knee centre", {}, lines
        if side is None:
            note = "side undetermined: medial direction not available from the landmarks"
            return value, None, None, {"note": note}, lines
        if off < 0:
            return value, "medial", "axis passes medial to the knee centre (varus)", {"signed_mm": -value}, lines
        return value, "lateral", "axis passes lateral to the knee centre (valgus)", {"signed_mm": value}, lines

    spec = [
        ("mLDFA", "deg", "mechanical lateral distal femoral angle (axis head-knee to condylar line)",
         (HEAD, KNEE, COND_L, COND_M), mldfa),
        ("mMPTA", "deg", "mechanical medial proximal tibial angle (axis knee-ankle to tibial plateau line)",
         (KNEE, MAL_L, MAL_M, PLAT_L, PLAT_M), mmpta),
        ("FVA", "deg", "femoral valgus angle: mechanical axis head-knee to anatomical axis diaphysis-knee",
         (HEAD, KNEE, DIAPH), fva),
        ("HKA", "deg", "hip-knee-ankle angle: deviation of knee-ankle from the extended head-knee axis (0 = straight)",
         (HEAD, KNEE, MAL_L, MAL_M), hka),
        ("MAD", "mm", "mechanical axis deviation: distance of the knee centre from the line head-ankle",
         (HEAD, KNEE, MAL_L, MAL_M), mad),
    ]  # fmt: skip
    for name, unit, desc, lms, fn in spec:
        out.append(run_measurement(pre + name, unit, desc, [pre + n for n in lms], p, fn))
    return out


def lower_limb_measurements(
    points: Any,
    spacing: float | Sequence[float] | None = None,
    names: Sequence[str] | None = None,
) -> list[MeasurementResult]:
    """Alignment measurements of every leg in the landmark set.

    Args:
        points: ``(K, 2)`` (x, y) pixels in the order of ``names`` (``NaN`` rows = missing).
        spacing: ``(sx, sy)`` mm/px (MAD is in mm; ``None`` = 1 mm/px).
        names: landmark names; default the ``lower_limb_amador2024`` set (``right_*`` then ``left_*``). A set
            of one leg with the nine unprefixed names works too.

    Returns:
        ``<side>mLDFA, <side>mMPTA, <side>FVA, <side>HKA, <side>MAD`` per leg (``side`` = ``right_``, ``left_`` or
        empty); a leg whose landmarks are absent gives results with ``value=None`` and the reason.
    """
    if names is None:
        from anatomark.config import load_landmark_set

        names = load_landmark_set(LANDMARK_SET).names
    p = Points(check_points(points, names, "lower-limb measurements"), names, check_spacing(spacing))
    prefixes = [s for s in SIDES if s + HEAD in p.index] or [""]
    out: list[MeasurementResult] = []
    for pre in prefixes:
        out.extend(leg_measurements(p, pre))
    return out
