"""End to end in a real browser: a DICOM DX X-ray in Orthanc, opened from OHIF 3's study list (prebuilt @ohif/app
from npm) in the anatomark mode ("X-ray landmarks"); in the side panel: the model version, "Auto-landmark" clicked,
19 landmark rows with the quality verdict, points checked against the server's JSON (pixels, mm and where they are
rendered), a landmark focused / hidden / shown from the list, one point dragged with the mouse, "Save" clicked, the
final label found in the datastore and the DICOM SR in Orthanc; the page reloaded shows the saved correction (marked
as such) and Auto-landmark asks before replacing it; the retraining schedule set and a training started from the
panel, followed to its end.

Needs Orthanc + DICOMweb plugin and Chromium (``make stack-deps``: Debian packages) and the viewer (``make viewer``:
``npm ci`` for playwright-core, prebuilt OHIF). Skips with the command to run when one is missing.
``ANATOMARK_E2E_SCREENSHOT=docs/ohif_auto_landmark.png`` also keeps the final screenshot there (and the ones with the
label map, the panel, the reloaded page and the training as ``<name>_labelmap.png``, ``_panel``, ``_reload``,
``_train``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from mlserver_constants import MODEL

from anatomark import stack
from anatomark.data.dicom_write import write_dicom

VIEWER = stack.VIEWER_DIR
CHROMIUM = os.environ.get("CHROMIUM", shutil.which("chromium") or "/usr/bin/chromium")
SPACING = 0.1


def _missing() -> str | None:
    if stack.orthanc_missing():
        return stack.orthanc_missing()
    if not Path(CHROMIUM).exists():
        return "Chromium is not installed (make stack-deps: apt-get install chromium)"
    if not shutil.which("node"):
        return "node is not installed"
    if not (VIEWER / "node_modules" / "playwright-core").is_dir():
        return "playwright-core is not installed (make viewer: npm ci in viewer/)"
    return stack.ohif_missing()


@pytest.fixture(scope="module")
def e2e_stack(isbi: Path, tmp_path_factory: pytest.TempPathFactory):
    why = _missing()
    if why:
        pytest.skip(why)
    from anatomark.paths import model_dir

    if not (model_dir() / f"{MODEL}.pt").is_file():
        pytest.skip(f"Shipped weights {MODEL}.pt not found")
    root = tmp_path_factory.mktemp("e2e")
    dx = write_dicom(isbi / "images" / "151.jpg", root / "151.dcm", spacing=SPACING, modality="DX")
    # a second X-ray (CR) in the same study: points are per image
    cr = write_dicom(
        isbi / "images" / "152.jpg", root / "152.dcm", spacing=SPACING, modality="CR",
        patient_id=dx.patient_id, patient_name=dx.patient_id, study_instance_uid=dx.study_instance_uid,
    )  # fmt: skip
    # a third X-ray in a study of its own: Next sample / Skip have two unlabelled images in two studies to give;
    # its series holds a second image (instance 2): the server reads the first, the viewer must show that one
    other = write_dicom(isbi / "images" / "153.jpg", root / "153.dcm", spacing=SPACING, modality="DX")
    second = write_dicom(
        isbi / "images" / "154.jpg", root / "154.dcm", spacing=SPACING, modality="DX", patient_id=other.patient_id,
        patient_name=other.patient_id, study_instance_uid=other.study_instance_uid,
        series_instance_uid=other.series_instance_uid, instance_number=2,
    )  # fmt: skip
    services = []
    try:
        orthanc = stack.start_orthanc(root / "orthanc")
        services.append(orthanc)
        stack.upload_dicom(orthanc.url, [dx.path, cr.path, other.path, second.path])
        ml = stack.start_monailabel(
            f"{orthanc.url}/dicom-web", root / "monailabel", models=MODEL, env={"ANATOMARK_CACHE": str(root / "cache")}
        )
        services.append(ml)
        viewer = stack.start_viewer(orthanc.url, ml.url)
        services.append(viewer)
        yield {
            "root": root,
            "dx": dx,
            "cr": cr,
            "other": other,
            "second": second,
            "orthanc": orthanc,
            "ml": ml,
            "viewer": viewer,
        }
    except stack.StackError as e:
        pytest.fail(str(e))
    finally:
        for s in reversed(services):
            s.stop()


@pytest.fixture(scope="module")
def run(e2e_stack) -> dict:
    root = e2e_stack["root"]
    out, shot = root / "e2e.json", root / "e2e.png"
    cmd = ["node", str(VIEWER / "e2e" / "landmarks.e2e.mjs"), "--viewer", e2e_stack["viewer"].url,
           "--study", e2e_stack["dx"].study_instance_uid, "--patient", e2e_stack["dx"].patient_id, "--out", str(out), "--screenshot", str(shot),
           "--labelmap-screenshot", str(root / "labelmap.png"), "--chromium", CHROMIUM, "--move", "sella", "--dx=40", "--dy=-30",
           "--panel-screenshot", str(root / "panel.png"), "--reload-screenshot", str(root / "reload.png"),
           "--train-screenshot", str(root / "train.png"), "--sr-screenshot", str(root / "sr.png"), "--multi-study", e2e_stack["other"].study_instance_uid,
           "--multi-sop", e2e_stack["second"].sop_instance_uid]  # fmt: skip
    proc = subprocess.run(cmd, cwd=VIEWER, capture_output=True, text=True, timeout=900)
    assert out.is_file(), f"e2e driver wrote nothing:\n{proc.stdout}\n{proc.stderr}"
    res = json.loads(out.read_text())
    assert proc.returncode == 0 and res["ok"], (
        f"{res.get('error')}\nsteps: {res.get('steps')}\nconsole: {res.get('console_errors')}\n"
        f"server log:\n{e2e_stack['ml'].log_tail()}"
    )
    if os.environ.get("ANATOMARK_E2E_SCREENSHOT"):
        keep = Path(os.environ["ANATOMARK_E2E_SCREENSHOT"])
        shutil.copy(shot, keep)
        for name in ("labelmap", "panel", "reload", "train", "sr"):
            if (root / f"{name}.png").is_file():
                shutil.copy(root / f"{name}.png", keep.with_name(f"{keep.stem}_{name}.png"))
    print("e2e steps (ms since start):", [(s["name"], s["ms"]) for s in res["steps"]])
    return res


def test_points_drawn_where_the_server_put_them(run, e2e_stack):
    from anatomark.config import load_landmark_set

    names = load_landmark_set("isbi2015_cephalometric").names
    assert not [e for e in run["console_errors"] if e.startswith("pageerror")], run["console_errors"]
    assert run["image"]["seriesUID"] in (e2e_stack["dx"].series_instance_uid, e2e_stack["cr"].series_instance_uid)
    server = run["server"]["landmarks"]
    assert [p["name"] for p in server] == list(names)
    drawn = {p["name"]: p for p in run["drawn"]}
    assert sorted(drawn) == sorted(names), "every landmark is drawn, once, with its name"
    for p in server:
        d = drawn[p["name"]]
        # image pixels (server convention: origin at the centre of the top-left pixel), float32 round trip
        assert abs(d["x"] - p["x"]) < 0.05 and abs(d["y"] - p["y"]) < 0.05, (p, d)
        # patient space of the DX (no ImagePositionPatient: first pixel centre at 0, ImagerPixelSpacing 0.1 mm)
        assert d["world"][0] == pytest.approx(p["x"] * SPACING, abs=1e-3)
        assert d["world"][1] == pytest.approx(p["y"] * SPACING, abs=1e-3)
    # rendered: each point's ring, in its landmark's colour (the app's /info/), is on the screenshot, centred on the
    # point's page position
    from anatomark.config import load_landmark_set

    ls = load_landmark_set("isbi2015_cephalometric")
    assert {n: d["color"] for n, d in drawn.items()} == dict(zip(ls.names, ls.colors))
    rings = {r["name"]: r for r in run["rings"]}
    for name in drawn:  # a ring may be partly covered by a neighbour's ring or label (measured: LI under Gn, 9/16)
        r = rings[name]
        assert r["pixels"] >= 10 and r["ray_hits"] >= 8, f"no ring of radius 6 px around {name}'s position: {r}"
    full = [r["name"] for r in rings.values() if r["ray_hits"] >= 14]
    assert len(full) >= len(drawn) - 2, rings
    # whole, isolated rings (a ring alone is ~52-60 px, hit on all 16 rays): their pixels' mean is the point
    centred = [r for r in rings.values() if r["ray_hits"] == 16 and 50 <= r["pixels"] <= 62]
    assert len(centred) >= 3, rings
    for r in centred:
        d = drawn[r["name"]]
        assert np.hypot(r["centre"][0] - d["page"][0], r["centre"][1] - d["page"][1]) < 1.0, (r, d["page"])


def test_label_map_shown_as_segmentation(run):
    """The server's label map (landmark k = disk of value k) is the viewport's segmentation, pixel for pixel placed:
    each landmark's disk is centred on its point (neighbours may cover part of a disk)."""
    lm = run["labelmap"]
    assert lm is not None and (lm["width"], lm["height"]) == tuple(run["server"]["size_wh"])
    radius = run["server"]["label_radius_px"]
    server = run["server"]["landmarks"]
    assert sorted(int(k) for k in lm["counts"]) == [p["index"] for p in server]
    pts = np.array([[p["x"], p["y"]] for p in server])
    for p in server:
        cx, cy = lm["centroids"][str(p["index"])]
        others = np.delete(pts, p["index"] - 1, axis=0)
        if np.linalg.norm(others - (p["x"], p["y"]), axis=1).min() > 2 * radius + 2:
            assert abs(cx - p["x"]) <= 1.0 and abs(cy - p["y"]) <= 1.0, (p, cx, cy)
            assert lm["counts"][str(p["index"])] == pytest.approx(np.pi * radius**2, rel=0.25)


