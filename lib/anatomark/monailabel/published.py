"""Served model weights that training may replace while the server runs (see :class:`PublishedModel`)."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock

from anatomark.errors import AnatomarkError, ModelNotFoundError
from anatomark.model import LandmarkModel, load_model
from anatomark.paths import atomic_write

logger = logging.getLogger(__name__)

#: Published versions kept beside the published weights (the served one included); the shipped weights come on top.
DEFAULT_KEEP_VERSIONS = 5
#: Publish/rollback events kept in ``versions.json``.
MAX_LOG = 100


class VersionConflictError(AnatomarkError):
    """The served model is not the one a publication expected (replaced or rolled back meanwhile)."""


def default_device() -> str:
    """``cuda`` when a GPU is visible, else ``cpu``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def file_version(path: str | Path) -> str:
    """Short content hash of a weights file: the model version reported with every result."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:12]


def _stat_key(path: Path) -> tuple[str, int, int, int]:
    """What says a weights file changed: path, inode (a publish replaces the file), mtime and size."""
    st = path.stat()
    return (str(path), st.st_ino, st.st_mtime_ns, st.st_size)


class PublishedModel:
    """A model whose weights may be replaced while the server runs.

    Reads ``published_path`` when it exists (weights fine-tuned by the server), else ``shipped_path``; reloads
    when the file (path, mtime or size) changes, so a training run that publishes new weights is served without
    a restart. A broken new file is logged and the previous model kept.

    Versions: :meth:`publish` keeps every published file as ``<name>.versions/<version>.pt`` beside the published
    weights (the last ``keep``, default :data:`DEFAULT_KEEP_VERSIONS`) and lists them in
    ``<name>.versions/versions.json`` (with a log of publish/rollback events); :meth:`rollback` serves an earlier
    one again (or the shipped weights). Both hold a file lock, so a training subprocess and ``anatomark served
    --rollback`` never interleave; the server reloads the file on its next request.

    Args:
        name: model name (as in ``/info/``).
        shipped_path: weights shipped with the app (read-only), may be ``None``.
        published_path: where training publishes (atomically) the best fine-tuned weights.
        device: torch device; default CUDA when available.
    """

    def __init__(self, name: str, shipped_path: Path | None, published_path: Path, device: str | None = None):
        self.name = name
        self.shipped_path = Path(shipped_path) if shipped_path else None
        self.published_path = Path(published_path)
        self.device = device or default_device()
        self._lock = threading.Lock()
        self._key: tuple[str, int, int, int] | None = None
        self._model: LandmarkModel | None = None
        self._version = ""
        self._version_of: tuple[tuple[str, int, int, int] | None, str] = (None, "")

    def path(self) -> Path | None:
        if self.published_path.is_file():
            return self.published_path
        if self.shipped_path and self.shipped_path.is_file():
            return self.shipped_path
        return None

    def exists(self) -> bool:
        return self.path() is not None

    def get(self) -> tuple[LandmarkModel, str]:
        """The current model and its version (reloaded if the weights file changed)."""
        with self._lock:
            path = self.path()
            if path is None:
                raise ModelNotFoundError(f"Model {self.name!r} has no weights file ({self.shipped_path})")
            key = _stat_key(path)
            if key != self._key:
                try:
                    model = load_model(path, device=self.device)
                    version = file_version(path)
                except ModelNotFoundError:
                    fallback = self.shipped_path
                    if self._model is None and path != fallback and fallback and fallback.is_file():
                        # e.g. a published file damaged outside the server: serve the shipped weights, say so
                        logger.exception(f"Could not load {path}; serving the shipped weights {fallback}")
                        model, version = load_model(fallback, device=self.device), file_version(fallback)
                        self._model, self._version, self._key = model, version, key
                        return model, version
                    if self._model is None:
                        raise
                    logger.exception(f"Could not reload {path}; keeping model version {self._version}")
                else:
                    logger.info(f"Loaded model {self.name} version {version} from {path}")
                    self._model, self._version = model, version
                self._key = key
            assert self._model is not None
            return self._model, self._version

    def publish(
        self,
        weights: str | Path,
        source: str = "",
        info: dict[str, Any] | None = None,
        keep: int = DEFAULT_KEEP_VERSIONS,
        expect_version: str | None = None,
    ) -> dict[str, Any]:
        """Serve ``weights``: copy them to the published path atomically (readers never see a half-written file) and
        keep them as a version (the last ``keep`` published versions stay, see :meth:`versions`).

        Args:
            weights: a model file.
            source: what made it (``fine-tune``, ``manual``, ...), recorded with the version.
            info: extra numbers recorded with the version (e.g. the gate's MREs).
            keep: how many published versions to keep (at least 1: the one now served).
            expect_version: publish only if this is still the served version (a training checks the model it was
                fine-tuned from was not replaced or rolled back meanwhile).

        Returns:
            the version record.

        Raises:
            VersionConflictError: the served version is not ``expect_version``.
        """
        weights = Path(weights)
        with self._versions_lock():
            served = self.current_version()
            if expect_version is not None and served != expect_version:
                raise VersionConflictError(
                    f"Model {self.name}: the served version changed from {expect_version} to {served} meanwhile"
                )
            index = self._read_index()
            self._adopt_unrecorded(index)
            version = file_version(weights)
            kept = self.versions_dir / f"{version}.pt"
            if not kept.is_file():
                with atomic_write(kept) as tmp:
                    shutil.copyfile(weights, tmp)
            self._install(kept)
            rec = {
                "version": version,
                "file": kept.name,
                "published": time.strftime("%Y-%m-%d %H:%M:%S"),
                "source": source,
                **({"info": info} if info else {}),
            }
            index["versions"].append(rec)
            self._prune(index, keep)
            self._log(index, {"event": "publish", "version": version, "replaced": served, "source": source})
            self._write_index(index)
        logger.info(f"Published model {self.name} version {version} ({source or 'no source given'})")
        return rec

    def versions(self) -> list[dict[str, Any]]:
        """The kept published versions, oldest first; the last one is the served one (unless the published file was
        removed or replaced outside :meth:`publish` / :meth:`rollback`). Each: ``version``, ``file`` (in
        :attr:`versions_dir`), ``published`` (local time), ``source``, optional ``info``."""
        return self._read_index()["versions"]

    def current_version(self) -> str | None:
        """Version of the file that is served now (the published one, else the shipped one); ``None`` if none.

        The content hash is computed again only when the file changed (:func:`_stat_key`; ``/info/`` asks for it on
        every call).
        """
        path = self.path()
        if path is None:
            return None
        key = _stat_key(path)
        if self._version_of[0] != key:
            self._version_of = (key, file_version(path))
        return self._version_of[1]

    def rollback(self, to: str | None = None) -> dict[str, Any]:
        """Serve an earlier version again; the versions after it are dropped (their files deleted).

        Args:
            to: a kept version (see :meth:`versions`), or ``"shipped"`` (remove the published file: the shipped
                weights are served). Default: the version published before the served one (the shipped weights
                when the served one is the only kept version).

        Returns:
            ``{"from": <version served before>, "to": <version served now>, "dropped": [versions]}``.

        Raises:
            AnatomarkError: unknown version, nothing to roll back, or no shipped weights to fall back to.
        """
        with self._versions_lock():
            index = self._read_index()
            served = self.current_version()
            self._adopt_unrecorded(index)
            stack = index["versions"]
            if to is None:
                if not self.published_path.is_file():
                    raise AnatomarkError(f"Model {self.name}: the shipped weights are served; nothing to roll back")
                target = len(stack) - 2  # -1: the shipped weights
            elif to == "shipped":
                target = -1
            else:
                hits = [i for i, r in enumerate(stack) if r["version"] == to or r["version"].startswith(to)]
                if not hits:
                    known = ", ".join(r["version"] for r in stack) or "(none)"
                    raise AnatomarkError(f"Model {self.name}: no kept version {to!r}; kept: {known}, or 'shipped'")
                target = hits[-1]
            if target < 0 and not (self.shipped_path and self.shipped_path.is_file()):
                raise AnatomarkError(f"Model {self.name}: no shipped weights ({self.shipped_path}) to roll back to")
            dropped = stack[target + 1 :]
            del stack[target + 1 :]
            if target >= 0:
                kept = self.versions_dir / stack[target]["file"]
                if file_version(kept) != stack[target]["version"]:
                    raise AnatomarkError(f"Model {self.name}: kept file {kept} is damaged; not rolled back")
                self._install(kept)
            else:
                self.published_path.unlink(missing_ok=True)
            now = self.current_version()
            self._delete_unreferenced(index, dropped)
            self._log(
                index, {"event": "rollback", "from": served, "to": now, "dropped": [r["version"] for r in dropped]}
            )
            self._write_index(index)
        logger.info(f"Rolled model {self.name} back from {served} to {now}")
        return {"from": served, "to": now, "dropped": [r["version"] for r in dropped]}

    # ------------------------------------------------------------------ version store
    @property
    def versions_dir(self) -> Path:
        """``<published dir>/<name>.versions/``: ``versions.json`` and the kept files ``<version>.pt``."""
        return self.published_path.with_name(f"{self.published_path.stem}.versions")

    def _versions_lock(self) -> FileLock:
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.versions_dir / ".lock"))

    def _read_index(self) -> dict[str, Any]:
        p = self.versions_dir / "versions.json"
        try:
            doc = json.loads(p.read_text()) if p.is_file() else {}
        except (OSError, json.JSONDecodeError):
            logger.exception(f"Unreadable {p}; starting a new version list")
            doc = {}
        return {"versions": list(doc.get("versions", [])), "log": list(doc.get("log", []))}

    def _write_index(self, index: dict[str, Any]) -> None:
        with atomic_write(self.versions_dir / "versions.json") as tmp:
            tmp.write_text(json.dumps(index, indent=1))

    def _install(self, kept: Path) -> None:
        with atomic_write(self.published_path) as tmp:
            shutil.copyfile(kept, tmp)

    def _adopt_unrecorded(self, index: dict[str, Any]) -> None:
        """A published file that is not the last kept version (published before versions were kept, or copied in by
        hand) becomes a kept version first, so that a rollback can return to it."""
        if not self.published_path.is_file():
            return
        version = file_version(self.published_path)
        if index["versions"] and index["versions"][-1]["version"] == version:
            return
        kept = self.versions_dir / f"{version}.pt"
        if not kept.is_file():
            with atomic_write(kept) as tmp:
                shutil.copyfile(self.published_path, tmp)
        ts = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.published_path.stat().st_mtime))
        index["versions"].append({"version": version, "file": kept.name, "published": ts, "source": "unrecorded"})

    def _prune(self, index: dict[str, Any], keep: int) -> None:
        keep = max(1, int(keep))
        stack = index["versions"]
        dropped = stack[:-keep] if len(stack) > keep else []
        del stack[: len(dropped)]
        self._delete_unreferenced(index, dropped)

    def _delete_unreferenced(self, index: dict[str, Any], dropped: list[dict[str, Any]]) -> None:
        referenced = {r["file"] for r in index["versions"]}
        for r in dropped:
            if r["file"] not in referenced:
                (self.versions_dir / r["file"]).unlink(missing_ok=True)

    @staticmethod
    def _log(index: dict[str, Any], event: dict[str, Any]) -> None:
        index["log"] = [*index["log"], {"ts": time.strftime("%Y-%m-%d %H:%M:%S"), **event}][-MAX_LOG:]
