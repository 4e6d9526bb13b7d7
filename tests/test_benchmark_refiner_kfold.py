"""``benchmarks/refiner_kfold.py`` on tiny refiners of the synthetic dots: it scores a fold run at its last epoch on
exactly the images the run validated on (the run's own last validation MRE comes back), pools error files written
in different sessions and pairs two recipes image by image."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from _synthetic import DOTS, make_dot_images, tiny_cascade_recipe
from anatomark.errors import AnatomarkError
from anatomark.training import train

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import refiner_kfold as rk  # noqa: E402


def _local_recipe(name: str, sigma: float, fold: int, folds: int = 3, epochs: int = 2) -> dict:
    recipe = tiny_cascade_recipe("unused.pt", epochs=epochs)
    recipe = {k: v for k, v in recipe.items() if k != "global"}
    recipe["kind"] = "local"
    recipe["name"] = f"{name}_fold{fold}of{folds}"
    recipe["local"] = {**recipe["local"], "sigma": sigma, "offset_sigma_mm": 2.0, "max_offset_mm": 4.0}
    recipe["train"] = {**recipe["train"], "folds": folds, "fold": fold}
    return recipe


@pytest.fixture(scope="module")
def fold_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("kfold")
    items = make_dot_images(root / "images", 12, seed=3)
    runs = {}
    for name, sigma in (("dots_refiner", 2.0), ("dots_refiner_wide", 3.0)):
        for fold in (0, 1):
            out = root / f"{name}_fold{fold}"
            train(_local_recipe(name, sigma, fold), items, out, progress=False)
            runs[name, fold] = out
    return items, runs, root


def test_scores_the_runs_own_validation_images_at_the_last_epoch(fold_runs):
    items, runs, _ = fold_runs
    meta, ids, err = rk.fold_errors(runs["dots_refiner", 0], items, DOTS)
    assert meta == {**meta, "recipe": "dots_refiner", "fold": 0, "folds": 3, "epoch": 2, "epochs": 2}
    assert len(ids) == 4 and err.shape == (4, 2)  # 12 images, 3 folds
    # the same images and starts as the run's own validation: its last epoch's MRE, up to the float16 rounding
    assert np.nanmean(err) == pytest.approx(meta["history_mre_mm"], abs=0.05)
    _, ids1, _ = rk.fold_errors(runs["dots_refiner", 1], items, DOTS)
    assert not set(ids) & set(ids1)  # folds hold out different images


def test_refuses_an_unfinished_run_and_another_annotation(fold_runs, tmp_path):
    items, _, _ = fold_runs
    out = tmp_path / "short"
    train(_local_recipe("dots_refiner", 2.0, 2), items, out, epochs=1, progress=False)
    with pytest.raises(AnatomarkError, match="stopped at epoch 1 of 2.*--resume"):
        rk.fold_errors(out, items, DOTS)
    done = tmp_path / "senior"
    train(_local_recipe("dots_refiner", 2.0, 2, epochs=1), items, done, progress=False, info={"annotator": "senior"})
    with pytest.raises(AnatomarkError, match="senior annotation"):
        rk.fold_errors(done, items, DOTS, annotator="mean")


def test_error_files_pool_across_folds_and_pair_recipes(fold_runs, tmp_path):
    items, runs, _ = fold_runs
    folder = tmp_path / "errors"
    scored = {}
    for (name, fold), run in runs.items():
        meta, ids, err = rk.fold_errors(run, items, DOTS)
        path = rk.write_errors(meta, ids, err, list(DOTS.names), folder)
        assert path.name == f"{name}_fold{fold}of3.csv"
        scored[name] = {**scored.get(name, {}), **dict(zip(ids, err))}
    pooled = rk.read_errors(folder)
    assert set(pooled) == {"dots_refiner", "dots_refiner_wide"}
    assert pooled["dots_refiner"]["folds"] == ["0/3", "1/3"] and len(pooled["dots_refiner"]["errors"]) == 8
    for i, e in scored["dots_refiner"].items():
        np.testing.assert_allclose(pooled["dots_refiner"]["errors"][i], e, atol=1e-4)
    lines, data = rk.report_lines(pooled, "dots_refiner")
    text = "\n".join(lines)
    assert "| dots_refiner | 0/3, 1/3 | 8 |" in text and "Paired against `dots_refiner`" in text
    want = np.mean(
        [
            np.nanmean(scored["dots_refiner_wide"][i]) - np.nanmean(scored["dots_refiner"][i])
            for i in scored["dots_refiner"]
        ]
    )
    assert data["dots_refiner_wide"]["vs_baseline"]["diff_mm"] == pytest.approx(want, abs=1e-3)
    lo, hi = data["dots_refiner_wide"]["vs_baseline"]["ci95"]
    assert lo <= want <= hi


def test_paired_difference_of_known_errors():
    base = {"a": np.array([1.0, 1.0]), "b": np.array([2.0, 2.0]), "c": np.array([1.0, 3.0])}
    other = {"a": np.array([0.5, 0.5]), "b": np.array([2.5, 2.5]), "d": np.array([9.0, 9.0])}
    p = rk.paired(base, other)
    assert p["n"] == 2 and p["better"] == 1 and p["diff_mm"] == pytest.approx(0.0)
    np.testing.assert_allclose(p["per_landmark"], [0.0, 0.0])
    assert rk.paired(base, {"z": np.array([1.0, 1.0])}) is None


def test_start_spread_can_be_chosen(fold_runs):
    items, runs, _ = fold_runs
    run = runs["dots_refiner", 0]
    _, ids, err = rk.fold_errors(run, items, DOTS)
    _, ids_same, same = rk.fold_errors(run, items, DOTS, start_sigma_mm=2.0)  # the recipe's own offset_sigma_mm
    assert ids_same == ids
    np.testing.assert_array_equal(same, err)
    _, ids_near, near = rk.fold_errors(run, items, DOTS, start_sigma_mm=0.5)
    assert ids_near == ids and not np.allclose(near, err)  # the same images from other starts
    with pytest.raises(AnatomarkError, match="must be > 0"):
        rk.fold_errors(run, items, DOTS, start_sigma_mm=0.0)


def test_start_prior_decodes_as_a_composed_model_serves(fold_runs):
    """A prior far narrower than a fine pixel pins every refined point to its start (within the four fine pixels
    around the patch centre): the errors are the starts'."""
    from anatomark.families.cascade import LocalStage
    from anatomark.metrics import radial_errors
    from anatomark.transforms import functional as Fn

    items, runs, _ = fold_runs
    run = runs["dots_refiner", 0]
    _, ids, free = rk.fold_errors(run, items, DOTS)
    _, ids_pinned, pinned = rk.fold_errors(run, items, DOTS, start_prior_mm=1e-3)
    assert ids_pinned == ids
    recipe = _local_recipe("dots_refiner", 2.0, 0)
    stage = LocalStage(recipe, DOTS, items, None, progress=False)
    starts = np.stack(
        [Fn.resize_points(s, c["scaled"].shape, c["orig_hw"]) for c, s in zip(stage.val_c, stage.val_starts)]
    )
    want = radial_errors(
        starts, np.stack([c["landmarks"] for c in stage.val_c]), np.asarray([c["spacing"] for c in stage.val_c])
    )
    half_pixel = 0.5 * np.sqrt(2.0) * recipe["local"]["spacing_mm"]
    np.testing.assert_allclose(pinned, want, atol=half_pixel)
    assert np.abs(free - want).max() > 5 * half_pixel  # without the prior the refiner moves the points
    with pytest.raises(AnatomarkError, match="start_prior_mm must be > 0"):
        rk.fold_errors(run, items, DOTS, start_prior_mm=-1.0)
