"""Issue 14: labels that would store a wrong point are refused, symbolic links never let the server delete or serve a
file outside the studies folder, and ids too long for a file name get a 400.

Parser and datastore tests run without a server; the rest runs against one real MONAI Label server on 127.0.0.1
whose studies folder is made of links to images kept elsewhere (the usual way to avoid copying a dataset).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import requests
from hardening_support import (
    MODEL,
    ServerProcess,
    label_json,
    long_ids,
    make_studies,
    png_bytes,
    random_points,
    snapshot,
    untrustworthy_labels,
    xray,
)

from anatomark.config import load_landmark_set
from anatomark.errors import AnatomarkError, AnnotationError
from anatomark.monailabel.labels import ViewerGeometry, json_points, labelmap_points, read_label_points

LS = load_landmark_set("isbi2015_cephalometric")
NAMES = list(LS.names)
H, W = 480, 387
SECRET = "root:x:0:0:anatomark-test-secret\n"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------------- parsers
def _our_json(first: str) -> dict:
    rest = json.dumps([{"name": n, "x": 10.0 + k, "y": 20.0} for k, n in enumerate(NAMES[1:])])[1:-1]
    return json.loads(f'{{"landmarks": [{first}, {rest}]}}')


@pytest.mark.parametrize(
    ("entry", "words"),
    [
        ('{"name": "sella", "x": NaN, "y": 3}', "'sella': x is NaN"),
        ('{"name": "sella", "x": 3, "y": Infinity}', "'sella': y is Infinity"),
        ('{"name": "sella", "x": -Infinity, "y": 3}', "'sella': x is -Infinity"),
        ('{"name": "sella", "x": true, "y": 3}', "'sella': x is true, not a number"),
        ('{"name": "sella", "x": 3, "y": false}', "'sella': y is false, not a number"),
        ('{"name": "sella", "x": "3", "y": 3}', "'sella': x is \"3\", not a number"),
        ('{"name": "sella", "x": [3], "y": 3}', "not a number"),
        ('{"name": "sella", "x": 3}', "'sella' has x but no y"),
        ('{"name": "sella", "x": null, "y": 3}', "'sella' has y but no x"),
        ('{"name": "sella", "x": null, "y": null}, {"name": "sella", "x": 1, "y": 2}', "'sella' is given twice"),
        ('{"name": "sella", "x": 1, "y": 2}, {"name": "sella", "x": null, "y": null}', "'sella' is given twice"),
        ('{"name": "sella"}, {"name": "sella"}', "'sella' is given twice"),
        ('{"name": "sella", "x": 1, "y": 2}, {"name": "sella", "x": 1, "y": 2}', "'sella' is given twice"),
    ],
)
def test_our_json_refuses_untrustworthy_coordinates(entry, words):
    with pytest.raises(AnnotationError) as ei:
        json_points(_our_json(entry), LS, ViewerGeometry((1.0, 1.0), (0.0, 0.0)))
    assert words in str(ei.value)


def test_our_json_missing_landmarks_stay_missing():
    for entry in ('{"name": "sella", "x": null, "y": null}', '{"name": "sella"}'):
        pts = json_points(_our_json(entry), LS, ViewerGeometry((1.0, 1.0), (0.0, 0.0)))
        assert np.isnan(pts[0]).all() and np.isfinite(pts[1:]).all()
    pts = json_points(_our_json('{"name": "sella", "x": 5, "y": 6.5}'), LS, ViewerGeometry((1.0, 1.0), (0.0, 0.0)))
    assert pts[0].tolist() == [5.0, 6.5]


def _disk(lm: np.ndarray, x: float, y: float, value: int, r: float = 3.0) -> None:
    yy, xx = np.ogrid[: lm.shape[0], : lm.shape[1]]
    lm[(xx - x) ** 2 + (yy - y) ** 2 <= r * r] = value


def test_labelmap_landmark_of_two_regions_is_refused():
    lm = np.zeros((H, W), np.uint8)
    _disk(lm, 100, 100, 1)
    _disk(lm, 300, 400, 1)  # sella twice: the centroid (200, 250) is on neither
    _disk(lm, 50, 60, 2)
    with pytest.raises(AnnotationError) as ei:
        labelmap_points(lm, LS)
    msg = str(ei.value)
    assert "'sella' is 2 separate regions" in msg and "(100, 100)" in msg and "(300, 400)" in msg
    # touching diagonally is one region; one clean spot per landmark is accepted
    lm[:] = 0
    lm[10, 10] = lm[11, 11] = lm[12, 12] = 1
    _disk(lm, 50, 60, 2)
    pts = labelmap_points(lm, LS)
    assert pts[0].tolist() == [11.0, 11.0] and pts[1].tolist() == pytest.approx([50.0, 60.0])


def test_labelmap_regions_are_checked_after_label_info():
    lm = np.zeros((H, W), np.uint8)
    _disk(lm, 100, 100, 7)
    _disk(lm, 300, 300, 9)
    info = [{"name": "sella", "idx": 7}, {"name": "nasion", "idx": 9}]
    assert labelmap_points(lm, LS, info)[:2].tolist() == [[100.0, 100.0], [300.0, 300.0]]
    with pytest.raises(AnnotationError, match="names landmark 'sella' twice"):
        labelmap_points(lm, LS, [{"name": "sella", "idx": 7}, {"name": "sella", "idx": 9}])
    with pytest.raises(AnnotationError, match="gives value 7 to both 'sella' and 'nasion'"):
        labelmap_points(lm, LS, [{"name": "sella", "idx": 7}, {"name": "nasion", "idx": 7}])
    for bad in (True, 1.5, 0, -2, None, "seven"):
        with pytest.raises(AnnotationError, match="'sella' has no integer 'idx' >= 1"):
            labelmap_points(lm, LS, [{"name": "sella", "idx": bad}])


@pytest.mark.parametrize("case", untrustworthy_labels(NAMES, (H, W)), ids=lambda c: c[0])
def test_catalogue_labels_are_refused_naming_the_landmark(tmp_path, case):
    """Every case of the server catalogue fails in the parser with the first landmark named."""
    from anatomark.data.image_io import load_image

    name, fname, data, params = case
    image_path = tmp_path / "img.png"
    image_path.write_bytes(png_bytes(xray(H, W)))
    label = tmp_path / fname
    label.write_bytes(data)
    with pytest.raises(AnnotationError) as ei:
        read_label_points(label, load_image(image_path), image_path, LS, (params or {}).get("label_info"))
    assert repr(NAMES[0]) in str(ei.value), (name, str(ei.value))


# ---------------------------------------------------------------------------------------------------- datastore
def _linked_studies(root: Path, ids: list[str]) -> Path:
    """``root/dataset`` holds the images, ``root/studies`` one link per image, plus ``secret.png`` -> a text file,
    ``passwd.png`` -> ``/etc/passwd``, ``folder.png`` -> a folder and ``dangling.png`` -> nothing."""
    make_studies(root / "dataset", ids)
    studies = root / "studies"
    studies.mkdir()
    for i in ids:
        os.symlink(root / "dataset" / f"{i}.png", studies / f"{i}.png")
    (root / "secret.txt").write_text(SECRET)
    os.symlink(root / "secret.txt", studies / "secret.png")
    if Path("/etc/passwd").is_file():
        os.symlink("/etc/passwd", studies / "passwd.png")
    (root / "somedir").mkdir()
    os.symlink(root / "somedir", studies / "folder.png")
    os.symlink(root / "nothing.png", studies / "dangling.png")
    return studies


def test_datastore_link_policy(tmp_path):
    from fastapi import HTTPException

    from anatomark.monailabel.datastore import LandmarkDatastore

    studies = _linked_studies(tmp_path, ["a", "b"])
    ds = LandmarkDatastore(str(studies), LS, extensions=["*.png"])
    assert ds.get_image_uri("a") == str(tmp_path / "dataset" / "a.png")  # followed: a real image
    assert sorted(ds.get_unlabeled_images()) == ["a", "b"]  # active learning proposes only images it can serve
    for bad in ("secret", "folder"):
        assert ds.get_image_uri(bad) == "" and "symbolic link" in ds.image_access_problem(bad)
        assert ds.get_image_info(bad)["path"] == str(studies / f"{bad}.png")
    label = tmp_path / "l.json"
    label.write_bytes(label_json(NAMES, random_points(len(NAMES), seed=1)))
    with pytest.raises(HTTPException) as ei:
        ds.save_label("secret", str(label), "final", {})
    assert ei.value.status_code == 404
    ds.save_label("a", str(label), "final", {})
    ds.save_label("b", str(label), "final", {})
    assert [Path(d["image"]).name for d in ds.datalist()] == ["a.png", "b.png"]

    # delete: the link goes, its target stays; the label (a file inside the studies folder) goes
    before = sha(tmp_path / "dataset" / "a.png")
    ds.remove_image("a")
    assert not os.path.lexists(studies / "a.png") and not (studies / "labels" / "final" / "a.png").exists()
    assert sha(tmp_path / "dataset" / "a.png") == before
    ds.remove_image("secret")
    ds.remove_image("folder")
    assert (tmp_path / "secret.txt").read_text() == SECRET and (tmp_path / "somedir").is_dir()
    assert sorted(ds.list_images()) == ["b"] + (["passwd"] if (studies / "passwd.png").is_symlink() else [])

    # a label file that is a link out of the studies folder: not served or read; saving replaces the link
    outside_label = tmp_path / "outside_label.png"
    outside_label.write_bytes((studies / "labels" / "final" / "b.png").read_bytes())
    os.symlink(outside_label, studies / "labels" / "original" / "b.png")
    ds2 = LandmarkDatastore(str(studies), LS, extensions=["*.png"])
    assert ds2._datastore.label("b", "original") is not None
    assert ds2.get_label_uri("b", "original") == "" and "leaves the studies folder" in ds2.label_access_problem(
        "b", "original"
    )
    kept = sha(outside_label)
    ds2.save_label("b", str(label), "original", {})
    target = studies / "labels" / "original" / "b.png"
    assert target.is_file() and not target.is_symlink() and sha(outside_label) == kept
    # deleting a label that is a link removes the link only
    os.unlink(target)
    os.symlink(outside_label, target)
    ds2.remove_label("b", "original")
    assert not os.path.lexists(target) and sha(outside_label) == kept

    # a label folder that is a link out of the studies folder: nothing written or deleted through it
    (tmp_path / "outside_labels").mkdir()
    os.symlink(tmp_path / "outside_labels", studies / "labels" / "linked")
    with pytest.raises(HTTPException) as ei:
        ds2.save_label("b", str(label), "linked", {})
    assert ei.value.status_code == 409 and "labels/linked" in ei.value.detail
    assert list((tmp_path / "outside_labels").iterdir()) == []
    (tmp_path / "outside_labels" / "b.png").write_bytes(outside_label.read_bytes())
    (tmp_path / "outside_labels" / ".b.png.0123.part").write_bytes(b"not ours")
    ds3 = LandmarkDatastore(str(studies), LS, extensions=["*.png"])  # start-up clean-up skips the linked folder
    assert (tmp_path / "outside_labels" / ".b.png.0123.part").exists()
    assert ds3.get_label_uri("b", "linked") == ""
    with pytest.raises(HTTPException) as ei:
        ds3.remove_label("b", "linked")
    assert ei.value.status_code == 409
    with pytest.raises(HTTPException) as ei:
        ds3.remove_image("b")
    assert ei.value.status_code == 409
    assert (tmp_path / "outside_labels" / "b.png").is_file() and (tmp_path / "dataset" / "b.png").is_file()


def test_label_points_of_an_image_behind_a_bad_link_raise(tmp_path):
    from anatomark.monailabel.datastore import LandmarkDatastore

    studies = _linked_studies(tmp_path, ["a"])
    ds = LandmarkDatastore(str(studies), LS, extensions=["*.png"])
    label = tmp_path / "l.json"
    label.write_bytes(label_json(NAMES, random_points(len(NAMES), seed=1)))
    ds.save_label("a", str(label), "final", {})
    assert ds.label_points("a", "final") is not None
    # the link is re-pointed at a text file after the label was saved: training skips it with the reason
    os.unlink(studies / "a.png")
    os.symlink(tmp_path / "secret.txt", studies / "a.png")
    with pytest.raises(AnatomarkError, match="symbolic link"):
        ds.label_points("a", "final")


def test_long_ids_fit_the_file_system(tmp_path):
    """An id of up to 251 bytes works (its ``.part`` temp name stays short); longer ones are refused with the limit."""
    from fastapi import HTTPException

    from anatomark.monailabel.datastore import LandmarkDatastore
    from anatomark.monailabel.validation import MAX_ID_BYTES, id_problem

    studies = tmp_path / "studies"
    make_studies(studies, ["a"])
    ds = LandmarkDatastore(str(studies), LS, extensions=["*.png", "*.nii.gz"])
    upload = tmp_path / "up.png"
    upload.write_bytes(png_bytes(xray(H, W)))
    label = tmp_path / "l.json"
    label.write_bytes(label_json(NAMES, random_points(len(NAMES), seed=1)))
    for n in (236, 240, 248, MAX_ID_BYTES):
        image_id = "i" * n
        assert ds.add_image(image_id, str(upload), {}) == image_id
        ds.save_label(image_id, str(label), "final", {})
        assert os.path.isfile(ds.get_label_uri(image_id, "final"))
        ds.remove_image(image_id)
    for t in long_ids():
        assert f"at most {MAX_ID_BYTES} bytes" in id_problem(t)
        with pytest.raises(HTTPException) as ei:
            ds.add_image(t, str(upload), {})
        assert ei.value.status_code == 400
    nii = tmp_path / "up.nii.gz"
    nii.write_bytes(b"not read: refused by its name first")
    with pytest.raises(HTTPException) as ei:
        ds.add_image("n" * 250, str(nii), {})
    assert ei.value.status_code == 400 and "'.nii.gz'" in ei.value.detail and "at most 248 bytes" in ei.value.detail


# ---------------------------------------------------------------------------------------------------- real server
@pytest.fixture(scope="module")
def lserver(tmp_path_factory: pytest.TempPathFactory):
    from anatomark.paths import model_dir

    if not (model_dir() / f"{MODEL}.pt").is_file():
        pytest.skip(f"Shipped weights {model_dir() / (MODEL + '.pt')} not found")
    root = tmp_path_factory.mktemp("label_safety")
    studies = _linked_studies(root, ["s1", "s2", "s3"])
    (root / "outside_label.png").write_bytes(png_bytes(np.zeros((H, W), np.uint8)))
    (studies / "labels" / "final").mkdir(parents=True)
    os.symlink(root / "outside_label.png", studies / "labels" / "final" / "s3.png")
    (root / "outside_labels").mkdir()
    os.symlink(root / "outside_labels", studies / "labels" / "linked")
    srv = ServerProcess(root, studies, conf={"models": MODEL, "train_epochs": "1"}).start()
    yield srv
    srv.stop()


def _put_label(url: str, image: str, fname: str, data: bytes, params: dict | None = None, tag: str = "final"):
    form = {"params": json.dumps(params)} if params else None
    return requests.put(
        f"{url}/datastore/label", params={"image": image, "tag": tag}, files={"label": (fname, data)}, data=form,
        timeout=60,
    )  # fmt: skip


def test_server_refuses_untrustworthy_labels_with_the_landmark_named(lserver):
    before = snapshot(lserver.studies)
    wrong = []
    for name, fname, data, params in untrustworthy_labels(NAMES, (H, W)):
        r = _put_label(lserver.url, "s1", fname, data, params)
        detail = r.json().get("detail", "") if r.headers.get("content-type", "").startswith("application/json") else ""
        if r.status_code != 422 or repr(NAMES[0]) not in detail:
            wrong.append(f"{name}: {r.status_code} {r.text[:160]}")
    assert not wrong, "\n".join(wrong)
    assert snapshot(lserver.studies) == before, "a refused label changed the datastore"
    assert lserver.alive() and not lserver.crash_lines()


def test_server_serves_linked_images_but_never_other_files(lserver):
    url, root = lserver.url, lserver.root
    r = requests.get(f"{url}/datastore/image", params={"image": "s1"}, timeout=30)
    assert r.status_code == 200 and r.content == (root / "dataset" / "s1.png").read_bytes()
    r = requests.post(f"{url}/infer/{MODEL}", params={"image": "s1", "output": "json"}, timeout=120)
    assert r.status_code == 200 and len(r.json()["landmarks"]) == len(NAMES)
    bad = ["secret", "folder"] + (["passwd"] if (lserver.studies / "passwd.png").is_symlink() else [])
    for image in bad:
        for method in ("GET", "HEAD"):
            r = requests.request(method, f"{url}/datastore/image", params={"image": image}, timeout=30)
            assert r.status_code == 403, (image, method, r.status_code)
            assert "root:" not in r.text and (method == "HEAD" or "symbolic link" in r.json()["detail"])
        r = requests.post(f"{url}/infer/{MODEL}", params={"image": image, "output": "json"}, timeout=60)
        assert r.status_code == 403 and "root:" not in r.text
        r = requests.get(f"{url}/datastore/image/info", params={"image": image}, timeout=30)
        assert r.status_code == 403 and "secret.txt" not in r.text and "/etc/passwd" not in r.text
    # the dataset archive holds only what the policy follows
    assert _put_label(url, "s1", "s1.json", label_json(NAMES, random_points(len(NAMES), seed=4))).status_code == 200
    r = requests.get(f"{url}/datastore/dataset", timeout=60)
    assert r.status_code == 200
    with zipfile.ZipFile(io.BytesIO(r.content)) as z:
        names = z.namelist()
        assert sorted(n for n in names if n != "metadata.json") == ["image/s1.png", "label/s1.png"]
        assert all(b"root:" not in z.read(n) for n in names)
    # a label reached through a link out of the studies folder is not served
    r = requests.get(f"{url}/datastore/label", params={"label": "s3", "tag": "final"}, timeout=30)
    assert r.status_code == 403 and "leaves the studies folder" in r.json()["detail"]
    r = requests.head(f"{url}/datastore/label", params={"image": "s3", "tag": "final"}, timeout=30)
    assert r.status_code == 403


def test_server_deletes_links_never_their_targets(lserver):
    url, root, studies = lserver.url, lserver.root, lserver.studies
    targets = {p: sha(p) for p in [*(root / "dataset").iterdir(), root / "secret.txt", root / "outside_label.png"]}
    # a label through a link: the link goes, the file outside stays
    r = requests.delete(f"{url}/datastore/label", params={"id": "s3", "tag": "final"}, timeout=30)
    assert r.status_code == 200, r.text
    assert not os.path.lexists(studies / "labels" / "final" / "s3.png")
    # an image with a label of its own: the link and the label go, the image outside stays
    assert _put_label(url, "s2", "s2.json", label_json(NAMES, random_points(len(NAMES), seed=5))).status_code == 200
    for image in ("s2", "secret"):
        r = requests.delete(f"{url}/datastore/image", params={"id": image}, timeout=30)
        assert r.status_code == 200, r.text
        assert not os.path.lexists(studies / f"{image}.png")
    assert not (studies / "labels" / "final" / "s2.png").exists()
    assert {p: sha(p) for p in targets} == targets
    ids = requests.get(f"{url}/datastore/", params={"output": "all"}, timeout=30).json()["objects"]
    assert "s2" not in ids and "secret" not in ids and "s1" in ids


def test_server_never_writes_labels_through_a_folder_link(lserver):
    url, root = lserver.url, lserver.root
    r = _put_label(url, "s1", "s1.json", label_json(NAMES, random_points(len(NAMES), seed=6)), tag="linked")
    assert r.status_code == 409 and "labels/linked" in r.json()["detail"]
    assert list((root / "outside_labels").iterdir()) == []
    assert lserver.alive() and not lserver.crash_lines()


def test_server_long_ids(lserver):
    url = lserver.url
    valid = png_bytes(xray(H, W, seed=8))
    label = label_json(NAMES, random_points(len(NAMES), seed=7))
    for n in (236, 251):  # a bare 500 before (the .part temp name went over 255 bytes)
        image_id = "i" * n
        r = requests.put(f"{url}/datastore/image", params={"image": image_id}, files={"file": ("x.png", valid)})
        assert r.status_code == 200, (n, r.status_code, r.text[:200])
        assert _put_label(url, image_id, "l.json", label).status_code == 200
        r = requests.get(f"{url}/datastore/label", params={"label": image_id, "tag": "final"}, timeout=30)
        assert r.status_code == 200
        assert requests.delete(f"{url}/datastore/image", params={"id": image_id}, timeout=30).status_code == 200
    for image_id in long_ids():
        r = requests.put(f"{url}/datastore/image", params={"image": image_id}, files={"file": ("x.png", valid)})
        assert r.status_code == 400 and "at most 251 bytes" in r.json()["detail"]
        assert _put_label(url, image_id, "l.json", label).status_code == 400
    r = requests.put(f"{url}/datastore/image", files={"file": ("a" + ".b" * 130 + ".png", valid)}, timeout=30)
    assert 400 <= r.status_code < 500 and r.json()["detail"]
    assert lserver.alive() and not lserver.crash_lines()
