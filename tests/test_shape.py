from __future__ import annotations

import numpy as np
import pytest
import torch

from _synthetic import make_dot_images
from anatomark.errors import AnatomarkError
from anatomark.shape import ShapePrior


def _spines(n: int, rng: np.random.Generator, k: int = 12) -> np.ndarray:
    """``(n, k, 2)`` pixel shapes in a 200 x 400 image: points down a gently curved line, random tilt and offset."""
    t = np.linspace(0.1, 0.9, k)
    out = []
    for _ in range(n):
        a, b, c = rng.normal(0, 20), rng.normal(0, 15), rng.normal(100, 5)
        x = c + a * (t - 0.5) + b * (t - 0.5) ** 2 + rng.normal(0, 0.5, k)
        y = 400 * t + rng.normal(0, 0.5, k)
        out.append(np.stack([x, y], axis=1))
    return np.stack(out)


def test_prior_replaces_only_the_outlying_points_and_fills_missing_ones(rng):
    shapes = _spines(80, rng)
    prior = ShapePrior.fit(shapes, np.tile([200.0, 400.0], (80, 1)), modes=4, replace_beyond=0.02, huber=0.01)
    truth = _spines(1, rng)[0]
    pred = truth + rng.normal(0, 0.5, truth.shape)
    pred[3] += (60.0, -30.0)  # a corner that jumped 67 px (17 % of the height)
    pred[8] += (-45.0, 0.0)
    pred[10] = np.nan  # a landmark the network did not find
    fixed, replaced = prior.apply(pred, (200, 400))
    assert replaced.tolist() == [i in (3, 8, 10) for i in range(12)]
    assert np.all(np.linalg.norm(fixed - truth, axis=1) < 3.0)
    keep = ~replaced
    assert np.array_equal(fixed[keep], pred[keep])  # good points are left exactly as predicted


def test_prior_refuses_too_few_shapes_or_too_many_modes(rng):
    shapes = _spines(5, rng)
    with pytest.raises(AnatomarkError, match="at least 18 fully annotated"):
        ShapePrior.fit(shapes, np.tile([200.0, 400.0], (5, 1)), modes=16)
    with pytest.raises(AnatomarkError, match="between 1 and 2 x 12"):
        ShapePrior.fit(shapes, np.tile([200.0, 400.0], (5, 1)), modes=30)
    shapes[:, 0] = np.nan  # incomplete shapes are skipped, not fitted
    with pytest.raises(AnatomarkError, match="got 0"):
        ShapePrior.fit(shapes, np.tile([200.0, 400.0], (5, 1)), modes=2)


def test_model_file_keeps_the_prior_and_predict_applies_it(dots_model, tmp_path):
    from anatomark.data.image_io import load_image
    from anatomark.model import load_model
    from anatomark.training import add_shape_prior

    root, res = dots_model
    items = make_dot_images(tmp_path / "labels", 24, seed=5)
    out = add_shape_prior(res["model_path"], items, {"modes": 4, "replace_beyond": 0.0}, tmp_path / "prior.pt")
    plain, model = load_model(res["model_path"]), load_model(out)
    assert plain.shape_prior is None and model.shape_prior is not None
    assert model.recipe["shape_prior"]["modes"] == 4 and model.info["shape_prior"]["n_shapes"] == 24
    again = load_model(model.save(tmp_path / "again.pt"))
    for name, buf in model.shape_prior.state_dict().items():
        assert torch.allclose(buf.double(), again.shape_prior.state_dict()[name].double(), atol=1e-6), name
    img = load_image(items[0]["image"])
    p0, p1 = plain.predict(img), model.predict(img)
    assert "shape_prior" in p1.timings and p1.replaced.all()  # replace_beyond 0: every point is the fitted shape
    expected = model.shape_prior.project(p0.points, img.size_wh)
    assert np.allclose(p1.points, expected, atol=1e-6)
    assert np.linalg.norm(p1.points - items[0]["landmarks"], axis=1).max() < 4.0


def test_fine_tuning_keeps_the_prior_of_the_model_it_starts_from(dots_model, tmp_path):
    from anatomark.model import load_model
    from anatomark.training import add_shape_prior, train

    root, res = dots_model
    start = add_shape_prior(
        res["model_path"], make_dot_images(tmp_path / "a", 24, seed=6), {"modes": 2}, tmp_path / "s.pt"
    )
    model = load_model(start)
    few = make_dot_images(tmp_path / "b", 3, seed=7)  # far too few shapes to refit a prior
    recipe = {**model.recipe, "landmark_set": model.landmark_set}
    tuned = train(recipe, few, tmp_path / "run", init_weights=start, epochs=1, progress=False, val_items=few)
    after = load_model(tuned["model_path"])
    assert after.shape_prior is not None
    assert torch.equal(after.shape_prior.components, model.shape_prior.components)
