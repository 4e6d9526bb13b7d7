"""What the MONAI Label server accepts in a request: ids, file names, tags, task names, task options, images.

Pure checks (no ASGI, no patching), used by the request guard (:mod:`anatomark.monailabel.middleware`), the datastore
(:mod:`anatomark.monailabel.datastore`) and the app:

- ids (``image``, ``label``, ``id``, ``session_id``) must be plain file names (no ``/``, ``\\``, ``..``, NUL, no
  leading dot) of at most :data:`MAX_ID_BYTES` bytes (id + extension must fit the file system's 255-byte names), tags
  letters/digits/``_.-`` (:func:`id_problem`, :func:`file_name_problem`, :func:`tag_problem`);
- :func:`app_request_validator`: unknown models / scoring methods (404), a datastore image or label that the
  datastore's symbolic-link policy does not follow (403), task options (422; each task declares its own schema, see
  :class:`OptionSchema` and ``LandmarkTrainTask.OPTIONS``);
- :func:`resolve_infer_image`: what ``/infer`` may read for ``?image=``;
- :func:`json_object_problem`: a JSON form field that is not an object.

The app's tasks are looked up through a function given to :func:`app_request_validator`
(:func:`anatomark.monailabel.patches.app_tasks`: MONAI Label keeps them in private attributes).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

_ID_RE = re.compile(r"^[^/\\\x00-\x1f]+$")
#: longest file name (bytes) of the file systems the studies folder lives on (ext4, xfs, btrfs, tmpfs, NTFS, APFS)
NAME_MAX = 255
#: shortest extension of an image or label file (``.png``, ``.dcm``, ``.nii`` ...): an id longer than
#: ``NAME_MAX - MIN_EXTENSION_BYTES`` bytes can never be the name of a datastore file
MIN_EXTENSION_BYTES = 4
MAX_ID_BYTES = NAME_MAX - MIN_EXTENSION_BYTES
_TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
#: query parameters that are datastore ids
ID_PARAMS = ("image", "label", "id")
ID_HELP = (
    "an id is the file name of an image in the studies folder without its extension "
    "(no '/', '\\\\', '..' or leading '.')"
)

#: ``(method, path, query, body) -> (status, detail) | None``: the app's checks run by the request guard
Validator = Callable[[str, str, list[tuple[str, str]], bytes | None], tuple[int, str] | None]


# ---------------------------------------------------------------------------------------------------- names
def id_problem(value: str, what: str = "image id") -> str | None:
    """Why ``value`` is not a safe datastore id (``None`` when it is).

    Besides the characters, an id must leave room for a file extension within the file system's name limit: ids of
    more than :data:`MAX_ID_BYTES` bytes (UTF-8) are refused here, and :func:`file_name_problem` checks the exact
    file name (id + extension) where a file is written.

    Args:
        value: the id.
        what: how the message names it (``image id``, ``label id``, ``session id``).

    Returns:
        The reason, or ``None``.
    """
    n = len(value.encode("utf-8", "surrogatepass"))
    if n > MAX_ID_BYTES:
        return (
            f"Invalid {what} {value[:40]!r}... ({n} bytes): an id becomes a file name (id + extension, at most "
            f"{NAME_MAX} bytes), so it may have at most {MAX_ID_BYTES} bytes (UTF-8); use a shorter id"
        )
    if not _ID_RE.match(value) or value.startswith(".") or value.strip() != value:
        return f"Invalid {what} {value[:80]!r}: {ID_HELP}"
    return None


def file_name_problem(image_id: str, ext: str, what: str = "image id") -> str | None:
    """Why ``image_id + ext`` cannot be a file name (longer than :data:`NAME_MAX` bytes); ``None`` when it can.

    Args:
        image_id: the id.
        ext: the extension the file gets (``.png``, ``.nii.gz`` ...).
        what: how the message names the id.

    Returns:
        The reason, or ``None``.
    """
    n = len((image_id + ext).encode("utf-8", "surrogatepass"))
    if n > NAME_MAX:
        return (
            f"Invalid {what} {image_id[:40]!r}...: with the extension {ext!r} its file name would have {n} bytes, "
            f"more than the file system's {NAME_MAX}; use an id of at most {NAME_MAX - len(ext.encode())} bytes"
        )
    return None


def tag_problem(value: str) -> str | None:
    """Why ``value`` is not a safe label tag (``None`` when it is).

    Args:
        value: the tag (``final``, ``original`` ...).

    Returns:
        The reason, or ``None``.
    """
    if not _TAG_RE.match(value):
        return (
            f"Invalid label tag {value[:80]!r}: use letters, digits, '_', '.' or '-' (at most 64, e.g. 'final' or "
            "'original')"
        )
    return None


def json_object_problem(value: Any, field_name: str) -> str | None:
    """Why the form field ``field_name`` (a JSON string) is not a JSON object (``None`` when it is, or is empty).

    Args:
        value: the field's value as sent.
        field_name: its name (``params``, ``info``), for the message.

    Returns:
        The reason, or ``None``.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        doc = json.loads(value)
    except (TypeError, ValueError, RecursionError) as e:
        return f"Form field {field_name!r} is not valid JSON ({str(e)[:120]}); send a JSON object, e.g. {{}}"
    if not isinstance(doc, dict):
        return f"Form field {field_name!r} must be a JSON object, got {type(doc).__name__}"
    return None


