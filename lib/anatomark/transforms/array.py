"""MONAI-style array transforms that carry landmark points with the image.

Images are ``(C, H, W)`` numpy arrays; points are ``(K, 2)`` (x, y) pixel arrays (NaN = missing).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from monai.transforms import RandomizableTransform, Transform

from anatomark.transforms import functional as Fn


class ResizeWithPoints(Transform):
    """Resize a ``(C, H, W)`` image to ``spatial_size`` ``(H', W')`` and move its points accordingly."""

    def __init__(self, spatial_size: Sequence[int]) -> None:
        self.spatial_size = tuple(int(s) for s in spatial_size)

    def __call__(self, img: np.ndarray, points: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        src = img.shape[-2:]
        out = Fn.resize_image(img, self.spatial_size)
        return out, (None if points is None else Fn.resize_points(points, src, self.spatial_size))


class RandAffineWithPoints(RandomizableTransform):
    """Random rotation / isotropic scaling / translation about the image centre, applied to image and points.

    Args:
        prob: probability of applying the transform.
        rotate_deg: rotation drawn from ``[-rotate_deg, rotate_deg]``.
        scale: ``(low, high)`` scale range.
        translate_px: translation drawn from ``[-translate_px, translate_px]`` for x and y.
    """

    def __init__(
        self, prob: float = 0.5, rotate_deg: float = 0.0, scale: Sequence[float] = (1.0, 1.0), translate_px: float = 0.0
    ) -> None:
        RandomizableTransform.__init__(self, prob)
        self.rotate_deg, self.scale, self.translate_px = float(rotate_deg), tuple(scale), float(translate_px)
        self.matrix: np.ndarray | None = None

    def randomize(self, data: np.ndarray | None = None) -> None:  # type: ignore[override]
        super().randomize(None)
        h, w = data.shape[-2:] if data is not None else (1, 1)
        self.matrix = Fn.affine_matrix(
            ((w - 1) / 2, (h - 1) / 2),
            rotate_deg=self.R.uniform(-self.rotate_deg, self.rotate_deg),
            scale=self.R.uniform(*self.scale),
            translate_xy=self.R.uniform(-self.translate_px, self.translate_px, size=2),
        )

    def __call__(
        self, img: np.ndarray, points: np.ndarray | None = None, randomize: bool = True
    ) -> tuple[np.ndarray, np.ndarray | None]:
        if randomize:
            self.randomize(img)
        if not self._do_transform or self.matrix is None:
            return img, points
        out = Fn.warp_image(img, self.matrix)
        return out, (None if points is None else Fn.transform_points(points, self.matrix))


class RandIntensityGamma(RandomizableTransform):
    """Random gamma of a [0, 1] image: ``clip(img, 0, 1) ** g`` with ``log g`` uniform in ``log gamma``; always applied
    (one draw per call), points untouched.

    Args:
        gamma: ``(low, high)`` range of the exponent (e.g. ``(0.8, 1.25)``).
    """

    def __init__(self, gamma: Sequence[float] = (1.0, 1.0)) -> None:
        RandomizableTransform.__init__(self, 1.0)
        lo, hi = (float(g) for g in gamma)
        if not 0 < lo <= hi:
            raise ValueError(f"gamma must be a range 0 < low <= high, got {tuple(gamma)}")
        self.gamma = (lo, hi)
        self.value = 1.0

    def randomize(self, data: np.ndarray | None = None) -> None:  # type: ignore[override]
        self.value = math.exp(self.R.uniform(math.log(self.gamma[0]), math.log(self.gamma[1])))

    def __call__(self, img: np.ndarray, randomize: bool = True) -> np.ndarray:
        if randomize:
            self.randomize(img)
        return np.clip(img, 0.0, 1.0) ** self.value


class MarkPointsOutside(Transform):
    """``(K, 2)`` points -> a float64 copy with NaN rows for points outside a ``spatial_size`` ``(H, W)`` grid
    (pushed out by an augmentation: then treated as missing landmarks)."""

    def __init__(self, spatial_size: Sequence[int]) -> None:
        self.spatial_size = tuple(int(s) for s in spatial_size)

    def __call__(self, points: np.ndarray) -> np.ndarray:
        h, w = self.spatial_size
        pts = np.asarray(points, np.float64).copy()
        out = (pts[:, 0] < 0) | (pts[:, 0] > w - 1) | (pts[:, 1] < 0) | (pts[:, 1] > h - 1)
        pts[out] = np.nan
        return pts


class PointsToHeatmap(Transform):
    """``(K, 2)`` points -> ``(K, H, W)`` Gaussian heatmaps (peak 1; zeros for missing points)."""

    def __init__(self, spatial_size: Sequence[int], sigma: float | Sequence[float] = 2.0) -> None:
        self.spatial_size, self.sigma = tuple(spatial_size), sigma

    def __call__(self, points: np.ndarray) -> np.ndarray:
        return Fn.points_to_heatmaps(points, self.spatial_size, self.sigma)


class HeatmapToPoints(Transform):
    """``(K, H, W)`` heatmaps -> ``(K, 2)`` points (``argmax`` or sub-pixel ``local_mean``)."""

    def __init__(self, method: str = "local_mean", radius: int = 3) -> None:
        self.method, self.radius = method, radius

    def __call__(self, heatmaps: np.ndarray) -> np.ndarray:
        return Fn.heatmaps_to_points(heatmaps, self.method, self.radius)[0]


class PointsToMask(Transform):
    """``(K, 2)`` points -> ``(K, H, W)`` binary masks (disk or square per landmark)."""

    def __init__(self, spatial_size: Sequence[int], radius: float = 3.0, shape: str = "disk") -> None:
        self.spatial_size, self.radius, self.shape = tuple(spatial_size), radius, shape

    def __call__(self, points: np.ndarray) -> np.ndarray:
        return Fn.points_to_masks(points, self.spatial_size, self.radius, self.shape)


class MaskToPoints(Transform):
    """``(K, H, W)`` masks -> ``(K, 2)`` centroids of each channel's largest region (NaN if empty)."""

    def __init__(self, threshold: float = 0.5) -> None:
        self.threshold = threshold

    def __call__(self, masks: np.ndarray) -> np.ndarray:
        return Fn.masks_to_points(masks, self.threshold)[0]


class PointsToLabelMap(Transform):
    """``(K, 2)`` points -> ``(H, W)`` label map with landmark k drawn as a disk of value k."""

    def __init__(self, spatial_size: Sequence[int], radius: float = 3.0) -> None:
        self.spatial_size, self.radius = tuple(spatial_size), radius

    def __call__(self, points: np.ndarray) -> np.ndarray:
        dtype = np.uint8 if len(points) < 256 else np.uint16
        return Fn.points_to_labelmap(points, self.spatial_size, self.radius, dtype)


class LabelMapToPoints(Transform):
    """``(H, W)`` (or ``(1, H, W)``) label map -> ``(K, 2)`` centroids of values 1..K (NaN where absent)."""

    def __init__(self, num_landmarks: int) -> None:
        self.num_landmarks = num_landmarks

    def __call__(self, labelmap: np.ndarray) -> np.ndarray:
        lm = np.asarray(labelmap)
        return Fn.labelmap_to_points(lm[0] if lm.ndim == 3 else lm, self.num_landmarks)
