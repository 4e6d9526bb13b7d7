"""MONAI Label inference task for landmark models (glue: all landmark logic is in :mod:`anatomark.model`)."""

from __future__ import annotations

import logging
import math
import os
import time
from typing import Any

import numpy as np
import torch
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from anatomark.data.image_io import load_image
from anatomark.errors import AnatomarkError
from anatomark.inference import ORIENTATION_MODES, analyse
from anatomark.monailabel.labels import (
    RESULT_FORMATS,
    draw_labelmap,
    label_radius_px,
    viewer_geometry,
    write_labelmap_like,
    write_markups_like,
)
from anatomark.monailabel.published import PublishedModel

logger = logging.getLogger(__name__)


def training_running() -> bool:
    """Whether a MONAI Label training subprocess is running right now."""
    try:
        from monailabel.utils.async_tasks.utils import processes

        return bool(processes("train"))
    except Exception:  # noqa: BLE001 - outside a server there is no task registry
        return False


def parse_spacing(value: Any) -> tuple[float, float] | None:
    """The ``spacing`` request option: ``None``, one number or ``[sx, sy]`` in mm/px (positive, at most 10 mm/px)."""
    if value is None:
        return None
    vals = value if isinstance(value, (list, tuple)) else [value]
    ok = len(vals) in (1, 2) and all(
        not isinstance(v, bool) and isinstance(v, (int, float)) and 0 < v <= 10 and math.isfinite(v) for v in vals
    )
    if not ok:
        raise AnatomarkError(f"spacing must be a number or [sx, sy] in mm per pixel (0 < s <= 10), got {value!r}")
    return (float(vals[0]), float(vals[-1]))


