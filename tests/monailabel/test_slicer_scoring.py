"""What 3D Slicer's stock MONAILabel module does, against a real server through ``monailabel.client`` (issue 16):

- ``/infer`` without ``save_label`` keeps the prediction as the ``original`` label, so ``landmark_mre`` scoring works
  after a final label is saved, and its score is readable through the API (image info);
- ``lowest_confidence`` does not propose the same image twice in a row;
- a label map saved with ``label_info`` in another order is stored with a ``label_info`` describing the stored map.

One server of its own (three ISBI images), tests run in file order.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from mlserver_constants import MODEL
from mlserver_process import Server, isbi_studies, save_truth, start_server, stop_server
from monailabel.client.client import MONAILabelUtils
from PIL import Image

IMAGES = ["151", "152", "153"]
SPACING_MM = 0.1  # ISBI JPEGs: the landmark set's default spacing


@pytest.fixture(scope="module")
def sserver(isbi: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    from anatomark.paths import model_dir

    if not (model_dir() / f"{MODEL}.pt").is_file():
        pytest.skip(f"Shipped weights {model_dir() / (MODEL + '.pt')} not found")
    root = tmp_path_factory.mktemp("slicer_scoring")
    studies = isbi_studies(root, isbi, IMAGES)
    srv = start_server(root, studies, {"models": MODEL, "points_tasks": "false", "infer_threads": "1"})
    yield srv
    stop_server(srv)


@pytest.fixture(scope="module")
def sclient(sserver: Server, tmp_path_factory: pytest.TempPathFactory):
    from monailabel.client import MONAILabelClient

    return MONAILabelClient(sserver.url, tmpdir=str(tmp_path_factory.mktemp("slicer_client")))


def get_json(server: Server, selector: str) -> object:
    status, body, _, _ = MONAILabelUtils.http_method("GET", server.url, selector)
    assert status == 200, body
    return json.loads(body)


def wait_for(fn, timeout: float, what: str, server: Server):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.25)
    pytest.fail(f"{what} within {timeout} s:\n{server.log_tail()}")


def test_infer_without_save_label_keeps_original_and_score_is_readable(
    sserver, sclient, tmp_path, senior, landmark_set
):
    _, res = sclient.infer(MODEL, "151", {})  # what the stock module sends: no save_label
    pred = np.array([[np.nan, np.nan] if e["x"] is None else [e["x"], e["y"]] for e in res["landmarks"]])

    def original() -> dict:
        return get_json(sserver, "/datastore/label/info?label=151&tag=original")

    info = wait_for(lambda: original().get("landmarks"), 20, "no original label kept by /infer", sserver)
    info = original()
    assert info["model"] == MODEL and info["source"] == "infer"
    assert info["model_version"] == res["model_version"]
    kept = np.array([[np.nan, np.nan] if p is None else p for p in info["landmarks"]], dtype=float)
    np.testing.assert_allclose(kept, pred, atol=0.01)

    save_truth(sclient, tmp_path, "151", senior, landmark_set.names)
    time.sleep(1.1)  # label ts are whole seconds: a replaced original would show a new ts
    sclient.infer(MODEL, "151", {})
    time.sleep(0.5)
    assert original()["ts"] == info["ts"], "the original was replaced after the final label was saved"

    # as a client does: start the scoring task, then read the score back through the datastore API
    status, body, _, _ = MONAILabelUtils.http_method("POST", sserver.url, "/scoring/landmark_mre")
    assert status == 200, body

    def score() -> dict | None:
        return get_json(sserver, "/datastore/image/info?image=151").get("anatomark_mre_mm")

    rec = wait_for(score, 120, "no landmark_mre score in the image info", sserver)
    expected = float(np.linalg.norm((pred - senior["151.jpg"]) * SPACING_MM, axis=1).mean())
    assert rec["mre_mm"] == pytest.approx(expected, abs=0.01)
    assert rec["model"] == MODEL and rec["model_version"] == res["model_version"]
    objects = get_json(sserver, "/datastore/?output=all")["objects"]
    assert objects["151"]["image"]["info"]["anatomark_mre_mm"] == rec


def test_lowest_confidence_does_not_propose_the_same_image_twice(sclient):
    first = sclient.next_sample("lowest_confidence", {"model": MODEL})
    second = sclient.next_sample("lowest_confidence", {"model": MODEL})
    assert {first["id"], second["id"]} == {"152", "153"}  # the unlabelled images, each once
    assert second["skipped_recent"] == 1
    third = sclient.next_sample("lowest_confidence", {"model": MODEL})
    assert third["id"] == first["id"]  # all proposed recently: the one proposed longest ago
    lowest = sclient.next_sample("lowest_confidence", {"model": MODEL, "skip_recent_minutes": 0})
    assert lowest["id"] == min((first, second), key=lambda r: r["confidence"])["id"]
    # the viewer's Skip: the skipped image is not given, and comes back only after the other one
    other = sclient.next_sample("lowest_confidence", {"model": MODEL, "skip": [lowest["id"]]})
    assert other["id"] != lowest["id"] and other["id"] in {"152", "153"}
    again = sclient.next_sample("lowest_confidence", {"model": MODEL})
    assert again["id"] == other["id"] and again["skipped_recent"] == 2  # both recent: the one given longest ago


def test_permuted_label_info_is_stored_in_the_stored_maps_order(sserver, sclient, tmp_path, senior, landmark_set):
    from anatomark.transforms.functional import points_to_labelmap

    names = landmark_set.names
    k = len(names)
    gt = senior["152.jpg"]
    single = points_to_labelmap(gt, (2400, 1935), radius=6)  # landmark j -> value j + 1
    client_map = np.where(single > 0, k + 1 - single.astype(np.int16), 0).astype(np.uint8)  # reversed order
    client_info = [{"name": n, "idx": k - j} for j, n in enumerate(names)]
    nii = tmp_path / "152.nii.gz"
    nib.save(nib.Nifti1Image(client_map.T[:, :, None], np.diag([-1.0, -1.0, 1.0, 1.0])), nii)
    sclient.save_label("152", str(nii), tag="final", params={"label_info": client_info})

    info = get_json(sserver, "/datastore/label/info?label=152&tag=final")
    assert info["label_info"][0] == {"name": names[0], "idx": 1}  # value 1 = sella, as in the stored map
    assert info["client_label_info"] == client_info
    with Image.open(sclient.download_label("152", "final")) as im:
        stored = np.asarray(im)
    radius_px = 2.0 / SPACING_MM  # the server's 2 mm disks
    checked = 0
    for entry in info["label_info"]:
        j = names.index(entry["name"])
        x, y = gt[j]
        others = np.delete(gt, j, axis=0)
        if np.linalg.norm(others - (x, y), axis=1).min() > 2 * radius_px + 2:  # no neighbouring disk covers it
            assert stored[int(round(y)), int(round(x))] == entry["idx"], entry
            checked += 1
    assert checked >= k // 2
    assert stored[int(round(gt[0, 1])), int(round(gt[0, 0]))] == 1
