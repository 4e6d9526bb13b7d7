"""The model zoo: five landmark-detection families from the literature on the one training loop.

Each family is a recipe ``kind`` with its network (:mod:`anatomark.networks`), loss (:mod:`anatomark.losses`),
target encoding and decoding (:mod:`anatomark.transforms.functional`):

==================== =================================== ============================ ==============================
kind                 network                             target / loss                decoding
==================== =================================== ============================ ==============================
``unet_seg``         :class:`~.networks.UNetSeg`         square/disk masks, Dice      centroid of the largest region
``fpn_seg``          :class:`~.networks.FPNSeg`          square/disk masks, Dice      centroid of the largest region
``appearance_context`` :class:`~.networks.AppearanceContextNet` Gaussian heatmaps, MSE  argmax + local mean
``seg_regression``   :class:`~.networks.SegRegressionNet` disks + coordinates,         regressed coordinates
                                                         alpha * Dice-CE + MSE        (always one point per landmark)
``farnet``           :class:`~.networks.FARNet`          Gaussian heatmaps, EWC       argmax + local mean (fine map)
==================== =================================== ============================ ==============================

:class:`ZooFamily` registers each kind (:mod:`anatomark.family`); :class:`ZooStage` plugs it into
:func:`anatomark.training.fit`; :class:`ZooModel` predicts with it (loaded by :func:`anatomark.model.load_model`). The appearance-context family can pre-align every image to a template with a
mutual-information affine registration (:func:`register_affine`, SimpleITK) and maps its predictions back.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anatomark.config import LandmarkSet
from anatomark.data.image_io import XrayImage
from anatomark.errors import AnatomarkError
from anatomark.family import TrainRun, register_family
from anatomark.metrics import radial_errors
from anatomark.model import LandmarkModel, Prediction, prepare_image, to_model_input
from anatomark.networks import build_network, load_network
from anatomark.recipe import TargetConfig
from anatomark.training import (
    FitResult,
    HeatmapTrainingSet,
    build_loss,
    cache_and_split,
    train,
    train_single_stage,
)
from anatomark.transforms import functional as Fn

ZOO_KINDS = ("unet_seg", "fpn_seg", "appearance_context", "seg_regression", "farnet")
MASK_KINDS = ("unet_seg", "fpn_seg")
HEATMAP_KINDS = ("appearance_context", "farnet")
# input sizes must be divisible by this (poolings of the encoder)
_DIVISOR = {"farnet": 32}


# ------------------------------------------------------------------------------------------------ pre-alignment
def register_affine(
    moving: np.ndarray,
    fixed: np.ndarray,
    iterations: int = 200,
    sampling: float = 0.3,
    seed: int = 0,
    threads: int = 1,
) -> np.ndarray:
    """Affine registration of ``moving`` to ``fixed`` maximising Mattes mutual information (SimpleITK).

    Multi-resolution (shrink 4, 2, 1), regular-step gradient descent, initialised at the aligned image centres.
    A degenerate result (scale outside 0.5-2 or a reflection) falls back to the identity.

    Args:
        moving: ``(H, W)`` image to align.
        fixed: ``(H', W')`` template.
        iterations: optimiser iterations per level.
        sampling: fraction of pixels sampled for the metric.
        seed: sampling seed (>= 0; the same seed and thread count give the same result).
        threads: SimpleITK threads.

    Returns:
        ``(3, 3)`` matrix mapping a ``moving`` pixel ``(x, y, 1)`` to the ``fixed`` (template) pixel grid; warp with
        ``Fn.warp_image(moving, m, fixed.shape)`` and map points back with ``np.linalg.inv(m)``.
    """
    import SimpleITK as sitk

    f = sitk.GetImageFromArray(np.asarray(fixed, np.float32))
    m = sitk.GetImageFromArray(np.asarray(moving, np.float32))
    tx = sitk.AffineTransform(2)
    init = sitk.CenteredTransformInitializer(f, m, tx, sitk.CenteredTransformInitializerFilter.GEOMETRY)
    tx = sitk.AffineTransform(init)
    reg = sitk.ImageRegistrationMethod()
    reg.SetNumberOfThreads(int(threads))
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    # SimpleITK reads a seed of 0 as "seed from the wall clock" (sitk.sitkWallClock): shift by one so that every
    # seed, 0 included, gives the same samples on every run
    reg.SetMetricSamplingPercentage(float(sampling), int(seed) + 1)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=1.0, minStep=1e-4, numberOfIterations=int(iterations), gradientMagnitudeTolerance=1e-8
    )
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([4, 2, 1])
    reg.SetSmoothingSigmasPerLevel([2.0, 1.0, 0.0])
    reg.SetInitialTransform(tx, inPlace=True)
    reg.Execute(f, m)
    a = np.asarray(tx.GetMatrix(), np.float64).reshape(2, 2)
    c = np.asarray(tx.GetCenter(), np.float64)
    t = np.asarray(tx.GetTranslation(), np.float64)
    fixed_to_moving = np.eye(3)
    fixed_to_moving[:2, :2] = a
    fixed_to_moving[:2, 2] = c + t - a @ c
    det = np.linalg.det(a)
    if not (0.25 <= det <= 4.0) or not np.isfinite(fixed_to_moving).all():
        return np.eye(3)
    return np.linalg.inv(fixed_to_moving)


def _align_matrix(scaled: np.ndarray, template: np.ndarray, cfg: dict[str, Any]) -> np.ndarray:
    return register_affine(
        scaled,
        template,
        iterations=int(cfg.get("iterations", 200)),
        sampling=float(cfg.get("sampling", 0.3)),
        threads=max(1, torch.get_num_threads()),
    )


# ------------------------------------------------------------------------------------------------ prediction
@dataclass
class ZooPrediction(Prediction):
    """:class:`~anatomark.model.Prediction` plus the segmentation diagnostics.

    Attributes:
        n_regions: ``(K,)`` connected regions found per landmark mask (0 = missed, >1 = extra detections);
            ``None`` for heatmap families.
        missed: ``(K,)`` True where the mask was empty and the point is a fallback (or NaN, see ``decode.missed``).
    """

    n_regions: np.ndarray | None = None
    missed: np.ndarray | None = None


class ZooModel(LandmarkModel):
    """Predict with any :data:`ZOO_KINDS` network; points come back in the model grid or original pixels.

    Recipe keys used: ``kind``, ``input.size_hw``, ``decode`` (``method``/``radius`` for heatmaps; ``threshold`` and
    ``missed`` = ``argmax`` (default: fall back to the probability maximum) or ``nan`` for masks) and
    ``prealign`` (``enabled``, ``template`` array stored at training time).
    """

    def __init__(
        self,
        network: torch.nn.Module,
        recipe: dict[str, Any],
        landmark_set: LandmarkSet,
        info: dict | None = None,
        template: np.ndarray | None = None,
    ) -> None:
        super().__init__(network, recipe, landmark_set, info)
        self.kind = recipe["kind"]
        if self.kind not in ZOO_KINDS:
            raise AnatomarkError(f"ZooModel cannot predict kind {self.kind!r}")
        self.threshold = float(self.decode_cfg.threshold)
        self.missed_policy = self.decode_cfg.missed
        self.region = self.decode_cfg.region
        self.weighted = bool(self.decode_cfg.weighted)
        if self.decode_cfg.source not in ("mask", "softmax"):
            raise AnatomarkError(f"decode.source {self.decode_cfg.source!r}: use mask or softmax")
        pa = recipe.get("prealign") or {}
        if template is None and pa.get("enabled") and pa.get("template") is not None:  # files written before 2026-12
            template = np.asarray(pa["template"], np.float32)
        self.prealign = {k: v for k, v in pa.items() if k != "template"}
        self.template = None if template is None or not pa.get("enabled") else np.asarray(template, np.float32)

    def extra_networks(self) -> dict[str, torch.nn.Module]:
        out = super().extra_networks()
        if self.template is not None:  # the pre-alignment template is model state, stored beside the weights
            out["prealign"] = TemplateState(self.template)
        return out

    @torch.no_grad()
    def decode(self, scaled: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
        """Run the network on a ``size_hw`` image in [0, 1] and decode.

        Returns:
            points ``(K, 2)`` (x, y) in the model grid, confidence ``(K,)``, ``n_regions (K,)`` and ``missed (K,)``
            (both ``None`` for heatmap families).
        """
        x = to_model_input(scaled).to(self.device)
        out = self.run_network(x)
        h, w = x.shape[-2:]
        if self.kind in HEATMAP_KINDS:
            hm = (out[0] if isinstance(out, (tuple, list)) else out)[0].float()
            if self.decode_cfg.source == "softmax":  # logits trained with spatial_softmax_ce
                k = hm.shape[0]
                sm = torch.softmax(hm.reshape(k, -1), -1).reshape(hm.shape)
                pts, _, mass = Fn.heatmaps_to_points(sm, self.decode_method, self.decode_radius)
                return pts, np.clip(mass, 0.0, 1.0), None, None
            pts, peak, _ = Fn.heatmaps_to_points(hm.clamp_min(0), self.decode_method, self.decode_radius)
            return pts, np.clip(peak, 0.0, 1.0), None, None
        logits = out[0][0] if self.kind == "seg_regression" else out[0]
        prob = torch.sigmoid(logits.float()).cpu().numpy()
        seg_pts, n_regions = Fn.masks_to_points(prob, self.threshold, self.region, self.weighted)
        missed = n_regions == 0
        conf = prob.reshape(prob.shape[0], -1).max(-1).astype(np.float64)
        if self.kind == "seg_regression":
            c = out[1][0].float().cpu().numpy().astype(np.float64)
            return c * np.array([w - 1, h - 1]), conf, n_regions, missed
        if self.decode_cfg.source == "softmax":
            k = logits.shape[0]
            sm = torch.softmax(logits.float().reshape(k, -1), -1).reshape(logits.shape)
            pts, _, mass = Fn.heatmaps_to_points(sm, self.decode_method, self.decode_radius)
            return pts, np.clip(mass, 0.0, 1.0), n_regions, missed
        pts = seg_pts
        if self.missed_policy == "argmax" and missed.any():
            arg, _, _ = Fn.heatmaps_to_points(prob[missed], "argmax")
            pts[missed] = arg
        return pts, conf, n_regions, missed

    def align(self, scaled: np.ndarray) -> np.ndarray | None:
        """Matrix mapping this model-grid image to the template grid, or ``None`` without pre-alignment."""
        return None if self.template is None else _align_matrix(scaled, self.template, self.prealign)

    def predict_details(
        self, scaled: np.ndarray, matrix: np.ndarray | None | str = "auto"
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
        """:meth:`decode` with the optional pre-alignment (``matrix`` = precomputed :meth:`align` result)."""
        m = self.align(scaled) if isinstance(matrix, str) else matrix
        if m is None:
            return self.decode(scaled)
        pts, conf, n_regions, missed = self.decode(Fn.warp_image(scaled, m, self.template.shape))
        return Fn.transform_points(pts, np.linalg.inv(m)), conf, n_regions, missed

    def predict_grid(self, scaled: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pts, conf, _, _ = self.predict_details(scaled)
        return pts, conf

    def _predict(self, image: XrayImage) -> ZooPrediction:
        t0 = time.perf_counter()
        scaled = prepare_image(image, self.size_hw)
        t1 = time.perf_counter()
        m = self.align(scaled)
        t2 = time.perf_counter()
        pts, conf, n_regions, missed = self.predict_details(scaled, m)
        t3 = time.perf_counter()
        timings = {"preprocess": t1 - t0, "network": t3 - t2}
        if m is not None:
            timings["align"] = t2 - t1
        return ZooPrediction(
            points=Fn.resize_points(pts, self.size_hw, image.shape),
            confidence=conf,
            spacing=image.spacing,
            names=list(self.landmark_set.names),
            timings=timings,
            n_regions=n_regions,
            missed=missed,
        )


class TemplateState(torch.nn.Module):
    """The pre-alignment template ``(H, W)`` as a module buffer, so that it is saved with the weights."""

    def __init__(self, template: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("template", torch.as_tensor(np.asarray(template, np.float32)))


# ------------------------------------------------------------------------------------------------ training
def encode_target(kind: str, points: np.ndarray, size_hw: Sequence[int], tcfg: dict[str, Any]) -> Any:
    """Training target of a family for ``(K, 2)`` model-grid points (NaN = missing).

    Returns:
        masks ``(K, H, W)`` (``unet_seg``/``fpn_seg``), Gaussian heatmaps ``(K, H, W)`` (``appearance_context``,
        ``farnet``) or ``(masks (K, H, W), coords (K, 2))`` with coordinates normalised to [0, 1]
        (``seg_regression``).
    """
    h, w = int(size_hw[0]), int(size_hw[1])
    t = TargetConfig.from_dict(tcfg, "target")
    if kind in HEATMAP_KINDS:
        return torch.from_numpy(Fn.points_to_heatmaps(points, (h, w), float(t.sigma)))
    masks = Fn.points_to_masks(points, (h, w), float(t.radius), t.shape)
    masks_t = torch.from_numpy(masks.astype(np.float32))
    if kind in MASK_KINDS:
        return masks_t
    coords = (np.asarray(points, np.float64) / np.array([w - 1, h - 1])).astype(np.float32)
    return masks_t, torch.from_numpy(coords)


class ZooTrainingSet(HeatmapTrainingSet):
    """Cached items -> ``(image (1, H, W), target)`` with the same point-carrying augmentation as heatmap models.

    ``target`` is :func:`encode_target` of the (augmented) points; landmarks pushed out of the grid become missing.
    """

    def __init__(self, items: list[dict[str, Any]], recipe: dict[str, Any], augment: bool = True) -> None:
        super().__init__(items, recipe, augment)
        self.kind = recipe["kind"]
        self.tcfg = recipe.get("target") or {}

    def encode(self, points: np.ndarray) -> Any:
        return encode_target(self.kind, points, self.size_hw, self.tcfg)


class ZooStage:
    """Training pieces of a zoo family for :func:`anatomark.training.fit` (see
    :class:`anatomark.families.heatmap.HeatmapStage`).

    With ``prealign.enabled`` the template (:attr:`template`) is the mean training image in the model grid; every
    training and validation image is registered to it once (training images and points are warped; validation
    predictions are mapped back, as at inference).
    """

    def __init__(self, recipe: dict[str, Any], ls: LandmarkSet, items, val_items, progress: bool) -> None:  # noqa: ANN001
        self.recipe, self.ls = recipe, ls
        kind = recipe["kind"]
        size_hw = tuple(int(s) for s in recipe["input"]["size_hw"])
        div = _DIVISOR.get(kind, 16)
        if any(s % div for s in size_hw):
            raise AnatomarkError(f"input.size_hw {size_hw} must be divisible by {div} for kind {kind!r}")
        self.train_c, self.val_c, _ = cache_and_split(items, val_items, ls, recipe["train"], progress, size_hw=size_hw)
        self.val_align: list[np.ndarray | None] = [None] * len(self.val_c)
        self.template: np.ndarray | None = None
        train_items = self.train_c
        pa = recipe.get("prealign") or {}
        if pa.get("enabled"):
            if kind != "appearance_context":
                raise AnatomarkError("prealign is implemented for the appearance_context family only")
            template = np.mean([c["scaled"] for c in self.train_c], axis=0).astype(np.float32)
            self.template = np.round(template, 4).astype(np.float32)
            train_items = []
            for c in self.train_c:
                m = _align_matrix(c["scaled"], template, pa)
                train_items.append(
                    {
                        **c,
                        "scaled": Fn.warp_image(c["scaled"], m, template.shape),
                        "points": Fn.transform_points(c["points"], m),
                    }
                )
            self.val_align = [_align_matrix(c["scaled"], template, pa) for c in self.val_c]
        self.dataset = ZooTrainingSet(train_items, recipe, augment=True)

    def build_network(self) -> torch.nn.Module:
        return build_network(self.recipe["network"], out_channels=len(self.ls))

    def loss(self) -> torch.nn.Module:
        return build_loss(self.recipe)

    def set_random_state(self, seed: int) -> None:
        self.dataset.set_random_state(seed)

    def evaluate(self, net: torch.nn.Module) -> np.ndarray:
        model = ZooModel(net, self.recipe, self.ls, template=self.template)
        preds = []
        for c, m in zip(self.val_c, self.val_align):
            pts, _, _, _ = model.predict_details(c["scaled"], m)
            preds.append(Fn.resize_points(pts, model.size_hw, c["orig_hw"]))
        gt = np.stack([c["landmarks"] for c in self.val_c])
        sp = np.stack([c["spacing"] for c in self.val_c])
        return radial_errors(np.stack(preds), gt, sp)


class ZooFamily:
    """One zoo ``kind`` (:data:`ZOO_KINDS`): the family's network, target, loss and decoding on the shared loop."""

    required_sections = ("landmark_set", "network", "input", "train")

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def load(
        self, recipe: dict[str, Any], landmark_set: LandmarkSet, states: dict[str, Any], info: dict[str, Any]
    ) -> LandmarkModel:
        net = load_network(recipe["network"], len(landmark_set), states["network"])
        tpl = states.get("prealign", {}).get("template")
        template = None if tpl is None else tpl.float().numpy()
        return ZooModel(net, recipe, landmark_set, info, template=template)

    def train(
        self,
        recipe: dict[str, Any],
        landmark_set: LandmarkSet,
        items: Sequence[dict[str, Any]],
        out_dir: Path,
        run: TrainRun,
    ) -> dict[str, Any]:
        def make_model(fitted: FitResult, stage: ZooStage, init: LandmarkModel | None) -> ZooModel:
            template = stage.template if stage.template is not None else getattr(init, "template", None)
            return ZooModel(fitted.network, recipe, landmark_set, fitted.meta, template=template)

        return train_single_stage(ZooStage, make_model, recipe, landmark_set, items, out_dir, run)


