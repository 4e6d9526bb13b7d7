"""The family registry: built-in kinds load on demand, a new family is one class, unknown kinds are clear errors."""

from __future__ import annotations

import pytest
import torch

from _synthetic import DOTS, make_dot_images, tiny_recipe
from anatomark.errors import AnatomarkError
from anatomark.family import _REGISTRY, BUILTIN, Family, family_kinds, get_family, register_family
from anatomark.model import LandmarkModel, load_model
from anatomark.training import train


def test_every_builtin_kind_loads_its_family():
    assert set(BUILTIN) <= set(family_kinds())
    for kind in BUILTIN:
        fam = get_family(kind)
        assert isinstance(fam, Family) and fam.kind == kind and "landmark_set" in fam.required_sections
        assert "train" in fam.required_sections or kind == "refined"  # a refined model is composed, not trained


def test_unknown_kind_names_the_known_ones():
    with pytest.raises(AnatomarkError, match="Unknown model kind 'blobnet'.*cascade.*heatmap"):
        get_family("blobnet")


def test_an_object_without_the_protocol_is_refused():
    with pytest.raises(TypeError, match="does not implement"):
        register_family(object())  # type: ignore[arg-type]


class _RecordingHeatmapFamily:
    """A new family in a few lines: the heatmap family's training, its own kind (and it records that it ran)."""

    kind = "recording_heatmap"
    required_sections = ("landmark_set", "network", "input", "train")

    def __init__(self) -> None:
        self.trained = 0

    def load(self, recipe, landmark_set, states, info):  # noqa: ANN001, ANN201
        return get_family("heatmap").load(recipe, landmark_set, states, info)

    def train(self, recipe, landmark_set, items, out_dir, run):  # noqa: ANN001, ANN201
        self.trained += 1
        return get_family("heatmap").train(recipe, landmark_set, items, out_dir, run)


def test_a_registered_family_trains_saves_and_loads_through_the_core(tmp_path):
    torch.set_num_threads(1)
    fam = register_family(_RecordingHeatmapFamily())
    try:
        items = make_dot_images(tmp_path / "dots", 8, seed=5)
        recipe = {**tiny_recipe(epochs=1), "kind": "recording_heatmap", "landmark_set": DOTS.to_dict()}
        res = train(recipe, items, tmp_path / "run", progress=False)
        assert fam.trained == 1
        model = load_model(res["model_path"])
        assert isinstance(model, LandmarkModel) and model.recipe["kind"] == "recording_heatmap"
        assert (tmp_path / "run" / "last.pt").is_file() and (tmp_path / "run" / "history.json").is_file()
    finally:
        _REGISTRY.pop("recording_heatmap", None)
