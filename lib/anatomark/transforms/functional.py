"""Point <-> image-grid maths: the one place where points are encoded, decoded and moved.

Conventions: images are ``(H, W)`` or ``(C, H, W)``; points are ``(K, 2)`` float arrays ``(x, y)`` in pixels with
the origin at the centre of the top-left pixel; ``NaN`` rows are missing landmarks and stay ``NaN``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "affine_matrix",
    "heatmaps_to_points",
    "labelmap_to_points",
    "masks_to_points",
    "patch_matrix",
    "points_to_heatmaps",
    "points_to_labelmap",
    "points_to_masks",
    "resize_image",
    "resize_points",
    "sample_patch",
    "transform_points",
    "warp_image",
]


def scale_intensity(array: np.ndarray, lower: float = 0.5, upper: float = 99.5) -> np.ndarray:
    """Map intensities to [0, 1] between the ``lower`` and ``upper`` percentiles (robust to bit depth)."""
    a = np.asarray(array, dtype=np.float32)
    lo, hi = np.percentile(a[:: max(1, a.shape[0] // 256), :: max(1, a.shape[1] // 256)], (lower, upper))
    if hi <= lo:
        hi = lo + 1.0
    return np.clip((a - lo) / (hi - lo), 0.0, 1.0)


def resize_points(points: np.ndarray, src_hw: Sequence[int], dst_hw: Sequence[int]) -> np.ndarray:
    """Map ``(K, 2)`` points from a ``src_hw`` grid to a ``dst_hw`` grid (pixel-area convention).

    ``x' = (x + 0.5) * W' / W - 0.5`` (same for y), which matches area/bilinear resizing without corner alignment.
    """
    p = np.asarray(points, dtype=np.float64)
    scale = np.array([dst_hw[1] / src_hw[1], dst_hw[0] / src_hw[0]])
    return (p + 0.5) * scale - 0.5


def resize_image(image: np.ndarray, dst_hw: Sequence[int]) -> np.ndarray:
    """Resize ``(H, W)`` or ``(C, H, W)`` float image to ``dst_hw`` with antialiased bilinear interpolation."""
    arr = np.asarray(image, dtype=np.float32)
    t = torch.from_numpy(np.ascontiguousarray(arr))
    squeeze = t.ndim == 2
    t = t[None, None] if squeeze else t[None]
    if tuple(t.shape[-2:]) == tuple(dst_hw):
        out = t
    else:
        down = t.shape[-2] > dst_hw[0] or t.shape[-1] > dst_hw[1]
        out = F.interpolate(t, size=tuple(int(s) for s in dst_hw), mode="bilinear", align_corners=False, antialias=down)
    out = out[0, 0] if squeeze else out[0]
    return out.numpy()


def points_inside(points: np.ndarray, shape_hw: Sequence[int]) -> np.ndarray:
    """``(K,)`` bool: which ``(K, 2)`` (x, y) points lie on an ``(H, W)`` image (within half a pixel of its pixel
    centres); NaN points are not inside."""
    p = np.asarray(points, dtype=np.float64)
    h, w = shape_hw
    with np.errstate(invalid="ignore"):
        return (p[:, 0] >= -0.5) & (p[:, 0] <= w - 0.5) & (p[:, 1] >= -0.5) & (p[:, 1] <= h - 0.5)


def letterbox_frame(src_hw: Sequence[int], dst_hw: Sequence[int], tolerance: float = 0.05) -> tuple[int, int, int, int]:
    """Zero padding that gives ``src_hw`` the aspect ratio of ``dst_hw``: ``(top, left, padded_h, padded_w)``.

    The image is centred in the padded frame. An image whose aspect ratio is within ``tolerance`` (relative) of the
    grid's gets no padding and is stretched as in training (ISBI's 1935x2400 on a 256x320 grid: 0.8 % off).
    """
    h, w = int(src_hw[0]), int(src_hw[1])
    gh, gw = int(dst_hw[0]), int(dst_hw[1])
    if abs((w / h) / (gw / gh) - 1.0) <= tolerance:
        return 0, 0, h, w
    pw = max(w, int(round(h * gw / gh)))
    ph = max(h, int(round(pw * gh / gw)))
    return (ph - h) // 2, (pw - w) // 2, ph, pw


def letterbox_image(image: np.ndarray, dst_hw: Sequence[int]) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Pad ``(H, W)`` with zeros to the aspect of ``dst_hw`` (see :func:`letterbox_frame`), then resize to it."""
    top, left, ph, pw = frame = letterbox_frame(np.shape(image), dst_hw)
    arr = np.asarray(image, dtype=np.float32)
    if (ph, pw) != arr.shape:
        padded = np.zeros((ph, pw), np.float32)
        padded[top : top + arr.shape[0], left : left + arr.shape[1]] = arr
        arr = padded
    return resize_image(arr, dst_hw), frame


