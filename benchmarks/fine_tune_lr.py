"""What a server fine-tuning does to a shipped model, per learning rate: the measurement behind ``train_lr`` 1e-4.

Usage:
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/fine_tune_lr.py [--model isbi2015_cascade] [--epochs 1]
        [--lr 2e-3 3e-4 1e-4] [--out benchmarks/results/fine_tune_lr.md]

Fine-tunes the shipped model the way ``POST /train`` does (``anatomark.training.train`` from the model file, its own
recipe, explicit validation image) on ISBI 2015 images 151-152 (validation: 153) and reports the MRE (mm, senior
annotation) on images 154-156 before and after, for each learning rate. Needs ../shared/datasets/isbi2015
(``ANATOMARK_ISBI``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
ISBI = Path(os.environ.get("ANATOMARK_ISBI", REPO.parent / "shared" / "datasets" / "isbi2015"))
TRAIN, VAL, TEST = ["151", "152"], ["153"], ["154", "155", "156"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="isbi2015_cascade")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, nargs="+", default=[2e-3, 3e-4, 1e-4])
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "fine_tune_lr.md"))
    args = ap.parse_args()
    if not (ISBI / "images").is_dir():
        print(f"ISBI 2015 dataset not found at {ISBI} (set ANATOMARK_ISBI)", file=sys.stderr)
        return 2

    from anatomark.data.annotations import read_landmark_csv
    from anatomark.data.image_io import load_image
    from anatomark.model import load_model
    from anatomark.paths import model_dir
    from anatomark.training import train

    src = model_dir() / f"{args.model}.pt"
    shipped = load_model(src)
    ls = shipped.landmark_set
    senior = read_landmark_csv(ISBI / "landmarks_senior.csv", ls.names)

    def items(ids: list[str]) -> list[dict]:
        return [
            {"image": str(ISBI / "images" / f"{i}.jpg"), "landmarks": senior[f"{i}.jpg"], "spacing": None, "id": i}
            for i in ids
        ]

    def mre(model) -> float:  # noqa: ANN001
        errs = []
        for i in TEST:
            pred = model.predict(load_image(str(ISBI / "images" / f"{i}.jpg"), default_spacing=ls.default_spacing_mm))
            errs.append(np.linalg.norm((pred.points - senior[f"{i}.jpg"]) * 0.1, axis=1).mean())
        return float(np.mean(errs))

    before = mre(shipped)
    rows = []
    for lr in args.lr:
        recipe = json.loads(json.dumps(shipped.recipe))
        recipe["landmark_set"] = ls.to_dict()
        recipe["train"]["val_fraction"] = 0.0
        recipe["train"]["lr"] = lr
        with tempfile.TemporaryDirectory(prefix="anatomark-ft-") as tmp:
            t0 = time.time()
            res = train(
                recipe, items(TRAIN), tmp, init_weights=src, epochs=args.epochs, val_items=items(VAL), progress=False
            )
            secs = time.time() - t0
            after = mre(load_model(res["model_path"]))
            stage1 = Path(tmp) / "global" / "model.pt"
            after1 = mre(load_model(stage1)) if stage1.is_file() else None
        rows.append((lr, after, after1, secs))
        print(f"lr {lr:g}: MRE {before:.2f} -> {after:.2f} mm ({secs:.0f} s)", flush=True)

    lines = [
        f"# Fine-tuning `{args.model}` as the server does, per learning rate",
        "",
        f"Command: `OMP_NUM_THREADS=1 .venv/bin/python benchmarks/fine_tune_lr.py --model {args.model} "
        f"--epochs {args.epochs} --lr {' '.join(f'{x:g}' for x in args.lr)}`",
        "",
        f"Train: ISBI 2015 {', '.join(TRAIN)} (validation {', '.join(VAL)}), {args.epochs} epoch(s) from the shipped "
        f"weights; MRE (mm, senior) on {', '.join(TEST)}. Shipped model: **{before:.2f} mm**. The recipe's own "
        f"(from-scratch) rate is {shipped.recipe['train'].get('lr')}.",
        "",
        "| lr | MRE after (mm) | stage 1 alone after (mm) | train time (s, 2 cores shared) |",
        "|---|---|---|---|",
    ]
    for lr, after, after1, secs in rows:
        s1 = f"{after1:.2f}" if after1 is not None else "-"
        lines.append(f"| {lr:g} | {after:.2f} | {s1} | {secs:.0f} |")
    lines += ["", "The server's default `train_lr` is 1e-4 (`anatomark.monailabel.train.FINE_TUNE_LR`)."]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
