"""The ``anatomark measure`` subcommand (kept here so ``anatomark/cli.py`` only wires it in).

Inputs: points JSON files in the ``anatomark infer`` format (``{"landmarks": [{name, x, y, ...}], "spacing_mm":
[sx, sy], "landmark_set": name, "image": path}``), landmark CSVs (with ``--landmark-set``), or a whole dataset
(``--dataset``: the native layout, or an AASCE 2019 folder with ``labels/angles.csv``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

from anatomark.errors import AnatomarkError, AnnotationError


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``measure`` to an argparse subparsers object."""
    m = sub.add_parser(
        "measure",
        help="clinical measurements (angles, classes) from landmark points; CSV/JSON table and PNG reports",
        description="Compute every measurement the landmark set supports (ISBI 2015 cephalometric types, YEN "
        "occlusion class, AASCE Cobb angles, lower-limb alignment) from points.",
    )
    m.add_argument("inputs", nargs="*", help="points JSON (anatomark infer output) or landmark CSV files")
    m.add_argument("--landmark-set", default=None, help="landmark set name or YAML (required for CSV input)")
    m.add_argument("--dataset", default=None, help="measure all images of a dataset folder instead")
    m.add_argument("--split", default="all", help="dataset split (default: all)")
    m.add_argument("--annotator", default="senior", help="dataset annotator (senior | junior | mean | ...)")
    m.add_argument("--spacing", type=float, nargs="+", default=None, help="override mm/px: one value or sx sy")
    m.add_argument("--images-dir", default=None, help="where the images of a CSV input live (for reports)")
    m.add_argument("--out", default=None, help="write the table here: .csv (flat rows) or .json (per image)")
    m.add_argument("--report", default=None, help="folder for PNG reports (lines and values drawn)")
    m.set_defaults(func=cmd_measure)
    return m


