"""Dictionary versions of :mod:`anatomark.transforms.array` (MONAI ``MapTransform`` style)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform

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


class ResizeWithPointsd(MapTransform):
    """Resize images under ``keys`` and move the points under ``point_keys`` (``(K, 2)`` x, y)."""

    def __init__(self, keys: KeysCollection, point_keys: KeysCollection, spatial_size: Sequence[int]) -> None:
        super().__init__(keys)
        self.point_keys = [point_keys] if isinstance(point_keys, str) else list(point_keys)
        self.t = ResizeWithPoints(spatial_size)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        src = None
        for k in self.key_iterator(d):
            src = d[k].shape[-2:]
            d[k] = self.t(d[k])[0]
        if src is not None:
            from anatomark.transforms.functional import resize_points

            for pk in self.point_keys:
                d[pk] = resize_points(d[pk], src, self.t.spatial_size)
        return d


class RandAffineWithPointsd(RandomizableTransform, MapTransform):
    """One random affine applied to every image under ``keys`` and every point array under ``point_keys``.

    The draws are those of :class:`~anatomark.transforms.array.RandAffineWithPoints` (whether to apply, then the
    rotation, scale and shift), from the random state given to :meth:`set_random_state`, so a pipeline of these
    transforms sharing one state reproduces the array transforms called in the same order.
    """

    def __init__(
        self,
        keys: KeysCollection,
        point_keys: KeysCollection,
        prob: float = 0.5,
        rotate_deg: float = 0.0,
        scale: Sequence[float] = (1.0, 1.0),
        translate_px: float = 0.0,
    ) -> None:
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, prob)
        self.point_keys = [point_keys] if isinstance(point_keys, str) else list(point_keys)
        self.t = RandAffineWithPoints(prob, rotate_deg, scale, translate_px)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None):  # type: ignore[override]
        super().set_random_state(seed, state)
        self.t.set_random_state(state=self.R)  # one stream for both
        return self

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.t.randomize(d[self.first_key(d)])
        if not self.t._do_transform:
            return d
        for k in self.key_iterator(d):
            d[k] = self.t(d[k], randomize=False)[0]
        for pk in self.point_keys:
            d[pk] = _move(d[pk], self.t.matrix)
        return d


class RandIntensityGammad(RandomizableTransform, MapTransform):
    """Dictionary version of :class:`~anatomark.transforms.array.RandIntensityGamma`: one gamma for every image under
    ``keys``."""

    def __init__(self, keys: KeysCollection, gamma: Sequence[float] = (1.0, 1.0)) -> None:
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, 1.0)
        self.t = RandIntensityGamma(gamma)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None):  # type: ignore[override]
        super().set_random_state(seed, state)
        self.t.set_random_state(state=self.R)
        return self

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.t.randomize(None)
        for k in self.key_iterator(d):
            d[k] = self.t(d[k], randomize=False)
        return d


def _move(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    from anatomark.transforms.functional import transform_points

    return transform_points(points, matrix)


class _PointsTo(MapTransform):
    def __init__(self, keys: KeysCollection, output_keys: KeysCollection | None, transform: Any) -> None:
        super().__init__(keys)
        outs = output_keys if output_keys is not None else keys
        self.output_keys = [outs] if isinstance(outs, str) else list(outs)
        self.t = transform

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for k, o in zip(self.key_iterator(d), self.output_keys):
            d[o] = self.t(d[k])
        return d


class MarkPointsOutsided(_PointsTo):
    """Dictionary version of :class:`~anatomark.transforms.array.MarkPointsOutside` (``keys`` hold points, replaced
    unless ``output_keys`` are given)."""

    def __init__(
        self, keys: KeysCollection, spatial_size: Sequence[int], output_keys: KeysCollection | None = None
    ) -> None:
        super().__init__(keys, output_keys, MarkPointsOutside(spatial_size))


class PointsToHeatmapd(_PointsTo):
    """Dictionary version of :class:`PointsToHeatmap` (``keys`` hold points, ``output_keys`` get heatmaps)."""

    def __init__(self, keys, spatial_size, sigma=2.0, output_keys=None) -> None:  # noqa: ANN001
        super().__init__(keys, output_keys, PointsToHeatmap(spatial_size, sigma))


class HeatmapToPointsd(_PointsTo):
    """Dictionary version of :class:`HeatmapToPoints`."""

    def __init__(self, keys, method="local_mean", radius=3, output_keys=None) -> None:  # noqa: ANN001
        super().__init__(keys, output_keys, HeatmapToPoints(method, radius))


class PointsToMaskd(_PointsTo):
    """Dictionary version of :class:`PointsToMask`."""

    def __init__(self, keys, spatial_size, radius=3.0, shape="disk", output_keys=None) -> None:  # noqa: ANN001
        super().__init__(keys, output_keys, PointsToMask(spatial_size, radius, shape))


class MaskToPointsd(_PointsTo):
    """Dictionary version of :class:`MaskToPoints`."""

    def __init__(self, keys, threshold=0.5, output_keys=None) -> None:  # noqa: ANN001
        super().__init__(keys, output_keys, MaskToPoints(threshold))


class PointsToLabelMapd(_PointsTo):
    """Dictionary version of :class:`PointsToLabelMap`."""

    def __init__(self, keys, spatial_size, radius=3.0, output_keys=None) -> None:  # noqa: ANN001
        super().__init__(keys, output_keys, PointsToLabelMap(spatial_size, radius))


class LabelMapToPointsd(_PointsTo):
    """Dictionary version of :class:`LabelMapToPoints`."""

    def __init__(self, keys, num_landmarks, output_keys=None) -> None:  # noqa: ANN001
        super().__init__(keys, output_keys, LabelMapToPoints(num_landmarks))
