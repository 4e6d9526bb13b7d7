"""``anatomark`` command line: train, infer, evaluate, measure."""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

from anatomark.errors import AnatomarkError
from anatomark.paths import git_commit


def cmd_train(args: argparse.Namespace) -> int:
    from anatomark.data.dataset import LandmarkDataset
    from anatomark.recipe import load_recipe
    from anatomark.training import train

    recipe = load_recipe(args.config)
    if args.fold is not None:  # k-fold: the recipe's train/validation split becomes fold --fold of --folds
        recipe["train"] = {**(recipe.get("train") or {}), "folds": args.folds, "fold": args.fold}
        recipe["name"] = f"{recipe['name']}_fold{args.fold}of{args.folds}"
        reused = [k for k in ("global", "base") if (recipe.get(k) or {}).get("weights")]
        if reused or (recipe.get("train") or {}).get("init_modules"):
            print(
                f"Warning: {recipe['name']} starts from trained models ({', '.join(reused) or 'train.init_modules'}) "
                "that were trained on another split; some of this fold's validation images are their training images"
            )
    ds = LandmarkDataset(args.dataset, split=args.split, annotator=args.annotator, landmark_set=recipe["landmark_set"])
    val = None
    if args.val_split:
        val = LandmarkDataset(
            args.dataset, split=args.val_split, annotator=args.annotator, landmark_set=recipe["landmark_set"]
        ).items
    print(f"Training {recipe['name']} on {len(ds)} images of {args.dataset} ({args.split}, {args.annotator})")
    res = train(
        recipe,
        ds.items,
        args.out,
        resume=args.resume,
        init_weights=args.init,
        epochs=args.epochs,
        device=args.device,
        val_items=val,
        info={"dataset": str(args.dataset), "split": args.split, "annotator": args.annotator, "commit": git_commit()},
    )
    if res["best_val_mre_mm"] is None:  # nothing held out: fit kept the epoch of lowest training loss
        print(
            f"No validation images (nothing held out): kept the epoch of lowest training loss; model written to "
            f"{res['model_path']}"
        )
    else:
        print(f"Best validation MRE: {res['best_val_mre_mm']:.3f} mm; model written to {res['model_path']}")
    return 0


def output_stems(images: list[str]) -> dict[str, str]:
    """Output file stem of each input image: its name without the image extension (``p.1.png`` -> ``p.1``).

    Raises:
        AnatomarkError: two inputs would write the same output files (e.g. ``a/x.png`` and ``b/x.png``); nothing
            has been written then.
    """
    from anatomark.data.image_io import image_extension

    stems: dict[str, str] = {}
    by_stem: dict[str, list[str]] = {}
    for p in images:
        name = Path(p).name
        ext = image_extension(name)
        stem = name[: -len(ext)] if ext and name.lower().endswith(ext) else name
        stems[p] = stem or name
        by_stem.setdefault(stems[p], []).append(p)
    clashes = {k: v for k, v in by_stem.items() if len(v) > 1}
    if clashes:
        lines = "; ".join(f"{', '.join(v)} -> {k}.json" for k, v in clashes.items())
        raise AnatomarkError(
            f"These inputs would write the same output files: {lines}. Nothing was written: run them with "
            "different --out folders, or rename or copy them to distinct names first."
        )
    return stems


