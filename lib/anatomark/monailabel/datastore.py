"""A MONAI Label local datastore that understands landmark labels.

Every label saved through ``PUT /datastore/label`` (and every ``save_label`` of an infer result) is read into
landmark points first: a Slicer label map with ``label_info=[{name, idx}]``, a Slicer markups JSON or our JSON.
A label that does not match the landmark set, or does not fit the image, is refused with HTTP 422 before anything
is written. Accepted labels are stored as a label map in the image's geometry (what viewers display) and the exact
points go into the label info (``landmarks``: ``[[x, y] | null] * K``, ``spacing_mm``), which training and scoring
read.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import HTTPException
from monailabel.datastore.local import LocalDatastore

from anatomark.config import LandmarkSet
from anatomark.data.image_io import load_image
from anatomark.errors import AnatomarkError
from anatomark.monailabel.labels import (
    draw_labelmap,
    label_radius_px,
    labelmap_points,
    points_from_json,
    points_to_json,
    read_label_points,
    write_labelmap_like,
)

logger = logging.getLogger(__name__)

#: label-info keys written by this datastore
INFO_POINTS = "landmarks"
INFO_SPACING = "spacing_mm"
INFO_SET = "landmark_set"


class LandmarkDatastore(LocalDatastore):
    """:class:`LocalDatastore` whose labels are landmark sets.

    Args:
        datastore_path: studies folder.
        landmark_set: the set labels must match.
        on_label_saved: called with ``(image_id, tag)`` after a label was stored.
        label_radius_mm: radius of the disks of stored label maps.
        **kwargs: passed to :class:`LocalDatastore` (``extensions``, ``auto_reload``, ``read_only``).
    """

    def __init__(
        self,
        datastore_path: str,
        landmark_set: LandmarkSet,
        on_label_saved: Callable[[str, str], None] | None = None,
        label_radius_mm: float = 2.0,
        **kwargs: Any,
    ) -> None:
        self.landmark_set = landmark_set
        self.on_label_saved = on_label_saved
        self.label_radius_mm = label_radius_mm
        super().__init__(datastore_path, **kwargs)

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]) -> str:
        image_path = self.get_image_uri(image_id)
        if not image_path or not os.path.isfile(image_path):
            raise HTTPException(status_code=404, detail=f"Image {image_id!r} is not in the datastore")
        info = dict(label_info or {})
        ls = self.landmark_set
        try:
            image = load_image(image_path, default_spacing=ls.default_spacing_mm)
            points = read_label_points(label_filename, image, image_path, ls, info.get("label_info"))
            radius = label_radius_px(points, image.spacing, self.label_radius_mm)
            canonical = write_labelmap_like(draw_labelmap(points, image, radius, len(ls)), image_path)
        except AnatomarkError as e:
            raise HTTPException(status_code=422, detail=f"Label refused for image {image_id!r}: {e}") from e
        try:
            info.update(
                {
                    INFO_POINTS: points_to_json(points),
                    INFO_SPACING: [float(s) for s in image.spacing],
                    INFO_SET: ls.name,
                    "n_landmarks": int(np.isfinite(points).all(axis=1).sum()),
                    "source_file": Path(label_filename).name,
                }
            )
            self._remove_other_label_files(image_id, label_tag, canonical)
            label_id = super().save_label(image_id, canonical, label_tag, info)
        finally:
            os.unlink(canonical)
        if self.on_label_saved:
            try:
                self.on_label_saved(image_id, label_tag)
            except Exception:  # noqa: BLE001 - a failing hook must not lose the saved label
                logger.exception("on_label_saved hook failed")
        return label_id

    def _remove_other_label_files(self, image_id: str, tag: str, new_file: str) -> None:
        """Drop a previous label of this image/tag stored with another extension (one label file per tag)."""
        old = self.get_label_uri(image_id, tag)
        _, new_ext = self._to_id(os.path.basename(new_file))
        if old and os.path.isfile(old) and not old.endswith(new_ext):
            os.unlink(old)

    def label_points(self, image_id: str, tag: str) -> tuple[np.ndarray, tuple[float, float]] | None:
        """``((K, 2) points, spacing)`` of an image's label with ``tag``, or ``None`` when it has none.

        Uses the exact points stored at save time; labels dropped into the folder by hand are decoded from the label
        map (centroids, identity value mapping).
        """
        info = self.get_label_info(image_id, tag)
        uri = self.get_label_uri(image_id, tag)
        if not info and not (uri and os.path.isfile(uri)):
            return None
        ls = self.landmark_set
        if info.get(INFO_POINTS) is not None:
            sp = info.get(INFO_SPACING) or ls.default_spacing_mm or (1.0, 1.0)
            return points_from_json(info[INFO_POINTS], len(ls)), (float(sp[0]), float(sp[1]))
        if not uri or not os.path.isfile(uri):
            return None
        image = load_image(self.get_image_uri(image_id), default_spacing=ls.default_spacing_mm)
        lm = load_image(uri)
        if lm.shape != image.shape:
            raise AnatomarkError(f"Label of {image_id} does not have the image's size")
        return labelmap_points(lm.array, ls), image.spacing
