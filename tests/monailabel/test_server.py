"""End-to-end tests of the anatomark MONAI Label app against the real server, through monailabel's own client.

The tests share one server and run in file order: infer and strategy first (shipped weights), then labels are
saved (which fires the automatic fine-tuning), then explicit training and scoring.
"""

from __future__ import annotations

import json
import re
import time

import jsonschema
import nibabel as nib
import numpy as np
import pytest
from mlserver_constants import AUTO_TRAIN_EVERY, LABELLED, MODEL, SMALL, UNLABELLED
from monailabel.client.client import MONAILabelClientException, MONAILabelUtils
from PIL import Image

# The structural part of 3D Slicer's markups schema v1.0.3 (Slicer/Slicer,
# Modules/Loadable/Markups/Resources/Schema/markups-schema-v1.0.3.json), written out for the fields we emit.
_NUM3 = {"type": "array", "items": {"type": "number"}, "minItems": 3, "maxItems": 3}
MARKUPS_SCHEMA = {
    "$schema": "http://json-schema.org/draft-07/schema",
    "type": "object",
    "required": ["@schema", "markups"],
    "properties": {
        "@schema": {"type": "string", "pattern": "markups-schema-v1\\.0\\.3\\.json"},
        "markups": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["type", "coordinateSystem", "controlPoints"],
                "properties": {
                    "type": {"enum": ["Fiducial", "Line", "Angle", "Curve", "ClosedCurve", "Plane", "ROI"]},
                    "name": {"type": "string"},
                    "coordinateSystem": {"enum": ["LPS", "RAS"]},
                    "coordinateUnits": {"enum": ["mm", "um"]},
                    "locked": {"type": "boolean"},
                    "fixedNumberOfControlPoints": {"type": "boolean"},
                    "labelFormat": {"type": "string"},
                    "controlPoints": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "id": {"type": "string"},
                                "label": {"type": "string"},
                                "description": {"type": "string"},
                                "associatedNodeID": {"type": "string"},
                                "position": _NUM3,
                                "orientation": {
                                    "type": "array",
                                    "items": {"type": "number"},
                                    "minItems": 9,
                                    "maxItems": 9,
                                },
                                "selected": {"type": "boolean"},
                                "locked": {"type": "boolean"},
                                "visibility": {"type": "boolean"},
                                "positionStatus": {"enum": ["undefined", "preview", "defined"]},
                            },
                        },
                    },
                    "display": {"type": "object"},
                },
            },
        },
    },
}


def status_of(exc: MONAILabelClientException) -> int:
    m = re.search(r"Status: (\d+)", exc.msg)
    assert m, exc.msg
    return int(m.group(1))


def http(server, method: str, selector: str, body=None) -> tuple[int, object]:
    status, response, _, _ = MONAILabelUtils.http_method(method, server.url, selector, body)
    text = response.decode() if isinstance(response, bytes) else response
    try:
        return status, json.loads(text)
    except json.JSONDecodeError:
        return status, text


def read_png(path: str) -> np.ndarray:
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n", "label map must be a PNG"
    with Image.open(path) as im:
        assert im.mode in ("L", "I;16", "I"), im.mode
        return np.asarray(im)


def check_labelmap_matches(lm: np.ndarray, landmarks: list[dict], radius: float) -> None:
    """Disk of value k sits at the JSON's (x, y): centre pixel and centroid (where disks cannot overlap)."""
    pts = np.array([[e["x"], e["y"]] for e in landmarks])
    for e in landmarks:
        x, y, k = e["x"], e["y"], e["index"]
        ys, xs = np.nonzero(lm == k)
        assert xs.size, f"{e['name']}: value {k} absent from the label map"
        others = np.delete(pts, k - 1, axis=0)
        if np.linalg.norm(others - (x, y), axis=1).min() > 2 * radius + 2:
            assert lm[int(round(y)), int(round(x))] == k, f"{e['name']}: value at ({x}, {y}) is not {k}"
            assert abs(xs.mean() - x) <= 1.0 and abs(ys.mean() - y) <= 1.0, e["name"]
        else:  # a close neighbour may cover part of the disk: value k must still lie within the radius
            assert np.hypot(xs - x, ys - y).min() <= radius + 1, e["name"]


