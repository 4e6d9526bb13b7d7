"""One answer for one image, the same in the CLI and the server: orientation, points, quality verdict, measurements.

:func:`analyse` runs a :class:`~anatomark.model.LandmarkModel` on an :class:`~anatomark.data.XrayImage` and returns an
:class:`Analysis` whose :meth:`Analysis.to_dict` is the core of every infer JSON:

* ``orientation``: what was found and undone (a mirrored or turned image is analysed in the orientation the model
  knows; the points come back in the image as given), and the EXIF orientation the reader applied;
* ``landmarks``: ``index, name, x, y, x_mm, y_mm, confidence, expected_error_mm, in_image, reliable`` — a landmark
  outside the image has ``x = y = null`` (never a made-up pixel inside it); every reported point lies inside the
  image;
* ``quality``: ``{"reliable", "score", "warnings", "shape"}`` (see :mod:`anatomark.quality`); an image with a
  landmark outside it (a crop that does not show the whole anatomy) is not reliable either;
* ``measurements``: computed only from reliable landmarks of a reliable image; otherwise ``value: null`` with the
  reason.

Models without a quality calibration (``anatomark calibrate``) get ``reliable: null`` and a warning saying so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from anatomark.data.image_io import XrayImage
from anatomark.data.points_json import landmark_entries
from anatomark.errors import AnatomarkError
from anatomark.measurements import available_measurements, measure
from anatomark.measurements.base import unreliable_image_reason, withhold
from anatomark.model import LandmarkModel, Prediction
from anatomark.orientation import DESCRIPTIONS, IDENTITY, ORIENTATIONS, Orientation
from anatomark.quality import QualityModel, ShapeFit, Verdict
from anatomark.transforms import functional as Fn

#: ``orientation`` argument values: ``auto`` searches when the answer looks wrong, ``none`` never does, or a
#: transform name of :data:`anatomark.orientation.ORIENTATIONS` that the caller knows undoes the image's orientation.
ORIENTATION_MODES = ("auto", "none", *ORIENTATIONS)


@dataclass
class Analysis:
    """Everything :func:`analyse` found on one image.

    Attributes:
        prediction: the model's prediction, points ``(K, 2)`` in the image as given.
        orientation: the transform that brought the image into the model's orientation.
        canonical_points: ``(K, 2)`` the points in that orientation (what measurements use).
        canonical_size_wh: the image size in that orientation.
        canonical_spacing: ``(sx, sy)`` in that orientation.
        verdict: the image verdict (``None`` for a model without quality calibration).
        fit: the shape fit behind it.
        expected_error_mm: ``(K,)`` (NaN without calibration).
        in_image: ``(K,)`` bool.
        tried: shape statistic (mm) of each orientation looked at.
        exif_orientation: the EXIF Orientation tag the reader applied (``None`` if absent).
    """

    prediction: Prediction
    orientation: Orientation
    canonical_points: np.ndarray
    canonical_size_wh: tuple[int, int]
    canonical_spacing: tuple[float, float]
    verdict: Verdict | None
    fit: ShapeFit | None
    expected_error_mm: np.ndarray
    in_image: np.ndarray
    size_wh: tuple[int, int]
    landmark_set: str
    names: list[str]
    tried: dict[str, float] = field(default_factory=dict)
    exif_orientation: int | None = None
    max_expected_error_mm: float = 4.0

    @property
    def reliable(self) -> bool | None:
        return None if self.verdict is None else self.verdict.reliable

    @property
    def landmark_reliable(self) -> np.ndarray:
        """``(K,)`` landmarks usable for measurements: in the image, expected error small, image reliable."""
        ok = self.in_image.copy()
        if self.verdict is not None:
            ok &= bool(self.verdict.reliable)
            ok &= np.nan_to_num(self.expected_error_mm, nan=np.inf) <= self.max_expected_error_mm
        return ok

    def orientation_dict(self) -> dict[str, Any]:
        return {
            "applied": self.orientation.name,
            "image_was": DESCRIPTIONS[self.orientation.name],
            "facing_mirrored": bool(self.orientation.mirror),
            "exif_orientation": self.exif_orientation,
            "tried": {k: round(float(v), 2) for k, v in self.tried.items()},
        }

    def quality_dict(self) -> dict[str, Any]:
        if self.verdict is None:
            return {
                "reliable": None,
                "score": None,
                "warnings": [
                    "this model has no quality calibration (run 'anatomark calibrate'): its answers are not checked"
                ],
            }
        return self.verdict.to_dict()

    def landmarks(self) -> list[dict[str, Any]]:
        """One JSON-ready dict per landmark (see the module docstring), as :mod:`anatomark.data.points_json` writes."""
        pred = self.prediction
        replaced = None if pred.replaced is None else [bool(r) for r in pred.replaced]
        out = landmark_entries(pred.points, pred.names, pred.spacing, pred.confidence, shape_prior_replaced=replaced)
        rel = self.landmark_reliable
        for k, d in enumerate(out):
            inside = bool(self.in_image[k])
            if not inside:
                d.update({"x": None, "y": None, "x_mm": None, "y_mm": None})
            e = self.expected_error_mm[k]
            d["expected_error_mm"] = None if not math.isfinite(e) else round(float(e), 2)
            d["in_image"] = inside
            d["reliable"] = bool(rel[k]) if self.verdict is not None else None
        return out

    def withheld(self) -> tuple[str | None, dict[str, str]]:
        """Why measurements are withheld: the image's reason (or ``None``) and ``{landmark: why}``."""
        if self.verdict is None:
            return None, {}
        image = None if self.verdict.reliable else unreliable_image_reason(self.verdict.warnings)
        return image, {n: self._why(k) for k, n in enumerate(self.names) if not self.landmark_reliable[k]}

    def measurements(self) -> list[dict[str, Any]]:
        """Measurements from the canonical points; those using an unusable landmark get ``value: null`` + reason."""
        if self.landmark_set not in available_measurements():
            return []
        res = measure(self.canonical_points, self.landmark_set, self.canonical_spacing, self.canonical_size_wh)
        return [r.to_dict() for r in withhold(res, *self.withheld())]

    def _why(self, k: int) -> str:
        if not self.in_image[k]:
            return "is outside the image"
        e = self.expected_error_mm[k]
        return f"is unreliable (expected error {e:.1f} mm > {self.max_expected_error_mm:g} mm)"

    def to_dict(self) -> dict[str, Any]:
        """``orientation``, ``quality``, ``landmarks`` and ``measurements`` of the infer JSON."""
        return {
            "orientation": self.orientation_dict(),
            "quality": self.quality_dict(),
            "landmarks": self.landmarks(),
            "measurements": self.measurements(),
        }