def _jobs_from_json(path: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    from anatomark.config import load_landmark_set
    from anatomark.data.points_json import load_points_json, read_points_json
    from anatomark.measurements.base import unreliable_image_reason

    doc = load_points_json(path)
    if not isinstance(doc.get("landmarks"), list):
        raise AnnotationError(f"{path}: expected a JSON object with a 'landmarks' list (anatomark infer output)")
    set_name = args.landmark_set or doc.get("landmark_set")
    if not set_name:
        raise AnnotationError(f"{path} names no 'landmark_set'; pass --landmark-set")
    ls = load_landmark_set(set_name)
    try:
        pts = read_points_json(doc, ls.names, ls.name)
    except AnnotationError as e:
        raise AnnotationError(f"{path}: {e}") from e
    spacing = args.spacing if args.spacing is not None else doc.get("spacing_mm")
    image = doc.get("image")
    if image and not Path(image).is_absolute() and not Path(image).exists() and (path.parent / image).exists():
        image = str(path.parent / image)
    # an anatomark infer answer carries its verdict: keep withholding what it did not stand behind
    quality = doc.get("quality") if isinstance(doc.get("quality"), dict) else {}
    image_reason = None
    if quality.get("reliable") is False:
        image_reason = unreliable_image_reason(quality.get("warnings") or [])
    bad = {
        lm["name"]: ("is outside the image" if lm.get("in_image") is False else "is unreliable")
        for lm in doc["landmarks"]
        if isinstance(lm, dict) and (lm.get("reliable") is False or lm.get("in_image") is False)
    }
    orientation = (doc.get("orientation") or {}).get("applied") if isinstance(doc.get("orientation"), dict) else None
    return [
        {"id": path.name, "image": image, "points": pts, "landmark_set": ls, "spacing": spacing,
         "size_wh": doc.get("size_wh"), "withhold": (image_reason, bad), "orientation": orientation}
    ]  # fmt: skip


def _jobs_from_csv(path: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    from anatomark.config import load_landmark_set
    from anatomark.data.annotations import read_landmark_csv

    if not args.landmark_set:
        raise AnatomarkError(f"{path}: a CSV input needs --landmark-set")
    ls = load_landmark_set(args.landmark_set)
    table = read_landmark_csv(path, ls.names)
    img_dir = Path(args.images_dir) if args.images_dir else None
    return [
        {"id": name, "image": str(img_dir / name) if img_dir else None, "points": pts, "landmark_set": ls,
         "spacing": args.spacing, "size_wh": None}
        for name, pts in table.items()
    ]  # fmt: skip


def _jobs_from_dataset(args: argparse.Namespace) -> list[dict[str, Any]]:
    from anatomark.config import load_landmark_set
    from anatomark.data.aasce import is_aasce_dataset, load_aasce

    root = Path(args.dataset)
    if is_aasce_dataset(root):
        ls = load_landmark_set(args.landmark_set or "aasce2019_spine")
        return [
            {"id": it["id"], "image": it["image"], "points": it["landmarks"], "landmark_set": ls,
             "spacing": args.spacing, "size_wh": it["size_wh"]}
            for it in load_aasce(root)
        ]  # fmt: skip
    from anatomark.data.dataset import LandmarkDataset

    ds = LandmarkDataset(root, split=args.split, annotator=args.annotator, landmark_set=args.landmark_set)
    return [
        {"id": it["id"], "image": it["image"], "points": it["landmarks"], "landmark_set": ds.landmark_set,
         "spacing": args.spacing if args.spacing is not None else it["spacing"], "size_wh": None}
        for it in ds.items
    ]  # fmt: skip


def cmd_measure(args: argparse.Namespace) -> int:
    from anatomark.data.aasce import image_size_wh
    from anatomark.measurements.base import withhold
    from anatomark.measurements.registry import measure
    from anatomark.measurements.report import format_table, save_measurement_report, table_rows, write_table
    from anatomark.orientation import ORIENTATIONS

    if not args.inputs and not args.dataset:
        raise AnatomarkError("give points JSON/CSV files or --dataset")
    jobs: list[dict[str, Any]] = _jobs_from_dataset(args) if args.dataset else []
    for f in args.inputs:
        p = Path(f)
        if not p.is_file():
            raise AnnotationError(f"Input not found: {p}")
        jobs += _jobs_from_csv(p, args) if p.suffix.lower() == ".csv" else _jobs_from_json(p, args)
    rows, docs = [], []
    for job in jobs:
        ls = job["landmark_set"]
        has_image = bool(job["image"]) and Path(job["image"]).is_file()
        if job["size_wh"] is None and has_image:
            job["size_wh"] = image_size_wh(job["image"])
        orient = ORIENTATIONS.get(job.get("orientation") or "identity", ORIENTATIONS["identity"])
        if orient.name != "identity" and job["size_wh"]:
            # measure the anatomy, not its mirror: points (and the report's image) in the orientation analysed
            w, h = (int(v) for v in job["size_wh"])
            job["points"] = orient.points_forward(job["points"], (w, h))
            job["size_wh"] = (h, w) if orient.swaps_axes else (w, h)
            if job["spacing"] is not None and orient.swaps_axes:
                sp = np.broadcast_to(np.asarray(job["spacing"], float), (2,))
                job["spacing"] = (float(sp[1]), float(sp[0]))
        results = withhold(measure(job["points"], ls, job["spacing"], job["size_wh"]), *job.get("withhold", (None, {})))
        rows += table_rows(job["id"], ls.name, results)
        spacing = job["spacing"] if job["spacing"] is not None else ls.default_spacing_mm
        docs.append(
            {"image": job["image"] or job["id"], "landmark_set": ls.name,
             "spacing_mm": None if spacing is None else list(np.broadcast_to(np.asarray(spacing, float), (2,))),
             "measurements": [r.to_dict() for r in results]}
        )  # fmt: skip
        if args.report:
            img = None
            if has_image:
                from anatomark.data.image_io import load_image

                img = load_image(job["image"], spacing=job["spacing"], default_spacing=ls.default_spacing_mm)
                if orient.name != "identity":
                    img = orient.apply_image(img)
            stem = Path(job["id"]).name.split(".")[0]
            out = save_measurement_report(
                Path(args.report) / f"{stem}_measurements.png", job["points"], ls.shorts, ls.colors, results,
                image=img, size_wh=job["size_wh"],
            )  # fmt: skip
            print(f"report: {out}")
    if args.out:
        write_table(args.out, rows, docs)
        print(f"Wrote {len(rows)} measurements of {len(jobs)} image(s) to {args.out}")
    else:
        print(format_table(rows))
    if not rows:
        print("warning: no measurements (does the landmark set define any?)", file=sys.stderr)
    return 0
