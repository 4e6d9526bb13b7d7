"""The project's native dataset layout.

::

    <root>/images/<file>            X-rays (any format :func:`anatomark.data.load_image` reads)
    <root>/landmarks_<annotator>.csv one CSV per annotator (see :func:`read_landmark_csv`)
    <root>/splits.json              {"train": [files], "test1": [files], ...}   (optional: one split "all")
    <root>/dataset.yaml             optional: {landmark_set: <name>, spacing_mm: [sx, sy]}

The AASCE 2019 spine layout (:mod:`anatomark.data.aasce`) is read too. Its public part has no test split (the
challenge's test images are withheld), so it gets a fixed, content-independent one: ``holdout`` = the images
whose name hashes to 0 mod 5 (about 20 %), ``train`` = the rest, ``all`` = every image. The hash of the name
(not a shuffled order) keeps an image in the same split when images are added or removed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from anatomark.config import LandmarkSet, load_landmark_set, load_yaml
from anatomark.data.annotations import read_landmark_csv
from anatomark.errors import AnnotationError


class LandmarkDataset:
    """Images and landmark annotations of one split.

    Args:
        root: dataset folder in the layout above.
        split: name of a split in ``splits.json`` (``all`` = every annotated image).
        annotator: ``senior``/``junior``/any ``landmarks_<annotator>.csv``, or ``mean`` for the mean of all
            annotators' CSVs.
        landmark_set: set name or object; defaults to ``dataset.yaml``'s ``landmark_set``.
        spacing: ``(sx, sy)`` mm/px for files without spacing; defaults to ``dataset.yaml`` then the set's default.

    Each item is ``{"image": path, "landmarks": (K, 2) float array (x, y; NaN = missing), "spacing": (sx, sy),
    "id": file name}``.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        annotator: str = "senior",
        landmark_set: str | LandmarkSet | None = None,
        spacing: tuple[float, float] | None = None,
    ) -> None:
        self.root = Path(root)
        if not (self.root / "images").is_dir():
            raise AnnotationError(f"{self.root} is not a landmark dataset: it has no images/ folder")
        from anatomark.data.aasce import is_aasce_dataset

        if is_aasce_dataset(self.root):
            self._init_aasce(split, landmark_set or "aasce2019_spine", spacing)
            return
        meta: dict[str, Any] = load_yaml(self.root / "dataset.yaml") if (self.root / "dataset.yaml").is_file() else {}
        ls = landmark_set or meta.get("landmark_set")
        if ls is None:
            raise AnnotationError(
                f"Say which landmark set {self.root} uses (dataset.yaml 'landmark_set' or --landmark-set)"
            )
        self.landmark_set = ls if isinstance(ls, LandmarkSet) else load_landmark_set(ls)
        sp = spacing or meta.get("spacing_mm") or self.landmark_set.default_spacing_mm
        self.spacing = (float(sp[0]), float(sp[1])) if sp is not None else None
        self.annotator = annotator
        self.split = split
        names = self.landmark_set.names
        if annotator == "mean":
            csvs = sorted(self.root.glob("landmarks_*.csv"))
            if not csvs:
                raise AnnotationError(f"No landmarks_<annotator>.csv in {self.root}")
            tables = [read_landmark_csv(c, names) for c in csvs]
            common = set(tables[0]).intersection(*tables[1:])
            points = {k: np.nanmean(np.stack([t[k] for t in tables]), axis=0) for k in sorted(common)}
        else:
            csv_path = self.root / f"landmarks_{annotator}.csv"
            if not csv_path.is_file():
                found = [p.stem.removeprefix("landmarks_") for p in self.root.glob("landmarks_*.csv")]
                raise AnnotationError(f"No annotation by {annotator!r} in {self.root}; available: {found + ['mean']}")
            points = read_landmark_csv(csv_path, names)
        self.all_points = points
        files = self._split_files(split)
        missing = [f for f in files if f not in points]
        if missing:
            raise AnnotationError(f"{len(missing)} image(s) of split {split!r} have no annotation, e.g. {missing[0]}")
        self.items = [
            {"image": str(self.root / "images" / f), "landmarks": points[f], "spacing": self.spacing, "id": f}
            for f in files
        ]

    def _init_aasce(self, split: str, landmark_set: str | LandmarkSet, spacing: tuple[float, float] | None) -> None:
        from anatomark.data.aasce import load_aasce

        self.landmark_set = landmark_set if isinstance(landmark_set, LandmarkSet) else load_landmark_set(landmark_set)
        if len(self.landmark_set) != 68:
            raise AnnotationError(
                f"{self.root} is an AASCE spine dataset (68 points); landmark set {self.landmark_set.name!r} has "
                f"{len(self.landmark_set)} landmarks - use aasce2019_spine"
            )
        if split not in AASCE_SPLITS:
            raise AnnotationError(
                f"Unknown split {split!r} for the AASCE dataset {self.root}; use one of {AASCE_SPLITS}"
            )
        self.spacing = (float(spacing[0]), float(spacing[1])) if spacing is not None else None
        self.annotator = "aasce"
        self.split = split
        items = load_aasce(self.root)
        self.all_points = {it["id"]: it["landmarks"] for it in items}
        self.items = [
            {
                "image": it["image"],
                "landmarks": it["landmarks"],
                "spacing": self.spacing,
                "id": it["id"],
                "angles": it["angles"],
            }
            for it in items
            if split == "all" or (aasce_split_of(it["id"]) == split)
        ]

    def _split_files(self, split: str) -> list[str]:
        sp = self.root / "splits.json"
        if split == "all":
            return sorted(self.all_points)
        if not sp.is_file():
            raise AnnotationError(f"{self.root} has no splits.json; use split 'all'")
        splits = json.loads(sp.read_text())
        if split not in splits:
            raise AnnotationError(f"Unknown split {split!r}; {sp} has {sorted(splits)} (or use 'all')")
        return list(splits[split])

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.items[i]


AASCE_SPLITS = ("train", "holdout", "all")


def aasce_split_of(name: str) -> str:
    """``holdout`` for about one image in five (by a hash of its file name), else ``train``."""
    return "holdout" if int(hashlib.sha1(name.encode()).hexdigest(), 16) % 5 == 0 else "train"
