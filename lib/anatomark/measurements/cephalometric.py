"""ISBI 2015 cephalometric measurements and anatomical-type classification.

The eight measurements and their type thresholds of the ISBI 2015 challenge (Wang et al., Med. Image Anal. 31
(2016) 63-76, doi:10.1016/j.media.2016.02.004), restated from ``../shared/docs/measurements.md`` section 1, which
follows the challenge's official classification script (three public copies agree). Formulas, with θ the
unsigned angle in degrees and ``P->Q`` the vector ``Q - P`` (x right, y down):

- SNA = θ(N->S, N->A); SNB = θ(N->S, N->B); ANB = SNA - SNB (signed).
- PP = θ(Po->Or, PNS->ANS), negated when cross(Po->Or, PNS->ANS) < 0 (palatal plane to Frankfort horizontal).
- AB = θ(N->Pog, A->B), negated when cross(N->Pog, A->B) > 0 (AB plane to the facial plane).
- ODI = θ(Me->Go, B->A) + PP; APDI = θ(Or->Po, N->Pog) + AB + PP.
- FHI = |S - Go| / |N - Me|.
- "FMA" = θ(S->N, Go->Gn): the challenge's SN-to-Go-Gn angle, *not* the clinical Frankfort-mandibular angle.
- MW = s * |UI - LI| in mm, s = -1 when x(UI) < x(LI) else +1 (incisal tips, Euclidean; not a Wits appraisal).

Type rules: below the low bound one type, above the high bound the other, on either bound Type 1. MW follows
the script: 2 <= MW <= 4.5 Type 1, MW > 4.5 Type 4, MW == 0 Type 2, every other MW (< 2, incl. 0 < MW < 2)
Type 3.

With ``truncate=True`` (the default, as the official script) every pixel coordinate is truncated to an integer
before any maths; the MW sign compares the raw x values, as the script does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from anatomark.measurements.base import (
    MeasurementResult,
    NotComputable,
    Points,
    angle_arc,
    angle_deg,
    check_points,
    check_spacing,
    classify_range,
    cross,
    distance,
    run_measurement,
    vec,
)

LANDMARK_SET = "isbi2015_cephalometric"
S, N, OR, PO, A, B, POG, ME, GN, GO = (
    "sella",
    "nasion",
    "orbitale",
    "porion",
    "subspinale",
    "supramentale",
    "pogonion",
    "menton",
    "gnathion",
    "gonion",
)
LI, UI, PNS, ANS = "lower_incisal_incision", "upper_incisal_incision", "posterior_nasal_spine", "anterior_nasal_spine"

#: name -> (low, high, type below low, type above high, {type: description}); unit
TYPE_TABLE: dict[str, tuple[float, float, int, int, dict[int, str], str]] = {
    "ANB": (3.2, 5.7, 3, 2, {1: "Class I (normal)", 2: "Class II", 3: "Class III"}, "deg"),
    "SNB": (74.6, 78.7, 2, 3, {1: "normal mandible", 2: "retrognathic mandible", 3: "prognathic mandible"}, "deg"),
    "SNA": (79.4, 83.2, 3, 2, {1: "normal maxilla", 2: "prognathic maxilla", 3: "retrognathic maxilla"}, "deg"),
    "ODI": (68.4, 80.5, 3, 2, {1: "normal", 2: "deep-bite tendency", 3: "open-bite tendency"}, "deg"),
    "APDI": (77.6, 85.2, 2, 3, {1: "normal", 2: "Class II tendency", 3: "Class III tendency"}, "deg"),
    "FHI": (0.65, 0.75, 3, 2, {1: "normal", 2: "short-face tendency", 3: "long-face tendency"}, "ratio"),
    "FMA": (26.8, 31.4, 3, 2, {1: "normal", 2: "high angle", 3: "low angle"}, "deg"),
}
MW_TYPES = {1: "normal", 2: "edge-to-edge", 3: "anterior crossbite", 4: "large overjet"}
MEASUREMENTS = ("ANB", "SNB", "SNA", "ODI", "APDI", "FHI", "FMA", "MW")
DESCRIPTIONS = {
    "SNA": "angle S-N-A (maxilla to cranial base)",
    "SNB": "angle S-N-B (mandible to cranial base)",
    "ANB": "SNA - SNB (signed)",
    "ODI": "overbite depth indicator: AB plane to mandibular plane (Go-Me) + palatal plane to FH",
    "APDI": "anteroposterior dysplasia indicator: facial angle (FH to N-Pog) + AB plane to N-Pog + palatal plane to FH",
    "FHI": "facial height index |S-Go| / |N-Me|",
    "FMA": "ISBI 'FMA': S-N line to Go-Gn line (an SN-MP angle, not the clinical Frankfort-mandibular angle)",
    "MW": "signed distance between the upper and lower incisal tips (ISBI 'MW', not a Wits appraisal)",
}
LANDMARKS = {
    "SNA": (S, N, A),
    "SNB": (S, N, B),
    "ANB": (S, N, A, B),
    "ODI": (ME, GO, B, A, PO, OR, PNS, ANS),
    "APDI": (OR, PO, N, POG, A, B, PNS, ANS),
    "FHI": (S, GO, N, ME),
    "FMA": (S, N, GO, GN),
    "MW": (UI, LI),
}


def classify(name: str, value: float) -> int:
    """ISBI 2015 anatomical type (1..4) of measurement ``name`` with ``value`` (deg, ratio or mm for MW)."""
    if name == "MW":
        if value >= 2:
            return 1 if value <= 4.5 else 4
        return 2 if value == 0 else 3
    low, high, below, above, _, _ = TYPE_TABLE[name]
    return classify_range(value, low, high, below, above, 1)


def class_description(name: str, klass: int) -> str:
    return MW_TYPES[klass] if name == "MW" else TYPE_TABLE[name][4][klass]


def palatal_plane_angle(po: np.ndarray, or_: np.ndarray, pns: np.ndarray, ans: np.ndarray) -> float:
    """PP: θ(Po->Or, PNS->ANS), negative when cross(Po->Or, PNS->ANS) < 0 (ANS tipped up relative to FH)."""
    u, v = vec(po, or_, "Frankfort horizontal Po-Or"), vec(pns, ans, "palatal plane PNS-ANS")
    a = angle_deg(u, v)
    return -a if cross(u, v) < 0 else a


def ab_plane_angle(n: np.ndarray, pog: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """AB: θ(N->Pog, A->B), negative when cross(N->Pog, A->B) > 0 (A ahead of B, Class II direction)."""
    u, v = vec(n, pog, "facial plane N-Pog"), vec(a, b, "AB plane")
    ang = angle_deg(u, v)
    return -ang if cross(u, v) > 0 else ang


def _arc(p: Points, a0: str, a1: str, b0: str, b1: str) -> Any:
    """Arc drawing data for θ(a0->a1, b0->b1), in pixels (``None`` for parallel lines)."""
    return angle_arc(p.px_of(a0), p.px_of(a1), p.px_of(b0), p.px_of(b1))


def _compute(name: str, p: Points, raw: Points) -> tuple[float, dict[str, Any], list, list]:
    """``(value, details, lines, arcs)`` of measurement ``name`` (lines and arcs: drawing data in pixels)."""
    g = p.geo
    if name == "SNA":
        return (
            angle_deg(vec(g(N), g(S), "N-S"), vec(g(N), g(A), "N-A")),
            {},
            [(p.px_of(N), p.px_of(S)), (p.px_of(N), p.px_of(A))],
            [_arc(p, N, S, N, A)],
        )
    if name == "SNB":
        return (
            angle_deg(vec(g(N), g(S), "N-S"), vec(g(N), g(B), "N-B")),
            {},
            [(p.px_of(N), p.px_of(S)), (p.px_of(N), p.px_of(B))],
            [_arc(p, N, S, N, B)],
        )
    if name == "ANB":
        sna = _compute("SNA", p, raw)[0]
        snb = _compute("SNB", p, raw)[0]
        lines = [(p.px_of(N), p.px_of(A)), (p.px_of(N), p.px_of(B))]
        return sna - snb, {"SNA": sna, "SNB": snb}, lines, [_arc(p, N, A, N, B)]
    if name == "ODI":
        ab_mp = angle_deg(vec(g(ME), g(GO), "Me-Go"), vec(g(B), g(A), "B-A"))
        pp = palatal_plane_angle(g(PO), g(OR), g(PNS), g(ANS))
        lines = [
            (p.px_of(ME), p.px_of(GO)),
            (p.px_of(B), p.px_of(A)),
            (p.px_of(PO), p.px_of(OR)),
            (p.px_of(PNS), p.px_of(ANS)),
        ]
        arcs = [_arc(p, ME, GO, B, A), _arc(p, PO, OR, PNS, ANS)]
        return ab_mp + pp, {"AB_to_mandibular_plane": ab_mp, "PP": pp}, lines, arcs
    if name == "APDI":
        facial = angle_deg(vec(g(OR), g(PO), "Or-Po"), vec(g(N), g(POG), "N-Pog"))
        ab = ab_plane_angle(g(N), g(POG), g(A), g(B))
        pp = palatal_plane_angle(g(PO), g(OR), g(PNS), g(ANS))
        lines = [
            (p.px_of(OR), p.px_of(PO)),
            (p.px_of(N), p.px_of(POG)),
            (p.px_of(A), p.px_of(B)),
            (p.px_of(PNS), p.px_of(ANS)),
        ]
        arcs = [_arc(p, OR, PO, N, POG), _arc(p, N, POG, A, B), _arc(p, PO, OR, PNS, ANS)]
        return facial + ab + pp, {"facial_angle": facial, "AB": ab, "PP": pp}, lines, arcs
    if name == "FHI":
        pfh = distance(g(S), g(GO))
        afh = distance(g(N), g(ME))
        if afh <= 0:
            raise NotComputable("degenerate geometry: N and Me coincide (anterior face height 0)")
        return (
            pfh / afh,
            {"posterior_face_height_mm": p.to_mm(pfh), "anterior_face_height_mm": p.to_mm(afh)},
            [
                (p.px_of(S), p.px_of(GO)),
                (p.px_of(N), p.px_of(ME)),
            ],
            [],
        )
    if name == "FMA":
        return (
            angle_deg(vec(g(S), g(N), "S-N"), vec(g(GO), g(GN), "Go-Gn")),
            {},
            [(p.px_of(S), p.px_of(N)), (p.px_of(GO), p.px_of(GN))],
            [_arc(p, S, N, GO, GN)],
        )
    if name == "MW":
        d = p.to_mm(distance(g(UI), g(LI)))
        sign = -1.0 if raw.px_of(UI)[0] < raw.px_of(LI)[0] else 1.0
        return sign * d if d != 0 else 0.0, {"distance_mm": d}, [(p.px_of(UI), p.px_of(LI))], []
    raise KeyError(name)


def cephalometric_measurements(
    points: Any,
    spacing: float | Sequence[float] | None = (0.1, 0.1),
    names: Sequence[str] | None = None,
    truncate: bool = True,
    which: Sequence[str] = MEASUREMENTS,
) -> list[MeasurementResult]:
    """The ISBI 2015 measurements with their anatomical types.

    Args:
        points: ``(K, 2)`` (x, y) pixels in the order of ``names`` (``NaN`` rows = missing).
        spacing: ``(sx, sy)`` mm/px (ISBI: 0.1). Angles are computed on ``(x, y * sy / sx)``; MW in mm.
        names: landmark names; default the ``isbi2015_cephalometric`` set. Any set holding the ISBI names works.
        truncate: truncate pixel coordinates to integers first, as the official script (reproduces its labels).
        which: subset of ``MEASUREMENTS`` to compute.

    Returns:
        One :class:`MeasurementResult` per measurement; ``klass`` is the ISBI type 1..4. A measurement whose
        landmarks are missing or coincide has ``value=None`` and a ``reason``.
    """
    if names is None:
        from anatomark.config import load_landmark_set

        names = load_landmark_set(LANDMARK_SET).names
    sp = check_spacing(spacing)
    raw_px = check_points(points, names, "cephalometric measurements")
    px = np.trunc(raw_px) if truncate else raw_px
    p, raw = Points(px, names, sp), Points(raw_px, names, sp)
    out = []
    for name in which:
        unit = "ratio" if name == "FHI" else ("mm" if name == "MW" else "deg")

        def compute(name: str = name) -> tuple:
            value, details, lines, arcs = _compute(name, p, raw)
            k = classify(name, value)
            if name != "MW":
                low, high = TYPE_TABLE[name][:2]
                details = {**details, "type_1_range": [low, high]}
            else:
                details = {**details, "type_1_range": [2.0, 4.5]}
            return value, k, class_description(name, k), details, lines, arcs

        r = run_measurement(name, unit, DESCRIPTIONS[name], LANDMARKS[name], p, compute)
        if truncate:
            r.details["convention"] = "ISBI 2015 official script: pixel coordinates truncated to integers"
        out.append(r)
    return out
