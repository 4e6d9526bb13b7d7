"""ISBI 2015 anatomical-type classification from predicted landmarks vs the senior annotation (Test1).

Usage:
    .venv/bin/python benchmarks/measurements_isbi.py [--model default] [--split test1] \
        [--predictions runs/isbi_test1_pred.csv] [--out benchmarks/results/measurements_isbi.md]

For every image of the split: the 8 ISBI measurements (anatomark.measurements.cephalometric, official-script
conventions incl. integer truncation) and their types from (a) the model's predicted landmarks, (b) the senior
annotation (ground truth, as the challenge), (c) the junior annotation (inter-observer reference). Reports, per
measurement and on average, the classification accuracy (share of images whose type matches the senior type) and
the balanced accuracy (mean over the senior types present of the per-type recall, i.e. the mean of the diagonal
of the row-normalised confusion matrix). ``--predictions`` reuses a landmark CSV (e.g. from
``anatomark evaluate --predictions``) instead of running the model; predictions are cached there when given.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from _report import provenance, write_report

REPO = Path(__file__).resolve().parents[1]
PUBLISHED = (
    "appearance-context paper, as cited in issue 6: 83.59 % average on Test1 (its averaging is not stated there)"
)


def types_of(points: np.ndarray) -> tuple[dict[str, int | None], dict[str, float | None]]:
    from anatomark.measurements.cephalometric import cephalometric_measurements

    res = cephalometric_measurements(points, spacing=(0.1, 0.1))
    return {r.name: r.klass for r in res}, {r.name: r.value for r in res}


def accuracy(truth: list, pred: list) -> tuple[float, float]:
    t, p = np.asarray(truth, dtype=object), np.asarray(pred, dtype=object)
    acc = float(np.mean(t == p))
    recalls = [float(np.mean(p[t == c] == c)) for c in sorted(set(truth))]
    return 100 * acc, 100 * float(np.mean(recalls))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--dataset", default=str(REPO.parent / "shared" / "datasets" / "isbi2015"))
    ap.add_argument("--split", default="test1")
    ap.add_argument("--predictions", default=None, help="landmark CSV of predictions: read if present, else written")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "measurements_isbi.md"))
    args = ap.parse_args()
    if not (Path(args.dataset) / "images").is_dir():
        print(f"SKIP: ISBI 2015 dataset not found at {args.dataset}")
        return 0

    from anatomark.config import load_landmark_set
    from anatomark.data.annotations import read_landmark_csv, write_landmark_csv
    from anatomark.data.dataset import LandmarkDataset
    from anatomark.measurements.cephalometric import MEASUREMENTS
    from anatomark.metrics import radial_errors

    ls = load_landmark_set("isbi2015_cephalometric")
    senior = LandmarkDataset(args.dataset, args.split, "senior", ls)
    junior = LandmarkDataset(args.dataset, args.split, "junior", ls)
    ids = [it["id"] for it in senior.items]
    t0 = time.perf_counter()
    model_name, model_path = "predictions CSV", args.predictions
    if args.predictions and Path(args.predictions).is_file():
        table = read_landmark_csv(args.predictions, ls.names)
        preds = {i: table[i] for i in ids}
    else:
        import torch

        from anatomark.model import load_model, predict_items

        torch.set_num_threads(1)  # the machine is shared with training
        model = load_model(args.model)
        model_name, model_path = model.name, model.path
        res = predict_items(model, senior.items, desc=f"{model.name} on {args.split}")
        preds = dict(zip(res.ids, res.points))
        if args.predictions:
            write_landmark_csv(args.predictions, preds, ls.names)
    infer_s = time.perf_counter() - t0

    truth, jun, prd = {m: [] for m in MEASUREMENTS}, {m: [] for m in MEASUREMENTS}, {m: [] for m in MEASUREMENTS}
    for it, jt in zip(senior.items, junior.items):
        ts, _ = types_of(it["landmarks"])
        tj, _ = types_of(jt["landmarks"])
        tp, _ = types_of(preds[it["id"]])
        for m in MEASUREMENTS:
            truth[m].append(ts[m])
            jun[m].append(tj[m])
            prd[m].append(tp[m])
    err = radial_errors(
        np.stack([preds[i] for i in ids]), np.stack([it["landmarks"] for it in senior.items]), (0.1, 0.1)
    )
    mre = float(np.nanmean(np.where(np.isinf(err), np.nan, err)))

    rows, avg = [], {"pred": [], "pred_bal": [], "jun": [], "jun_bal": []}
    for m in MEASUREMENTS:
        a, b = accuracy(truth[m], prd[m])
        c, d = accuracy(truth[m], jun[m])
        for k, v in zip(avg, (a, b, c, d)):
            avg[k].append(v)
        counts = ", ".join(f"{t}: {truth[m].count(t)}" for t in sorted(set(truth[m])))
        rows.append(f"| {m} | {a:.2f} | {b:.2f} | {c:.2f} | {d:.2f} | {counts} |")
    mean = {k: float(np.mean(v)) for k, v in avg.items()}
    lines = [
        f"# ISBI 2015 anatomical-type classification on {args.split} (predicted vs senior)",
        "",
        *provenance(),
        f"- Model: `{model_name}` ({model_path}); landmark MRE vs senior on this split: {mre:.2f} mm; "
        f"inference {infer_s:.0f} s for {len(ids)} images",
        "- Ground truth: types from the senior annotation; reference: the junior annotation vs senior. "
        "Measurements and types: `anatomark.measurements.cephalometric` (official script conventions: integer "
        "truncation, bounds in Type 1, MW 0 < MW < 2 -> Type 3).",
        "- Accuracy = share of images whose type equals the senior type. Balanced = mean over the senior types "
        "present of the per-type recall (mean of the diagonal of the row-normalised confusion matrix); which of the "
        "two the challenge averaged is not documented (see measurements.md section 3).",
        f"- Published: {PUBLISHED}.",
        "",
        "| measurement | model accuracy % | model balanced % | junior accuracy % | junior balanced % | senior types |",
        "|---|---|---|---|---|---|",
        *rows,
        f"| **average** | **{mean['pred']:.2f}** | **{mean['pred_bal']:.2f}** | {mean['jun']:.2f} | "
        f"{mean['jun_bal']:.2f} | |",
        "",
    ]
    write_report(args.out, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
