"""Shared by ``test_hardening.py`` and ``benchmarks/reliability.py`` (a plain module imported by bare name):
a MONAI Label server process that can be killed with SIGKILL and restarted on the same studies folder, an HTTP
helper, a fake identity provider, and the catalogue of malformed requests.

Everything targets 127.0.0.1 only; every request has a timeout.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import json
import struct
import threading
import time
import urllib.parse
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import requests
from PIL import Image

from anatomark.launch import MonaiLabelServer, free_port  # noqa: F401  (free_port: for test_hardening)
from anatomark.monailabel.validation import id_problem

REPO = Path(__file__).resolve().parents[2]
MODEL = "isbi2015_heatmap_unet"
TIMEOUT = 120.0


# ---------------------------------------------------------------------------------------------------- server
class ServerProcess(MonaiLabelServer):
    """The anatomark app (:class:`anatomark.launch.MonaiLabelServer`) that can be killed with SIGKILL and restarted
    on the same studies folder: each start gets a free port and its own log (``server-<n>.log``); ``/info/``
    answering 401 (a server behind a login) counts as started.

    Args:
        root: working directory (cache, sessions, logs).
        studies: the studies folder.
        conf: ``--conf`` options.
        env: more environment variables for the server.
    """

    def __init__(
        self, root: Path, studies: Path, conf: dict[str, str] | None = None, env: dict[str, str] | None = None
    ) -> None:
        env = {"ANATOMARK_CACHE": str(root / "cache"), "MONAI_LABEL_INFER_CONCURRENCY": "1", **(env or {})}
        super().__init__(
            studies, root, conf, env=env, ready_status=(200, 401), timeout=180.0, log_name="server-{start}.log",
            poll=0.5,
        )  # fmt: skip

    @property
    def root(self) -> Path:
        return self.workdir

    def kill9(self) -> None:
        """SIGKILL the server and everything it started (training subprocesses): a crash, no clean-up."""
        self.kill()

    def crash_lines(self) -> list[str]:
        """Unhandled-exception markers in this run's log."""
        text = self.log.read_text(errors="replace") if self.log.is_file() else ""
        return [ln for ln in text.splitlines() if "Exception in ASGI application" in ln]


# ---------------------------------------------------------------------------------------------------- fixtures
def xray(h: int = 480, w: int = 387, seed: int = 0) -> np.ndarray:
    """A synthetic 8-bit 'radiograph' (smooth blobs + noise)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = 40 + 120 * np.exp(-(((xx - w * 0.45) / (w * 0.25)) ** 2 + ((yy - h * 0.4) / (h * 0.3)) ** 2))
    img += rng.normal(0, 8, (h, w))
    return np.clip(img, 0, 255).astype(np.uint8)


def png_bytes(arr: np.ndarray, mode: str | None = None, **save: Any) -> bytes:
    buf = io.BytesIO()
    im = Image.fromarray(arr) if mode is None else Image.fromarray(arr).convert(mode)
    im.save(buf, format="PNG", **save)
    return buf.getvalue()


def make_studies(studies: Path, ids: list[str], h: int = 480, w: int = 387) -> None:
    """Synthetic 254-dpi PNGs (0.1 mm/px in viewers)."""
    studies.mkdir(parents=True, exist_ok=True)
    for k, i in enumerate(ids):
        Image.fromarray(xray(h, w, seed=k)).save(studies / f"{i}.png", dpi=(254, 254))


def snapshot(studies: Path) -> dict[str, str]:
    """sha256 of every file of the datastore (images, labels, datastore JSON); the app's state folder, lock and
    MONAI Label's own bookkeeping are left out."""
    out = {}
    for p in sorted(studies.rglob("*")):
        rel = p.relative_to(studies).as_posix()
        if p.is_file() and not rel.startswith(".anatomark") and rel != ".lock":
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def label_json(names: list[str], points: np.ndarray) -> bytes:
    return json.dumps(
        {"landmarks": [{"name": n, "x": float(p[0]), "y": float(p[1])} for n, p in zip(names, points)]}
    ).encode()