def letterbox_points_back(points: np.ndarray, frame: tuple[int, int, int, int], grid_hw: Sequence[int]) -> np.ndarray:
    """``(K, 2)`` points of the letterboxed ``grid_hw`` grid -> the original image (may fall outside it)."""
    top, left, ph, pw = frame
    return resize_points(points, grid_hw, (ph, pw)) - np.array([left, top], dtype=np.float64)


def affine_matrix(
    center_xy: Sequence[float], rotate_deg: float = 0.0, scale: float = 1.0, translate_xy: Sequence[float] = (0.0, 0.0)
) -> np.ndarray:
    """3x3 matrix mapping input (x, y, 1) to output: rotate/scale about ``center_xy``, then translate.

    Positive ``rotate_deg`` turns the content clockwise on screen (y points down).
    """
    a = math.radians(rotate_deg)
    c, s = math.cos(a) * scale, math.sin(a) * scale
    cx, cy = center_xy
    m = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    m[0, 2] = cx - c * cx + s * cy + translate_xy[0]
    m[1, 2] = cy - s * cx - c * cy + translate_xy[1]
    return m


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a 3x3 (x, y) affine ``matrix`` to ``(K, 2)`` points (NaN stays NaN)."""
    p = np.asarray(points, dtype=np.float64)
    return p @ matrix[:2, :2].T + matrix[:2, 2]


def warp_image(
    image: np.ndarray, matrix: np.ndarray, out_hw: Sequence[int] | None = None, order: int = 1
) -> np.ndarray:
    """Warp ``(H, W)`` or ``(C, H, W)`` so that input pixel p lands at ``matrix @ p`` (zero padding)."""
    from scipy.ndimage import affine_transform

    arr = np.asarray(image, dtype=np.float32)
    hw = tuple(out_hw) if out_hw is not None else arr.shape[-2:]
    inv = np.linalg.inv(matrix)
    # scipy works in (row, col) = (y, x) index order: swap axes of the inverse map.
    lin = inv[:2, :2][::-1, ::-1]
    off = inv[:2, 2][::-1]
    if arr.ndim == 2:
        return affine_transform(arr, lin, offset=off, output_shape=hw, order=order, mode="constant", cval=0.0)
    return np.stack([affine_transform(c, lin, offset=off, output_shape=hw, order=order, mode="constant") for c in arr])


def points_to_heatmaps(
    points: np.ndarray, spatial_hw: Sequence[int], sigma: float | Sequence[float] = 2.0
) -> np.ndarray:
    """Encode ``(K, 2)`` points as ``(K, H, W)`` Gaussian heatmaps with peak 1 (zeros for missing points).

    Args:
        points: ``(K, 2)`` (x, y) in pixels of the target grid.
        spatial_hw: ``(H, W)``.
        sigma: Gaussian standard deviation in pixels, one value or one per landmark.
    """
    p = np.asarray(points, dtype=np.float64)
    h, w = int(spatial_hw[0]), int(spatial_hw[1])
    sig = np.broadcast_to(np.asarray(sigma, dtype=np.float64), (p.shape[0],))
    ys = np.arange(h, dtype=np.float64)
    xs = np.arange(w, dtype=np.float64)
    out = np.zeros((p.shape[0], h, w), dtype=np.float32)
    for k, (x, y) in enumerate(p):
        if not (np.isfinite(x) and np.isfinite(y)):
            continue
        gx = np.exp(-((xs - x) ** 2) / (2 * sig[k] ** 2))
        gy = np.exp(-((ys - y) ** 2) / (2 * sig[k] ** 2))
        out[k] = np.outer(gy, gx)
    return out


def heatmaps_to_points(
    heatmaps: np.ndarray | torch.Tensor, method: str = "local_mean", radius: int = 3
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decode ``(K, H, W)`` heatmaps (or probability maps) into points.

    Args:
        heatmaps: non-negative maps, one per landmark.
        method: ``argmax`` (integer pixel) or ``local_mean`` (sub-pixel: map-weighted mean of the
            ``(2 * radius + 1)^2`` window around the argmax).
        radius: window half-size in pixels for ``local_mean``.

    Returns:
        ``points (K, 2)`` (x, y), ``peak (K,)`` value at the maximum, ``mass (K,)`` sum of the map inside the
        window (for a probability map: the probability that the landmark is within ``radius`` of the point).
    """
    if method not in ("argmax", "local_mean"):
        raise ValueError(f"Unknown heatmap decoding {method!r}; use 'argmax' or 'local_mean'")
    hm = _maps_numpy(heatmaps)
    k, h, w = hm.shape
    flat = hm.reshape(k, -1)
    idx = flat.argmax(axis=1)
    ys, xs = np.divmod(idx, w)
    peak = flat[np.arange(k), idx]
    pts = np.stack([xs, ys], axis=1).astype(np.float64)
    mass = np.zeros(k)
    for i in range(k):
        win, y0, y1, x0, x1 = _window(hm[i], int(xs[i]), int(ys[i]), radius)
        total = win.sum()
        mass[i] = total
        if method == "local_mean" and total > 0:
            gy, gx = np.mgrid[y0:y1, x0:x1]
            pts[i] = ((win * gx).sum() / total, (win * gy).sum() / total)
    return pts, peak.astype(np.float64), mass


