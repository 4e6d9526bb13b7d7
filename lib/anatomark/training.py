"""One training loop for the CLI and the server: cached preprocessing, augmentation that moves points,
progress bar, checkpoints, resume, deterministic seed, validation MRE in mm.

Outputs in ``out_dir``:
    ``model.pt``       best model by validation MRE (self-contained, fp16; load with :func:`anatomark.model.load_model`)
    ``last.pt``        full training state for ``--resume``
    ``history.json``   per-epoch loss and validation metrics
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from monai.transforms import Compose, Randomizable
from monai.utils import MAX_SEED
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from anatomark import distributed as dist
from anatomark.config import LandmarkSet, load_landmark_set
from anatomark.data.image_io import load_image
from anatomark.errors import AnatomarkError
from anatomark.family import TrainRun, get_family
from anatomark.losses import LOSSES
from anatomark.metrics import radial_errors, sdr
from anatomark.model import LandmarkModel, float_state, load_model, prepare_image, read_model_payload, to_model_input
from anatomark.paths import atomic_write, cache_dir
from anatomark.recipe import AugmentConfig, TargetConfig, TrainConfig, kind_of, loss_options
from anatomark.shape import DEFAULTS, ShapePrior, fit_shape_prior
from anatomark.transforms import functional as Fn
from anatomark.transforms.array import PointsToHeatmap
from anatomark.transforms.dictionary import MarkPointsOutsided, RandAffineWithPointsd, RandIntensityGammad

logger = logging.getLogger(__name__)


def set_determinism(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _cache_path(
    items: Sequence[dict[str, Any]],
    present: list[tuple[int, os.stat_result]],
    size_hw: tuple[int, ...] | None,
    spacing_mm: float | None,
) -> Path:
    """Cache file of the images ``present`` (index, stat): keyed by path, mtime, size, spacing and grid."""
    key = hashlib.sha1()
    for i, st in present:
        it = items[i]
        key.update(f"{Path(it['image']).resolve()}|{st.st_mtime_ns}|{st.st_size}|{it.get('spacing')}".encode())
    key.update(f"{size_hw}|{spacing_mm}|v2".encode())
    return cache_dir() / f"prep-{key.hexdigest()[:16]}.npz"


def _load_cache(
    items: Sequence[dict[str, Any]],
    present: list[tuple[int, os.stat_result]],
    size_hw: tuple[int, ...] | None,
    spacing_mm: float | None,
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray] | None:
    """``(images, orig_hw, spacing)`` from the cache file of ``present``, ``None`` when there is none (or broken)."""
    cpath = _cache_path(items, present, size_hw, spacing_mm)
    if not cpath.is_file():
        return None
    try:
        z = np.load(cpath)
        return [z[f"img{k}"].astype(np.float32) for k in range(len(present))], z["orig_hw"], z["spacing"]
    except Exception:  # noqa: BLE001 - a broken cache is rebuilt
        return None


def cache_items(
    items: Sequence[dict[str, Any]],
    size_hw: Sequence[int] | None,
    landmark_set: LandmarkSet,
    progress: bool = True,
    spacing_mm: float | None = None,
) -> list[dict[str, Any]]:
    """Load, intensity-scale and resize every image once; keep a ``.npz`` cache keyed by file, mtime and size.

    Args:
        items: ``{"image", "landmarks" (K, 2) px, "spacing"}`` dicts.
        size_hw: resize every image to this ``(H, W)`` grid, or
        spacing_mm: (when ``size_hw`` is None) resample every image to this isotropic spacing instead.

    Returns:
        items with ``scaled`` (float32 in [0, 1] on the new grid), ``points`` ``(K, 2)`` in that grid,
        ``orig_hw``, ``spacing`` (original mm/px), ``landmarks`` (original pixels) and ``source_index`` (position in
        ``items``). An image that is gone or unreadable (e.g. deleted from the datastore during a training) is left
        out with a log line.
    """
    if (size_hw is None) == (spacing_mm is None):
        raise ValueError("give exactly one of size_hw and spacing_mm")
    size_hw = tuple(int(s) for s in size_hw) if size_hw is not None else None
    present: list[tuple[int, os.stat_result]] = []  # (index in items, stat) of the images that are still there
    for i, it in enumerate(items):
        try:
            present.append((i, Path(it["image"]).stat()))
        except OSError as e:  # deleted from the datastore meanwhile: train on the others
            logger.warning(f"Skipping {it.get('id', it['image'])}: image not readable ({e.strerror or e})")
    cached = _load_cache(items, present, size_hw, spacing_mm)
    if cached is None:
        imgs, hws, sps, loaded = [], [], [], []
        for i, _ in tqdm(present, desc="Caching images", disable=not progress, unit="img"):
            it = items[i]
            try:
                img = load_image(
                    it["image"], spacing=it.get("spacing"), default_spacing=landmark_set.default_spacing_mm
                )
            except (AnatomarkError, OSError) as e:  # deleted between the check and the read, or unreadable
                logger.warning(f"Skipping {it.get('id', it['image'])}: {e}")
                continue
            if size_hw is not None:
                grid = size_hw
            else:
                grid = (
                    max(16, round(img.shape[0] * img.spacing[1] / spacing_mm)),
                    max(16, round(img.shape[1] * img.spacing[0] / spacing_mm)),
                )
            imgs.append(prepare_image(img, grid).astype(np.float16))
            hws.append(img.shape)
            sps.append(img.spacing)
            loaded.append(i)
        ok = set(loaded)
        present = [(i, st) for i, st in present if i in ok]
        cpath = _cache_path(items, present, size_hw, spacing_mm)
        with atomic_write(cpath) as tmp:  # several training processes may cache at once: each its own temp file
            np.savez(
                tmp,
                orig_hw=np.asarray(hws),
                spacing=np.asarray(sps, dtype=np.float64),
                **{f"img{k}": a for k, a in enumerate(imgs)},
            )
        cached = ([a.astype(np.float32) for a in imgs], np.asarray(hws), np.asarray(sps, dtype=np.float64))
    out = []
    for k, (i, _) in enumerate(present):
        it = items[i]
        lm = np.asarray(it["landmarks"], dtype=np.float64)
        if lm.shape != (len(landmark_set), 2):
            raise AnatomarkError(
                f"{it.get('id', it['image'])}: {lm.shape[0]} landmarks but the set {landmark_set.name!r} has "
                f"{len(landmark_set)}"
            )
        hw = tuple(int(v) for v in cached[1][k])
        scaled = cached[0][k]
        out.append(
            {
                "id": it.get("id", Path(it["image"]).name),
                "source_index": i,
                "scaled": scaled,
                "orig_hw": hw,
                "spacing": tuple(float(v) for v in cached[2][k]),
                "landmarks": lm,
                "points": Fn.resize_points(lm, hw, scaled.shape),
            }
        )
    return out


class HeatmapTrainingSet(Dataset):
    """Cached items -> ``(image (1, H, W), target heatmaps (K, H, W))`` with point-carrying augmentation.

    The augmentation is a MONAI :class:`~monai.transforms.Compose` of the dictionary transforms of
    :mod:`anatomark.transforms` on ``{"image": (H, W), "points": (K, 2) x, y}``: one random affine of image and
    points (``augment`` section), a random gamma, then points pushed out of the grid marked missing (NaN); all random
    transforms draw from one random state (:meth:`set_random_state`). Subclasses change the target by overriding
    :meth:`encode` (see :class:`anatomark.families.zoo.ZooTrainingSet`).
    """

    def __init__(self, items: list[dict[str, Any]], recipe: dict[str, Any], augment: bool = True) -> None:
        self.items = items
        self.size_hw = tuple(int(s) for s in recipe["input"]["size_hw"])
        self.target = TargetConfig.of(recipe)
        self.sigma = float(self.target.sigma)
        aug = AugmentConfig.of(recipe) if augment else AugmentConfig()
        if aug.patch_intensity:
            raise AnatomarkError(
                f"{recipe.get('name')}: augment.noise_* / blur_* apply to refiner patches (kind: cascade, local) only; "
                "remove them from this recipe"
            )
        self.augment = augment and bool(recipe.get("augment"))
        self.gamma = tuple(float(g) for g in aug.intensity_gamma)
        steps: list[Any] = []
        if self.augment:
            steps.append(
                RandAffineWithPointsd(
                    "image",
                    "points",
                    prob=float(aug.prob),
                    rotate_deg=float(aug.rotate_deg),
                    scale=tuple(aug.scale),
                    translate_px=float(aug.translate_px),
                )
            )
            if self.gamma != (1.0, 1.0):
                steps.append(RandIntensityGammad("image", self.gamma))
        steps.append(MarkPointsOutsided("points", self.size_hw))
        self.transform = Compose(steps)
        self.heatmap = PointsToHeatmap(self.size_hw, self.sigma)

    def set_random_state(self, seed: int) -> None:
        """Seed the augmentation: one :class:`numpy.random.RandomState` shared by its random transforms."""
        state = np.random.RandomState(int(seed) % MAX_SEED)
        for t in self.transform.transforms:
            if isinstance(t, Randomizable):
                t.set_random_state(state=state)

    def __len__(self) -> int:
        return len(self.items)

    def augmented(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Item ``i`` after the augmentation: ``(H, W)`` image and ``(K, 2)`` points, NaN where a landmark was
        pushed outside the grid (it is then treated as missing)."""
        it = self.items[i]
        d = self.transform({"image": it["scaled"], "points": it["points"]})
        return d["image"], d["points"]

    def encode(self, points: np.ndarray) -> Any:
        """Training target of ``(K, 2)`` points in the model grid."""
        return torch.from_numpy(self.heatmap(points))

    def __getitem__(self, i: int) -> tuple[torch.Tensor, Any]:
        img, pts = self.augmented(i)
        return to_model_input(img)[0], self.encode(pts)


