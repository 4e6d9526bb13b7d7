"""Active learning for landmark models: next-sample strategy and per-image scoring (MONAI Label glue)."""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
from monailabel.interfaces.datastore import Datastore, DefaultLabelTag
from monailabel.interfaces.tasks.scoring import ScoringMethod
from monailabel.interfaces.tasks.strategy import Strategy

from anatomark.data.image_io import load_image
from anatomark.errors import AnatomarkError
from anatomark.metrics import radial_errors
from anatomark.monailabel.published import PublishedModel

logger = logging.getLogger(__name__)

CONFIDENCE_KEY = "anatomark_confidence"
MRE_KEY = "anatomark_mre_mm"
PROPOSED_KEY = "anatomark_proposed"


class LowestConfidence(Strategy):
    """Pick the unlabelled image the model is least sure about (lowest mean landmark confidence).

    Confidence is the probability mass the model puts near each predicted point (see
    :class:`anatomark.model.Prediction`). Scores are cached in the image info per model version, so each image is
    predicted once per model; at most ``max_candidates`` new images are scored per request.

    An image proposed less than ``skip_recent_minutes`` ago is skipped, so two requests (two users, or a user who
    skips an image) get different images; when every candidate was proposed recently, the one proposed longest ago
    is given again (the strategy rotates). Each proposal is recorded in the image info (``anatomark_proposed``:
    ``{ts, model}``); ``skip_recent_minutes`` 0 gives the lowest-confidence image every time.

    Request options: ``model`` (default: the first served model), ``max_candidates``, ``skip_recent_minutes``,
    ``skip`` (image ids the user skips: never given by this request, and recorded as proposed now, so that they
    come back only after the others, e.g. the viewer's Skip button).
    """

    def __init__(self, handles: dict[str, PublishedModel], max_candidates: int = 64, skip_recent_minutes: float = 10):
        super().__init__("Unlabelled image with the lowest model confidence (mean over landmarks)")
        self.handles = handles
        self.max_candidates = max_candidates
        self.skip_recent_minutes = skip_recent_minutes

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any]:
        name = request.get("model") or next(iter(self.handles), None)
        if name not in self.handles:
            raise AnatomarkError(f"Unknown model {name!r} for the strategy; served: {', '.join(self.handles)}")
        skip = request.get("skip") or []
        if not isinstance(skip, list) or not all(isinstance(i, str) for i in skip):
            raise AnatomarkError(f"skip must be a list of image ids, got {skip!r}")
        unlabeled = set(datastore.get_unlabeled_images())
        try:
            return self._propose(name, sorted(unlabeled - set(skip)), request, datastore)
        finally:  # after the proposal: a skipped image comes back after the one given now
            for image_id in sorted(unlabeled & set(skip)):
                datastore.update_image_info(
                    image_id, {PROPOSED_KEY: {"ts": round(time.time(), 3) + 0.001, "model": name}}
                )

    def _propose(self, name: str, ids: list[str], request: dict[str, Any], datastore: Datastore) -> dict[str, Any]:
        """The lowest-confidence image of ``ids`` not proposed recently (see the class docstring)."""
        if not ids:
            return {}
        model, version = self.handles[name].get()
        budget = int(request.get("max_candidates", self.max_candidates))
        recent_min = request.get("skip_recent_minutes", self.skip_recent_minutes)
        if isinstance(recent_min, bool) or not isinstance(recent_min, (int, float)) or not recent_min >= 0:
            raise AnatomarkError(f"skip_recent_minutes must be a number >= 0, got {recent_min!r}")
        scores: dict[str, float] = {}
        proposed: dict[str, float] = {}
        todo = []
        for image_id in ids:
            info = datastore.get_image_info(image_id)
            proposed[image_id] = float((info.get(PROPOSED_KEY) or {}).get("ts") or 0.0)
            c = info.get(CONFIDENCE_KEY) or {}
            if c.get("model") == name and c.get("model_version") == version and c.get("mean") is not None:
                scores[image_id] = float(c["mean"])
            else:
                todo.append(image_id)
        for image_id in todo[:budget]:
            try:
                img = load_image(
                    datastore.get_image_uri(image_id), default_spacing=model.landmark_set.default_spacing_mm
                )
            except AnatomarkError as e:
                logger.warning(f"Strategy skips {image_id}: {e}")
                continue
            conf = np.asarray(model.predict(img).confidence, dtype=np.float64)
            scores[image_id] = float(conf.mean())
            datastore.update_image_info(
                image_id,
                {
                    CONFIDENCE_KEY: {
                        "model": name,
                        "model_version": version,
                        "mean": round(float(conf.mean()), 5),
                        "min": round(float(conf.min()), 5),
                        "ts": int(time.time()),
                    }
                },
            )
        if not scores:
            return {}
        now = time.time()
        fresh = [i for i in scores if now - proposed[i] >= 60.0 * float(recent_min)]
        if fresh:
            image_id = min(fresh, key=lambda i: (scores[i], i))
        else:  # every candidate was proposed recently: the one proposed longest ago
            image_id = min(scores, key=lambda i: (proposed[i], scores[i], i))
        datastore.update_image_info(image_id, {PROPOSED_KEY: {"ts": round(now, 3), "model": name}})
        return {
            "id": image_id,
            "confidence": scores[image_id],
            "model": name,
            "model_version": version,
            "scored": len(scores),
            "skipped_recent": len(scores) - len(fresh),
        }


class LandmarkMRE(ScoringMethod):
    """Per image: mean radial error (mm) between the model's ``original`` landmarks and the user's ``final`` ones.

    The ``original`` is what ``/infer`` kept automatically (the prediction before the user's correction, see
    :func:`anatomark.monailabel.datastore.keep_original_for_path`) or an infer result saved with ``save_label``.
    Writes ``anatomark_mre_mm`` (``{mre_mm, max_mm, n_landmarks, model, model_version, ts}``) into each image's info,
    readable through ``GET /datastore/image/info?image=<id>`` (or ``GET /datastore/?output=all``) once the scoring
    task is done, and returns ``{"images": {id: {...}}, "mean_mre_mm"}`` (``POST /scoring/landmark_mre`` runs it in
    a subprocess; its return value only reaches the log unless ``run_sync=true``).
    """

    def __init__(self) -> None:
        super().__init__("MRE (mm) between the model's original landmarks and the user's final landmarks")

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for image_id in sorted(datastore.list_images()):
            try:
                orig = datastore.label_points(image_id, DefaultLabelTag.ORIGINAL.value)  # type: ignore[attr-defined]
                final = datastore.label_points(image_id, DefaultLabelTag.FINAL.value)  # type: ignore[attr-defined]
            except AnatomarkError as e:
                logger.warning(f"Scoring skips {image_id}: {e}")
                continue
            if orig is None or final is None:
                continue
            err = radial_errors(orig[0], final[0], final[1])
            finite = err[np.isfinite(err)]
            if not finite.size:
                continue
            info = datastore.get_label_info(image_id, DefaultLabelTag.ORIGINAL.value)
            rec = {
                "mre_mm": round(float(finite.mean()), 4),
                "max_mm": round(float(finite.max()), 4),
                "n_landmarks": int(finite.size),
                "model": info.get("model"),
                "model_version": info.get("model_version"),
                "ts": int(time.time()),
            }
            datastore.update_image_info(image_id, {MRE_KEY: rec})
            out[image_id] = rec
        mean = float(np.mean([r["mre_mm"] for r in out.values()])) if out else None
        return {"method": "landmark_mre", "images": out, "mean_mre_mm": mean}
