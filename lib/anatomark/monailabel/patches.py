"""Everything of anatomark that patches MONAI Label or reads its internals, tied to monailabel 0.8.5.

Written against ``monailabel`` :data:`MONAILABEL_VERSION` (the version ``setup.cfg`` pins). Each function here
first calls :func:`require_monailabel_version`, which raises :class:`MonaiLabelVersionError` (the server does not
start) when another version is installed: these patches replace module attributes and read private attributes by
name, and on another version they would silently patch nothing or the wrong thing.

- :func:`fix_token_decoding`: ``auth.from_token`` with PyJWT 2 (``algorithms``), 503 when the identity provider is
  down;
- :func:`check_endpoint_json_fields`: 422 instead of 500 for a JSON form field that is not an object;
- :func:`one_training_at_a_time`: 409 for ``POST /train`` while a training is queued or running
  (:func:`training_in_progress`, :func:`busy_detail`);
- :func:`use_private_upload_dir`: the process-wide :data:`tempfile.tempdir` change that makes "a file in that
  folder" mean "an upload of this server";
- :func:`app_tasks`, :func:`server_mode`, :func:`train_tasks`, :func:`queue_training`, :func:`web_app`: the app's
  task lists, server mode, task queue and FastAPI app, which MONAI Label keeps in private attributes or
  module-level state;
- :func:`harden_server`: all of the above at server start, with the request guard
  (:mod:`anatomark.monailabel.middleware`).
"""

from __future__ import annotations

import atexit
import functools
import importlib
import inspect
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from anatomark.monailabel.middleware import DEFAULT_MAX_UPLOAD_MB, install_guard
from anatomark.monailabel.validation import app_request_validator, json_object_problem

logger = logging.getLogger(__name__)

#: The monailabel version these patches are written for (and ``setup.cfg`` pins).
MONAILABEL_VERSION = "0.8.5"


class MonaiLabelVersionError(RuntimeError):
    """The installed monailabel is not :data:`MONAILABEL_VERSION`: the patches would not fit it."""


@functools.lru_cache(maxsize=1)
def installed_monailabel_version() -> str:
    """The installed monailabel's version (``monailabel.__version__``)."""
    import monailabel

    return str(getattr(monailabel, "__version__", "unknown"))


def require_monailabel_version() -> None:
    """Raise :class:`MonaiLabelVersionError` unless monailabel :data:`MONAILABEL_VERSION` is installed.

    Raises:
        MonaiLabelVersionError: another version (the message says which, and what to do).
    """
    installed = installed_monailabel_version()
    if installed != MONAILABEL_VERSION:
        raise MonaiLabelVersionError(
            f"anatomark's MONAI Label patches (anatomark/monailabel/patches.py) are written for monailabel "
            f"{MONAILABEL_VERSION}, but monailabel {installed} is installed; install it with "
            f"pip install 'monailabel=={MONAILABEL_VERSION}', or port the patches to {installed} first"
        )


# ---------------------------------------------------------------------------------------------------- internals read
#: MONAI Label app attribute holding each kind of task (``MONAILabelApp.__init__``)
_TASK_ATTRIBUTES = {
    "infer": "_infers",
    "train": "_trainers",
    "scoring": "_scoring_methods",
    "strategy": "_strategies",
}


def app_tasks(app: Any, kind: str) -> Mapping[str, Any]:
    """The tasks of one kind of a MONAI Label app, by name.

    Args:
        app: the ``MONAILabelApp``.
        kind: ``infer``, ``train``, ``scoring`` or ``strategy``.

    Returns:
        Name -> task (the app's own dictionary; do not change it).
    """
    require_monailabel_version()
    return getattr(app, _TASK_ATTRIBUTES[kind])


def server_mode(app: Any) -> bool:
    """Whether the app runs in a server (``start_server``), not in a training/infer subprocess or a script."""
    require_monailabel_version()
    return bool(getattr(app, "_server_mode", False))


def web_app() -> Any | None:
    """MONAI Label's FastAPI app (``monailabel.app.app``) when the server has loaded it, else ``None``."""
    web = sys.modules.get("monailabel.app")
    return web.app if web is not None and hasattr(web, "app") else None


def train_tasks(statuses: Iterable[str] = ("SUBMITTED", "RUNNING")) -> list[dict[str, Any]]:
    """This server's training tasks (MONAI Label's task records) with one of ``statuses``, oldest first."""
    require_monailabel_version()
    from monailabel.utils.async_tasks.utils import tasks

    wanted = set(statuses)
    return [t for t in tasks("train") if t.get("status") in wanted]


def queue_training(request: dict[str, Any]) -> tuple[str | None, bool]:
    """Queue a training task as ``POST /train/<model>?enqueue=true`` does.

    Args:
        request: the train request (``model``, options).

    Returns:
        ``(task id or None, whether a training process was already running)``.
    """
    require_monailabel_version()
    from monailabel.utils.async_tasks.task import AsyncTask
    from monailabel.utils.async_tasks.utils import processes

    task, _ = AsyncTask.run("train", request=request, params={}, enqueue=True)
    return (task["id"] if task else None), bool(processes("train"))


# ---------------------------------------------------------------------------------------------------- /train policy
def training_in_progress() -> dict[str, Any] | None:
    """The training task that is queued (``SUBMITTED``) or ``RUNNING`` in this server, if any."""
    return next(iter(train_tasks()), None)


