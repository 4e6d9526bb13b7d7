"""Request guard for the MONAI Label server: refuse bad requests with a clear 4xx before MONAI Label handles them.

MONAI Label 0.8.5's endpoints copy every upload to a temp file before the app sees it, answer malformed ``params``
JSON with a 500, take image/label ids and tags straight into file paths, let any caller replace or delete the
served weights (``PUT``/``DELETE /model/<name>``) and unpack uploaded archives (``PUT /session/?uncompress=true``).
:class:`RequestGuard` is an ASGI middleware placed in front of those endpoints:

- request bodies above ``max_upload_bytes`` are refused with 413, from ``Content-Length`` before any byte is read,
  or while streaming (chunked uploads); the refused body is read and discarded (up to a cap) so that the client
  sees the 413 instead of a reset connection;
- ids (``image``, ``label``, ``id``) must be plain file names (no ``/``, ``\\``, ``..``, NUL, no leading dot) of at
  most :data:`MAX_ID_BYTES` bytes (id + extension must fit the file system's 255-byte names), tags
  letters/digits/``_.-``; URL paths with ``..`` segments are refused (400);
- a datastore image or label that the datastore's symbolic-link policy does not follow (an image link that does not
  end at an image file, a label outside the studies folder) is refused with 403 and the reason on download, info and
  ``/infer`` (see :mod:`anatomark.monailabel.datastore`);
- endpoints that can write outside the datastore or replace weights unchecked are refused (403): model upload and
  delete, archive uploads to sessions (``uncompress``), the DICOMweb proxy when the datastore is a local folder,
  ``/reload``;
- user errors raised inside MONAI Label's endpoints become 4xx: malformed JSON in form fields (422), unknown
  image/label ids (404), :class:`~anatomark.errors.AnatomarkError` (422), a file name over the file system's limit
  (``ENAMETOOLONG``, e.g. an upload name with many suffixes: 400), and MONAI Label's "neither image nor file" 500 on
  ``/infer`` (400).

Everything else passes through unchanged. :func:`install_guard` adds the guard to a running FastAPI app (MONAI
Label builds its app before loading ours, so the app installs it from ``on_init_complete``).
"""

from __future__ import annotations

import atexit
import errno
import json
import logging
import math
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from anatomark.errors import AnatomarkError

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

DEFAULT_MAX_UPLOAD_MB = 200.0
#: a refused body is read and discarded up to this many bytes (then the connection is closed)
DRAIN_CAP_BYTES = 1 << 30

_ID_RE = re.compile(r"^[^/\\\x00-\x1f]+$")
#: longest file name (bytes) of the file systems the studies folder lives on (ext4, xfs, btrfs, tmpfs, NTFS, APFS)
NAME_MAX = 255
#: shortest extension of an image or label file (``.png``, ``.dcm``, ``.nii`` ...): an id longer than
#: ``NAME_MAX - MIN_EXTENSION_BYTES`` bytes can never be the name of a datastore file
MIN_EXTENSION_BYTES = 4
MAX_ID_BYTES = NAME_MAX - MIN_EXTENSION_BYTES
_TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
ID_PARAMS = ("image", "label", "id")
ID_HELP = (
    "an id is the file name of an image in the studies folder without its extension "
    "(no '/', '\\\\', '..' or leading '.')"
)


