"""The ``anatomark`` command line on real files: infer, evaluate and the errors users cause."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anatomark.cli import main
from anatomark.config import LandmarkSet, load_landmark_set
from anatomark.data.annotations import read_landmark_csv, write_landmark_csv
from anatomark.model import save_model_file
from anatomark.networks import build_network

TWO = LandmarkSet(name="two", names=["a", "b"], default_spacing_mm=(0.5, 0.5))


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """An untrained two-landmark model: enough to exercise file handling, not accuracy."""
    recipe = {
        "name": "tiny",
        "landmark_set": "two",
        "network": {"name": "heatmap_unet", "spatial_dims": 2, "features": [4, 4, 8, 8, 8, 4]},
        "input": {"size_hw": [32, 32]},
        "train": {},
    }
    net = build_network(recipe["network"], out_channels=2)
    return save_model_file(tmp_path_factory.mktemp("m") / "tiny.pt", net, recipe, TWO)


@pytest.fixture
def images(tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 40), dtype=np.uint8)).save(good)
    data = good.read_bytes()
    bad = tmp_path / "bad.png"
    bad.write_bytes(data[: len(data) // 3])
    return good, bad


def test_infer_writes_json_and_overlay(tiny_model, images, tmp_path, capsys):
    good, _ = images
    out = tmp_path / "out"
    assert main(["infer", str(good), "--model", str(tiny_model), "--out", str(out), "--markups"]) == 0
    doc = json.loads((out / "good.json").read_text())
    assert doc["size_wh"] == [40, 48] and doc["spacing_mm"] == [0.5, 0.5] and doc["spacing_source"] == "default"
    lm = doc["landmarks"]
    assert [p["name"] for p in lm] == ["a", "b"] and [p["index"] for p in lm] == [1, 2]
    for p in lm:
        assert 0 <= p["x"] <= 39 and 0 <= p["y"] <= 47
        assert p["x_mm"] == pytest.approx(p["x"] * 0.5, abs=1e-2) and 0 <= p["confidence"] <= 1
    assert Image.open(out / "good_overlay.png").size == (40, 48)
    assert json.loads((out / "good.mrk.json").read_text())["markups"][0]["coordinateSystem"] == "LPS"


def test_infer_bad_images_fail_clearly_and_write_nothing(tiny_model, images, tmp_path, capsys):
    good, bad = images
    odd = tmp_path / "scan.xyz"
    odd.write_bytes(b"123")
    out = tmp_path / "out"
    code = main(["infer", str(bad), str(odd), str(good), "--model", str(tiny_model), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1
    assert "Cannot read image bad.png: the file is corrupt or truncated" in err
    assert "Unsupported image type '.xyz'" in err
    assert sorted(p.name for p in out.iterdir()) == ["good.json", "good_overlay.png"]


def test_infer_json_says_an_uncalibrated_model_is_not_checked(tiny_model, images, tmp_path):
    good, _ = images
    out = tmp_path / "out"
    assert main(["infer", str(good), "--model", str(tiny_model), "--out", str(out), "--no-overlay"]) == 0
    doc = json.loads((out / "good.json").read_text())
    assert doc["quality"]["reliable"] is None and "no quality calibration" in doc["quality"]["warnings"][0]
    assert doc["orientation"]["applied"] == "identity"
    assert all(p["in_image"] and p["reliable"] is None for p in doc["landmarks"])


@pytest.mark.parametrize("names", [("a/x.png", "b/x.png"), ("p.1.png", "p.1.jpg")])
def test_infer_refuses_inputs_that_would_overwrite_each_other(tiny_model, images, tmp_path, capsys, names):
    good, _ = images
    paths = []
    for n in names:
        p = tmp_path / "in" / n
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.open(good).save(p)
        paths.append(str(p))
    out = tmp_path / "out"
    assert main(["infer", *paths, "--model", str(tiny_model), "--out", str(out)]) == 2
    assert "would write the same output files" in capsys.readouterr().err
    assert not out.exists()


def test_infer_keeps_dotted_names_apart(tiny_model, images, tmp_path):
    good, _ = images
    paths = []
    for n in ("p.1.png", "p.2.png", "scan.nii.gz"):
        p = tmp_path / n
        if n.endswith(".nii.gz"):
            import nibabel as nib

            nib.save(nib.Nifti1Image(np.asarray(Image.open(good), np.float32).T, np.eye(4)), str(p))
        else:
            Image.open(good).save(p)
        paths.append(str(p))
    out = tmp_path / "out"
    assert main(["infer", *paths, "--model", str(tiny_model), "--out", str(out), "--no-overlay"]) == 0
    assert sorted(x.name for x in out.iterdir()) == ["p.1.json", "p.2.json", "scan.json"]


def test_unknown_model_name(images, tmp_path, capsys):
    good, _ = images
    code = main(["infer", str(good), "--model", "no_such_model", "--out", str(tmp_path / "o")])
    assert code == 2
    assert "Unknown model 'no_such_model'; available:" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    assert main(["infer", str(good), "--model", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "o")]) == 2
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    assert main(["infer", str(good), "--model", str(tmp_path / "junk.pt"), "--out", str(tmp_path / "o")]) == 2
    assert "not a readable anatomark model" in capsys.readouterr().err


def _dataset(root, names, good):
    (root / "images").mkdir(parents=True)
    (root / "images" / "good.png").write_bytes(good.read_bytes())
    (root / "splits.json").write_text(json.dumps({"test1": ["good.png"]}))
    write_landmark_csv(root / "landmarks_senior.csv", {"good.png": np.full((len(names), 2), 10.0)}, names)
    return root


def test_evaluate_wrong_landmark_count(tiny_model, images, tmp_path, capsys):
    # a dataset annotated with 3 landmarks, evaluated with a 2-landmark model
    root = _dataset(tmp_path / "ds", ["p", "q", "r"], images[0])
    js = tmp_path / "m.json"
    code = main(["evaluate", "--model", str(tiny_model), "--dataset", str(root), "--split", "test1", "--json", str(js)])
    assert code == 2
    assert "lacks 4 required column(s): a_x, a_y, b_x, b_y" in capsys.readouterr().err
    assert not js.exists()


def test_evaluate_json(tiny_model, images, tmp_path):
    root = _dataset(tmp_path / "ds", ["a", "b"], images[0])
    js = tmp_path / "m.json"
    assert (
        main(["evaluate", "--model", str(tiny_model), "--dataset", str(root), "--json", str(js), "--radii", "1,50"])
        == 0
    )
    m = json.loads(js.read_text())
    assert set(m["sdr"]) == {"1.0", "50.0"} and len(m["per_landmark"]) == 2 and m["mre_mm"] >= 0


def test_console_script_help():
    exe = os.path.join(os.path.dirname(sys.executable), "anatomark")
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, check=True).stdout
    assert "train" in out and "infer" in out and "evaluate" in out


# ------------------------------------------------------------------ real data, shipped model
def test_isbi_smoke_two_images_with_shipped_model(isbi_dir, tmp_path):
    names = load_landmark_set("isbi2015_cephalometric").names
    truth = read_landmark_csv(isbi_dir / "landmarks_senior.csv", names)
    imgs = [str(isbi_dir / "images" / n) for n in ("151.jpg", "152.jpg")]
    out = tmp_path / "out"
    assert main(["infer", *imgs, "--out", str(out)]) == 0  # --model default is implied
    for n in ("151", "152"):
        doc = json.loads((out / f"{n}.json").read_text())
        assert doc["spacing_mm"] == [0.1, 0.1] and doc["model"].startswith("isbi2015_")
        ms = {m["name"]: m for m in doc["measurements"]}
        assert {"SNA", "SNB", "ANB", "FHI"} <= set(ms) and ms["SNA"]["unit"] == "deg"
        assert 60 < ms["SNA"]["value"] < 100
        pts = np.array([[p["x"], p["y"]] for p in doc["landmarks"]])
        err = np.linalg.norm(pts - truth[f"{n}.jpg"], axis=1) * 0.1
        assert err.mean() < 4.0, f"{n}: MRE {err.mean():.2f} mm"
        assert (out / f"{n}_overlay.png").is_file()
    # evaluate on a two-image folder in the dataset layout (symlinks to the real files)
    root = tmp_path / "two"
    (root / "images").mkdir(parents=True)
    for n in ("151.jpg", "152.jpg"):
        (root / "images" / n).symlink_to(isbi_dir / "images" / n)
    write_landmark_csv(root / "landmarks_senior.csv", {n: truth[n] for n in ("151.jpg", "152.jpg")}, names)
    (root / "dataset.yaml").write_text("landmark_set: isbi2015_cephalometric\n")
    js = tmp_path / "m.json"
    assert main(["evaluate", "--dataset", str(root), "--split", "all", "--json", str(js)]) == 0
    m = json.loads(js.read_text())
    assert m["n_images"] == 2 and m["mre_mm"] < 4.0 and "2.0" in m["sdr"] and len(m["per_landmark"]) == 19


def test_spine_smoke_shipped_model_gives_68_corners_and_cobb_angles(aasce_dir, tmp_path):
    """The shipped spine model on three AASCE holdout images (never trained on): 68 points near the labels and the
    three Cobb angles in the JSON."""
    from anatomark.data.dataset import LandmarkDataset

    items = LandmarkDataset(aasce_dir, split="holdout", landmark_set="aasce2019_spine").items[:3]
    out = tmp_path / "out"
    assert main(["infer", *[it["image"] for it in items], "--model", "aasce2019_heatmap_unet", "--out", str(out)]) == 0
    for it in items:
        doc = json.loads((out / f"{Path(it['image']).stem}.json").read_text())
        pts = np.array([[p["x"], p["y"]] for p in doc["landmarks"]])
        assert pts.shape == (68, 2)
        assert all(isinstance(p["shape_prior_replaced"], bool) for p in doc["landmarks"])  # the model has a prior
        h = Image.open(it["image"]).height
        err = np.linalg.norm(pts - it["landmarks"], axis=1) / h  # the first spine model is weak: ~3.6 % mean error
        assert np.median(err) < 0.06, f"{it['id']}: median corner error {np.median(err) * 100:.1f} % of the height"
        ms = {m["name"]: m for m in doc["measurements"]}
        assert {"cobb_PT", "cobb_MT", "cobb_TL"} <= set(ms) and ms["cobb_PT"]["unit"] == "deg"
        assert all(0 <= ms[n]["value"] < 180 for n in ms if ms[n]["value"] is not None)


def test_cli_train_fold_holds_out_that_fold_of_the_items(tmp_path):
    """--fold/--folds: the recipe's split becomes that k-fold part (seeded, see training.split_fold); the model is
    named after its fold and validated on exactly that part."""
    import yaml

    from _synthetic import DOTS, make_dot_images, tiny_recipe
    from anatomark.model import load_model
    from anatomark.training import split_fold

    ds = tmp_path / "ds"
    items = make_dot_images(ds / "images", 9, seed=1)
    names = [it["id"] for it in items]
    write_landmark_csv(ds / "landmarks_senior.csv", {it["id"]: it["landmarks"] for it in items}, DOTS.names)
    (ds / "splits.json").write_text(json.dumps({"train": names}))
    (tmp_path / "dots_set.yaml").write_text(yaml.safe_dump(DOTS.to_dict()))
    cfg = tmp_path / "dots.yaml"
    cfg.write_text(yaml.safe_dump({**tiny_recipe(epochs=1), "landmark_set": str(tmp_path / "dots_set.yaml")}))
    out = tmp_path / "run"
    argv = ["train", "--config", str(cfg), "--dataset", str(ds), "--out", str(out), "--fold", "1", "--folds", "3"]
    assert main(argv) == 0
    model = load_model(out / "model.pt")
    assert model.name == "dots_test_fold1of3"
    assert model.recipe["train"]["folds"] == 3 and model.recipe["train"]["fold"] == 1
    assert model.info["n_val"] == len(split_fold(9, 3, 1, 0)[1]) == 3
    assert main([*argv[:-4], "--fold", "3", "--folds", "3"]) == 2  # no fold 3 of 3: a clear error, exit code 2
