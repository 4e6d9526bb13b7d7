"""ISBI 2015 cephalometric benchmark: evaluate a model on a split and write a markdown report.

Usage:
    .venv/bin/python benchmarks/isbi2015.py --model default --split test1 --annotator senior \
        --out benchmarks/results/isbi2015.md

Writes the report (command, date, machine, commit, training provenance from the model file, MRE, SDR,
per-landmark table), an SDR-vs-radius plot and overlays of the best and worst images next to it. When the dataset
has other annotators' CSVs, the report also measures the inter-observer disagreement and the model's error against
the other annotator and on the points where the annotators agree (how much of the error is annotation noise).
A hand-written "## Models measured" section already in the report is kept (it is the history of models tried).
Skips with a clear message when ../shared/datasets/isbi2015 is absent.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from _report import provenance, write_report

REPO = Path(__file__).resolve().parents[1]
PUBLISHED = [
    ("FARNet (Ao & Wu 2022), GPU, ImageNet weights, mean of annotators", 1.12, [88.03, 92.73, 95.96, 98.48]),
    ("landmarker SCN, mean of annotators", 1.20, [84.5, 90.2, 93.5, 97.2]),
]


def observer_lines(args: argparse.Namespace, ls, res, agree_mm: float = 2.0) -> list[str]:  # noqa: ANN001
    """Report lines comparing ``args.annotator`` with every other annotator of the dataset (empty if none)."""
    from anatomark.data.dataset import LandmarkDataset
    from anatomark.metrics import radial_errors

    others = sorted(p.stem.removeprefix("landmarks_") for p in Path(args.dataset).glob("landmarks_*.csv"))
    others = [o for o in others if o not in (args.annotator, "mean")] if args.annotator != "mean" else []
    lines: list[str] = []
    for other in others:
        table = {it["id"]: it["landmarks"] for it in LandmarkDataset(args.dataset, args.split, other, ls).items}
        if not all(i in table for i in res.ids):
            continue
        alt = np.stack([table[i] for i in res.ids])
        inter = radial_errors(res.truth, alt, res.spacing)  # (N, K) annotator vs annotator
        e_ref, e_alt = res.errors, radial_errors(res.points, alt, res.spacing)
        agree = inter <= agree_mm
        far = e_ref > 4.0
        lines += [
            f"## Annotation noise: {args.annotator} against {other}",
            "",
            f"- The two annotations of these {len(res.ids)} images differ by {np.nanmean(inter):.2f} mm on average "
            f"(median {np.nanmedian(inter):.2f} mm; {100 * np.nanmean(inter > 4):.1f} % of points more than 4 mm apart).",
            f"- This model against the {other} annotation: MRE {np.nanmean(e_alt):.3f} mm "
            f"(against {args.annotator}: {np.nanmean(e_ref):.3f} mm).",
            f"- On the {int(agree.sum())} points ({100 * agree.mean():.1f} %) where the annotators agree within "
            f"{agree_mm:g} mm: MRE {np.nanmean(e_ref[agree]):.3f} mm against {args.annotator}, SDR 2 mm "
            f"{100 * np.mean(e_ref[agree] <= 2.0):.2f} %.",
            f"- Of the {int(far.sum())} points more than 4 mm from the {args.annotator} annotation, "
            f"{int((far & (inter > 4.0)).sum())} are where the annotators themselves are more than 4 mm apart, and "
            f"{int((far & (e_alt <= 2.0)).sum())} are within 2 mm of the {other} annotation.",
            "",
            f"| # | landmark | {args.annotator} vs {other} mm | mean {args.annotator} - {other} (dx, dy) mm "
            f"| model vs {args.annotator} | mean model - {args.annotator} (dx, dy) mm | model vs {other} "
            f"| model vs {args.annotator} where they agree (n) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        sp = res.spacing[:, None, :]
        d_ann = np.nanmean((res.truth - alt) * sp, axis=0)  # (K, 2) systematic offset between the annotators
        d_model = np.nanmean((res.points - res.truth) * sp, axis=0)  # (K, 2) the model's bias
        for k, name in enumerate(ls.names):
            a = agree[:, k]
            lines.append(
                f"| {k + 1} | {name} | {np.nanmean(inter[:, k]):.2f} | ({d_ann[k, 0]:+.2f}, {d_ann[k, 1]:+.2f}) | "
                f"{np.nanmean(e_ref[:, k]):.2f} | ({d_model[k, 0]:+.2f}, {d_model[k, 1]:+.2f}) | "
                f"{np.nanmean(e_alt[:, k]):.2f} | {np.nanmean(e_ref[a, k]) if a.any() else float('nan'):.2f} "
                f"({int(a.sum())}) |"
            )
        lines += [
            "",
            "x to the right, y down. These numbers describe the benchmark; they were not used to choose or tune "
            "models.",
            "",
        ]
    return lines


def _spacing_text(spacing: np.ndarray) -> str:
    """``"0.1 mm/px"`` when every image has the same square spacing, else the range."""
    sp = np.unique(np.round(np.asarray(spacing, float), 4), axis=0)
    if len(sp) == 1 and sp[0][0] == sp[0][1]:
        return f"{sp[0][0]:g} mm/px"
    return f"{sp.min():g}-{sp.max():g} mm/px"


def kept_section(out: Path, title: str = "## Models measured") -> list[str]:
    """The hand-written section of an existing report whose heading starts with ``title`` (up to the next ``## ``
    heading), or ``[]``."""
    if not out.is_file():
        return []
    text = out.read_text().splitlines()
    start = next((i for i, line in enumerate(text) if line.startswith(title)), None)
    if start is None:
        return []
    end = next((i for i in range(start + 1, len(text)) if text[i].startswith("## ")), len(text))
    return text[start:end]


def training_line(info: dict) -> str:
    """The report's "Training:" line from a model file's info (a refined model: its base and its refiner)."""
    from anatomark.calibrate import trained_without_holdout

    def one(i: dict) -> str:
        minutes = f"training time {(i.get('train_seconds') or 0) / 60:.1f} min"
        if i.get("n_val") == 0:  # a final refit: nothing held out, the epoch of lowest training loss
            return (
                f"all {i.get('n_train', '?')} images of `{i.get('split', '?')}` ({i.get('annotator', '?')}), none held "
                f"out; epoch {i.get('epoch', '?')} (lowest training loss); {minutes}"
            )
        return (
            f"{i.get('n_train', '?')} training images + {i.get('n_val', '?')} held-out validation images from "
            f"`{i.get('split', '?')}` ({i.get('annotator', '?')}); best epoch {i.get('epoch', '?')} by validation MRE "
            f"({i.get('val_mre_mm') or float('nan'):.3f} mm); {minutes}"
        )

    if "base" in info and "local" in info:  # kind: refined (anatomark.families.refined): composed, not trained
        members = info["local"].get("members")
        if members:  # an ensemble of refiners
            refiner = "an ensemble of the refiners of " + ", ".join(f"`{m.get('path')}` ({one(m)})" for m in members)
        else:
            refiner = f"the refiner of `{info['local'].get('path')}`"
        if trained_without_holdout(info):  # its refiners trained on the images the composition is validated on
            val = "no validation figure (its refiners trained on the base's validation images)"
        else:
            val = (
                f"validation MRE of the composition {info.get('val_mre_mm') or float('nan'):.3f} mm on "
                f"{info.get('n_val', '?')} images"
            )
        return (
            f"- Training: none, composed (`kind: refined`): base `{info['base'].get('path')}` ({one(info['base'])}) + "
            f"{refiner}; {val}"
        )
    return f"- Training: {one(info)} on this CPU"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--dataset", default=str(REPO.parent / "shared" / "datasets" / "isbi2015"))
    ap.add_argument("--split", default="test1")
    ap.add_argument("--annotator", default="senior")
    ap.add_argument(
        "--subset",
        choices=["all", "validation"],
        default="all",
        help="validation: only the images the model's recipe held out of --split (use with --split train)",
    )
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "isbi2015.md"))
    args = ap.parse_args()
    if not (Path(args.dataset) / "images").is_dir():
        print(f"SKIP: ISBI 2015 dataset not found at {args.dataset}")
        return 0

    import torch

    from anatomark.data.dataset import LandmarkDataset
    from anatomark.data.image_io import load_image
    from anatomark.metrics import DEFAULT_RADII_MM, format_summary, sdr, summarize
    from anatomark.model import load_model, predict_items
    from anatomark.training import recipe_split
    from anatomark.visualize import save_overlay

    torch.set_num_threads(2)
    model = load_model(args.model)
    ls = model.landmark_set
    items = LandmarkDataset(args.dataset, args.split, args.annotator, ls).items
    where = f"`{args.split}` ({len(items)} images)"
    if args.subset == "validation":
        _, val = recipe_split(len(items), model.recipe.get("train", {}))
        items = [items[i] for i in val]
        where = f"the {len(items)} validation images the model's recipe held out of `{args.split}`"
    res = predict_items(model, items, desc=f"{model.name} on {args.split}")
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
    published = PUBLISHED if args.split == "test1" and args.subset == "all" else []
    for name, _, pts in published[:1]:
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
        img = load_image(items[i]["image"], spacing=items[i]["spacing"])
        save_overlay(out.parent / f"{stem}_{tag}.png", img, preds[i], ls.shorts, ls.colors, truth=gts[i], max_size=800)

    info = model.info
    lines = [
        f"# ISBI 2015 cephalometric landmarks: {model.name}",
        "",
        *provenance(torch.get_num_threads()),
        f"- Evaluated on: {where}, ground truth = **{args.annotator}** annotation, {_spacing_text(res.spacing)}",
        f"- Model file: `{Path(model.path).relative_to(REPO) if model.path and Path(model.path).is_relative_to(REPO) else model.path}`"
        f" ({Path(model.path).stat().st_size / 1e6:.1f} MB)",
        training_line(info),
        f"- Latency (load JPEG + predict, in-process): median {np.median(lat) * 1000:.0f} ms, p95 {np.percentile(lat, 95) * 1000:.0f} ms",
        "",
        *kept_section(out),
        "## Result",
        "",
        format_summary(summ),
        "",
        *observer_lines(args, ls, res),
    ]
    if published:
        lines += [
            "## Published results on Test1 (for comparison; not re-run here)",
            "",
            "| method | MRE mm | SDR 2 | 2.5 | 3 | 4 |",
            "|---|---|---|---|---|---|",
            *(f"| {name} | {mre:.2f} | " + " | ".join(f"{p:.2f}" for p in pts) + " |" for name, mre, pts in published),
            "",
        ]
    lines += [
        f"![SDR vs radius]({plot.name})",
        "",
        f"Best image ({items[best]['id']}, MRE {per_img[best]:.2f} mm) and worst image ({items[worst]['id']}, "
        f"MRE {per_img[worst]:.2f} mm); filled = prediction, white ring = {args.annotator} ground truth:",
        "",
        f"![best]({stem}_best.png) ![worst]({stem}_worst.png)",
        "",
    ]
    write_report(out, lines, summ, echo=False)
    print(format_summary(summ))
    return 0


if __name__ == "__main__":
    sys.exit(main())