def landmark_features(q: QualityModel, pred: Prediction, fit: ShapeFit) -> np.ndarray:
    """``(K, F)`` expected-error features of a prediction (see :meth:`QualityModel.features`): the distance to the
    fitted shape, the probability map's spread and the stage-1 -> stage-2 move, in mm at ``pred.spacing``."""
    sp = np.asarray(pred.spacing, np.float64)
    spread = None if pred.spread_px is None else pred.spread_px * float(sp.mean())
    move = None if pred.coarse_points is None else np.linalg.norm((pred.points - pred.coarse_points) * sp, axis=1)
    return q.features(fit.residual_mm, spread, move)


def _search_orientation(
    model: LandmarkModel, q: QualityModel, image: XrayImage, stat: float, tried: dict[str, float]
) -> tuple[Orientation, XrayImage, Prediction, ShapeFit, Verdict] | None:
    """Try the other orientations with the first stage (in :data:`ORIENTATIONS` order, stopping at the first
    plausible one), then the best fully; ``None`` unless that answer fits better than ``stat`` and is reliable or
    clearly the right orientation (4x better and within 5x the typical statistic)."""
    best, best_stat = None, stat
    for o in ORIENTATIONS.values():
        if o is IDENTITY:
            continue
        coarse = model.predict_coarse(o.apply_image(image))
        s = q.fit_shape(coarse.points, coarse.spacing).statistic_mm
        tried[o.name] = s
        if s < best_stat:
            best, best_stat = o, s
        if q.score(s) >= q.setting("min_score"):
            break
    if best is None:
        return None
    work = best.apply_image(image)
    pred = model.predict(work)
    fit = q.fit_shape(pred.points, pred.spacing)
    tried[best.name] = fit.statistic_mm
    verdict = q.verdict(fit, work.array)
    # the orientation is clear when the answer is reliable, or when it fits far better than as given and is close
    # to the anatomy (a mirrored copy of a borderline image: its verdict stays the one the unmirrored image gets)
    typical = math.exp(float(q.statistic[0]))
    clear = fit.statistic_mm <= 0.25 * stat and fit.statistic_mm <= 5.0 * typical
    if fit.statistic_mm >= stat or not (verdict.reliable or clear):
        return None
    return best, work, pred, fit, verdict