def id_problem(value: str, what: str = "image id") -> str | None:
    """Why ``value`` is not a safe datastore id (``None`` when it is).

    Besides the characters, an id must leave room for a file extension within the file system's name limit: ids of
    more than :data:`MAX_ID_BYTES` bytes (UTF-8) are refused here, and :func:`file_name_problem` checks the exact
    file name (id + extension) where a file is written.
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
    """Why ``image_id + ext`` cannot be a file name (longer than :data:`NAME_MAX` bytes); ``None`` when it can."""
    n = len((image_id + ext).encode("utf-8", "surrogatepass"))
    if n > NAME_MAX:
        return (
            f"Invalid {what} {image_id[:40]!r}...: with the extension {ext!r} its file name would have {n} bytes, "
            f"more than the file system's {NAME_MAX}; use an id of at most {NAME_MAX - len(ext.encode())} bytes"
        )
    return None


def tag_problem(value: str) -> str | None:
    """Why ``value`` is not a safe label tag (``None`` when it is)."""
    if not _TAG_RE.match(value):
        return (
            f"Invalid label tag {value[:80]!r}: use letters, digits, '_', '.' or '-' (at most 64, e.g. 'final' or "
            "'original')"
        )
    return None


def _exception_status(exc: BaseException, path: str = "") -> tuple[int, str] | None:
    """Map a user error escaping from a MONAI Label endpoint to ``(status, detail)``; ``None`` = a real 500."""
    if path.rstrip("/") == "/auth/token" and type(exc).__name__ in ("HTTPError", "ConnectionError", "Timeout"):
        code = getattr(getattr(exc, "response", None), "status_code", None)
        if code in (400, 401, 403):  # the identity provider refused the user name / password
            return 401, "Invalid user name or password"
        return 503, "The identity provider (MONAI_LABEL_AUTH_REALM_URI) cannot be reached or failed"
    if isinstance(exc, json.JSONDecodeError):
        return 422, (
            f"A form field is not valid JSON ({exc.msg} at position {exc.pos}); send 'params' / 'info' as a JSON "
            'object, e.g. {"result_format": "slicer_markups"}'
        )
    name = type(exc).__name__
    if name in ("ImageNotFoundException", "LabelNotFoundException"):
        return 404, f"{exc}; list the datastore with GET /datastore/?output=all"
    if isinstance(exc, AnatomarkError):
        return 422, str(exc)
    if isinstance(exc, OSError) and exc.errno == errno.ENAMETOOLONG:
        return 400, (
            "A file name made from the request (an id, or the name of the uploaded file) is longer than the file "
            f"system allows ({NAME_MAX} bytes); use a shorter id or file name"
        )
    return None


def _authenticated(headers: dict[str, str]) -> bool:
    """Whether MONAI Label's authentication is off, or the request carries a token it accepts."""
    try:
        from monailabel.endpoints.user import auth
    except Exception:  # noqa: BLE001 - no auth module: no authentication
        return True
    if not auth.settings.MONAI_LABEL_AUTH_ENABLE:
        return True
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        return False
    try:
        auth.from_token(token.strip())
    except Exception:  # noqa: BLE001 - any failure: not authenticated (the endpoint answers 401 / 503)
        return False
    return True


