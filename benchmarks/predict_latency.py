"""In-process prediction latency of several models on the same ISBI Test1 images (reading the file excluded).

Usage:
    .venv/bin/python benchmarks/predict_latency.py --models isbi2015_cascade isbi2015_unet_seg_refined \
        --out benchmarks/results/predict_latency.md

Each model is loaded, warmed up on one image, then timed on ``--images`` more (``model.predict`` only); the report
gives the median and p95 per model with the command, date, commit and machine. Run it on an idle machine.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from _report import provenance, write_report

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", required=True, help="model names or .pt files")
    ap.add_argument("--dataset", default=str(REPO.parent / "shared" / "datasets" / "isbi2015"))
    ap.add_argument("--split", default="test1")
    ap.add_argument("--images", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "predict_latency.md"))
    args = ap.parse_args()
    if not (Path(args.dataset) / "images").is_dir():
        print(f"SKIP: dataset not found at {args.dataset}")
        return 0
    import torch

    from anatomark.data.dataset import LandmarkDataset
    from anatomark.data.image_io import load_image
    from anatomark.model import load_model

    torch.set_num_threads(args.threads)
    ds = LandmarkDataset(args.dataset, split=args.split, annotator="mean", landmark_set="isbi2015_cephalometric")
    imgs = [load_image(it["image"], spacing=it.get("spacing")) for it in ds.items[: args.images + 1]]
    rows = []
    for name in args.models:
        model = load_model(name)
        model.predict(imgs[0])
        t = []
        for im in imgs[1:]:
            t0 = time.perf_counter()
            model.predict(im)
            t.append(time.perf_counter() - t0)
        rows.append(
            {"model": name, "median_ms": float(np.median(t) * 1e3), "p95_ms": float(np.percentile(t, 95) * 1e3)}
        )
        print(f"{name}: median {rows[-1]['median_ms']:.0f} ms")
    lines = [
        "# Prediction latency (in process, same images)",
        "",
        *provenance(args.threads),
        f"- Images: the first {args.images} of `{args.split}` after one warm-up image (`model.predict` only, decoded "
        "image in memory; the server adds reading, orientation, quality and JSON)",
        "",
        "| model | median ms | p95 ms |",
        "|---|---|---|",
        *[f"| {r['model']} | {r['median_ms']:.0f} | {r['p95_ms']:.0f} |" for r in rows],
        "",
    ]
    write_report(args.out, lines, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