class LandmarkInferTask(InferTask):
    """``/infer/<model>``: landmarks of one 2D X-ray as a label map (landmark k = disk of value k) or markups.

    Request options (``params``): ``result_format`` (``labelmap`` | ``slicer_markups``), ``label_radius_mm``
    (disk radius, default 2 mm, at least 2 px), ``spacing`` (override mm/px).

    ``threads`` > 0 sets torch's intra-op threads for inference; -1 (``auto``, the default) uses every core unless a
    training subprocess is running, then half of them. On a CPU shared with a training process, one
    thread is much faster than two (measured: 0.16 s vs 1.5 s for the network while a training used both cores,
    because OpenMP threads spin at barriers when the cores are oversubscribed).

    ``orientation`` (``auto`` default, ``none`` or a transform name, see :func:`anatomark.inference.analyse`).

    The JSON result holds ``landmarks: [{index, name, x, y, x_mm, y_mm, confidence, expected_error_mm, in_image,
    reliable}]`` (x, y in original pixels; ``null`` for a landmark outside the image), ``quality`` (``reliable``,
    ``score``, ``warnings``), ``orientation``, ``measurements`` (``value: null`` + ``reason`` unless computed from
    reliable landmarks), ``spacing_mm``, ``model``/``model_version``, ``label_names`` and ``latencies``.

    Without ``save_label``, the predicted points of an image of the datastore are kept as its ``original`` label
    (a points JSON, written in the background; not once the image has a final label), what ``landmark_mre`` scoring
    compares the user's final label with (:func:`anatomark.monailabel.datastore.keep_original_for_path`).
    """

    infer_type: str = InferType.SEGMENTATION
    result_formats: tuple[str, ...] = RESULT_FORMATS

    def __init__(
        self, handle: PublishedModel, description: str = "", label_radius_mm: float = 2.0, threads: int = 0
    ) -> None:
        model = None
        try:
            model, _ = handle.get()
        except AnatomarkError as e:
            logger.warning(f"{handle.name}: {e}")
        self.handle = handle
        self.landmark_set = model.landmark_set if model else None
        labels = self.landmark_set.labels if self.landmark_set else {}
        desc = description or (
            f"{len(labels)} landmarks of {self.landmark_set.name}: {self.landmark_set.description}"
            if self.landmark_set
            else "landmark model"
        )
        super().__init__(
            type=self.infer_type,
            labels=labels,
            dimension=2,
            description=desc,
            config={"result_format": list(self.result_formats), "label_radius_mm": float(label_radius_mm)},
        )
        self.label_radius_mm = float(label_radius_mm)
        self.threads = int(threads)

    def is_valid(self) -> bool:
        return self.handle.exists() and self.landmark_set is not None

    def get_path(self, validate: bool = True) -> str | None:
        p = self.handle.path()
        return str(p) if p else None

    def __call__(self, request: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
        t0 = time.perf_counter()
        threads = self.threads
        if threads < 0:  # auto: every core, but only half while a training subprocess competes for them
            cores = os.cpu_count() or 2
            threads = max(1, cores // 2) if training_running() else cores
        if threads > 0 and torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        image_path = request.get("image")
        if not isinstance(image_path, str) or not image_path:
            raise AnatomarkError("Provide an image id of the datastore or upload an image file")
        fmt = request.get("result_format") or self.result_formats[0]
        if isinstance(fmt, list):
            fmt = fmt[0]
        if fmt not in self.result_formats:
            raise AnatomarkError(f"Unknown result_format {fmt!r}; use one of {', '.join(self.result_formats)}")
        radius_mm = request.get("label_radius_mm", self.label_radius_mm)
        if isinstance(radius_mm, bool) or not isinstance(radius_mm, (int, float)) or not 0 < radius_mm <= 50:
            raise AnatomarkError(f"label_radius_mm must be a number in (0, 50] mm, got {radius_mm!r}")
        spacing = parse_spacing(request.get("spacing"))
        orientation = request.get("orientation", "auto")
        if orientation not in ORIENTATION_MODES:
            raise AnatomarkError(f"orientation must be one of {', '.join(ORIENTATION_MODES)}; got {orientation!r}")
        model, version = self.handle.get()
        ls = model.landmark_set
        t1 = time.perf_counter()
        image = load_image(image_path, spacing=spacing, default_spacing=ls.default_spacing_mm)
        t2 = time.perf_counter()
        analysis = analyse(model, image, orientation=orientation)
        pred = analysis.prediction
        body = analysis.to_dict()
        shown = np.where(analysis.in_image[:, None], pred.points, np.nan)  # a landmark not in the image: no point
        t3 = time.perf_counter()
        if fmt == "labelmap":
            radius = label_radius_px(shown, image.spacing, radius_mm)
            lm = draw_labelmap(shown, image, radius, len(ls))
            t4 = time.perf_counter()
            out = write_labelmap_like(lm, image_path)
        elif fmt == "slicer_rois":
            radius = label_radius_px(shown, image.spacing, radius_mm)
            t4 = time.perf_counter()
            out = write_roi_markups_like(shown, ls, viewer_geometry(image_path, image), radius)
        else:
            radius = None
            t4 = time.perf_counter()
            out = write_markups_like(shown, ls, viewer_geometry(image_path, image))
        t5 = time.perf_counter()
        if not request.get("save_label"):  # 3D Slicer never asks: keep the prediction for scoring (issue 16)
            from anatomark.monailabel.datastore import keep_original_for_path

            keep_original_for_path(image_path, shown, image.spacing, self.handle.name, version)
        conf = np.asarray(pred.confidence, dtype=np.float64)
        result = {
            "model": self.handle.name,
            "model_version": version,
            "model_info": {k: v for k, v in model.info.items() if isinstance(v, (int, float, str)) or v is None},
            "landmark_set": ls.name,
            "label_names": ls.labels,
            "result_format": fmt,
            "size_wh": list(image.size_wh),
            "spacing_mm": [float(s) for s in image.spacing],
            "spacing_source": image.spacing_source,
            "label_radius_px": None if radius is None else round(float(radius), 2),
            "mean_confidence": round(float(conf.mean()), 4),
            **body,
            "latencies": {
                "model_load": round(t1 - t0, 4),
                "pre": round(t2 - t1 + pred.timings.get("preprocess", 0.0), 4),
                "infer": round(t3 - t2 - pred.timings.get("preprocess", 0.0), 4),
                "post": round(t4 - t3, 4),
                "write": round(t5 - t4, 4),
                "total": round(t5 - t0, 4),
            },
        }
        return out, result


# ---------------------------------------------------------------------------------------------------- 3D Slicer points
def roi_markups_document(
    points: np.ndarray, landmark_set: Any, geometry: Any, half_size_px: float = 5.0
) -> dict[str, Any]:
    """A Slicer markups document with one small box ROI per landmark, centred on it (LPS, in the geometry Slicer gives
    the image; landmarks absent or outside the image have no ROI).

    What the stock MONAILabel module can edit and send back for a ``detection`` model: it loads a ``.json`` result with
    ``slicer.util.loadMarkups`` and, on *Submit Label*, sends every ROI node of the scene (each one's own markups JSON,
    in scene order) as ``{"@schema", "markups": [...]}``, never point lists. Each ROI's control point carries the
    landmark's name (``label``) and description, so a save reads back by name
    (:func:`anatomark.monailabel.labels.json_points`); the module renames the ROI nodes, not their control points.
    """
    from anatomark.monailabel.labels import markups_document

    doc = markups_document(points, landmark_set.names, geometry, landmark_set.descriptions)
    fiducials = doc["markups"][0]
    sx, sy = (float(abs(v)) for v in geometry.spacing)
    rois = []
    for cp in fiducials["controlPoints"]:
        if cp.get("positionStatus") != "defined":
            continue
        center = [float(v) for v in cp["position"]]
        rois.append(
            {
                "type": "ROI",
                "coordinateSystem": "LPS",
                "coordinateUnits": "mm",
                "locked": False,
                "fixedNumberOfControlPoints": True,
                "labelFormat": "%N-%d",
                "roiType": "Box",
                "center": center,
                "orientation": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
                "size": [2 * half_size_px * sx, 2 * half_size_px * sy, 1.0],
                "insideOut": False,
                "controlPoints": [{**cp, "id": cp.get("id", "1"), "position": center}],
            }
        )
    return {"@schema": doc["@schema"], "markups": rois}


def write_roi_markups_like(
    points: np.ndarray, landmark_set: Any, geometry: Any, radius_px: float, directory: str | None = None
) -> str:
    """Write :func:`roi_markups_document` (box half-size ``radius_px``) to a new temp ``.json`` file."""
    import json
    import tempfile

    fd, out = tempfile.mkstemp(suffix=".json", dir=directory)
    with os.fdopen(fd, "w") as f:
        json.dump(roi_markups_document(points, landmark_set, geometry, max(2.0, float(radius_px))), f, indent=1)
    return out


class LandmarkPointsInferTask(LandmarkInferTask):
    """``/infer/<model>_points``: the same model as a ``detection`` task for 3D Slicer's stock MONAILabel module.

    The result is a markups JSON with one small box ROI per landmark (:func:`roi_markups_document`), named by landmark;
    the module shows them as draggable boxes (drag the centre handle) and saves them back as a markups JSON of ROIs,
    which the label save path accepts as the landmarks (by control point label). The JSON result (``landmarks``,
    ``quality``, ``measurements`` ...) is the segmentation task's. ``result_format`` may also be ``slicer_markups``
    (a point list: named points, but the stock module does not send point lists back).
    """

    infer_type: str = InferType.DETECTION
    result_formats: tuple[str, ...] = ("slicer_rois", "slicer_markups")
