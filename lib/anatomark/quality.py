"""Can the answer be trusted? A shape model of the anatomy and a calibrated per-landmark expected error.

A landmark model answers every image with a point per landmark, also a spine X-ray, noise or a mirrored
cephalogram. :class:`QualityModel` says when it does not know:

* **Shape plausibility.** A point-distribution model (PDM) of the training annotations in mm, aligned by a similarity
  transform without reflection (generalised Procrustes). A prediction is fitted to it robustly (Huber-reweighted,
  modes clamped to +-3 SD): the per-landmark *residual* (mm between the point and where the rest of the shape puts
  it), the fitted *rotation* and *size* of the anatomy, and the *shape statistic* (median residual over landmarks,
  mm) follow. A mirrored, rotated or non-anatomical answer cannot be fitted by a rotation, scale and shift of
  plausible shapes, so its statistic is large.
* **Image verdict.** ``score`` is the one-sided tail probability of the shape statistic under the log-normal fitted
  to the model's own predictions on its training images (1 = as typical as they come, 0 = far outside). The image
  is ``reliable`` when ``score >= min_score``, the rotation and size are within the training range and at most
  ``max_outlier_fraction`` of the landmarks are outliers.
* **Per landmark.** ``expected_error_mm`` is a log-linear regression of the radial error on the residual, the
  spread of the model's probability map and the stage-1 -> stage-2 move (cascade), with a per-landmark intercept,
  fitted on the model's validation images (never seen in training) and their augmented copies; ``in_image`` says
  whether the landmark lies inside the image: a point whose fitted position is outside (e.g. sella on the lower
  half of a cephalogram) is not reported at a made-up pixel.

The fitted state is a buffer-only module stored in the model file (``extra_state_dicts["quality"]``, written by
``anatomark calibrate``), like :class:`anatomark.shape.ShapePrior`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from anatomark.errors import AnatomarkError

#: Verdict thresholds (stored in the model file with the fitted state; these are the defaults of ``calibrate``).
#: ``huber``, ``outlier`` and ``max_expected_error`` are fractions of the training anatomy's mean centroid size (RMS
#: distance of the landmarks from their centroid), so that they work in mm and in pixels alike: for the ISBI 2015
#: cephalometric set (44.5 mm) they are 3, 8 and 4 mm.
DEFAULTS: dict[str, float] = {
    "modes": 12,  # PCA modes of the shape model
    "huber": 0.0675,  # Huber threshold of the robust fit
    "outlier": 0.18,  # a landmark farther than this from the fitted shape is an outlier
    "min_score": 0.01,  # image reliable only above this tail probability of the shape statistic
    "max_outlier_fraction": 0.2,  # image unreliable when more landmarks than this are outliers
    "max_rotation_deg": 25.0,  # cephalostats hold the head upright; training shapes lie within a few degrees
    "size_ratio_range": 1.5,  # anatomy size (mm) outside [mean / r, mean * r] -> wrong spacing or not this anatomy
    "max_expected_error": 0.09,  # a landmark expected to be farther off than this is not used for measurements
}
FEATURES = ("log_residual", "log_spread", "log_move")


@dataclass
class ShapeFit:
    """Result of :meth:`QualityModel.fit_shape` on one prediction.

    Attributes:
        fitted: ``(K, 2)`` (x, y) pixels where the shape model puts each landmark.
        residual_mm: ``(K,)`` distance between each point and its fitted position.
        weights: ``(K,)`` final robust weights (small = outlier).
        rotation_deg: rotation of the fitted shape against the training mean (clockwise on screen is +: y points down).
        size_ratio: anatomy size against the training mean (1 = typical; uses the pixel spacing).
        statistic_mm: median residual: the shape statistic of the verdict.
    """

    fitted: np.ndarray
    residual_mm: np.ndarray
    weights: np.ndarray
    rotation_deg: float
    size_ratio: float
    statistic_mm: float


@dataclass
class Verdict:
    """The quality section of an infer result (see :meth:`to_dict`)."""

    reliable: bool
    score: float
    warnings: list[str] = field(default_factory=list)
    shape: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "reliable": bool(self.reliable),
            "score": round(float(self.score), 4),
            "warnings": list(self.warnings),
            "shape": {k: round(float(v), 3) for k, v in self.shape.items()},
        }


def _similarity(src: np.ndarray, dst: np.ndarray, w: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Weighted similarity ``dst ~ s R src + t`` (rotation only, no reflection; Umeyama 1991): ``(s, R, t)``."""
    w = w / max(float(w.sum()), 1e-12)
    mu_s, mu_d = (w[:, None] * src).sum(0), (w[:, None] * dst).sum(0)
    a, b = src - mu_s, dst - mu_d
    cov = (w[:, None] * b).T @ a
    u, d, vt = np.linalg.svd(cov)
    sgn = np.sign(np.linalg.det(u @ vt)) or 1.0
    e = np.diag([1.0, sgn])
    r = u @ e @ vt
    var = float((w * (a**2).sum(1)).sum())
    s = float((d * np.diag(e)).sum() / max(var, 1e-12))
    return s, r, mu_d - s * r @ mu_s


