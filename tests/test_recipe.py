"""Typed recipes: defaults in one place, misspelt keys are errors that name them."""

from __future__ import annotations

import pytest

from anatomark.errors import AnatomarkError
from anatomark.paths import CONFIG_DIR
from anatomark.recipe import AugmentConfig, DecodeConfig, LocalConfig, TrainConfig, load_recipe


def test_defaults_and_tuples():
    tc = TrainConfig.of({})
    assert (tc.lr, tc.batch_size, tc.scheduler, tc.val_fraction, tc.val_seed) == (1e-3, 8, "cosine", 0.1, 0)
    assert DecodeConfig.of({}).radius == 3 and DecodeConfig.of({}).source == "mask"
    aug = AugmentConfig.of({"augment": {"scale": [0.9, 1.1]}})
    assert aug.scale == (0.9, 1.1) and aug.intensity_gamma == (1.0, 1.0)


def test_a_misspelt_key_is_an_error_naming_it():
    with pytest.raises(AnatomarkError, match="Unknown key.*learning_rate.*'train'"):
        TrainConfig.of({"train": {"learning_rate": 0.01}})


def test_a_required_key_is_named():
    with pytest.raises(AnatomarkError, match="'local' lacks patch_size"):
        LocalConfig.from_dict({"network": {}}, "local")


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONFIG_DIR / "models").glob("*.yaml")))
def test_every_shipped_recipe_parses(name):
    r = load_recipe(name)
    for section in (TrainConfig, AugmentConfig, DecodeConfig):
        section.of(r)
    if "local" in r and "weights" not in r["local"]:  # a refined recipe names a cascade file instead
        LocalConfig.of(r)
