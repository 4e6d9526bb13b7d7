"""Transforms that carry landmark points through every spatial step (array + dictionary pairs)."""

from __future__ import annotations

from anatomark.transforms.array import (
    HeatmapToPoints,
    LabelMapToPoints,
    MaskToPoints,
    PointsToHeatmap,
    PointsToLabelMap,
    PointsToMask,
    RandAffineWithPoints,
    ResizeWithPoints,
)
from anatomark.transforms.dictionary import (
    HeatmapToPointsd,
    LabelMapToPointsd,
    MaskToPointsd,
    PointsToHeatmapd,
    PointsToLabelMapd,
    PointsToMaskd,
    RandAffineWithPointsd,
    ResizeWithPointsd,
)

__all__ = [
    "HeatmapToPoints",
    "HeatmapToPointsd",
    "LabelMapToPoints",
    "LabelMapToPointsd",
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
    "ResizeWithPoints",
    "ResizeWithPointsd",
]
