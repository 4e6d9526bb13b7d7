"""Transforms that carry landmark points through every spatial step (array + dictionary pairs)."""

from __future__ import annotations

from anatomark.transforms.array import (
    HeatmapToPoints,
    LabelMapToPoints,
    MarkPointsOutside,
    MaskToPoints,
    PointsToHeatmap,
    PointsToLabelMap,
    PointsToMask,
    RandAffineWithPoints,
    RandIntensityGamma,
    ResizeWithPoints,
)
from anatomark.transforms.dictionary import (
    HeatmapToPointsd,
    LabelMapToPointsd,
    MarkPointsOutsided,
    MaskToPointsd,
    PointsToHeatmapd,
    PointsToLabelMapd,
    PointsToMaskd,
    RandAffineWithPointsd,
    RandIntensityGammad,
    ResizeWithPointsd,
)

__all__ = [
    "HeatmapToPoints",
    "HeatmapToPointsd",
    "LabelMapToPoints",
    "LabelMapToPointsd",
    "MarkPointsOutside",
    "MarkPointsOutsided",
    "MaskToPoints",
    "MaskToPointsd",
    "PointsToHeatmap",
    "PointsToHeatmapd",
    "PointsToLabelMap",
    "PointsToLabelMapd",
    "PointsToMask",
    "PointsToMaskd",
    "RandAffineWithPoints",
    "RandAffineWithPointsd",
    "RandIntensityGamma",
    "RandIntensityGammad",
    "ResizeWithPoints",
    "ResizeWithPointsd",
]
