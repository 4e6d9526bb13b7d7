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
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from anatomark import distributed as dist
from anatomark.config import LandmarkSet, load_landmark_set
from anatomark.data.image_io import load_image
from anatomark.errors import AnatomarkError
from anatomark.losses import LOSSES
from anatomark.metrics import radial_errors, sdr
from anatomark.model import LandmarkModel, prepare_image, save_model_file, to_model_input
from anatomark.networks import build_network
from anatomark.paths import cache_dir
from anatomark.transforms import functional as Fn
from anatomark.transforms.array import RandAffineWithPoints

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
        cpath.parent.mkdir(parents=True, exist_ok=True)
        tmp = cpath.with_suffix(f".{os.getpid()}.tmp.npz")  # several training processes may cache at once
        np.savez(
            tmp,
            orig_hw=np.asarray(hws),
            spacing=np.asarray(sps, dtype=np.float64),
            **{f"img{k}": a for k, a in enumerate(imgs)},
        )
        tmp.replace(cpath)
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

    Subclasses change the target by overriding :meth:`encode` (see :class:`anatomark.zoo.ZooTrainingSet`).
    """

    def __init__(self, items: list[dict[str, Any]], recipe: dict[str, Any], augment: bool = True) -> None:
        self.items = items
        self.size_hw = tuple(int(s) for s in recipe["input"]["size_hw"])
        self.sigma = recipe.get("target", {}).get("sigma", 2.0)
        aug = recipe.get("augment", {}) if augment else {}
        self.aug = aug
        self.affine = RandAffineWithPoints(
            prob=float(aug.get("prob", 0.0)),
            rotate_deg=float(aug.get("rotate_deg", 0.0)),
            scale=tuple(aug.get("scale", (1.0, 1.0))),
            translate_px=float(aug.get("translate_px", 0.0)),
        )
        self.gamma = tuple(aug.get("intensity_gamma", (1.0, 1.0)))

    def __len__(self) -> int:
        return len(self.items)

    def augmented(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Item ``i`` after the random affine and gamma: ``(H, W)`` image and ``(K, 2)`` points, NaN where a
        landmark was pushed outside the grid (it is then treated as missing)."""
        it = self.items[i]
        img, pts = it["scaled"], it["points"]
        if self.aug:
            img, pts = self.affine(img, pts)
            if self.gamma != (1.0, 1.0):
                g = math.exp(self.affine.R.uniform(math.log(self.gamma[0]), math.log(self.gamma[1])))
                img = np.clip(img, 0.0, 1.0) ** g
        h, w = self.size_hw
        pts = np.asarray(pts, np.float64).copy()
        out = (pts[:, 0] < 0) | (pts[:, 0] > w - 1) | (pts[:, 1] < 0) | (pts[:, 1] > h - 1)
        pts[out] = np.nan
        return img, pts

    def encode(self, points: np.ndarray) -> Any:
        """Training target of ``(K, 2)`` points in the model grid."""
        return torch.from_numpy(Fn.points_to_heatmaps(points, self.size_hw, self.sigma))

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
    """A recipe's train/validation split of ``range(n)``: ``train.val_fraction`` (default 0.1), drawn with
    ``train.val_seed`` (default 0, independent of ``train.seed``)."""
    return split_train_val(n, float(tcfg.get("val_fraction", 0.1)), int(tcfg.get("val_seed", 0)))


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


