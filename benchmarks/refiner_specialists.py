"""Specialist refiners (``local.focus``) for the hardest landmarks, on the validation images only (issue 17).

Usage:
    .venv/bin/python benchmarks/refiner_specialists.py --out benchmarks/results/refiner_specialists.md

Each row is a composition (``kind: refined``, :func:`anatomark.families.refined.compose`) in front of
``isbi2015_unet_seg``: the shipped pair of refiners (``runs/cascade_mean_seed{1,2}``) answers for every landmark, or
for all but some, where specialist refiners answer instead (``local.weights`` entries with ``landmarks`` /
``except_landmarks``; each landmark's map is the mean of the members answering for it). A specialist given as
``<run>/local/last.pt`` is that run's last epoch instead of its best one (the best epoch was chosen on these same
images). The 15 held-out validation images of the training split (mean of both annotators); no test image is read.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from pathlib import Path

import numpy as np
from _report import provenance, write_report
from _validation import isbi_validation

REPO = Path(__file__).resolve().parents[1]
PAIR = ["runs/cascade_mean_seed1/model.pt", "runs/cascade_mean_seed2/model.pt"]
FOUR = ["gonion", "porion", "subspinale", "articulare"]
S1, S2 = "runs/cascade_mean_focus4_seed1/model.pt", "runs/cascade_mean_focus4_seed2/model.pt"
S2_LAST, S1_LAST = "runs/cascade_mean_focus4_seed2/local/last.pt", "runs/cascade_mean_focus4_seed1/local/last.pt"
S3, S3_LAST = "runs/cascade_mean_gonion_seed3/model.pt", "runs/cascade_mean_gonion_seed3/local/last.pt"
#: name -> (landmarks the specialists answer for, specialist files)
ROWS = {
    "shipped pair": ([], []),
    "s1 (four, seed 1, best epoch 27 of 45) on the four": (FOUR, [S1]),
    "s1 at its last epoch (45) on the four": (FOUR, [S1_LAST]),
    "s2 (four, seed 2, best epoch 23 of 25) on the four": (FOUR, [S2]),
    "s2 at its last epoch (25) on the four": (FOUR, [S2_LAST]),
    "s1 + s2 on the four": (FOUR, [S1, S2]),
    "s3 (gonion only, seed 3, best = last epoch 25) on gonion": (["gonion"], [S3]),
    "s1 + s2 + s3 on gonion": (["gonion"], [S1, S2, S3]),
}


def last_epoch_file(path: str, tmp: Path) -> str:
    """A cascade model file with the refiner of ``<run>/local/last.pt`` (that run's last epoch)."""
    import torch

    from anatomark.model import load_model

    run = Path(path).parents[1]
    model = load_model(run / "model.pt")
    net = copy.deepcopy(model.refiner.network)
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=False)["net"])
    model.refiner.network = net.float().eval()
    return str(model.save(tmp / f"{run.name}_last.pt"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="isbi2015_unet_seg")
    ap.add_argument("--dataset", default=str(REPO.parent / "shared" / "datasets" / "isbi2015"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "refiner_specialists.md"))
    args = ap.parse_args()
    if not (Path(args.dataset) / "images").is_dir():
        print(f"SKIP: dataset not found at {args.dataset}")
        return 0
    missing = sorted({p for _, files in ROWS.values() for p in files + PAIR if not (REPO / p).exists()})
    if missing:
        print(f"SKIP: the trained refiners are not here ({', '.join(missing)}); train them with their recipes")
        return 0
    import torch
    from tqdm import tqdm

    from anatomark.families.refined import compose

    torch.set_num_threads(args.threads)
    val = isbi_validation(args.dataset)
    ls, items, images = val.landmark_set, val.items, val.images
    cols = [ls.names.index(n) for n in FOUR]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        lasts: dict[str, str] = {}
        for name, (names, files) in tqdm(ROWS.items(), desc="Compositions", unit="model"):
            for f in files:
                if f.endswith("last.pt") and f not in lasts:
                    lasts[f] = last_epoch_file(f, Path(tmp))
            files = [lasts.get(f, f) for f in files]
            entries: list = list(PAIR)
            if names:
                entries = [{"weights": p, "except_landmarks": names} for p in PAIR]
                entries += [{"weights": f, "landmarks": names} for f in files]
            model = compose(
                args.base,
                entries,
                ls,
                {"name": "probe", "base": {"precision": "auto"}},
            )
            err = val.errors(np.stack([model.predict(im).points for im in images]))
            results[name] = {
                "mre": float(np.nanmean(err)),
                "sdr2": float(100 * np.mean(err < 2.0)),
                "four": float(np.nanmean(err[:, cols])),
                "per_landmark": {n: float(np.nanmean(err[:, c])) for n, c in zip(FOUR, cols)},
            }
    lines = [
        "# Specialist refiners for the hardest landmarks (validation images, mean of both annotators)",
        "",
        *provenance(args.threads),
        f"- Images: the {len(items)} held-out validation images of `train` (val_fraction 0.1, val_seed 0), ground "
        "truth = **mean** annotation; no test image is read",
        f"- Base: `{args.base}` (bfloat16 where native, as shipped); the shipped pair: "
        + ", ".join(f"`{p}`" for p in PAIR),
        "- Specialists: s1 = `configs/models/isbi2015_cascade_mean_focus4_seed1.yaml`, s2 = `..._focus4_seed2.yaml` "
        "(patches centred on the four landmarks below), s3 = `isbi2015_cascade_mean_gonion_seed3.yaml` (gonion only)",
        "",
        "| composition | MRE mm | SDR 2 mm % | MRE of the four | " + " | ".join(FOUR) + " |",
        "|---|---|---|---|" + "---|" * len(FOUR),
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['mre']:.3f} | {r['sdr2']:.1f} | {r['four']:.3f} | "
            + " | ".join(f"{r['per_landmark'][n]:.2f}" for n in FOUR)
            + " |"
        )
    write_report(args.out, lines, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
