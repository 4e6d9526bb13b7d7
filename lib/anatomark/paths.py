"""Where configuration and shipped models live.

Looked up in this order: the environment (``ANATOMARK_CONFIG_DIR``, ``ANATOMARK_MODEL_DIR``), the source checkout
the library runs from (``configs/``, ``apps/landmarks/model/``), then the copies a wheel installs as data files
(``<prefix>/share/anatomark/configs``, ``<prefix>/share/anatomark/models``, see ``setup.cfg``).
"""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: Repository root when the library runs from a source checkout (an editable install from ``lib/``).
REPO_ROOT = Path(__file__).resolve().parents[2]
#: Where a wheel installs the configs and the shipped models (``[options.data_files]`` of ``setup.cfg``).
SHARE_DIR = Path(sys.prefix) / "share" / "anatomark"
IN_CHECKOUT = (REPO_ROOT / "configs" / "app.yaml").is_file()
CONFIG_DIR = Path(
    os.environ.get("ANATOMARK_CONFIG_DIR") or (REPO_ROOT / "configs" if IN_CHECKOUT else SHARE_DIR / "configs")
)


def model_dir() -> Path:
    """Directory holding shipped/published model weights (``<name>.pt``)."""
    env = os.environ.get("ANATOMARK_MODEL_DIR")
    if env:
        return Path(env)
    import yaml

    if not IN_CHECKOUT:
        return SHARE_DIR / "models"
    app_yaml = CONFIG_DIR / "app.yaml"
    app = (yaml.safe_load(app_yaml.read_text()) or {}) if app_yaml.is_file() else {}
    return REPO_ROOT / app.get("model_dir", "apps/landmarks/model")


def git_commit(paths: tuple[str, ...] = ("lib", "apps", "configs", "benchmarks")) -> str:
    """The repository's short HEAD commit, ``"<sha> (+uncommitted changes)"`` when ``paths`` have uncommitted changes.

    Recorded in model files and benchmark reports; ``"unknown"`` outside a git checkout.
    """
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, check=True).stdout

    try:
        sha = git("rev-parse", "--short", "HEAD").strip()
        dirty = git("status", "--porcelain", "--", *paths).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{sha} (+uncommitted changes in {', '.join(paths)})" if dirty else sha


def cache_dir() -> Path:
    """Directory for cached preprocessed data (``ANATOMARK_CACHE`` overrides)."""
    return Path(os.environ.get("ANATOMARK_CACHE", Path.home() / ".cache" / "anatomark"))


@contextmanager
def atomic_write(path: str | Path, fsync: bool = False, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one step, on error it is removed.

    Readers never see a half-written file, and a failed write leaves the old file (or none) in place. The file gets
    the permissions of any newly created file (``0o666`` minus the umask, e.g. ``0644``), not ``mkstemp``'s private
    ``0600``: models, reports and DICOM files are meant to be read by others (a PACS upload, a web server).

    Args:
        path: the file to write.
        fsync: also flush the written file to disk before the rename and the folder after it, so that a power
            loss or ``kill -9`` leaves the old or the new file, never a torn or lost one.
        suffix: the temporary file's suffix (default: ``path``'s last suffix, so writers that choose a format by
            the extension pick the right one), e.g. ``".part"`` for a name no file watcher matches.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes[-1:]) if suffix is None else suffix
    while True:  # mkstemp's unique name, but created with the default mode so that the umask applies
        tmp = str(path.parent / f".tmp-{secrets.token_hex(6)}{suffix}")
        try:
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o666)
        except FileExistsError:
            continue
        break
    os.close(fd)
    try:
        yield Path(tmp)
        if fsync:
            _fsync(tmp)
        os.replace(tmp, path)
        if fsync:
            _fsync(path.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _fsync(path: str | Path) -> None:
    """Flush a file's (or a folder's) data to disk; a folder that cannot be synced on this file system is skipped."""
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # pragma: no cover - directories cannot be fsynced on some file systems
        if not os.path.isdir(path):
            raise