class HeatmapStage:
    """Training pieces for a whole-image heatmap model (``kind: heatmap``)."""

    def __init__(self, recipe: dict[str, Any], ls: LandmarkSet, items, val_items, progress: bool) -> None:  # noqa: ANN001
        tcfg = recipe["train"]
        self.recipe, self.ls = recipe, ls
        size_hw = tuple(int(s) for s in recipe["input"]["size_hw"])
        if any(s % 16 for s in size_hw):
            raise AnatomarkError(f"input.size_hw {size_hw} must be divisible by 16 (four 2x poolings)")
        self.train_c, self.val_c, _ = cache_and_split(items, val_items, ls, tcfg, progress, size_hw=size_hw)
        self.dataset = HeatmapTrainingSet(self.train_c, recipe, augment=True)

    def build_network(self) -> torch.nn.Module:
        return build_network(self.recipe["network"], out_channels=len(self.ls))

    def set_random_state(self, seed: int) -> None:
        self.dataset.affine.set_random_state(seed)

    def evaluate(self, net: torch.nn.Module) -> np.ndarray:
        return evaluate_items(LandmarkModel(net, self.recipe, self.ls), self.val_c)[0]

    def save(self, path: Path, net: torch.nn.Module, meta: dict[str, Any]) -> None:
        save_model_file(path, net, self.recipe, self.ls, meta)


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
    """Train a landmark model (any ``kind``: ``heatmap``, ``local`` or ``cascade``).

    Args:
        recipe: model recipe (see ``configs/models/*.yaml``).
        items: training items ``{"image": path, "landmarks": (K, 2) px, "spacing": (sx, sy) | None}``.
        out_dir: where ``model.pt``, ``last.pt`` and ``history.json`` go.
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
    kind = recipe.get("kind", "heatmap")
    if len(items) == 0:
        raise AnatomarkError("No training images: the split is empty")
    ls = (
        load_landmark_set(recipe["landmark_set"]) if isinstance(recipe["landmark_set"], str) else recipe["landmark_set"]
    )
    if not isinstance(ls, LandmarkSet):
        ls = LandmarkSet.from_dict(ls)
    recipe["landmark_set"] = ls.name
    tcfg = recipe["train"]
    set_determinism(int(tcfg.get("seed", 0)))
    if tcfg.get("num_threads"):
        torch.set_num_threads(int(tcfg["num_threads"]))
    from anatomark.zoo import ZOO_KINDS

    if kind == "cascade":
        from anatomark.cascade import train_cascade

        res = train_cascade(
            recipe, ls, items, out_dir, resume, epochs, device, progress, val_items, on_epoch, info, init_weights
        )
        return _with_shape_prior(res, recipe, items, val_items, init_weights)
    if kind == "heatmap":
        stage: Any = HeatmapStage(recipe, ls, items, val_items, progress)
    elif kind == "local":
        from anatomark.cascade import LocalStage

        stage = LocalStage(recipe, ls, items, val_items, progress)
    elif kind in ZOO_KINDS:
        from anatomark.zoo import ZooStage

        stage = ZooStage(recipe, ls, items, val_items, progress)
    else:
        raise AnatomarkError(f"Unknown recipe kind {kind!r}; use heatmap, local, cascade or {', '.join(ZOO_KINDS)}")
    res = fit(stage, recipe, ls, out_dir, resume, init_weights, epochs, device, progress, on_epoch, info)
    return _with_shape_prior(res, recipe, items, val_items, init_weights)


def training_items(
    recipe: dict[str, Any], items: Sequence[dict[str, Any]], val_items: Sequence[dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """The items a recipe trains on: all of ``items`` with explicit ``val_items``, else the seeded split's train part."""
    if val_items is not None:
        return list(items)
    tr, _ = recipe_split(len(items), recipe.get("train", {}))
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
    from anatomark.model import load_model
    from anatomark.shape import DEFAULTS, fit_shape_prior

    model = load_model(model_path)
    cfg = {**DEFAULTS, **(cfg if cfg is not None else model.recipe.get("shape_prior") or {})}
    return _store_shape_prior(model, fit_shape_prior(items, cfg), out_path or model_path, n_shapes=len(items))


def _store_shape_prior(model: Any, prior: Any, path: str | Path, n_shapes: int | None = None) -> Path:
    """Put ``prior`` into ``model`` (its recipe records the settings) and write the model file to ``path``."""
    model.shape_prior = prior
    model.recipe["shape_prior"] = prior.config()
    if n_shapes is not None:
        model.info["shape_prior"] = {**prior.config(), "n_shapes": n_shapes}
    return model.save(path)