class RequestGuard:
    """ASGI middleware; see the module docstring.

    Args:
        app: the wrapped ASGI app.
        max_upload_bytes: largest accepted request body.
        local_datastore: the studies folder is local (the DICOMweb proxy is then refused).
        allow_model_upload: let ``PUT``/``DELETE /model/<name>`` through (off: they replace or delete served weights
            without validation).
        validator: ``(method, path, query, body) -> (status, detail) | None`` from the app (unknown models, scoring
            methods, bad training options); ``body`` is the JSON body of ``POST /train/...`` and ``/scoring/...``
            (read here, at most 1 MB, and replayed to the endpoint), else ``None``.
    """

    def __init__(
        self,
        app: Callable[[Scope, Receive, Send], Awaitable[None]],
        max_upload_bytes: int = int(DEFAULT_MAX_UPLOAD_MB * 1e6),
        local_datastore: bool = True,
        allow_model_upload: bool = False,
        validator: Callable[[str, str, list[tuple[str, str]], bytes | None], tuple[int, str] | None] | None = None,
    ) -> None:
        self.app = app
        self.validator = validator
        self.max_upload_bytes = int(max_upload_bytes)
        self.local_datastore = local_datastore
        self.allow_model_upload = allow_model_upload

    # ------------------------------------------------------------------ checks on the request line
    def refuse(self, method: str, path: str, query: list[tuple[str, str]]) -> tuple[int, str] | None:
        """``(status, detail)`` when the request must be refused before it reaches MONAI Label."""
        segments = path.split("/")
        if any(s in ("..", ".") for s in segments) or "\\" in path or "\x00" in path:
            return 400, f"Invalid URL path {path[:120]!r}: '..', '.' and '\\' segments are not allowed"
        top = segments[1] if len(segments) > 1 else ""
        if top == "model" and method in ("PUT", "DELETE") and not self.allow_model_upload:
            return 403, (
                "Uploading or deleting model weights through the API is disabled in anatomark (no validation, would "
                "overwrite the served or shipped weights); fine-tune with POST /train/<model>, or copy a model file "
                "written by 'anatomark train' to the published model folder on the server"
            )
        if top == "session" and any(k == "uncompress" and v.lower() in ("1", "true", "yes") for k, v in query):
            return 403, (
                "Uploading archives to a session is disabled (unpacking could write outside the session folder); "
                "upload the image file itself"
            )
        if top == "proxy" and self.local_datastore:
            return 403, "The DICOMweb proxy is only available when the server's studies are a DICOMweb URL"
        if top == "reload":
            return 403, "Reloading the app through the API is disabled; restart the server instead"
        for key, value in query:
            if key in ID_PARAMS and value != "":
                problem = id_problem(value, "label id" if key == "label" else "image id")
                if problem:
                    return 400, problem
            elif key == "tag" and value != "":
                problem = tag_problem(value)
                if problem:
                    return 400, problem
            elif key == "session_id" and value != "":
                problem = id_problem(value, "session id")
                if problem:
                    return 400, problem
            elif key == "output" and value == "dicom_seg" and self.local_datastore:
                return 400, "output=dicom_seg needs a DICOMweb datastore; use output=image, json or all"
        return None

    # ------------------------------------------------------------------ ASGI
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope.get("method", "GET")
        path = scope.get("path", "")
        try:
            query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        except Exception:  # noqa: BLE001 - a broken query string is a client error
            await self._reply(receive, send, 400, "Malformed query string")
            return
        refused = self.refuse(method, path, query)
        if refused:
            logger.warning(f"Refused {method} {path}: {refused[1]}")
            await self._reply(receive, send, *refused)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        length = headers.get("content-length")
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                await self._reply(receive, send, 400, "Malformed Content-Length header")
                return
            if n > self.max_upload_bytes:
                logger.warning(f"Refused {method} {path}: body of {n} bytes")
                await self._reply(receive, send, 413, self._too_large(n))
                return

        if self.validator is not None and _authenticated(headers):
            # (unauthenticated callers get MONAI Label's 401 instead: the validator's answers name models and images)
            body: bytes | None = None
            top = path.split("/")[1] if path.count("/") else ""
            if method == "POST" and top in ("train", "scoring"):
                body, receive = await self._buffer(receive, 1 << 20)
                if body is None:
                    await self._reply(receive, send, 413, "Request body above 1 MB; options are a small JSON object")
                    return
            try:
                verdict = self.validator(method, path, query, body)
            except Exception:  # noqa: BLE001 - a broken validator must not take the request down
                logger.exception("request validator failed")
                verdict = None
            if verdict:
                logger.warning(f"Refused {method} {path}: {verdict[1]}")
                await self._reply(receive, send, *verdict)
                return

        received = 0
        started = False
        over_limit = False  # a streamed body went over the limit: 413 sent, the app's own answer is dropped
        held: list[Message] = []

        async def counting_receive() -> Message:
            nonlocal received, over_limit, started
            if over_limit:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_upload_bytes:
                    # the endpoint is parsing the upload: answer 413 now and tell it the client went away (raising
                    # here would become FastAPI's "error parsing the body" 400)
                    logger.warning(f"Refused {method} {path}: streamed body above {self.max_upload_bytes} bytes")
                    over_limit = True
                    if message.get("more_body", False):
                        await self._drain(receive)
                    if not started:
                        started = True
                        await self._send_json(send, 413, self._too_large(None))
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if over_limit:
                return
            if message["type"] == "http.response.start":
                if message["status"] == 500 and path.startswith("/infer"):
                    held.append(message)  # maybe MONAI Label's "no image nor file" 500: look at the body first
                    return
                started = True
            elif held and message["type"] == "http.response.body":
                body = message.get("body", b"")
                start = held.pop()
                started = True
                if b"Neither Image nor File" in body:
                    await self._send_json(send, 400, "Give ?image=<id> of the datastore or upload the X-ray as form "
                                          "field 'file' (multipart/form-data)")  # fmt: skip
                    return
                await send(start)
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception as e:
            if over_limit:
                return  # the 413 is out; whatever the endpoint made of the disconnect does not matter
            mapped = _exception_status(e, path)
            if mapped is None or started:
                raise
            logger.warning(f"{method} {path}: {type(e).__name__}: {e} -> {mapped[0]}")
            await self._send_json(send, *mapped)

    def _too_large(self, n: int | None) -> str:
        size = f"{n / 1e6:.1f} MB" if n is not None else "more than the limit"
        return (
            f"Upload of {size} refused: the limit is {self.max_upload_bytes / 1e6:.1f} MB (server option --conf "
            "max_upload_mb); send a smaller or compressed file (PNG, JPEG or a compressed DICOM)"
        )

    async def _reply(self, receive: Receive, send: Send, status: int, detail: str) -> None:
        await self._drain(receive)
        await self._send_json(send, status, detail)

    @staticmethod
    async def _buffer(receive: Receive, cap: int) -> tuple[bytes | None, Receive]:
        """Read the whole body (``None`` if above ``cap``) and a ``receive`` that replays it."""
        chunks: list[bytes] = []
        total = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            total += len(chunks[-1])
            if total > cap:
                return None, receive
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return body, replay

    @staticmethod
    async def _drain(receive: Receive) -> None:
        """Read and discard the request body (bounded), so the client can read our answer."""
        total = 0
        while total < DRAIN_CAP_BYTES:
            message = await receive()
            if message["type"] != "http.request":
                return
            total += len(message.get("body", b""))
            if not message.get("more_body", False):
                return

    @staticmethod
    async def _send_json(send: Send, status: int, detail: str) -> None:
        body = json.dumps({"detail": detail}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})


