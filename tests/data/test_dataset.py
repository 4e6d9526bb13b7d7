"""The native dataset layout: splits, annotators and the mean of annotators."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from anatomark.config import LandmarkSet
from anatomark.data.annotations import write_landmark_csv
from anatomark.data.dataset import LandmarkDataset
from anatomark.errors import AnnotationError

SET = LandmarkSet(name="two", names=["a", "b"], default_spacing_mm=(0.5, 0.5))


@pytest.fixture
def ds_dir(tmp_path):
    (tmp_path / "images").mkdir()
    for n in ("x.png", "y.png", "z.png"):
        Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "images" / n)
    p = {n: np.array([[1.0, 2.0], [3.0, 4.0]]) for n in ("x.png", "y.png", "z.png")}
    write_landmark_csv(tmp_path / "landmarks_senior.csv", p, SET.names)
    q = {n: v + np.array([[1.0, 0.0], [0.0, 2.0]]) for n, v in p.items()}
    q["y.png"][1] = np.nan
    write_landmark_csv(tmp_path / "landmarks_junior.csv", q, SET.names)
    (tmp_path / "splits.json").write_text(json.dumps({"train": ["x.png", "y.png"], "test1": ["z.png"]}))
    return tmp_path


def test_splits_and_spacing(ds_dir):
    ds = LandmarkDataset(ds_dir, "train", "senior", SET)
    assert [it["id"] for it in ds] == ["x.png", "y.png"]
    assert ds[0]["spacing"] == (0.5, 0.5)
    assert len(LandmarkDataset(ds_dir, "all", "senior", SET)) == 3


def test_mean_of_annotators(ds_dir):
    ds = LandmarkDataset(ds_dir, "train", "mean", SET)
    np.testing.assert_allclose(ds[0]["landmarks"], [[1.5, 2.0], [3.0, 5.0]])
    # a landmark only one annotator placed keeps that annotator's point
    np.testing.assert_allclose(ds[1]["landmarks"][1], [3.0, 4.0])


def test_clear_errors(ds_dir, tmp_path_factory):
    with pytest.raises(AnnotationError, match=r"Unknown split 'val'.*\['test1', 'train'\]"):
        LandmarkDataset(ds_dir, "val", "senior", SET)
    with pytest.raises(AnnotationError, match="No annotation by 'resident'.*junior"):
        LandmarkDataset(ds_dir, "train", "resident", SET)
    with pytest.raises(AnnotationError, match="no images/ folder"):
        LandmarkDataset(tmp_path_factory.mktemp("empty"), "train", "senior", SET)
    (ds_dir / "splits.json").write_text(json.dumps({"train": ["x.png", "w.png"]}))
    with pytest.raises(AnnotationError, match="have no annotation, e.g. w.png"):
        LandmarkDataset(ds_dir, "train", "senior", SET)


def test_isbi_layout(isbi_dir):
    ds = LandmarkDataset(isbi_dir, "test1", "senior", "isbi2015_cephalometric")
    assert len(ds) == 150 and ds[0]["id"] == "151.jpg"
    assert ds[0]["landmarks"].shape == (19, 2) and ds.spacing == (0.1, 0.1)
    mean = LandmarkDataset(isbi_dir, "train", "mean", "isbi2015_cephalometric")
    senior = LandmarkDataset(isbi_dir, "train", "senior", "isbi2015_cephalometric")
    junior = LandmarkDataset(isbi_dir, "train", "junior", "isbi2015_cephalometric")
    np.testing.assert_allclose(mean[0]["landmarks"], (senior[0]["landmarks"] + junior[0]["landmarks"]) / 2)
    # the README's inter-observer figure: mean senior-junior distance about 2.15 mm
    d = np.concatenate([np.linalg.norm(s["landmarks"] - j["landmarks"], axis=1) for s, j in zip(senior, junior)]) * 0.1
    assert 1.5 < d.mean() < 2.8


def test_aasce_folder_reads_as_a_dataset_with_a_fixed_name_hashed_holdout(aasce_dir):
    from anatomark.data.dataset import LandmarkDataset, aasce_split_of

    train = LandmarkDataset(aasce_dir, split="train", landmark_set="aasce2019_spine")
    hold = LandmarkDataset(aasce_dir, split="holdout", landmark_set="aasce2019_spine")
    every = LandmarkDataset(aasce_dir, split="all", landmark_set="aasce2019_spine")
    ids_t, ids_h = {it["id"] for it in train.items}, {it["id"] for it in hold.items}
    assert not ids_t & ids_h and ids_t | ids_h == {it["id"] for it in every.items}
    assert len(every) == 481 and 0.15 < len(hold) / len(every) < 0.25
    assert all(aasce_split_of(i) == "holdout" for i in ids_h)
    it = hold.items[0]
    assert it["landmarks"].shape == (68, 2) and it["spacing"] is None and it["angles"].shape == (3,)


def test_aasce_folder_refuses_a_wrong_landmark_set_or_split(aasce_dir):
    from anatomark.data.dataset import LandmarkDataset

    with pytest.raises(AnnotationError, match="aasce2019_spine"):
        LandmarkDataset(aasce_dir, split="train", landmark_set="isbi2015_cephalometric")
    with pytest.raises(AnnotationError, match="holdout"):
        LandmarkDataset(aasce_dir, split="test1", landmark_set="aasce2019_spine")