def test_drag_moves_one_point_only(run):
    m = run["moved"]
    before = {p["name"]: p for p in run["drawn"]}
    after = {p["name"]: p for p in run["after_move"]}
    # image pixels per page pixel, from the drawn layout (two far-apart landmarks)
    a, b = before["sella"], before["pogonion"]
    scale = np.hypot(a["x"] - b["x"], a["y"] - b["y"]) / np.hypot(
        a["page"][0] - b["page"][0], a["page"][1] - b["page"][1]
    )
    moved = np.hypot(m["x"] - m["before_x"], m["y"] - m["before_y"])
    assert moved == pytest.approx(50 * scale, rel=0.1), "dragged by (40, -30) page px"
    assert np.hypot(m["x"] - m["expected_x"], m["y"] - m["expected_y"]) < 1.0 * scale, "the point is under the cursor"
    for name, p in before.items():
        if name != m["name"]:
            assert (after[name]["x"], after[name]["y"]) == pytest.approx((p["x"], p["y"]), abs=1e-6)


def test_label_map_follows_the_drag(run):
    """Shown after the drag, the label map has the dragged landmark's disk where its point is now (same size), the
    other landmarks' disks unchanged; dragged again while shown, the disk follows at once."""
    before, after, shown = run["labelmap"], run["labelmap_after_drag"], run["labelmap_while_shown"]
    m = run["moved"]
    k = "1"  # label value of the dragged landmark (sella, the first of the set)
    assert m["name"] == "sella"
    assert np.hypot(*(np.array(after["centroids"][k]) - [m["x"], m["y"]])) < 1.0, (after["centroids"][k], m)
    assert after["counts"][k] == pytest.approx(before["counts"][k], rel=0.05)
    for key, c in before["centroids"].items():
        if key != k:
            assert after["counts"][key] == before["counts"][key], key
            assert after["centroids"][key] == pytest.approx(c, abs=1e-6), key
    p = shown["point"]
    assert np.hypot(p["x"] - m["x"], p["y"] - m["y"]) > 5, "the second drag moved the point"
    assert np.hypot(*(np.array(shown["centroids"][k]) - [p["x"], p["y"]])) < 1.0, (shown["centroids"][k], p)