def install_guard(fastapi_app: Any, **kwargs: Any) -> bool:
    """Add :class:`RequestGuard` to a (possibly running) Starlette/FastAPI app, inside CORS; idempotent.

    Returns whether it was installed now.
    """
    from starlette.middleware import Middleware

    if getattr(fastapi_app.state, "anatomark_guard", False):
        return False
    fastapi_app.user_middleware.append(Middleware(RequestGuard, **kwargs))
    if fastapi_app.middleware_stack is not None:  # already serving (lifespan): rebuild the stack with the guard
        fastapi_app.middleware_stack = fastapi_app.build_middleware_stack()
    fastapi_app.state.anatomark_guard = True
    logger.info(f"Request guard installed: {kwargs}")
    return True


# ---------------------------------------------------------------------------------------------------- app side
#: training options: name -> (type, low, high), bounds inclusive
TRAIN_OPTIONS: dict[str, tuple[type, float, float]] = {
    "max_epochs": (int, 1, 10000),
    "val_fraction": (float, 0.0, 0.9),
    "lr": (float, 1e-8, 1.0),
    "batch_size": (int, 1, 1024),
    "cpu_processes": (int, 1, 64),
}


def train_options_problem(body: bytes) -> tuple[int, str] | None:
    """``(422, why)`` when the JSON body of ``POST /train/<model>`` is not an object of valid options."""
    try:
        params = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        return 422, f"Training options must be a JSON object ({e})"
    if params is None:
        return None
    if not isinstance(params, dict):
        return 422, f"Training options must be a JSON object, got {type(params).__name__}"
    for key, (kind, low, high) in TRAIN_OPTIONS.items():
        if key not in params:
            continue
        v = params[key]
        ok = not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)
        if ok and kind is int:
            ok = float(v).is_integer()
        if not ok or not low <= v <= high:
            what = "an integer" if kind is int else "a number"
            return 422, f"Training option {key!r} must be {what} in [{low:g}, {high:g}], got {v!r}"
    if "multi_gpu" in params and not isinstance(params["multi_gpu"], bool):
        return 422, f"Training option 'multi_gpu' must be true or false, got {params['multi_gpu']!r}"
    if "gpus" in params:
        g = params["gpus"]
        parts = [x.strip() for x in g.split(",")] if isinstance(g, str) else []
        if not (g == "all" or (parts and all(x.isdigit() for x in parts))):
            return 422, f'Training option \'gpus\' must be "all" or GPU indices like "0,1", got {g!r}'
    return None