def evaluate_items(model: LandmarkModel, items: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """Predict on cached items -> ``(N, K)`` radial errors (mm) and ``(N, K, 2)`` predictions (original px)."""
    preds = []
    for it in items:
        pts, _ = model.predict_grid(it["scaled"])
        preds.append(Fn.resize_points(pts, model.size_hw, it["orig_hw"]))
    preds_a = np.stack(preds)
    gt = np.stack([it["landmarks"] for it in items])
    sp = np.stack([it["spacing"] for it in items])
    return radial_errors(preds_a, gt, sp), preds_a


def split_train_val(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Deterministic split of ``range(n)`` (the same for a given n, fraction and seed)."""
    idx = np.random.RandomState(seed).permutation(n).tolist()
    n_val = int(round(n * val_fraction)) if val_fraction > 0 else 0
    if n_val and n - n_val < 1:
        n_val = n - 1
    return sorted(idx[n_val:]), sorted(idx[:n_val])


def recipe_split(n: int, tcfg: dict[str, Any]) -> tuple[list[int], list[int]]:
    """A recipe's train/validation split of ``range(n)`` (its ``train`` section): ``train.val_fraction`` drawn with
    ``train.val_seed``, independent of ``train.seed`` (defaults: :class:`~anatomark.recipe.TrainConfig`)."""
    tc = TrainConfig.from_dict(tcfg, "train")
    if int(tc.folds) or int(tc.fold):
        return split_fold(n, int(tc.folds), int(tc.fold), int(tc.val_seed))
    return split_train_val(n, float(tc.val_fraction), int(tc.val_seed))


def split_fold(n: int, folds: int, fold: int, seed: int) -> tuple[list[int], list[int]]:
    """Fold ``fold`` of a k-fold split of ``range(n)``: :func:`split_train_val`'s seeded permutation cut into
    ``folds`` near-equal parts (``numpy.array_split``), that part held out; the parts of all folds cover ``range(n)``
    once.

    Raises:
        AnatomarkError: ``folds`` < 2 or > ``n``, or ``fold`` outside ``0 .. folds - 1``.
    """
    if not 2 <= folds <= n or not 0 <= fold < folds:
        raise AnatomarkError(
            f"train.folds {folds} / train.fold {fold}: need 2 <= folds <= {n} items and 0 <= fold < folds"
        )
    parts = np.array_split(np.random.RandomState(seed).permutation(n), folds)
    val = set(parts[fold].tolist())
    return [i for i in range(n) if i not in val], sorted(val)


def cache_and_split(
    items: Sequence[dict[str, Any]],
    val_items: Sequence[dict[str, Any]] | None,
    landmark_set: LandmarkSet,
    tcfg: dict[str, Any],
    progress: bool = True,
    size_hw: Sequence[int] | None = None,
    spacing_mm: float | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """:func:`cache_items`, then the validation split every stage uses: ``val_items`` when given, else the
    recipe's ``val_fraction`` of ``items``, drawn with ``tcfg["val_seed"]`` (default 0, see :func:`split_train_val`).
    The split does not follow ``tcfg["seed"]`` (weights and augmentation): models trained with different seeds are
    validated on the same images, and a cascade's stage 2 holds out the images its reused stage 1 held out.

    Returns:
        cached training items, cached validation items and the validation items as given (with their paths).
    """
    cached = cache_items(items, size_hw, landmark_set, progress, spacing_mm=spacing_mm)
    if val_items is not None:
        val_c = cache_items(val_items, size_hw, landmark_set, progress, spacing_mm=spacing_mm)
        train_c = cached
    else:  # split the items as given, so that an image missing now does not move the others between the parts
        tr, va = (set(x) for x in recipe_split(len(items), tcfg))
        train_c = [c for c in cached if c["source_index"] in tr]
        val_c = [c for c in cached if c["source_index"] in va]
    if not train_c:
        raise AnatomarkError("No training images: every training image is missing or unreadable")
    src = val_items if val_items is not None else items
    return train_c, val_c, [src[c["source_index"]] for c in val_c]


def training_items(
    recipe: dict[str, Any], items: Sequence[dict[str, Any]], val_items: Sequence[dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """The items a recipe trains on: all of ``items`` with explicit ``val_items``, else the seeded split's train part."""
    if val_items is not None:
        return list(items)
    tr, _ = recipe_split(len(items), recipe.get("train") or {})
    return [items[i] for i in tr]


def add_shape_prior(
    model_path: str | Path,
    items: Sequence[dict[str, Any]],
    cfg: dict[str, Any] | None = None,
    out_path: str | Path | None = None,
) -> Path:
    """Fit a shape prior (:mod:`anatomark.shape`) to ``items``' labels and store it in a model file.

    Args:
        model_path: a model file (any kind).
        items: labelled training items (their images are read only for their size).
        cfg: the ``shape_prior`` settings (default: the model recipe's, else :data:`anatomark.shape.DEFAULTS`).
        out_path: where to write (default: overwrite ``model_path``, atomically).
    """
    model = load_model(model_path)
    cfg = {**DEFAULTS, **(cfg if cfg is not None else model.recipe.get("shape_prior") or {})}
    set_shape_prior(model, fit_shape_prior(items, cfg), n_shapes=len(items))
    return model.save(out_path or model_path)


def set_shape_prior(model: LandmarkModel, prior: ShapePrior, n_shapes: int | None = None) -> None:
    """Put ``prior`` into ``model`` (its recipe records the settings, its info how many shapes it was fitted to)."""
    model.shape_prior = prior
    model.recipe["shape_prior"] = prior.config()
    if n_shapes is not None:
        model.info["shape_prior"] = {**prior.config(), "n_shapes": n_shapes}


def attach_shape_prior(
    model: LandmarkModel,
    recipe: dict[str, Any],
    items: Sequence[dict[str, Any]],
    val_items: Sequence[dict[str, Any]] | None,
    init: LandmarkModel | None = None,
) -> None:
    """After training, in memory: the recipe's ``shape_prior`` fitted to the training part only.

    A fine-tuning (``init``) keeps the shape prior of the model it started from: a handful of new labels is too few
    shapes to refit it.
    """
    if not recipe.get("shape_prior") or not dist.is_main():  # only rank 0 writes the model file
        return
    if init is not None and init.shape_prior is not None:
        set_shape_prior(model, init.shape_prior)
        return
    present = [it for it in training_items(recipe, items, val_items) if Path(it["image"]).is_file()]  # none deleted
    cfg = {**DEFAULTS, **recipe["shape_prior"]}
    set_shape_prior(model, fit_shape_prior(present, cfg), n_shapes=len(present))


# ------------------------------------------------------------------------------------------------ the loop
class Stage(Protocol):
    """What :func:`fit` needs from a family's training stage.

    Attributes:
        dataset: ``(input, target)`` samples (target: a tensor or a tuple of tensors).
        train_c: cached training items; ``val_c``: cached validation items.
    """

    dataset: Dataset
    train_c: list[dict[str, Any]]
    val_c: list[dict[str, Any]]

    def build_network(self) -> torch.nn.Module: ...

    def loss(self) -> torch.nn.Module: ...

    def set_random_state(self, seed: int) -> None: ...

    def evaluate(self, net: torch.nn.Module) -> np.ndarray:
        """``(N, K)`` validation radial errors in mm (NaN where not annotated)."""
        ...


@dataclass
class FitResult:
    """What :func:`fit` returns.

    Attributes:
        network: the network with the best weights (by validation MRE, else training loss), eval mode.
        best_val_mre_mm: its validation MRE (``None`` without validation images).
        epochs: epochs planned.
        history: one record per epoch (as in ``history.json``).
        meta: provenance of the best weights (epoch, val_mre_mm, n_train, n_val, train_seconds).
        train_seconds: seconds of every epoch, earlier sessions of a resumed run included.
    """

    network: torch.nn.Module
    best_val_mre_mm: float | None
    epochs: int
    history: list[dict[str, Any]]
    meta: dict[str, Any]
    train_seconds: float


def build_loss(recipe: dict[str, Any]) -> torch.nn.Module:
    """The recipe's ``loss`` (:data:`anatomark.losses.LOSSES`)."""
    name, opts = loss_options(recipe)
    if name not in LOSSES:
        raise AnatomarkError(f"Unknown loss {name!r}; use {', '.join(sorted(LOSSES))}")
    return LOSSES[name](**opts)


def make_optimizer(net: torch.nn.Module, tc: TrainConfig) -> torch.optim.Optimizer:
    """AdamW with the recipe's learning rate and weight decay."""
    return torch.optim.AdamW(net.parameters(), lr=float(tc.lr), weight_decay=float(tc.weight_decay))


class LRSchedule:
    """The recipe's learning-rate schedule, set before every optimiser step (``cosine``, ``constant``) or after every
    validation (``plateau``).

    ``cosine``: linear warm-up over 5 % of the steps, then cosine decay to 1 % (it stretches when epochs are added).
    """

    def __init__(self, opt: torch.optim.Optimizer, tc: TrainConfig, total_steps: int) -> None:
        if tc.scheduler not in ("cosine", "plateau", "constant"):
            raise AnatomarkError(f"train.scheduler {tc.scheduler!r}: use cosine, plateau or constant")
        self.opt, self.tc, self.total = opt, tc, max(1, total_steps)
        self.plateau = (
            torch.optim.lr_scheduler.ReduceLROnPlateau(
                opt, factor=float(tc.plateau_factor), patience=int(tc.plateau_patience)
            )
            if tc.scheduler == "plateau"
            else None
        )

    def lr_at(self, step: int) -> float:
        base = float(self.tc.lr)
        if self.tc.scheduler != "cosine":
            return base
        warm = max(1, int(0.05 * self.total))
        if step < warm:
            return base * (step + 1) / warm
        t = min(1.0, (step - warm) / max(1, self.total - warm))
        return base * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t)))

    def before_step(self, step: int) -> None:
        if self.plateau is None:
            for g in self.opt.param_groups:
                g["lr"] = self.lr_at(step)

    def after_validation(self, score: float) -> None:
        if self.plateau is not None:
            self.plateau.step(score if math.isfinite(score) else float("inf"))

    def state_dict(self) -> dict[str, Any] | None:
        return self.plateau.state_dict() if self.plateau is not None else None

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if self.plateau is not None and state:
            self.plateau.load_state_dict(state)