def test_saved_label_is_in_the_datastore(run, e2e_stack):
    assert run["save"]["status"] == "saved", run["save"]
    uid = run["image"]["seriesUID"]
    with urllib.request.urlopen(f"{e2e_stack['ml'].url}/datastore/?output=all", timeout=60) as r:
        ds = json.loads(r.read())
    info = ds["objects"][uid]["labels"]["final"]["info"]
    assert info["n_landmarks"] == 19 and info["spacing_mm"] == [SPACING, SPACING]
    assert info["source_file"].endswith(".json") and info["client"] == "anatomark-ohif"
    assert info["origin"] == "correction", info  # a dragged point makes the save a correction, not model output
    from anatomark.config import load_landmark_set

    names = load_landmark_set("isbi2015_cephalometric").names
    after = {p["name"]: p for p in run["after_move"]}
    stored = np.array(info["landmarks"], dtype=float)
    want = np.array([[after[n]["x"], after[n]["y"]] for n in names])
    np.testing.assert_allclose(stored, want, atol=1e-3)
    # the training datalist of the server now holds this image with its final label
    with urllib.request.urlopen(f"{e2e_stack['ml'].url}/datastore/?output=train", timeout=60) as r:
        train = json.loads(r.read())
    assert any(uid in d["image"] for d in train), train