def random_points(n: int, h: int = 480, w: int = 387, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.round(np.c_[rng.uniform(20, w - 20, n), rng.uniform(20, h - 20, n)], 3)


# ---------------------------------------------------------------------------------------------------- HTTP
@dataclass
class Case:
    """One request and the statuses that count as a correct answer."""

    name: str
    category: str
    method: str
    path: str
    query: dict[str, str] | None = None
    files: dict[str, tuple[str, bytes]] | None = None
    data: dict[str, str] | None = None
    body: bytes | None = None
    headers: dict[str, str] | None = None
    expect: tuple[int, ...] = (400, 404, 422)
    raw: bool = False  # send the path exactly as written (no client-side normalisation of '..')
    chunked: bool = False  # stream the body without Content-Length


@dataclass
class Outcome:
    case: Case
    status: int
    detail: str
    seconds: float
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error and self.status in self.case.expect

    @property
    def clear(self) -> bool:
        """A 4xx that says what is wrong (a non-empty 'detail')."""
        return 400 <= self.status < 500 and bool(self.detail.strip())


def _detail(text: str) -> str:
    try:
        doc = json.loads(text)
    except ValueError:
        return text[:300]
    if isinstance(doc, dict) and "detail" in doc:
        d = doc["detail"]
        return d if isinstance(d, str) else json.dumps(d)[:300]
    return text[:300]


def send(base_url: str, case: Case, session: requests.Session | None = None, token: str | None = None) -> Outcome:
    headers = dict(case.headers or {})
    if token:
        headers["Authorization"] = f"Bearer {token}"
    t0 = time.perf_counter()
    try:
        if case.raw or case.chunked:
            status, text = _send_raw(base_url, case, headers)
        else:
            s = session or requests
            r = s.request(
                case.method,
                base_url + case.path,
                params=case.query,
                files=case.files,
                data=case.body if case.body is not None else case.data,
                headers=headers,
                timeout=TIMEOUT,
            )
            status, text = r.status_code, r.text
    except (requests.RequestException, OSError, http.client.HTTPException) as e:
        return Outcome(case, 0, "", time.perf_counter() - t0, error=f"{type(e).__name__}: {e}")
    return Outcome(case, status, _detail(text), time.perf_counter() - t0)


def _send_raw(base_url: str, case: Case, headers: dict[str, str]) -> tuple[int, str]:
    u = urllib.parse.urlsplit(base_url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=TIMEOUT)
    path = case.path + ("?" + urllib.parse.urlencode(case.query) if case.query else "")
    try:
        if case.chunked:
            body = case.body or b""

            def chunks() -> Iterator[bytes]:
                for i in range(0, len(body), 1 << 20):
                    yield body[i : i + (1 << 20)]

            conn.request(case.method, path, body=chunks(), headers=headers, encode_chunked=True)
        else:
            conn.request(case.method, path, body=case.body, headers=headers)
        r = conn.getresponse()
        return r.status, r.read().decode(errors="replace")
    finally:
        conn.close()


# ---------------------------------------------------------------------------------------------------- bad files
def _nifti(arr: np.ndarray, zooms: tuple[float, ...] | None = None) -> bytes:
    import nibabel as nib

    img = nib.Nifti1Image(arr, np.eye(4))
    if zooms is not None:
        img.header.set_zooms(zooms)
    return gzip.compress(img.to_bytes())


def _nrrd(arr: np.ndarray) -> bytes:
    import tempfile

    import nrrd

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "x.nrrd"
        nrrd.write(str(p), arr, index_order="F")
        return p.read_bytes()


def _dicom(arr: np.ndarray, frames: int = 1) -> bytes:
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("x.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, "DX"
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit, ds.PixelRepresentation = 15, 0
    ds.ImagerPixelSpacing = [0.1, 0.1]
    data = np.repeat(arr.astype(np.uint16)[None], frames, axis=0) if frames > 1 else arr.astype(np.uint16)
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = data.tobytes()
    ds.is_little_endian, ds.is_implicit_VR = True, False
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, write_like_original=False)
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def giant_png(w: int = 20000, h: int = 20000, header_only: bool = False) -> bytes:
    """A real ``w x h`` 8-bit gray PNG of zeros (a few hundred kB), or only its header."""
    out = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
    if header_only:
        return out
    comp = zlib.compressobj(9)
    row = b"\0" * (w + 1)
    data = b"".join(comp.compress(row) for _ in range(h)) + comp.flush()
    return out + _png_chunk(b"IDAT", data) + _png_chunk(b"IEND", b"")


def giant_jpeg(w: int = 20000, h: int = 20000) -> bytes:
    """A small JPEG whose frame header claims ``w x h`` pixels."""
    buf = io.BytesIO()
    Image.fromarray(xray(64, 64)).save(buf, format="JPEG")
    b = bytearray(buf.getvalue())
    i = b.find(b"\xff\xc0")
    b[i + 5 : i + 9] = struct.pack(">HH", h, w)
    return bytes(b)


def giant_bmp(w: int = 20000, h: int = 20000) -> bytes:
    """A BMP header claiming ``w x h`` 8-bit pixels, with a little data."""
    info = struct.pack("<IiiHHIIiiII", 40, w, h, 1, 8, 0, 0, 2835, 2835, 256, 0)
    palette = b"".join(bytes((i, i, i, 0)) for i in range(256))
    off = 14 + len(info) + len(palette)
    return b"BM" + struct.pack("<IHHI", off + 1024, 0, 0, off) + info + palette + b"\0" * 1024


def giant_nifti(w: int = 20000, h: int = 20000) -> bytes:
    """A NIfTI header claiming a ``w x h`` uint8 image, with a few bytes of data."""
    import nibabel as nib

    hdr = nib.Nifti1Header()
    hdr.set_data_shape((w, h))
    hdr.set_data_dtype(np.uint8)
    return gzip.compress(hdr.binaryblock + b"\0" * 4 + b"\0" * 4096)


def giant_nrrd(w: int = 20000, h: int = 20000) -> bytes:
    return f"NRRD0004\ntype: uint8\ndimension: 2\nsizes: {w} {h}\nencoding: raw\n\n".encode() + b"\0" * 4096


def bad_images() -> list[tuple[str, str, bytes, tuple[int, ...]]]:
    """``(case name, upload file name, bytes, expected statuses)`` of image files the server must refuse."""
    img = xray()
    png = png_bytes(img)
    jpg_buf = io.BytesIO()
    Image.fromarray(img).save(jpg_buf, format="JPEG")
    jpg = jpg_buf.getvalue()
    dcm = _dicom(img)
    nii = _nifti(img.T.copy())
    rng = np.random.default_rng(7)
    noise = rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()
    tiff_buf = io.BytesIO()
    frames = [Image.fromarray(xray(seed=s)) for s in range(3)]
    frames[0].save(tiff_buf, format="TIFF", save_all=True, append_images=frames[1:])
    nan = img.astype(np.float32).T.copy()
    nan[10, 10] = np.nan
    u = (415, 422)  # unsupported type: 422 from the reader, 415 from the datastore
    cases = [
        ("empty png", "empty.png", b"", (422,)),
        ("empty jpg", "empty.jpg", b"", (422,)),
        ("empty dicom", "empty.dcm", b"", (422,)),
        ("empty nifti", "empty.nii.gz", b"", (422,)),
        ("empty nrrd", "empty.nrrd", b"", (422,)),
        ("truncated png (header)", "t.png", png[:40], (422,)),
        ("truncated png (half)", "t.png", png[: len(png) // 2], (422,)),
        ("truncated jpg (half)", "t.jpg", jpg[: len(jpg) // 2], (422,)),
        ("truncated dicom", "t.dcm", dcm[:300], (422,)),
        ("truncated dicom pixel data", "t.dcm", dcm[: len(dcm) - 1000], (422,)),
        ("truncated nifti.gz", "t.nii.gz", nii[:200], (422,)),
        ("truncated nrrd (no data)", "t.nrrd", giant_nrrd(64, 64)[:60], (422,)),
        ("random bytes .png", "r.png", noise, (422,)),
        ("random bytes .jpg", "r.jpg", noise, (422,)),
        ("random bytes .bmp", "r.bmp", noise, (422,)),
        ("random bytes .tif", "r.tif", noise, (422,)),
        ("random bytes .dcm", "r.dcm", noise, (422,)),
        ("random bytes .nii.gz", "r.nii.gz", noise, (422,)),
        ("random bytes .nrrd", "r.nrrd", noise, (422,)),
        ("png signature + garbage", "g.png", png[:8] + noise, (422,)),
        ("jpeg named .png", "j.png", jpg, (200, 422)),  # PIL reads by content: accepted is fine too
        ("text file", "notes.txt", b"hello world\n", u),
        ("pdf", "scan.pdf", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n", u),
        ("zip archive", "study.zip", b"PK\x03\x04" + noise[:200], u),
        ("gif", "x.gif", b"GIF89a" + noise[:100], u),
        ("html named .jpg", "x.jpg", b"<html><body>not an image</body></html>", (422,)),
        ("json named .png", "x.png", b'{"landmarks": []}', (422,)),
        ("python pickle .pt", "model.pt", b"\x80\x04\x95" + noise[:100], u),
        ("no extension", "xray", noise, u),
        ("1x1 png", "tiny.png", png_bytes(np.zeros((1, 1), np.uint8)), (422,)),
        ("7x7 png", "tiny.png", png_bytes(np.zeros((7, 7), np.uint8)), (422,)),
        ("nifti with NaN", "nan.nii.gz", _nifti(nan), (422,)),
        ("nifti zero spacing", "z.nii.gz", _nifti(img.T.copy(), zooms=(0.0, 0.0)), (200, 422)),  # nibabel: 1 mm
        ("3D nifti 64x64x20", "ct.nii.gz", _nifti(rng.integers(0, 255, (64, 64, 20), dtype=np.uint8)), (422,)),
        ("4D nifti", "fmri.nii.gz", _nifti(rng.integers(0, 255, (32, 32, 8, 3), dtype=np.uint8)), (422,)),
        ("2-slice nifti", "two.nii.gz", _nifti(rng.integers(0, 255, (64, 64, 2), dtype=np.uint8)), (422,)),
        ("3D nrrd", "vol.nrrd", _nrrd(rng.integers(0, 255, (32, 32, 16), dtype=np.uint8)), (422,)),
        ("multi-page tiff", "pages.tif", tiff_buf.getvalue(), (422,)),
        ("multi-frame dicom", "mf.dcm", _dicom(img[:64, :64], frames=4), (422,)),
        ("20000x20000 png", "big.png", giant_png(), (422,)),
        ("65535x65535 png header", "big.png", giant_png(65535, 65535, header_only=True), (422,)),
        ("20000x20000 jpeg header", "big.jpg", giant_jpeg(), (422,)),
        ("20000x20000 bmp header", "big.bmp", giant_bmp(), (422,)),
        ("20000x20000 nifti header", "big.nii.gz", giant_nifti(), (422,)),
        ("20000x20000 nrrd header", "big.nrrd", giant_nrrd(), (422,)),
        ("30000x4 png", "strip.png", png_bytes(np.zeros((4, 30000), np.uint8)), (422,)),
    ]
    return cases


def accepted_images() -> list[tuple[str, str, bytes]]:
    """Unusual but valid X-ray files the server must answer with 200 (converted to gray / scaled)."""
    img = xray()
    rgb = np.stack([img, img, img], -1)
    out = [
        ("RGB png", "rgb.png", png_bytes(rgb)),
        ("RGBA png", "rgba.png", png_bytes(np.dstack([rgb, np.full(img.shape, 255, np.uint8)]))),
        ("palette png", "p.png", png_bytes(rgb, mode="P")),
        ("1-bit png", "bw.png", png_bytes(img, mode="1")),
        ("16-bit png", "x16.png", png_bytes(img.astype(np.uint16) * 257)),
        ("12-bit values in 16-bit png", "x12.png", png_bytes(img.astype(np.uint16) * 16)),
        ("blank (all zero) png", "blank.png", png_bytes(np.zeros_like(img))),
    ]
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG")
    out.append(("RGB jpeg", "rgb.jpg", buf.getvalue()))
    buf = io.BytesIO()
    Image.fromarray(img.astype(np.uint16) * 257).save(buf, format="TIFF")
    out.append(("16-bit tiff", "x16.tif", buf.getvalue()))
    buf = io.BytesIO()
    Image.fromarray(rgb).convert("CMYK").save(buf, format="JPEG")
    out.append(("CMYK jpeg", "cmyk.jpg", buf.getvalue()))
    out.append(("16-bit dicom", "x.dcm", _dicom(img.astype(np.uint16) * 16)))
    out.append(("float nifti", "x.nii.gz", _nifti(img.T.astype(np.float32))))
    return out


# ---------------------------------------------------------------------------------------------------- bad labels
def bad_labels(names: list[str], shape_hw: tuple[int, int]) -> list[tuple[str, str, bytes, dict | None]]:
    """``(case name, label file name, bytes, params)`` of labels for an image of ``shape_hw`` that must get 422."""
    h, w = shape_hw
    k = len(names)
    pts = random_points(k, h, w)
    good = [{"name": n, "x": float(p[0]), "y": float(p[1])} for n, p in zip(names, pts)]

    def js(doc: Any) -> bytes:
        return json.dumps(doc).encode()

    def markups(cps: Any, system: str = "LPS") -> bytes:
        return js({"markups": [{"type": "Fiducial", "coordinateSystem": system, "controlPoints": cps}]})

    cp = [{"label": n, "position": [float(p[0]), float(p[1]), 0.0]} for n, p in zip(names, pts)]
    lm_bad_value = np.zeros((h, w), np.uint8)
    lm_bad_value[10:14, 10:14] = k + 5
    lm_one = np.zeros((h, w), np.uint8)
    lm_one[10:14, 10:14] = 1
    float_lm = np.zeros((w, h), np.float32)
    float_lm[10:14, 10:14] = 1.5
    neg_lm = np.zeros((w, h), np.int16)
    neg_lm[10:14, 10:14] = -3
    deep = b"[" * 100000 + b"]" * 100000
    cases: list[tuple[str, str, bytes, dict | None]] = [
        ("empty json", "l.json", b"", None),
        ("truncated json", "l.json", js({"landmarks": good})[:50], None),
        ("json null", "l.json", b"null", None),
        ("json array", "l.json", b"[1, 2]", None),
        ("json number", "l.json", b"42", None),
        ("json string", "l.json", b'"sella"', None),
        ("json object without landmarks", "l.json", b"{}", None),
        ("landmarks not a list", "l.json", js({"landmarks": 5}), None),
        ("landmarks list of numbers", "l.json", js({"landmarks": [1, 2]}), None),
        ("landmark without name", "l.json", js({"landmarks": [{"x": 1, "y": 2}]}), None),
        ("unknown landmark (extra)", "l.json", js({"landmarks": good + [{"name": "bregma", "x": 5, "y": 5}]}), None),
        ("only an unknown landmark", "l.json", js({"landmarks": [{"name": "bregma", "x": 5, "y": 5}]}), None),
        ("duplicated landmark", "l.json", js({"landmarks": good + [good[0]]}), None),
        ("non-numeric x", "l.json", js({"landmarks": [{**good[0], "x": "left"}]}), None),
        ("list as x", "l.json", js({"landmarks": [{**good[0], "x": [1, 2]}]}), None),
        ("all landmarks null", "l.json", js({"landmarks": [{"name": n, "x": None, "y": None} for n in names]}), None),
        ("empty landmark list", "l.json", js({"landmarks": []}), None),
        (
            "NaN coordinates only",
            "l.json",
            b'{"landmarks": [{"name": "%s", "x": NaN, "y": 1}]}' % names[0].encode(),
            None,
        ),
        ("x = 1e9 (outside image)", "l.json", js({"landmarks": [{**good[0], "x": 1e9}]}), None),
        ("negative x (outside image)", "l.json", js({"landmarks": [{**good[0], "x": -50.0}]}), None),
        ("y beyond the image", "l.json", js({"landmarks": [{**good[0], "y": h + 10.0}]}), None),
        ("deeply nested json", "l.json", deep, None),
        ("markups not a list", "l.mrk.json", js({"markups": "points"}), None),
        ("markups empty list", "l.mrk.json", js({"markups": []}), None),
        ("markups entry not an object", "l.mrk.json", js({"markups": [5]}), None),
        ("markups controlPoints not a list", "l.mrk.json", markups("all"), None),
        ("markups control point not an object", "l.mrk.json", markups([1, 2]), None),
        ("markups position missing", "l.mrk.json", markups([{"label": names[0]}]), None),
        ("markups position strings", "l.mrk.json", markups([{"label": names[0], "position": ["a", "b", "c"]}]), None),
        ("markups position 1 value", "l.mrk.json", markups([{"label": names[0], "position": [1.0]}]), None),
        ("markups unknown label", "l.mrk.json", markups([{"label": "bregma", "position": [1.0, 1.0, 0.0]}]), None),
        ("markups duplicated label", "l.mrk.json", markups(cp + cp[:1]), None),
        ("markups bad coordinate system", "l.mrk.json", markups(cp, system="XYZ"), None),
        ("markups RAS points outside image", "l.mrk.json", markups(cp, system="RAS"), None),
        ("markups no defined points", "l.mrk.json", markups([{**c, "positionStatus": "undefined"} for c in cp]), None),
        ("labelme shapes not a list", "l.json", js({"shapes": 5}), None),
        ("labelme unknown label", "l.json", js({"shapes": [{"label": "bregma", "points": [[1, 2]]}]}), None),
        ("labelme point without xy", "l.json", js({"shapes": [{"label": names[0], "points": []}]}), None),
        ("label map: unknown value", "l.png", png_bytes(lm_bad_value), None),
        ("label map: wrong size", "l.png", png_bytes(np.zeros((h // 2, w // 2), np.uint8)), None),
        ("label map: transposed", "l.png", png_bytes(lm_one.T.copy()), None),
        ("label map: empty", "l.png", png_bytes(np.zeros((h, w), np.uint8)), None),
        ("label map: float values", "l.nii.gz", _nifti(float_lm), None),
        ("label map: negative values", "l.nii.gz", _nifti(neg_lm), None),
        ("label map: corrupt png", "l.png", b"\x89PNG\r\n\x1a\n" + bytes(300), None),
        ("label map: 3D nifti", "l.nii.gz", _nifti(np.zeros((w, h, 5), np.uint8) + 1), None),
        ("label map: 20000x20000 png", "l.png", giant_png(), None),
        ("label_info unknown name", "l.png", png_bytes(lm_one), {"label_info": [{"name": "bregma", "idx": 1}]}),
        ("label_info not a list", "l.png", png_bytes(lm_one), {"label_info": "sella=1"}),
        ("label_info entry not an object", "l.png", png_bytes(lm_one), {"label_info": [1, 2]}),
        ("label_info idx not a number", "l.png", png_bytes(lm_one), {"label_info": [{"name": names[0], "idx": "x"}]}),
    ]
    return cases + untrustworthy_labels(names, shape_hw)


def untrustworthy_labels(names: list[str], shape_hw: tuple[int, int]) -> list[tuple[str, str, bytes, dict | None]]:
    """Labels that parse but would store a wrong or made-up point (issue 14): each must get a 422 whose detail names
    the first landmark (``names[0]``). Same tuple layout as :func:`bad_labels`."""
    h, w = shape_hw
    pts = random_points(len(names), h, w)
    good = [{"name": n, "x": float(p[0]), "y": float(p[1])} for n, p in zip(names, pts)]
    cp = [{"label": n, "position": [float(p[0]), float(p[1]), 0.0]} for n, p in zip(names, pts)]
    shapes = [{"label": n, "points": [[float(p[0]), float(p[1])]], "shape_type": "point"} for n, p in zip(names, pts)]

    def ours(first: str) -> bytes:  # our JSON with the first landmark's entry written verbatim
        rest = json.dumps(good[1:])[1:-1]
        return f'{{"landmarks": [{first}, {rest}]}}'.encode()

    def markups(first_position: str, extra: list | None = None) -> bytes:
        rest = json.dumps(cp[1:] + (extra or []))[1:-1]
        first = f'{{"label": "{names[0]}", "position": {first_position}}}'
        return f'{{"markups": [{{"type": "Fiducial", "coordinateSystem": "LPS", "controlPoints": [{first}, {rest}]}}]}}'.encode()

    def labelme(first_points: str) -> bytes:
        rest = json.dumps(shapes[1:])[1:-1]
        return f'{{"shapes": [{{"label": "{names[0]}", "points": {first_points}, "shape_type": "point"}}, {rest}]}}'.encode()

    n0, x0, y0 = names[0], good[0]["x"], good[0]["y"]
    null0 = json.dumps({"name": n0, "x": None, "y": None})
    two_blobs = np.zeros((h, w), np.uint8)
    for k in range(1, len(names)):  # every other landmark one clean disk
        yy, xx = np.ogrid[:h, :w]
        two_blobs[(xx - pts[k, 0]) ** 2 + (yy - pts[k, 1]) ** 2 <= 4] = k + 1
    two_blobs[10:14, 10:14] = 1
    two_blobs[h - 14 : h - 10, w - 14 : w - 10] = 1
    lm_two = np.zeros((h, w), np.uint8)
    lm_two[10:14, 10:14] = 1
    lm_two[30:34, 30:34] = 2
    lm_one = np.zeros((h, w), np.uint8)
    lm_one[10:14, 10:14] = 1
    both = [{"name": n0, "idx": 1}, {"name": names[1], "idx": 1}]
    return [
        ("x NaN", "l.json", ours(f'{{"name": "{n0}", "x": NaN, "y": {y0}}}'), None),
        ("y Infinity", "l.json", ours(f'{{"name": "{n0}", "x": {x0}, "y": Infinity}}'), None),
        ("x -Infinity", "l.json", ours(f'{{"name": "{n0}", "x": -Infinity, "y": {y0}}}'), None),
        ("x 1e999 (overflows to inf)", "l.json", ours(f'{{"name": "{n0}", "x": 1e999, "y": {y0}}}'), None),
        ("x true", "l.json", ours(f'{{"name": "{n0}", "x": true, "y": {y0}}}'), None),
        ("y false", "l.json", ours(f'{{"name": "{n0}", "x": {x0}, "y": false}}'), None),
        ("x as a string", "l.json", ours(f'{{"name": "{n0}", "x": "{x0}", "y": {y0}}}'), None),
        ("x object", "l.json", ours(f'{{"name": "{n0}", "x": {{}}, "y": {y0}}}'), None),
        ("x without y", "l.json", ours(f'{{"name": "{n0}", "x": {x0}}}'), None),
        ("y given, x null", "l.json", ours(f'{{"name": "{n0}", "x": null, "y": {y0}}}'), None),
        ("duplicate, first copy null", "l.json", ours(f"{null0}, {json.dumps(good[0])}"), None),
        ("duplicate, second copy null", "l.json", ours(f"{json.dumps(good[0])}, {null0}"), None),
        ("duplicate, both null", "l.json", ours(f"{null0}, {null0}"), None),
        ("duplicate, name only", "l.json", ours(f'{json.dumps(good[0])}, {{"name": "{n0}"}}'), None),
        ("markups position NaN", "l.mrk.json", markups(f"[NaN, {y0}, 0.0]"), None),
        ("markups position Infinity", "l.mrk.json", markups(f"[{x0}, Infinity, 0.0]"), None),
        ("markups position true", "l.mrk.json", markups(f"[true, {y0}, 0.0]"), None),
        ("markups position string", "l.mrk.json", markups(f'["{x0}", {y0}, 0.0]'), None),
        (
            "markups duplicate, one copy undefined",
            "l.mrk.json",
            markups(f"[{x0}, {y0}, 0.0]", [{"label": n0, "position": [0, 0, 0], "positionStatus": "undefined"}]),
            None,
        ),  # fmt: skip
        ("labelme NaN", "l.json", labelme(f"[[NaN, {y0}]]"), None),
        ("labelme true", "l.json", labelme(f"[[true, {y0}]]"), None),
        ("labelme two points", "l.json", labelme(f"[[{x0}, {y0}], [{x0}, {y0}]]"), None),
        ("labelme duplicate", "l.json", labelme(f"[[{x0}, {y0}]]")[:-2] + b", " + json.dumps(shapes[0]).encode() + b"]}", None),
        ("label map: landmark of two regions", "l.png", png_bytes(two_blobs), None),
        ("label_info names a landmark twice", "l.png", png_bytes(lm_two), {"label_info": [{"name": n0, "idx": 1}, {"name": n0, "idx": 2}]}),
        ("label_info gives one value to two landmarks", "l.png", png_bytes(lm_one), {"label_info": both}),
        ("label_info idx true", "l.png", png_bytes(lm_one), {"label_info": [{"name": n0, "idx": True}]}),
        ("label_info idx 1.5", "l.png", png_bytes(lm_one), {"label_info": [{"name": n0, "idx": 1.5}]}),
    ]  # fmt: skip


TRAVERSAL_IDS = [
    "../../../../etc/passwd",
    "..%2F..%2Fetc%2Fpasswd",
    "/etc/passwd",
    "..\\..\\windows\\win.ini",
    "s1/../../escape",
    "..",
    ".",
    "./s1",
    "s1\x00.png",
    " s1",
    ".datastore_v2",
    "labels/final/s1",
    "~/.bashrc",
    "file:///etc/passwd",
]


def long_ids() -> list[str]:
    """Ids that are too long to be a datastore file name with an extension (more than 251 bytes, UTF-8)."""
    return ["i" * 252, "i" * 255, "é" * 126, "i" * 256, "i" * 1000]


def traversal_ids(studies: Path, outside_image: Path) -> list[str]:
    """Path-traversal ids plus absolute paths of a studies image, a file outside the studies, and the server log
    (a file in the server's working folder, named relatively)."""
    return TRAVERSAL_IDS + [
        str(studies / "s1.png"),
        str(outside_image),
        str(studies / "datastore_v2.json"),
        "server-1.log",
    ]


def catalogue(
    studies: Path,
    outside_image: Path,
    names: list[str],
    max_upload_bytes: int,
    full: bool = True,
) -> list[Case]:
    """The malformed-request suite against a server whose studies hold ``s1``..``s3`` (387x480 PNG) and whose
    ``s1`` has a final label. ``full=False``: a bounded subset of every category (for the normal test run)."""
    h, w = 480, 387
    cases: list[Case] = []
    imgs = bad_images()
    labels = bad_labels(names, (h, w))
    step = 1 if full else 3
    valid_png = png_bytes(xray(seed=5))
    valid_label = label_json(names, random_points(len(names), h, w, seed=3))

    # --- images: /infer upload, datastore upload, as label map
    for name, fname, data, expect in imgs[::step]:
        cases.append(Case(f"infer upload: {name}", "bad image", "POST", f"/infer/{MODEL}",
                          query={"output": "json"}, files={"file": (fname, data)}, expect=expect))  # fmt: skip
    for name, fname, data, expect in imgs[:: step * (1 if full else 2)]:
        if 200 in expect:
            continue  # would add an image
        exp = tuple(sorted(set(expect) | {415}))
        cases.append(Case(f"add image: {name}", "bad image", "PUT", "/datastore/image",
                          query={"image": "new1"}, files={"file": (fname, data)}, expect=exp))  # fmt: skip
    if full:
        for name, fname, data, _ in imgs:
            cases.append(Case(f"label map upload: {name}", "bad image", "PUT", "/datastore/label",
                              query={"image": "s2", "tag": "final"}, files={"label": (fname, data)},
                              expect=(422,)))  # fmt: skip
    # --- labels
    for name, fname, data, params in labels[::step]:
        form = {"params": json.dumps(params)} if params else None
        cases.append(Case(f"label: {name}", "bad label", "PUT", "/datastore/label",
                          query={"image": "s2", "tag": "final"}, files={"label": (fname, data)}, data=form,
                          expect=(422,)))  # fmt: skip
    for p in ["{bad json", "[1, 2]", '"text"', "42"]:
        cases.append(Case(f"label params {p!r}", "bad params", "PUT", "/datastore/label",
                          query={"image": "s2", "tag": "final"}, files={"label": ("l.json", valid_label)},
                          data={"params": p}, expect=(422,)))  # fmt: skip
    cases.append(Case("label for unknown image", "bad label", "PUT", "/datastore/label",
                      query={"image": "nope", "tag": "final"}, files={"label": ("l.json", valid_label)},
                      expect=(404,)))  # fmt: skip
    cases.append(Case("label without image id", "bad params", "PUT", "/datastore/label",
                      files={"label": ("l.json", valid_label)}, expect=(422,)))  # fmt: skip
    cases.append(Case("label without file", "bad params", "PUT", "/datastore/label",
                      query={"image": "s2", "tag": "final"}, data={"params": "{}"}, expect=(422,)))  # fmt: skip

    # --- path traversal on every endpoint taking an image / label id or tag
    ids = traversal_ids(studies, outside_image)
    ids = ids if full else ids[::3] + ids[-4:]
    for t in ids:
        q = {"image": t}
        cases += [
            Case(f"GET image {t!r}", "path traversal", "GET", "/datastore/image", query=q),
            Case(f"HEAD image {t!r}", "path traversal", "HEAD", "/datastore/image", query=q),
            Case(f"GET image info {t!r}", "path traversal", "GET", "/datastore/image/info", query=q),
            Case(
                f"PUT image info {t!r}", "path traversal", "PUT", "/datastore/image/info", query=q, data={"info": "{}"}
            ),  # fmt: skip
            Case(f"DELETE image {t!r}", "path traversal", "DELETE", "/datastore/image", query={"id": t}),
            Case(
                f"save label for {t!r}",
                "path traversal",
                "PUT",
                "/datastore/label",
                query={**q, "tag": "final"},
                files={"label": ("l.json", valid_label)},
            ),  # fmt: skip
            Case(f"GET label {t!r}", "path traversal", "GET", "/datastore/label", query={"label": t, "tag": "final"}),
            Case(
                f"HEAD label {t!r}", "path traversal", "HEAD", "/datastore/label", query={"image": t, "tag": "final"}
            ),  # fmt: skip
            Case(
                f"GET label info {t!r}",
                "path traversal",
                "GET",
                "/datastore/label/info",
                query={"label": t, "tag": "final"},
            ),  # fmt: skip
            Case(
                f"PUT label info {t!r}",
                "path traversal",
                "PUT",
                "/datastore/label/info",
                query={"label": t, "tag": "final"},
                data={"info": "{}"},
            ),  # fmt: skip
            Case(
                f"DELETE label {t!r}", "path traversal", "DELETE", "/datastore/label", query={"id": t, "tag": "final"}
            ),
            Case(f"infer ?image={t!r}", "path traversal", "POST", f"/infer/{MODEL}", query={**q, "output": "json"}),
            Case(
                f"infer params image {t!r}",
                "path traversal",
                "POST",
                f"/infer/{MODEL}",
                query={"image": "s1", "output": "json"},
                data={"params": json.dumps({"image": t})},
            ),  # fmt: skip
        ]
        if id_problem(t) is not None:  # a valid id (e.g. 'server-1.log') would simply add an image of that name
            cases.append(Case(f"add image as {t!r}", "path traversal", "PUT", "/datastore/image", query=q,
                              files={"file": ("x.png", valid_png)}, expect=(400,)))  # fmt: skip
    # --- ids too long to be a file name (with an extension) on every endpoint taking an id: 400, never a 500
    for t in long_ids() if full else long_ids()[:2]:
        q = {"image": t}
        cases += [
            Case(f"add image, {len(t.encode())}-byte id", "long id", "PUT", "/datastore/image", query=q,
                 files={"file": ("x.png", valid_png)}, expect=(400,)),
            Case(f"GET image, {len(t.encode())}-byte id", "long id", "GET", "/datastore/image", query=q, expect=(400,)),
            Case(f"HEAD image, {len(t.encode())}-byte id", "long id", "HEAD", "/datastore/image", query=q,
                 expect=(400,)),
            Case(f"GET image info, {len(t.encode())}-byte id", "long id", "GET", "/datastore/image/info", query=q,
                 expect=(400,)),
            Case(f"PUT image info, {len(t.encode())}-byte id", "long id", "PUT", "/datastore/image/info", query=q,
                 data={"info": "{}"}, expect=(400,)),
            Case(f"DELETE image, {len(t.encode())}-byte id", "long id", "DELETE", "/datastore/image",
                 query={"id": t}, expect=(400,)),
            Case(f"save label, {len(t.encode())}-byte id", "long id", "PUT", "/datastore/label",
                 query={**q, "tag": "final"}, files={"label": ("l.json", valid_label)}, expect=(400,)),
            Case(f"GET label, {len(t.encode())}-byte id", "long id", "GET", "/datastore/label",
                 query={"label": t, "tag": "final"}, expect=(400,)),
            Case(f"GET label info, {len(t.encode())}-byte id", "long id", "GET", "/datastore/label/info",
                 query={"label": t, "tag": "final"}, expect=(400,)),
            Case(f"DELETE label, {len(t.encode())}-byte id", "long id", "DELETE", "/datastore/label",
                 query={"id": t, "tag": "final"}, expect=(400,)),
            Case(f"infer, {len(t.encode())}-byte id", "long id", "POST", f"/infer/{MODEL}",
                 query={**q, "output": "json"}, expect=(400,)),
        ]  # fmt: skip
    cases += [
        Case("add image named by a 300-byte file name", "long id", "PUT", "/datastore/image",
             files={"file": ("n" * 296 + ".png", valid_png)}, expect=(400,)),
        Case("add image, file name with 130 suffixes", "long id", "PUT", "/datastore/image",
             files={"file": ("a" + ".b" * 130 + ".png", valid_png)}, expect=(400, 415)),
        Case("infer upload, file name with 130 suffixes", "long id", "POST", f"/infer/{MODEL}",
             query={"output": "json"}, files={"file": ("a" + ".b" * 130 + ".png", valid_png)}, expect=(400,)),
        Case("save label, file name with 130 suffixes", "long id", "PUT", "/datastore/label",
             query={"image": "s2", "tag": "final"}, files={"label": ("l" + ".b" * 130 + ".json", valid_label)},
             expect=(400,)),
    ]  # fmt: skip
    tags = ["../../escape", "../labels", "final/../../x", "/tmp/anatomark-escape", "fin\x00al", ".hidden", "x" * 80]
    for t in tags if full else tags[::2]:
        cases += [
            Case(
                f"save label tag {t!r}",
                "path traversal",
                "PUT",
                "/datastore/label",
                query={"image": "s2", "tag": t},
                files={"label": ("l.json", valid_label)},
                expect=(400,),
            ),  # fmt: skip
            Case(
                f"GET label tag {t!r}",
                "path traversal",
                "GET",
                "/datastore/label",
                query={"label": "s1", "tag": t},
                expect=(400,),
            ),  # fmt: skip
            Case(
                f"infer label_tag {t!r}",
                "path traversal",
                "POST",
                f"/infer/{MODEL}",
                query={"image": "s2", "output": "json"},
                data={"params": json.dumps({"save_label": True, "label_tag": t})},
                expect=(400,),
            ),  # fmt: skip
        ]
    raw_paths = [
        "/ohif/../../../../etc/passwd",
        "/ohif/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
        "/static/../../../../etc/passwd",
        "/static/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
        "/model/..%2F..%2F..%2Fetc%2Fpasswd",
        f"/infer/..%2F..%2F{MODEL}",
        "/datastore/label/..%2F..%2F..%2Fetc%2Fpasswd",
    ]
    for p in raw_paths:
        cases.append(Case(f"raw path {p}", "path traversal", "GET", p, raw=True, expect=(400, 404, 405)))

    # --- oversize uploads
    big = b"\0" * (max_upload_bytes + (1 << 20))
    part = b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n\r\n'
    multipart_big = part + big + b"\r\n--xyz--\r\n"
    cases += [
        Case(
            "oversize infer upload",
            "oversize",
            "POST",
            f"/infer/{MODEL}",
            files={"file": ("big.png", big)},
            expect=(413,),
        ),  # fmt: skip
        Case(
            "oversize label upload",
            "oversize",
            "PUT",
            "/datastore/label",
            query={"image": "s2", "tag": "final"},
            files={"label": ("big.png", big)},
            expect=(413,),
        ),  # fmt: skip
        Case(
            "oversize image upload",
            "oversize",
            "PUT",
            "/datastore/image",
            query={"image": "new2"},
            files={"file": ("big.png", big)},
            expect=(413,),
        ),  # fmt: skip
        Case(
            "oversize chunked upload (no Content-Length)",
            "oversize",
            "POST",
            f"/infer/{MODEL}",
            body=multipart_big,
            headers={"Content-Type": "multipart/form-data; boundary=xyz"},
            chunked=True,
            expect=(413,),
        ),  # fmt: skip
        Case(
            "oversize training options",
            "oversize",
            "POST",
            f"/train/{MODEL}",
            body=b" " * (2 << 20),
            headers={"Content-Type": "application/json"},
            expect=(413,),
        ),  # fmt: skip
    ]

    # --- unknown models, methods and bad parameters
    ok_img = {"image": "s1", "output": "json"}
    bad_infer_params: list[tuple[str, Any]] = [
        ("result_format jpeg", {"result_format": "jpeg"}),
        ("result_format number", {"result_format": 5}),
        ("label_radius_mm text", {"label_radius_mm": "big"}),
        ("label_radius_mm negative", {"label_radius_mm": -1}),
        ("label_radius_mm 1e9", {"label_radius_mm": 1e9}),
        ("label_radius_mm true", {"label_radius_mm": True}),
        ("spacing text", {"spacing": "0.1mm"}),
        ("spacing zero", {"spacing": [0, 0]}),
        ("spacing three values", {"spacing": [0.1, 0.1, 0.1]}),
        ("spacing negative", {"spacing": -0.1}),
        ("timeout text", {"timeout": "soon"}),
        ("timeout negative", {"timeout": -5}),
    ]
    for name, p in bad_infer_params:
        cases.append(Case(f"infer {name}", "bad params", "POST", f"/infer/{MODEL}", query=ok_img,
                          data={"params": json.dumps(p)}, expect=(422,)))  # fmt: skip
    for p in ["{not json", "[1, 2]", "null"]:
        cases.append(Case(f"infer params {p!r}", "bad params", "POST", f"/infer/{MODEL}", query=ok_img,
                          data={"params": p}, expect=(422,) if p != "null" else (200, 422)))  # fmt: skip
    train_bad = [
        {"max_epochs": -1}, {"max_epochs": "ten"}, {"max_epochs": 1e9}, {"max_epochs": 1.5}, {"val_fraction": 2},
        {"lr": 0}, {"lr": "fast"}, {"batch_size": 0}, {"max_epochs": True}, [1, 2],
    ]  # fmt: skip
    for p in train_bad:
        cases.append(Case(f"train {json.dumps(p)}", "bad params", "POST", f"/train/{MODEL}",
                          body=json.dumps(p).encode(), headers={"Content-Type": "application/json"},
                          expect=(422,)))  # fmt: skip
    cases += [
        Case(
            "train body not JSON",
            "bad params",
            "POST",
            f"/train/{MODEL}",
            body=b"{epochs: 3",
            headers={"Content-Type": "application/json"},
            expect=(422,),
        ),  # fmt: skip
        Case("infer unknown model", "unknown model", "POST", "/infer/no_such_model", query=ok_img, expect=(404,)),
        Case(
            "infer unknown model + upload",
            "unknown model",
            "POST",
            "/infer/no_such_model",
            files={"file": ("x.png", valid_png)},
            expect=(404,),
        ),  # fmt: skip
        Case("train unknown model", "unknown model", "POST", "/train/no_such_model", expect=(404,)),
        Case("batch infer unknown model", "unknown model", "POST", "/batch/infer/no_such_model", expect=(404,)),
        Case("scoring unknown method", "unknown model", "POST", "/scoring/no_such_method", expect=(404,)),
        Case("strategy unknown", "unknown model", "POST", "/activelearning/no_such_strategy", expect=(404,)),
        Case("model download unknown", "unknown model", "GET", "/model/no_such_model", expect=(404,)),
        Case("model info unknown", "unknown model", "GET", "/model/info/no_such_model", expect=(404,)),
        Case(
            "model upload (weights replacement)",
            "bad params",
            "PUT",
            f"/model/{MODEL}",
            files={"file": ("w.pt", b"not a model")},
            expect=(403,),
        ),  # fmt: skip
        Case("model delete", "bad params", "DELETE", f"/model/{MODEL}", expect=(403,)),
        Case(
            "session archive upload (uncompress=true)",
            "bad params",
            "PUT",
            "/session/",
            query={"uncompress": "true"},
            files={"files": ("a.tar", b"\0" * 1024)},
            expect=(403,),
        ),  # fmt: skip
        Case("dicomweb proxy on a local datastore", "bad params", "GET", "/proxy/dicom/qido/studies", expect=(403,)),
        Case("reload app", "bad params", "POST", "/reload", expect=(403,)),
        Case(
            "infer output=dicom_seg",
            "bad params",
            "POST",
            f"/infer/{MODEL}",
            query={"image": "s1", "output": "dicom_seg"},
            expect=(400,),
        ),  # fmt: skip
        Case(
            "infer output=bogus",
            "bad params",
            "POST",
            f"/infer/{MODEL}",
            query={"image": "s1", "output": "x"},
            expect=(422,),
        ),  # fmt: skip
        Case("infer no image, no file", "bad params", "POST", f"/infer/{MODEL}", expect=(400,)),
        Case(
            "infer file in wrong field",
            "bad params",
            "POST",
            f"/infer/{MODEL}",
            files={"image": ("x.png", valid_png)},
            expect=(400,),
        ),  # fmt: skip
        Case(
            "infer JSON body instead of form",
            "bad params",
            "POST",
            f"/infer/{MODEL}",
            body=b'{"image": "s1"}',
            headers={"Content-Type": "application/json"},
            expect=(400, 422),
        ),  # fmt: skip
        Case(
            "infer broken multipart",
            "bad params",
            "POST",
            f"/infer/{MODEL}",
            body=b"--xyz\r\ngarbage",
            headers={"Content-Type": "multipart/form-data; boundary=xyz"},
            expect=(400, 422),
        ),  # fmt: skip
        Case(
            "infer unknown image id", "bad params", "POST", f"/infer/{MODEL}", query={"image": "nope"}, expect=(404,)
        ),  # fmt: skip
        Case(
            "infer unknown session id",
            "bad params",
            "POST",
            f"/infer/{MODEL}",
            query={"session_id": "abc"},
            expect=(400, 404),
        ),  # fmt: skip
        Case(
            "infer session id '../x'",
            "path traversal",
            "POST",
            f"/infer/{MODEL}",
            query={"session_id": "../x"},
            expect=(400,),
        ),  # fmt: skip
        Case("delete unknown session", "bad params", "DELETE", "/session/abc", expect=(404,)),
        Case(
            "session path traversal",
            "path traversal",
            "DELETE",
            "/session/..%2F..%2Fstudies",
            raw=True,
            expect=(400, 404),
        ),  # fmt: skip
        Case(
            "infer run_sync not bool",
            "bad params",
            "POST",
            f"/train/{MODEL}",
            query={"run_sync": "maybe"},
            expect=(422,),
        ),  # fmt: skip
        Case(
            "image info not JSON",
            "bad params",
            "PUT",
            "/datastore/image/info",
            query={"image": "s1"},
            data={"info": "{oops"},
            expect=(422,),
        ),  # fmt: skip
        Case(
            "image info JSON array",
            "bad params",
            "PUT",
            "/datastore/image/info",
            query={"image": "s1"},
            data={"info": "[1]"},
            expect=(422,),
        ),  # fmt: skip
        Case(
            "label info overwrites landmarks",
            "bad params",
            "PUT",
            "/datastore/label/info",
            query={"label": "s1", "tag": "final"},
            data={"info": json.dumps({"landmarks": "oops"})},
            expect=(422,),
        ),  # fmt: skip
        Case(
            "label info unknown label",
            "bad params",
            "PUT",
            "/datastore/label/info",
            query={"label": "s3", "tag": "final"},
            data={"info": "{}"},
            expect=(404,),
        ),  # fmt: skip
        Case(
            "datastore output bogus", "bad params", "GET", "/datastore/", query={"output": "everything"}, expect=(422,)
        ),  # fmt: skip
        Case("logs lines not a number", "bad params", "GET", "/logs/", query={"lines": "many"}, expect=(422,)),
        Case(
            "add existing image id",
            "bad params",
            "PUT",
            "/datastore/image",
            query={"image": "s1"},
            files={"file": ("s1.png", valid_png)},
            expect=(409,),
        ),  # fmt: skip
        Case(
            "POST on PUT-only label endpoint",
            "bad params",
            "POST",
            "/datastore/label",
            query={"image": "s1"},
            expect=(405,),
        ),  # fmt: skip
        Case("GET on infer", "bad params", "GET", f"/infer/{MODEL}", expect=(405,)),
        Case(
            "malformed Content-Length",
            "bad params",
            "POST",
            f"/infer/{MODEL}",
            body=b"x",
            raw=True,
            headers={"Content-Length": "abc"},
            expect=(400,),
        ),  # fmt: skip
    ]
    return cases


# ---------------------------------------------------------------------------------------------------- auth
class FakeRealm:
    """A Keycloak-like realm on 127.0.0.1: ``GET /realms/anatomark`` -> ``{"public_key": ...}`` (what MONAI Label
    verifies tokens with), ``/.well-known/openid-configuration`` and a password-grant token endpoint (what its
    ``POST /auth/token`` login forwards to; user ``annotator`` / password ``secret`` gets the annotator role)."""

    USER, PASSWORD = "annotator", "secret"

    def __init__(self) -> None:
        import base64

        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        der = self.key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        public_key = base64.b64encode(der).decode()
        self.requests = 0
        realm = self

        class Handler(BaseHTTPRequestHandler):
            def _json(self, code: int, doc: dict) -> None:
                body = json.dumps(doc).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802
                realm.requests += 1
                if self.path.endswith("/.well-known/openid-configuration"):
                    self._json(200, {"token_endpoint": f"{realm.uri}/protocol/openid-connect/token"})
                else:
                    self._json(200, {"realm": "anatomark", "public_key": public_key})

            def do_POST(self) -> None:  # noqa: N802
                realm.requests += 1
                n = int(self.headers.get("Content-Length", 0))
                form = dict(urllib.parse.parse_qsl(self.rfile.read(n).decode()))
                if form.get("username") == realm.USER and form.get("password") == realm.PASSWORD:
                    tok = realm.token(["monailabel-annotator", "monailabel-user"])
                    self._json(200, {"access_token": tok, "token_type": "bearer"})
                else:
                    self._json(401, {"error": "invalid_grant"})

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.uri = f"http://127.0.0.1:{self.httpd.server_port}/realms/anatomark"

    def token(self, roles: list[str], exp_in: float = 300, key: Any = None, alg: str = "RS256") -> str:
        import jwt

        payload = {
            "preferred_username": "tester",
            "email": "t@example.org",
            "name": "Test User",
            "exp": int(time.time() + exp_in),
            "realm_access": {"roles": roles},
        }
        return jwt.encode(payload, key or self.key, algorithm=alg)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
