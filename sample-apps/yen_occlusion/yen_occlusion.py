"""YEN angle and mandibular occlusion class from annotated points, with the anatomark library (no model needed).

Usage:
    python yen_occlusion.py                                  # the bundled example_points.json
    python yen_occlusion.py --points my_points.json          # anatomark infer output / the same JSON layout
    python yen_occlusion.py --points my_points.csv --own-set # CSV with columns image,S_x,S_y,M_x,M_y,G_x,G_y

Shows three ways to use the library:
1. the built-in ``fernandes2023_yen`` landmark set + ``anatomark.measurements.measure``;
2. your own landmark set (``my_yen_set.yaml``, three points with your own names) registered with
   ``anatomark.measurements.register``, so ``measure`` and ``measurements_for`` know it;
3. a PNG report with the angle drawn (on the X-ray when the image file exists).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from anatomark.config import load_landmark_set
from anatomark.data.annotations import read_landmark_csv
from anatomark.measurements import measure, register, yen_measurements
from anatomark.measurements.report import save_measurement_report

HERE = Path(__file__).resolve().parent


def points_from_json(path: Path, names: list[str]) -> tuple[np.ndarray, dict]:
    """``(K, 2)`` (x, y) pixels in ``names`` order from an infer-style JSON (missing -> NaN)."""
    doc = json.loads(path.read_text())
    pts = np.full((len(names), 2), np.nan)
    for lm in doc["landmarks"]:
        if lm["name"] in names and lm.get("x") is not None:
            pts[names.index(lm["name"])] = (lm["x"], lm["y"])
    return pts, doc


def register_own_set() -> None:
    """Teach anatomark that ``my_yen_set`` supports the YEN measurement (its points are called S, M, G)."""
    register(
        "my_yen_set",
        lambda pts, spacing, names, size: yen_measurements(pts, spacing, names, s="S", m="M", g="G"),
        ["YEN"],
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", default=str(HERE / "example_points.json"), help="points JSON or CSV")
    ap.add_argument("--own-set", action="store_true", help="read the points with my_yen_set.yaml (names S, M, G)")
    ap.add_argument("--out", default=".", help="folder for yen_report.png")
    args = ap.parse_args()

    register_own_set()
    ls = load_landmark_set(HERE / "my_yen_set.yaml") if args.own_set else load_landmark_set("fernandes2023_yen")
    path = Path(args.points)
    rows: list[tuple[str, np.ndarray, str | None, list | None]] = []
    if path.suffix.lower() == ".csv":
        rows = [(img, pts, None, None) for img, pts in read_landmark_csv(path, ls.names).items()]
    else:
        pts, doc = points_from_json(path, ls.names)
        image = doc.get("image")
        if image and not Path(image).is_absolute():
            image = str((path.parent / image).resolve())
        rows = [(path.name, pts, image, doc.get("spacing_mm"))]

    for name, pts, image, spacing in rows:
        (yen,) = measure(pts, ls, spacing)  # every measurement the set supports: here only YEN
        if yen.value is None:
            print(f"{name}: YEN not computable ({yen.reason})")
            continue
        print(f"{name}: YEN = {yen.value:.1f} deg -> Class {yen.klass}: {yen.class_description}")
        img = None
        if image and Path(image).is_file():
            from anatomark.data.image_io import load_image

            img = load_image(image, default_spacing=ls.default_spacing_mm)
        out = save_measurement_report(Path(args.out) / "yen_report.png", pts, ls.shorts, ls.colors, [yen], image=img)
        print(f"report: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
