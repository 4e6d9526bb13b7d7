"""The app on a real DICOMweb server: Orthanc (Debian package) on a free loopback port, DX/CR X-rays uploaded to it,
the MONAI Label server started with ``--studies http://127.0.0.1:<port>/dicom-web``.

Skips with a message when Orthanc or its DICOMweb plugin is not installed (``make stack-deps`` installs them).
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from mlserver_constants import MODEL

from anatomark import stack
from anatomark.data.dicom_write import write_dicom


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=120) as r:
        return json.loads(r.read())


def _multipart(fields: dict[str, tuple[str, bytes, str] | str]) -> tuple[bytes, str]:
    boundary = "anatomark-test-boundary"
    out = b""
    for name, value in fields.items():
        out += f"--{boundary}\r\n".encode()
        if isinstance(value, tuple):
            fname, data, ctype = value
            out += f'Content-Disposition: form-data; name="{name}"; filename="{fname}"\r\n'.encode()
            out += f"Content-Type: {ctype}\r\n\r\n".encode() + data + b"\r\n"
        else:
            out += f'Content-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
    out += f"--{boundary}--\r\n".encode()
    return out, f"multipart/form-data; boundary={boundary}"


def _request(method: str, url: str, fields: dict | None = None) -> tuple[int, dict]:
    data, ctype = _multipart(fields or {})
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": ctype})
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


@pytest.fixture(scope="module")
def pacs(isbi: Path, tmp_path_factory: pytest.TempPathFactory):
    """Orthanc with a DX (ISBI 151), a CR (ISBI 152) and a secondary capture (153, Modality OT, not served)."""
    why = stack.orthanc_missing()
    if why:
        pytest.skip(why)
    root = tmp_path_factory.mktemp("pacs")
    files = {
        "DX": write_dicom(isbi / "images" / "151.jpg", root / "dcm" / "151.dcm", spacing=0.1, modality="DX"),
        "CR": write_dicom(isbi / "images" / "152.jpg", root / "dcm" / "152.dcm", spacing=0.1, modality="CR"),
        "SC": write_dicom(isbi / "images" / "153.jpg", root / "dcm" / "153.dcm", spacing=0.1, modality="SC"),
    }
    orthanc = stack.start_orthanc(root / "orthanc")
    try:
        stack.upload_dicom(orthanc.url, [f.path for f in files.values()])
        yield orthanc, files
    finally:
        orthanc.stop()


@pytest.fixture(scope="module")
def dicom_server(pacs, tmp_path_factory: pytest.TempPathFactory):
    from anatomark.paths import model_dir

    if not (model_dir() / f"{MODEL}.pt").is_file():
        pytest.skip(f"Shipped weights {model_dir() / (MODEL + '.pt')} not found")
    orthanc, _ = pacs
    root = tmp_path_factory.mktemp("mlserver-dicomweb")
    try:
        srv = stack.start_monailabel(
            f"{orthanc.url}/dicom-web", root, models=MODEL, conf={"dicom_modalities": "DX,CR", "gate_min_val_images": "0"},
            env={"ANATOMARK_CACHE": str(root / "cache")},
        )  # fmt: skip
    except stack.StackError as e:
        pytest.fail(str(e))
    yield srv
    srv.stop()


def test_lists_dx_and_cr_series_only(pacs, dicom_server):
    _, files = pacs
    ds = _get(f"{dicom_server.url}/datastore/?output=stats")
    assert ds["total"] == 2, ds
    # image ids are the series UIDs of the DX and the CR; the secondary capture (OT) is filtered out
    req = urllib.request.Request(
        f"{dicom_server.url}/activelearning/random", data=b"{}", method="POST",
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(req, timeout=120) as r:
        nxt = json.loads(r.read())["id"]
    assert nxt in {files["DX"].series_instance_uid, files["CR"].series_instance_uid}


@pytest.mark.parametrize("modality", ["DX", "CR"])
def test_infer_on_a_dicomweb_series(pacs, dicom_server, isbi, modality):
    """/infer on a series UID downloads the instance from Orthanc and returns K points in its pixel grid."""
    from anatomark.data.image_io import load_image
    from anatomark.model import load_model

    _, files = pacs
    uid = files[modality].series_instance_uid
    q = urllib.parse.urlencode({"image": uid, "output": "json"})
    status, res = _request("POST", f"{dicom_server.url}/infer/{MODEL}?{q}", {"params": "{}"})
    assert status == 200, res
    model = load_model(MODEL)
    assert len(res["landmarks"]) == len(model.landmark_set) == 19
    assert res["spacing_mm"] == [0.1, 0.1] and res["spacing_source"] == "file" and res["size_wh"] == [1935, 2400]
    got = np.array([[p["x"], p["y"]] for p in res["landmarks"]])
    jpg = isbi / "images" / f"{files[modality].path.stem}.jpg"
    want = model.predict(load_image(jpg, spacing=0.1)).points
    np.testing.assert_allclose(got, want, atol=0.05)
    assert [p["name"] for p in res["landmarks"]] == list(model.landmark_set.names)


def test_unknown_or_filtered_series_is_404(pacs, dicom_server):
    _, files = pacs
    for uid in ("1.2.3.4.5", files["SC"].series_instance_uid):
        q = urllib.parse.urlencode({"image": uid, "output": "json"})
        status, res = _request("POST", f"{dicom_server.url}/infer/{MODEL}?{q}", {"params": "{}"})
        assert status == 404, res


def test_save_final_label_and_train_reads_it(pacs, dicom_server):
    """PUT /datastore/label with our JSON on a series UID stores a final label the trainer's datalist sees."""
    _, files = pacs
    uid = files["DX"].series_instance_uid
    q = urllib.parse.urlencode({"image": uid, "output": "json"})
    _, res = _request("POST", f"{dicom_server.url}/infer/{MODEL}?{q}", {"params": "{}"})
    pts = [{"name": p["name"], "x": p["x"], "y": p["y"]} for p in res["landmarks"]]
    pts[0]["x"] += 25.0  # the user moved sella 2.5 mm to the right
    body = json.dumps({"landmarks": pts}).encode()
    q = urllib.parse.urlencode({"image": uid, "tag": "final"})
    status, saved = _request(
        "PUT", f"{dicom_server.url}/datastore/label?{q}",
        {"label": ("landmarks.json", body, "application/json"), "params": "{}"},
    )  # fmt: skip
    assert status == 200, saved
    ds = _get(f"{dicom_server.url}/datastore/?output=all")
    info = ds["objects"][uid]["labels"]["final"]["info"]
    assert info["n_landmarks"] == 19 and info["spacing_mm"] == [0.1, 0.1]
    assert info["landmarks"][0] == pytest.approx([pts[0]["x"], pts[0]["y"]], abs=1e-3)
    stats = _get(f"{dicom_server.url}/datastore/?output=stats")
    assert stats["completed"] == 1 and stats["total"] == 2
    # the correction is in the PACS too: an SR in the image's study whose points are the saved ones, by name
    from anatomark.monailabel.dicomweb import dicomweb_client, sr_landmarks

    orthanc, _ = pacs
    sr_info = info["pacs_sr"]
    assert "error" not in sr_info, sr_info
    study = files["DX"].study_instance_uid
    assert sr_info["StudyInstanceUID"] == study
    series = _get(f"{orthanc.url}/dicom-web/studies/{study}/series?Modality=SR")
    assert [s["0020000E"]["Value"][0] for s in series] == [sr_info["SeriesInstanceUID"]]
    client = dicomweb_client(f"{orthanc.url}/dicom-web")
    sr = client.retrieve_instance(study, sr_info["SeriesInstanceUID"], sr_info["SOPInstanceUID"])
    got = sr_landmarks(sr)
    assert list(got) == [p["name"] for p in pts]
    for p in pts:
        assert got[p["name"]] == pytest.approx((p["x"], p["y"]), abs=1e-3)
    assert sr.CurrentRequestedProcedureEvidenceSequence[0].StudyInstanceUID == study
    # a label that does not fit the landmark set is refused
    bad = json.dumps({"landmarks": [{"name": "nose", "x": 1, "y": 2}]}).encode()
    status, _ = _request(
        "PUT",
        f"{dicom_server.url}/datastore/label?{q}",
        {"label": ("bad.json", bad, "application/json"), "params": "{}"},
    )
    assert status == 422


