"""The default model (``models.default`` of ``configs/app.yaml``: ``isbi2015_unet_seg_ensemble_all_prior4``, unet_seg
with two refiners held near its points) served by a real MONAI Label server of its own (``--conf models
default,isbi2015_cascade``): landmarks on a real ISBI 2015 image near the senior annotation, honest answers on a
mirrored and a blank image, then one fine-tuning epoch through ``POST /train`` (a refined model fine-tunes its base)
and the new weights served. The cascade (the default until 2026-12-01) is served beside it.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from mlserver_process import isbi_studies, save_truth, start_server, stop_server, wait_done
from monailabel.client import MONAILabelClient

CASCADE = "isbi2015_cascade"
IMAGES = ["151", "152", "153", "154"]


def _default_name() -> str:
    from anatomark.config import load_yaml
    from anatomark.paths import CONFIG_DIR

    return load_yaml(CONFIG_DIR / "app.yaml")["models"]["default"]


DEFAULT = _default_name()


@pytest.fixture(scope="module")
def cascade_server(isbi, tmp_path_factory):
    from anatomark.paths import model_dir

    for name in (DEFAULT, CASCADE):
        if not (model_dir() / f"{name}.pt").is_file():
            pytest.skip(f"Shipped weights {model_dir() / (name + '.pt')} not found")
    from PIL import Image, ImageOps

    root = tmp_path_factory.mktemp("cascade")
    studies = isbi_studies(root, isbi, IMAGES)
    with Image.open(studies / "154.jpg") as im:
        ImageOps.mirror(im).save(studies / "154_mirrored.png")  # a left-facing cephalogram
        Image.new("L", im.size, 90).save(studies / "blank.png")
    # three labels, no validation image: publication without the gate (the gate: test_trust_gate_server.py)
    srv = start_server(root, studies, {"models": f"default,{CASCADE}", "train_epochs": "1", "gate_min_val_images": "0"})
    yield srv
    stop_server(srv)


@pytest.fixture(scope="module")
def cclient(cascade_server, tmp_path_factory):
    return MONAILabelClient(cascade_server.url, tmpdir=str(tmp_path_factory.mktemp("cascade_client")))


@pytest.fixture(scope="module")
def seen() -> dict:
    return {}


def mre_mm(res: dict, truth: np.ndarray) -> float:
    pred = np.array([[e["x"], e["y"]] for e in res["landmarks"]])
    return float(np.linalg.norm((pred - truth) * 0.1, axis=1).mean())


def test_default_and_cascade_land_near_the_senior_truth(cclient, senior, landmark_set, seen):
    info = cclient.info()
    # "default" resolved through configs/app.yaml; beside each model the detection task 3D Slicer shows as points
    assert sorted(info["models"]) == sorted([DEFAULT, f"{DEFAULT}_points", CASCADE, f"{CASCADE}_points"])
    assert info["models"][f"{DEFAULT}_points"]["type"] == "detection"
    assert info["models"][DEFAULT]["labels"] == {n: k + 1 for k, n in enumerate(landmark_set.names)}
    for name, bound in ((DEFAULT, 2.5), (CASCADE, 2.5)):  # Test1 vs senior: 1.65 mm for both
        _, res = cclient.infer(name, "154", {"result_format": "slicer_markups"})
        assert res["model"] == name and res["model_version"]
        assert [e["name"] for e in res["landmarks"]] == landmark_set.names and len(res["landmarks"]) == 19
        mre = mre_mm(res, senior["154.jpg"])
        assert mre < bound, f"{name} MRE {mre:.2f} mm against the senior annotation"
        seen[name] = (res["model_version"], mre)


def test_mirrored_and_blank_images_get_an_honest_answer(cclient, landmark_set):
    """A left-facing cephalogram is analysed as the anatomy it shows (the mirror of the original's points); a blank
    image is ``reliable: false`` with every measurement ``null`` and its reason."""
    _, orig = cclient.infer(DEFAULT, "154", {"result_format": "slicer_markups"})
    assert orig["quality"]["reliable"] is True and orig["orientation"]["applied"] == "identity"
    _, mir = cclient.infer(DEFAULT, "154_mirrored", {"result_format": "labelmap"})
    assert mir["orientation"]["applied"] == "flip_x" and mir["quality"]["reliable"] is True
    w = orig["size_wh"][0]
    a = np.array([[e["x"], e["y"]] for e in orig["landmarks"]])
    b = np.array([[w - 1 - e["x"], e["y"]] for e in mir["landmarks"]])
    assert float(np.linalg.norm((a - b) * 0.1, axis=1).mean()) < 1.0
    assert all(e["expected_error_mm"] is not None and e["in_image"] for e in mir["landmarks"])
    _, blank = cclient.infer(DEFAULT, "blank", {"result_format": "slicer_markups"})
    assert blank["quality"]["reliable"] is False and any("blank" in x for x in blank["quality"]["warnings"])
    assert blank["measurements"] and all(m["value"] is None and m["reason"] for m in blank["measurements"])
    assert all(e["reliable"] is False for e in blank["landmarks"])


def test_fine_tune_the_default_through_train_and_serve_new_weights(
    cclient, cascade_server, senior, landmark_set, seen, tmp_path
):
    shipped, mre_shipped = seen[DEFAULT]
    for i in ("151", "152", "153"):
        save_truth(cclient, tmp_path, i, senior, landmark_set.names)
    t0 = time.time()
    task = cclient.train_start(DEFAULT, {"max_epochs": 1})
    wait_done(cascade_server, task["id"], timeout=170)
    took = time.time() - t0
    stats = cclient.info()["train_stats"][DEFAULT]
    assert stats["started_from_version"] == shipped
    assert stats["n_train"] + stats["n_val"] == 3 and stats["epochs"] == 1
    _, res = cclient.infer(DEFAULT, "154", {"result_format": "slicer_markups"})
    assert res["model_version"] == stats["model_version"] != shipped
    assert len(res["landmarks"]) == 19
    mre = mre_mm(res, senior["154.jpg"])
    # one epoch on three images must not wreck a model that took hours to train
    assert mre < mre_shipped + 0.5, f"MRE {mre_shipped:.2f} -> {mre:.2f} mm after fine-tuning"
    # the cascade beside it is still served as shipped
    _, other = cclient.infer(CASCADE, "154", {"result_format": "slicer_markups"})
    assert other["model_version"] == seen[CASCADE][0]
    print(f"{DEFAULT} fine-tuning: {took:.1f} s end to end; MRE on 154: {mre_shipped:.2f} -> {mre:.2f} mm")
