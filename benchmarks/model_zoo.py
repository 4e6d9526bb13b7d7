"""Model zoo benchmark: train every family with the same budget, evaluate on one test split, write a report.

Usage:
    .venv/bin/python benchmarks/model_zoo.py --minutes-per-model 60
    .venv/bin/python benchmarks/model_zoo.py --epochs 30 --dataset ../shared/datasets/isbi2015 \
        --out benchmarks/results/model_zoo.md

Trains the five ``configs/models/isbi2015_{unet_seg,fpn_seg,appearance_context,seg_regression,farnet}.yaml``
recipes (or ``--recipes``) on the training split (10 % held out for model selection, as every recipe says),
evaluates each best model on the test split (ISBI Test1, senior annotation by default) and writes a markdown report
(MRE, SDR 2/2.5/3/4 mm, missed and extra detections of the segmentation masks, parameters, CPU inference ms per
image, training time, command, date, commit, machine) and a JSON file next to it.

With ``--minutes-per-model`` the first epoch is timed and the training resumes with as many epochs as fit the budget
(the learning-rate schedule is planned for that number, so it completes); ``--epochs`` overrides every recipe's epochs
instead.
Runs go to ``--runs-dir`` (default ``runs/model_zoo/<recipe>``); ``--resume`` continues them.

``--shipped`` trains nothing: it evaluates the shipped ``apps/landmarks/model/<recipe>.pt`` files (the budget each
needed to converge; epochs and training time from the model file), and lists a family without a shipped file as such.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from _report import provenance, write_report

REPO = Path(__file__).resolve().parents[1]
FAMILIES = ("unet_seg", "fpn_seg", "appearance_context", "seg_regression", "farnet")
SEG_KINDS = ("unet_seg", "fpn_seg", "seg_regression")


def _load_recipe(name_or_path: str) -> dict[str, Any]:
    from anatomark.config import load_yaml

    p = Path(name_or_path)
    if not p.suffix:
        p = REPO / "configs" / "models" / f"{name_or_path}.yaml"
    recipe = load_yaml(p)
    recipe.setdefault("name", p.stem)
    return recipe


def train_one(recipe: dict[str, Any], items: list[dict[str, Any]], out: Path, args: argparse.Namespace) -> dict:
    """Train one recipe within the budget; returns ``{"model_path", "train_seconds", "epochs"}``.

    With a time budget the first epoch is timed (planned with the recipe's epochs), then the run resumes with as
    many epochs as fit the budget, so the learning-rate schedule (warm-up + cosine, computed from the total number
    of epochs) completes instead of being cut off part-way.
    """
    from anatomark.training import train

    budget = args.minutes_per_model * 60.0 if args.minutes_per_model else None

    def history() -> list[dict[str, Any]]:
        h = out / "history.json"
        return json.loads(h.read_text()) if h.is_file() else []

    if budget is None:
        train(recipe, items, out, resume=args.resume, epochs=args.epochs, progress=not args.quiet)
    else:
        done = history()
        if not (args.resume and done):
            train(recipe, items, out, resume=False, epochs=1, progress=not args.quiet)
            done = history()
        per_epoch = float(np.mean([h.get("seconds", 0.0) for h in done]))
        n_epochs = max(len(done), int(budget // max(per_epoch, 1e-6)))
        print(f"{recipe['name']}: {per_epoch:.3f} s per epoch -> {n_epochs} epochs in {args.minutes_per_model} min")
        if n_epochs > len(done):
            train(recipe, items, out, resume=True, epochs=n_epochs, progress=not args.quiet)
    hist = history()
    return {
        "model_path": str(out / "model.pt"),
        "train_seconds": float(sum(h.get("seconds", 0.0) for h in hist)),
        "epochs": len(hist),
    }


def shipped_one(name: str) -> dict[str, Any] | None:
    """The shipped model file of a recipe name -> ``{"model_path", "train_seconds", "epochs"}``, ``None`` if absent.

    ``epochs`` is ``best/run`` (best epoch by validation MRE / epochs trained); a refined model reports its base's.
    """
    from anatomark.model import read_model_header

    path = REPO / "apps" / "landmarks" / "model" / f"{name}.pt"
    if not path.is_file():
        return None
    info = read_model_header(path)["info"]
    src = info.get("base", info)  # a refined model: its base's training
    best, run = src.get("epoch"), src.get("stopped_at_epoch") or src.get("epoch")
    return {"model_path": str(path), "train_seconds": float(src.get("train_seconds") or 0.0), "epochs": f"{best}/{run}"}


BUDGETS_MIN = (10, 20, 30, 45)


def equal_budget_table(histories: dict[str, str]) -> list[str]:
    """Markdown: per training history, the best validation MRE among the epochs finished within each budget."""
    lines = [
        "",
        "## Equal wall-clock budget (validation split)",
        "",
        "Best validation MRE (mm, the recipe's 15 held-out training images, the ground truth the run was trained on) "
        "among the epochs finished within each budget of epoch time (validation included), read from each "
        "training's `history.json`. A run's learning-rate schedule is planned for its own total epochs, so an early "
        "budget reads a run part-way through its schedule; other jobs shared the CPU during parts of some runs.",
        "",
        "| model | " + " | ".join(f"{b} min" for b in BUDGETS_MIN) + " | epochs | total min |",
        "|---|" + "---|" * (len(BUDGETS_MIN) + 2),
    ]
    for name, path in histories.items():
        hist = json.loads(Path(path).read_text())
        t = np.cumsum([h.get("seconds", 0.0) for h in hist]) / 60.0
        mre = np.array([h.get("val_mre_mm", np.nan) for h in hist], float)
        cells = []
        for b in BUDGETS_MIN:
            done = mre[t <= b]
            cells.append(f"{np.nanmin(done):.3f}" if done.size and np.isfinite(done).any() else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {len(hist)} | {t[-1] if len(t) else 0:.1f} |")
    return lines


def evaluate_one(model_path: str, items: list[dict[str, Any]]) -> dict[str, Any]:
    """Predict every test image; errors in mm, mask diagnostics, latency."""
    from anatomark.data.image_io import load_image
    from anatomark.metrics import DEFAULT_RADII_MM, radial_errors, sdr
    from anatomark.model import load_model

    model = load_model(model_path)
    preds, gts, sps, lat, n_regions = [], [], [], [], []
    for it in items:
        img = load_image(it["image"], spacing=it.get("spacing"))
        t = time.perf_counter()
        pred = model.predict(img)
        lat.append(time.perf_counter() - t)
        preds.append(pred.points)
        gts.append(it["landmarks"])
        sps.append(img.spacing)
        if getattr(pred, "n_regions", None) is not None:
            n_regions.append(pred.n_regions)
    err = radial_errors(np.stack(preds), np.stack(gts), np.asarray(sps))
    annotated = ~np.isnan(err)
    finite = err[np.isfinite(err)]
    out: dict[str, Any] = {
        "mre_mm": float(finite.mean()) if finite.size else float("nan"),
        "sd_mm": float(finite.std()) if finite.size else float("nan"),
        "sdr": sdr(err, DEFAULT_RADII_MM),
        "no_point": int((np.isinf(err) & annotated).sum()),
        "n_landmarks": int(annotated.sum()),
        "params": int(sum(p.numel() for p in model.network.parameters())),
        "ms_per_image": float(np.median(lat) * 1000.0),
        "n_images": len(items),
    }
    if n_regions:
        nr = np.stack(n_regions)
        out["missed"] = int((nr == 0).sum())
        out["extra"] = int((nr > 1).sum())
    return out


def init_notes(rows: list[dict[str, Any]]) -> list[str]:
    """A line for each model whose training started parts of its network from another model (``train.init_modules``):
    its ``train min`` counts only its own epochs, so the line gives the total with the model it started from."""
    minutes = {r["recipe"]: r["train_seconds"] / 60 for r in rows}
    out = []
    for r in rows:
        for part, ref in (r.get("init_modules") or {}).items():
            total = f"{minutes[r['recipe']] + minutes[ref]:.1f} min with it" if ref in minutes else "its time not known"
            out.append(
                f"- {r['recipe']} starts its `{part}` from {ref}: its train min (and its minutes in the equal wall-clock "
                f"table) count only its own epochs ({total})."
            )
    return ["", *out] if out else []


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default=str(REPO.parent / "shared" / "datasets" / "isbi2015"))
    ap.add_argument("--train-split", default="train")
    ap.add_argument("--test-split", default="test1")
    ap.add_argument("--annotator", default="senior")
    budget = ap.add_mutually_exclusive_group(required=True)
    budget.add_argument("--minutes-per-model", type=float, help="training time budget per model")
    budget.add_argument("--epochs", type=int, help="epochs per model (overrides the recipes)")
    budget.add_argument("--shipped", action="store_true", help="evaluate the shipped models, train nothing")
    ap.add_argument("--recipes", nargs="+", default=[f"isbi2015_{f}" for f in FAMILIES], help="names or YAML paths")
    ap.add_argument("--runs-dir", default=str(REPO / "runs" / "model_zoo"))
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "model_zoo.md"))
    ap.add_argument(
        "--history",
        action="append",
        default=[],
        metavar="RECIPE=PATH",
        help="with --shipped: a training's history.json, for the equal wall-clock table (validation MRE reached "
        "within 10/20/30/45 min of epochs); repeatable",
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    args = ap.parse_args()
    if not (Path(args.dataset) / "images").is_dir():
        print(f"SKIP: dataset not found at {args.dataset}")
        return 0

    import torch

    from anatomark.config import LandmarkSet, load_landmark_set
    from anatomark.data.dataset import LandmarkDataset

    torch.set_num_threads(args.threads)
    rows: list[dict[str, Any]] = []
    missing: list[str] = []
    for name in args.recipes:
        recipe = _load_recipe(name)
        recipe.setdefault("train", {})["num_threads"] = args.threads
        ls_ref = recipe["landmark_set"]
        ls = ls_ref if isinstance(ls_ref, LandmarkSet) else load_landmark_set(ls_ref)
        train_ds = LandmarkDataset(args.dataset, args.train_split, args.annotator, ls)
        test_ds = LandmarkDataset(args.dataset, args.test_split, args.annotator, ls)
        print(f"== {recipe['name']} ({recipe.get('kind', 'heatmap')}): {len(train_ds)} training images")
        if args.shipped:
            res = shipped_one(recipe["name"])
            if res is None:
                missing.append(recipe["name"])
                continue
        else:
            res = train_one(recipe, train_ds.items, Path(args.runs_dir) / recipe["name"], args)
        ev = evaluate_one(res["model_path"], test_ds.items)
        init_modules = (recipe.get("train") or {}).get("init_modules")
        rows.append(
            {"recipe": recipe["name"], "kind": recipe.get("kind", "heatmap"), "init_modules": init_modules, **res, **ev}
        )
        print(f"   MRE {ev['mre_mm']:.3f} mm, SDR2 {ev['sdr']['2.0']:.1f} %, {res['train_seconds'] / 60:.1f} min")

    if args.shipped:
        budget_txt = "each shipped model's own (the budget it needed to converge; epochs = best epoch / epochs run)"
    elif args.minutes_per_model:
        budget_txt = f"{args.minutes_per_model:g} min per model"
    else:
        budget_txt = f"{args.epochs} epochs"
    lines = [
        "# Model zoo: five landmark-detection families, same data, same budget",
        "",
        *provenance(args.threads),
        f"- Data: `{args.dataset}`; trained on `{args.train_split}` (10 % held out for model selection), evaluated on "
        f"`{args.test_split}`, ground truth = **{args.annotator}**",
        f"- Budget: {budget_txt}; recipes in `configs/models/` (each says how it differs from its paper)",
        "- Missed / extra: landmark masks with no region / more than one region above 0.5 (segmentation families; for "
        "seg_regression these are the mask branch's, its regressed point is always there). A missed mask falls back "
        "to the probability maximum, so MRE and SDR still count a point for every landmark. With the Dice + "
        "spatial-softmax loss the sigmoid masks are not clean masks (on image 001: 1.4-23 % of the image above 0.5 "
        "in the first five channels, 12-1078 regions in the first ten): the points come from each channel's windowed "
        "spatial softmax "
        "(`decode.source: softmax`, seg_regression's offsets from it), so these counts say nothing about the points.",
        "",
        "| model | kind | params | epochs | train min | MRE mm | SD mm | SDR 2 mm | 2.5 mm | 3 mm | 4 mm "
        "| missed | extra | CPU ms/img |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        s = r["sdr"]
        lines.append(
            f"| {r['recipe']} | {r['kind']} | {r['params'] / 1e6:.2f} M | {r['epochs']} | {r['train_seconds'] / 60:.1f} "
            f"| {r['mre_mm']:.3f} | {r['sd_mm']:.3f} | {s['2.0']:.2f} | {s['2.5']:.2f} | {s['3.0']:.2f} | {s['4.0']:.2f} "
            f"| {r.get('missed', '-')} | {r.get('extra', '-')} | {r['ms_per_image']:.0f} |"
        )
    lines += init_notes(rows)
    if missing:
        lines += ["", f"Not shipped (no model file in `apps/landmarks/model/`): {', '.join(missing)}."]
    if args.history:
        lines += equal_budget_table(dict(h.split("=", 1) for h in args.history))
    n_lm = rows[0]["n_landmarks"] if rows else 0
    lines += ["", f"Landmarks evaluated per model: {n_lm} ({rows[0]['n_images'] if rows else 0} images).", ""]
    write_report(args.out, lines, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
