"""Hardening of the landmark server (issue 8), against a real MONAI Label server on 127.0.0.1.

A bounded subset of ``benchmarks/reliability.py``: every category of malformed request (bad images, bad labels, path
traversal on every id-taking endpoint, oversize uploads, unknown models, bad parameters) answered with a clear 4xx,
no 5xx, the datastore unchanged and nothing written outside it; unusual but valid images accepted; ``kill -9``
during label saves loses no acknowledged label; MONAI Label's bearer-token authentication with a local fake
identity provider. Runs in about a minute and a half (three server starts).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from hardening_support import (
    MODEL,
    Case,
    FakeRealm,
    ServerProcess,
    accepted_images,
    catalogue,
    label_json,
    make_studies,
    png_bytes,
    random_points,
    send,
    snapshot,
    xray,
)

MAX_UPLOAD_MB = 2
IDS = ["s1", "s2", "s3"]


@pytest.fixture(scope="module")
def hserver(tmp_path_factory: pytest.TempPathFactory):
    from anatomark.paths import model_dir

    if not (model_dir() / f"{MODEL}.pt").is_file():
        pytest.skip(f"Shipped weights {model_dir() / (MODEL + '.pt')} not found")
    root = tmp_path_factory.mktemp("hardening")
    make_studies(root / "studies", IDS)
    (root / "outside.png").write_bytes(png_bytes(xray(seed=9)))
    conf = {"models": MODEL, "max_upload_mb": str(MAX_UPLOAD_MB), "train_epochs": "1"}
    srv = ServerProcess(root, root / "studies", conf=conf).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def names(hserver) -> list[str]:
    labels = requests.get(f"{hserver.url}/info/", timeout=30).json()["models"][MODEL]["labels"]
    return sorted(labels, key=labels.get)


@pytest.fixture(scope="module")
def seeded(hserver, names) -> np.ndarray:
    """s1 has a final label (for the label-info cases)."""
    pts = random_points(len(names), seed=1)
    r = requests.put(
        f"{hserver.url}/datastore/label",
        params={"image": "s1", "tag": "final"},
        files={"label": ("s1.json", label_json(names, pts))},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    return pts


def outside_files(root: Path) -> set[str]:
    """Files the server may legitimately create outside the studies folder are left out (logs, caches, sessions)."""
    skip = ("studies/", "cache/", "sessions/")
    return {
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and not p.relative_to(root).as_posix().startswith(skip) and not p.name.startswith("server-")
    }


def test_malformed_requests_get_clear_4xx_and_change_nothing(hserver, names, seeded):
    root = hserver.root
    cases = catalogue(hserver.studies, root / "outside.png", names, MAX_UPLOAD_MB * 1_000_000, full=False)
    assert len(cases) >= 100
    before, outside_before = snapshot(hserver.studies), outside_files(root)
    t0 = time.time()
    with requests.Session() as s:
        outcomes = [send(hserver.url, c, s) for c in cases]
    elapsed = time.time() - t0
    wrong = [f"{o.case.name}: {o.status} {o.error or o.detail[:120]}" for o in outcomes if not o.ok]
    assert not wrong, f"{len(wrong)}/{len(cases)} answered unexpectedly:\n" + "\n".join(wrong)
    assert not [o for o in outcomes if o.status >= 500]
    unclear = [o.case.name for o in outcomes if o.case.method != "HEAD" and o.status >= 400 and not o.clear]
    assert not unclear, unclear
    assert hserver.alive() and not hserver.crash_lines()
    assert snapshot(hserver.studies) == before, "the datastore changed"
    assert outside_files(root) == outside_before, "a file was written outside the studies folder"
    assert not Path("/tmp/anatomark-escape").exists()
    assert elapsed < 90, f"{len(cases)} requests took {elapsed:.0f} s"
    # the server still works
    r = requests.post(f"{hserver.url}/infer/{MODEL}", params={"image": "s1", "output": "json"}, timeout=60)
    assert r.status_code == 200 and len(r.json()["landmarks"]) == len(names)


def test_no_file_outside_the_studies_is_read(hserver, seeded):
    root = hserver.root
    for image in (str(root / "outside.png"), "server-1.log", str(hserver.studies / "s1.png"), "/etc/passwd"):
        r = requests.post(f"{hserver.url}/infer/{MODEL}", params={"image": image, "output": "json"}, timeout=60)
        assert r.status_code in (400, 404), (image, r.status_code, r.text[:200])
        assert "landmarks" not in r.text
        params = {"params": json.dumps({"image": image})}
        r = requests.post(f"{hserver.url}/infer/{MODEL}", params={"image": "s1", "output": "json"}, data=params)
        assert r.status_code in (400, 404), (image, r.status_code)
    for path, q in (("/datastore/image", {"image": "../outside"}), ("/datastore/label", {"label": "..", "tag": "x"})):
        r = requests.get(hserver.url + path, params=q, timeout=30)
        assert r.status_code == 400 and "PNG" not in r.text
    # an upload named with a traversal file name lands inside the studies folder under its base name
    r = requests.put(
        f"{hserver.url}/datastore/image", files={"file": ("../../escaped.png", png_bytes(xray(seed=4)))}, timeout=60
    )
    assert r.status_code == 200 and r.json()["image"] == "escaped"
    assert (hserver.studies / "escaped.png").is_file() and not (root / "escaped.png").exists()
    assert requests.delete(f"{hserver.url}/datastore/image", params={"id": "escaped"}, timeout=30).status_code == 200


def test_slicer_session_flow_still_works(hserver, names):
    """3D Slicer runs a model on a volume that is not in the datastore through a session: upload, infer, delete."""
    r = requests.put(f"{hserver.url}/session/", files={"files": ("local.png", png_bytes(xray(seed=6)))}, timeout=60)
    assert r.status_code == 200, r.text
    sid = r.json()["session_id"]
    r = requests.post(f"{hserver.url}/infer/{MODEL}", params={"session_id": sid, "output": "json"}, timeout=120)
    assert r.status_code == 200, r.text
    assert len(r.json()["landmarks"]) == len(names)
    assert requests.delete(f"{hserver.url}/session/{sid}", timeout=30).status_code == 200


def test_unusual_valid_images_are_accepted(hserver, names):
    for name, fname, data in accepted_images():
        r = requests.post(
            f"{hserver.url}/infer/{MODEL}", params={"output": "json"}, files={"file": (fname, data)}, timeout=120
        )
        assert r.status_code == 200, (name, r.text[:300])
        res = r.json()
        assert len(res["landmarks"]) == len(names) and res["size_wh"] == [387, 480], name


def test_partial_label_keeps_missing_landmarks_missing(hserver, names):
    pts = random_points(len(names), seed=2)
    doc = json.loads(label_json(names, pts))
    doc["landmarks"] = doc["landmarks"][2:]
    r = requests.put(
        f"{hserver.url}/datastore/label",
        params={"image": "s3", "tag": "final"},
        files={"label": ("s3.json", json.dumps(doc).encode())},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    info = requests.get(f"{hserver.url}/datastore/label/info", params={"label": "s3", "tag": "final"}).json()
    assert info["landmarks"][:2] == [None, None]
    assert info["landmarks"][2] == pytest.approx(list(pts[2]), abs=1e-3)


def _stored_points(studies: Path, image: str) -> list | None:
    doc = json.loads((studies / "datastore_v2.json").read_text())
    label = doc["objects"].get(image, {}).get("labels", {}).get("final")
    return label["info"]["landmarks"] if label else None


def test_kill9_during_label_saves_loses_no_acknowledged_label(hserver, names):
    """Saves run back to back in a thread; the server is SIGKILLed at a random moment, three times. After each
    restart every acknowledged label is stored exactly, the datastore JSON parses, and no partial file is left."""
    from PIL import Image

    rng = np.random.default_rng(0)
    acked: dict[str, list] = {}
    for cycle in range(3):
        stop = threading.Event()
        inflight: dict[str, list] = {}

        def saver(stop: threading.Event, cycle: int, inflight: dict[str, list]) -> None:
            n = 0
            while not stop.is_set():
                image = IDS[1 + n % 2]
                pts = random_points(len(names), seed=1000 * cycle + n)
                inflight[image] = pts.tolist()
                try:
                    r = requests.put(
                        f"{hserver.url}/datastore/label",
                        params={"image": image, "tag": "final"},
                        files={"label": (f"{image}.json", label_json(names, pts))},
                        timeout=30,
                    )
                except requests.RequestException:
                    return
                if r.status_code == 200:
                    acked[image] = pts.tolist()
                n += 1

        t = threading.Thread(target=saver, args=(stop, cycle, inflight), daemon=True)
        t.start()
        time.sleep(float(rng.uniform(0.5, 2.0)))
        hserver.kill9()
        stop.set()
        t.join(35)
        hserver.start()
        for image, pts in acked.items():
            stored = _stored_points(hserver.studies, image)
            assert stored is not None, f"acknowledged label of {image} lost after kill -9 #{cycle + 1}"
            # the last acknowledged save, or the one in flight when the server died (never acknowledged)
            ok = [np.allclose(stored, pts, atol=1e-3)]
            if image in inflight:
                ok.append(np.allclose(stored, inflight[image], atol=1e-3))
            assert any(ok), f"{image}: stored points are neither the acknowledged nor the in-flight label"
            with Image.open(hserver.studies / "labels" / "final" / f"{image}.png") as im:
                assert im.size == (387, 480) and np.asarray(im).max() > 0
        assert not list(hserver.studies.rglob(".*.part"))
        r = requests.get(f"{hserver.url}/datastore/", params={"output": "all"}, timeout=30)
        assert r.status_code == 200
    assert acked, "no label save was acknowledged before the kills"


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory):
    from anatomark.paths import model_dir

    if not (model_dir() / f"{MODEL}.pt").is_file():
        pytest.skip("shipped weights not found")
    pytest.importorskip("cryptography")
    root = tmp_path_factory.mktemp("auth")
    make_studies(root / "studies", IDS)
    realm = FakeRealm()
    env = {"MONAI_LABEL_AUTH_ENABLE": "true", "MONAI_LABEL_AUTH_REALM_URI": realm.uri}
    srv = ServerProcess(root, root / "studies", conf={"models": MODEL}, env=env).start()
    yield srv, realm
    srv.stop()
    realm.close()


def test_authentication_refuses_unauthenticated_and_enforces_roles(auth_server):
    from cryptography.hazmat.primitives.asymmetric import rsa

    from anatomark.config import load_landmark_set

    names = load_landmark_set("isbi2015_cephalometric").names

    srv, realm = auth_server
    url = srv.url
    assert requests.get(f"{url}/auth/", timeout=30).json()["enabled"] is True
    protected = [
        Case("info", "auth", "GET", "/info/"),
        Case("datastore", "auth", "GET", "/datastore/"),
        Case("image", "auth", "GET", "/datastore/image", query={"image": "s1"}),
        Case("infer", "auth", "POST", f"/infer/{MODEL}", query={"image": "s1", "output": "json"}),
        Case(
            "label",
            "auth",
            "PUT",
            "/datastore/label",
            query={"image": "s2"},
            files={"label": ("l.json", label_json(names, random_points(len(names))))},
        ),  # fmt: skip
        Case("train", "auth", "POST", f"/train/{MODEL}"),
        Case("logs", "auth", "GET", "/logs/"),
    ]
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    bad_tokens = {
        "none": None,
        "garbage": "not-a-jwt",
        "other key": realm.token(["monailabel-admin"], key=other_key),
        "expired": realm.token(["monailabel-admin"], exp_in=-60),
        # header {"alg": "none"}, admin roles, no signature
        "unsigned (alg none)": "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0."
        "eyJwcmVmZXJyZWRfdXNlcm5hbWUiOiJ4IiwicmVhbG1fYWNjZXNzIjp7InJvbGVzIjpbIm1vbmFpbGFiZWwtYWRtaW4iXX19.",
    }
    for label, tok in bad_tokens.items():
        for c in protected:
            o = send(url, c, token=tok)
            assert o.status == 401, (label, c.name, o.status, o.detail)
    user = realm.token(["monailabel-user"])
    annotator = realm.token(["monailabel-annotator"])
    assert send(url, protected[0], token=user).status == 200
    assert send(url, protected[3], token=user).status == 200  # infer: any user
    assert send(url, protected[4], token=user).status == 403  # saving labels needs the annotator role
    assert send(url, protected[4], token=annotator).status == 200
    assert send(url, protected[5], token=annotator).status == 403  # training needs the admin role
    assert send(url, protected[6], token=user).status == 403  # logs: admin
    # unauthenticated callers learn nothing from the request guard's checks: MONAI Label's 401 comes first
    r = requests.post(f"{url}/infer/no_such_model", params={"image": "s1"}, timeout=30)
    assert r.status_code == 401 and MODEL not in r.text
    r = requests.get(f"{url}/datastore/image/info", params={"image": "s1"}, timeout=30)
    assert r.status_code == 401
    # login through MONAI Label (password grant forwarded to the realm's token endpoint)
    r = requests.post(f"{url}/auth/token", data={"username": realm.USER, "password": realm.PASSWORD}, timeout=30)
    assert r.status_code == 200, r.text
    tok = r.json()["access_token"]
    assert send(url, protected[4], token=tok).status == 200
    r = requests.post(f"{url}/auth/token", data={"username": realm.USER, "password": "wrong"}, timeout=30)
    assert r.status_code == 401, r.text
    assert srv.alive() and not srv.crash_lines()


# ---------------------------------------------------------------------------------------------------- no server
def test_datastore_recovers_from_a_corrupt_json_and_partial_files(tmp_path):
    """A torn ``datastore_v2.json`` (from a non-atomic writer) is moved aside at start-up and the datastore rebuilt
    from the files; ``.part`` files of an interrupted write are removed."""
    from anatomark.config import load_landmark_set
    from anatomark.monailabel.datastore import LandmarkDatastore

    ls = load_landmark_set("isbi2015_cephalometric")
    studies = tmp_path / "studies"
    make_studies(studies, ["a", "b"])
    ds = LandmarkDatastore(str(studies), ls, extensions=["*.png"])
    label = tmp_path / "a.json"
    label.write_bytes(label_json(ls.names, random_points(len(ls), seed=3)))
    ds.save_label("a", str(label), "final", {})
    text = (studies / "datastore_v2.json").read_text()
    (studies / "datastore_v2.json").write_text(text[: len(text) // 2])
    (studies / "labels" / "final" / ".b.png.0123.part").write_bytes(b"partial")
    ds2 = LandmarkDatastore(str(studies), ls, extensions=["*.png"])
    assert sorted(ds2.list_images()) == ["a", "b"]
    assert ds2.get_label_uri("a", "final")  # re-found from the label file
    got = ds2.label_points("a", "final")
    assert got is not None and np.isfinite(got[0]).sum() >= 2 * len(ls) - 4  # decoded from the label map
    assert list(studies.glob("datastore_v2.json.corrupt-*"))
    assert not list(studies.rglob(".*.part"))
    json.loads((studies / "datastore_v2.json").read_text())