# ---------------------------------------------------------------------------------------------------- task options
class Option(Protocol):
    """One request option of a task: says why a value is not accepted."""

    def problem(self, value: Any) -> str | None:
        """The end of the message (``must be ... , got ...``), or ``None`` when ``value`` is accepted."""
        ...


@dataclass(frozen=True)
class NumberOption:
    """A finite number (not a boolean) in ``[low, high]``; an integral one when ``kind`` is ``int``.

    Attributes:
        kind: ``int`` or ``float``.
        low: smallest accepted value.
        high: largest accepted value.
    """

    kind: type
    low: float
    high: float

    def problem(self, value: Any) -> str | None:
        """``must be an integer in [1, 10], got 0``-style reason, or ``None``."""
        ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
        if ok and self.kind is int:
            ok = float(value).is_integer()
        if not ok or not self.low <= value <= self.high:
            what = "an integer" if self.kind is int else "a number"
            return f"must be {what} in [{self.low:g}, {self.high:g}], got {value!r}"
        return None


@dataclass(frozen=True)
class BoolOption:
    """``true`` or ``false``."""

    def problem(self, value: Any) -> str | None:
        """The reason, or ``None``."""
        return None if isinstance(value, bool) else f"must be true or false, got {value!r}"


@dataclass(frozen=True)
class GpuListOption:
    """``"all"`` or comma-separated GPU indices (``"0,1"``), as MONAI Label's ``gpus`` option."""

    def problem(self, value: Any) -> str | None:
        """The reason, or ``None``."""
        parts = [x.strip() for x in value.split(",")] if isinstance(value, str) else []
        if value == "all" or (parts and all(x.isdigit() for x in parts)):
            return None
        return f'must be "all" or GPU indices like "0,1", got {value!r}'


@dataclass(frozen=True)
class OptionSchema:
    """The request options a task accepts (unknown keys pass: MONAI Label adds its own).

    Attributes:
        options: option name -> its check, in the order they are checked (the first problem is answered).
        what: how messages name one option (``Training option``).
    """

    options: Mapping[str, Option]
    what: str = "Option"

    def problem(self, params: Mapping[str, Any]) -> str | None:
        """Why ``params`` is not accepted (the first bad option), or ``None``.

        Args:
            params: the request options (a JSON object).

        Returns:
            ``"<what> '<name>' must be ..., got ..."``, or ``None``.
        """
        for key, option in self.options.items():
            if key in params:
                why = option.problem(params[key])
                if why:
                    return f"{self.what} {key!r} {why}"
        return None


def options_body_problem(
    body: bytes, check: Callable[[Mapping[str, Any]], str | None], what: str = "Options"
) -> tuple[int, str] | None:
    """``(422, why)`` when a JSON request body is not an object of options that ``check`` accepts.

    Args:
        body: the request body (``null`` and ``{}`` are no options).
        check: the task's options check (e.g. ``LandmarkTrainTask.options_problem``).
        what: how the message names the options (``Training options``).

    Returns:
        ``(422, why)``, or ``None``.
    """
    try:
        params = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        return 422, f"{what} must be a JSON object ({e})"
    if params is None:
        return None
    if not isinstance(params, dict):
        return 422, f"{what} must be a JSON object, got {type(params).__name__}"
    why = check(params)
    return (422, why) if why else None


# ---------------------------------------------------------------------------------------------------- app requests
def link_problem(app: Any, method: str, seg: list[str], query: Mapping[str, str]) -> str | None:
    """Why a download or ``/infer`` of a datastore image / label is refused by the datastore's link policy
    (``image_access_problem`` / ``label_access_problem`` of :class:`~anatomark.monailabel.LandmarkDatastore`).

    Args:
        app: the MONAI Label app.
        method: HTTP method.
        seg: the URL path's non-empty segments.
        query: the query parameters.

    Returns:
        The reason, or ``None``.
    """
    ds = app.datastore()
    image_check = getattr(ds, "image_access_problem", None)
    label_check = getattr(ds, "label_access_problem", None)
    if method in ("GET", "HEAD") and seg[:1] == ["datastore"] and len(seg) >= 2 and seg[2:] in ([], ["info"]):
        if seg[1] == "image" and query.get("image") and image_check:
            return image_check(query["image"])
        label_id = query.get("label") or query.get("image")  # MONAI Label's HEAD /datastore/label takes ?image=
        if seg[1] == "label" and label_id and label_check:
            return label_check(label_id, query.get("tag", ""))
    if method == "POST" and seg[:1] == ["infer"] and query.get("image") and image_check:
        return image_check(query["image"])
    return None


