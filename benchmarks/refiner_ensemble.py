"""Refiners and their ensembles in front of every base model, on the validation images only (issue 17).

Usage:
    .venv/bin/python benchmarks/refiner_ensemble.py --refiners isbi2015_cascade runs/cascade_mean_seed1/model.pt \
        runs/cascade_mean_seed2/model.pt --out benchmarks/results/refiner_ensemble.md

Each base model predicts the 15 held-out validation images of the training split (the recipes' shared split,
``train.val_fraction`` 0.1, ``val_seed`` 0; mean of both annotators); every point is then refined once by each
refiner (r0, r1, ...), by each pair and by all of them together, two ways: ``softmax`` averages the refiners'
spatial-softmax maps and decodes once (:class:`anatomark.networks.SoftmaxEnsemble`, what a ``kind: refined`` model
with several ``local.weights`` does), ``points`` averages the points each refiner decodes. Nothing here reads a test
split; the table is what the shipped ensemble was chosen on.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np
from _report import provenance, write_report
from _validation import isbi_validation

REPO = Path(__file__).resolve().parents[1]
BASES = [
    "isbi2015_heatmap_unet",
    "isbi2015_unet_seg",
    "isbi2015_fpn_seg",
    "isbi2015_appearance_context",
    "isbi2015_seg_regression",
    "isbi2015_farnet",
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--refiners", nargs="+", required=True, help="cascade model names or .pt files")
    ap.add_argument("--bases", nargs="+", default=BASES, help="base model names or .pt files")
    ap.add_argument("--dataset", default=str(REPO.parent / "shared" / "datasets" / "isbi2015"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "refiner_ensemble.md"))
    args = ap.parse_args()
    if not (Path(args.dataset) / "images").is_dir():
        print(f"SKIP: dataset not found at {args.dataset}")
        return 0
    import torch
    from tqdm import tqdm

    from anatomark.families.refined import compose
    from anatomark.model import load_model
    from anatomark.transforms.functional import scale_intensity

    torch.set_num_threads(args.threads)
    val = isbi_validation(args.dataset)
    ls, items, images = val.landmark_set, val.items, val.images

    def score(points: np.ndarray) -> tuple[float, float]:
        err = val.errors(points)
        return float(np.nanmean(err)), float(100 * np.mean(err < 2.0))

    scaled = [scale_intensity(im.array) for im in images]
    fines: dict[float, list[np.ndarray]] = {}  # the fine images, once per refiner spacing (not per refiner and base)

    def refine(refiner, base_points: np.ndarray) -> np.ndarray:  # noqa: ANN001
        if refiner.spacing_mm not in fines:
            fines[refiner.spacing_mm] = [refiner.fine_image(a, im.shape, im.spacing) for a, im in zip(scaled, images)]
        fine = fines[refiner.spacing_mm]
        return np.stack([refiner.refine_in_image(f, im.shape, p)[0] for f, im, p in zip(fine, images, base_points)])

    n = len(args.refiners)
    singles = [load_model(r).refiner for r in args.refiners]
    combos = [c for k in range(2, n + 1) for c in itertools.combinations(range(n), k)]
    ensembles = {c: compose(args.bases[0], [args.refiners[i] for i in c], ls).refiner for c in combos}
    rows: dict[str, dict[str, tuple[float, float]]] = {}
    for base_name in tqdm(args.bases, desc="Bases", unit="model"):
        base = load_model(base_name)
        base_points = np.stack([base.predict(im).points for im in images])
        refined = [refine(r, base_points) for r in singles]
        row = {"base alone": score(base_points)}
        row.update({f"r{i}": score(p) for i, p in enumerate(refined)})
        for c in combos:
            tag = "".join(str(i) for i in c)
            row[f"softmax {tag}"] = score(refine(ensembles[c], base_points))
            row[f"points {tag}"] = score(np.mean([refined[i] for i in c], axis=0))
        rows[base_name] = row
    cols = list(next(iter(rows.values())))
    lines = [
        "# Refiner ensembles in front of each base model (validation images, mean of both annotators)",
        "",
        *provenance(args.threads),
        f"- Images: the {len(items)} held-out validation images of `train` (val_fraction 0.1, val_seed 0), ground "
        "truth = **mean** annotation; no test image is read",
        "- Refiners: " + ", ".join(f"r{i} = `{r}`" for i, r in enumerate(args.refiners)),
        "- `softmax ij`: refiners i and j as one `softmax_ensemble` (maps averaged, decoded once); `points ij`: the "
        "mean of their points. Cells: MRE mm / SDR 2 mm %.",
        "",
        "| base | " + " | ".join(cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    for base_name, row in rows.items():
        lines.append(f"| {base_name} | " + " | ".join(f"{m:.3f} / {s:.1f}" for m, s in row.values()) + " |")
    mean_row = {c: (np.mean([r[c][0] for r in rows.values()]), np.mean([r[c][1] for r in rows.values()])) for c in cols}
    lines.append("| **mean over bases** | " + " | ".join(f"{m:.3f} / {s:.1f}" for m, s in mean_row.values()) + " |")
    write_report(args.out, lines, {"refiners": args.refiners, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
