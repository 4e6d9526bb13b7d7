"""Coarse-to-fine landmark detection.

Stage 1 (``kind: heatmap``): a whole-image heatmap U-Net on a coarse grid finds every landmark roughly.
Stage 2 (``kind: local``): one local U-Net shared by all landmarks looks at a fine-resolution patch centred on
each stage-1 estimate and predicts the heatmaps of the landmarks in it; landmark k is read from output
channel k of the patch centred on landmark k. Refinement can be iterated (re-centre, look again).

Both stages train with the one loop (:func:`anatomark.training.fit`); a ``kind: cascade`` recipe trains (or reuses)
stage 1, trains stage 2 on its predictions, in memory, and writes one self-contained model file holding both.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.transforms import Compose, RandGaussianNoise, RandGaussianSmooth
from torch.utils.data import Dataset

from anatomark.config import LandmarkSet
from anatomark.data.image_io import XrayImage, load_image
from anatomark.errors import AnatomarkError
from anatomark.families.heatmap import HeatmapStage
from anatomark.family import TrainRun, register_family
from anatomark.metrics import radial_errors
from anatomark.model import LandmarkModel, Prediction, load_model
from anatomark.networks import InferenceCopy, build_network, load_network
from anatomark.recipe import AugmentConfig, DecodeConfig, LocalConfig, TrainConfig, load_recipe
from anatomark.training import (
    attach_shape_prior,
    build_loss,
    cache_and_split,
    fit,
    load_init,
    train_single_stage,
    write_model,
)
from anatomark.transforms import functional as Fn
from anatomark.transforms.array import RandIntensityGamma
from anatomark.transforms.functional import scale_intensity

logger = logging.getLogger(__name__)


def _patch_input(patches: np.ndarray) -> torch.Tensor:
    """``(N, C, P, P)`` [0, 1] patches -> the same, z-scored per patch and channel."""
    t = torch.as_tensor(np.asarray(patches, np.float32))
    m = t.mean(dim=(2, 3), keepdim=True)
    s = t.std(dim=(2, 3), keepdim=True).clamp_min(1e-6)
    return (t - m) / s


def _own_logits(net: torch.nn.Module, x: torch.Tensor, idx: np.ndarray) -> torch.Tensor:
    """``(n, P, P)`` logits of landmark ``idx[j]`` in patch ``j`` of ``x`` (``(n, C, P, P)``). A network that can
    compute such a selection of its maps more cheaply than all of them says so with a ``select_maps(x, rows,
    channels)`` method (:meth:`~anatomark.networks.SoftmaxEnsemble.select_maps`)."""
    rows, chans = torch.arange(idx.size), torch.as_tensor(idx)
    select = getattr(net, "select_maps", None)
    if select is not None:
        return select(x, rows, chans)
    return net(x)[rows, chans]


class LocalInput:
    """The refiner's input around a point: the fine patch plus optional wider, coarser context patches.

    ``local.context`` lists zoom-out factors: factor ``f`` adds a channel showing ``f`` times the field of view at
    ``f`` times the pixel size (sampled from an antialiased ``1/f`` copy of the fine image), centred and turned like
    the fine patch. Channel 0 is always the fine patch, so ``network.in_channels`` must be ``1 + len(context)``.

    Args:
        cfg: the recipe's ``local`` section.
    """

    def __init__(self, cfg: dict[str, Any]) -> None:
        lc = LocalConfig.from_dict(cfg, "local")
        self.size = int(lc.patch_size)
        self.factors = [float(f) for f in lc.context or ()]
        if any(f <= 1.0 for f in self.factors):
            raise AnatomarkError(f"local.context factors must be > 1 (zoom-out), got {self.factors}")
        want = int(lc.network.get("in_channels", 1 + len(self.factors)))
        if want != 1 + len(self.factors):
            raise AnatomarkError(
                f"local.network.in_channels is {want} but local.context {self.factors} needs {1 + len(self.factors)}"
            )

    @property
    def channels(self) -> int:
        return 1 + len(self.factors)

    def pyramid(self, fine: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """``[(image, fine-to-image matrix)]``: the fine ``(H, W)`` image itself, then one copy per context factor."""
        out = [(fine, np.eye(3))]
        h, w = fine.shape
        for f in self.factors:
            hw = (max(8, round(h / f)), max(8, round(w / f)))
            sx, sy = hw[1] / w, hw[0] / h
            to_ctx = np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]])
            out.append((Fn.resize_image(fine, hw), to_ctx))
        return out

    def sample(
        self,
        pyramid: list[tuple[np.ndarray, np.ndarray]],
        center_xy: np.ndarray,
        rotate_deg: float = 0.0,
        scale: float = 1.0,
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(C, P, P)`` patches centred on ``center_xy`` (fine-grid x, y) and the fine patch's matrix (patch -> fine)."""
        p = self.size
        mats = [
            to_img @ Fn.patch_matrix(center_xy, p, rotate_deg=rotate_deg, scale=scale * f)
            for f, (_, to_img) in zip([1.0, *self.factors], pyramid)
        ]
        chans = [Fn.sample_patch(img, m, p) for (img, _), m in zip(pyramid, mats)]
        return np.stack(chans), mats[0]


