"""Request guard for the MONAI Label server: an ASGI middleware refusing bad requests with a clear 4xx before MONAI
Label handles them.

MONAI Label 0.8.5's endpoints copy every upload to a temp file before the app sees it, answer malformed ``params``
JSON with a 500, take image/label ids and tags straight into file paths, let any caller replace or delete the
served weights (``PUT``/``DELETE /model/<name>``) and unpack uploaded archives (``PUT /session/?uncompress=true``).
:class:`RequestGuard` is an ASGI middleware placed in front of those endpoints:

- request bodies above ``max_upload_bytes`` are refused with 413, from ``Content-Length`` before any byte is read,
  or while streaming (chunked uploads); the refused body is read and discarded (up to a cap) so that the client
  sees the 413 instead of a reset connection;
- ids (``image``, ``label``, ``id``, ``session_id``) and tags are checked as in
  :mod:`anatomark.monailabel.validation` (400); URL paths with ``..`` segments are refused (400);
- the app's validator (:func:`anatomark.monailabel.validation.app_request_validator`) runs for authenticated
  requests: unknown tasks (404), datastore links the link policy does not follow (403), task options (422);
- endpoints that can write outside the datastore or replace weights unchecked are refused (403): model upload and
  delete, archive uploads to sessions (``uncompress``), the DICOMweb proxy when the datastore is a local folder,
  ``/reload``;
- user errors raised inside MONAI Label's endpoints become 4xx (:func:`exception_status`): malformed JSON in form
  fields (422), unknown image/label ids (404), :class:`~anatomark.errors.AnatomarkError` (422), a file name over the
  file system's limit (``ENAMETOOLONG``, e.g. an upload name with many suffixes: 400), the identity provider refusing
  or failing on ``/auth/token`` (401 / 503), and MONAI Label's "neither image nor file" 500 on ``/infer`` (400).

Everything else passes through unchanged. :func:`install_guard` adds the guard to a running FastAPI app (MONAI
Label builds its app before loading ours, so the app installs it from ``on_init_complete`` through
:func:`anatomark.monailabel.patches.harden_server`).
"""

from __future__ import annotations

import errno
import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qsl

from anatomark.errors import AnatomarkError
from anatomark.monailabel.validation import ID_PARAMS, NAME_MAX, Validator, id_problem, tag_problem

logger = logging.getLogger(__name__)

#: ASGI types
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

DEFAULT_MAX_UPLOAD_MB = 200.0
#: a refused body is read and discarded up to this many bytes (then the connection is closed)
DRAIN_CAP_BYTES = 1 << 30


def exception_status(exc: BaseException, path: str = "") -> tuple[int, str] | None:
    """Map a user error escaping from a MONAI Label endpoint to ``(status, detail)``.

    Args:
        exc: the exception.
        path: the request's URL path (errors of the identity provider are mapped on ``/auth/token`` only).

    Returns:
        ``(status, detail)``, or ``None`` for a real 500 (the exception propagates).
    """
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


def authenticated(headers: dict[str, str]) -> bool:
    """Whether MONAI Label's authentication is off, or the request carries a token it accepts.

    Args:
        headers: the request headers, names in lower case.
    """
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
        validator: Validator | None = None,
    ) -> None:
        self.app = app
        self.validator = validator
        self.max_upload_bytes = int(max_upload_bytes)
        self.local_datastore = local_datastore
        self.allow_model_upload = allow_model_upload

    # ------------------------------------------------------------------ checks on the request line
    def refuse(self, method: str, path: str, query: list[tuple[str, str]]) -> tuple[int, str] | None:
        """``(status, detail)`` when the request must be refused before it reaches MONAI Label.

        Args:
            method: HTTP method.
            path: URL path.
            query: query parameters, in order (blank values kept).
        """
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
        """Check an HTTP request, then pass it on (counting its body) or answer the refusal."""
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

        if self.validator is not None and authenticated(headers):
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
            mapped = exception_status(e, path)
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

    Args:
        fastapi_app: the app (MONAI Label's ``monailabel.app.app``).
        **kwargs: :class:`RequestGuard`'s arguments.

    Returns:
        Whether it was installed now.
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