def window_mass(maps: np.ndarray | torch.Tensor, points: np.ndarray, radius: int) -> np.ndarray:
    """Sum of each ``(K, H, W)`` map in the ``(2 * radius + 1)^2`` window around its ``(K, 2)`` (x, y) point (rounded),
    clipped to the map: :func:`heatmaps_to_points`' ``mass`` around a given point instead of the argmax."""
    m = _maps_numpy(maps)
    out = np.zeros(m.shape[0])
    for i in range(m.shape[0]):
        if np.isfinite(points[i]).all():
            x, y = (int(round(float(v))) for v in points[i])
            out[i] = float(_window(m[i], x, y, radius)[0].sum())  # an empty window (point off the map) sums to 0
    return out


def _maps_numpy(maps: np.ndarray | torch.Tensor) -> np.ndarray:
    """``(K, H, W)`` maps as a float32 NumPy array (a tensor is detached and moved to the CPU)."""
    return maps.detach().float().cpu().numpy() if isinstance(maps, torch.Tensor) else np.asarray(maps, np.float32)


def _window(m: np.ndarray, x: int, y: int, radius: int) -> tuple[np.ndarray, int, int, int, int]:
    """The ``(2 * radius + 1)^2`` window of the ``(H, W)`` map ``m`` around pixel ``(x, y)``, clipped to the map, as
    float64 clipped at 0, and its bounds ``y0, y1, x0, x1``."""
    h, w = m.shape
    y0, x0 = min(h, max(0, y - radius)), min(w, max(0, x - radius))
    y1, x1 = max(y0, min(h, y + radius + 1)), max(x0, min(w, x + radius + 1))  # empty, not wrapped, off the map
    return np.clip(m[y0:y1, x0:x1].astype(np.float64), 0, None), y0, y1, x0, x1


