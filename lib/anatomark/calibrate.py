"""Fit a model's :class:`~anatomark.quality.QualityModel` on its training images (``anatomark calibrate``).

1. The shape model: the annotations of every given image (the training split), in mm.
2. The in-distribution shape statistic: the model's own predictions on those images.
3. The expected-error regression: the model's predictions on its *validation* images only (the recipe's
   ``train.val_fraction`` / ``val_seed`` split, never trained on), each also read in a few altered copies (darker,
   brighter, cropped at a border) so that the regression sees more than one error per image and landmark.
   A model with a part trained on every image (a final refit with nothing held out) has no unseen images to fit it
   on: its errors there would be training errors, so calibration refuses it unless the regression is taken from a
   model of the same recipe that held those images out (``errors_from``).

Nothing here looks at a test split: pass the training split.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from anatomark.data.image_io import XrayImage, load_image
from anatomark.errors import AnatomarkError
from anatomark.inference import landmark_features
from anatomark.model import LandmarkModel, load_model
from anatomark.quality import QualityModel
from anatomark.training import recipe_split

Augment = Callable[[XrayImage, np.ndarray], tuple[XrayImage, np.ndarray]]


def _gamma(g: float) -> Augment:
    def f(img: XrayImage, pts: np.ndarray) -> tuple[XrayImage, np.ndarray]:
        a = img.array
        lo, hi = float(a.min()), float(a.max())
        scaled = ((a - lo) / max(hi - lo, 1e-6)) ** g * (hi - lo) + lo
        return XrayImage(scaled.astype(np.float32), img.spacing, img.spacing_source), pts

    return f


def _crop(left: float, top: float, right: float, bottom: float) -> Augment:
    def f(img: XrayImage, pts: np.ndarray) -> tuple[XrayImage, np.ndarray]:
        h, w = img.shape
        x0, y0 = int(left * w), int(top * h)
        x1, y1 = w - int(right * w), h - int(bottom * h)
        return (
            XrayImage(np.ascontiguousarray(img.array[y0:y1, x0:x1]), img.spacing, img.spacing_source),
            pts - np.array([x0, y0]),
        )

    return f


#: The altered copies of each validation image used for the expected-error regression (identity first).
AUGMENTS: dict[str, Augment] = {
    "original": lambda img, pts: (img, pts),
    "gamma_0.7": _gamma(0.7),
    "gamma_1.4": _gamma(1.4),
    "crop_top_left_5%": _crop(0.05, 0.05, 0.0, 0.0),
    "crop_bottom_right_5%": _crop(0.0, 0.0, 0.05, 0.05),
}


def prediction_features(model: LandmarkModel, q: QualityModel, image: XrayImage) -> tuple[np.ndarray, np.ndarray, Any]:
    """Predict on ``image`` (no orientation search) -> ``(points (K, 2), features (K, F), shape fit)``."""
    pred = model.predict(image)
    fit = q.fit_shape(pred.points, image.spacing)
    return pred.points, landmark_features(q, pred, fit), fit


def trained_without_holdout(info: dict[str, Any]) -> list[str]:
    """The parts of a model trained with no validation image held out (``n_val`` 0 in their training info), from the
    model file's ``info``: the model itself, a cascade's stage 2 or the members of a refined model's refiner ensemble."""
    parts: list[tuple[str, dict[str, Any]]] = [("model", info), ("stage 2", info.get("stage2") or {})]
    local = info.get("local") or {}
    parts += [(f"refiner {m.get('path', i)}", m) for i, m in enumerate(local.get("members") or [local])]
    return [name for name, part in parts if isinstance(part, dict) and part.get("n_val") == 0]