def _rotation_deg(r: np.ndarray) -> float:
    return math.degrees(math.atan2(r[1, 0], r[0, 0]))


def generalised_procrustes(shapes: np.ndarray, iterations: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Align ``(N, K, 2)`` complete shapes to their mean (similarity, no reflection).

    Returns:
        the mean ``(K, 2)`` (centred, unit RMS distance from the centroid), the aligned ``(N, K, 2)`` shapes and the
        ``(N,)`` scale factors that mapped each shape onto the mean frame.
    """
    x = shapes - shapes.mean(axis=1, keepdims=True)
    mean = x[0] / np.sqrt((x[0] ** 2).sum(1).mean())
    w = np.ones(shapes.shape[1])
    aligned, scales = x.copy(), np.ones(len(x))
    for _ in range(iterations):
        for i, s_i in enumerate(x):
            s, r, t = _similarity(s_i, mean, w)
            aligned[i] = s * s_i @ r.T + t
            scales[i] = s
        new = aligned.mean(0)
        new -= new.mean(0)
        new /= np.sqrt((new**2).sum(1).mean())
        s, r, _ = _similarity(new, mean, w)  # keep the mean's orientation fixed to the first shape's
        new = s * new @ r.T
        new /= np.sqrt((new**2).sum(1).mean())
        if np.abs(new - mean).max() < 1e-9:
            break
        mean = new
    return mean, aligned, scales


class QualityModel(torch.nn.Module):
    """Shape model + verdict thresholds + expected-error regression of one landmark model (buffers only).

    Args:
        n_landmarks: K.
        modes: PCA modes of the shape model.
        **thresholds: overrides of :data:`DEFAULTS`.

    Buffers: ``mean`` ``(K, 2)``, ``components`` ``(modes, 2K)``, ``stddev`` ``(modes,)`` of the aligned training
    shapes (unit-size frame); ``size_mm`` ``(2,)`` mean and SD of log centroid size in mm; ``rotation_sd`` ``(1,)``
    degrees; ``statistic`` ``(2,)`` mean and SD of the log shape statistic of the model's training predictions;
    ``coef`` ``(K + len(FEATURES),)`` per-landmark intercepts then slopes, ``resid_var`` ``(1,)`` of the
    expected-error regression (log mm); ``thresholds`` ``(len(DEFAULTS),)`` in :data:`DEFAULTS` order.
    """

    def __init__(self, n_landmarks: int, modes: int = int(DEFAULTS["modes"]), **thresholds: float) -> None:
        super().__init__()
        self.n_landmarks, self.modes = int(n_landmarks), int(modes)
        k = self.n_landmarks
        self.register_buffer("mean", torch.zeros(k, 2, dtype=torch.float64))
        self.register_buffer("components", torch.zeros(self.modes, 2 * k, dtype=torch.float64))
        self.register_buffer("stddev", torch.ones(self.modes, dtype=torch.float64))
        self.register_buffer("size_mm", torch.tensor([0.0, 1.0], dtype=torch.float64))
        self.register_buffer("rotation_sd", torch.tensor([3.0], dtype=torch.float64))
        self.register_buffer("statistic", torch.tensor([0.0, 1.0], dtype=torch.float64))
        self.register_buffer("coef", torch.zeros(k + len(FEATURES), dtype=torch.float64))
        self.register_buffer("resid_var", torch.tensor([0.25], dtype=torch.float64))
        cfg = {**DEFAULTS, **thresholds, "modes": modes}
        unknown = set(cfg) - set(DEFAULTS)
        if unknown:
            raise AnatomarkError(f"Unknown quality settings {sorted(unknown)}; known: {', '.join(DEFAULTS)}")
        self.register_buffer("thresholds", torch.tensor([float(cfg[n]) for n in DEFAULTS], dtype=torch.float64))

    # ------------------------------------------------------------------ settings
    def setting(self, name: str) -> float:
        return float(self.thresholds[list(DEFAULTS).index(name)])

    @property
    def anatomy_size_mm(self) -> float:
        """Mean centroid size of the training shapes (mm, or px for images without spacing)."""
        return math.exp(float(self.size_mm[0]))

    def distance(self, name: str) -> float:
        """A size-relative setting (``huber``, ``outlier``, ``max_expected_error``) in mm."""
        return self.setting(name) * self.anatomy_size_mm

    # ------------------------------------------------------------------ fitting the state
    def fit_shapes(self, shapes_mm: np.ndarray) -> QualityModel:
        """Fit the shape model to ``(N, K, 2)`` annotated shapes in mm (incomplete shapes are skipped)."""
        shapes_mm = np.asarray(shapes_mm, dtype=np.float64)
        complete = np.isfinite(shapes_mm).all(axis=(1, 2))
        if complete.sum() < self.modes + 2:
            raise AnatomarkError(
                f"The quality shape model needs at least {self.modes + 2} fully annotated shapes; "
                f"got {int(complete.sum())}"
            )
        x = shapes_mm[complete]
        mean, aligned, scales = generalised_procrustes(x)
        w = np.ones(self.n_landmarks)
        rot = np.array([_rotation_deg(_similarity(mean, s_i - s_i.mean(0), w)[1]) for s_i in x])
        # turn the mean (and the aligned shapes with it) to the shapes' average orientation: rotation 0 = typical
        th = math.radians(float(np.mean(rot)))
        r = np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
        mean, aligned = mean @ r.T, aligned @ r.T
        flat = (aligned - mean).reshape(len(x), -1)
        _, s, vt = np.linalg.svd(flat, full_matrices=False)
        self.mean.copy_(torch.from_numpy(mean))
        self.components.copy_(torch.from_numpy(vt[: self.modes]))
        self.stddev.copy_(torch.from_numpy(np.maximum(s[: self.modes] / np.sqrt(max(1, len(x) - 1)), 1e-6)))
        log_size = np.log(1.0 / scales)  # centroid size in mm of each shape
        self.size_mm.copy_(torch.tensor([log_size.mean(), max(log_size.std(), 1e-3)], dtype=torch.float64))
        self.rotation_sd.copy_(torch.tensor([max(float(np.std(rot)), 0.5)], dtype=torch.float64))
        return self

    def fit_statistic(self, statistics_mm: Sequence[float]) -> QualityModel:
        """Log-normal of the shape statistic on the model's own (in-distribution) predictions."""
        v = np.log(np.maximum(np.asarray(statistics_mm, dtype=np.float64), 1e-3))
        self.statistic.copy_(torch.tensor([v.mean(), max(v.std(), 0.05)], dtype=torch.float64))
        return self

    def fit_error_model(self, features: np.ndarray, landmark: np.ndarray, errors_mm: np.ndarray) -> QualityModel:
        """Least squares of ``log(error + 0.1)`` on the features with per-landmark intercepts.

        Args:
            features: ``(M, len(FEATURES))`` from :meth:`features`.
            landmark: ``(M,)`` 0-based landmark index of each row.
            errors_mm: ``(M,)`` radial errors.
        """
        f = np.asarray(features, np.float64)
        ok = np.isfinite(f).all(1) & np.isfinite(errors_mm)
        f, lm, y = f[ok], np.asarray(landmark)[ok], np.log(np.asarray(errors_mm, np.float64)[ok] + 0.1)
        k = self.n_landmarks
        onehot = np.zeros((len(f), k))
        onehot[np.arange(len(f)), lm] = 1.0
        a = np.concatenate([onehot, f], axis=1)
        ridge = np.diag([0.0] * k + [1e-3] * f.shape[1])
        coef = np.linalg.solve(a.T @ a + ridge, a.T @ y)
        res = y - a @ coef
        self.coef.copy_(torch.from_numpy(coef))
        self.resid_var.copy_(torch.tensor([float(res.var())], dtype=torch.float64))
        return self

    # ------------------------------------------------------------------ using it
    def fit_shape(self, points: np.ndarray, spacing: Sequence[float], iterations: int = 12) -> ShapeFit:
        """Robust fit of the shape model to ``(K, 2)`` (x, y) pixels (NaN rows = missing) at ``(sx, sy)`` mm/px."""
        sp = np.asarray(spacing, np.float64)
        p = np.asarray(points, np.float64) * sp
        k = self.n_landmarks
        mean = self.mean.numpy()
        phi = self.components.numpy().reshape(self.modes, k, 2)
        sd = self.stddev.numpy()
        ok = np.isfinite(p).all(1)
        if ok.sum() < 3:
            nan = np.full(k, np.nan)
            return ShapeFit(np.full((k, 2), np.nan), nan, np.zeros(k), float("nan"), float("nan"), float("inf"))
        w = ok.astype(np.float64)
        p0 = np.where(ok[:, None], p, 0.0)
        c = self.distance("huber")
        b = np.zeros(self.modes)
        s, r, t = _similarity(mean, p0, w)
        for _ in range(iterations):
            x = mean + np.tensordot(b, phi, axes=1)
            s, r, t = _similarity(x, p0, w)
            pm = (p0 - t) @ r / s  # points in the model frame
            # MAP estimate of the modes: prior SD per mode, noise ~ the Huber threshold in model units
            noise = (c / 2.0 / s) ** 2
            aw = phi.reshape(self.modes, -1) * np.repeat(w, 2)[None]
            lhs = aw @ phi.reshape(self.modes, -1).T + noise * np.diag(1.0 / sd**2)
            b = np.linalg.solve(lhs, aw @ (pm - mean).reshape(-1))
            b = np.clip(b, -3 * sd, 3 * sd)
            fitted = s * (mean + np.tensordot(b, phi, axes=1)) @ r.T + t
            res = np.linalg.norm(fitted - p0, axis=1)
            w = np.where(ok, np.where(res < c, 1.0, c / np.maximum(res, 1e-9)), 0.0)
        fitted_mm = s * (mean + np.tensordot(b, phi, axes=1)) @ r.T + t
        res = np.where(ok, np.linalg.norm(fitted_mm - p0, axis=1), np.nan)
        rotation = _rotation_deg(r)
        size_ratio = s / math.exp(float(self.size_mm[0]))  # s maps the unit-size model onto mm: the centroid size
        return ShapeFit(fitted_mm / sp, res, w, rotation, size_ratio, float(np.nanmedian(res)))

    def score(self, statistic_mm: float) -> float:
        """One-sided tail probability of ``statistic_mm`` under the model's in-distribution log-normal."""
        if not math.isfinite(statistic_mm):
            return 0.0
        z = (math.log(max(statistic_mm, 1e-3)) - float(self.statistic[0])) / float(self.statistic[1])
        return 0.5 * math.erfc(z / math.sqrt(2.0))

    @staticmethod
    def features(residual_mm: np.ndarray, spread_mm: np.ndarray | None, move_mm: np.ndarray | None) -> np.ndarray:
        """``(K, len(FEATURES))`` regression features (missing ones are 0, i.e. a typical value)."""
        k = len(residual_mm)
        sp = np.zeros(k) if spread_mm is None else np.log(np.nan_to_num(spread_mm, nan=1.0) + 0.1)
        mv = np.zeros(k) if move_mm is None else np.log(np.nan_to_num(move_mm, nan=1.0) + 0.1)
        return np.stack([np.log(np.asarray(residual_mm, np.float64) + 0.5), sp, mv], axis=1)

    def expected_error(self, features: np.ndarray) -> np.ndarray:
        """``(K,)`` expected radial error in mm (mean of the fitted log-normal) of each landmark."""
        k = self.n_landmarks
        coef = self.coef.numpy()
        mu = coef[:k] + np.asarray(features, np.float64) @ coef[k:]
        return np.maximum(np.exp(mu + 0.5 * float(self.resid_var[0])) - 0.1, 0.0)

    def verdict(self, fit: ShapeFit, image_array: np.ndarray | None = None) -> Verdict:
        """The image verdict from a :class:`ShapeFit` (and the pixels, for blank-image detection)."""
        warnings: list[str] = []
        hard = False
        if image_array is not None:
            a = np.asarray(image_array, np.float32)[::8, ::8]
            lo, hi = np.percentile(a, (1, 99))
            if not np.isfinite(hi - lo) or hi - lo <= 1e-6 * max(1.0, abs(float(hi))):
                warnings.append("the image is blank (no contrast): nothing to find")
                hard = True
        score = self.score(fit.statistic_mm)
        if score < self.setting("min_score"):
            warnings.append(
                f"implausible shape: the landmarks lie {fit.statistic_mm:.1f} mm (median) from the closest plausible "
                f"anatomy (typical: {math.exp(float(self.statistic[0])):.1f} mm); not this anatomy or view, "
                "or an image the model cannot read"
            )
        k = self.n_landmarks
        outliers = int(np.sum(np.nan_to_num(fit.residual_mm, nan=np.inf) > self.distance("outlier")))
        if outliers > self.setting("max_outlier_fraction") * k:
            warnings.append(f"{outliers} of {k} landmarks do not fit the shape of the rest")
        if math.isfinite(fit.rotation_deg) and abs(fit.rotation_deg) > self.setting("max_rotation_deg"):
            warnings.append(
                f"the anatomy is rotated {fit.rotation_deg:+.0f} deg from the usual view: check the image orientation"
            )
        r = self.setting("size_ratio_range")
        if math.isfinite(fit.size_ratio) and not 1.0 / r <= fit.size_ratio <= r:
            warnings.append(
                f"the anatomy measures {fit.size_ratio:.2f}x the training average: check the pixel spacing "
                "(or this is not the expected anatomy)"
            )
        reliable = not warnings and not hard
        return Verdict(
            reliable=reliable,
            score=0.0 if hard else score,
            warnings=warnings,
            shape={
                "median_residual_mm": fit.statistic_mm,
                "rotation_deg": fit.rotation_deg,
                "size_ratio": fit.size_ratio,
                "outliers": outliers,
            },
        )