def heatmap_spread(prob: np.ndarray | torch.Tensor, points: np.ndarray) -> np.ndarray:
    """Expected distance between each point and a draw from its probability map: ``E_p[|q - point|]``.

    Args:
        prob: ``(K, H, W)`` maps, each summing to 1 (a spatial softmax).
        points: ``(K, 2)`` (x, y) in the same grid.

    Returns:
        ``(K,)`` distances in grid pixels: small for a sharp single peak, large for a flat or multi-modal map.
    """
    p = _maps_numpy(prob)
    k, h, w = p.shape
    gy, gx = np.mgrid[0:h, 0:w].astype(np.float32)
    pts = np.asarray(points, np.float32)
    out = np.full(k, np.nan)
    for i in range(k):
        if np.isfinite(pts[i]).all():
            d = np.hypot(gx - pts[i, 0], gy - pts[i, 1])
            out[i] = float((p[i] * d).sum() / max(float(p[i].sum()), 1e-12))
    return out


def _disk(radius: float, shape: str) -> tuple[np.ndarray, np.ndarray]:
    r = int(math.ceil(radius))
    dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
    keep = (dx**2 + dy**2 <= radius**2 + 1e-9) if shape == "disk" else (np.abs(dx) <= radius) & (np.abs(dy) <= radius)
    return dx[keep], dy[keep]


def points_to_masks(
    points: np.ndarray, spatial_hw: Sequence[int], radius: float = 3.0, shape: str = "disk"
) -> np.ndarray:
    """Encode ``(K, 2)`` points as ``(K, H, W)`` binary masks: a disk (or square of half-side ``radius``) per point."""
    if shape not in ("disk", "square"):
        raise ValueError(f"Unknown mask shape {shape!r}; use 'disk' or 'square'")
    p = np.asarray(points, dtype=np.float64)
    h, w = int(spatial_hw[0]), int(spatial_hw[1])
    out = np.zeros((p.shape[0], h, w), dtype=np.uint8)
    dx, dy = _disk(radius, shape)
    for k, (x, y) in enumerate(p):
        if not (np.isfinite(x) and np.isfinite(y)):
            continue
        cx, cy = int(round(x)), int(round(y))
        xx, yy = cx + dx, cy + dy
        ok = (xx >= 0) & (xx < w) & (yy >= 0) & (yy < h)
        out[k, yy[ok], xx[ok]] = 1
    return out


