"""Common result type and plane geometry for clinical measurements.

Conventions (see ``../shared/docs/measurements.md`` section 0): points are ``(x, y)`` in pixels, x to the right,
y down; ``P->Q`` is the vector ``Q - P``. Geometry is done in millimetres (pixel coordinates times the spacing
``(sx, sy)``), so angles stay correct for anisotropic pixels. With y pointing down, ``cross(u, v) > 0`` means
``v`` is turned clockwise on screen from ``u``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from anatomark.errors import AnatomarkError

#: Vectors shorter than this (mm) count as zero length (coincident points).
EPS_MM = 1e-9


class NotComputable(Exception):
    """Internal signal: a measurement cannot be computed (missing landmark, degenerate geometry)."""


@dataclass
class MeasurementResult:
    """One clinical measurement of one image.

    Attributes:
        name: short key, e.g. ``"SNA"``, ``"cobb_1"``, ``"right_HKA"``.
        value: the number, or ``None`` when not computable (then ``reason`` says why).
        unit: ``"deg"``, ``"mm"`` or ``"ratio"``.
        description: what is measured, in words.
        klass: class code when the measurement classifies (``1``..``4`` for ISBI types, ``"II"`` for YEN,
            ``"varus"`` ...), else ``None``.
        class_description: the class in words.
        reason: why the value is ``None`` (``None`` when computable).
        landmarks: names of the landmarks the measurement uses.
        details: JSON-serialisable extras (intermediate terms, end vertebrae, reference ranges ...).
        lines: segments ``((x0, y0), (x1, y1))`` in pixels to draw in a report (not part of :meth:`to_dict`).
        arcs: angles to draw as arcs in a report, ``(vertex, a, b)`` in pixels: the angle at ``vertex`` between the
            rays ``vertex -> a`` and ``vertex -> b`` (see :func:`angle_arc`; not part of :meth:`to_dict`).
    """

    name: str
    value: float | None
    unit: str
    description: str = ""
    klass: int | str | None = None
    class_description: str | None = None
    reason: str | None = None
    landmarks: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    lines: list[tuple[tuple[float, float], tuple[float, float]]] = field(default_factory=list)
    arcs: list[tuple[tuple[float, float], tuple[float, float], tuple[float, float]]] = field(default_factory=list)

    @property
    def computable(self) -> bool:
        return self.value is not None

    def to_dict(self, include_lines: bool = False) -> dict[str, Any]:
        """JSON-serialisable dict: name, value, unit, class, class_description, computable, reason, ..."""
        d: dict[str, Any] = {
            "name": self.name,
            "value": None if self.value is None else float(self.value),
            "unit": self.unit,
            "class": self.klass,
            "class_description": self.class_description,
            "computable": self.computable,
            "reason": self.reason,
            "description": self.description,
            "landmarks": list(self.landmarks),
            "details": _jsonable(self.details),
        }
        if include_lines:
            d["lines"] = [[list(map(float, a)), list(map(float, b))] for a, b in self.lines]
            d["arcs"] = [[list(map(float, p)) for p in arc] for arc in self.arcs]
        return d


def unreliable_image_reason(warnings: Sequence[str]) -> str:
    """The reason :func:`withhold` gives for every value of an image judged unreliable (its quality warnings)."""
    return "the image was judged unreliable (" + "; ".join(map(str, warnings)) + ")"


def withhold(
    results: Sequence[MeasurementResult], image_reason: str | None = None, landmarks: dict[str, str] | None = None
) -> list[MeasurementResult]:
    """Withhold values the landmarks cannot support: ``value``/class ``None`` with the reason (in place).

    Args:
        results: computed measurements.
        image_reason: why the whole answer is not trusted (every value is withheld), or ``None``.
        landmarks: ``{name: why}`` of landmarks not to be used (e.g. ``"is outside the image"``); a result using
            one of them is withheld.
    """
    bad = landmarks or {}
    for r in results:
        if r.value is None:
            continue
        if image_reason:
            why = f"not computed: {image_reason}"
        else:
            used = [n for n in r.landmarks if n in bad]
            why = ("not computed: " + "; ".join(f"{n} {bad[n]}" for n in used)) if used else None
        if why:
            r.value, r.klass, r.class_description, r.reason = None, None, None, why
            r.details, r.lines, r.arcs = {}, [], []
    return list(results)


def not_computable(
    name: str, unit: str, reason: str, description: str = "", landmarks: Sequence[str] = ()
) -> MeasurementResult:
    """A result without a value, carrying the reason."""
    return MeasurementResult(name, None, unit, description, reason=reason, landmarks=list(landmarks))


def _jsonable(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (np.floating, float)):
        return None if not math.isfinite(float(x)) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


# ---------------------------------------------------------------- inputs
def check_spacing(spacing: float | Sequence[float] | None) -> tuple[float, float]:
    """``(sx, sy)`` mm/px from one value, a pair or ``None`` (-> 1 mm/px, i.e. pixel units).

    Raises:
        AnatomarkError: not one or two positive finite numbers.
    """
    if spacing is None:
        return (1.0, 1.0)
    sp = np.atleast_1d(np.asarray(spacing, dtype=np.float64)).reshape(-1)
    if sp.size == 1:
        sp = np.repeat(sp, 2)
    if sp.size != 2 or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise AnatomarkError(f"Spacing must be one or two positive numbers (sx, sy) in mm/px, got {spacing!r}")
    return (float(sp[0]), float(sp[1]))


def check_points(points: Any, names: Sequence[str], what: str = "measurement") -> np.ndarray:
    """``points`` as a ``(K, 2)`` float array matching ``names`` (``NaN`` rows = missing).

    Raises:
        AnatomarkError: wrong shape or count.
    """
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise AnatomarkError(f"{what}: points must have shape (K, 2) as (x, y) pixels, got {pts.shape}")
    if pts.shape[0] != len(names):
        raise AnatomarkError(f"{what}: {pts.shape[0]} points given but the landmark set has {len(names)} landmarks")
    pts = pts.copy()
    pts[~np.isfinite(pts).all(axis=1)] = np.nan
    return pts


class Points:
    """Named landmark access for one image, with a missing-landmark check.

    Args:
        points: ``(K, 2)`` (x, y) pixels, ``NaN`` rows missing.
        names: landmark names in row order.
        spacing: ``(sx, sy)`` mm/px.
    """

    def __init__(self, points: np.ndarray, names: Sequence[str], spacing: tuple[float, float]) -> None:
        self.px = check_points(points, names)
        self.names = list(names)
        self.index = {n: i for i, n in enumerate(self.names)}
        self.spacing = spacing

    def has(self, *names: str) -> bool:
        return all(n in self.index and not np.isnan(self.px[self.index[n]]).any() for n in names)

    def missing(self, names: Sequence[str]) -> list[str]:
        return [n for n in names if not self.has(n)]

    def px_of(self, name: str) -> np.ndarray:
        """Pixel (x, y) of ``name``; raises :class:`NotComputable` when absent."""
        if not self.has(name):
            raise NotComputable(f"landmark {name!r} is missing")
        return self.px[self.index[name]].copy()

    def mm(self, name: str) -> np.ndarray:
        """Position of ``name`` in mm, ``(x * sx, y * sy)``."""
        return self.px_of(name) * np.asarray(self.spacing)

    def geo(self, name: str) -> np.ndarray:
        """Position of ``name`` in isotropic geometry units: ``(x, y * sy / sx)``; one unit = ``sx`` mm.

        With square pixels these are exactly the pixel coordinates, so angles equal the ones the published
        pixel-based scripts compute, bit for bit; :meth:`to_mm` turns lengths into mm.
        """
        p = self.px_of(name)
        return np.array([p[0], p[1] * (self.spacing[1] / self.spacing[0])])

    def to_mm(self, length_geo: float) -> float:
        """A length in :meth:`geo` units -> mm (divides by ``1 / sx``, exact for ISBI's 0.1 mm/px)."""
        return float(length_geo) / (1.0 / self.spacing[0])


# ---------------------------------------------------------------- geometry (mm)
def vec(p: np.ndarray, q: np.ndarray, what: str = "") -> np.ndarray:
    """The vector ``p -> q``; raises :class:`NotComputable` when the two points coincide."""
    v = np.asarray(q, dtype=np.float64) - np.asarray(p, dtype=np.float64)
    if float(np.hypot(v[0], v[1])) <= EPS_MM:
        raise NotComputable(f"degenerate geometry: the two points of {what or 'a line'} coincide")
    return v


def angle_deg(u: np.ndarray, v: np.ndarray) -> float:
    """Unsigned angle θ(u, v) = arccos(u·v / |u||v|) in degrees, in [0, 180].

    Raises:
        NotComputable: a vector has zero length.
    """
    nu, nv = float(np.hypot(*u)), float(np.hypot(*v))
    if nu <= EPS_MM or nv <= EPS_MM:
        raise NotComputable("degenerate geometry: zero-length vector")
    c = float(np.dot(u, v)) / (nu * nv)
    return math.degrees(math.acos(min(1.0, max(-1.0, c))))


def cross(u: np.ndarray, v: np.ndarray) -> float:
    """``u_x v_y - u_y v_x``; > 0 when ``v`` is turned clockwise on screen from ``u`` (y down)."""
    return float(u[0] * v[1] - u[1] * v[0])


def distance(p: np.ndarray, q: np.ndarray) -> float:
    """Euclidean distance (same unit as the inputs)."""
    d = np.asarray(q, dtype=np.float64) - np.asarray(p, dtype=np.float64)
    return float(np.hypot(d[0], d[1]))


def classify_range(value: float, low: float, high: float, below: Any, above: Any, inside: Any) -> Any:
    """``below`` if value < low, ``above`` if value > high, else ``inside`` (both bounds belong to ``inside``)."""
    if value < low:
        return below
    if value > high:
        return above
    return inside


def run_measurement(
    name: str,
    unit: str,
    description: str,
    landmarks: Sequence[str],
    pts: Points,
    compute: Any,
) -> MeasurementResult:
    """Check ``landmarks`` are present, then call ``compute()``.

    ``compute`` returns ``(value, klass, class_description, details, lines)``, optionally followed by ``arcs``
    (see :class:`MeasurementResult`). A missing landmark or a :class:`NotComputable` raised inside gives a result
    without a value and with the reason.
    """
    miss = pts.missing(landmarks)
    if miss:
        return not_computable(
            name, unit, f"missing landmark(s): {', '.join(miss)}", description=description, landmarks=landmarks
        )
    try:
        value, klass, cdesc, details, lines, *more = compute()
    except NotComputable as e:
        return not_computable(name, unit, str(e), description=description, landmarks=landmarks)
    if value is None or not math.isfinite(float(value)):
        return not_computable(name, unit, "degenerate geometry", description=description, landmarks=landmarks)
    return MeasurementResult(
        name,
        float(value),
        unit,
        description,
        klass=klass,
        class_description=cdesc,
        landmarks=list(landmarks),
        details=details or {},
        lines=[(tuple(map(float, a)), tuple(map(float, b))) for a, b in (lines or [])],
        arcs=[tuple(tuple(map(float, q)) for q in arc) for arc in ((more[0] if more else None) or []) if arc],
    )


def angle_arc(
    p0: np.ndarray, p1: np.ndarray, q0: np.ndarray, q1: np.ndarray
) -> tuple[tuple[float, float], tuple[float, float], tuple[float, float]] | None:
    """Drawing data for the angle θ(p0->p1, q0->q1) between two lines: ``(vertex, a, b)`` in pixels.

    ``vertex`` is where the two lines meet (the shared point of S-N-A, the crossing of S-N and Go-Gn); ``a`` and
    ``b`` lie on the rays from it in the directions ``p0->p1`` and ``q0->q1`` (the farther segment end when it is on
    the ray), so the arc between them shows exactly the angle measured. ``None`` for (nearly) parallel lines.
    """
    p0, p1, q0, q1 = (np.asarray(v, dtype=np.float64) for v in (p0, p1, q0, q1))
    u, v = p1 - p0, q1 - q0
    denom = cross(u, v)
    if abs(denom) <= 1e-9 * max(1.0, float(np.hypot(*u)) * float(np.hypot(*v))):
        return None
    vertex = p0 + u * (cross(q0 - p0, v) / denom)

    def on_ray(start: np.ndarray, end: np.ndarray, d: np.ndarray) -> np.ndarray:
        t = max(float(np.dot(start - vertex, d)), float(np.dot(end - vertex, d))) / float(np.dot(d, d))
        return vertex + d * (t if t > 1e-6 else 1.0)

    a, b = on_ray(p0, p1, u), on_ray(q0, q1, v)
    return (tuple(map(float, vertex)), tuple(map(float, a)), tuple(map(float, b)))  # type: ignore[return-value]