class Checkpoint:
    """``last.pt`` of a stage's folder: everything :func:`fit` needs to resume, written atomically every epoch
    (by rank 0 only), and ``history.json`` beside it."""

    def __init__(self, out_dir: Path) -> None:
        self.out = out_dir
        self.path = out_dir / "last.pt"

    def load(self, device: torch.device) -> dict[str, Any] | None:
        if not self.path.is_file():
            return None
        state = torch.load(self.path, map_location=device, weights_only=False)
        if "best_net" not in state:  # written before the best weights were kept in the checkpoint: take model.pt's
            old = self.out / "model.pt"
            if old.is_file():
                payload = read_model_payload(old)
                state["best_net"] = float_state(payload["state_dict"])
                state["best_meta"] = payload.get("info") or {}
        return state

    def save(self, state: dict[str, Any], history: list[dict[str, Any]]) -> None:
        with atomic_write(self.path) as tmp:
            torch.save(state, tmp)
        with atomic_write(self.out / "history.json") as tmp:
            tmp.write_text(json.dumps(history, indent=1))


def validate(stage: Stage, net: torch.nn.Module) -> dict[str, Any]:
    """``{"val_mre_mm", "val_sdr"}`` of ``net`` on the stage's validation images (rank 0 only)."""
    with torch.no_grad():
        err = stage.evaluate(net)
    finite = err[np.isfinite(err)]
    return {"val_mre_mm": float(finite.mean()) if finite.size else float("nan"), "val_sdr": sdr(err)}