for _kind in ZOO_KINDS:
    register_family(ZooFamily(_kind))


def grid_search_alpha(
    recipe: dict[str, Any],
    items: Sequence[dict[str, Any]],
    out_dir: str | Path,
    alphas: Sequence[float] = (0.05, 0.2, 0.5, 1.0),
    **train_kwargs: Any,
) -> dict[str, Any]:
    """Train a ``seg_regression`` recipe once per ``alpha`` (weight of Dice-CE) and keep the best by validation MRE.

    Args:
        recipe: a ``seg_regression`` recipe (needs a validation split: ``train.val_fraction`` > 0 or ``val_items``).
        items: training items.
        out_dir: each run goes to ``out_dir/alpha_<value>``.
        alphas: the values to try.
        train_kwargs: passed to :func:`anatomark.training.train` (``epochs``, ``val_items``, ``progress`` ...).

    Returns:
        ``{"best_alpha", "model_path", "val_mre_mm": {alpha: best validation MRE}}``.
    """
    if recipe.get("kind") != "seg_regression":
        raise AnatomarkError("grid_search_alpha needs a seg_regression recipe")
    scores: dict[float, float] = {}
    paths: dict[float, str] = {}
    for a in alphas:
        r = copy.deepcopy(recipe)
        r["loss"] = {**r.get("loss", {}), "name": "seg_regression", "alpha": float(a)}
        res = train(r, items, Path(out_dir) / f"alpha_{a:g}", **train_kwargs)
        if res["best_val_mre_mm"] is None:
            raise AnatomarkError("grid_search_alpha needs validation images (train.val_fraction > 0 or val_items)")
        scores[float(a)], paths[float(a)] = float(res["best_val_mre_mm"]), res["model_path"]
    best = min(scores, key=scores.__getitem__)
    return {"best_alpha": best, "model_path": paths[best], "val_mre_mm": scores}