def calibrate(
    model: LandmarkModel,
    items: Sequence[dict[str, Any]],
    augments: Sequence[str] = tuple(AUGMENTS),
    progress: bool = True,
    errors_from: LandmarkModel | None = None,
    **settings: float,
) -> tuple[QualityModel, dict[str, Any]]:
    """Fit the quality state of ``model`` on its training ``items`` (``{"image", "landmarks", "spacing"}``).

    Args:
        errors_from: take the expected-error regression from this model's quality state instead of fitting it (a
            model of the same landmarks and recipe that held its validation images out); required when a part of
            ``model`` was trained on every image (:func:`trained_without_holdout`).

    Returns:
        the fitted :class:`QualityModel` and a summary (counts, the in-distribution statistic, the regression's
        rank correlation on its own data) for the model file's ``info``.

    Raises:
        AnatomarkError: a model trained without a hold-out and no ``errors_from``; an ``errors_from`` without a quality
            state or of other landmarks.
    """
    from tqdm.auto import tqdm

    leaked = trained_without_holdout(model.info or {})
    if errors_from is None and leaked:
        raise AnatomarkError(
            f"{model.name}: {', '.join(leaked)} trained on every image (no validation images held out), so its "
            "errors on the validation images are training errors. Take the expected-error regression from a model "
            "of the same recipe that held them out (anatomark calibrate --errors-from <model>)"
        )
    if errors_from is not None:
        if errors_from.quality is None:
            raise AnatomarkError(f"--errors-from {errors_from.name} has no quality state (calibrate it first)")
        if errors_from.landmark_set.names != model.landmark_set.names:
            raise AnatomarkError(f"--errors-from {errors_from.name} has other landmarks than {model.name}")
        augments = ()  # no validation predictions needed
    ls = model.landmark_set
    k = len(ls)
    imgs = []
    shapes = []
    for it in items:
        img = load_image(it["image"], spacing=it.get("spacing"), default_spacing=ls.default_spacing_mm)
        imgs.append(img)
        shapes.append(np.asarray(it["landmarks"], np.float64) * np.asarray(img.spacing))
    modes = int(settings.pop("modes", 12))
    q = QualityModel(k, modes=modes, **settings).fit_shapes(np.stack(shapes))
    _, val = recipe_split(len(items), model.recipe.get("train", {}))
    stats = []
    feats, lms, errs = [], [], []
    for i, (it, img) in enumerate(tqdm(list(zip(items, imgs)), desc="Calibrating", unit="img", disable=not progress)):
        pts, f, fit = prediction_features(model, q, img)
        stats.append(fit.statistic_mm)
        if i not in val:
            continue
        truth = np.asarray(it["landmarks"], np.float64)
        for name in augments:
            if name == "original":
                a_pts, a_f = pts, f
                a_truth, a_img = truth, img
            else:
                a_img, a_truth = AUGMENTS[name](img, truth)
                a_pts, a_f, _ = prediction_features(model, q, a_img)
            err = np.linalg.norm((a_pts - a_truth) * np.asarray(a_img.spacing), axis=1)
            feats.append(a_f)
            lms.append(np.arange(k))
            errs.append(err)
    q.fit_statistic(stats)
    summary: dict[str, Any] = {
        "quality_images": len(items),
        "quality_statistic_median_mm": float(np.median(stats)),
    }
    if errors_from is not None:
        q.coef.copy_(errors_from.quality.coef)
        q.resid_var.copy_(errors_from.quality.resid_var)
        return q, {**summary, "quality_errors_from": errors_from.name}
    if not feats:
        raise ValueError("calibration needs validation images: the recipe's split left none (train.val_fraction)")
    f_all, lm_all, e_all = np.concatenate(feats), np.concatenate(lms), np.concatenate(errs)
    q.fit_error_model(f_all, lm_all, e_all)
    return q, {**summary, "quality_validation_images": len(val), "quality_error_points": int(len(e_all))}


def add_quality(
    model_path: str | Path,
    items: Sequence[dict[str, Any]],
    out_path: str | Path | None = None,
    errors_from: str | Path | None = None,
    **settings: float,
) -> Path:
    """Calibrate the model at ``model_path`` on ``items`` and write it (to ``out_path``, default in place);
    ``errors_from``: a model name or file whose expected-error regression is taken (see :func:`calibrate`)."""
    model = load_model(model_path)
    donor = load_model(errors_from) if errors_from else None
    q, summary = calibrate(model, items, errors_from=donor, **settings)
    model.quality = q
    model.info = {**model.info, **summary}
    return model.save(out_path or model_path)
