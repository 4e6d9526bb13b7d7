"""Served model weights that training may replace while the server runs (see :class:`PublishedModel`)."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
from pathlib import Path

import torch

from anatomark.errors import ModelNotFoundError
from anatomark.model import LandmarkModel, load_model

logger = logging.getLogger(__name__)


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


class PublishedModel:
    """A model whose weights may be replaced while the server runs.

    Reads ``published_path`` when it exists (weights fine-tuned by the server), else ``shipped_path``; reloads
    when the file (path, mtime or size) changes, so a training run that publishes new weights is served without
    a restart. A broken new file is logged and the previous model kept.

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
        self._key: tuple[str, int, int] | None = None
        self._model: LandmarkModel | None = None
        self._version = ""

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
            st = path.stat()
            key = (str(path), st.st_mtime_ns, st.st_size)
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

    def publish(self, weights: str | Path) -> Path:
        """Copy ``weights`` to the published path atomically (readers never see a half-written file)."""
        dst = self.published_path
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
        shutil.copyfile(weights, tmp)
        os.replace(tmp, dst)
        return dst
