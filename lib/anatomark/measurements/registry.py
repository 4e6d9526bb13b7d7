"""Which measurements each landmark set supports, and one entry point to compute them all.

``measurements_for(landmark_set_name, points, spacing)`` returns JSON-serialisable dicts (for the infer JSON);
:func:`measure` returns :class:`MeasurementResult` objects. Register your own set with :func:`register`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from anatomark.config import LandmarkSet, load_landmark_set
from anatomark.errors import AnatomarkError
from anatomark.measurements.base import MeasurementResult, check_spacing

#: fn(points (K, 2) px, spacing (sx, sy), names, image_size_wh or None) -> results
MeasureFn = Callable[[Any, tuple[float, float], Sequence[str], "tuple[int, int] | None"], list[MeasurementResult]]


@dataclass
class _Entry:
    fn: MeasureFn
    names: list[str]


_REGISTRY: dict[str, _Entry] = {}


def register(landmark_set_name: str, fn: MeasureFn, measurement_names: Sequence[str]) -> None:
    """Declare that landmark set ``landmark_set_name`` supports the measurements ``fn`` computes.

    Args:
        landmark_set_name: the set's ``name``.
        fn: ``fn(points, spacing, names, image_size_wh) -> list[MeasurementResult]``; points ``(K, 2)`` (x, y)
            pixels in set order, spacing ``(sx, sy)`` mm/px, ``image_size_wh`` ``(W, H)`` or ``None``.
        measurement_names: names of the results ``fn`` returns (for :func:`available_measurements`).
    """
    _REGISTRY[landmark_set_name] = _Entry(fn, list(measurement_names))


def available_measurements(landmark_set_name: str | None = None) -> dict[str, list[str]] | list[str]:
    """Measurement names of one set (``[]`` if none), or ``{set: names}`` for all registered sets."""
    _ensure_builtin()
    if landmark_set_name is None:
        return {k: list(v.names) for k, v in sorted(_REGISTRY.items())}
    e = _REGISTRY.get(landmark_set_name)
    return list(e.names) if e else []


def measure(
    points: Any,
    landmark_set: str | LandmarkSet,
    spacing: float | Sequence[float] | None = None,
    image_size_wh: Sequence[int] | None = None,
) -> list[MeasurementResult]:
    """All measurements the landmark set supports.

    Args:
        points: ``(K, 2)`` (x, y) pixels in landmark-set order (``NaN`` rows = missing).
        landmark_set: set name or object.
        spacing: ``(sx, sy)`` mm/px; ``None`` -> the set's ``default_spacing_mm``; if that is ``None`` too, lengths
            are reported in pixels (unit ``px``).
        image_size_wh: ``(W, H)`` of the image the points refer to (the spine S-curve branch needs H).

    Raises:
        AnatomarkError: the set has no measurements, or the points do not match the set.
    """
    _ensure_builtin()
    ls = landmark_set if isinstance(landmark_set, LandmarkSet) else load_landmark_set(landmark_set)
    entry = _REGISTRY.get(ls.name)
    if entry is None:
        raise AnatomarkError(
            f"No measurements are defined for landmark set {ls.name!r}; sets with measurements: "
            f"{', '.join(sorted(_REGISTRY))} (add yours with anatomark.measurements.register)"
        )
    no_spacing = spacing is None and ls.default_spacing_mm is None
    sp = check_spacing(spacing if spacing is not None else ls.default_spacing_mm)
    size = (int(image_size_wh[0]), int(image_size_wh[1])) if image_size_wh is not None else None
    results = entry.fn(points, sp, ls.names, size)
    if no_spacing:
        for r in results:
            if r.unit == "mm":
                r.unit = "px"
                r.details["note_unit"] = "no pixel spacing known: length in pixels"
    return results


def measurements_for(
    landmark_set_name: str,
    points: Any,
    spacing: float | Sequence[float] | None = None,
    image_size_wh: Sequence[int] | None = None,
) -> list[dict[str, Any]]:
    """JSON-serialisable measurement dicts for the infer JSON; ``[]`` when the set has no measurements.

    Each dict: ``name, value, unit, class, class_description, computable, reason, description, landmarks,
    details`` (see :meth:`MeasurementResult.to_dict`).
    """
    _ensure_builtin()
    if landmark_set_name not in _REGISTRY:
        return []
    return [r.to_dict() for r in measure(points, landmark_set_name, spacing, image_size_wh)]


_BUILTIN_DONE = False


def _ensure_builtin() -> None:
    global _BUILTIN_DONE
    if _BUILTIN_DONE:
        return
    _BUILTIN_DONE = True
    from anatomark.measurements import cephalometric, lower_limb, occlusion, spine

    register(
        cephalometric.LANDMARK_SET,
        lambda pts, sp, names, size: cephalometric.cephalometric_measurements(pts, sp, names),
        list(cephalometric.MEASUREMENTS),
    )
    register(
        occlusion.LANDMARK_SET,
        lambda pts, sp, names, size: occlusion.yen_measurements(pts, sp, names),
        ["YEN"],
    )
    register(
        spine.LANDMARK_SET,
        lambda pts, sp, names, size: spine.cobb_measurements(pts, sp, names, image_height=size[1] if size else None),
        list(spine.ANGLE_NAMES),
    )
    register(
        lower_limb.LANDMARK_SET,
        lambda pts, sp, names, size: lower_limb.lower_limb_measurements(pts, sp, names),
        [s + n for s in lower_limb.SIDES for n in ("mLDFA", "mMPTA", "FVA", "HKA", "MAD")],
    )