def _link_problem(app: Any, method: str, seg: list[str], query: dict[str, str]) -> str | None:
    """Why a download or ``/infer`` of a datastore image / label is refused by the datastore's link policy
    (``image_access_problem`` / ``label_access_problem`` of :class:`~anatomark.monailabel.LandmarkDatastore`)."""
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


def app_request_validator(app: Any) -> Callable[[str, str, list[tuple[str, str]], bytes | None], Any]:
    """Validator for :class:`RequestGuard` from a MONAI Label app: unknown models / scoring methods (404, before an
    upload is read or a subprocess started) and training options (422)."""

    def validate(method: str, path: str, query: list[tuple[str, str]], body: bytes | None) -> tuple[int, str] | None:
        seg = [s for s in path.split("/") if s]
        link = _link_problem(app, method, seg, dict(query))
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
        known = {
            "infer": ("model", app._infers),
            "train": ("model", app._trainers),
            "scoring": ("scoring method", app._scoring_methods),
        }
        if seg[0] in known and len(seg) >= 2:
            what, names = known[seg[0]]
            if seg[1] not in names:
                return 404, f"Unknown {what} {seg[1]!r}; available: {', '.join(names) or '(none)'}"
        if seg[0] == "train" and body:
            return train_options_problem(body)
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
    session image's path, else ``None``. With ``upload_dir=None`` (library use, MONAI Label's subprocesses) any
    existing path is allowed.
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


def fix_token_decoding(algorithms: list[str] | None = None) -> bool:
    """Make MONAI Label's bearer-token check work with PyJWT 2 (returns whether the auth module was patched).

    ``monailabel.endpoints.user.auth.from_token`` (0.8.5) calls ``jwt.decode(token, key, options=...)`` without
    ``algorithms``; PyJWT 2 then raises ``DecodeError`` for every token, so with ``MONAI_LABEL_AUTH_ENABLE=true``
    even valid Keycloak tokens get 401. This replaces it with the same function passing ``algorithms`` (default
    ``RS256``, what Keycloak signs with; ``ANATOMARK_AUTH_ALGORITHMS`` overrides, comma-separated). Asymmetric
    algorithms only: the realm's public key must never be accepted as an HMAC secret.
    """
    try:
        from monailabel.endpoints.user import auth
    except Exception:  # noqa: BLE001 - auth extras missing: nothing to fix
        return False
    if getattr(auth.from_token, "anatomark_fixed", False):
        return False
    algs = algorithms or [a.strip() for a in os.environ.get("ANATOMARK_AUTH_ALGORITHMS", "RS256").split(",") if a]
    algs = [a for a in algs if a[:2] in ("RS", "ES", "PS") or a == "EdDSA"]
    settings = auth.settings

    def from_token(token: str) -> Any:
        if not settings.MONAI_LABEL_AUTH_ENABLE:
            return auth.DEFAULT_USER
        import jwt

        try:
            key = auth.get_public_key(settings.MONAI_LABEL_AUTH_REALM_URI)
        except Exception as e:  # noqa: BLE001 - identity provider down or misconfigured: not the client's fault
            from fastapi import HTTPException

            logger.error(f"Cannot fetch the realm's public key from {settings.MONAI_LABEL_AUTH_REALM_URI}: {e}")
            raise HTTPException(503, "The identity provider (MONAI_LABEL_AUTH_REALM_URI) cannot be reached") from e
        options = {"verify_signature": True, "verify_aud": False, "verify_exp": True, "require": ["exp"]}
        payload = jwt.decode(token, key, algorithms=algs, options=options)
        roles: Any = payload
        for part in settings.MONAI_LABEL_AUTH_TOKEN_ROLES.split("#"):
            roles = roles.get(part) if isinstance(roles, dict) else None
        return auth.User(
            username=payload.get(settings.MONAI_LABEL_AUTH_TOKEN_USERNAME) or "",
            email=payload.get(settings.MONAI_LABEL_AUTH_TOKEN_EMAIL),
            name=payload.get(settings.MONAI_LABEL_AUTH_TOKEN_NAME),
            roles=[str(r) for r in roles] if isinstance(roles, list) else [],
        )

    from_token.anatomark_fixed = True  # type: ignore[attr-defined]
    auth.from_token = from_token
    return True


