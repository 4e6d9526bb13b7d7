"""Issues 15/16, server side, against a real MONAI Label server of its own: the ``detection`` task 3D Slicer's stock
MONAILabel module edits (a markups JSON of one box ROI per landmark) and its save path, live ``train_stats`` while a
training runs, stop, and the retraining schedule (``GET``/``PUT /anatomark/schedule``) kept across a restart.

Tests run in file order on one server. ``train_lr`` 1e-8 keeps the weights, image 154 is the validation image.
"""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
import requests
from mlserver_constants import MODEL
from mlserver_process import isbi_studies, save_truth, start_server, stop_server, train_tasks, wait_done
from monailabel.client import MONAILabelClient

POINTS = f"{MODEL}_points"
IMAGES = ["151", "152", "153", "154", "155"]
SCHEMA = "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/Schema/"
CONF = {"models": MODEL, "train_epochs": "1", "train_lr": "1e-8", "gate_min_val_images": "0"}


@pytest.fixture(scope="module")
def loop(isbi, tmp_path_factory):
    from anatomark.paths import model_dir

    if not (model_dir() / f"{MODEL}.pt").is_file():
        pytest.skip(f"Shipped weights {model_dir() / (MODEL + '.pt')} not found")
    root = tmp_path_factory.mktemp("viewer_loop")
    studies = isbi_studies(root, isbi, IMAGES)
    srv = start_server(root / "first", studies, CONF)
    box = {"server": srv, "root": root}
    yield box
    stop_server(box["server"])


@pytest.fixture(scope="module")
def vclient(loop, tmp_path_factory):
    return MONAILabelClient(loop["server"].url, tmpdir=str(tmp_path_factory.mktemp("viewer_client")))


def _url(loop) -> str:
    return loop["server"].url


def train_stats(loop) -> dict:
    return requests.get(f"{_url(loop)}/info/", timeout=60).json()["train_stats"][MODEL]


# ---------------------------------------------------------------------------------------------------- schedule
def test_schedule_defaults_to_the_app_options(loop):
    r = requests.get(f"{_url(loop)}/anatomark/schedule", timeout=30)
    assert r.status_code == 200, r.text
    assert r.json() == {"every_n_labels": 0, "interval_hours": 0.0, "source": "conf", "updated": None}


@pytest.mark.parametrize(
    "body",
    [
        {"every_n_labels": -1},
        {"every_n_labels": 1.5},
        {"every_n_labels": True},
        {"every_n_labels": "3"},
        {"interval_hours": -0.5},
        {"interval_hours": "1"},
        {"interval_hours": 1e9},
        {"interval": 1},
        {},
        [1, 2],
    ],
)
def test_schedule_refuses_bad_values(loop, body):
    r = requests.put(f"{_url(loop)}/anatomark/schedule", json=body, timeout=30)
    assert r.status_code == 422, (body, r.status_code, r.text)
    assert requests.get(f"{_url(loop)}/anatomark/schedule", timeout=30).json()["source"] == "conf"


def test_schedule_put_then_get(loop):
    r = requests.put(f"{_url(loop)}/anatomark/schedule", json={"every_n_labels": 0, "interval_hours": 12}, timeout=30)
    assert r.status_code == 200, r.text
    got = requests.get(f"{_url(loop)}/anatomark/schedule", timeout=30).json()
    assert got["every_n_labels"] == 0 and got["interval_hours"] == 12.0 and got["source"] == "viewer"
    info = requests.get(f"{_url(loop)}/info/", timeout=30).json()["anatomark"]
    assert info["auto_train_interval"] == 12 * 3600 and info["schedule"]["interval_hours"] == 12.0
    stored = json.loads((loop["server"].studies / ".anatomark" / "schedule.json").read_text())
    assert stored["interval_hours"] == 12.0


# ---------------------------------------------------------------------------------------------------- 3D Slicer points
def test_points_task_is_a_detection_model(vclient, landmark_set):
    models = vclient.info()["models"]
    assert models[MODEL]["type"] == "segmentation"  # kept for label maps
    assert models[POINTS]["type"] == "detection"
    assert models[POINTS]["labels"] == {n: k + 1 for k, n in enumerate(landmark_set.names)}