def wait_for_training(server, task_id: str, timeout: float = 240) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        status, tasks = http(server, "GET", "/train/?all=true")
        assert status == 200
        task = next((t for t in tasks if t["id"] == task_id), None)
        assert task is not None, f"training task {task_id} not listed"
        if task["status"] in ("DONE", "ERROR", "STOPPED"):
            assert task["status"] == "DONE", "\n".join(task.get("details", []))
            return task
        time.sleep(1.0)
    pytest.fail(f"training {task_id} did not finish within {timeout} s:\n{server.log_tail()}")


# ---------------------------------------------------------------------------------------------------- info
def test_info_lists_landmark_model(client, landmark_set):
    info = client.info()
    m = info["models"][MODEL]
    assert m["type"] == "segmentation"
    assert m["dimension"] == 2
    assert m["labels"] == {n: k + 1 for k, n in enumerate(landmark_set.names)}
    assert sorted(m["labels"].values()) == list(range(1, len(landmark_set) + 1))
    assert m["description"]
    assert "slicer_markups" in m["config"]["result_format"]
    assert MODEL in info["trainers"]
    assert "lowest_confidence" in info["strategies"]
    assert "landmark_mre" in info["scoring"]


# ---------------------------------------------------------------------------------------------------- infer
def test_infer_isbi_labelmap_geometry_and_accuracy(client, senior, landmark_set):
    path, res = client.infer(MODEL, "151", {})
    lm = read_png(path)
    assert lm.shape == (2400, 1935)  # (H, W) of the input, not transposed
    assert res["model"] == MODEL and res["model_version"]
    assert res["spacing_mm"] == [0.1, 0.1]
    assert set(res["latencies"]) >= {"pre", "infer", "post", "total"}
    assert res["label_radius_px"] >= 2
    names = [e["name"] for e in res["landmarks"]]
    assert names == landmark_set.names
    for e in res["landmarks"]:
        assert 0 <= e["confidence"] <= 1
        assert e["x_mm"] == pytest.approx(e["x"] * 0.1, abs=1e-3)
        assert e["y_mm"] == pytest.approx(e["y"] * 0.1, abs=1e-3)
    check_labelmap_matches(lm, res["landmarks"], res["label_radius_px"])
    pred = np.array([[e["x"], e["y"]] for e in res["landmarks"]])
    mre = float(np.linalg.norm((pred - senior["151.jpg"]) * 0.1, axis=1).mean())
    assert mre < 5.0, f"MRE {mre:.2f} mm against the senior annotation"
    ms = {m["name"]: m for m in res["measurements"]}  # clinical measurements come with the points
    assert {"SNA", "SNB", "ANB", "ODI", "APDI", "FHI", "FMA", "MW"} <= set(ms)
    assert ms["ANB"]["computable"] and ms["ANB"]["unit"] == "deg"


def test_infer_upload_non_square_png(client, server):
    path, res = client.infer(MODEL, "", {}, file=str(server.studies / f"{SMALL}.png"))
    lm = read_png(path)
    assert lm.shape == (480, 387)
    assert res["size_wh"] == [387, 480]
    check_labelmap_matches(lm, res["landmarks"], res["label_radius_px"])


def test_infer_slicer_markups_schema_and_lps(client, server, landmark_set):
    path, res = client.infer(MODEL, "", {"result_format": "slicer_markups"}, file=str(server.studies / f"{SMALL}.png"))
    assert path.endswith(".json")
    with open(path) as f:
        doc = json.load(f)
    jsonschema.validate(doc, MARKUPS_SCHEMA)
    (markup,) = doc["markups"]
    assert markup["type"] == "Fiducial" and markup["coordinateSystem"] == "LPS"
    cps = markup["controlPoints"]
    assert [c["label"] for c in cps] == landmark_set.names
    # The PNG says 254 dpi in pHYs, which ITK/Slicer ignore: they show it at 1 mm/px and place pixel (x, y) at LPS
    # (x, y, 0), x to the patient's left (screen right), y posterior (screen down). RAS would negate x and y.
    import SimpleITK as sitk

    itk = sitk.ReadImage(str(server.studies / f"{SMALL}.png"))
    assert itk.GetSpacing() == (1.0, 1.0)
    for c, e in zip(cps, res["landmarks"]):
        assert c["positionStatus"] == "defined"
        assert c["position"] == pytest.approx([e["x"], e["y"], 0.0], abs=1e-2)
        assert itk.TransformPhysicalPointToContinuousIndex(c["position"][:2]) == pytest.approx(
            (e["x"], e["y"]), abs=1e-2
        )
    # the JSON result carries the same landmarks as the label-map format
    _, res2 = client.infer(MODEL, "", {}, file=str(server.studies / f"{SMALL}.png"))
    assert [(e["x"], e["y"]) for e in res2["landmarks"]] == [(e["x"], e["y"]) for e in res["landmarks"]]


