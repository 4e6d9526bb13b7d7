"""Clinical measurements from landmarks: ISBI 2015 cephalometric types, YEN occlusion class, AASCE Cobb angles and
lower-limb alignment.

Points are ``(K, 2)`` float arrays ``(x, y)`` in pixels (x right, y down, ``NaN`` rows = missing); spacing is
``(sx, sy)`` mm/px. Every measurement returns a :class:`MeasurementResult` with a value, a unit and a class where
one is defined, or ``value=None`` with the reason (missing landmark, coincident points) -- never a wrong number.
Formulas and sources: ``../shared/docs/measurements.md`` and each module's docstring.
"""

from __future__ import annotations

from anatomark.measurements.base import MeasurementResult
from anatomark.measurements.cephalometric import cephalometric_measurements
from anatomark.measurements.lower_limb import lower_limb_measurements
from anatomark.measurements.occlusion import yen_class, yen_measurements
from anatomark.measurements.registry import available_measurements, measure, measurements_for, register
from anatomark.measurements.spine import cobb_measurements, smape

__all__ = [
    "MeasurementResult",
    "available_measurements",
    "cephalometric_measurements",
    "cobb_measurements",
    "lower_limb_measurements",
    "measure",
    "measurements_for",
    "register",
    "smape",
    "yen_class",
    "yen_measurements",
]