def _with_shape_prior(
    res: dict[str, Any],
    recipe: dict[str, Any],
    items: Sequence[dict[str, Any]],
    val_items: Sequence[dict[str, Any]] | None,
    init_weights: str | Path | None = None,
) -> dict[str, Any]:
    """After training: add the recipe's ``shape_prior`` (fitted to the training part only) to the written model.

    A fine-tuning (``init_weights``) keeps the shape prior of the model it started from: a handful of new labels
    is too few shapes to refit it.
    """
    path = Path(res.get("model_path", ""))
    if not (recipe.get("shape_prior") and path.is_file() and dist.is_main()):
        return res
    if init_weights:
        from anatomark.model import load_model

        prior = load_model(init_weights).shape_prior
        if prior is not None:
            _store_shape_prior(load_model(path), prior, path)
            return res
    present = [it for it in training_items(recipe, items, val_items) if Path(it["image"]).is_file()]  # none deleted
    add_shape_prior(path, present, recipe["shape_prior"])
    return res


def fit(
    stage: Any,
    recipe: dict[str, Any],
    ls: LandmarkSet,
    out_dir: str | Path,
    resume: bool = False,
    init_weights: str | Path | None = None,
    epochs: int | None = None,
    device: str | None = None,
    progress: bool = True,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    info: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The loop shared by every model kind. ``stage`` provides ``dataset``, ``build_network()``,
    ``evaluate(net) -> (N, K) mm errors``, ``save(path, net, meta)``, ``set_random_state(seed)``, ``train_c``, ``val_c``."""
    tcfg = recipe["train"]
    n_epochs = int(epochs if epochs is not None else tcfg.get("epochs", 10))
    seed = int(tcfg.get("seed", 0))
    dev = dist.device() or torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train_c, val_c = stage.train_c, stage.val_c
    net = stage.build_network().to(dev)
    loss_cfg = dict(recipe.get("loss", {}))
    loss_fn = LOSSES[loss_cfg.pop("name", "spatial_softmax_ce")](**loss_cfg)
    opt = torch.optim.AdamW(
        net.parameters(), lr=float(tcfg.get("lr", 1e-3)), weight_decay=float(tcfg.get("weight_decay", 0))
    )
    batch_size = int(tcfg.get("batch_size", 8))
    steps_per_epoch = max(1, math.ceil(dist.shard_size(len(stage.dataset)) / batch_size))
    base_lr = float(tcfg.get("lr", 1e-3))
    total_steps = n_epochs * steps_per_epoch
    use_cosine = tcfg.get("scheduler", "cosine") == "cosine"
    plateau = (
        torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, factor=float(tcfg.get("plateau_factor", 0.5)), patience=int(tcfg.get("plateau_patience", 10))
        )
        if tcfg.get("scheduler") == "plateau"
        else None
    )

    def lr_at(step: int) -> float:
        """Linear warm-up over 5 % of the steps, then cosine decay to 1 % (stretches when epochs are extended)."""
        if not use_cosine:
            return base_lr
        warm = max(1, int(0.05 * total_steps))
        if step < warm:
            return base_lr * (step + 1) / warm
        t = min(1.0, (step - warm) / max(1, total_steps - warm))
        return base_lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t)))

    start_epoch, best, history = 0, float("inf"), []
    last = out / "last.pt"
    if resume and last.is_file():
        state = torch.load(last, map_location=dev, weights_only=False)
        net.load_state_dict(state["net"])
        opt.load_state_dict(state["opt"])
        start_epoch, best, history = state["epoch"], state["best"], state["history"]
        if plateau is not None and state.get("plateau"):
            plateau.load_state_dict(state["plateau"])
        torch.set_rng_state(state["torch_rng"])
        np.random.set_state(state["np_rng"])
    elif init_weights:
        from anatomark.model import load_model

        init = load_model(init_weights)
        if init.landmark_set.names != ls.names:
            raise AnatomarkError(f"{init_weights} was trained for other landmarks; cannot fine-tune on {ls.name!r}")
        net.load_state_dict(init.network.state_dict())

    train_net = dist.wrap(net)  # DistributedDataParallel in a multi-process run (anatomark.distributed), else net
    stage.set_random_state(seed + start_epoch + 7919 * dist.rank())
    gen = torch.Generator().manual_seed(seed + start_epoch)
    loader = dist.data_loader(stage.dataset, batch_size, gen, seed + start_epoch)
    t_start = time.time()
    trained_before = sum(h.get("seconds", 0.0) for h in history)
    step = start_epoch * steps_per_epoch
    for epoch in range(start_epoch, n_epochs):
        net.train()
        dist.set_epoch(loader, epoch)
        t0, losses = time.time(), []
        bar = tqdm(loader, desc=f"Epoch {epoch + 1}/{n_epochs}", disable=not progress, unit="batch", leave=False)
        for x, y in bar:
            x = x.to(dev)
            y = y.to(dev) if isinstance(y, torch.Tensor) else [t.to(dev) for t in y]  # zoo targets may be tuples
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(train_net(x), y)
            loss.backward()
            if plateau is None:
                for g in opt.param_groups:
                    g["lr"] = lr_at(step)
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
        if val_c and dist.is_main():  # only rank 0 validates and writes files
            with torch.no_grad():
                err = stage.evaluate(net)
            finite = err[np.isfinite(err)]
            rec["val_mre_mm"] = float(finite.mean()) if finite.size else float("nan")
            rec["val_sdr"] = sdr(err)
        rec["seconds"] = time.time() - t0
        history.append(rec)
        score = dist.from_main(rec.get("val_mre_mm", rec["loss"]))
        if plateau is not None:
            plateau.step(score if math.isfinite(score) else float("inf"))
        improved = score < best
        if improved:
            best = score
            meta = {
                **(info or {}),
                "epoch": epoch + 1,
                "val_mre_mm": rec.get("val_mre_mm"),
                "n_train": len(train_c),
                "n_val": len(val_c),
                "train_seconds": trained_before + time.time() - t_start,
            }
            if dist.is_main():
                stage.save(out / "model.pt", net, meta)
        if not dist.is_main():
            continue
        tmp = out / "last.pt.tmp"
        torch.save(
            {
                "net": net.state_dict(),
                "opt": opt.state_dict(),
                "epoch": epoch + 1,
                "best": best,
                "history": history,
                "torch_rng": torch.get_rng_state(),
                "np_rng": np.random.get_state(),
                "recipe": recipe,
                "plateau": plateau.state_dict() if plateau is not None else None,
            },
            tmp,
        )
        tmp.replace(last)
        (out / "history.json").write_text(json.dumps(history, indent=1))
        msg = f"epoch {epoch + 1}/{n_epochs} loss {rec['loss']:.4f}"
        if "val_mre_mm" in rec:
            msg += f" val MRE {rec['val_mre_mm']:.3f} mm SDR2 {rec['val_sdr']['2.0']:.1f}%"
        msg += f" ({rec['seconds']:.0f} s){' *' if improved else ''}"
        if progress:
            tqdm.write(msg)
        if on_epoch:  # the record plus where it is in the run (server progress: anatomark.monailabel.train)
            on_epoch({**rec, "total_epochs": n_epochs, "out_dir": str(out)})
    dist.finish(net, stage.dataset)
    return {
        "best_val_mre_mm": best if val_c else None,
        "epochs": n_epochs,
        "model_path": str(out / "model.pt"),
        "history": history,
        "train_seconds": sum(h.get("seconds", 0.0) for h in history),
    }