def test_points_belong_to_their_image(run, e2e_stack):
    """On the study's other X-ray there are no points and its label map is refused; back on the first image its
    points are all still there, and nothing was saved for the other image."""
    other = run["other_series"]
    assert other is not None, "the study's second series was not shown"
    first, uids = run["image"]["seriesUID"], {e2e_stack["dx"].series_instance_uid, e2e_stack["cr"].series_instance_uid}
    assert other["uid"] in uids - {first}
    assert other["points"] == 0 and other["labelmap"] == "Run Auto-landmark on this image first"
    assert other["points_back_on_first"] == 19
    with urllib.request.urlopen(f"{e2e_stack['ml'].url}/datastore/?output=all", timeout=60) as r:
        objects = json.loads(r.read())["objects"]
    assert "final" not in (objects.get(other["uid"]) or {}).get("labels", {})


def _names() -> list[str]:
    from anatomark.config import load_landmark_set

    return list(load_landmark_set("isbi2015_cephalometric").names)


def test_panel_shows_model_version_landmarks_and_quality(run):
    """The side panel: model and version, toolbar buttons with text, one row per landmark with the server's
    confidence and expected error, and the image's quality verdict."""
    before, after, server = run["panel_before"], run["panel_after_auto"], run["server"]
    assert before["model"] == run["auto"]["model"]
    assert before["version"].startswith("version ")
    assert after["version"] == f"version {server['model_version']}" and server["model_version"]
    assert before["version"] == after["version"]  # the served version is shown before the first Auto-landmark
    assert before["toolbar"] == ['"Auto-landmark"', '"Save"', '"Label map"']
    assert before["source"].startswith("No saved correction")
    assert after["source_kind"] == "model" and after["source"].startswith("Model output")
    rows = after["rows"]
    assert [r["name"] for r in rows] == _names() == [p["name"] for p in server["landmarks"]]
    for r, p in zip(rows, server["landmarks"]):
        assert r["visible"] is True
        # shown rounded by JavaScript's toFixed (2 and 1 decimals; binary ties may round either way)
        assert float(r["cells"][2]) == pytest.approx(p["confidence"], abs=0.005 + 1e-9), (r, p)
        assert r["cells"][3].startswith("±"), r
        assert float(r["cells"][3][1:]) == pytest.approx(p["expected_error_mm"], abs=0.05 + 1e-9), (r, p)
        flagged = p.get("reliable") is False or p.get("in_image") is False
        assert (r["cells"][4] == "!") == flagged, (r, p)
    q = server["quality"]
    assert after["quality_reliable"] == ("false" if q["reliable"] is False else "true")
    word = "UNRELIABLE" if q["reliable"] is False else "reliable"
    m = re.match(rf"Quality: {word} \(score ([0-9.]+)\)", after["quality"])
    assert m and float(m.group(1)) == pytest.approx(q["score"], abs=0.005 + 1e-9), after["quality"]
    for w in q.get("warnings") or []:
        assert w in after["quality"]