def busy_detail(task: Mapping[str, Any]) -> str:
    """The 409 message: which training runs, and what to do.

    Args:
        task: MONAI Label's record of the queued or running training.
    """
    what = "queued" if task.get("status") == "SUBMITTED" else "running"
    model = task.get("request", {}).get("model", "?")
    return (
        f"A training is already {what} (model {model}, task {task.get('id')}, since {task.get('start_ts')}); "
        "one training runs at a time. Wait until GET /train/ shows it finished, or stop it with DELETE /train/, "
        "then send POST /train/ again."
    )


def one_training_at_a_time() -> int:
    """Policy for concurrent training requests: ``POST /train/<model>`` (and the deprecated ``POST /train/``) while a
    training is queued or running answers **409** with :func:`busy_detail`, whatever ``enqueue`` says; otherwise the
    training starts (200).

    MONAI Label's own check only sees a training once its subprocess has started, so requests a few ms apart got 200
    (queued) or 429 at random. Its routes run on the event loop one at a time and call these helpers by module
    attribute, so replacing them is enough. Idempotent.

    Returns:
        How many endpoint helpers were wrapped now.
    """
    require_monailabel_version()
    import monailabel.endpoints.train as endpoint
    from fastapi import HTTPException

    n = 0
    for name in ("run_model", "run"):
        original = getattr(endpoint, name)
        if getattr(original, "anatomark_one_training", False):
            continue

        def guarded(*args: Any, __f=original, **kwargs: Any) -> Any:
            task = training_in_progress()
            if task is not None:
                raise HTTPException(status_code=409, detail=busy_detail(task))
            return __f(*args, **kwargs)

        functools.update_wrapper(guarded, original)
        guarded.anatomark_one_training = True  # type: ignore[attr-defined]
        setattr(endpoint, name, guarded)
        n += 1
    return n


# ---------------------------------------------------------------------------------------------------- auth
def fix_token_decoding(algorithms: list[str] | None = None) -> bool:
    """Make MONAI Label's bearer-token check work with PyJWT 2.

    ``monailabel.endpoints.user.auth.from_token`` (0.8.5) calls ``jwt.decode(token, key, options=...)`` without
    ``algorithms``; PyJWT 2 then raises ``DecodeError`` for every token, so with ``MONAI_LABEL_AUTH_ENABLE=true``
    even valid Keycloak tokens get 401. This replaces it with the same function passing ``algorithms`` (default
    ``RS256``, what Keycloak signs with; ``ANATOMARK_AUTH_ALGORITHMS`` overrides, comma-separated). Asymmetric
    algorithms only: the realm's public key must never be accepted as an HMAC secret. An identity provider that
    cannot be reached gives 503.

    Args:
        algorithms: accepted signature algorithms (default: ``ANATOMARK_AUTH_ALGORITHMS`` or ``RS256``).

    Returns:
        Whether the auth module was patched now.
    """
    require_monailabel_version()
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


# ---------------------------------------------------------------------------------------------------- JSON fields
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
    """Wrap MONAI Label's endpoint helpers so that a form field that is not a JSON object gets 422.

    They ``json.loads`` it and use it as a dict: ``[1, 2]`` or ``null`` gave a 500. The ``api_*`` routes look these
    helpers up by name at call time, so replacing the module attributes is enough. Idempotent.

    Returns:
        How many helpers were wrapped now.
    """
    require_monailabel_version()
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


# ---------------------------------------------------------------------------------------------------- uploads
def use_private_upload_dir() -> Path:
    """Point :data:`tempfile.tempdir` (process-wide) at a fresh ``0700`` folder, removed at exit.

    MONAI Label writes every upload with :func:`tempfile.NamedTemporaryFile`, so afterwards "a file in that folder"
    means "an upload of this server" (see :func:`anatomark.monailabel.validation.resolve_infer_image`).

    Returns:
        The folder (resolved).
    """
    require_monailabel_version()
    upload_dir = Path(tempfile.mkdtemp(prefix="anatomark-uploads-")).resolve()
    tempfile.tempdir = str(upload_dir)
    atexit.register(shutil.rmtree, str(upload_dir), True)
    return upload_dir


# ---------------------------------------------------------------------------------------------------- server start
def harden_server(app: Any) -> Path:
    """Server start (``on_init_complete``): the patches above, a private upload folder and the request guard.

    App options: ``max_upload_mb`` (default 200), ``allow_model_upload`` (false).

    Args:
        app: the MONAI Label app.

    Returns:
        The private upload folder (:func:`use_private_upload_dir`).

    Raises:
        MonaiLabelVersionError: monailabel is not :data:`MONAILABEL_VERSION`.
    """
    require_monailabel_version()
    from monailabel.utils.others.generic import strtobool

    fix_token_decoding()
    check_endpoint_json_fields()
    upload_dir = use_private_upload_dir()
    conf = getattr(app, "conf", {}) or {}
    web = web_app()
    if web is not None:
        install_guard(
            web,
            max_upload_bytes=int(float(conf.get("max_upload_mb", DEFAULT_MAX_UPLOAD_MB)) * 1e6),
            local_datastore=not str(app.studies).startswith(("http://", "https://")),
            allow_model_upload=bool(strtobool(str(conf.get("allow_model_upload", "false")))),
            validator=app_request_validator(app, lambda kind: app_tasks(app, kind)),
        )
    else:
        logger.warning("monailabel.app is not loaded: the request guard is not installed")
    return upload_dir