def cmd_infer(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from anatomark.data.image_io import load_image
    from anatomark.data.points_json import write_points_json
    from anatomark.inference import analyse
    from anatomark.model import load_model
    from anatomark.visualize import save_overlay

    stems = output_stems(list(args.images))
    model = load_model(args.model)
    ls = model.landmark_set
    out = Path(args.out)
    failures = 0
    for p in tqdm(args.images, desc="Inferring", unit="img", disable=len(args.images) < 2):
        try:
            img = load_image(p, spacing=args.spacing, default_spacing=ls.default_spacing_mm)
        except AnatomarkError as e:
            print(f"error: {e}", file=sys.stderr)
            failures += 1
            continue
        t0 = time.perf_counter()
        res = analyse(model, img, orientation=args.orientation)
        body = res.to_dict()
        stem = stems[p]
        doc = {
            "image": str(p),
            "size_wh": list(img.size_wh),
            "spacing_mm": list(img.spacing),
            "spacing_source": img.spacing_source,
            "model": model.name,
            "landmark_set": ls.name,
            **body,
            "latency_s": round(time.perf_counter() - t0, 4),
        }
        write_points_json(out / f"{stem}.json", doc)
        shown = np.where(res.in_image[:, None], res.prediction.points, np.nan)
        if not args.no_overlay:
            q = body["quality"]
            banner = None if q["reliable"] is not False else "UNRELIABLE: " + "; ".join(q["warnings"])
            save_overlay(
                out / f"{stem}_overlay.png",
                img,
                shown,
                ls.shorts,
                ls.colors,
                unreliable=~res.landmark_reliable if q["reliable"] is not None else None,
                banner=banner,
            )
        if args.markups:  # where 3D Slicer shows the pixels: the server's rule (ITK's spacing, not img.spacing)
            from anatomark.data.geometry import viewer_geometry, write_markups

            write_markups(out / f"{stem}.mrk.json", shown, ls.names, viewer_geometry(p, img), ls.descriptions)
        verdict = {True: "reliable", False: "UNRELIABLE", None: "not checked"}[body["quality"]["reliable"]]
        print(f"{p}: {int(res.in_image.sum())} landmarks ({verdict}) -> {out / (stem + '.json')}")
        for w in body["quality"]["warnings"]:
            print(f"  warning: {w}")
    return 1 if failures else 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from anatomark.calibrate import add_quality
    from anatomark.data.dataset import LandmarkDataset
    from anatomark.model import load_model

    model = load_model(args.model)
    annotator = args.annotator or model.info.get("annotator") or "senior"
    ds = LandmarkDataset(args.dataset, split=args.split, annotator=annotator, landmark_set=model.landmark_set)
    out = add_quality(model.path, ds.items, args.out, errors_from=args.errors_from)
    print(f"Quality model fitted on {len(ds)} images of {args.dataset} ({args.split}, {annotator}); written to {out}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from anatomark.data.dataset import LandmarkDataset
    from anatomark.metrics import format_summary, summarize
    from anatomark.model import load_model, predict_items

    model = load_model(args.model)
    ls = model.landmark_set
    ds = LandmarkDataset(args.dataset, split=args.split, annotator=args.annotator, landmark_set=ls)
    radii = [float(r) for r in args.radii.split(",")]
    res = predict_items(model, ds.items, desc=f"Evaluating {model.name} on {args.split}")
    err = res.errors
    summ = summarize(err, ls.names, radii)
    summ.update(
        {
            "model": model.name,
            "model_path": model.path,
            "dataset": str(args.dataset),
            "split": args.split,
            "annotator": args.annotator,
            "median_latency_s": float(np.median(res.seconds)),
            "per_image": [
                {"id": i, "mre_mm": float(np.nanmean(np.where(np.isinf(e), np.nan, e)))} for i, e in zip(res.ids, err)
            ],
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "commit": git_commit(),
            "machine": f"{platform.machine()} {platform.processor() or ''} {__import__('os').cpu_count()} cores".strip(),
        }
    )
    print(format_summary(summ))
    if args.json:
        from anatomark.data.annotations import _atomic_write_text

        _atomic_write_text(args.json, json.dumps(summ, indent=2))
        print(f"Wrote {args.json}")
    if args.predictions:
        from anatomark.data.annotations import write_landmark_csv

        write_landmark_csv(args.predictions, dict(zip(res.ids, res.points)), ls.names)
    return 0


def cmd_shape_prior(args: argparse.Namespace) -> int:
    from anatomark.data.dataset import LandmarkDataset
    from anatomark.model import load_model
    from anatomark.training import add_shape_prior, training_items

    model = load_model(args.model)
    ds = LandmarkDataset(args.dataset, split=args.split, annotator=args.annotator, landmark_set=model.landmark_set)
    items = ds.items if args.all_items else training_items(model.recipe, ds.items)
    cfg = {k: v for k, v in (("modes", args.modes), ("replace_beyond", args.replace_beyond)) if v is not None}
    cfg = {**(model.recipe.get("shape_prior") or {}), **cfg}
    out = add_shape_prior(model.path, items, cfg, args.out)
    print(f"Shape prior ({cfg or 'defaults'}) fitted to {len(items)} labelled images; model written to {out}")
    return 0


def cmd_to_dicom(args: argparse.Namespace) -> int:
    from pydicom.uid import generate_uid

    from anatomark.data.dicom_write import write_dicom

    out = Path(args.out)
    study = args.study_uid or (generate_uid() if args.one_study else None)
    series = args.series_uid or (generate_uid() if args.one_series else None)
    if series and not study:
        study = generate_uid()
    rows = []
    for n, p in enumerate(args.images, start=1):
        stem = Path(p).name.split(".")[0]
        ids = write_dicom(
            p,
            out / f"{stem}.dcm",
            spacing=args.spacing,
            modality=args.modality,
            patient_id=args.patient_id,
            patient_name=args.patient_name,
            study_instance_uid=study,
            series_instance_uid=series,
            instance_number=n if series else 1,
            body_part=args.body_part,
        )
        rows.append({"image": str(p), "dicom": str(ids.path), "patient_id": ids.patient_id,
                     "study_instance_uid": ids.study_instance_uid, "series_instance_uid": ids.series_instance_uid,
                     "sop_instance_uid": ids.sop_instance_uid})  # fmt: skip
        print(f"{p} -> {ids.path} ({args.modality}, series {ids.series_instance_uid})")
    if args.json:
        from anatomark.data.annotations import _atomic_write_text

        _atomic_write_text(args.json, json.dumps(rows, indent=2))
    return 0


def cmd_served(args: argparse.Namespace) -> int:
    """List the kept published versions of a served model, roll back, or publish a model file by hand."""
    from anatomark.monailabel.published import PublishedModel, file_version
    from anatomark.paths import model_dir

    if not args.published_dir and not args.studies:
        raise AnatomarkError("give --studies (the server's studies folder) or --published-dir")
    folder = Path(args.published_dir) if args.published_dir else Path(args.studies) / ".anatomark" / "models"
    shipped = Path(args.shipped) if args.shipped else model_dir() / f"{args.model}.pt"
    handle = PublishedModel(args.model, shipped, folder / f"{args.model}.pt", device="cpu")
    if args.rollback is not None:
        res = handle.rollback(None if args.rollback == "previous" else args.rollback)
        print(f"{args.model}: rolled back from {res['from']} to {res['to']}; dropped {res['dropped'] or 'nothing'}")
    elif args.publish:
        from anatomark.model import load_model

        names = load_model(args.publish, device="cpu").landmark_set.names
        if handle.exists() and names != handle.get()[0].landmark_set.names:
            raise AnatomarkError(f"{args.publish} has other landmarks than the served {args.model}; not published")
        rec = handle.publish(args.publish, source=f"manual: {args.publish}")
        print(f"{args.model}: published {args.publish} as version {rec['version']}")
    served = handle.current_version()
    shipped_v = file_version(shipped) if shipped.is_file() else None
    rows = [{"version": shipped_v, "source": "shipped", "file": str(shipped)}] if shipped_v else []
    rows += [{**r, "file": str(handle.versions_dir / r["file"])} for r in handle.versions()]
    if args.json:
        print(json.dumps({"model": args.model, "served": served, "versions": rows}, indent=1))
        return 0
    print(f"{args.model}: served version {served} ({handle.path()})")
    for r in rows:
        mark = "*" if r["version"] == served else " "
        info = r.get("info") or {}
        numbers = (
            f" val MRE {info['candidate_val_mre_mm']} mm (was {info['served_val_mre_mm']}) on {info['n_val']} image(s)"
            if "candidate_val_mre_mm" in info
            else ""
        )
        print(f" {mark} {r['version']}  {r.get('published', ''):19}  {r['source']}{numbers}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="anatomark", description="Anatomical landmarks on X-rays")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model from a recipe on a dataset folder")
    t.add_argument("--config", required=True, help="recipe YAML path or name under configs/models")
    t.add_argument("--dataset", required=True, help="folder with images/, landmarks_<annotator>.csv, splits.json")
    t.add_argument("--split", default="train")
    t.add_argument("--val-split", default=None, help="validate on this split instead of a held-out fraction")
    t.add_argument("--annotator", default="senior")
    t.add_argument("--out", required=True, help="run directory (model.pt, last.pt, history.json)")
    t.add_argument("--epochs", type=int, default=None)
    t.add_argument("--resume", action="store_true", help="continue from <out>/last.pt")
    t.add_argument("--init", default=None, help="start from these weights (fine-tuning)")
    t.add_argument("--device", default=None)
    t.add_argument(
        "--fold", type=int, default=None, help="k-fold cross-validation: hold out fold FOLD (0-based) of --folds"
    )
    t.add_argument("--folds", type=int, default=5, help="number of folds for --fold (default 5)")
    t.set_defaults(func=cmd_train)

    i = sub.add_parser("infer", help="find landmarks on images; write JSON points and overlay PNGs")
    i.add_argument("images", nargs="+")
    i.add_argument("--model", default="default", help="weights file or model name (default: the shipped model)")
    i.add_argument("--out", required=True)
    i.add_argument("--spacing", type=float, nargs="+", default=None, help="override mm/px: one value or sx sy")
    i.add_argument("--markups", action="store_true", help="also write 3D Slicer .mrk.json (LPS)")
    i.add_argument("--no-overlay", action="store_true")
    i.add_argument(
        "--orientation",
        default="auto",
        help="auto (default: undo a mirrored or turned image when the answer does not fit the anatomy), none, or "
        "the transform that undoes it (flip_x for a left-facing cephalogram, rot90, rot180, rot270, ...)",
    )
    i.set_defaults(func=cmd_infer)

    c = sub.add_parser(
        "calibrate", help="fit a model's quality check (shape model, expected errors) on its training images"
    )
    c.add_argument("--model", required=True, help="weights file or model name")
    c.add_argument("--dataset", required=True)
    c.add_argument("--split", default="train", help="the split the model was trained on (never a test split)")
    c.add_argument("--annotator", default=None, help="default: the one the model was trained on")
    c.add_argument("--out", default=None, help="model file to write (default: in place)")
    c.add_argument(
        "--errors-from",
        default=None,
        help="take the expected-error regression from this model (same landmarks and recipe, validation images held "
        "out): needed for a model trained on every image",
    )
    c.set_defaults(func=cmd_calibrate)

    e = sub.add_parser("evaluate", help="MRE/SDR of a model on a dataset split")
    e.add_argument("--model", default="default")
    e.add_argument("--dataset", required=True)
    e.add_argument("--split", default="test1")
    e.add_argument("--annotator", default="senior", help="senior | junior | mean | <name of landmarks_<name>.csv>")
    e.add_argument("--radii", default="2,2.5,3,4", help="SDR radii in mm, comma separated")
    e.add_argument("--json", default=None, help="write the metrics as JSON here")
    e.add_argument("--predictions", default=None, help="write predicted points as a landmark CSV here")
    e.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("shape-prior", help="fit a PCA shape prior to training labels and add it to a model file")
    s.add_argument("--model", required=True, help="weights file or model name")
    s.add_argument("--dataset", required=True)
    s.add_argument("--split", default="train")
    s.add_argument("--annotator", default="senior")
    s.add_argument("--modes", type=int, default=None, help="PCA modes (default: the recipe's shape_prior, else 16)")
    s.add_argument("--replace-beyond", type=float, default=None, help="fraction of the image height (0 = all points)")
    s.add_argument(
        "--all-items", action="store_true", help="fit to every image of the split (default: the recipe's train part)"
    )
    s.add_argument("--out", required=True, help="model file to write")
    s.set_defaults(func=cmd_shape_prior)

    d = sub.add_parser("to-dicom", help="write PNG/JPG/... X-rays as single-frame DICOM DX, CR or secondary capture")
    d.add_argument("images", nargs="+")
    d.add_argument("--out", required=True, help="output folder (<stem>.dcm per image)")
    d.add_argument("--spacing", type=float, nargs="+", default=None, help="mm/px: one value or sx sy (else the file's)")
    d.add_argument("--modality", default="DX", choices=["DX", "CR", "SC"])
    d.add_argument("--patient-id", default=None, help="default: the file's stem")
    d.add_argument("--patient-name", default=None)
    d.add_argument("--study-uid", default=None, help="put every image into this study")
    d.add_argument("--series-uid", default=None, help="put every image into this series")
    d.add_argument("--one-study", action="store_true", help="one new study for all images (else one per image)")
    d.add_argument("--one-series", action="store_true", help="one new series for all images (else one per image)")
    d.add_argument("--body-part", default="SKULL")
    d.add_argument("--json", default=None, help="write the UIDs of every file as JSON here")
    d.set_defaults(func=cmd_to_dicom)

    v = sub.add_parser(
        "served",
        help="versions of a model served by the MONAI Label app: list, roll back (the server reloads, no restart)",
    )
    v.add_argument("model", help="model name as in the server's /info/ (e.g. isbi2015_heatmap_unet)")
    v.add_argument("--studies", default=None, help="the server's local studies folder (state in <studies>/.anatomark)")
    v.add_argument("--published-dir", default=None, help="the app's published_model_dir (default <studies>/...)")
    v.add_argument("--shipped", default=None, help="shipped weights (default: <name>.pt in the model folder)")
    v.add_argument(
        "--rollback",
        nargs="?",
        const="previous",
        default=None,
        metavar="VERSION",
        help="serve the version published before the served one, or VERSION (a kept one, or 'shipped')",
    )
    v.add_argument(
        "--publish", default=None, metavar="MODEL_PT", help="publish this model file (e.g. a rejected candidate)"
    )
    v.add_argument("--json", action="store_true", help="print the versions as JSON")
    v.set_defaults(func=cmd_served)

    from anatomark.measurements.command import add_parser as add_measure_parser

    add_measure_parser(sub)  # anatomark measure: clinical measurements from points
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "spacing", None) is not None:
        if len(args.spacing) not in (1, 2):
            print("error: --spacing takes one value or two (sx sy)", file=sys.stderr)
            return 2
        args.spacing = tuple(args.spacing) if len(args.spacing) == 2 else args.spacing[0]
    try:
        return int(args.func(args) or 0)
    except AnatomarkError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