def test_panel_focus_and_show_hide(run):
    f, v = run["focus"], run["visibility"]
    assert f["focal"][:2] == pytest.approx(f["world"][:2], abs=1e-3), "the view is centred on the clicked landmark"
    assert v["after_hide"] is False and v["after_show"] is True


def test_reload_shows_the_saved_correction(run):
    """After a reload the image shows its saved correction, marked as such, not the model's points; Auto-landmark
    asks before replacing it and, answered no, leaves it."""
    assert run["save"]["source"].startswith("Saved correction") and "in the PACS" in run["save"]["source"]
    rl = run["reload"]
    assert rl["seriesUID"] == run["image"]["seriesUID"]
    assert rl["source"].startswith("Saved correction"), rl["source"]
    assert [r["cells"][2] for r in rl["rows"]] == ["saved"] * 19
    got = {p["name"]: p for p in rl["points"]}
    after = {p["name"]: p for p in run["after_move"]}
    assert sorted(got) == sorted(_names())
    for n in _names():
        assert (got[n]["x"], got[n]["y"]) == pytest.approx((after[n]["x"], after[n]["y"]), abs=2e-3), n
    model = {p["name"]: p for p in run["server"]["landmarks"]}
    m = run["moved"]["name"]
    assert np.hypot(got[m]["x"] - model[m]["x"], got[m]["y"] - model[m]["y"]) > 5, (
        "the corrected point, not the model's"
    )
    assert len(run["dialogs"]) == 1 and "saved correction" in run["dialogs"][0]
    again = run["reauto"]
    assert again["status"] == "cancelled" and again["source_kind"] == "saved"
    assert {p["name"]: (p["x"], p["y"]) for p in again["points"]} == {n: (got[n]["x"], got[n]["y"]) for n in got}


def test_ohif_shows_the_sr_itself(run, e2e_stack):
    """Reopened, the study lists the SR (its own thumbnail); opened, OHIF's SR display (2D: a Comprehensive SR, not the
    3D IOD) draws one point per landmark on the X-ray, at the saved (moved) positions."""
    v = run["sr_view"]
    assert v is not None, "the reopened study shows no SR thumbnail"
    assert [d["handler"] for d in v["display_sets"]] == [
        "@ohif/extension-cornerstone-dicom-sr.sopClassHandlerModule.dicom-sr"
    ]
    assert v["display_sets"][0]["loaded"] and v["display_sets"][0]["measurements"] == 19, v
    assert run["image"]["seriesUID"] in v["imageId"], v  # the labelled image, under the report
    drawn = np.array(sorted(map(tuple, v["pixels"])))
    saved = np.array(sorted((p["x"], p["y"]) for p in run["after_move"]))
    assert drawn.shape == saved.shape == (19, 2), v
    np.testing.assert_allclose(drawn, saved, atol=0.01)


