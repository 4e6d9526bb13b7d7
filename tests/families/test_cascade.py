"""Coarse-to-fine: a local refiner trained with the shared loop improves a coarse model's points."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _synthetic import DOTS, make_dot_images
from anatomark.data.image_io import load_image
from anatomark.errors import AnatomarkError
from anatomark.families.cascade import CascadeModel, LocalInput, LocalRefiner
from anatomark.metrics import radial_errors
from anatomark.model import load_model
from anatomark.training import train


def test_local_input_context_patches_share_the_centre():
    """Every channel (fine patch, 4x zoomed-out context) is centred on the requested point, turned and scaled alike."""
    yy, xx = np.mgrid[:400, :300]
    image = np.exp(-((xx - 123.0) ** 2 + (yy - 211.0) ** 2) / (2 * 6.0**2)).astype(np.float32)
    li = LocalInput({"patch_size": 32, "context": [4], "network": {"in_channels": 2}})
    x, m = li.sample(li.pyramid(image), np.array([123.0, 211.0]), rotate_deg=7.0, scale=1.05)
    assert x.shape == (2, 32, 32)
    v, u = np.mgrid[:32, :32]
    for c in range(2):
        w = x[c] / x[c].sum()
        assert abs((w * u).sum() - 15.5) < 0.05 and abs((w * v).sum() - 15.5) < 0.05, f"channel {c} off centre"
    # the context channel shows the blob 4x smaller: its second moment is ~16x smaller than the fine patch's
    spread = [((x[c] / x[c].sum()) * ((u - 15.5) ** 2 + (v - 15.5) ** 2)).sum() for c in range(2)]
    assert spread[1] < spread[0] / 8
    assert np.allclose(m @ [15.5, 15.5, 1.0], [123.0, 211.0, 1.0])


def test_local_input_rejects_inconsistent_channels():
    with pytest.raises(AnatomarkError, match="in_channels is 1 but local.context"):
        LocalInput({"patch_size": 32, "context": [4], "network": {"in_channels": 1}})
    with pytest.raises(AnatomarkError, match="must be > 1"):
        LocalInput({"patch_size": 32, "context": [0.5], "network": {"in_channels": 2}})


def test_refiner_precision_is_checked():
    net = torch.nn.Conv2d(1, 2, 3, padding=1)
    with pytest.raises(AnatomarkError, match="Unknown inference precision 'fp8'"):
        LocalRefiner(net, {"spacing_mm": 0.2, "patch_size": 32, "precision": "fp8"})
    for p in ("float32", "bfloat16", "auto"):
        assert LocalRefiner(net, {"spacing_mm": 0.2, "patch_size": 32, "precision": p}).precision == p


class _TwoPeaks(torch.nn.Module):
    """Fixed logits for one landmark on a 64 px patch: a strong peak 30 px right of the centre (6 mm at 0.2 mm/px)
    and a weaker one 3 px left of it."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # the refiner looks up the device of the parameters
        logits = torch.full((1, 1, 64, 64), -10.0)
        logits[0, 0, 31, 61] = 8.0  # (x, y) = (61.5 - 0.5, 31.5 - 0.5): the centre is (31.5, 31.5)
        logits[0, 0, 31, 28] = 6.0
        self.register_buffer("logits", logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(x.shape[0], -1, -1, -1) + 0 * self.anchor


def test_start_prior_keeps_a_refiner_from_jumping_to_a_distant_peak():
    fine, start = np.zeros((200, 200), np.float32), np.array([[100.0, 100.0]])
    cfg = {"spacing_mm": 0.2, "patch_size": 64, "decode": {"method": "argmax", "radius": 2}}
    far = 100.0 - 31.5 + np.array([61.0, 31.0])
    near = 100.0 - 31.5 + np.array([28.0, 31.0])
    pts, conf, spread = LocalRefiner(_TwoPeaks(), cfg).refine_spread(fine, start)
    np.testing.assert_allclose(pts[0], far)  # no prior: the strongest peak, 6 mm away
    p_far = np.exp(8.0) / (np.exp(8.0) + np.exp(6.0) + (64 * 64 - 2) * np.exp(-10.0))
    assert conf[0] == pytest.approx(p_far, rel=1e-4)
    pts2, conf2, spread2 = LocalRefiner(_TwoPeaks(), {**cfg, "start_prior_mm": 2.0}).refine_spread(fine, start)
    np.testing.assert_allclose(pts2[0], near)  # a 2 mm prior: the near peak wins
    assert conf2[0] == pytest.approx(p_far * np.exp(-2.0), rel=1e-4)  # the network's own mass at the point
    assert spread2[0] > 20  # and its spread still shows the distant mode
    pts4, _, _ = LocalRefiner(_TwoPeaks(), {**cfg, "start_prior_mm": 4.0}).refine_spread(fine, start)
    np.testing.assert_allclose(pts4[0], far)  # a wide prior lets a much stronger distant peak win
    for bad in (0.0, -1.0):
        with pytest.raises(AnatomarkError, match="start_prior_mm must be > 0"):
            LocalRefiner(_TwoPeaks(), {**cfg, "start_prior_mm": bad})


@pytest.mark.parametrize("context", [None, [3]], ids=["fine_only", "with_context"])
def test_cascade_trains_saves_loads_and_refines(dots_model, tmp_path, context):
    _, stage1_res = dots_model
    ctx = {"context": context} if context else {}
    items = make_dot_images(tmp_path / "train", 48, seed=5)
    recipe = {
        "name": "dots_cascade",
        "kind": "cascade",
        "landmark_set": DOTS.to_dict(),
        "global": {"weights": stage1_res["model_path"]},
        "local": {
            "network": {
                "name": "heatmap_unet",
                "spatial_dims": 2,
                "in_channels": 1 + len(context or []),
                "features": [8, 8, 16, 16, 32, 8],
            },
            **ctx,
            "spacing_mm": 0.5,  # patches at twice the image resolution
            "patch_size": 32,
            "sigma": 2.0,
            "offset_sigma_mm": 2.0,
            "max_offset_mm": 5.0,
            "iterations": 2,
            "decode": {"method": "local_mean", "radius": 3},
        },
        "train": {"epochs": 8, "batch_size": 16, "patches_per_image": 6, "lr": 0.01, "val_fraction": 0.1, "seed": 0},
    }
    res = train(recipe, items, tmp_path / "run", progress=False)
    model = load_model(res["model_path"])
    assert isinstance(model, CascadeModel)
    assert model.refiner.input.channels == 1 + len(context or [])
    assert model.info["stage1"]["path"] == stage1_res["model_path"]
    stage1 = load_model(stage1_res["model_path"])
    test = make_dot_images(tmp_path / "test", 10, seed=77)
    e1, e2 = [], []
    for it in test:
        img = load_image(it["image"], spacing=1.0)
        pred = model.predict(img)
        assert set(pred.timings) == {"preprocess", "network", "refine"}
        e2.append(radial_errors(pred.points, it["landmarks"], (1, 1)))
        e1.append(radial_errors(stage1.predict(img).points, it["landmarks"], (1, 1)))
    e1, e2 = np.array(e1), np.array(e2)
    assert e2.max() < 2.0, f"refined max error {e2.max():.2f} px"
    assert e2.mean() < e1.mean(), f"refinement did not help: {e2.mean():.2f} vs {e1.mean():.2f} px"

    # local.precision bfloat16: the refiner runs a bf16 copy; points barely move and the model keeps float32 weights
    p32 = [model.predict(load_image(it["image"], spacing=1.0)).points for it in test[:4]]
    model.refiner = LocalRefiner(model.refiner.network, {**model.recipe["local"], "precision": "bfloat16"})
    p16 = [model.predict(load_image(it["image"], spacing=1.0)).points for it in test[:4]]
    moved = np.linalg.norm(np.array(p16) - np.array(p32), axis=-1)
    assert 0 < moved.max() < 0.5, f"bf16 moved points by up to {moved.max():.3f} px"
    assert all(p.dtype == torch.float32 for p in model.refiner.network.parameters())

    # fine-tuning from the cascade file itself (what the server's Train button does): both stages, then one file
    ft_recipe = {**model.recipe, "landmark_set": model.landmark_set.to_dict()}
    ft = train(ft_recipe, items[:16], tmp_path / "ft", init_weights=res["model_path"], epochs=1, progress=False)
    tuned = load_model(ft["model_path"])
    assert isinstance(tuned, CascadeModel) and tuned.landmark_set.names == DOTS.names
    p1 = tuned.predict(load_image(test[0]["image"], spacing=1.0)).points
    assert radial_errors(p1, test[0]["landmarks"], (1, 1)).max() < 3.0


def _patch_set_recipe(**augment) -> dict:
    return {
        "local": {"patch_size": 32, "spacing_mm": 0.5, "sigma": 2.0, "offset_sigma_mm": 2.0, "max_offset_mm": 4.0},
        "augment": {"rotate_deg": 5.0, **augment},
        "train": {"patches_per_image": 2},
    }


def test_refiner_patches_take_noise_and_blur_from_the_shared_random_state():
    """augment.noise_* / blur_* change the refiner's patches (not the first patch's geometry or target), draw from the
    set's one random state (same seed, same patches), and are refused by a whole-image heatmap recipe."""
    from anatomark.families.cascade import LocalPatchSet
    from anatomark.training import HeatmapTrainingSet

    yy, xx = np.mgrid[:120, :100]
    image = (0.5 + 0.4 * np.sin(xx / 5.0) * np.cos(yy / 7.0)).astype(np.float32)
    items = [{"scaled": image, "points": np.array([[40.0, 50.0], [60.0, 70.0]])}]
    plain = LocalPatchSet(items, _patch_set_recipe())
    noisy = [LocalPatchSet(items, _patch_set_recipe(noise_prob=1.0, noise_std=0.05, blur_prob=1.0)) for _ in range(2)]
    (x0, t0), (x1, t1) = plain[0], noisy[0][0]
    assert torch.equal(t0, t1), "the noise must not move the first patch or its target"
    assert not torch.allclose(x0, x1)
    noisy[0].set_random_state(0)
    for i in range(2):
        assert torch.equal(noisy[0][i][0], noisy[1][i][0]), "same seed, same noise"
    with pytest.raises(AnatomarkError, match="refiner patches"):
        HeatmapTrainingSet(
            [], {"name": "h", "input": {"size_hw": [64, 64]}, "augment": {"noise_prob": 0.5, "noise_std": 0.02}}
        )


def test_a_specialist_refiner_centres_its_patches_on_its_focus_landmarks():
    """local.focus: every training patch is centred near a focus landmark (the others stay targets when inside), an
    image without one falls back to all its landmarks, and unknown names are refused."""
    from anatomark.families.cascade import LocalPatchSet, focus_indices

    yy, xx = np.mgrid[:200, :200]
    image = (0.5 + 0.4 * np.sin(xx / 5.0)).astype(np.float32)
    pts = np.array([[30.0, 30.0], [170.0, 170.0]])
    no_focus = np.array([[30.0, 30.0], [np.nan, np.nan]])
    recipe = _patch_set_recipe()
    recipe["train"]["patches_per_image"] = 20
    ds = LocalPatchSet([{"scaled": image, "points": pts}, {"scaled": image, "points": no_focus}], recipe, centres=[1])
    for i in range(40):
        _, target = ds[i]
        present = target.flatten(1).amax(1) > 0
        assert present.tolist() == ([False, True] if i < 20 else [True, False]), f"patch {i}"
    assert focus_indices(DOTS, []) is None
    assert focus_indices(DOTS, [DOTS.names[1]]) == [1]
    with pytest.raises(AnatomarkError, match="not in landmark set"):
        focus_indices(DOTS, ["gonion"])