def test_detection_result_is_markups_with_one_roi_per_landmark_at_the_json_pixels(loop, vclient, landmark_set, isbi):
    import SimpleITK as sitk

    result_file, res = vclient.infer(POINTS, "153", {})
    assert result_file.endswith(".json")  # the stock module loads a .json result with slicer.util.loadMarkups
    doc = json.loads(open(result_file).read())
    assert doc["@schema"].startswith(SCHEMA)
    rois = doc["markups"]
    shown = [e for e in res["landmarks"] if e["x"] is not None]
    assert len(rois) == len(shown) == len(landmark_set)
    image = sitk.ReadImage(str(loop["server"].studies / "153.jpg"))  # the geometry Slicer (ITK) gives the file
    for roi, e in zip(rois, shown):
        assert roi["type"] == "ROI" and roi["coordinateSystem"] == "LPS" and roi["roiType"] == "Box"
        assert roi["controlPoints"][0]["label"] == e["name"]
        ijk = image.TransformPhysicalPointToContinuousIndex([float(v) for v in roi["center"][:2]])
        assert ijk == pytest.approx((e["x"], e["y"]), abs=0.01), e["name"]  # JSON: 2 decimals
        assert roi["controlPoints"][0]["position"] == roi["center"]
    loop["rois"] = doc
    loop["pred_153"] = np.array([[e["x"], e["y"]] for e in shown])


def _as_slicer_saves(roi: dict, k: int, shift_mm: tuple[float, float]) -> dict:
    """One ROI node's markups dict as ``slicer.util.saveNode`` writes it after the user dragged its centre."""
    center = [roi["center"][0] + shift_mm[0], roi["center"][1] + shift_mm[1], roi["center"][2]]
    cp = roi["controlPoints"][0]
    return {
        "type": "ROI",
        "coordinateSystem": "LPS",
        "coordinateUnits": "mm",
        "locked": False,
        "fixedNumberOfControlPoints": False,
        "labelFormat": "%N-%d",
        "lastUsedControlPointNumber": 1,
        "roiType": "Box",
        "center": center,
        "orientation": [-1.0, -0.0, -0.0, -0.0, -1.0, -0.0, 0.0, 0.0, 1.0],
        "size": roi["size"],
        "insideOut": False,
        "controlPoints": [
            {
                "id": "1",
                "label": cp["label"],
                "description": cp.get("description", ""),
                "associatedNodeID": "",
                "position": center,
                "orientation": [-1.0, -0.0, -0.0, -0.0, -1.0, -0.0, 0.0, 0.0, 1.0],
                "selected": True,
                "locked": False,
                "visibility": True,
                "positionStatus": "defined",
            }
        ],
        "measurements": [{"name": "volume", "enabled": False, "units": "cm3", "printFormat": "%-#4.4g%s"}],
        "display": {"visibility": True, "opacity": 1.0, "color": [0.4, 1.0, 1.0], "propertiesLabelVisibility": True},
    }


def test_a_save_built_like_the_stock_module_round_trips(loop, vclient, tmp_path, landmark_set):
    """``onGenerateJSONFromMulipltROIs``: every ROI node of the scene but "Scribbles ROI" (so also the module's
    own, never placed "SAM2 ROI"), each node's own markups JSON, in one document; ``label_info`` ``[]``."""
    rois = loop["rois"]["markups"]
    sam2 = {"type": "ROI", "coordinateSystem": "LPS", "roiType": "Box", "controlPoints": [], "size": [0, 0, 0]}
    moved = [_as_slicer_saves(r, k, (3.0, -2.0) if k == 0 else (0.0, 0.0)) for k, r in enumerate(rois)]
    doc = {"@schema": SCHEMA + "markups-schema-v1.0.3.json#", "markups": [sam2, *moved]}
    path = tmp_path / "label.json"
    path.write_text(json.dumps(doc))
    vclient.save_label("153", str(path), tag="final", params={"label_info": [], "model": POINTS})
    info = vclient.datastore()["objects"]["153"]["labels"]["final"]["info"]
    got = np.array(info["landmarks"], dtype=float)
    geometry_px = np.array(loop["pred_153"])
    # the Slicer geometry of an ISBI JPG: the shift in mm divided by its spacing, x and y as LPS (no flip for a raster)
    import SimpleITK as sitk

    image = sitk.ReadImage(str(loop["server"].studies / "153.jpg"))
    sx, sy = image.GetSpacing()
    expected = geometry_px.copy()
    expected[0] += (3.0 / sx, -2.0 / sy)
    assert got.shape == (len(landmark_set), 2)
    np.testing.assert_allclose(got, expected, atol=0.5)
    assert np.abs(got[0] - geometry_px[0]).max() > 1.0  # the drag arrived