#: URL prefix -> (how messages name a task, how they name its options); the body of ``POST /train/...`` and
#: ``/scoring/...`` is JSON options, checked by the task's ``options_problem`` when it has one
_TASK_KINDS = {
    "infer": ("model", "Inference options"),
    "train": ("model", "Training options"),
    "scoring": ("scoring method", "Scoring options"),
}


def app_request_validator(app: Any, tasks_of: Callable[[str], Mapping[str, Any]]) -> Validator:
    """Validator for :class:`~anatomark.monailabel.middleware.RequestGuard` from a MONAI Label app.

    It answers unknown models / scoring methods (404, before an upload is read or a subprocess started), datastore
    images or labels the link policy does not follow (403), ``GET /datastore/{image,label}/info`` of unknown ids
    (404) and task options the task refuses (422: the task named in the URL is asked with its ``options_problem``,
    e.g. :meth:`anatomark.monailabel.train.LandmarkTrainTask.options_problem`).

    Args:
        app: the MONAI Label app (its datastore is looked up at each request).
        tasks_of: ``kind`` (``infer``, ``train``, ``scoring``) -> the app's tasks of that kind by name
            (:func:`anatomark.monailabel.patches.app_tasks`).

    Returns:
        ``validate(method, path, query, body) -> (status, detail) | None``.
    """

    def validate(method: str, path: str, query: list[tuple[str, str]], body: bytes | None) -> tuple[int, str] | None:
        seg = [s for s in path.split("/") if s]
        link = link_problem(app, method, seg, dict(query))
        if link:
            return 403, link
        if method == "GET" and seg[:1] == ["datastore"] and seg[2:] == ["info"]:  # MONAI Label answers {} + 200
            q = dict(query)
            ds = app.datastore()
            if seg[1] == "image" and q.get("image") and not ds.get_image_uri(q["image"]):
                return 404, f"Image {q['image']!r} is not in the datastore"
            if seg[1] == "label" and q.get("label") and not ds.get_label_uri(q["label"], q.get("tag", "")):
                return 404, f"No label {q.get('tag', '')!r} for image {q['label']!r}"
            return None
        if method != "POST" or not seg:
            return None
        if seg[0] == "batch" and len(seg) >= 3 and seg[1] == "infer":
            seg = ["infer", seg[2]]
        if seg[0] not in _TASK_KINDS or len(seg) < 2:
            return None
        what, options = _TASK_KINDS[seg[0]]
        tasks = tasks_of(seg[0])
        if seg[1] not in tasks:
            return 404, f"Unknown {what} {seg[1]!r}; available: {', '.join(tasks) or '(none)'}"
        check = getattr(tasks[seg[1]], "options_problem", None)
        if body and check is not None:
            return options_body_problem(body, check, options)
        return None

    return validate


def resolve_infer_image(
    image: str, datastore: Any, upload_dir: Path | None, session_dir: str | Path | None = None
) -> str | None:
    """What ``/infer`` may read for ``image``: a datastore image id, an upload of this server or the image of a
    MONAI Label session (``<session_dir>/<session id>/<file>``, what 3D Slicer uses for a volume that is not in the
    datastore), never another file.

    MONAI Label passes ``?image=`` (or ``params["image"]``) to the task as a path when such a file exists; this returns
    the id, the datastore's path when a file in the server's working folder has the id's name, the upload's or
    session image's path, else ``None``.

    Args:
        image: ``?image=`` as MONAI Label passes it.
        datastore: the app's datastore.
        upload_dir: the server's private upload folder (:func:`anatomark.monailabel.patches.use_private_upload_dir`);
            ``None`` (library use, MONAI Label's subprocesses) allows any existing path.
        session_dir: MONAI Label's session store.

    Returns:
        What the task may read, or ``None`` (not allowed: 404).
    """
    if not os.path.isabs(image) and datastore.get_image_uri(image):
        return datastore.get_image_uri(image) if os.path.exists(image) else image
    if not os.path.exists(image):
        return None
    if upload_dir is None:
        return image
    real = os.path.realpath(image)
    if not os.path.isfile(real):
        return None
    if os.path.dirname(real) == str(upload_dir):
        return image
    if session_dir and os.path.dirname(os.path.dirname(real)) == os.path.realpath(session_dir):
        return image
    return None