# ---------------------------------------------------------------------------------------------------- bad requests
def test_bad_requests_answer_4xx_and_server_keeps_serving(client, server, tmp_path, landmark_set):
    def code(call) -> int:
        with pytest.raises(MONAILabelClientException) as ei:
            call()
        return status_of(ei.value)

    assert code(lambda: client.infer("no_such_model", "151", {})) == 404
    assert code(lambda: client.infer(MODEL, "no_such_image", {})) == 404
    assert code(lambda: client.infer(MODEL, "151", {"result_format": "jpeg"})) == 422
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    assert code(lambda: client.infer(MODEL, "", {}, file=str(corrupt))) == 422
    assert code(lambda: client.train_start("no_such_model", {})) == 404

    img = "154"
    wrong_name = tmp_path / "wrong.json"
    wrong_name.write_text(json.dumps({"landmarks": [{"name": "bregma", "x": 10, "y": 20}]}))
    assert code(lambda: client.save_label(img, str(wrong_name), tag="final")) == 422
    wrong_value = tmp_path / "wrong_value.png"
    lm = np.zeros((2400, 1935), np.uint8)
    lm[100:105, 100:105] = len(landmark_set) + 6
    Image.fromarray(lm).save(wrong_value)
    assert code(lambda: client.save_label(img, str(wrong_value), tag="final")) == 422
    wrong_info = tmp_path / "wrong_info.png"
    lm[100:105, 100:105] = 1
    Image.fromarray(lm).save(wrong_info)
    params = {"label_info": [{"name": "bregma", "idx": 1}]}
    assert code(lambda: client.save_label(img, str(wrong_info), tag="final", params=params)) == 422
    wrong_size = tmp_path / "wrong_size.png"
    Image.fromarray(lm.T.copy()).save(wrong_size)  # transposed (W, H) label map
    assert code(lambda: client.save_label(img, str(wrong_size), tag="final")) == 422
    empty = tmp_path / "empty.png"
    Image.fromarray(np.zeros((2400, 1935), np.uint8)).save(empty)
    assert code(lambda: client.save_label(img, str(empty), tag="final")) == 422
    assert code(lambda: client.save_label(img, str(corrupt), tag="final")) == 422
    assert code(lambda: client.save_label("no_such_image", str(wrong_name), tag="final")) == 404

    # nothing was written, and the server still answers
    assert not client.datastore()["objects"][img]["labels"]
    assert not (server.studies / "labels" / "final").exists() or not list(
        (server.studies / "labels" / "final").glob("154*")
    )
    assert server.alive()
    assert MODEL in client.info()["models"]
    _, res = client.infer(MODEL, img, {"result_format": "slicer_markups"})
    assert len(res["landmarks"]) == len(landmark_set)


# ---------------------------------------------------------------------------------------------------- active learning
def test_strategy_picks_lowest_confidence(client):
    expected = {}
    for i in LABELLED + UNLABELLED + [SMALL]:
        _, res = client.infer(MODEL, i, {"result_format": "slicer_markups"})
        expected[i] = float(np.mean([e["confidence"] for e in res["landmarks"]]))
    res = client.next_sample("lowest_confidence", {"model": MODEL})
    assert res["id"] == min(expected, key=expected.get)
    assert res["confidence"] == pytest.approx(expected[res["id"]], abs=1e-3)
    info = client.datastore()["objects"][res["id"]]["image"]["info"]
    assert info["anatomark_confidence"]["model"] == MODEL


# ---------------------------------------------------------------------------------------------------- labels + training
@pytest.fixture(scope="module")
def versions() -> dict[str, str]:
    return {}