def test_a_save_of_unlabelled_rois_only_is_refused(loop, vclient, tmp_path):
    doc = {"markups": [{"type": "ROI", "coordinateSystem": "LPS", "center": [1.0, 2.0, 0.0], "controlPoints": []}]}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    with open(path, "rb") as f:
        r = requests.put(
            f"{_url(loop)}/datastore/label?image=155&tag=final",
            files={"label": ("bad.json", f)},
            data={"params": "{}"},
            timeout=60,
        )
    assert r.status_code == 422, r.text
    assert "ROI" in r.text


# ---------------------------------------------------------------------------------------------------- live progress
def test_train_stats_show_the_running_training_epoch_by_epoch(loop, vclient, tmp_path, senior, landmark_set):
    for i in ("151", "152", "154"):  # 153 was saved above; 154 is the validation image
        save_truth(vclient, tmp_path, i, senior, landmark_set.names)
    task = vclient.train_start(MODEL, {"max_epochs": 4})
    seen: dict[int, dict] = {}
    deadline = time.time() + 400
    while time.time() < deadline:
        status = next(t for t in train_tasks(loop["server"]) if t["id"] == task["id"])["status"]
        stats = train_stats(loop)
        if stats.get("status") == "RUNNING" and stats.get("epoch", 0) >= 1:
            seen.setdefault(stats["epoch"], stats)
        if status not in ("SUBMITTED", "RUNNING"):
            break
        time.sleep(0.2)
    wait_done(loop["server"], task["id"], timeout=30)
    assert len(seen) >= 2, f"epochs seen while running: {sorted(seen)}"
    for e, s in seen.items():
        assert s["total_epochs"] == 4 and 1 <= e <= 4 and s["stage"] == "train" and s["model"] == MODEL
        assert math.isfinite(s["loss"]) and s["val_mre_mm"] is not None and s["best_val_mre_mm"] <= s["val_mre_mm"]
        assert 0 <= s["best_metric"] <= 1 and s["total_time"] == 0 and s["elapsed_s"] > 0
        assert s["n_train"] == 3 and s["n_val"] == 1
    end = train_stats(loop)
    assert end["status"] == "DONE" and end["epoch"] == 4 and end["total_time"] > 0
    assert end["published"] is True and end["gate"]["decision"] == "published"
    assert {"reason", "candidate_val_mre_mm", "served_val_mre_mm", "n_val"} <= set(end["gate"])
    assert 0 < end["best_metric"] <= 1 and end["best_val_mre_mm"] == pytest.approx(
        min(s["best_val_mre_mm"] for s in seen.values()), abs=1e-4
    )


def test_the_stored_schedule_drives_retraining_and_stop_says_stopped(loop, vclient, tmp_path, senior, landmark_set):
    n = len(train_tasks(loop["server"]))
    r = requests.put(f"{_url(loop)}/anatomark/schedule", json={"every_n_labels": 1}, timeout=30)
    assert r.status_code == 200 and r.json()["interval_hours"] == 12.0, r.text
    save_truth(vclient, tmp_path, "155", senior, landmark_set.names)  # one label: the viewer's schedule fires
    tasks = train_tasks(loop["server"])
    assert len(tasks) == n + 1 and tasks[-1]["request"]["trigger"].startswith("auto: 1 new final label"), tasks[-1]
    deadline = time.time() + 200
    while time.time() < deadline:
        stats = train_stats(loop)
        if stats.get("status") == "RUNNING" and stats.get("trigger", "").startswith("auto"):
            break
        time.sleep(0.3)
    else:
        pytest.fail(f"the automatic training never reported progress:\n{loop['server'].log_tail()}")
    r = requests.delete(f"{_url(loop)}/train/", timeout=60)
    assert r.status_code == 200, r.text
    deadline = time.time() + 30
    while time.time() < deadline and train_stats(loop).get("status") == "RUNNING":
        time.sleep(0.3)
    stopped = train_stats(loop)
    assert stopped["status"] == "STOPPED" and stopped["published"] is False, stopped
    assert train_tasks(loop["server"])[-1]["status"] == "STOPPED"


def test_schedule_and_last_status_survive_a_restart(loop):
    stop_server(loop["server"])
    loop["server"] = start_server(loop["root"] / "second", loop["server"].studies, CONF)
    got = requests.get(f"{_url(loop)}/anatomark/schedule", timeout=30).json()
    assert (got["every_n_labels"], got["interval_hours"], got["source"]) == (1, 12.0, "viewer")
    assert requests.get(f"{_url(loop)}/info/", timeout=30).json()["anatomark"]["auto_train_every_n_labels"] == 1
    assert train_stats(loop)["status"] == "STOPPED"