def analyse(model: LandmarkModel, image: XrayImage, orientation: str = "auto") -> Analysis:
    """Find the landmarks of ``image`` and say how far the answer can be trusted.

    Args:
        model: the landmark model (its ``quality`` state, when present, drives the verdict and the search).
        image: the X-ray as read (EXIF orientation already applied by the reader).
        orientation: ``auto`` (default): when the answer does not fit the anatomy, the other seven flips and quarter
            turns are tried with the model's first stage and the best one is used if it fits better; ``none``; or a
            transform name that undoes the image's orientation (``flip_x`` for a left-facing cephalogram).

    Returns:
        the :class:`Analysis`; points in the image as given.
    """
    if orientation not in ORIENTATION_MODES:
        raise AnatomarkError(f"orientation must be one of {', '.join(ORIENTATION_MODES)}; got {orientation!r}")
    q: QualityModel | None = model.quality
    chosen = ORIENTATIONS.get(orientation, IDENTITY)
    work = chosen.apply_image(image) if chosen is not IDENTITY else image
    pred = model.predict(work)
    tried: dict[str, float] = {}
    fit = verdict = None
    if q is not None:
        fit = q.fit_shape(pred.points, pred.spacing)
        stat = fit.statistic_mm
        verdict = q.verdict(fit, work.array)
        tried[chosen.name] = stat
        blank = any("blank" in w for w in verdict.warnings)
        if orientation == "auto" and not verdict.reliable and not blank:
            found = _search_orientation(model, q, image, stat, tried)
            if found is not None:
                chosen, work, pred, fit, verdict = found
                verdict.warnings.insert(
                    0, f"the image is {DESCRIPTIONS[chosen.name]}: analysed after undoing it ({chosen.name})"
                )
            else:
                verdict.warnings.append("no flip or quarter turn of the image gives a plausible answer either")
    if verdict is not None and pred.replaced is not None:
        n_rep, k_all = int(np.sum(pred.replaced)), len(pred.replaced)
        if n_rep > q.setting("max_outlier_fraction") * k_all:
            verdict.warnings.append(
                f"{n_rep} of {k_all} landmarks did not fit the model's shape prior and were replaced by it"
            )
            verdict.reliable = False
    canon_size = work.size_wh
    canon_points = np.asarray(pred.points, np.float64)
    k = len(canon_points)
    expected = np.full(k, np.nan)
    w, h = canon_size
    # NaN is not in the image, nor a landmark a letterboxing model (input.keep_aspect) put in the padding
    in_image = Fn.points_inside(canon_points, (h, w))
    if q is not None and fit is not None:
        expected = q.expected_error(landmark_features(q, pred, fit))
        # a landmark the shape model places outside the image, far from where the network put it: not in the picture
        far = np.nan_to_num(fit.residual_mm, nan=np.inf) > q.distance("outlier")
        in_image &= ~(~Fn.points_inside(fit.fitted, (h, w)) & far)
    if verdict is not None and not in_image.all():
        # the image does not show the whole anatomy: the answer for the rest may be right, the image verdict is not
        names = model.landmark_set.names
        lost = [names[i] for i in np.nonzero(~in_image)[0]]
        verdict.warnings.append(
            f"{len(lost)} of {k} landmarks are not in the image ({', '.join(lost)}): it does not show the whole anatomy"
        )
        verdict.reliable = False
    # no reported point outside the image: clamp the pixel centre into [0, W-1] x [0, H-1]
    canon_points = np.stack([np.clip(canon_points[:, 0], 0, w - 1), np.clip(canon_points[:, 1], 0, h - 1)], axis=1)
    given = Prediction(
        points=chosen.points_back(canon_points, image.size_wh) if chosen is not IDENTITY else canon_points,
        confidence=pred.confidence,
        spacing=image.spacing,
        names=pred.names,
        timings=pred.timings,
        replaced=pred.replaced,
        coarse_points=None,
        spread_px=pred.spread_px,
    )
    return Analysis(
        prediction=given,
        orientation=chosen,
        canonical_points=canon_points,
        canonical_size_wh=canon_size,
        canonical_spacing=tuple(float(s) for s in work.spacing),  # type: ignore[arg-type]
        verdict=verdict,
        fit=fit,
        expected_error_mm=expected,
        in_image=in_image,
        size_wh=image.size_wh,
        landmark_set=model.landmark_set.name,
        names=list(model.landmark_set.names),
        tried=tried,
        exif_orientation=getattr(image, "exif_orientation", None),
        max_expected_error_mm=q.distance("max_expected_error") if q is not None else 4.0,
    )