def masks_to_points(
    masks: np.ndarray, threshold: float = 0.5, region: str = "largest", weighted: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Decode ``(K, H, W)`` masks (or probabilities) into one point per channel, from one connected region.

    Args:
        masks: ``(K, H, W)`` masks or probabilities.
        threshold: foreground is ``masks > threshold``.
        region: which region gives the point when a channel has several: ``"largest"`` (most pixels) or
            ``"peak"`` (the region holding the channel's maximum); a second blob never moves the point.
        weighted: probability-weighted centroid of the region instead of its plain centroid.

    Returns:
        ``points (K, 2)`` (x, y; NaN where a channel has no region) and ``n_regions (K,)`` (0 = missed,
        >1 = extra detections).
    """
    from scipy.ndimage import label

    if region not in ("largest", "peak"):
        raise ValueError(f"region must be 'largest' or 'peak', not {region!r}")
    m = np.asarray(masks)
    pts = np.full((m.shape[0], 2), np.nan)
    n_regions = np.zeros(m.shape[0], dtype=int)
    for k in range(m.shape[0]):
        fg = m[k] > threshold
        if not fg.any():
            continue
        lab, n = label(fg)
        n_regions[k] = n
        if n > 1:
            if region == "peak":
                keep = int(lab.flat[int(np.argmax(np.where(fg, m[k], -np.inf)))])
            else:
                keep = int(np.argmax(np.bincount(lab.ravel())[1:])) + 1
            fg = lab == keep
        ys, xs = np.nonzero(fg)
        if weighted:
            wts = np.asarray(m[k][ys, xs], np.float64)
            pts[k] = (float((xs * wts).sum() / wts.sum()), float((ys * wts).sum() / wts.sum()))
        else:
            pts[k] = (xs.mean(), ys.mean())
    return pts, n_regions


def points_to_labelmap(
    points: np.ndarray, spatial_hw: Sequence[int], radius: float = 3.0, dtype: np.dtype | type = np.uint8
) -> np.ndarray:
    """Draw ``(K, 2)`` points into one ``(H, W)`` label map: landmark k (1-based) is a disk of value k.

    Where disks overlap the later landmark wins; missing landmarks are not drawn.
    """
    masks = points_to_masks(points, spatial_hw, radius=radius, shape="disk")
    out = np.zeros(tuple(int(s) for s in spatial_hw), dtype=dtype)
    for k in range(masks.shape[0]):
        out[masks[k] > 0] = k + 1
    return out


def labelmap_to_points(labelmap: np.ndarray, num_landmarks: int) -> np.ndarray:
    """Centroid of value k (1..K) in an ``(H, W)`` label map -> ``(K, 2)`` (x, y); NaN where k is absent."""
    lm = np.asarray(labelmap)
    if lm.ndim != 2:
        raise ValueError(f"Label map must be 2D (H, W), got shape {lm.shape}")
    pts = np.full((num_landmarks, 2), np.nan)
    flat = lm.ravel().astype(np.int64)
    valid = (flat >= 1) & (flat <= num_landmarks)
    if not valid.any():
        return pts
    ys, xs = np.divmod(np.nonzero(valid)[0], lm.shape[1])
    vals = flat[valid]
    cnt = np.bincount(vals, minlength=num_landmarks + 1)[1:]
    sx = np.bincount(vals, weights=xs, minlength=num_landmarks + 1)[1:]
    sy = np.bincount(vals, weights=ys, minlength=num_landmarks + 1)[1:]
    ok = cnt > 0
    pts[ok, 0] = sx[ok] / cnt[ok]
    pts[ok, 1] = sy[ok] / cnt[ok]
    return pts


def patch_matrix(center_xy: Sequence[float], size: int, rotate_deg: float = 0.0, scale: float = 1.0) -> np.ndarray:
    """3x3 matrix mapping patch pixels ``(u, v)`` to image pixels ``(x, y)``.

    The patch centre ``((size - 1) / 2, (size - 1) / 2)`` maps to ``center_xy``; one patch pixel spans ``scale``
    image pixels and the patch axes are turned by ``rotate_deg`` (clockwise on screen).
    """
    a = math.radians(rotate_deg)
    c, s = math.cos(a) * scale, math.sin(a) * scale
    h = (size - 1) / 2.0
    m = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    m[0, 2] = center_xy[0] - (c * h - s * h)
    m[1, 2] = center_xy[1] - (s * h + c * h)
    return m


def sample_patch(image: np.ndarray, matrix: np.ndarray, size: int, order: int = 1) -> np.ndarray:
    """``(size, size)`` patch whose pixel ``(u, v)`` is ``image`` at ``matrix @ (u, v, 1)`` (bilinear, zero outside)."""
    from scipy.ndimage import map_coordinates

    v, u = np.mgrid[0:size, 0:size].astype(np.float64)
    x = matrix[0, 0] * u + matrix[0, 1] * v + matrix[0, 2]
    y = matrix[1, 0] * u + matrix[1, 1] * v + matrix[1, 2]
    return map_coordinates(np.asarray(image, np.float32), [y, x], order=order, mode="constant", cval=0.0)