def _cpu_state(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()}


def init_submodules(net: torch.nn.Module, init_modules: dict[str, str] | None) -> None:
    """Load trained networks into submodules of ``net`` (``train.init_modules``: submodule name -> model)."""
    for name, ref in (init_modules or {}).items():
        try:
            part = net.get_submodule(name)
        except AttributeError as e:
            raise AnatomarkError(f"train.init_modules: the network has no submodule {name!r}") from e
        try:
            part.load_state_dict(load_model(ref).network.state_dict())
        except RuntimeError as e:
            raise AnatomarkError(f"train.init_modules: {ref} does not fit the submodule {name!r}: {e}") from e
        logger.info(f"Submodule {name!r} starts from the network of {ref}")


def fit(
    stage: Stage,
    recipe: dict[str, Any],
    out_dir: str | Path,
    init_state: dict[str, torch.Tensor] | None = None,
    run: TrainRun | None = None,
) -> FitResult:
    """Train one network: the loop shared by every family (optimizer, schedule, checkpoint, validation, DDP).

    Args:
        stage: the family's training pieces (:class:`Stage`).
        recipe: the recipe (its ``train`` section, :class:`~anatomark.recipe.TrainConfig`).
        out_dir: folder of ``last.pt`` (resume) and ``history.json``; no model file is written here.
        init_state: start from these weights (fine-tuning), unless resuming.
        run: resume, epochs, device, progress, on_epoch, info (:class:`~anatomark.family.TrainRun`).

    Returns:
        the best network and its metrics (:class:`FitResult`).
    """
    run = run or TrainRun()
    tc = TrainConfig.of(recipe)
    n_epochs = int(run.epochs if run.epochs is not None else tc.epochs)
    dev = dist.device() or torch.device(run.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    net = stage.build_network().to(dev)
    loss_fn = stage.loss()
    opt = make_optimizer(net, tc)
    steps_per_epoch = max(1, math.ceil(dist.shard_size(len(stage.dataset)) / int(tc.batch_size)))
    schedule = LRSchedule(opt, tc, n_epochs * steps_per_epoch)
    ckpt = Checkpoint(out)

    start_epoch, best, history = 0, float("inf"), []
    best_state, best_meta = None, {}
    state = ckpt.load(dev) if run.resume else None
    if state is not None:
        net.load_state_dict(state["net"])
        opt.load_state_dict(state["opt"])
        start_epoch, best, history = state["epoch"], state["best"], state["history"]
        best_state, best_meta = state.get("best_net"), state.get("best_meta") or {}
        schedule.load_state_dict(state.get("plateau"))
        torch.set_rng_state(state["torch_rng"])
        np.random.set_state(state["np_rng"])
    elif init_state is not None:
        net.load_state_dict(init_state)
    else:
        init_submodules(net, tc.init_modules)

    train_net = dist.wrap(net)  # DistributedDataParallel in a multi-process run (anatomark.distributed), else net
    stage.set_random_state(tc.seed + start_epoch + 7919 * dist.rank())
    gen = torch.Generator().manual_seed(tc.seed + start_epoch)
    loader = dist.data_loader(stage.dataset, int(tc.batch_size), gen, tc.seed + start_epoch)
    t_start = time.time()
    trained_before = sum(h.get("seconds", 0.0) for h in history)
    step = start_epoch * steps_per_epoch
    for epoch in range(start_epoch, n_epochs):
        net.train()
        dist.set_epoch(loader, epoch)
        t0, losses = time.time(), []
        bar = tqdm(loader, desc=f"Epoch {epoch + 1}/{n_epochs}", disable=not run.progress, unit="batch", leave=False)
        for x, y in bar:
            x = x.to(dev)
            y = y.to(dev) if isinstance(y, torch.Tensor) else [t.to(dev) for t in y]  # zoo targets may be tuples
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(train_net(x), y)
            loss.backward()
            schedule.before_step(step)
            opt.step()
            step += 1
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{np.mean(losses):.4f}")
        net.eval()
        rec: dict[str, Any] = {
            "epoch": epoch + 1,
            "loss": dist.mean(float(np.mean(losses))),
            "lr": opt.param_groups[0]["lr"],
        }
        if stage.val_c and dist.is_main():  # only rank 0 validates and writes files
            rec.update(validate(stage, net))
        rec["seconds"] = time.time() - t0
        history.append(rec)
        score = dist.from_main(rec.get("val_mre_mm", rec["loss"]))
        schedule.after_validation(score)
        improved = score < best
        if improved:
            best, best_state = score, _cpu_state(net)
            best_meta = {
                **(run.info or {}),
                "epoch": epoch + 1,
                "val_mre_mm": rec.get("val_mre_mm"),
                "n_train": len(stage.train_c),
                "n_val": len(stage.val_c),
                "train_seconds": trained_before + time.time() - t_start,
            }
        if not dist.is_main():
            continue
        ckpt.save(
            {
                "net": net.state_dict(),
                "opt": opt.state_dict(),
                "epoch": epoch + 1,
                "best": best,
                "best_net": best_state,
                "best_meta": best_meta,
                "history": history,
                "torch_rng": torch.get_rng_state(),
                "np_rng": np.random.get_state(),
                "recipe": recipe,
                "plateau": schedule.state_dict(),
            },
            history,
        )
        msg = f"epoch {epoch + 1}/{n_epochs} loss {rec['loss']:.4f}"
        if "val_mre_mm" in rec:
            msg += f" val MRE {rec['val_mre_mm']:.3f} mm SDR2 {rec['val_sdr']['2.0']:.1f}%"
        msg += f" ({rec['seconds']:.0f} s){' *' if improved else ''}"
        if run.progress:
            tqdm.write(msg)
        if run.on_epoch:  # the record plus where it is in the run (server progress: anatomark.monailabel.train)
            run.on_epoch({**rec, "total_epochs": n_epochs, "out_dir": str(out)})
    dist.finish(net, stage.dataset)
    if best_state is not None:
        net.load_state_dict(best_state)
    return FitResult(
        network=net.eval(),
        best_val_mre_mm=best if stage.val_c and math.isfinite(best) else None,
        epochs=n_epochs,
        history=history,
        meta=best_meta,
        train_seconds=sum(h.get("seconds", 0.0) for h in history),
    )


def write_model(model: LandmarkModel, out_dir: str | Path, fitted: FitResult, t0: float) -> dict[str, Any]:
    """Write ``out_dir/model.pt`` (rank 0 only) -> the result dictionary of :func:`train`."""
    path = Path(out_dir) / "model.pt"
    if dist.is_main():
        model.save(path)
    return {
        "best_val_mre_mm": fitted.best_val_mre_mm,
        "epochs": fitted.epochs,
        "model_path": str(path),
        "history": fitted.history,
        "train_seconds": time.time() - t0 if fitted.train_seconds == 0 else fitted.train_seconds,
    }


def train_single_stage(
    make_stage: Callable[..., Stage],
    make_model: Callable[[FitResult, Any, LandmarkModel | None], LandmarkModel],
    recipe: dict[str, Any],
    landmark_set: LandmarkSet,
    items: Sequence[dict[str, Any]],
    out_dir: Path,
    run: TrainRun,
) -> dict[str, Any]:
    """The whole training of a one-network family (its ``Family.train``): the fine-tuning start, the stage, one
    :func:`fit`, the model, the recipe's shape prior, the model file written once.

    Args:
        make_stage: ``(recipe, landmark_set, items, val_items, progress) -> Stage``.
        make_model: ``(fitted, stage, init) -> LandmarkModel`` (``init``: the model fine-tuned from, or ``None``).
        recipe, landmark_set, items, out_dir, run: as in :meth:`anatomark.family.Family.train`.
    """
    t0 = time.time()
    init = load_init(run.init_weights, landmark_set)
    stage = make_stage(recipe, landmark_set, items, run.val_items, run.progress)
    fitted = fit(stage, recipe, out_dir, init.network.state_dict() if init else None, run)
    model = make_model(fitted, stage, init)
    attach_shape_prior(model, recipe, items, run.val_items, init)
    return write_model(model, out_dir, fitted, t0)


def resolve_landmark_set(recipe: dict[str, Any]) -> LandmarkSet:
    """The recipe's ``landmark_set``: a name, a path, a dictionary or a :class:`LandmarkSet`."""
    ls = recipe["landmark_set"]
    if isinstance(ls, str):
        return load_landmark_set(ls)
    return ls if isinstance(ls, LandmarkSet) else LandmarkSet.from_dict(ls)


def train(
    recipe: dict[str, Any],
    items: Sequence[dict[str, Any]],
    out_dir: str | Path,
    resume: bool = False,
    init_weights: str | Path | None = None,
    epochs: int | None = None,
    device: str | None = None,
    progress: bool = True,
    val_items: Sequence[dict[str, Any]] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    info: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train a landmark model of any family (the recipe's ``kind``, :mod:`anatomark.family`).

    Args:
        recipe: model recipe (see ``configs/models/*.yaml``).
        items: training items ``{"image": path, "landmarks": (K, 2) px, "spacing": (sx, sy) | None}``.
        out_dir: where ``model.pt`` (written once, at the end), ``last.pt`` and ``history.json`` go.
        resume: continue from ``out_dir/last.pt`` if present.
        init_weights: start from these model weights (fine-tuning), unless resuming.
        epochs: override ``recipe.train.epochs``.
        device: ``cpu``/``cuda``; default: CUDA when available.
        val_items: explicit validation items; default: ``recipe.train.val_fraction`` of ``items`` (seeded).
        on_epoch: callback with each epoch's record (as in ``history.json``, plus ``total_epochs`` and ``out_dir``,
            the folder of the stage being trained).
        info: extra provenance stored in the model file.

    Returns:
        ``{"best_val_mre_mm", "epochs", "model_path", "history", "train_seconds"}``.
    """
    recipe = copy.deepcopy(recipe)
    if len(items) == 0:
        raise AnatomarkError("No training images: the split is empty")
    family = get_family(kind_of(recipe))
    ls = resolve_landmark_set(recipe)
    recipe["landmark_set"] = ls.name
    tc = TrainConfig.of(recipe)
    set_determinism(int(tc.seed))
    if tc.num_threads:
        torch.set_num_threads(int(tc.num_threads))
    run = TrainRun(resume, init_weights, epochs, device, progress, val_items, on_epoch, info)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return family.train(recipe, ls, items, out, run)


def load_init(init_weights: str | Path | None, ls: LandmarkSet) -> LandmarkModel | None:
    """The model a fine-tuning starts from (``None`` without one); refuses one trained for other landmarks."""
    if not init_weights:
        return None
    init = load_model(init_weights)
    if init.landmark_set.names != ls.names:
        raise AnatomarkError(f"{init_weights} was trained for other landmarks; cannot fine-tune on {ls.name!r}")
    return init


# ------------------------------------------------------------------------------------------------ several processes
def _train_returning_callback(*args: Any, **kwargs: Any) -> tuple[dict[str, Any], Any]:
    recipe = args[0]
    if dist.backend() == "gloo" and recipe.get("train", {}).get("num_threads"):
        # CPU ranks share the cores: the recipe's thread count (meant for one process) must not oversubscribe them
        recipe = {**recipe, "train": {**recipe["train"], "num_threads": torch.get_num_threads()}}
        args = (recipe, *args[1:])
    return train(*args, **kwargs), kwargs.get("on_epoch")


def train_distributed(p: dist.Plan, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """:func:`train` (same arguments) in ``p.world_size`` processes (:mod:`anatomark.distributed`); rank 0's result
    with ``result["distributed"] = {"world_size", "backend", "ranks": [{rank, device, pid, fits: [{weights_sha256,
    samples_per_epoch (dataset indices), ids_per_epoch (when a sample is an image)}]}]}`` (one ``fits`` entry per
    trained stage).

    ``on_epoch`` runs in rank 0 only and must be picklable (a module-level function or an object with
    ``__call__``); the attributes of rank 0's copy are copied back onto the object passed in, so a stateful
    callback ends up as if it had run here.
    """
    value, reports = dist.run(_train_returning_callback, p, *args, **kwargs)
    res, callback = value
    mine = kwargs.get("on_epoch")
    if mine is not None and callback is not None and hasattr(mine, "__dict__"):
        mine.__dict__.update(callback.__dict__)
    res["distributed"] = {"world_size": p.world_size, "backend": p.backend, "ranks": reports}
    return res