def test_training_uses_the_saved_dicomweb_label(pacs, dicom_server):
    """POST /train runs in MONAI Label's subprocess, which re-creates the DICOMweb datastore: the final label saved
    above is the training set, the new weights are published and served by the next /infer."""
    import time

    _, files = pacs
    uid = files["DX"].series_instance_uid
    q = urllib.parse.urlencode({"image": uid, "output": "json"})
    _, before = _request("POST", f"{dicom_server.url}/infer/{MODEL}?{q}", {"params": "{}"})
    req = urllib.request.Request(
        f"{dicom_server.url}/train/{MODEL}", data=json.dumps({"max_epochs": 1}).encode(), method="POST",
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(req, timeout=60) as r:
        task_id = json.loads(r.read())["id"]
    deadline = time.time() + 300
    while True:
        task = next(t for t in _get(f"{dicom_server.url}/train/?all=true") if t["id"] == task_id)
        if task["status"] in ("DONE", "ERROR", "STOPPED"):
            break
        assert time.time() < deadline, f"training did not finish:\n{dicom_server.log_tail()}"
        time.sleep(1.0)
    assert task["status"] == "DONE", "\n".join(task.get("details", [])[-30:])
    stats = _get(f"{dicom_server.url}/info/")["train_stats"][MODEL]
    assert stats["n_train"] + stats["n_val"] == 1, stats
    _, after = _request("POST", f"{dicom_server.url}/infer/{MODEL}?{q}", {"params": "{}"})
    assert after["model_version"] != before["model_version"]
    # training state and published weights live in the DICOMweb cache folder, never in the app folder
    published = Path(_get(f"{dicom_server.url}/info/")["anatomark"]["published"][MODEL])
    assert published.is_file() and published.is_relative_to(Path(dicom_server.log).parent / "dicomweb-cache")


def test_datastore_in_process_secondary_capture_and_new_uploads(pacs, isbi, tmp_path):
    """The datastore class itself on Orthanc: OT (secondary capture) served when asked for, the instance fetched once
    as a .dcm our loader reads with its spacing, and a series uploaded later listed after ``list_ttl``."""
    import time

    from anatomark.config import load_landmark_set
    from anatomark.data.image_io import load_image
    from anatomark.monailabel.dicomweb import LandmarkDICOMwebDatastore, dicomweb_client

    orthanc, files = pacs
    ds = LandmarkDICOMwebDatastore(
        dicomweb_client(f"{orthanc.url}/dicom-web"), load_landmark_set("isbi2015_cephalometric"),
        cache_path=tmp_path / "cache", modalities=["OT"], list_ttl=0.5,
    )  # fmt: skip
    sc = files["SC"].series_instance_uid
    assert ds.list_images() == [sc]
    assert ds.get_image_uri(files["DX"].series_instance_uid) == ""  # not an OT series: not an image here
    uri = ds.get_image_uri(sc)
    assert uri.endswith(f"{sc}.dcm")
    img = load_image(uri)
    assert img.spacing == (0.1, 0.1) and img.size_wh == (1935, 2400) and img.meta["modality"] == "OT"
    mtime = Path(uri).stat().st_mtime_ns
    assert ds.get_image_uri(sc) == uri and Path(uri).stat().st_mtime_ns == mtime  # fetched once
    info = ds.get_image_info(sc)
    assert info["StudyInstanceUID"] == files["SC"].study_instance_uid and info["SOPInstanceUID"]
    new = write_dicom(isbi / "images" / "154.jpg", tmp_path / "154.dcm", spacing=0.1, modality="SC")
    stack.upload_dicom(orthanc.url, [new.path])
    time.sleep(0.6)
    assert sorted(ds.list_images()) == sorted([sc, new.series_instance_uid])
    assert sorted(ds.get_unlabeled_images()) == sorted(ds.list_images())


def test_landmarks_sr_round_trip(isbi, tmp_path):
    """The SR of a correction (TID 1500): one SCOORD POINT per placed landmark on the source image, named by its
    tracking identifier, pixel centres shifted by 0.5 to DICOM's corner origin and back; missing landmarks left out."""
    import pydicom

    from anatomark.monailabel.dicomweb import landmarks_sr, sr_landmarks, sr_series_uid

    dx = write_dicom(isbi / "images" / "151.jpg", tmp_path / "151.dcm", spacing=0.1, modality="DX")
    src = pydicom.dcmread(dx.path, stop_before_pixels=True)
    pts = np.array([[10.0, 20.0], [np.nan, np.nan], [1934.0, 2399.0]])
    sr = landmarks_sr(src, ["sella", "nasion", "gnathion"], pts, instance_number=7)
    sr.save_as(str(tmp_path / "sr.dcm"))
    back = pydicom.dcmread(tmp_path / "sr.dcm")
    assert back.Modality == "SR" and back.StudyInstanceUID == dx.study_instance_uid and back.InstanceNumber == 7
    assert back.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR: 2D SCOORD (OHIF's 2D SR display)
    assert back.SeriesInstanceUID == sr_series_uid(dx.series_instance_uid) != dx.series_instance_uid
    assert sr_landmarks(back) == {"sella": (10.0, 20.0), "gnathion": (1934.0, 2399.0)}

    def items(seq):
        for c in seq:
            yield c
            yield from items(c.get("ContentSequence", []))

    scoords = [c for c in items(back.ContentSequence) if c.ValueType == "SCOORD"]
    assert [c.GraphicType for c in scoords] == ["POINT", "POINT"]
    assert list(scoords[0].GraphicData) == [10.5, 20.5]
    ref = scoords[0].ContentSequence[0].ReferencedSOPSequence[0]
    assert ref.ReferencedSOPInstanceUID == src.SOPInstanceUID
    with pytest.raises(ValueError):
        landmarks_sr(src, ["sella"], np.array([[np.nan, np.nan]]))


def test_final_labels_read_back_from_the_pacs_sr(pacs, tmp_path):
    """A datastore with an empty cache finds an image's anatomark SR in the PACS and trains on its latest instance's
    points (``datalist``); a local label is never replaced by a later SR."""
    import pydicom

    from anatomark.config import load_landmark_set
    from anatomark.monailabel.dicomweb import LandmarkDICOMwebDatastore, dicomweb_client, landmarks_sr

    orthanc, files = pacs
    client = dicomweb_client(f"{orthanc.url}/dicom-web")
    ls = load_landmark_set("isbi2015_cephalometric")
    cr = files["CR"]
    src = pydicom.dcmread(cr.path, stop_before_pixels=True)
    pts = np.stack([np.linspace(100, 1800, len(ls)), np.linspace(200, 2200, len(ls))], axis=1)
    older = landmarks_sr(src, ls.names, pts + 50, instance_number=1)
    latest = landmarks_sr(src, ls.names, pts, instance_number=2)
    client.store_instances([older, latest])
    ds = LandmarkDICOMwebDatastore(client, ls, cache_path=tmp_path / "cache", modalities=["CR"])
    items = ds.datalist()
    assert [Path(d["image"]).stem for d in items] == [cr.series_instance_uid]
    got, spacing = ds.label_points(cr.series_instance_uid, "final")
    np.testing.assert_allclose(got, pts, atol=1e-3)
    info = ds.get_label_info(cr.series_instance_uid, "final")
    assert info["source"] == "pacs_sr" and info["pacs_sr"]["SOPInstanceUID"] == latest.SOPInstanceUID
    client.store_instances([landmarks_sr(src, ls.names, pts + 100, instance_number=3)])
    assert ds.import_pacs_labels() == []
    np.testing.assert_allclose(ds.label_points(cr.series_instance_uid, "final")[0], pts, atol=1e-3)
