"""ISBI 2015 cephalometric benchmark: evaluate a model on a split and write a markdown report.

Usage:
    .venv/bin/python benchmarks/isbi2015.py --model default --split test1 --annotator senior \
        --out benchmarks/results/isbi2015.md

Writes the report (command, date, machine, commit, training provenance from the model file, MRE, SDR,
per-landmark table), an SDR-vs-radius plot and overlays of the best and worst images next to it.
Skips with a clear message when ../shared/datasets/isbi2015 is absent.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PUBLISHED = [
    ("FARNet (Ao & Wu 2022), GPU, ImageNet weights, senior", 1.12, [88.03, 92.73, 95.96, 98.48]),
    ("landmarker SCN, mean of annotators", 1.20, [84.5, 90.2, 93.5, 97.2]),
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--dataset", default=str(REPO.parent / "shared" / "datasets" / "isbi2015"))
    ap.add_argument("--split", default="test1")
    ap.add_argument("--annotator", default="senior")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "isbi2015.md"))
    args = ap.parse_args()
    if not (Path(args.dataset) / "images").is_dir():
        print(f"SKIP: ISBI 2015 dataset not found at {args.dataset}")
        return 0

    import torch

    from anatomark.cli import _git_commit
    from anatomark.data.dataset import LandmarkDataset
    from anatomark.data.image_io import load_image
    from anatomark.metrics import DEFAULT_RADII_MM, format_summary, sdr, summarize
    from anatomark.model import load_model, predict_items
    from anatomark.visualize import save_overlay

    torch.set_num_threads(2)
    model = load_model(args.model)
    ls = model.landmark_set
    ds = LandmarkDataset(args.dataset, args.split, args.annotator, ls)
    res = predict_items(model, ds.items, desc=f"{model.name} on {args.split}")
    preds, gts, lat, err = res.points, res.truth, res.seconds, res.errors
    summ = summarize(err, ls.names, DEFAULT_RADII_MM)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    stem = out.stem
    # SDR vs radius plot
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    radii = np.linspace(0, 6, 61)
    curve = [sdr(err, [r])[f"{r:.1f}"] for r in radii]
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    ax.plot(radii, curve, label=model.name)
    for name, _, pts in PUBLISHED[:1]:
        ax.plot(DEFAULT_RADII_MM, pts, "o", label=name.split(",")[0])
    ax.set_xlabel("radius (mm)")
    ax.set_ylabel("SDR (%)")
    ax.set_title(f"ISBI 2015 {args.split} ({args.annotator})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    plot = out.parent / f"{stem}_sdr.png"
    fig.savefig(plot)
    per_img = np.nanmean(np.where(np.isinf(err), np.nan, err), axis=1)
    best, worst = int(np.argmin(per_img)), int(np.argmax(per_img))
    for tag, i in (("best", best), ("worst", worst)):
        img = load_image(ds.items[i]["image"], spacing=ds.items[i]["spacing"])
        save_overlay(out.parent / f"{stem}_{tag}.png", img, preds[i], ls.shorts, ls.colors, truth=gts[i], max_size=800)

    info = model.info
    cmd = " ".join(shlex.quote(a) for a in [".venv/bin/python", "benchmarks/isbi2015.py", *sys.argv[1:]])
    lines = [
        f"# ISBI 2015 cephalometric landmarks: {model.name}",
        "",
        f"- Command: `{cmd}`",
        f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; commit `{_git_commit()}`",
        f"- Machine: {platform.machine()}, {os.cpu_count()} cores, no GPU, torch {torch.__version__} ({torch.get_num_threads()} threads)",
        f"- Evaluated on: `{args.split}` ({len(ds)} images), ground truth = **{args.annotator}** annotation, 0.1 mm/px",
        f"- Model file: `{Path(model.path).relative_to(REPO) if model.path and Path(model.path).is_relative_to(REPO) else model.path}`"
        f" ({Path(model.path).stat().st_size / 1e6:.1f} MB)",
        f"- Training: {info.get('n_train', '?')} training images + {info.get('n_val', '?')} held-out validation images from "
        f"`{info.get('split', '?')}` ({info.get('annotator', '?')}); best epoch {info.get('epoch', '?')} by validation MRE "
        f"({info.get('val_mre_mm', float('nan')):.3f} mm); training time {info.get('train_seconds', 0) / 60:.1f} min on this CPU",
        f"- Latency (load JPEG + predict, in-process): median {np.median(lat) * 1000:.0f} ms, p95 {np.percentile(lat, 95) * 1000:.0f} ms",
        "",
        "## Result",
        "",
        format_summary(summ),
        "",
        "## Published results on Test1 (for comparison; not re-run here)",
        "",
        "| method | MRE mm | SDR 2 | 2.5 | 3 | 4 |",
        "|---|---|---|---|---|---|",
    ]
    for name, mre, pts in PUBLISHED:
        lines.append(f"| {name} | {mre:.2f} | " + " | ".join(f"{p:.2f}" for p in pts) + " |")
    lines += [
        "",
        f"![SDR vs radius]({plot.name})",
        "",
        f"Best image ({ds.items[best]['id']}, MRE {per_img[best]:.2f} mm) and worst image ({ds.items[worst]['id']}, "
        f"MRE {per_img[worst]:.2f} mm); filled = prediction, white ring = {args.annotator} ground truth:",
        "",
        f"![best]({stem}_best.png) ![worst]({stem}_worst.png)",
        "",
    ]
    out.write_text("\n".join(lines))
    (out.parent / f"{stem}.json").write_text(json.dumps(summ, indent=1))
    print(format_summary(summ))
    print(f"Wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