class LocalRefiner:
    """Stage 2: refine ``(K, 2)`` points on a fine grid with a shared local network.

    Args:
        network: maps ``(N, C, P, P)`` patches (C = 1 + len(``local.context``), see :class:`LocalInput`) to
            ``(N, K, P, P)`` logits.
        cfg: the recipe's ``local`` section (``spacing_mm``, ``patch_size``, ``iterations``, ``decode``,
            ``start_prior_mm``, ``precision``: ``float32`` (default), ``bfloat16`` or ``auto``, see
            :func:`anatomark.networks.inference_dtype`; a bfloat16 copy is kept by
            :class:`~anatomark.networks.InferenceCopy`, ``network`` itself stays float32).
    """

    def __init__(self, network: torch.nn.Module, cfg: dict[str, Any]) -> None:
        self.network = network.eval()
        self.cfg = cfg
        lc = LocalConfig.from_dict(cfg, "local")
        self._runner = InferenceCopy(str(lc.precision))  # checks the setting
        self.spacing_mm = float(lc.spacing_mm)
        if self.spacing_mm <= 0:
            raise AnatomarkError(f"local.spacing_mm must be > 0 (the fine image's mm/px), got {lc.spacing_mm}")
        self.iterations = int(lc.iterations)
        self.input = LocalInput(cfg)
        dec = DecodeConfig.from_dict(lc.decode, "local.decode")
        self.decode_method = dec.method
        self.decode_radius = int(dec.radius)
        self.log_prior = None  # (P, P) log weights around the patch centre (local.start_prior_mm), or None
        if lc.start_prior_mm is not None:
            sigma = float(lc.start_prior_mm)
            if not sigma > 0:
                raise AnatomarkError(f"local.start_prior_mm must be > 0 (a sigma in mm) or left out, got {sigma}")
            c = (self.input.size - 1) / 2.0  # the patch centre (Fn.patch_matrix): where the start point is
            yy, xx = np.mgrid[0 : self.input.size, 0 : self.input.size]
            d2 = (xx - c) ** 2 + (yy - c) ** 2
            self.log_prior = torch.from_numpy((-d2 / (2.0 * (sigma / self.spacing_mm) ** 2)).astype(np.float32))

    @torch.no_grad()
    def refine(
        self, fine: np.ndarray, points: np.ndarray, iterations: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Refine points on the fine-grid image.

        Args:
            fine: ``(H, W)`` [0, 1] image at ``spacing_mm``.
            points: ``(K, 2)`` (x, y) starting points in that grid (NaN rows are left alone).

        Returns:
            refined ``(K, 2)`` points in the fine grid and ``(K,)`` confidence (probability mass near the peak).
        """
        pts, conf, _ = self.refine_spread(fine, points, iterations)
        return pts, conf

    @torch.no_grad()
    def refine_spread(
        self, fine: np.ndarray, points: np.ndarray, iterations: int | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """As :meth:`refine`, plus the ``(K,)`` spread of each last probability map around its point (fine px)."""
        pts = np.asarray(points, np.float64).copy()
        k = pts.shape[0]
        conf = np.zeros(k)
        spread = np.full(k, np.nan)
        ok = np.isfinite(pts).all(axis=1)
        idx = np.nonzero(ok)[0]
        if idx.size == 0:
            return pts, conf, spread
        dev = next(self.network.parameters()).device
        net, dtype = self._network_for(dev)
        pyramid = self.input.pyramid(fine)
        for _ in range(iterations if iterations is not None else self.iterations):
            sampled = [self.input.sample(pyramid, pts[i]) for i in idx]
            mats = [m for _, m in sampled]
            patches = np.stack([x for x, _ in sampled])
            x = _patch_input(patches).to(dev, dtype)
            own = _own_logits(net, x, idx)  # (n, P, P): channel k of the patch centred on k
            flat = own.reshape(idx.size, -1).float()
            prob = torch.softmax(flat, -1).reshape(own.shape)
            if self.log_prior is None:
                found, _, mass = Fn.heatmaps_to_points(prob, self.decode_method, self.decode_radius)
            else:  # decode the map weighed by the prior; the confidence is the network's own mass there
                # prob * prior, renormalised, computed in log space so that a narrow prior cannot underflow to 0
                weighed = torch.softmax(flat + self.log_prior.to(flat.device).reshape(1, -1), -1).reshape(own.shape)
                found, _, _ = Fn.heatmaps_to_points(weighed, self.decode_method, self.decode_radius)
                mass = Fn.window_mass(prob, found, self.decode_radius)
            for j, i in enumerate(idx):
                pts[i] = Fn.transform_points(found[j : j + 1], mats[j])[0]
            conf[idx] = np.clip(mass, 0, 1)
            spread[idx] = Fn.heatmap_spread(prob, found)  # patch px = fine px (the fine patch is not resampled)
        return pts, conf, spread

    def fine_image(self, scaled: np.ndarray, shape_hw: Sequence[int], spacing: Sequence[float]) -> np.ndarray:
        """A ``(H, W)`` [0, 1] image of ``shape_hw`` px at ``spacing`` (sx, sy) mm/px, resampled to ``spacing_mm``."""
        s = self.spacing_mm
        fine_hw = (max(16, round(shape_hw[0] * spacing[1] / s)), max(16, round(shape_hw[1] * spacing[0] / s)))
        return Fn.resize_image(scaled, fine_hw)

    @torch.no_grad()
    def refine_in_image(
        self, fine: np.ndarray, shape_hw: Sequence[int], points: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Refine ``(K, 2)`` (x, y) points of the original image (``shape_hw``) on its :meth:`fine_image`.

        A point outside the image is not refined (there is nothing to see) and comes back as given.

        Returns:
            points ``(K, 2)`` in original px, confidence ``(K,)`` and spread ``(K,)`` in original px (both only
            meaningful where refined) and the ``(K,)`` mask of the points that were refined (inside the image).
        """
        fine_hw = fine.shape[:2]
        inside = Fn.points_inside(points, shape_hw)
        start = Fn.resize_points(points, shape_hw, fine_hw)
        start[~inside] = np.nan
        pts_fine, conf, spread = self.refine_spread(fine, start)
        zoom = 0.5 * (shape_hw[0] / fine_hw[0] + shape_hw[1] / fine_hw[1])
        out = Fn.resize_points(pts_fine, fine_hw, shape_hw)
        out[~inside] = points[~inside]
        return out, conf, spread * zoom, inside

    @property
    def precision(self) -> str:
        """``local.precision``: what the refiner runs in (``float32``, ``bfloat16`` or ``auto``)."""
        return self._runner.precision

    def _network_for(self, dev: torch.device) -> tuple[torch.nn.Module, torch.dtype]:
        """The network to run on ``dev`` and its dtype: ``self.network``, or its cached bfloat16 copy."""
        return self._runner.get(self.network, dev)


class CascadeModel(LandmarkModel):
    """Stage-1 :class:`LandmarkModel` + :class:`LocalRefiner`; ``predict`` returns refined points in original px."""

    def __init__(
        self,
        network: torch.nn.Module,
        local_network: torch.nn.Module,
        recipe: dict[str, Any],
        landmark_set: LandmarkSet,
        info: dict | None = None,
    ) -> None:
        super().__init__(network, recipe, landmark_set, info)
        self.refiner = LocalRefiner(local_network, recipe["local"])

    def to(self, device: str | torch.device) -> CascadeModel:
        super().to(device)
        self.refiner.network.to(device)
        return self

    def _predict(self, image: XrayImage) -> Prediction:
        t0 = time.perf_counter()
        scaled = scale_intensity(image.array)
        coarse, frame = self.to_grid(scaled)
        fine = self.refiner.fine_image(scaled, image.shape, image.spacing)
        t1 = time.perf_counter()
        pts, coarse_conf = self.predict_grid(coarse)
        t2 = time.perf_counter()
        coarse_pts = self.from_grid(pts, frame, image.shape)  # original px; outside the image when letterboxed
        with self._lock:
            points, conf, spread, inside = self.refiner.refine_in_image(fine, image.shape, coarse_pts)
        t3 = time.perf_counter()
        conf = np.where(inside, conf, coarse_conf)
        return Prediction(
            points=points,
            confidence=conf,
            spacing=image.spacing,
            names=list(self.landmark_set.names),
            timings={"preprocess": t1 - t0, "network": t2 - t1, "refine": t3 - t2},
            coarse_points=coarse_pts,
            spread_px=spread,
        )

    def predict_coarse(self, image: XrayImage) -> Prediction:
        """Stage 1 only (about a quarter of the time of :meth:`predict`; no shape prior): the heatmap model's own
        prediction."""
        return LandmarkModel._predict(self, image)

    def extra_networks(self) -> dict[str, torch.nn.Module]:
        return {"local": self.refiner.network, **super().extra_networks()}


class LocalModel(LandmarkModel):
    """A local refiner on its own (``kind: local``, stage 2 of a cascade): it refines, it does not predict.

    Its :attr:`refiner` (the network as a :class:`LocalRefiner`) can be a member of a ``kind: refined`` model's
    ``local.weights``, like a cascade's.
    """

    def __init__(
        self, network: torch.nn.Module, recipe: dict[str, Any], landmark_set: LandmarkSet, info: dict | None = None
    ) -> None:
        super().__init__(network, recipe, landmark_set, info)
        self.refiner = LocalRefiner(network, recipe["local"])

    def _predict(self, image: XrayImage) -> Prediction:
        raise AnatomarkError(f"{self.name} is a local refiner (stage 2) only; predict with a cascade model")


# ------------------------------------------------------------------------------------------------ training
class LocalPatchSet(Dataset):
    """Random patches around true landmarks (with a random offset, as stage 1 would miss them).

    Each item is ``(patch (C, P, P), target (K, P, P))``: the fine patch (plus ``local.context`` channels, see
    :class:`LocalInput`) and the Gaussian heatmaps of every landmark inside the fine patch (zeros = absent, ignored by
    the loss).
    """

    def __init__(
        self,
        items: list[dict[str, Any]],
        recipe: dict[str, Any],
        augment: bool = True,
        centres: Sequence[int] | None = None,
    ) -> None:
        self.items = items
        self.centres = None if centres is None else np.asarray(centres, int)
        lc = LocalConfig.of(recipe)
        self.size = int(lc.patch_size)
        self.sigma = float(lc.sigma)
        sp = float(lc.spacing_mm)
        self.offset_sigma = float(lc.offset_sigma_mm) / sp
        self.max_offset = float(lc.max_offset_mm) / sp
        self.per_image = int(TrainConfig.of(recipe).patches_per_image)
        aug = AugmentConfig.of(recipe) if augment else AugmentConfig()
        self.rotate = float(aug.rotate_deg)
        self.scale = tuple(float(v) for v in aug.scale)
        gamma = tuple(float(v) for v in aug.intensity_gamma)
        self.gamma = RandIntensityGamma(gamma) if gamma != (1.0, 1.0) else None
        self.intensity = _patch_intensity(aug)
        self.set_random_state(0)
        self.input = LocalInput(recipe["local"])
        self.pyramids = [self.input.pyramid(it["scaled"]) for it in items]

    def set_random_state(self, seed: int) -> None:
        """One random state for the patch draws, the gamma and the noise / blur."""
        self.R = np.random.RandomState(seed)
        if self.gamma is not None:
            self.gamma.set_random_state(state=self.R)
        if self.intensity is not None:
            for t in self.intensity.transforms:
                t.set_random_state(state=self.R)

    def __len__(self) -> int:
        return len(self.items) * self.per_image

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        it = self.items[i // self.per_image]
        pyramid = self.pyramids[i // self.per_image]
        pts = it["points"]
        present = np.nonzero(np.isfinite(pts).all(axis=1))[0]
        if self.centres is not None:  # a specialist: patches centred on its landmarks only
            focused = np.intersect1d(present, self.centres)
            present = focused if focused.size else present
        k = int(self.R.choice(present))
        off = np.clip(self.R.normal(0.0, self.offset_sigma, 2), -self.max_offset, self.max_offset)
        patch, m = self.input.sample(
            pyramid,
            pts[k] + off,
            rotate_deg=self.R.uniform(-self.rotate, self.rotate),
            scale=self.R.uniform(*self.scale),
        )
        if self.gamma is not None:
            patch = self.gamma(patch)
        if self.intensity is not None:
            patch = np.asarray(self.intensity(np.asarray(patch, np.float32)))
        inside = Fn.transform_points(pts, np.linalg.inv(m))
        margin = 2.0
        out = (inside < margin).any(axis=1) | (inside > self.size - 1 - margin).any(axis=1)
        inside[out] = np.nan
        target = Fn.points_to_heatmaps(inside, (self.size, self.size), self.sigma)
        return _patch_input(patch[None])[0], torch.from_numpy(target)


def focus_indices(ls: LandmarkSet, names: Sequence[str]) -> list[int] | None:
    """Indices of ``local.focus`` (landmark names) in ``ls``, or ``None`` when empty (all landmarks).

    Raises:
        AnatomarkError: a name that is not in the landmark set.
    """
    return ls.indices(names, "local.focus") if names else None


def _patch_intensity(aug: AugmentConfig) -> Compose | None:
    """The noise / blur augmentation of ``(C, P, P)`` [0, 1] refiner patches (``augment.noise_*``, ``blur_*``), or
    ``None`` when off (then no random numbers are drawn for it, so older recipes draw the same patches)."""
    if not aug.patch_intensity:
        return None
    steps: list[Any] = []
    if aug.noise_prob > 0 and aug.noise_std > 0:
        steps.append(RandGaussianNoise(prob=float(aug.noise_prob), std=float(aug.noise_std), sample_std=True))
    if aug.blur_prob > 0:
        sig = tuple(float(v) for v in aug.blur_sigma)
        steps.append(RandGaussianSmooth(sigma_x=sig, sigma_y=sig, prob=float(aug.blur_prob)))
    return Compose(steps)


class LocalStage:
    """Training pieces for the local refiner (``kind: local``) for :func:`anatomark.training.fit`.

    Validation starts each landmark from the predictions of a stage-1 model (``stage1``, or the model file
    ``local.val_from_model`` names), else from a fixed, seeded offset around the truth, and refines it.
    """

    def __init__(
        self,
        recipe: dict[str, Any],
        ls: LandmarkSet,
        items,  # noqa: ANN001
        val_items,  # noqa: ANN001
        progress: bool,
        stage1: LandmarkModel | None = None,
    ) -> None:
        self.recipe, self.ls = recipe, ls
        lc = LocalConfig.of(recipe)
        tc = TrainConfig.of(recipe)
        sp = float(lc.spacing_mm)
        if int(lc.patch_size) % 16:
            raise AnatomarkError(f"local.patch_size {lc.patch_size} must be divisible by 16")
        self.train_c, self.val_c, val_src = cache_and_split(
            items, val_items, ls, recipe["train"], progress, spacing_mm=sp
        )
        self.focus = focus_indices(ls, lc.focus)
        self.dataset = LocalPatchSet(self.train_c, recipe, augment=True, centres=self.focus)
        # fixed starting points for validation
        self.val_starts = []
        if stage1 is None and lc.val_from_model:
            stage1 = load_model(lc.val_from_model)
        if stage1 is not None:
            kept = []
            for src, c in zip(val_src, self.val_c):
                try:
                    img = load_image(src["image"], spacing=src.get("spacing"), default_spacing=ls.default_spacing_mm)
                except AnatomarkError as e:  # deleted since it was cached: validate on the others
                    logger.warning(f"Skipping validation image {c['id']}: {e}")
                    continue
                self.val_starts.append(Fn.resize_points(stage1.predict(img).points, c["orig_hw"], c["scaled"].shape))
                kept.append(c)
            self.val_c = kept
        else:
            r = np.random.RandomState(int(tc.seed) + 12345)
            sig = float(lc.offset_sigma_mm) / sp
            for c in self.val_c:
                self.val_starts.append(c["points"] + r.normal(0, sig, c["points"].shape))

    def build_network(self) -> torch.nn.Module:
        return build_network(self.recipe["local"]["network"], out_channels=len(self.ls))

    def loss(self) -> torch.nn.Module:
        return build_loss(self.recipe)

    def set_random_state(self, seed: int) -> None:
        self.dataset.set_random_state(seed)

    def evaluate(self, net: torch.nn.Module) -> np.ndarray:
        ref = LocalRefiner(net, self.recipe["local"])
        preds, gts, sps = [], [], []
        for c, start in zip(self.val_c, self.val_starts):
            p, _ = ref.refine(c["scaled"], start)
            preds.append(Fn.resize_points(p, c["scaled"].shape, c["orig_hw"]))
            gts.append(c["landmarks"])
            sps.append(c["spacing"])
        net.train(False)
        err = radial_errors(np.stack(preds), np.stack(gts), np.asarray(sps))
        return err if self.focus is None else err[:, self.focus]


def _as_saved(net: torch.nn.Module) -> torch.nn.Module:
    """``net`` with its float32 weights rounded to float16 and back, as the model file will hold them: stage 2 is
    validated from the stage-1 predictions that will be served."""
    with torch.no_grad():
        for t in list(net.parameters()) + list(net.buffers()):
            if t.dtype == torch.float32:
                t.copy_(t.half().float())
    return net


class LocalFamily:
    """``kind: local``: the refiner trained on its own (validated from ``local.val_from_model`` when given)."""

    kind = "local"
    required_sections = ("landmark_set", "local", "train")

    def load(
        self, recipe: dict[str, Any], landmark_set: LandmarkSet, states: dict[str, Any], info: dict[str, Any]
    ) -> LandmarkModel:
        return LocalModel(
            load_network(recipe["local"]["network"], len(landmark_set), states["network"]), recipe, landmark_set, info
        )

    def train(
        self,
        recipe: dict[str, Any],
        landmark_set: LandmarkSet,
        items: Sequence[dict[str, Any]],
        out_dir: Path,
        run: TrainRun,
    ) -> dict[str, Any]:
        return train_single_stage(
            LocalStage,
            lambda fitted, stage, init: LocalModel(fitted.network, recipe, landmark_set, fitted.meta),
            recipe,
            landmark_set,
            items,
            out_dir,
            run,
        )


class CascadeFamily:
    """``kind: cascade``: stage 1 (a heatmap model, trained here or reused from ``global.weights``) and the local
    refiner, composed in memory; the model file holding both is written once.

    A fine-tuning (``init_weights``: a cascade model file, e.g. the one a server serves) fine-tunes both stages from
    its weights for ``epochs``; ``recipe`` may then be the recipe stored in that file (no ``global`` section).
    """

    kind = "cascade"
    required_sections = ("landmark_set", "global", "local", "train")

    def load(
        self, recipe: dict[str, Any], landmark_set: LandmarkSet, states: dict[str, Any], info: dict[str, Any]
    ) -> LandmarkModel:
        k = len(landmark_set)
        net = load_network(recipe["network"], k, states["network"])
        local = load_network(recipe["local"]["network"], k, states["local"])
        return CascadeModel(net, local, recipe, landmark_set, info)

    def train(
        self, recipe: dict[str, Any], ls: LandmarkSet, items: Sequence[dict[str, Any]], out_dir: Path, run: TrainRun
    ) -> dict[str, Any]:
        t0 = time.time()
        g = recipe.get("global", {})
        local_cfg = recipe.get("local")
        init = load_init(run.init_weights, ls)
        if init is not None and not isinstance(init, CascadeModel):
            raise AnatomarkError(f"{run.init_weights} is not a cascade model; cannot fine-tune a cascade from it")
        stage1_info: dict[str, Any]
        if init is not None:  # fine-tune both stages from the served model, in memory
            r1 = {k: v for k, v in init.recipe.items() if k not in ("local", "global", "shape_prior")}
            r1.update({"kind": "heatmap", "name": f"{recipe['name']}_global", "train": recipe["train"]})
            local_cfg = copy.deepcopy(init.recipe["local"])
            stage1_fit = fit(
                HeatmapStage(r1, ls, items, run.val_items, run.progress),
                r1,
                out_dir / "global",
                init.network.state_dict(),
                run,
            )
            stage1 = LandmarkModel(_as_saved(stage1_fit.network), r1, ls, stage1_fit.meta)
            stage1_info = {**init.info.get("stage1", {}), **stage1_fit.meta}
            init2 = init.refiner.network.state_dict()
        elif g.get("weights"):
            stage1 = load_model(g["weights"])
            stage1_info = {"path": str(g["weights"]), **stage1.info}
            init2 = None
        else:
            r1 = load_recipe(g["recipe"]) if isinstance(g.get("recipe"), str) else copy.deepcopy(g["recipe"])
            r1["landmark_set"] = ls.name
            stage1_run = TrainRun(**{**run.__dict__, "epochs": None, "init_weights": None})
            stage1_fit = fit(
                HeatmapStage(r1, ls, items, run.val_items, run.progress), r1, out_dir / "global", None, stage1_run
            )
            stage1 = LandmarkModel(_as_saved(stage1_fit.network), r1, ls, stage1_fit.meta)
            stage1_info = dict(stage1_fit.meta)
            init2 = None
        if stage1.landmark_set.names != ls.names:
            raise AnatomarkError(f"Stage-1 model {g.get('weights')} has other landmarks than {ls.name!r}")
        r2 = {
            "name": f"{recipe['name']}_local",
            "kind": "local",
            "landmark_set": ls.name,
            "local": {k: v for k, v in local_cfg.items() if k != "val_from_model"},
            "augment": recipe.get("augment", {}),
            "loss": recipe.get("loss", {}),
            "train": recipe["train"],
        }
        stage2 = LocalStage(r2, ls, items, run.val_items, run.progress, stage1=stage1)
        local_fit = fit(stage2, r2, out_dir / "local", init2, run)
        full = copy.deepcopy(stage1.recipe)
        full.pop("shape_prior", None)
        full.update({"name": recipe["name"], "kind": "cascade", "local": r2["local"]})
        if recipe.get("shape_prior"):
            full["shape_prior"] = recipe["shape_prior"]
        meta = {
            **(run.info or {}),
            "stage1": stage1_info,
            "stage2": local_fit.meta,
            "val_mre_mm": local_fit.meta.get("val_mre_mm"),
            "n_train": local_fit.meta.get("n_train"),
            "n_val": local_fit.meta.get("n_val"),
            "epoch": local_fit.meta.get("epoch"),
            "train_seconds": float(stage1_info.get("train_seconds", 0.0))
            + float(local_fit.meta.get("train_seconds", 0.0)),
        }
        model = CascadeModel(stage1.network, local_fit.network, full, ls, meta)
        attach_shape_prior(model, recipe, items, run.val_items, init)
        res = write_model(model, out_dir, local_fit, t0)
        res["train_seconds"] = time.time() - t0
        return res


register_family(LocalFamily())
register_family(CascadeFamily())
