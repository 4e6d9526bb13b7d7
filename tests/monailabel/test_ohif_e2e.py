"""End to end in a real browser: a DICOM DX X-ray in Orthanc, opened from OHIF 3's study list (prebuilt @ohif/app
from npm) in the anatomark mode ("X-ray landmarks"), "Auto-landmark" clicked, points checked against the server's JSON (pixels, mm and where they are
rendered), one point dragged with the mouse, "Save landmarks" clicked, and the final label found in the datastore.

Needs Orthanc + DICOMweb plugin and Chromium (``make stack-deps``: Debian packages) and the viewer (``make viewer``:
``npm ci`` for playwright-core, prebuilt OHIF). Skips with the command to run when one is missing.
``ANATOMARK_E2E_SCREENSHOT=docs/ohif_auto_landmark.png`` also keeps the final screenshot there (and the one with the
label map shown as ``<name>_labelmap.png``).
"""

from __future__ import annotations

import json
import os
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
    services = []
    try:
        orthanc = stack.start_orthanc(root / "orthanc")
        services.append(orthanc)
        stack.upload_dicom(orthanc.url, [dx.path, cr.path])
        ml = stack.start_monailabel(
            f"{orthanc.url}/dicom-web", root / "monailabel", models=MODEL, env={"ANATOMARK_CACHE": str(root / "cache")}
        )
        services.append(ml)
        viewer = stack.start_viewer(orthanc.url, ml.url)
        services.append(viewer)
        yield {"root": root, "dx": dx, "cr": cr, "orthanc": orthanc, "ml": ml, "viewer": viewer}
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
           "--labelmap-screenshot", str(root / "labelmap.png"), "--chromium", CHROMIUM, "--move", "sella", "--dx=40", "--dy=-30"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=VIEWER, capture_output=True, text=True, timeout=600)
    assert out.is_file(), f"e2e driver wrote nothing:\n{proc.stdout}\n{proc.stderr}"
    res = json.loads(out.read_text())
    assert proc.returncode == 0 and res["ok"], (
        f"{res.get('error')}\nsteps: {res.get('steps')}\nconsole: {res.get('console_errors')}\n"
        f"server log:\n{e2e_stack['ml'].log_tail()}"
    )
    if os.environ.get("ANATOMARK_E2E_SCREENSHOT"):
        keep = Path(os.environ["ANATOMARK_E2E_SCREENSHOT"])
        shutil.copy(shot, keep)
        shutil.copy(root / "labelmap.png", keep.with_name(keep.stem + "_labelmap.png"))
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


def test_saved_label_is_in_the_datastore(run, e2e_stack):
    assert run["save"]["status"] == "saved", run["save"]
    uid = run["image"]["seriesUID"]
    with urllib.request.urlopen(f"{e2e_stack['ml'].url}/datastore/?output=all", timeout=60) as r:
        ds = json.loads(r.read())
    info = ds["objects"][uid]["labels"]["final"]["info"]
    assert info["n_landmarks"] == 19 and info["spacing_mm"] == [SPACING, SPACING]
    assert info["source_file"].endswith(".json") and info["client"] == "anatomark-ohif"
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