def json_object_problem(value: Any, field_name: str) -> str | None:
    """Why the form field ``field_name`` (a JSON string) is not a JSON object (``None`` when it is, or is empty)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        doc = json.loads(value)
    except (TypeError, ValueError, RecursionError) as e:
        return f"Form field {field_name!r} is not valid JSON ({str(e)[:120]}); send a JSON object, e.g. {{}}"
    if not isinstance(doc, dict):
        return f"Form field {field_name!r} must be a JSON object, got {type(doc).__name__}"
    return None


#: MONAI Label endpoint helpers whose JSON form field is parsed and used as a dict without a check
_JSON_FIELDS = {
    "monailabel.endpoints.infer": {"run_inference": "params"},
    "monailabel.endpoints.datastore": {
        "add_image": "params",
        "save_label": "params",
        "update_image_info": "info",
        "update_label_info": "info",
    },
}


def check_endpoint_json_fields() -> int:
    """Wrap MONAI Label's endpoint helpers so that a form field that is not a JSON object gets 422 (they ``json.loads``
    it and use it as a dict: ``[1, 2]`` or ``null`` gave a 500). The ``api_*`` routes look these helpers up by name
    at call time, so replacing the module attributes is enough. Idempotent; returns how many were wrapped."""
    import functools
    import importlib
    import inspect

    from fastapi import HTTPException

    n = 0
    for module_name, funcs in _JSON_FIELDS.items():
        module = importlib.import_module(module_name)
        for func_name, field_name in funcs.items():
            original = getattr(module, func_name)
            if getattr(original, "anatomark_checked", False):
                continue
            signature = inspect.signature(original)

            def wrapper(*args: Any, __f=original, __sig=signature, __field=field_name, **kwargs: Any) -> Any:
                value = __sig.bind_partial(*args, **kwargs).arguments.get(__field)
                problem = json_object_problem(value, __field)
                if problem:
                    raise HTTPException(status_code=422, detail=problem)
                return __f(*args, **kwargs)

            functools.update_wrapper(wrapper, original)
            wrapper.anatomark_checked = True  # type: ignore[attr-defined]
            setattr(module, func_name, wrapper)
            n += 1
    return n


def harden_server(app: Any) -> Path:
    """Server start (``on_init_complete``): a private upload folder and the request guard; returns the folder.

    MONAI Label writes every upload with :func:`tempfile.NamedTemporaryFile`; pointing :data:`tempfile.tempdir` at a
    fresh ``0700`` folder makes "a file in that folder" mean "an upload of this server" (see
    :func:`resolve_infer_image`). App options: ``max_upload_mb`` (default 200), ``allow_model_upload`` (false).
    """
    from monailabel.utils.others.generic import strtobool

    fix_token_decoding()
    check_endpoint_json_fields()
    upload_dir = Path(tempfile.mkdtemp(prefix="anatomark-uploads-")).resolve()
    tempfile.tempdir = str(upload_dir)
    atexit.register(shutil.rmtree, str(upload_dir), True)
    conf = getattr(app, "conf", {}) or {}
    web = sys.modules.get("monailabel.app")
    if web is not None and hasattr(web, "app"):
        install_guard(
            web.app,
            max_upload_bytes=int(float(conf.get("max_upload_mb", DEFAULT_MAX_UPLOAD_MB)) * 1e6),
            local_datastore=not str(app.studies).startswith(("http://", "https://")),
            allow_model_upload=bool(strtobool(str(conf.get("allow_model_upload", "false")))),
            validator=app_request_validator(app),
        )
    else:
        logger.warning("monailabel.app is not loaded: the request guard is not installed")
    return upload_dir
