"""A MONAI Label local datastore that understands landmark labels.

Every label saved through ``PUT /datastore/label`` (and every ``save_label`` of an infer result) is read into
landmark points first: a Slicer label map with ``label_info=[{name, idx}]``, a Slicer markups JSON or our JSON.
A label that does not match the landmark set, or does not fit the image, is refused with HTTP 422 before anything
is written. Accepted labels are stored as a label map in the image's geometry (what viewers display) and the exact
points go into the label info (``landmarks``: ``[[x, y] | null] * K``, ``spacing_mm``), which training and scoring
read.

Hardening (issue 8): ids and tags are checked before they become file names (400), a new image is validated from
its header before it is copied in (422 / 409 for an existing id), label files and ``datastore_v2.json`` are written
atomically (temp file + fsync + rename: a ``kill -9`` leaves the old or the new file, never a torn one), and every
change of the JSON is a read-modify-write under the datastore's file lock, so the server and MONAI Label's
subprocesses (training, scoring) never overwrite each other's labels. A ``datastore_v2.json`` that cannot be parsed
at start-up is moved aside (``.corrupt-<time>``) and the datastore rebuilt from the files instead of refusing to start.

Symbolic links (issue 14). A studies folder made of links to images kept elsewhere (to avoid copying a dataset) is
supported, with one policy:

- an *image* that is a link is read and served (``GET``/``HEAD /datastore/image``, ``/infer``, training, the dataset
  archive) only when the link ends at a regular file that starts like an image of its extension's family (PNG, JPEG,
  BMP, TIFF, DICOM, NIfTI, NRRD signature); a link to anything else (``/etc/passwd``, a folder, a device, a dangling
  link) is treated as not an image: 403 with the reason from the request guard, never its bytes;
- *labels* are the server's own files: a label file reached through a link that leaves the studies folder is
  neither served nor read, a label is never written into a label folder that is (or lies under) a link leaving the
  studies folder (409), and saving over a label file that is a link replaces the link, not its target;
- deleting (``DELETE /datastore/image``, ``/datastore/label``) removes only the entry in the studies folder: a link
  is unlinked and its target never touched, and nothing is deleted inside a folder reached through a link that
  leaves the studies folder (409).

The model's original prediction (issue 16). 3D Slicer never sends ``save_label``, so every ``/infer`` of an image of
the datastore keeps the predicted points as the image's ``original`` label (:func:`keep_original_for_path`): a small
points JSON (``<labels>/original/<id>.json``, our ``{"landmarks": [...]}``) and the label info (``landmarks``,
``spacing_mm``, ``model``, ``model_version``, ``source: "infer"``), written by a background thread so ``/infer`` does
not wait for the datastore file. It is not replaced once the image has a ``final`` label: the original stays the
prediction the user corrected (``save_label: true`` still stores the label map, as MONAI Label does). Only images
in the studies folder itself (not links to files elsewhere, not uploads) are kept.

The stored ``label_info`` always describes the stored label map: value k is landmark k of the set (the client's
``label_info``, when its order differs, is kept as ``client_label_info``).
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import HTTPException
from filelock import FileLock
from monailabel.datastore.local import DataModel, ImageLabelModel, LocalDatastore, LocalDatastoreModel
from monailabel.interfaces.datastore import DefaultLabelTag

from anatomark.config import LandmarkSet
from anatomark.data.image_io import (
    DICOM_EXTENSIONS,
    NIFTI_EXTENSIONS,
    NRRD_EXTENSIONS,
    RASTER_EXTENSIONS,
    SUPPORTED_EXTENSIONS,
    image_extension,
    load_image,
)
from anatomark.data.points_json import points_document
from anatomark.errors import AnatomarkError
from anatomark.monailabel.labels import (
    draw_labelmap,
    label_radius_px,
    labelmap_extension,
    points_from_json,
    points_to_json,
    read_label_points,
    stored_label_info,
    write_labelmap_like,
)
from anatomark.monailabel.validation import file_name_problem, id_problem, tag_problem
from anatomark.paths import atomic_write

logger = logging.getLogger(__name__)

#: label-info keys written by this datastore
INFO_POINTS = "landmarks"
INFO_SPACING = "spacing_mm"
INFO_SET = "landmark_set"
#: label-info keys only the server writes (PUT /datastore/label/info may not change them)
RESERVED_LABEL_INFO = (INFO_POINTS, INFO_SPACING, INFO_SET, "n_landmarks", "name", "ts", "label_info")

#: the landmark datastores of this process: where an infer task keeps its prediction (:func:`keep_original_for_path`)
_DATASTORES: weakref.WeakSet[LandmarkDatastore] = weakref.WeakSet()
#: one writer thread for kept predictions: ``/infer`` never waits for the datastore file
_KEEPER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="anatomark-keep-original")


def keep_original_for_path(
    image_path: str, points: np.ndarray, spacing: tuple[float, float], model: str, model_version: str | None
) -> Future | None:
    """Keep an infer result's points as the ``original`` label of the datastore image at ``image_path``.

    Called by the infer task with the file it read; a path that is no image of a :class:`LandmarkDatastore` of this
    process (an upload, a session volume, a library call without a server) keeps nothing. The in-memory checks run
    here; the write runs on a background thread (:meth:`LandmarkDatastore.keep_original`).

    Returns:
        The pending write, or ``None`` when nothing is kept.
    """
    for ds in list(_DATASTORES):
        image_id = ds.image_id_of_path(image_path)
        if image_id is None:
            continue
        if ds.has_label(image_id, DefaultLabelTag.FINAL.value):
            return None  # the original stays the prediction the user corrected
        pts = np.array(points, dtype=np.float64, copy=True)
        return _KEEPER.submit(ds.keep_original, image_id, pts, spacing, model, model_version)
    return None


def atomic_copy(src: str | Path | None, dst: str | Path, data: bytes | None = None) -> None:
    """Write ``data`` (or the bytes of ``src``) to ``dst`` through a hidden ``.part`` file, fsync, rename, fsync dir.

    The ``.part`` suffix matches none of the datastore's file patterns, so the datastore's file watcher ignores it
    (:func:`anatomark.paths.atomic_write` with ``fsync``; its short temp name leaves room for long image ids).

    Args:
        src: the file to copy (``None`` when ``data`` is given).
        dst: where the file goes.
        data: the bytes to write instead of ``src``'s.
    """
    with atomic_write(dst, fsync=True, suffix=".part") as tmp, open(tmp, "wb") as out:
        if data is None:
            with open(src, "rb") as f:  # type: ignore[arg-type]
                while chunk := f.read(1 << 20):
                    out.write(chunk)
        else:
            out.write(data)


_RASTER_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM", b"II*\x00", b"MM\x00*")


def _nifti_header(head: bytes) -> bool:
    """NIfTI-1 (``sizeof_hdr`` 348, magic ``n+1``/``ni1``) or NIfTI-2 (540, ``n+2``/``ni2``), either byte order."""
    if len(head) >= 348 and head[:4] in (b"\x5c\x01\x00\x00", b"\x00\x00\x01\x5c"):
        return head[344:348] in (b"n+1\x00", b"ni1\x00")
    if len(head) >= 8 and head[:4] in (b"\x1c\x02\x00\x00", b"\x00\x00\x02\x1c"):
        return head[4:8] in (b"n+2\x00", b"ni2\x00")
    return False


def looks_like_image(path: str | Path, ext: str) -> bool:
    """Whether the regular file ``path`` starts with the signature of an image of the family of ``ext`` (the
    extension of the datastore's name for it): what the datastore requires before it follows a link.

    A cheap check of the first bytes (no decoding): it tells an X-ray from ``/etc/passwd`` or a key file, not a
    valid image from a corrupt one (reading the image says that).
    """
    try:
        if not os.path.isfile(path):  # follows links; folders, devices, FIFOs and dangling links are not files
            return False
        with open(path, "rb") as f:
            head = f.read(352)
        if ext in RASTER_EXTENSIONS:  # PIL reads by content: any raster signature is fine
            return head.startswith(_RASTER_MAGIC)
        if ext in DICOM_EXTENSIONS:
            return head[128:132] == b"DICM"
        if ext in NIFTI_EXTENSIONS:
            if head.startswith(b"\x1f\x8b"):
                with gzip.open(path, "rb") as g:
                    head = g.read(352)
            return _nifti_header(head)
        if ext in NRRD_EXTENSIONS:
            return head.startswith(b"NRRD000")
    except (OSError, EOFError, gzip.BadGzipFile):
        return False
    return False


def _bad_request(status: int, detail: str) -> HTTPException:
    return HTTPException(status_code=status, detail=detail)


def _check_id(image_id: Any, what: str = "image id") -> str:
    if not isinstance(image_id, str):
        raise _bad_request(400, f"Invalid {what}: expected a string")
    problem = id_problem(image_id, what)
    if problem:
        raise _bad_request(400, problem)
    return image_id


def _check_tag(tag: Any) -> str:
    if not isinstance(tag, str):
        raise _bad_request(400, "Invalid label tag: expected a string")
    problem = tag_problem(tag)
    if problem:
        raise _bad_request(400, problem)
    return tag


def _check_info(info: Any, what: str) -> dict[str, Any]:
    if info is None:
        return {}
    if not isinstance(info, dict):
        raise _bad_request(422, f"{what} must be a JSON object, got {type(info).__name__}")
    return info


class LandmarkDatastore(LocalDatastore):
    """:class:`LocalDatastore` whose labels are landmark sets (see the module docstring for the hardening).

    Args:
        datastore_path: studies folder.
        landmark_set: the set labels must match.
        on_label_saved: called with ``(image_id, tag)`` after a label was stored.
        label_radius_mm: radius of the disks of stored label maps.
        **kwargs: passed to :class:`LocalDatastore` (``extensions``, ``auto_reload``, ``read_only``).
    """

    def __init__(
        self,
        datastore_path: str,
        landmark_set: LandmarkSet,
        on_label_saved: Callable[[str, str], None] | None = None,
        label_radius_mm: float = 2.0,
        **kwargs: Any,
    ) -> None:
        self.landmark_set = landmark_set
        self.on_label_saved = on_label_saved
        self.label_radius_mm = label_radius_mm
        self._mutex = threading.RLock()  # threads of this process (requests, file watcher)
        self._config_key: tuple[int, int, int] | None = None
        self._link_checks: dict[str, tuple[tuple[int, int, int, int], bool]] = {}  # target -> (stat key, is image)
        super().__init__(datastore_path, **kwargs)
        self._remove_partial_files()
        _DATASTORES.add(self)

    def _remove_partial_files(self) -> None:
        """Drop ``.part`` files left by a writer that was killed mid-write (they never replaced a real file).

        Under the datastore's file lock, which every writer holds while its ``.part`` file exists, so a file being
        written by another process (the server, while a training subprocess starts) is never taken away.
        """
        folders = [Path(self._datastore.image_path()), Path(self._datastore.label_path(None))]
        folders += [p for p in folders[1].iterdir() if p.is_dir()] if folders[1].is_dir() else []
        folders = [f for f in folders if self._inside(f)]  # never delete anything through a link leaving the folder
        with self._mutex, FileLock(self._lock_file):
            for folder in folders:
                for part in folder.glob(".*.part"):
                    logger.warning(f"Removing a partial file left by an interrupted write: {part}")
                    part.unlink(missing_ok=True)

    # ------------------------------------------------------------------ the JSON file: atomic, read-modify-write
    def _file_key(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self._datastore_config_path)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _reload_unlocked(self) -> None:
        """Re-read ``datastore_v2.json`` if another writer changed it (caller holds the file lock)."""
        key = self._file_key()
        if key is None or key == self._config_key:
            return
        path = self._datastore_config_path
        try:
            with open(path) as fp:
                model = LocalDatastoreModel.model_validate_json(fp.read())
        except (OSError, ValueError) as e:
            bad = f"{path}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}"
            os.replace(path, bad)
            logger.error(f"{path} cannot be read ({e}); moved to {bad}, rebuilding the datastore from the files")
            self._config_key = None
            return
        model.base_path = self._datastore_path
        self._datastore = model
        self._config_key = key
        self._config_ts = os.stat(path).st_mtime

    def _init_from_datastore_file(self, throw_exception: bool = False) -> None:
        with self._mutex, FileLock(self._lock_file):
            self._reload_unlocked()

    def _update_datastore_file(self, lock: bool = True) -> None:
        def write() -> None:
            data = json.dumps(self._datastore.model_dump(exclude={"base_path"}), indent=2, default=str)
            atomic_copy(None, self._datastore_config_path, data.encode())
            self._config_key = self._file_key()
            self._config_ts = os.stat(self._datastore_config_path).st_mtime

        with self._mutex:
            if lock:
                with FileLock(self._lock_file):
                    write()
            else:
                write()

    def _reconcile_datastore(self) -> None:
        with self._mutex:
            super()._reconcile_datastore()

    # ------------------------------------------------------------------ links (policy: see the module docstring)
    def _inside(self, path: str | Path) -> bool:
        """Whether ``path``, links resolved, lies in the studies folder (itself resolved: it may be a link)."""
        root = os.path.realpath(self._datastore_path)
        real = os.path.realpath(path)
        return real == root or real.startswith(root.rstrip(os.sep) + os.sep)

    def _folder_problem(self, folder: str, what: str) -> str | None:
        """Why nothing may be written or deleted in ``folder`` (``None`` when it lies in the studies folder)."""
        if self._inside(folder):
            return None
        rel = os.path.relpath(folder, self._datastore_path)
        return (
            f"The {what} folder {rel!r} of the studies folder is a link to a folder outside it; the server never "
            "writes or deletes through such a link. Ask the administrator to make it a real folder inside the "
            "studies folder (move the files there)"
        )

    def _image_entry(self, image_id: str) -> str | None:
        """The image's path in the studies folder, links not resolved (``None`` for an unknown id)."""
        obj = self._datastore.objects.get(image_id)
        if obj is None:
            return None
        return os.path.normpath(os.path.join(self._datastore.image_path(), self._filename(image_id, obj.image.ext)))

    def image_access_problem(self, image_id: str) -> str | None:
        """Why the image ``image_id`` is not read or served (``None`` when it is, or when the id is unknown).

        Only an image that is a symbolic link can have a problem: its target must be a regular file with the
        signature of an image of the family of the link's extension (:func:`looks_like_image`; the answer is cached
        per target, size and modification time).
        """
        entry = self._image_entry(image_id)
        if entry is None or not os.path.islink(entry):
            return None
        real = os.path.realpath(entry)
        ext = image_extension(entry)
        try:
            st = os.stat(real)
            key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        except OSError:
            key = None
        cached = self._link_checks.get(real)
        if key is not None and cached is not None and cached[0] == key:
            ok = cached[1]
        else:
            ok = key is not None and looks_like_image(real, ext)
            if key is not None:
                self._link_checks[real] = (key, ok)
        if ok:
            return None
        return (
            f"Image {image_id!r} is a symbolic link in the studies folder that does not lead to a {ext} image file "
            "(a dangling link, or a link to another kind of file); the server reads and serves only images through "
            "links. Ask the administrator to fix or remove the link"
        )

    def get_image_uri(self, image_id: str) -> str:
        """The image's file (links resolved), or ``""`` for an unknown id or a link the policy does not follow."""
        if self.image_access_problem(image_id):
            return ""
        return super().get_image_uri(image_id)

    def _refresh_if_changed(self) -> None:
        """Re-read ``datastore_v2.json`` when another process (scoring, training) changed it: a cheap ``stat``
        unless it did."""
        if self._file_key() != self._config_key:
            self._init_from_datastore_file()

    def json(self) -> dict[str, Any]:
        """``GET /datastore/?output=all``, as the file holds it now (scores of the scoring subprocess included)."""
        self._refresh_if_changed()
        return super().json()

    def get_image_info(self, image_id: str) -> dict[str, Any]:
        """The image's info, as the file holds it now (scores written by the scoring subprocess included)."""
        self._refresh_if_changed()
        info = super().get_image_info(image_id)
        if info and self.image_access_problem(image_id):
            info["path"] = self._image_entry(image_id)  # never the target of a link that is not followed
        return info

    def get_unlabeled_images(self, label_tag: str | None = None, labels: list[str] | None = None) -> list[str]:
        """Images without a final label, without those the link policy refuses (active learning never proposes an
        image the server will not serve)."""
        return [i for i in super().get_unlabeled_images(label_tag, labels) if not self.image_access_problem(i)]

    def _label_entry(self, label_id: str, label_tag: str) -> str | None:
        label = self._datastore.label(label_id, label_tag)
        if label is None:
            return None
        return os.path.normpath(
            os.path.join(self._datastore.label_path(label_tag), self._filename(label_id, label.ext))
        )

    def label_access_problem(self, label_id: str, label_tag: str) -> str | None:
        """Why the label is not read or served (``None`` when it is, or when there is no such label)."""
        entry = self._label_entry(label_id, label_tag)
        if entry is None or self._inside(entry):
            return None
        return (
            f"The label {label_tag!r} of image {label_id!r} is reached through a symbolic link that leaves the studies "
            "folder; the server reads and serves only label files inside it. Save the label again (it is then "
            "written inside the studies folder) or ask the administrator to remove the link"
        )

    def get_label_uri(self, label_id: str, label_tag: str) -> str:
        """The label's file (links resolved), or ``""`` when there is none or it lies outside the studies folder."""
        if self.label_access_problem(label_id, label_tag):
            return ""
        return super().get_label_uri(label_id, label_tag)

    def datalist(self, full_path: bool = True) -> list[dict[str, Any]]:
        """MONAI Label's training list (also what the dataset archive holds): images with a ``final`` label, without
        those the link policy does not follow."""
        tag = DefaultLabelTag.FINAL.value
        items = [
            {"image": LocalDatastore.get_image_uri(self, i), "label": LocalDatastore.get_label_uri(self, i, tag)}
            for i in self._datastore.filter_by_tag(tag)
            if not self.image_access_problem(i) and not self.label_access_problem(i, tag)
        ]
        if not full_path:
            base = os.path.realpath(self._datastore_path).rstrip(os.sep) + os.sep
            items = [{k: v[len(base) :] if v.startswith(base) else v for k, v in d.items()} for d in items]
        return items

    def _unlink_entry(self, path: str) -> None:
        """Remove the entry ``path`` of the studies folder: a link itself (never its target) or a regular file."""
        if os.path.islink(path) or os.path.isfile(path):
            os.unlink(path)  # unlink() never follows the last component
        elif os.path.lexists(path):
            raise _bad_request(409, f"{os.path.relpath(path, self._datastore_path)!r} is not a file; nothing deleted")

    # ------------------------------------------------------------------ images
    def add_image(self, image_id: str, image_filename: str, image_info: dict[str, Any]) -> str:
        """Add an uploaded image after checking its id, type and header (refused images are never copied in)."""
        name_id, ext = self._to_id(os.path.basename(image_filename))
        image_id = _check_id(image_id or name_id)
        info = dict(_check_info(image_info, "params"))
        allowed = [e.replace("*", "") for e in self._extensions]
        if image_extension(image_filename) not in SUPPORTED_EXTENSIONS or ext not in allowed:
            raise _bad_request(
                415,
                f"Unsupported image type {ext or '(none)'!r}; upload one of "
                f"{', '.join(e for e in allowed if e in SUPPORTED_EXTENSIONS)}",
            )
        problem = file_name_problem(image_id, ext)
        if problem:
            raise _bad_request(400, problem)
        if self._image_file_exists(image_id):
            raise _bad_request(409, f"Image {image_id!r} already exists; delete it first or upload with another id")
        try:
            load_image(image_filename, default_spacing=self.landmark_set.default_spacing_mm)
        except AnatomarkError as e:
            detail = str(e).replace(os.path.basename(image_filename), "(uploaded file)")
            raise _bad_request(422, f"Image refused: {detail}") from e
        with self._mutex, FileLock(self._lock_file):
            self._reload_unlocked()
            if self._image_file_exists(image_id):
                raise _bad_request(409, f"Image {image_id!r} already exists; delete it first or use another id")
            name = self._filename(image_id, ext)
            atomic_copy(image_filename, os.path.join(self._datastore.image_path(), name))
            info.update({"ts": int(time.time()), "name": name})
            self._datastore.objects[image_id] = ImageLabelModel(image=DataModel(info=info, ext=ext))
            self._update_datastore_file(lock=False)
        logger.info(f"Added image {image_id} ({name})")
        return image_id

    def _image_file_exists(self, image_id: str) -> bool:
        obj = self._datastore.objects.get(image_id)
        if obj is None:
            return False
        return os.path.isfile(os.path.join(self._datastore.image_path(), self._filename(image_id, obj.image.ext)))

    def remove_image(self, image_id: str) -> None:
        """Remove an image and its labels from the studies folder: only the folder's entries (a link is unlinked,
        its target never touched), nothing through a label folder that leaves the studies folder (409)."""
        _check_id(image_id)
        with self._mutex, FileLock(self._lock_file):
            self._reload_unlocked()
            obj = self._datastore.objects.get(image_id)
            if obj is None:
                raise _bad_request(404, f"Image {image_id!r} is not in the datastore")
            labels = {tag: self._label_entry(image_id, tag) for tag in obj.labels}
            for tag in labels:
                problem = self._folder_problem(self._datastore.label_path(tag), "label")
                if problem:
                    raise _bad_request(409, f"Image {image_id!r} not deleted: {problem}")
            entry = self._image_entry(image_id)
            for path in [*labels.values(), entry]:
                if path:
                    self._unlink_entry(path)
            del self._datastore.objects[image_id]
            self._update_datastore_file(lock=False)
        logger.info(f"Removed image {image_id} and its {len(labels)} label(s)")

    def update_image_info(self, image_id: str, info: dict[str, Any]) -> None:
        _check_id(image_id)
        info = _check_info(info, "info")
        with self._mutex, FileLock(self._lock_file):
            self._reload_unlocked()
            obj = self._datastore.objects.get(image_id)
            if not obj:
                raise _bad_request(404, f"Image {image_id!r} is not in the datastore")
            obj.image.info.update(info)
            self._update_datastore_file(lock=False)

    # ------------------------------------------------------------------ labels
    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]) -> str:
        _check_id(image_id)
        label_tag = _check_tag(label_tag or "final")
        info = dict(_check_info(label_info, "params"))
        image_path = self.get_image_uri(image_id)
        if not image_path or not os.path.isfile(image_path):
            raise HTTPException(status_code=404, detail=f"Image {image_id!r} is not in the datastore")
        ls = self.landmark_set
        ext = labelmap_extension(image_path)
        problem = file_name_problem(image_id, ext)
        if problem:
            raise _bad_request(400, problem)
        try:
            image = load_image(image_path, default_spacing=ls.default_spacing_mm)
            points = read_label_points(label_filename, image, image_path, ls, info.get("label_info"))
            radius = label_radius_px(points, image.spacing, self.label_radius_mm)
            canonical = write_labelmap_like(draw_labelmap(points, image, radius, len(ls)), image_path)
        except AnatomarkError as e:
            detail = str(e).replace(os.path.basename(label_filename), "(uploaded label)")
            raise HTTPException(status_code=422, detail=f"Label refused for image {image_id!r}: {detail}") from e
        try:
            client_label_info = info.pop("label_info", None)
            stored = stored_label_info(ls)
            if client_label_info is not None and client_label_info != stored:
                info["client_label_info"] = client_label_info  # the uploaded map's values, not the stored map's
            info.update(
                {
                    INFO_POINTS: points_to_json(points),
                    INFO_SPACING: [float(s) for s in image.spacing],
                    INFO_SET: ls.name,
                    "n_landmarks": int(np.isfinite(points).all(axis=1).sum()),
                    "source_file": Path(label_filename).name,
                    "label_info": stored,  # describes the stored map (re-encoded into the set's order)
                }
            )
            _, ext = self._to_id(os.path.basename(canonical))
            with self._mutex, FileLock(self._lock_file):
                self._reload_unlocked()
                obj = self._datastore.objects.get(image_id)
                if not obj:
                    raise HTTPException(status_code=404, detail=f"Image {image_id!r} is not in the datastore")
                label_dir = self._datastore.label_path(label_tag)
                problem = self._folder_problem(label_dir, "label")
                if problem:
                    raise HTTPException(status_code=409, detail=f"Label for image {image_id!r} not saved: {problem}")
                os.makedirs(label_dir, exist_ok=True)
                name = self._filename(image_id, ext)
                # the label file first (atomic), then the JSON (atomic): a crash in between leaves the previous
                # label's points with the new label map, never a torn file or a lost acknowledged label
                atomic_copy(canonical, os.path.join(label_dir, name))
                old = obj.labels.get(label_tag)
                if old is not None and old.ext != ext:  # one label file per image and tag
                    stale = os.path.join(label_dir, self._filename(image_id, old.ext))
                    if os.path.islink(stale) or os.path.isfile(stale):
                        os.unlink(stale)  # a link itself, never its target
                info.update({"ts": int(time.time()), "name": name})
                obj.labels[label_tag] = DataModel(info=info, ext=ext)
                self._update_datastore_file(lock=False)
        finally:
            os.unlink(canonical)
        logger.info(f"Saved label {image_id} [{label_tag}]: {info['n_landmarks']} landmark(s)")
        if self.on_label_saved:
            try:
                self.on_label_saved(image_id, label_tag)
            except Exception:  # noqa: BLE001 - a failing hook must not lose the saved label
                logger.exception("on_label_saved hook failed")
        return image_id

    def has_label(self, image_id: str, tag: str) -> bool:
        """Whether the image has a label with ``tag`` (in this process's view of the datastore)."""
        return self._datastore.label(image_id, tag) is not None

    def image_id_of_path(self, image_path: str) -> str | None:
        """The id of the image stored at ``image_path`` directly in the studies folder (``None`` otherwise)."""
        folder = os.path.realpath(self._datastore.image_path())
        real = os.path.realpath(image_path)
        if os.path.dirname(real) != folder:
            return None
        image_id, _ = self._to_id(os.path.basename(real))
        obj = self._datastore.objects.get(image_id)
        if obj is None or self._filename(image_id, obj.image.ext) != os.path.basename(real):
            return None
        return image_id

    def keep_original(
        self,
        image_id: str,
        points: np.ndarray,
        spacing: tuple[float, float],
        model: str,
        model_version: str | None,
    ) -> bool:
        """Store ``(K, 2)`` predicted points as the image's ``original`` label: a points JSON and its label info
        (no label map is drawn). Not done when the image has a ``final`` label (checked again under the lock).

        Returns:
            Whether the points were stored.
        """
        tag = DefaultLabelTag.ORIGINAL.value
        ls = self.landmark_set
        doc = points_document(points, ls.names, decimals=3)  # index, name, x, y (null when absent)
        try:
            with self._mutex, FileLock(self._lock_file):
                self._reload_unlocked()
                obj = self._datastore.objects.get(image_id)
                if obj is None or DefaultLabelTag.FINAL.value in obj.labels:
                    return False
                label_dir = self._datastore.label_path(tag)
                if self._folder_problem(label_dir, "label"):
                    return False
                os.makedirs(label_dir, exist_ok=True)
                name = self._filename(image_id, ".json")
                atomic_copy(None, os.path.join(label_dir, name), json.dumps(doc).encode())
                old = obj.labels.get(tag)
                if old is not None and old.ext != ".json":  # one label file per image and tag
                    stale = os.path.join(label_dir, self._filename(image_id, old.ext))
                    if os.path.islink(stale) or os.path.isfile(stale):
                        os.unlink(stale)
                info = {
                    "model": model,
                    "model_version": model_version,
                    "source": "infer",
                    INFO_POINTS: points_to_json(points),
                    INFO_SPACING: [float(s) for s in spacing],
                    INFO_SET: ls.name,
                    "n_landmarks": int(np.isfinite(points).all(axis=1).sum()),
                    "ts": int(time.time()),
                    "name": name,
                }
                obj.labels[tag] = DataModel(info=info, ext=".json")
                self._update_datastore_file(lock=False)
        except Exception:  # noqa: BLE001 - keeping the prediction must never fail an inference
            logger.exception(f"Could not keep the original prediction of {image_id}")
            return False
        return True

    def remove_label(self, label_id: str, label_tag: str) -> None:
        """Remove a label: only its entry in the studies folder (a link is unlinked, its target never touched),
        nothing through a label folder that leaves the studies folder (409)."""
        _check_id(label_id, "label id")
        _check_tag(label_tag)
        with self._mutex, FileLock(self._lock_file):
            self._reload_unlocked()
            entry = self._label_entry(label_id, label_tag)
            if entry is None:
                raise _bad_request(404, f"No label {label_tag!r} for image {label_id!r}")
            problem = self._folder_problem(self._datastore.label_path(label_tag), "label")
            if problem:
                raise _bad_request(409, f"Label {label_tag!r} of image {label_id!r} not deleted: {problem}")
            self._unlink_entry(entry)
            del self._datastore.objects[label_id].labels[label_tag]
            self._update_datastore_file(lock=False)
        logger.info(f"Removed label {label_id} [{label_tag}]")

    def update_label_info(self, label_id: str, label_tag: str, info: dict[str, Any]) -> None:
        _check_id(label_id, "label id")
        _check_tag(label_tag)
        info = _check_info(info, "info")
        reserved = sorted(set(info) & set(RESERVED_LABEL_INFO))
        if reserved:
            raise _bad_request(
                422, f"Label info keys {reserved} are written by the server from the label; save a new label instead"
            )
        with self._mutex, FileLock(self._lock_file):
            self._reload_unlocked()
            label = self._datastore.label(label_id, label_tag)
            if not label:
                raise _bad_request(404, f"No label {label_tag!r} for image {label_id!r}")
            label.info.update(info)
            self._update_datastore_file(lock=False)

    def label_points(self, image_id: str, tag: str) -> tuple[np.ndarray, tuple[float, float]] | None:
        """``((K, 2) points, spacing)`` of an image's label with ``tag``, or ``None`` when it has none.

        Uses the exact points stored at save time; labels dropped into the folder by hand are read like saved ones
        (:func:`read_label_points`: a label map's centroids with identity value mapping on the grid 3D Slicer shows,
        i.e. a raster image's stored frame, or a JSON label).
        """
        info = self.get_label_info(image_id, tag)
        uri = self.get_label_uri(image_id, tag)
        if not info and not (uri and os.path.isfile(uri)):
            return None
        problem = self.image_access_problem(image_id)
        if problem:
            raise AnatomarkError(problem)
        ls = self.landmark_set
        if info.get(INFO_POINTS) is not None:
            sp = info.get(INFO_SPACING) or ls.default_spacing_mm or (1.0, 1.0)
            return points_from_json(info[INFO_POINTS], len(ls)), (float(sp[0]), float(sp[1]))
        if not uri or not os.path.isfile(uri):
            return None
        image_path = self.get_image_uri(image_id)
        image = load_image(image_path, default_spacing=ls.default_spacing_mm)
        return read_label_points(uri, image, image_path, ls), image.spacing
