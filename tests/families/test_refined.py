"""``kind: refined``: any model composed with a cascade's refiner predicts like that cascade, keeps its base's shape
prior and pre-alignment through the model file, and refuses what it cannot compose."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _synthetic import DOTS, make_dot_images, tiny_cascade_recipe
from anatomark.data.image_io import load_image
from anatomark.errors import AnatomarkError
from anatomark.families.refined import RefinedModel, compose
from anatomark.model import load_model
from anatomark.training import add_shape_prior, train


@pytest.fixture(scope="module")
def cascade(dots_model, tmp_path_factory):
    _, stage1 = dots_model
    root = tmp_path_factory.mktemp("refined")
    items = make_dot_images(root / "train", 24, seed=5)
    recipe = tiny_cascade_recipe(stage1["model_path"])
    torch.set_num_threads(1)
    res = train(recipe, items, root / "run", progress=False)
    return stage1["model_path"], res["model_path"], root


def test_refined_heatmap_model_predicts_like_the_cascade(cascade, tmp_path):
    stage1_path, cascade_path, _ = cascade
    test = make_dot_images(tmp_path / "test", 4, seed=77)
    recipe = {
        "name": "dots_refined",
        "kind": "refined",
        "landmark_set": DOTS.to_dict(),
        "base": {"weights": stage1_path},
        "local": {"weights": cascade_path},
    }
    res = train(recipe, test, tmp_path / "run", progress=False, val_items=test[:2])
    model = load_model(res["model_path"])
    assert isinstance(model, RefinedModel) and model.recipe["kind"] == "refined" and res["epochs"] == 0
    assert model.info["n_val"] == 2 and np.isfinite(model.info["val_mre_mm"])
    casc = load_model(cascade_path)
    for it in test:
        img = load_image(it["image"], spacing=1.0)
        pred = model.predict(img)
        np.testing.assert_allclose(pred.points, casc.predict(img).points, atol=1e-4)  # same stage 1 + refiner
        np.testing.assert_allclose(pred.coarse_points, load_model(stage1_path).predict(img).points, atol=1e-4)
        assert set(pred.timings) == {"base", "refine"} and pred.points.shape == (2, 2)
    with pytest.raises(AnatomarkError, match="nothing to resume"):
        train(recipe, test, tmp_path / "run", progress=False, resume=True)

    # fine-tuning the refined file (what the server's Train does): the base is fine-tuned, the refiner kept
    ft_recipe = {**model.recipe, "landmark_set": DOTS.to_dict()}
    ft_recipe["train"] = {**ft_recipe["train"], "lr": 0.001, "val_fraction": 0.0}
    ft = train(ft_recipe, test, tmp_path / "ft", init_weights=res["model_path"], epochs=1, progress=False)
    tuned = load_model(ft["model_path"])
    assert isinstance(tuned, RefinedModel) and ft["epochs"] == 1
    assert tuned.base.info["fine_tuned_from"] == res["model_path"]
    for a, b in zip(tuned.refiner.network.state_dict().values(), model.refiner.network.state_dict().values()):
        assert torch.equal(a, b)
    changed = [not torch.equal(a, b) for a, b in zip(tuned.network.parameters(), model.network.parameters())]
    assert any(changed)
    with pytest.raises(AnatomarkError, match="not a refined model"):
        train(ft_recipe, test, tmp_path / "ft2", init_weights=stage1_path, epochs=1, progress=False)


def test_refined_keeps_the_base_shape_prior_through_the_file(cascade, tmp_path):
    stage1_path, cascade_path, root = cascade
    items = make_dot_images(root / "train", 24, seed=5)
    with_prior = add_shape_prior(stage1_path, items, {"modes": 2, "replace_beyond": 0.0}, tmp_path / "prior.pt")
    model = compose(with_prior, cascade_path, DOTS)
    path = model.save(tmp_path / "refined.pt")
    again = load_model(path)
    assert again.base.shape_prior is not None and again.shape_prior is None
    img = load_image(items[0]["image"], spacing=1.0)
    np.testing.assert_allclose(again.predict(img).points, model.predict(img).points, atol=1e-4)
    np.testing.assert_allclose(again.predict_coarse(img).points, load_model(with_prior).predict(img).points, atol=1e-4)


def test_compose_refuses_what_it_cannot_refine(cascade, tmp_path):
    stage1_path, cascade_path, _ = cascade
    with pytest.raises(AnatomarkError, match="no local refiner"):
        compose(stage1_path, stage1_path, DOTS)
    with pytest.raises(AnatomarkError, match="needs base.weights"):
        compose(None, cascade_path, DOTS)
    refined = compose(stage1_path, cascade_path, DOTS).save(tmp_path / "r.pt")
    with pytest.raises(AnatomarkError, match="refined already"):
        compose(refined, cascade_path, DOTS)


def test_several_refiners_become_one_softmax_ensemble(cascade, tmp_path):
    stage1_path, cascade_path, root = cascade
    twice = compose(stage1_path, [cascade_path, cascade_path], DOTS)
    assert twice.recipe["local"]["network"]["name"] == "softmax_ensemble"
    assert len(twice.recipe["local"]["network"]["members"]) == 2 and len(twice.info["local"]["members"]) == 2
    again = load_model(twice.save(tmp_path / "ens.pt"))
    single = compose(stage1_path, cascade_path, DOTS)
    img = load_image(make_dot_images(tmp_path / "t", 1, seed=3)[0]["image"], spacing=1.0)
    # two copies of one refiner average to that refiner's own probabilities: the same points
    np.testing.assert_allclose(again.predict(img).points, single.predict(img).points, atol=1e-3)

    other = load_model(cascade_path)
    other.recipe["local"]["decode"] = {"method": "local_mean", "radius": 1}
    other_path = other.save(tmp_path / "other_decode.pt")
    with pytest.raises(AnatomarkError, match="decode differ"):
        compose(stage1_path, [cascade_path, other_path], DOTS)


def test_base_precision_runs_the_base_in_bfloat16_and_is_kept_in_the_file(cascade, tmp_path):
    stage1_path, cascade_path, _ = cascade
    exact = compose(stage1_path, cascade_path, DOTS)
    fast = compose(stage1_path, cascade_path, DOTS, {"name": "fast", "base": {"precision": "bfloat16"}})
    assert exact.base.precision == "float32" and fast.base.precision == "bfloat16"
    again = load_model(fast.save(tmp_path / "fast.pt"))
    assert again.base.precision == "bfloat16" and again.recipe["base"]["input"]["precision"] == "bfloat16"
    img = load_image(make_dot_images(tmp_path / "t", 1, seed=4)[0]["image"], spacing=1.0)
    moved = np.abs(again.predict(img).points - exact.predict(img).points).max()
    assert moved < 0.5, f"a bfloat16 base moved a refined point by {moved:.2f} px"
    with pytest.raises(AnatomarkError, match="Unknown inference precision 'half'"):
        compose(stage1_path, cascade_path, DOTS, {"base": {"precision": "half"}})


def test_start_prior_is_a_setting_of_the_composed_model_and_kept_in_the_file(cascade, tmp_path):
    stage1_path, cascade_path, _ = cascade
    plain = compose(stage1_path, cascade_path, DOTS)
    assert plain.refiner.log_prior is None and "start_prior_mm" not in plain.recipe["local"]
    held = compose(stage1_path, cascade_path, DOTS, {"name": "held", "local": {"start_prior_mm": 1.0}})
    again = load_model(held.save(tmp_path / "held.pt"))
    assert again.recipe["local"]["start_prior_mm"] == 1.0 and again.refiner.log_prior is not None
    img = load_image(make_dot_images(tmp_path / "t", 1, seed=4)[0]["image"], spacing=1.0)
    base = again.predict_coarse(img).points
    moved = np.hypot(*(again.predict(img).points - base).T).max()
    free = np.hypot(*(plain.predict(img).points - base).T).max()
    assert moved <= free + 1e-6  # held near the base's points, never pushed further
    with pytest.raises(AnatomarkError, match="start_prior_mm must be > 0"):
        compose(stage1_path, cascade_path, DOTS, {"local": {"start_prior_mm": 0}})


def test_a_member_may_answer_for_some_landmarks_only(cascade, tmp_path):
    """local.weights entries {weights, landmarks} / {weights, except_landmarks}: the split ensemble is stored with
    its covers and, with two copies of one refiner, predicts like that refiner; bad entries are refused."""
    stage1_path, cascade_path, _ = cascade
    first = DOTS.names[0]
    split = [{"weights": cascade_path, "landmarks": [first]}, {"weights": cascade_path, "except_landmarks": [first]}]
    model = compose(stage1_path, split, DOTS)
    net = model.recipe["local"]["network"]
    assert net["covers"] == [[0], list(range(1, len(DOTS)))]
    assert model.info["local"]["members"][0]["landmarks"] == [first]
    again = load_model(model.save(tmp_path / "split.pt"))
    single = compose(stage1_path, cascade_path, DOTS)
    img = load_image(make_dot_images(tmp_path / "t", 1, seed=3)[0]["image"], spacing=1.0)
    np.testing.assert_allclose(again.predict(img).points, single.predict(img).points, atol=1e-3)
    with pytest.raises(AnatomarkError, match="no member answers"):
        compose(stage1_path, [split[0], split[0]], DOTS)
    with pytest.raises(AnatomarkError, match="not in"):
        compose(stage1_path, [cascade_path, {"weights": cascade_path, "landmarks": ["gonion"]}], DOTS)
    with pytest.raises(AnatomarkError, match="use a cascade name or file"):
        compose(stage1_path, [cascade_path, {"weights": cascade_path}], DOTS)
    with pytest.raises(AnatomarkError, match="needs other members"):
        compose(stage1_path, [split[0]], DOTS)


def test_a_refiner_trained_on_its_own_is_a_member(cascade, tmp_path):
    """A ``kind: local`` model (the refiner trained alone, here with nothing held out) composes like a cascade's
    refiner: the same network gives the same points, and its training info is kept as the member's provenance."""
    stage1_path, cascade_path, root = cascade
    casc = load_model(cascade_path)
    local_recipe = {
        "name": "dots_refiner",
        "kind": "local",
        "landmark_set": DOTS.to_dict(),
        "local": casc.recipe["local"],
        "train": {**casc.recipe["train"], "epochs": 1, "val_fraction": 0.0},
    }
    res = train(local_recipe, make_dot_images(root / "train", 24, seed=5), tmp_path / "local", progress=False)
    alone = load_model(res["model_path"])
    assert alone.recipe["kind"] == "local" and alone.info["n_val"] == 0 and alone.info["n_train"] == 24
    model = compose(stage1_path, [res["model_path"], cascade_path], DOTS)
    assert model.info["local"]["members"][0]["n_val"] == 0
    # the cascade's own refiner network saved as a kind: local file refines exactly like the cascade
    same = type(alone)(casc.refiner.network, {**local_recipe, "local": casc.recipe["local"]}, DOTS, {"n_val": 0})
    same_path = same.save(tmp_path / "same.pt")
    img = load_image(make_dot_images(tmp_path / "t", 1, seed=6)[0]["image"], spacing=1.0)
    np.testing.assert_allclose(
        compose(stage1_path, same_path, DOTS).predict(img).points,
        compose(stage1_path, cascade_path, DOTS).predict(img).points,
        atol=1e-4,
    )
    with pytest.raises(AnatomarkError, match="refiner"):
        load_model(same_path).predict(img)
