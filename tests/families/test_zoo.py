"""Model zoo: every family overfits bright dots, saves/reloads and predicts K points; losses, decoding,
pre-alignment, plateau schedule, alpha grid search and the benchmark script on a tiny synthetic dataset."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from _synthetic import DOTS, EPOCHS, make_dot_images, zoo_recipe
from anatomark.data.image_io import load_image
from anatomark.errors import AnatomarkError
from anatomark.families.zoo import ZOO_KINDS, ZooModel, ZooPrediction, encode_target, grid_search_alpha, register_affine
from anatomark.losses import LOSSES, coarse_target
from anatomark.metrics import radial_errors
from anatomark.model import load_model, save_model_file
from anatomark.training import train
from anatomark.transforms import functional as Fn

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dots(tmp_path_factory):
    return make_dot_images(tmp_path_factory.mktemp("zoo_dots"), 32, seed=3)


@pytest.mark.parametrize("kind", ZOO_KINDS)
def test_family_overfits_dots_saves_and_reloads(kind, dots, tmp_path):
    torch.set_num_threads(1)
    res = train(zoo_recipe(kind, epochs=EPOCHS.get(kind, 60)), dots, tmp_path / "run", progress=False)
    model = load_model(res["model_path"])
    assert isinstance(model, ZooModel) and model.kind == kind
    errs = []
    for it in dots:
        pred = model.predict(load_image(it["image"], spacing=1.0))
        assert isinstance(pred, ZooPrediction)
        assert pred.points.shape == (2, 2) and np.isfinite(pred.points).all()
        errs.append(radial_errors(pred.points, it["landmarks"], (1.0, 1.0)))
    errs = np.array(errs)
    assert errs.max() < 2.0, f"{kind}: max error {errs.max():.2f} px, mean {errs.mean():.2f} px"
    # explicit round trip through save_model_file / load_model gives the same points
    path = save_model_file(tmp_path / "again.pt", model.network, model.recipe, model.landmark_set, model.info)
    again = load_model(path)
    img = load_image(dots[0]["image"], spacing=1.0)
    np.testing.assert_allclose(again.predict(img).points, model.predict(img).points, atol=1e-6)
    # input.precision bfloat16: every family's outputs decode from a bf16 run; the setting goes into the file
    again.set_precision("bfloat16")
    moved = np.abs(again.predict(img).points - model.predict(img).points).max()
    assert moved < 1.0, f"{kind}: bfloat16 moved a point by {moved:.2f} px"
    assert load_model(again.save(tmp_path / "bf16.pt")).precision == "bfloat16"
    assert all(p.dtype == torch.float32 for p in again.network.parameters())


def test_dice_loss_ignores_missing_landmarks_and_rewards_overlap():
    dice = LOSSES["dice"]()
    target = torch.zeros(1, 2, 16, 16)
    target[0, 0, 4:8, 4:8] = 1  # channel 1 empty = missing landmark
    good = torch.full((1, 2, 16, 16), -20.0)
    good[0, 0, 4:8, 4:8] = 20.0
    assert dice(good, target) < 1e-3  # whatever channel 1 predicts is ignored
    bad = torch.full((1, 2, 16, 16), -20.0)
    bad[0, 0, 10:14, 10:14] = 20.0
    assert dice(bad, target) > 0.99


def test_dice_spatial_ce_penalises_a_second_blob_and_ignores_missing_landmarks():
    loss = LOSSES["dice_spatial_ce"](ce_weight=1.0)
    target = torch.zeros(1, 2, 32, 32)
    target[0, 0, 4:9, 4:9] = 1  # channel 1 empty = missing landmark
    good = torch.full((1, 2, 32, 32), -20.0)
    good[0, 0, 4:9, 4:9] = 20.0
    extra = good.clone()
    extra[0, 0, 20:25, 20:25] = 20.0  # a second blob elsewhere
    extra[0, 1] = 20.0  # whatever the missing channel predicts is ignored
    # good: Dice ~0, cross-entropy = log(25) (the minimum for a 5x5 target); the blob halves the probability
    assert float(loss(good, target)) == pytest.approx(np.log(25), abs=1e-3)
    assert float(loss(extra, target)) > np.log(50) - 1e-3


def test_ewc_weights_the_centre_by_alpha_and_supervises_coarse_output():
    ewc = LOSSES["ewc"](alpha=40.0)
    target = torch.zeros(1, 1, 8, 8)
    target[0, 0, 4, 4] = 1.0
    miss_centre = target.clone()
    miss_centre[0, 0, 4, 4] = 0.0
    miss_bg = target.clone()
    miss_bg[0, 0, 0, 0] = 1.0
    assert ewc(miss_centre, target).item() == pytest.approx(40.0 * ewc(miss_bg, target).item())
    hm = torch.from_numpy(Fn.points_to_heatmaps(np.array([[17.0, 9.0]]), (32, 32), 3.0))[None]
    small = coarse_target(hm, (8, 8))
    assert small.shape == (1, 1, 8, 8) and small.max().item() == pytest.approx(1.0)
    assert divmod(int(small.argmax()), 8) == (2, 4)
    # a tuple (fine, coarse) output: both terms count
    assert ewc((hm, small), hm).item() == pytest.approx(0.0, abs=1e-6)
    assert ewc((hm, torch.zeros_like(small)), hm).item() > 0


def test_spatial_softmax_ce_supervises_fine_and_coarse_outputs():
    ce = LOSSES["spatial_softmax_ce"](weights=[1.0, 0.5])
    hm = torch.from_numpy(Fn.points_to_heatmaps(np.array([[17.0, 9.0], [np.nan, np.nan]]), (32, 32), 3.0))[None]
    fine = torch.log(hm.clamp_min(1e-8))  # softmax(log hm) = the normalised target: the minimum of the fine term
    coarse = torch.zeros(1, 2, 8, 8)
    single = ce(fine, hm).item()
    assert single == pytest.approx(LOSSES["spatial_softmax_ce"]()(fine, hm).item())  # one output: unchanged
    flat = ce((fine, coarse), hm).item()
    assert flat == pytest.approx(single + 0.5 * np.log(64), rel=1e-4)  # a flat coarse map costs log(8 x 8) / 2
    peaked = torch.zeros(1, 2, 8, 8)
    peaked[0, 0, 2, 4] = 3.0  # the coarse peak where the down-sampled target peaks; channel 1 (missing) ignored
    assert ce((fine, peaked), hm).item() < flat


class _FixedLogits(torch.nn.Module):
    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = torch.nn.Parameter(logits, requires_grad=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.logits[None], self.logits[None, :, ::4, ::4]


def test_heatmap_zoo_family_decodes_the_spatial_softmax_of_its_logits():
    logits = torch.full((2, 32, 32), -5.0)
    logits[0, 9, 17] = 6.0  # (x, y) = (17, 9)
    logits[1, 20:23, 4:7] = 3.0  # a plateau centred on (5, 21)
    recipe = zoo_recipe("farnet")
    recipe["input"] = {"size_hw": [32, 32]}
    recipe["decode"] = {"source": "softmax", "method": "local_mean", "radius": 3}
    model = ZooModel(_FixedLogits(logits), recipe, DOTS)
    pts, conf, n_regions, missed = model.decode(np.zeros((32, 32), np.float32))
    np.testing.assert_allclose(pts, [[17.0, 9.0], [5.0, 21.0]], atol=0.01)
    assert n_regions is None and missed is None and (conf > 0.5).all() and (conf <= 1.0).all()
    recipe["decode"] = {"method": "argmax"}  # raw heatmap decoding (MSE / EWC training) is unchanged
    pts, conf, _, _ = ZooModel(_FixedLogits(logits), recipe, DOTS).decode(np.zeros((32, 32), np.float32))
    np.testing.assert_allclose(pts[0], [17.0, 9.0])
    assert conf[0] == pytest.approx(1.0)


def test_seg_regression_loss_and_target_encoding():
    pts = np.array([[10.0, 20.0], [np.nan, np.nan]])
    masks, coords = encode_target("seg_regression", pts, (32, 48), {"radius": 4})
    assert masks.shape == (2, 32, 48) and masks[1].sum() == 0 and masks[0, 20, 10] == 1
    np.testing.assert_allclose(coords[0].numpy(), [10 / 47, 20 / 31], rtol=1e-6)
    assert torch.isnan(coords[1]).all()
    loss = LOSSES["seg_regression"](alpha=0.2)
    logits = (masks * 40 - 20)[None]
    perfect = loss((logits, torch.nan_to_num(coords)[None]), (masks[None], coords[None]))
    assert torch.isfinite(perfect) and perfect.item() < 0.01
    shifted = coords.clone()
    shifted[0, 0] += 0.1
    worse = loss((logits, torch.nan_to_num(shifted)[None]), (masks[None], coords[None]))
    assert worse.item() == pytest.approx(perfect.item() + 0.01, abs=1e-4)
    # the spatial-softmax segmentation term: alpha * (Dice ~0 + log(mask area)) + the same coordinate term
    sce = LOSSES["seg_regression"](alpha=0.2, seg="dice_spatial_ce")
    area = float(masks[0].sum())
    both = sce((logits, torch.nan_to_num(shifted)[None]), (masks[None], coords[None]))
    assert both.item() == pytest.approx(0.2 * np.log(area) + 0.01, abs=1e-3)
    with pytest.raises(ValueError, match="dice_bce or dice_spatial_ce"):
        LOSSES["seg_regression"](seg="mse")


class _Constant(torch.nn.Module):
    def __init__(self, maps: torch.Tensor) -> None:
        super().__init__()
        self.maps = maps
        self.p = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.maps[None].expand(x.shape[0], -1, -1, -1) + self.p


def test_segmentation_decoding_counts_missed_and_extra_regions():
    maps = torch.full((3, 32, 32), -10.0)
    maps[0, 5:9, 20:24] = 10.0  # one region -> its centroid
    maps[1, 2:4, 2:4] = 10.0  # two regions -> the larger one wins
    maps[1, 20:26, 10:16] = 10.0
    maps[2, 12, 7] = -1.0  # nothing above 0.5 -> missed, falls back to the maximum
    from anatomark.config import LandmarkSet

    ls = LandmarkSet(name="three", names=["a", "b", "c"], default_spacing_mm=(1.0, 1.0))
    recipe = {"kind": "unet_seg", "input": {"size_hw": [32, 32]}}
    model = ZooModel(_Constant(maps), recipe, ls)
    pts, conf, n_regions, missed = model.decode(np.zeros((32, 32), np.float32))
    np.testing.assert_allclose(pts[0], [21.5, 6.5])
    np.testing.assert_allclose(pts[1], [12.5, 22.5])
    np.testing.assert_allclose(pts[2], [7.0, 12.0])
    assert n_regions.tolist() == [1, 2, 0] and missed.tolist() == [False, False, True]
    assert conf[2] < 0.5 < conf[0]
    model_nan = ZooModel(_Constant(maps), {**recipe, "decode": {"missed": "nan"}}, ls)
    assert np.isnan(model_nan.decode(np.zeros((32, 32), np.float32))[0][2]).all()


def _structured_image(size: int = 96) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    img = np.zeros((size, size))
    for cx, cy, s, a in [(30, 35, 6, 1.0), (62, 28, 4, 0.7), (48, 66, 9, 0.8), (25, 70, 3, 0.9)]:
        img += a * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s**2))
    img[15:80, 75:82] += 0.6
    return img.astype(np.float32)


def test_register_affine_recovers_a_known_transform():
    fixed = _structured_image()
    true = Fn.affine_matrix((47.5, 47.5), rotate_deg=4.0, scale=1.05, translate_xy=(3.0, -2.0))
    moving = Fn.warp_image(fixed, true)  # fixed pixel p lands at true @ p in the moving image
    m = register_affine(moving, fixed, seed=0)
    probe = np.array([[30.0, 35.0], [62.0, 28.0], [48.0, 66.0], [78.0, 50.0]])
    back = Fn.transform_points(Fn.transform_points(probe, true), m)
    assert np.abs(back - probe).max() < 1.0, back - probe
    # the same seed gives the same answer on every call (SimpleITK would read seed 0 as "use the wall clock")
    for seed in (0, 0, 3):
        again = register_affine(moving, fixed, seed=seed)
        assert np.allclose(again, m, rtol=0, atol=1e-6) == (seed == 0), again - m


def test_appearance_context_with_prealignment_trains_and_maps_back(dots, tmp_path):
    torch.set_num_threads(1)
    recipe = zoo_recipe("appearance_context", epochs=2, val_fraction=0.25)
    recipe["prealign"] = {"enabled": True, "iterations": 30}
    res = train(recipe, dots[:12], tmp_path / "run", progress=False)
    model = load_model(res["model_path"])
    assert model.template is not None and model.template.shape == (64, 64)
    assert "template" not in model.recipe["prealign"]  # model state, stored beside the weights, not in the recipe
    assert "prealign" in model.extra_networks()
    img = load_image(dots[0]["image"], spacing=1.0)
    pred = model.predict(img)
    assert "align" in pred.timings and pred.points.shape == (2, 2) and np.isfinite(pred.points).all()
    # with the identity as alignment the decoded points are unchanged
    scaled = Fn.resize_image(np.asarray(img.array, np.float32) / 255.0, (64, 64))
    a = model.predict_details(scaled, np.eye(3))[0]
    b = model.decode(Fn.warp_image(scaled, np.eye(3)))[0]
    np.testing.assert_allclose(a, b)


def test_plateau_scheduler_halves_the_learning_rate(dots, tmp_path):
    torch.set_num_threads(1)
    recipe = zoo_recipe("unet_seg", epochs=6, val_fraction=0.25)
    recipe["train"].update({"lr": 1e-7, "scheduler": "plateau", "plateau_patience": 0, "plateau_factor": 0.5})
    res = train(recipe, dots[:16], tmp_path / "run", progress=False)
    lrs = [h["lr"] for h in res["history"]]
    assert lrs[0] == pytest.approx(1e-7)
    assert all(b <= a for a, b in zip(lrs, lrs[1:]))
    assert lrs[-1] <= 0.5e-7 + 1e-15
    assert {round(v / 1e-7, 6) for v in lrs} <= {0.5**i for i in range(7)}


def test_grid_search_alpha_picks_the_best_validation_mre(dots, tmp_path):
    torch.set_num_threads(1)
    recipe = zoo_recipe("seg_regression", epochs=1, val_fraction=0.25)
    out = grid_search_alpha(recipe, dots[:12], tmp_path, alphas=(0.2, 1.0), progress=False)
    assert set(out["val_mre_mm"]) == {0.2, 1.0}
    assert out["best_alpha"] == min(out["val_mre_mm"], key=out["val_mre_mm"].get)
    assert load_model(out["model_path"]).recipe["loss"]["alpha"] == out["best_alpha"]


def _tiny_dataset(items: list[dict], n_train: int, tmp_path) -> Path:  # noqa: ANN001
    """A dataset folder (native layout, ``train``/``test1`` splits) of dot images + ``tmp_path/dots.yaml``."""
    ds = tmp_path / "ds"
    (ds / "images").mkdir(parents=True)
    rows = ["image," + ",".join(f"{n}_{c}" for n in DOTS.names for c in "xy")]
    for it in items:
        name = os.path.basename(it["image"])
        (ds / "images" / name).write_bytes(open(it["image"], "rb").read())
        rows.append(name + "," + ",".join(f"{v:.1f}" for v in np.asarray(it["landmarks"]).ravel()))
    (ds / "landmarks_senior.csv").write_text("\n".join(rows) + "\n")
    names = sorted(os.listdir(ds / "images"))
    (ds / "splits.json").write_text(json.dumps({"train": names[:n_train], "test1": names[n_train:]}))
    (tmp_path / "dots.yaml").write_text(yaml.safe_dump(DOTS.to_dict()))
    return ds


def test_benchmark_script_on_a_tiny_synthetic_dataset(dots, tmp_path):
    ds = _tiny_dataset(dots[:12], 8, tmp_path)
    recipes = []
    for kind in ZOO_KINDS:
        r = copy.deepcopy(zoo_recipe(kind, val_fraction=0.25))
        r["landmark_set"] = str(tmp_path / "dots.yaml")
        p = tmp_path / f"tiny_{kind}.yaml"
        p.write_text(yaml.safe_dump(r))
        recipes.append(str(p))
    out = tmp_path / "model_zoo.md"
    cmd = [sys.executable, str(REPO / "benchmarks" / "model_zoo.py"), "--epochs", "1", "--dataset", str(ds)]
    cmd += ["--recipes", *recipes, "--out", str(out), "--runs-dir", str(tmp_path / "runs"), "--threads", "1"]
    proc = subprocess.run([*cmd, "--quiet"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    for kind in ZOO_KINDS:
        assert f"| dots_{kind} | {kind} |" in text
    rows = json.loads(out.with_suffix(".json").read_text())
    assert len(rows) == 5 and all(r["epochs"] == 1 and r["n_images"] == 4 for r in rows)
    assert all("missed" in r for r in rows if r["kind"] in ("unet_seg", "fpn_seg", "seg_regression"))
    assert "Command:" in text and "commit" in text and "Machine:" in text


def test_benchmark_time_budget_plans_the_schedule_from_a_timed_first_epoch(dots, tmp_path):
    """``--minutes-per-model``: the first epoch is timed, then the run resumes with the epochs that fit the budget."""
    ds = _tiny_dataset(dots[:6], 4, tmp_path)
    r = copy.deepcopy(zoo_recipe("unet_seg", val_fraction=0.25))
    r["landmark_set"] = str(tmp_path / "dots.yaml")
    recipe = tmp_path / "tiny_unet_seg.yaml"
    recipe.write_text(yaml.safe_dump(r))
    out = tmp_path / "model_zoo.md"
    cmd = [sys.executable, str(REPO / "benchmarks" / "model_zoo.py"), "--minutes-per-model", "0.05"]
    cmd += ["--dataset", str(ds), "--recipes", str(recipe), "--out", str(out), "--runs-dir", str(tmp_path / "runs")]
    proc = subprocess.run([*cmd, "--threads", "1", "--quiet"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if "s per epoch ->" in x)
    per_epoch = float(line.split(": ")[1].split(" s per epoch")[0])
    planned = int(line.split("-> ")[1].split(" epochs")[0])
    # 0.05 min = 3 s of training. The log rounds the epoch time to 1 ms, so the plan is checked against the
    # whole interval of epoch times that print as this value (fast CI epochs make that interval matter).
    fewest = max(1, int(3.0 // (per_epoch + 5e-4)))
    most = max(1, int(3.0 // max(per_epoch - 5e-4, 1e-6)))
    assert fewest <= planned <= most, line
    history = json.loads((tmp_path / "runs" / r["name"] / "history.json").read_text())
    assert len(history) == planned
    row = json.loads(out.with_suffix(".json").read_text())[0]
    assert row["epochs"] == planned


def test_unet_seg_with_spatial_softmax_loss_and_decoding_overfits_dots(dots, tmp_path):
    torch.set_num_threads(1)
    recipe = zoo_recipe("unet_seg", epochs=40)
    recipe["loss"] = {"name": "dice_spatial_ce", "ce_weight": 1.0}
    # a window of at least the square's half-side: the target is flat, so the argmax may sit at its edge
    recipe["decode"] = {"source": "softmax", "method": "local_mean", "radius": 4}
    model = load_model(train(recipe, dots, tmp_path / "run", progress=False)["model_path"])
    errs = [
        radial_errors(model.predict(load_image(it["image"], spacing=1.0)).points, it["landmarks"], (1.0, 1.0))
        for it in dots
    ]
    assert np.max(errs) < 2.0, f"max error {np.max(errs):.2f} px"
    with pytest.raises(AnatomarkError, match="decode.source"):
        ZooModel(model.network, {**model.recipe, "decode": {"source": "blobs"}}, model.landmark_set)


def test_init_modules_starts_the_seg_regression_unet_from_a_trained_unet_seg(dots, tmp_path):
    """``train.init_modules``: the U-Net of a seg_regression network starts as a trained unet_seg network (the same
    UNetSeg widths), the rest of the network fresh; a submodule that does not exist or does not fit is an error."""
    from anatomark.networks import build_network
    from anatomark.training import init_submodules

    torch.set_num_threads(1)
    seg = train(zoo_recipe("unet_seg", epochs=1), dots[:8], tmp_path / "seg", progress=False)
    r = zoo_recipe("seg_regression", epochs=1)
    r["network"]["unet_features"] = list(zoo_recipe("unet_seg")["network"]["features"])
    net = build_network(r["network"], out_channels=len(DOTS))
    init_submodules(net, {"unet": str(seg["model_path"])})
    trained = load_model(seg["model_path"]).network.state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in net.unet.state_dict().items())
    with pytest.raises(AnatomarkError, match="no submodule 'encoder'"):
        init_submodules(net, {"encoder": str(seg["model_path"])})
    with pytest.raises(AnatomarkError, match="does not fit the submodule 'vgg'"):
        init_submodules(net, {"vgg": str(seg["model_path"])})
    r["train"]["init_modules"] = {"unet": str(seg["model_path"])}
    res = train(r, dots[:8], tmp_path / "reg", progress=False)  # the recipe key reaches the loop
    assert load_model(res["model_path"]).recipe["train"]["init_modules"] == {"unet": str(seg["model_path"])}
