"""Statistical shape prior: a PCA point-distribution model of the training labels that corrects outlying predictions.

Why: a heatmap model places each landmark on its own. Where structures repeat (17 vertebrae with 4 similar corners
each), single corners jump to the neighbouring vertebra or disc; each such corner tilts one vertebra and measurements
built from slopes (Cobb angles take the maximum slope difference) are biased upwards. The training labels know what
shapes are possible: fit a PCA model to them (points normalised by the image width and height), project each
prediction onto the first ``modes`` modes with a robust (Huber-reweighted) least-squares fit and mode coefficients
clamped to +-3 standard deviations, then replace only the predicted points that lie farther than ``replace_beyond``
(a fraction of the image height) from that projection. Missing predictions (NaN) are filled from the projection.

Recipe section (``configs/models/*.yaml``)::

    shape_prior:
      modes: 16             # PCA modes kept
      replace_beyond: 0.02  # replace a point farther than this fraction of the image height from the fitted shape
                            # (0 = replace every point by the fitted shape)
      huber: 0.01           # Huber threshold for the robust fit (fraction of the image size)
      iterations: 10

The prior is stored in the model file (``extra_state_dicts["shape_prior"]``) and applied by
:meth:`anatomark.model.LandmarkModel.predict` for every model kind.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from anatomark.errors import AnatomarkError

DEFAULTS = {"modes": 16, "replace_beyond": 0.02, "huber": 0.01, "iterations": 10}


class ShapePrior(torch.nn.Module):
    """PCA shape model of ``K`` landmarks (buffers only, so it travels in a model file like a network).

    Args:
        n_landmarks: K.
        modes: number of PCA modes kept.
        replace_beyond: see the module docstring.
        huber: Huber threshold of the robust fit, as a fraction of the image size.
        iterations: reweighting iterations.

    Buffers: ``mean`` ``(2K,)`` and ``components`` ``(modes, 2K)`` of the normalised shapes ``(x1/W, y1/H, x2/W ...)``,
    ``stddev`` ``(modes,)`` per mode.
    """

    def __init__(
        self,
        n_landmarks: int,
        modes: int = 16,
        replace_beyond: float = 0.02,
        huber: float = 0.01,
        iterations: int = 10,
    ) -> None:
        super().__init__()
        self.n_landmarks, self.modes = int(n_landmarks), int(modes)
        self.replace_beyond, self.huber, self.iterations = float(replace_beyond), float(huber), int(iterations)
        self.register_buffer("mean", torch.zeros(2 * self.n_landmarks, dtype=torch.float64))
        self.register_buffer("components", torch.zeros(self.modes, 2 * self.n_landmarks, dtype=torch.float64))
        self.register_buffer("stddev", torch.zeros(self.modes, dtype=torch.float64))

    @classmethod
    def fit(cls, shapes: np.ndarray, sizes_wh: np.ndarray, **cfg: Any) -> ShapePrior:
        """Fit to ``(N, K, 2)`` labelled (x, y) pixels of images of ``(N, 2)`` sizes (W, H); incomplete shapes skipped."""
        shapes = np.asarray(shapes, dtype=np.float64)
        sizes = np.asarray(sizes_wh, dtype=np.float64)
        complete = np.isfinite(shapes).all(axis=(1, 2))
        cfg = {**DEFAULTS, **cfg}
        n = int(cfg["modes"])
        if not 1 <= n <= 2 * shapes.shape[1]:
            raise AnatomarkError(f"shape_prior.modes must be between 1 and 2 x {shapes.shape[1]} landmarks; got {n}")
        if complete.sum() < n + 2:
            raise AnatomarkError(
                f"A shape prior with {n} modes needs at least {n + 2} fully annotated training images; "
                f"got {int(complete.sum())}. Use fewer modes or drop shape_prior from the recipe."
            )
        x = (shapes[complete] / sizes[complete, None, :]).reshape(int(complete.sum()), -1)
        mean = x.mean(axis=0)
        _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
        prior = cls(shapes.shape[1], **cfg)
        prior.mean.copy_(torch.from_numpy(mean))
        prior.components.copy_(torch.from_numpy(vt[:n]))
        prior.stddev.copy_(torch.from_numpy(s[:n] / np.sqrt(max(1, len(x) - 1))))
        return prior

    def config(self) -> dict[str, Any]:
        return {
            "modes": self.modes,
            "replace_beyond": self.replace_beyond,
            "huber": self.huber,
            "iterations": self.iterations,
        }

    def project(self, points: np.ndarray, size_wh: Sequence[float]) -> np.ndarray:
        """Robust fit of the shape model to ``(K, 2)`` (x, y) pixels -> the fitted ``(K, 2)`` shape in pixels."""
        k = self.n_landmarks
        s = np.asarray(size_wh, dtype=np.float64)
        p = (np.asarray(points, dtype=np.float64) / s).reshape(-1)
        mean, comp = self.mean.double().numpy(), self.components.double().numpy().T  # (2K,), (2K, modes)
        lim = 3.0 * self.stddev.double().numpy()
        w = np.isfinite(p.reshape(k, 2)).all(axis=1).astype(np.float64)
        p = np.nan_to_num(p)
        b = np.zeros(self.modes)
        for _ in range(max(1, self.iterations)):
            ww = np.repeat(w, 2)
            b = np.linalg.lstsq(comp * ww[:, None], (p - mean) * ww, rcond=None)[0]
            b = np.clip(b, -lim, lim)
            d = np.linalg.norm((mean + comp @ b - p).reshape(k, 2), axis=1)
            w = np.where(w > 0, np.where(d < self.huber, 1.0, self.huber / np.maximum(d, 1e-12)), 0.0)
        return (mean + comp @ b).reshape(k, 2) * s

    def apply(self, points: np.ndarray, size_wh: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
        """Correct ``(K, 2)`` predicted pixels; returns the corrected points and a ``(K,)`` bool mask of replaced ones."""
        pts = np.asarray(points, dtype=np.float64)
        fitted = self.project(pts, size_wh)
        d = np.linalg.norm(fitted - pts, axis=1) / float(size_wh[1])
        replace = ~np.isfinite(d) | (d > self.replace_beyond)
        return np.where(replace[:, None], fitted, pts), replace


def image_sizes_wh(items: Sequence[dict[str, Any]]) -> np.ndarray:
    """``(N, 2)`` (W, H) of the items' images, from the file header when the format allows."""
    from PIL import Image

    from anatomark.data.image_io import load_image

    out = []
    for it in items:
        try:
            with Image.open(it["image"]) as im:
                out.append((im.width, im.height))
        except Exception:  # noqa: BLE001 - DICOM/NIfTI/NRRD: read the image
            h, w = load_image(it["image"]).shape
            out.append((w, h))
    return np.asarray(out, dtype=np.float64)


def fit_shape_prior(items: Sequence[dict[str, Any]], cfg: dict[str, Any] | None) -> ShapePrior:
    """Fit a :class:`ShapePrior` to training items ``{"image", "landmarks" (K, 2)}`` with a recipe's ``shape_prior``."""
    shapes = np.stack([np.asarray(it["landmarks"], dtype=np.float64) for it in items])
    return ShapePrior.fit(shapes, image_sizes_wh(items), **(cfg or {}))
