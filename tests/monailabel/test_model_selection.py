"""Which models a real server serves: ``--conf models all`` = the shipped models of one landmark set (the default
model's, or ``--conf landmark_set``); the spine model served with its Cobb angles; every model-zoo family served
and answering K points (issue 4)."""

from __future__ import annotations

import json
import shutil
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from mlserver_process import start_server, stop_server
from PIL import Image

REPO = Path(__file__).resolve().parents[2]


def segmentation_models(info: dict) -> list[str]:
    """The label-map tasks of ``/info/`` (each model also has a ``<name>_points`` detection task for 3D Slicer)."""
    return [n for n, m in info["models"].items() if m.get("type") == "segmentation"]


def _info(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/info/", timeout=30) as r:
        return json.loads(r.read())


def test_all_means_the_default_models_landmark_set_and_the_spine_model_is_served_by_set(tmp_path, aasce_dir):
    from monailabel.client import MONAILabelClient

    from anatomark.data.dataset import LandmarkDataset
    from anatomark.paths import model_dir

    if not (model_dir() / "aasce2019_heatmap_unet.pt").is_file():
        pytest.skip("shipped spine model apps/landmarks/model/aasce2019_heatmap_unet.pt not found")
    studies = tmp_path / "studies"
    studies.mkdir()
    item = LandmarkDataset(aasce_dir, split="holdout", landmark_set="aasce2019_spine").items[0]
    shutil.copy(item["image"], studies / "spine.jpg")

    srv = start_server(tmp_path / "ceph", studies, {"models": "all"})
    try:
        models = _info(srv.url)["models"]
        assert {"isbi2015_cascade", "isbi2015_heatmap_unet"} <= set(models)
        assert "aasce2019_heatmap_unet" not in models  # another landmark set: not mixed into one app
    finally:
        stop_server(srv)

    srv = start_server(tmp_path / "spine", studies, {"models": "all", "landmark_set": "aasce2019_spine"})
    try:
        info = _info(srv.url)
        assert segmentation_models(info) == ["aasce2019_heatmap_unet"]
        assert info["models"]["aasce2019_heatmap_unet_points"]["type"] == "detection"  # the Slicer points task
        assert len(info["models"]["aasce2019_heatmap_unet"]["labels"]) == 68
        client = MONAILabelClient(srv.url, tmpdir=str(tmp_path / "client"))
        _, res = client.infer("aasce2019_heatmap_unet", "spine", {})
        pts = np.array([[p["x"], p["y"]] for p in res["landmarks"]])
        assert pts.shape == (68, 2)
        with Image.open(item["image"]) as im:
            h = im.height
        err = np.linalg.norm(pts - item["landmarks"], axis=1) / h
        assert np.median(err) < 0.06
        names = {m["name"] for m in res["measurements"]}
        assert names == {"cobb_PT", "cobb_MT", "cobb_TL"}
    finally:
        stop_server(srv)


def test_every_model_zoo_family_is_served_and_returns_k_points(tmp_path, monkeypatch, dots_model):
    """Each zoo family, and one composed with a cascade's refiner (``kind: refined``), through a real server."""
    from monailabel.client import MONAILabelClient

    from _synthetic import DOTS, make_dot_images, tiny_cascade_recipe, zoo_recipe
    from anatomark.families.refined import compose
    from anatomark.families.zoo import ZOO_KINDS
    from anatomark.training import train

    items = make_dot_images(tmp_path / "dots", 16, seed=11)
    models = tmp_path / "models"
    models.mkdir()
    for kind in ZOO_KINDS:
        res = train(zoo_recipe(kind, epochs=1), items, tmp_path / "runs" / kind, progress=False)
        shutil.copy(res["model_path"], models / f"dots_{kind}.pt")
    cascade = train(
        tiny_cascade_recipe(dots_model[1]["model_path"]), items, tmp_path / "runs" / "cascade", progress=False
    )
    compose(models / "dots_unet_seg.pt", cascade["model_path"], DOTS).save(models / "dots_refined.pt")
    kinds = [*ZOO_KINDS, "refined"]
    studies = tmp_path / "studies"
    studies.mkdir()
    shutil.copy(items[0]["image"], studies / "dots0.png")
    monkeypatch.setenv("ANATOMARK_MODEL_DIR", str(models))
    srv = start_server(tmp_path / "srv", studies, {"models": "all"})
    try:
        info = _info(srv.url)
        assert sorted(segmentation_models(info)) == sorted(f"dots_{k}" for k in kinds)
        client = MONAILabelClient(srv.url, tmpdir=str(tmp_path / "client"))
        for kind in kinds:
            assert info["models"][f"dots_{kind}"]["labels"] == {"left_dot": 1, "right_dot": 2}
            _, res = client.infer(f"dots_{kind}", "dots0", {})
            pts = np.array([[p["x"], p["y"]] for p in res["landmarks"]])
            assert pts.shape == (2, 2) and np.isfinite(pts).all(), kind  # one point per landmark, inside the image
            assert ((pts >= -0.5) & (pts <= 63.5)).all(), kind
    finally:
        stop_server(srv)
