"""k-fold comparison of refiner recipes (``kind: local``) on the ISBI 2015 training images, out of fold.

Usage:
    # score finished fold runs (each trained with ``anatomark train ... --fold I --folds 5``) and write the report
    .venv/bin/python benchmarks/refiner_kfold.py --runs runs/refiner_base_fold0of5 runs/refiner_sigma4_fold0of5 \
        --baseline isbi2015_refiner_mean --out benchmarks/results/refiner_kfold.md
    # only rebuild the report from the error files already committed
    .venv/bin/python benchmarks/refiner_kfold.py --baseline isbi2015_refiner_mean
    # the same runs decoded as a composed model with local.start_prior_mm 4 serves them
    .venv/bin/python benchmarks/refiner_kfold.py --runs ... --start-prior-mm 4 \
        --errors-dir benchmarks/results/kfold_prior4mm --out benchmarks/results/refiner_kfold_prior4mm.md
    # a secondary reading of the same runs from nearer starts (about the base model's own errors)
    .venv/bin/python benchmarks/refiner_kfold.py --runs ... --start-sigma-mm 1.1 \
        --errors-dir benchmarks/results/kfold_start1.1mm --out benchmarks/results/refiner_kfold_start1.1mm.md

Every fold run is scored at its **last** epoch (``last.pt``: no epoch is chosen on the held-out images) on the images
its fold held out, each landmark refined once from the seeded offset of the truth that its training validated from
(``train.seed`` + 12345, ``local.offset_sigma_mm``): recipes with the same seed and offset start from the same points,
so their errors pair image for image. ``--start-sigma-mm`` draws the starts with another spread (same seed) instead:
the recipes' 3 mm per axis (3.8 mm radial on average) is far wider than the errors of the base model a refiner serves
behind (``isbi2015_unet_seg``: 1.35 mm radial on its validation images, i.e. about 1.1 mm per axis). Weights are
rounded to float16 first, as a model file holds them.
Ground truth: the annotation the run trained on (its ``info``; the mean of both annotators for issue 17's runs).

Per-image, per-landmark errors go to ``benchmarks/results/kfold/<recipe>_fold<I>of<K>.csv`` (a few kB each), so
folds trained in different sessions add up: the report pools every file there. A recipe is compared with
``--baseline`` on the images both were scored on: the mean paired difference of the per-image MRE with a 95 %
bootstrap interval over images (seeded), and how many images got better.
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
from _report import provenance, write_report

REPO = Path(__file__).resolve().parents[1]
KFOLD_DIR = REPO / "benchmarks" / "results" / "kfold"
FOLD_SUFFIX = re.compile(r"^(?P<recipe>.+)_fold(?P<fold>\d+)of(?P<folds>\d+)$")
RADII = (2.0, 2.5, 3.0, 4.0)


def fold_errors(
    run_dir: str | Path,
    items: list[dict[str, Any]],
    landmark_set: Any,
    annotator: str | None = None,
    start_sigma_mm: float | None = None,
    start_prior_mm: float | None = None,
) -> tuple[dict[str, Any], list[str], np.ndarray]:
    """Score one finished fold run at its last epoch on the images its fold held out.

    Args:
        run_dir: the ``--out`` folder of ``anatomark train --fold I --folds K`` for a ``kind: local`` recipe
            (``last.pt``, whose ``recipe`` holds ``train.fold`` / ``train.folds``).
        items: the dataset items the run was trained from, in the same order (the split indexes them).
        landmark_set: the :class:`~anatomark.config.LandmarkSet` of ``items``.
        annotator: the annotation of ``items``; refused when the run says it trained on another one.
        start_sigma_mm: the spread (mm per axis) of the seeded starts around the truth; default: the recipe's
            ``local.offset_sigma_mm`` (the starts its training validated from).
        start_prior_mm: decode with ``local.start_prior_mm`` (a Gaussian of this sigma around each start weighs the
            refiner's map, as a composed model serves it); default: the recipe's own (none for a trained refiner).

    Returns:
        ``({"recipe", "fold", "folds", "epoch", "epochs", "history_mre_mm"}, image ids, (N, K) errors in mm)``.
    """
    import torch

    from anatomark.errors import AnatomarkError
    from anatomark.families.cascade import LocalStage, _as_saved
    from anatomark.networks import build_network

    state = torch.load(Path(run_dir) / "last.pt", map_location="cpu", weights_only=False)
    recipe = state["recipe"]
    tc = recipe.get("train") or {}
    m = FOLD_SUFFIX.match(str(recipe["name"]))
    if recipe.get("kind") != "local" or m is None or "fold" not in tc:
        raise AnatomarkError(f"{run_dir} is not a k-fold run of a kind: local recipe (anatomark train --fold)")
    epochs = int(tc.get("epochs", 0))
    if int(state["epoch"]) < epochs:
        raise AnatomarkError(
            f"{run_dir} stopped at epoch {state['epoch']} of {epochs}: finish it first "
            f"(anatomark train ... --fold {tc['fold']} --folds {tc['folds']} --out {run_dir} --resume)"
        )
    trained_on = (state.get("best_meta") or {}).get("annotator")
    if annotator and trained_on and trained_on != annotator:
        raise AnatomarkError(
            f"{run_dir} trained on the {trained_on} annotation; score it with --annotator {trained_on}"
        )
    if start_sigma_mm is not None:  # only the validation starts read it here (the patch set is never drawn from)
        if not start_sigma_mm > 0:
            raise AnatomarkError(f"start_sigma_mm must be > 0, got {start_sigma_mm}")
        recipe = {**recipe, "local": {**recipe["local"], "offset_sigma_mm": float(start_sigma_mm)}}
    if start_prior_mm is not None:  # LocalRefiner checks the value
        recipe = {**recipe, "local": {**recipe["local"], "start_prior_mm": float(start_prior_mm)}}
    stage = LocalStage(recipe, landmark_set, items, None, progress=False)
    net = build_network(recipe["local"]["network"], out_channels=len(landmark_set))
    net.load_state_dict(state["net"])
    err = stage.evaluate(_as_saved(net).eval())
    last = (state.get("history") or [{}])[-1]
    meta = {
        "recipe": m.group("recipe"),
        "fold": int(tc["fold"]),
        "folds": int(tc["folds"]),
        "epoch": int(state["epoch"]),
        "epochs": epochs,
        "history_mre_mm": last.get("val_mre_mm"),
    }
    return meta, [str(c["id"]) for c in stage.val_c], err


def write_errors(meta: dict[str, Any], ids: list[str], err: np.ndarray, names: list[str], folder: Path) -> Path:
    """``<folder>/<recipe>_fold<I>of<K>.csv``: one row per image, one column per landmark (mm)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{meta['recipe']}_fold{meta['fold']}of{meta['folds']}.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", *names])
        for i, row in zip(ids, err):
            w.writerow([i, *(f"{v:.4f}" for v in row)])
    return path


def read_errors(folder: Path) -> dict[str, dict[str, Any]]:
    """Every error file of ``folder`` pooled per recipe: ``{recipe: {"folds": [...], "names": [...],
    "errors": {image: (K,) mm}}}``."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(folder.glob("*.csv")):
        m = FOLD_SUFFIX.match(path.stem)
        if m is None:
            continue
        with path.open() as f:
            rows = list(csv.reader(f))
        rec = out.setdefault(m.group("recipe"), {"folds": [], "names": rows[0][1:], "errors": {}})
        rec["folds"].append(f"{m.group('fold')}/{m.group('folds')}")
        for r in rows[1:]:
            rec["errors"][r[0]] = np.asarray([float(v) for v in r[1:]])
    return out


def paired(base: dict[str, np.ndarray], other: dict[str, np.ndarray], seed: int = 0) -> dict[str, Any] | None:
    """Paired comparison of per-image MRE on the images both scored: ``other`` - ``base`` (negative: better)."""
    common = sorted(set(base) & set(other))
    if not common:
        return None
    d = np.asarray([np.nanmean(other[i]) - np.nanmean(base[i]) for i in common])
    boot = d[np.random.RandomState(seed).randint(0, d.size, (10000, d.size))].mean(axis=1)
    return {
        "n": len(common),
        "diff_mm": float(d.mean()),
        "ci95": (float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))),
        "better": int((d < 0).sum()),
        "per_landmark": np.nanmean(np.stack([other[i] - base[i] for i in common]), axis=0),
    }


def report_lines(pooled: dict[str, dict[str, Any]], baseline: str) -> tuple[list[str], dict[str, Any]]:
    """The report's tables from :func:`read_errors`'s result."""
    lines = [
        "| recipe | folds scored | images | MRE mm | " + " | ".join(f"SDR {r:g} mm" for r in RADII) + " |",
        "|---|---|---|---|" + "---|" * len(RADII),
    ]
    data: dict[str, Any] = {}
    for name, rec in pooled.items():
        e = np.stack(list(rec["errors"].values()))
        sdr = [100.0 * float((e[np.isfinite(e)] <= r).mean()) for r in RADII]
        lines.append(
            f"| {name} | {', '.join(rec['folds'])} | {e.shape[0]} | {np.nanmean(e):.3f} | "
            + " | ".join(f"{s:.1f}" for s in sdr)
            + " |"
        )
        data[name] = {"folds": rec["folds"], "n_images": e.shape[0], "mre_mm": float(np.nanmean(e)), "sdr": sdr}
    if baseline in pooled:
        base = pooled[baseline]
        rows = []
        worst = np.argsort(-np.nanmean(np.stack(list(base["errors"].values())), axis=0))[:5]
        for name, rec in pooled.items():
            if name == baseline:
                continue
            p = paired(base["errors"], rec["errors"])
            if p is None:
                continue
            per = ", ".join(f"{base['names'][k]} {p['per_landmark'][k]:+.2f}" for k in worst)
            rows.append(
                f"| {name} | {p['n']} | {p['diff_mm']:+.3f} | [{p['ci95'][0]:+.3f}, {p['ci95'][1]:+.3f}] | "
                f"{p['better']}/{p['n']} | {per} |"
            )
            data[name]["vs_baseline"] = {k: v for k, v in p.items() if k != "per_landmark"}
        if rows:
            lines += [
                "",
                f"Paired against `{baseline}` on the same images (per-image MRE, recipe minus baseline; negative is "
                "better; 95 % bootstrap interval over images; the baseline's five worst landmarks):",
                "",
                "| recipe | images | MRE difference mm | 95 % interval | images better | worst landmarks (mm) |",
                "|---|---|---|---|---|---|",
                *rows,
            ]
    return lines, data


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", nargs="*", default=[], help="finished fold run folders to score (adds error files)")
    ap.add_argument("--baseline", default="isbi2015_refiner_mean", help="the recipe the others are compared with")
    ap.add_argument("--dataset", default=str(REPO.parent / "shared" / "datasets" / "isbi2015"))
    ap.add_argument("--split", default="train")
    ap.add_argument("--annotator", default="mean")
    ap.add_argument("--landmark-set", default="isbi2015_cephalometric")
    ap.add_argument("--errors-dir", default=str(KFOLD_DIR))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--start-sigma-mm",
        type=float,
        default=None,
        help="spread of the starts around the truth, mm per axis (default: each recipe's local.offset_sigma_mm); "
        "give it its own --errors-dir and --out",
    )
    ap.add_argument(
        "--start-prior-mm",
        type=float,
        default=None,
        help="decode with local.start_prior_mm (as a composed model would serve the refiner); "
        "give it its own --errors-dir and --out",
    )
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "refiner_kfold.md"))
    args = ap.parse_args()
    folder = Path(args.errors_dir)
    if args.runs:
        if not (Path(args.dataset) / "images").is_dir():
            print(f"SKIP: dataset not found at {args.dataset}")
            return 0
        import torch

        from anatomark.data.dataset import LandmarkDataset

        torch.set_num_threads(args.threads)
        ds = LandmarkDataset(args.dataset, split=args.split, annotator=args.annotator, landmark_set=args.landmark_set)
        for run in args.runs:
            meta, ids, err = fold_errors(
                run, ds.items, ds.landmark_set, args.annotator, args.start_sigma_mm, args.start_prior_mm
            )
            path = write_errors(meta, ids, err, list(ds.landmark_set.names), folder)
            print(
                f"{run}: {meta['recipe']} fold {meta['fold']}/{meta['folds']}, epoch {meta['epoch']}: "
                f"MRE {np.nanmean(err):.3f} mm on {len(ids)} images (history: {meta['history_mre_mm']}) -> {path}"
            )
    pooled = read_errors(folder)
    if not pooled:
        print(f"No error files in {folder}: score fold runs with --runs first")
        return 1
    table, data = report_lines(pooled, args.baseline)
    lines = [
        "# k-fold comparison of refiner recipes (ISBI 2015 training images, out of fold)",
        "",
        *provenance(args.threads),
        f"- Ground truth: the **{args.annotator}** annotation of `{args.split}` (0.1 mm/px); each fold run scored at "
        "its last epoch on the images its fold held out, every landmark refined once from "
        + (
            f"a seeded offset of the truth of {args.start_sigma_mm:g} mm per axis (`--start-sigma-mm`)"
            if args.start_sigma_mm is not None
            else "the seeded offset of the truth its training validated from"
        )
        + (
            f", decoded with a {args.start_prior_mm:g} mm prior around the start (`--start-prior-mm`)"
            if args.start_prior_mm is not None
            else ""
        )
        + " (no stage-1 model). Error files: "
        f"`{folder.relative_to(REPO) if folder.is_relative_to(REPO) else folder}`.",
        "",
        *table,
        "",
    ]
    write_report(args.out, lines, data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
