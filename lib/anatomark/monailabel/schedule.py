"""Retraining schedule of the server, settable from a viewer and kept across restarts.

``GET /anatomark/schedule`` answers ``{"every_n_labels", "interval_hours", "source", "updated"}``;
``PUT /anatomark/schedule`` with JSON ``{"every_n_labels": int >= 0, "interval_hours": number >= 0}`` (either or
both; 0 = off) stores it in ``<state>/schedule.json`` (``<studies>/.anatomark`` for a local datastore) and answers the
same as GET; bad values answer 422. Once stored, the file takes precedence over the app options
``auto_train_every_n_labels`` / ``auto_train_interval`` (``source``: ``viewer``; before: ``conf``).

The routes are added to MONAI Label's FastAPI app (``monailabel.app.app``) when the app finishes its init
(:meth:`anatomark.monailabel.autotrain.AutoTrainer.serve`, which also runs the schedule), like the request guard
(:mod:`anatomark.monailabel.middleware`), whose ASGI middleware therefore also applies to them; they use MONAI Label's
own role checks (``RBAC``): reading needs the user role, changing the admin role (as ``POST /train``).
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anatomark.paths import atomic_write

logger = logging.getLogger(__name__)

#: Longest accepted interval (one year): a larger number is a unit mistake rather than a schedule.
MAX_INTERVAL_HOURS = 24 * 366.0
#: Largest accepted label count.
MAX_EVERY_N_LABELS = 1_000_000
KEYS = ("every_n_labels", "interval_hours")


class ScheduleError(ValueError):
    """A schedule value that is not accepted (the routes answer 422 with its message)."""


@dataclass
class Schedule:
    """When the server fine-tunes by itself.

    Attributes:
        every_n_labels: fine-tune after every N saved ``final`` labels (0 = off).
        interval_hours: every this many hours, fine-tune each model whose last training did not read the current
            final labels (0 = off).
        source: ``conf`` (the app options) or ``viewer`` (set through ``PUT /anatomark/schedule``).
        updated: UNIX time of the last ``PUT`` (``None`` for ``conf``).
    """

    every_n_labels: int = 0
    interval_hours: float = 0.0
    source: str = "conf"
    updated: float | None = None

    @property
    def interval_seconds(self) -> float:
        return self.interval_hours * 3600.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "every_n_labels": self.every_n_labels,
            "interval_hours": self.interval_hours,
            "source": self.source,
            "updated": self.updated,
        }


def parse_update(body: Any, current: Schedule) -> Schedule:
    """The schedule after applying a ``PUT`` body to ``current``.

    Raises:
        ScheduleError: not an object, unknown keys, no key, or a value that is not a non-negative number (an integer
            for ``every_n_labels``; booleans, strings and non-finite numbers refused).
    """
    if not isinstance(body, Mapping):
        raise ScheduleError('The schedule must be a JSON object {"every_n_labels": N, "interval_hours": H}')
    unknown = sorted(set(body) - set(KEYS))
    if unknown:
        raise ScheduleError(f"Unknown schedule key(s) {unknown}; use {', '.join(KEYS)}")
    if not any(k in body for k in KEYS):
        raise ScheduleError(f"Give at least one of {', '.join(KEYS)}")
    n, hours = current.every_n_labels, current.interval_hours
    if "every_n_labels" in body:
        v = body["every_n_labels"]
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= MAX_EVERY_N_LABELS:
            raise ScheduleError(
                f"every_n_labels must be an integer from 0 (off) to {MAX_EVERY_N_LABELS}, got {json.dumps(v)[:60]}"
            )
        n = int(v)
    if "interval_hours" in body:
        v = body["interval_hours"]
        ok = not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)
        if not ok or not 0 <= v <= MAX_INTERVAL_HOURS:
            raise ScheduleError(
                f"interval_hours must be a number from 0 (off) to {MAX_INTERVAL_HOURS:g}, got {json.dumps(v)[:60]}"
            )
        hours = float(v)
    return Schedule(every_n_labels=n, interval_hours=hours, source="viewer", updated=round(time.time(), 3))


class ScheduleStore:
    """The schedule of one server: the stored file if there is one, else the app options.

    Args:
        path: ``schedule.json`` (in the app's state folder).
        default: the schedule from the app options (``auto_train_every_n_labels``, ``auto_train_interval`` seconds).
        on_change: called with the new schedule after a ``PUT`` (the app wakes its scheduler).
    """

    def __init__(self, path: str | Path, default: Schedule, on_change: Callable[[Schedule], None] | None = None):
        self.path = Path(path)
        self.default = default
        self.on_change = on_change
        self._lock = threading.Lock()
        self._current = self._load()

    def _load(self) -> Schedule:
        if not self.path.is_file():
            return self.default
        try:
            doc = json.loads(self.path.read_text())
            s = parse_update({k: doc[k] for k in KEYS if k in doc}, self.default)
            s.updated = doc.get("updated", s.updated)
            return s
        except (OSError, ValueError, TypeError) as e:
            logger.error(f"Ignoring {self.path} ({e}); using the app options for the retraining schedule")
            return self.default

    def get(self) -> Schedule:
        return self._current

    def update(self, body: Any) -> Schedule:
        """Validate and store a ``PUT`` body; raises :class:`ScheduleError`."""
        with self._lock:
            new = parse_update(body, self._current)
            with atomic_write(self.path) as tmp:
                tmp.write_text(json.dumps(new.to_dict(), indent=1))
            self._current = new
        logger.info(f"Retraining schedule set: {new.to_dict()}")
        if self.on_change:
            self.on_change(new)
        return new


def add_schedule_routes(fastapi_app: Any, store: ScheduleStore) -> bool:
    """Add ``GET``/``PUT /anatomark/schedule`` to MONAI Label's FastAPI app (once; returns whether added)."""
    from fastapi import Body, Depends, HTTPException
    from monailabel.config import settings
    from monailabel.endpoints.user.auth import RBAC

    fastapi_app.state.anatomark_schedule = store  # a restarted app in the same process replaces the store
    if getattr(fastapi_app.state, "anatomark_schedule_routes", False):
        return False

    as_user = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER))
    as_admin = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ADMIN))
    json_body = Body(...)

    def current() -> ScheduleStore:
        return fastapi_app.state.anatomark_schedule

    async def get_schedule(user=as_user) -> dict[str, Any]:  # noqa: ANN001
        return current().get().to_dict()

    async def put_schedule(
        body: Any = json_body,
        user=as_admin,  # noqa: ANN001
    ) -> dict[str, Any]:
        try:
            return current().update(body).to_dict()
        except ScheduleError as e:
            raise HTTPException(status_code=422, detail=str(e)) from e

    fastapi_app.add_api_route(
        "/anatomark/schedule", get_schedule, methods=["GET"], summary="Retraining schedule", tags=["anatomark"]
    )
    fastapi_app.add_api_route(
        "/anatomark/schedule", put_schedule, methods=["PUT"], summary="Set the retraining schedule", tags=["anatomark"]
    )
    fastapi_app.state.anatomark_schedule_routes = True
    fastapi_app.openapi_schema = None  # regenerate /docs with the new routes
    return True