def test_correction_is_a_dicom_sr_in_the_study(run, e2e_stack):
    """QIDO of the study lists an SR series (only the saved image has one); its SCOORD points, by landmark name, are
    the saved correction, including the dragged point."""
    from anatomark.monailabel.dicomweb import dicomweb_client, sr_landmarks

    orthanc, study = e2e_stack["orthanc"], e2e_stack["dx"].study_instance_uid
    with urllib.request.urlopen(f"{orthanc.url}/dicom-web/studies/{study}/series?Modality=SR", timeout=60) as r:
        series = json.loads(r.read())
    assert len(series) == 1, series
    sr_series = series[0]["0020000E"]["Value"][0]
    client = dicomweb_client(f"{orthanc.url}/dicom-web")
    instances = client.search_for_instances(study, sr_series)
    assert len(instances) == 1
    sr = client.retrieve_instance(study, sr_series, instances[0]["00080018"]["Value"][0])
    assert sr.Modality == "SR" and sr.StudyInstanceUID == study
    ref = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert ref.SeriesInstanceUID == run["image"]["seriesUID"]
    pts = sr_landmarks(sr)
    assert list(pts) == _names()
    after = {p["name"]: p for p in run["after_move"]}
    for n, (x, y) in pts.items():
        assert (x, y) == pytest.approx((after[n]["x"], after[n]["y"]), abs=2e-3), n


def test_schedule_set_from_the_panel(run, e2e_stack):
    assert run["schedule"] is not None, "the panel offers no retraining schedule"
    assert run["schedule"]["message"] == "Retraining every 5 saved labels"
    with urllib.request.urlopen(f"{e2e_stack['ml'].url}/anatomark/schedule", timeout=60) as r:
        sched = json.loads(r.read())
    assert sched["every_n_labels"] == 5 and sched["interval_hours"] == 0


def test_train_from_the_panel(run):
    """Train now starts a training (or says one runs: 409); the panel shows its progress and its end with the
    gate's decision."""
    t = run["train"]
    if "409" in t["message"]:
        return
    assert t["message"].startswith("Training of"), t
    running = [x for x in t["seen"] if x["status"] == "RUNNING"]
    assert running and "epoch" in running[-1]["text"], t["seen"]
    assert t["final_status"] in ("DONE", "FAILED", "STOPPED"), t
    assert t["final"].startswith(f"Last training: {t['final_status']}")
    if t["final_status"] == "DONE":
        assert t["gate"] and ("published" in t["gate"]), t
        assert ("not published" in t["gate"]) == (not t["stats"].get("published")), t


def test_next_sample_shows_the_proposed_image_and_skip_gives_another(run, e2e_stack):
    """Next sample opens the study of an unlabelled image with that image's series on screen (not the study's first
    series); Skip on it gives the other unlabelled image (the image labelled in the run is never proposed)."""
    images = {d.series_instance_uid: d for d in (e2e_stack["dx"], e2e_stack["cr"], e2e_stack["other"])}
    unlabelled = {uid: d for uid, d in images.items() if uid != run["image"]["seriesUID"]}
    assert len(unlabelled) == 2
    nxt, skip = run["next"], run["skip"]
    assert nxt["id"] in unlabelled, nxt
    assert nxt["study"] == unlabelled[nxt["id"]].study_instance_uid and nxt["shown"] == nxt["id"], nxt
    assert skip["id"] in unlabelled and skip["id"] != nxt["id"], (nxt, skip)
    assert skip["study"] == unlabelled[skip["id"]].study_instance_uid and skip["shown"] == skip["id"], skip


def test_the_second_image_of_a_series_gets_no_points_of_the_first(run, e2e_stack):
    """The server reads the first image of a series (lowest instance number). With the second image of a two-image
    series on screen, Auto-landmark says which image it reads and draws nothing (not the first image's points)."""
    m = run["multi"]
    assert m["sop"] == e2e_stack["second"].sop_instance_uid, m
    assert m["status"] == "error" and m["points"] == 0, m
    assert "reads only the first" in m["error"] and e2e_stack["other"].sop_instance_uid in m["error"], m
