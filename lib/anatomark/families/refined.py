"""Any landmark model with the shared full-resolution refiner in front of its answer (``kind: refined``).

The cascade's stage 2 (:class:`~anatomark.families.cascade.LocalRefiner`) looks at a fine patch around a point and
says where the landmark is in it; it was trained on points offset from the truth, not on one stage-1 model's
errors, so it can refine the points of any model of the same landmarks. A ``kind: refined`` recipe names a base model
and a cascade whose refiner to use::

    name: isbi2015_unet_seg_refined
    kind: refined
    landmark_set: isbi2015_cephalometric
    base:
      weights: isbi2015_unet_seg     # a model name or a .pt file (any family; its shape prior is kept)
      precision: auto                # optional: run the base network in bfloat16 where native (input.precision)
    local:
      weights: isbi2015_cascade      # a cascade model name or file: its refiner and its ``local`` settings
      start_prior_mm: 4.0            # optional: decode each refiner map weighed by a Gaussian around the base's point

``local.weights`` may also list several cascades whose refiners read the same patches (same ``spacing_mm``,
``patch_size``, ``context``, ``iterations``, ``decode``), e.g. refiners trained with different seeds: they become one
:class:`~anatomark.networks.SoftmaxEnsemble` (``network: {name: softmax_ensemble, members: [...]}``) whose averaged
probability maps are decoded once; the patches are sampled once for all of them.

A member may answer for some landmarks only: ``{weights: <cascade>, landmarks: [names]}`` (only those) or
``{weights: <cascade>, except_landmarks: [names]}`` (all but those); each landmark's map is then the average of the
members that answer for it (``covers`` of the ensemble), e.g. specialist refiners (``local.focus``) for the hardest
landmarks and generalists for the rest. A member that answers for a landmark runs only on that landmark's patch.

``anatomark train`` composes the two (nothing is trained) and writes one self-contained model file: the base model's
recipe, networks and shape prior under ``base``, the refiner under ``local``. :class:`RefinedModel` predicts with the
base model (in original pixels, its shape prior applied), then refines every point inside the image once.
Fine-tuning a refined model file (``init_weights``, the server's Train) fine-tunes its base model with the base's own
family and keeps the refiner.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anatomark.config import LandmarkSet
from anatomark.data.image_io import XrayImage
from anatomark.errors import AnatomarkError
from anatomark.families.cascade import LocalRefiner
from anatomark.family import TrainRun, get_family, register_family
from anatomark.model import LandmarkModel, Prediction, load_model, predict_items, restore_shape_prior
from anatomark.networks import SoftmaxEnsemble, check_covers, load_network
from anatomark.recipe import kind_of
from anatomark.training import recipe_split
from anatomark.transforms.functional import scale_intensity

#: prefix of the base model's extra states (shape prior, pre-alignment template ...) in the model file
BASE = "base."


class RefinedModel(LandmarkModel):
    """A base :class:`~anatomark.model.LandmarkModel` followed by a :class:`~anatomark.families.cascade.LocalRefiner`.

    Args:
        base: the model that finds the landmarks (any family).
        local_network: the refiner's network (``(N, C, P, P)`` patches -> ``(N, K, P, P)`` logits).
        recipe: ``{"name", "kind": "refined", "landmark_set", "base": <base recipe>, "local": <refiner settings>}``
            plus the base's ``input``/``network`` (read by :class:`~anatomark.model.LandmarkModel`).
        landmark_set: the landmarks of both.
        info: provenance (``base``: the base model's info).
    """

    def __init__(
        self,
        base: LandmarkModel,
        local_network: torch.nn.Module,
        recipe: dict[str, Any],
        landmark_set: LandmarkSet,
        info: dict | None = None,
    ) -> None:
        super().__init__(base.network, recipe, landmark_set, info)
        self.base = base
        self.refiner = LocalRefiner(local_network, recipe["local"])

    def to(self, device: str | torch.device) -> RefinedModel:
        self.base.to(device)
        self.refiner.network.to(device)
        return self

    def _predict(self, image: XrayImage) -> Prediction:
        t0 = time.perf_counter()
        first = self.base.predict(image)  # original px, the base's shape prior applied
        t1 = time.perf_counter()
        fine = self.refiner.fine_image(scale_intensity(image.array), image.shape, image.spacing)
        with self._lock:
            points, conf, spread, inside = self.refiner.refine_in_image(fine, image.shape, first.points)
        t2 = time.perf_counter()
        base_spread = first.spread_px if first.spread_px is not None else np.full(len(points), np.nan)
        return Prediction(
            points=points,
            confidence=np.where(inside, conf, first.confidence),
            spacing=image.spacing,
            names=list(self.landmark_set.names),
            timings={"base": t1 - t0, "refine": t2 - t1},
            coarse_points=first.points,
            spread_px=np.where(inside, spread, base_spread),
        )

    def predict_coarse(self, image: XrayImage) -> Prediction:
        """The base model's own prediction (no refinement)."""
        return self.base.predict(image)

    def extra_networks(self) -> dict[str, torch.nn.Module]:
        base = {BASE + k: m for k, m in self.base.extra_networks().items() if k != "quality"}
        return {"local": self.refiner.network, **base, **super().extra_networks()}


def _load_base(recipe: dict[str, Any], landmark_set: LandmarkSet, states: dict[str, Any], info: dict) -> LandmarkModel:
    """The base model from the ``base.*`` states of a refined model file."""
    own = {k[len(BASE) :]: v for k, v in states.items() if k.startswith(BASE)}
    prior = own.pop("shape_prior", None)
    base = get_family(kind_of(recipe)).load(recipe, landmark_set, {"network": states["network"], **own}, info)
    if prior is not None:
        base.shape_prior = restore_shape_prior(prior, len(landmark_set), recipe)
    return base


class RefinedFamily:
    """``kind: refined``: a base model of any family and a cascade's refiner, composed (no training)."""

    kind = "refined"
    required_sections = ("landmark_set", "base", "local")

    def load(
        self, recipe: dict[str, Any], landmark_set: LandmarkSet, states: dict[str, Any], info: dict[str, Any]
    ) -> LandmarkModel:
        base = _load_base(recipe["base"], landmark_set, states, info.get("base") or {})
        local = load_network(recipe["local"]["network"], len(landmark_set), states["local"])
        return RefinedModel(base, local, recipe, landmark_set, info)

    def train(
        self, recipe: dict[str, Any], ls: LandmarkSet, items: Sequence[dict[str, Any]], out_dir: Path, run: TrainRun
    ) -> dict[str, Any]:
        """Compose ``base.weights`` and ``local.weights``; or, fine-tuning a refined model file (``init_weights``,
        what the server's Train does), fine-tune its base model with its own family and keep the refiner."""
        t0 = time.time()
        if run.resume:
            raise AnatomarkError(f"{recipe['name']}: a refined model is composed, not trained; nothing to resume")
        if run.init_weights:
            model, history, epochs = self._fine_tune_base(recipe, ls, items, Path(out_dir), run)
        else:
            base_w, local_w = (recipe.get(k, {}).get("weights") for k in ("base", "local"))
            model, history, epochs = compose(base_w, local_w, ls, recipe), [], 0
        val = run.val_items
        if val is None:  # the base model's own validation images (same items, same recipe split)
            _, va = recipe_split(len(items), model.base.recipe.get("train") or {})
            val = [items[i] for i in va]
        if val:
            err = predict_items(model, list(val), progress=False).errors
            model.info.update(val_mre_mm=float(np.nanmean(err)), n_val=len(val))
        path = Path(out_dir) / "model.pt"
        model.save(path)
        return {
            "best_val_mre_mm": model.info.get("val_mre_mm"),
            "epochs": epochs,
            "model_path": str(path),
            "history": history,
            "train_seconds": time.time() - t0,
        }

    @staticmethod
    def _fine_tune_base(
        recipe: dict[str, Any], ls: LandmarkSet, items: Sequence[dict[str, Any]], out_dir: Path, run: TrainRun
    ) -> tuple[RefinedModel, list, int]:
        init = load_model(run.init_weights)
        if not isinstance(init, RefinedModel):
            raise AnatomarkError(f"{run.init_weights} is not a refined model; cannot fine-tune a refined model from it")
        base_dir = out_dir / "base"
        base_dir.mkdir(parents=True, exist_ok=True)
        base_file = init.base.save(base_dir / "init.pt")
        base_recipe = {**copy.deepcopy(init.recipe["base"]), "landmark_set": recipe["landmark_set"]}
        if recipe.get("train"):  # the request's settings (learning rate, epochs ...) apply to the base
            base_recipe["train"] = {**base_recipe.get("train", {}), **recipe["train"]}
        sub = TrainRun(**{**run.__dict__, "init_weights": base_file})
        res = get_family(kind_of(base_recipe)).train(base_recipe, ls, items, base_dir, sub)
        base = load_model(res["model_path"])
        info = {**init.info, "base": {**base.info, "fine_tuned_from": str(run.init_weights)}}
        model = RefinedModel(base, init.refiner.network, {**init.recipe, "base": copy.deepcopy(base.recipe)}, ls, info)
        return model, res.get("history", []), int(res.get("epochs", 0))


def compose(
    base_weights: str | Path | None,
    cascade_weights: str | Path | Sequence[str | Path] | None,
    landmark_set: LandmarkSet,
    recipe: dict[str, Any] | None = None,
) -> RefinedModel:
    """A :class:`RefinedModel` from a base model file and a cascade model file (names or paths), or several cascade
    files whose refiners become one ensemble.

    Raises:
        AnatomarkError: a missing ``weights``, a cascade without a refiner, or models of other landmarks.
    """
    if not base_weights or not cascade_weights:
        raise AnatomarkError("A refined recipe needs base.weights (any model) and local.weights (a cascade model)")
    base = load_model(base_weights)
    entries = list(cascade_weights) if isinstance(cascade_weights, list | tuple) else [cascade_weights]
    weights, covers = _members(entries, landmark_set)
    many = len(weights) > 1
    cascades = [load_model(w) for w in weights]
    for cascade, w in zip(cascades, weights):
        if getattr(cascade, "refiner", None) is None:
            raise AnatomarkError(f"{w} has no local refiner (use a cascade or kind: local model for local.weights)")
    for m, w in ((base, base_weights), *zip(cascades, weights)):
        if m.landmark_set.names != landmark_set.names:
            raise AnatomarkError(f"{w} was trained for other landmarks than {landmark_set.name!r}")
    if isinstance(base, RefinedModel):
        raise AnatomarkError(f"{base_weights} is refined already")
    precision = ((recipe or {}).get("base") or {}).get("precision")
    if precision is not None:
        base.set_precision(str(precision))  # checked by the model (unknown ones raise)
    local_recipe, local_net = _refiners(cascades, weights, covers)
    prior = ((recipe or {}).get("local") or {}).get("start_prior_mm")
    if prior is not None:  # an inference setting of the composed model (checked by LocalRefiner)
        local_recipe["start_prior_mm"] = float(prior)
    base.quality = None  # the composed model gets its own calibration (anatomark calibrate)
    name = (recipe or {}).get("name") or f"{base.name}_refined"
    full = {
        "name": name,
        "kind": "refined",
        "landmark_set": landmark_set.name,
        "input": copy.deepcopy(base.recipe.get("input", {})),
        "network": copy.deepcopy(base.recipe.get("network", {})),
        "base": copy.deepcopy(base.recipe),
        "local": local_recipe,
        "train": copy.deepcopy(base.recipe.get("train", {})),  # what a fine-tuning of the base starts from
    }
    info = {
        "base": {"path": str(base_weights), **base.info},
        "local": _local_info(cascades, weights, covers, landmark_set)
        if many
        else {"path": str(weights[0]), **_stage2(cascades[0])},
        "val_mre_mm": None,
    }
    return RefinedModel(base, local_net, full, landmark_set, info)


#: the ``local`` settings that decide what a refiner reads and how its answer is decoded
_SAME_INPUT = ("spacing_mm", "patch_size", "context", "iterations", "decode")


def _stage2(cascade: LandmarkModel) -> dict[str, Any]:
    """A member's refiner training info: a cascade's ``stage2``, or a ``kind: local`` model's own."""
    if kind_of(cascade.recipe) == "local":
        return dict(cascade.info)
    return dict(cascade.info.get("stage2") or {})


#: the keys of a ``local.weights`` entry that answers for some landmarks only
_MEMBER_KEYS = {"weights", "landmarks", "except_landmarks"}


def _members(entries: Sequence[Any], ls: LandmarkSet) -> tuple[list[Any], list[list[int] | None]]:
    """``local.weights`` entries (a name / path, or ``{weights, landmarks | except_landmarks}``) -> the files and,
    per member, the landmark indices it answers for (``None``: all).

    Raises:
        AnatomarkError: an entry without ``weights``, with both keys, or naming landmarks not in ``ls``.
    """
    weights: list[Any] = []
    covers: list[list[int] | None] = []
    for e in entries:
        if not isinstance(e, dict):
            weights.append(e)
            covers.append(None)
            continue
        keys = set(e)
        if not e.get("weights") or keys - _MEMBER_KEYS or ("landmarks" in keys) == ("except_landmarks" in keys):
            raise AnatomarkError(
                f"local.weights entry {e}: use a cascade name or file, or {{weights: <cascade>, landmarks: [...]}} "
                "or {weights: <cascade>, except_landmarks: [...]}"
            )
        names = list(e.get("landmarks") or e.get("except_landmarks") or [])
        if not names:
            raise AnatomarkError(f"local.weights entry {e}: name at least one landmark")
        idx = ls.indices(names, f"local.weights entry {e}: landmark")
        if "except_landmarks" in e:
            idx = [k for k in range(len(ls)) if k not in idx]
        weights.append(e["weights"])
        covers.append(idx)
    return weights, covers


def _local_info(
    cascades: Sequence[LandmarkModel],
    weights: Sequence[Any],
    covers: Sequence[list[int] | None],
    ls: LandmarkSet,
) -> dict[str, Any]:
    """Provenance of an ensemble of refiners: each member's file, training info and the landmarks it answers for."""
    out = []
    for c, w, cov in zip(cascades, weights, covers):
        member = {"path": str(w), **_stage2(c)}
        if cov is not None:
            member["landmarks"] = [ls.names[k] for k in cov]
        out.append(member)
    return {"members": out}


def _refiners(
    cascades: Sequence[LandmarkModel], weights: Sequence[Any], covers: Sequence[list[int] | None]
) -> tuple[dict[str, Any], torch.nn.Module]:
    """The ``local`` recipe and network of one cascade, or of a :class:`~anatomark.networks.SoftmaxEnsemble` of the
    refiners of several (which must read the same patches: :data:`_SAME_INPUT`; ``covers``: per member the landmark
    indices it answers for, ``None`` for all). A specialist's training setting ``focus`` is not kept."""
    first = copy.deepcopy(cascades[0].recipe["local"])
    first.pop("focus", None)
    partial = any(c is not None for c in covers)
    if len(cascades) == 1:
        if partial:
            raise AnatomarkError("a refiner that answers for some landmarks only needs other members for the rest")
        return first, cascades[0].refiner.network
    for c, w in zip(cascades[1:], weights[1:]):
        other = c.recipe["local"]
        diff = [k for k in _SAME_INPUT if other.get(k) != first.get(k)]
        if diff:
            raise AnatomarkError(
                f"{w}'s refiner reads other patches than {weights[0]}'s (local {', '.join(diff)} differ); "
                "an ensemble needs refiners with the same local settings"
            )
    members = [copy.deepcopy(c.recipe["local"]["network"]) for c in cascades]
    first["network"] = {
        "name": "softmax_ensemble",
        "spatial_dims": int(members[0].get("spatial_dims", 2)),
        "in_channels": int(members[0].get("in_channels", 1)),
        "members": members,
    }
    if partial:
        first["network"]["covers"] = [None if c is None else list(c) for c in covers]
        check_covers(first["network"]["covers"], len(cascades), len(cascades[0].landmark_set))
    net = SoftmaxEnsemble(
        first["network"]["spatial_dims"],
        [c.refiner.network for c in cascades],
        first["network"].get("covers"),
    )
    return first, net


register_family(RefinedFamily())
