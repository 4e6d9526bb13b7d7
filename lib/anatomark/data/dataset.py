"""The project's native dataset layout.

::

    <root>/images/<file>            X-rays (any format :func:`anatomark.data.load_image` reads)
    <root>/landmarks_<annotator>.csv one CSV per annotator (see :func:`read_landmark_csv`)
    <root>/splits.json              {"train": [files], "test1": [files], ...}   (optional: one split "all")
    <root>/dataset.yaml             optional: {landmark_set: <name>, spacing_mm: [sx, sy]}
"""

from __future__ import annotations

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