def test_save_labels_of_three_kinds_fires_auto_training(client, server, tmp_path, senior, landmark_set, versions):
    from anatomark.data.annotations import slicer_markups_document
    from anatomark.transforms.functional import points_to_labelmap

    _, res = client.infer(MODEL, "151", {})
    versions["shipped"] = res["model_version"]
    assert AUTO_TRAIN_EVERY == 3
    _, before = http(server, "GET", "/train/?all=true")
    n_before = len(before) if isinstance(before, list) else 0

    # 1) what 3D Slicer sends: a NIfTI label map (x-first on disk, RAS affine) with label_info -> values
    gt151 = senior["151.jpg"]
    single = points_to_labelmap(gt151, (2400, 1935), radius=6)
    lm = np.where(single > 0, single.astype(np.int16) + 100, 0).astype(np.uint8)
    nii = tmp_path / "151.nii.gz"
    nib.save(nib.Nifti1Image(lm.T[:, :, None], np.diag([-1.0, -1.0, 1.0, 1.0])), nii)
    info = [{"name": n, "idx": 100 + k + 1} for k, n in enumerate(landmark_set.names)]
    client.save_label("151", str(nii), tag="final", params={"label_info": info})

    # 2) a Slicer markups JSON in the image's viewer geometry (JPEG without resolution: 1 mm/px, origin 0)
    gt152 = senior["152.jpg"]
    mrk = tmp_path / "152.mrk.json"
    mrk.write_text(json.dumps(slicer_markups_document(gt152, landmark_set.names, (1.0, 1.0), (0.0, 0.0))))
    client.save_label("152", str(mrk), tag="final")
    _, running = http(server, "GET", "/train/?all=true")
    assert (len(running) if isinstance(running, list) else 0) == n_before, "training started before N labels"

    # 3) our JSON, two landmarks missing (they must stay missing, never (0, 0))
    gt153 = senior["153.jpg"]
    ours = [{"name": n, "x": float(p[0]), "y": float(p[1])} for n, p in zip(landmark_set.names, gt153)]
    ours[3]["x"] = ours[3]["y"] = None
    del ours[10]
    js = tmp_path / "153.json"
    js.write_text(json.dumps({"landmarks": ours}))
    client.save_label("153", str(js), tag="final")

    objects = client.datastore()["objects"]
    for i, gt in (("151", gt151), ("152", gt152), ("153", gt153)):
        stored = objects[i]["labels"]["final"]["info"]["landmarks"]
        for k, (s, g) in enumerate(zip(stored, gt)):
            if i == "153" and k in (3, 10):
                assert s is None
            else:
                assert s == pytest.approx(list(g), abs=0.01), (i, landmark_set.names[k])
    downloaded = client.download_label("151", "final")
    lm_back = read_png(downloaded)
    assert lm_back.shape == (2400, 1935)
    assert lm_back[int(gt151[0, 1]), int(gt151[0, 0])] == 1

    _, after = http(server, "GET", "/train/?all=true")
    new = after[n_before:]
    assert len(new) == 1 and new[0]["request"]["model"] == MODEL
    assert new[0]["request"]["trigger"].startswith("auto")
    versions["auto_task"] = new[0]["id"]


def test_auto_training_publishes_new_weights_without_restart(client, server, versions):
    pid = server.proc.pid
    task = wait_for_training(server, versions["auto_task"])
    assert task["request"]["max_epochs"] == 1
    _, res = client.infer(MODEL, "154", {})
    assert res["model_version"] != versions["shipped"]
    stats = client.info()["train_stats"][MODEL]
    assert stats["n_train"] + stats["n_val"] == 3
    assert stats["model_version"] == res["model_version"]
    assert server.proc.pid == pid and server.alive()
    versions["auto"] = res["model_version"]
    versions["val_images"] = stats["val_images"]


def test_explicit_train_one_epoch(client, server, versions):
    task = client.train_start(MODEL, {"max_epochs": 1})
    wait_for_training(server, task["id"])
    _, res = client.infer(MODEL, "154", {})
    assert res["model_version"] not in (versions["shipped"], versions["auto"])
    stats = client.info()["train_stats"][MODEL]
    assert stats["started_from_version"] == versions["auto"]  # fine-tuned from the served weights
    # the validation split is fixed per image: the same images as in the automatic run
    assert stats["val_images"] == versions["val_images"]
    assert stats["n_train"] + stats["n_val"] == 3


def test_scoring_mre_between_original_and_final(client, server, senior):
    _, res = client.infer(MODEL, "152", {"save_label": True})  # the model's "original" label
    status, out = http(server, "POST", "/scoring/landmark_mre?run_sync=true")
    assert status == 200, out
    pred = np.array([[e["x"], e["y"]] for e in res["landmarks"]])
    expected = float(np.linalg.norm((pred - senior["152.jpg"]) * 0.1, axis=1).mean())
    # images with both an original and a final label: /infer keeps the original of 151 and 153 (issue 16)
    assert set(out["images"]) == {"151", "152", "153"}
    assert out["images"]["152"]["mre_mm"] == pytest.approx(expected, abs=0.1)
    info = client.datastore()["objects"]["152"]["image"]["info"]
    assert info["anatomark_mre_mm"]["mre_mm"] == out["images"]["152"]["mre_mm"]
