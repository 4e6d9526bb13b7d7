"""Reader for the AASCE 2019 / SpineWeb dataset 16 label layout (Wu et al., MICCAI 2017, "BoostNet").

::

    <root>/images/<name>.jpg              AP spine X-rays (no pixel spacing)
    <root>/labels/<name>.jpg.mat          MATLAB v5, key ``p2``: (68, 2) pixel (x, y), T1..L5, corners TL, TR, BL, BR
    <root>/labels/filenames.csv           one image name per line (the row order of the two CSVs below)
    <root>/labels/landmarks.csv           per row 68 x values then 68 y values, normalised by image width and height
    <root>/labels/angles.csv              per row the 3 Cobb angles (deg) in the challenge's column order PT, MT, TL/L

Points are returned as ``(68, 2)`` float arrays ``(x, y)`` in pixels of the image (x right, y down), the order of
the ``aasce2019_spine`` landmark set.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from anatomark.errors import AnnotationError


def is_aasce_dataset(root: str | Path) -> bool:
    """True when ``root`` has the AASCE ``labels/angles.csv`` + ``labels/filenames.csv`` layout."""
    root = Path(root)
    return (root / "labels" / "filenames.csv").is_file() and (root / "labels" / "angles.csv").is_file()


def read_aasce_mat(path: str | Path) -> np.ndarray:
    """Read one ``<name>.jpg.mat`` label: key ``p2`` -> ``(68, 2)`` (x, y) pixels.

    Raises:
        AnnotationError: file missing, unreadable, no ``p2`` or not 68 x 2.
    """
    from scipy.io import loadmat

    path = Path(path)
    if not path.is_file():
        raise AnnotationError(f"AASCE label not found: {path}")
    try:
        data = loadmat(str(path))
    except Exception as e:  # noqa: BLE001 - scipy raises several types for corrupt files
        raise AnnotationError(f"{path.name} is not a readable MATLAB file: {e}") from e
    if "p2" not in data:
        raise AnnotationError(
            f"{path.name} has no key 'p2' (keys: {sorted(k for k in data if not k.startswith('__'))})"
        )
    p = np.asarray(data["p2"], dtype=np.float64)
    if p.shape != (68, 2):
        raise AnnotationError(f"{path.name}: 'p2' has shape {p.shape}, expected (68, 2)")
    return p


def _read_rows(path: Path, ncol: int) -> list[list[float]]:
    if not path.is_file():
        raise AnnotationError(f"AASCE file not found: {path}")
    rows = []
    with path.open(newline="") as f:
        for line, row in enumerate(csv.reader(f), start=1):
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != ncol:
                raise AnnotationError(f"{path.name} line {line}: {len(row)} values, expected {ncol}")
            try:
                rows.append([float(c) for c in row])
            except ValueError as e:
                raise AnnotationError(f"{path.name} line {line}: non-numeric value") from e
    return rows


def read_aasce_filenames(root: str | Path) -> list[str]:
    path = Path(root) / "labels" / "filenames.csv"
    if not path.is_file():
        raise AnnotationError(f"AASCE file not found: {path}")
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]


def read_aasce_angles(root: str | Path) -> np.ndarray:
    """``labels/angles.csv`` -> ``(N, 3)`` degrees, in ``filenames.csv`` order."""
    return np.asarray(_read_rows(Path(root) / "labels" / "angles.csv", 3), dtype=np.float64).reshape(-1, 3)


def read_aasce_landmarks_csv(root: str | Path) -> np.ndarray:
    """``labels/landmarks.csv`` -> ``(N, 68, 2)`` *normalised* (x / W, y / H), in ``filenames.csv`` order."""
    rows = np.asarray(_read_rows(Path(root) / "labels" / "landmarks.csv", 136), dtype=np.float64)
    return np.stack([rows[:, :68], rows[:, 68:]], axis=-1)


def image_size_wh(path: str | Path) -> tuple[int, int]:
    """Width and height of an image file from its header (no pixel decoding)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return int(im.width), int(im.height)
    except (OSError, ValueError) as e:
        raise AnnotationError(f"Cannot read the size of image {path}: {e}") from e


def load_aasce(root: str | Path, source: str = "mat") -> list[dict[str, Any]]:
    """All annotated images of an AASCE folder.

    Args:
        root: dataset folder (layout above).
        source: ``"mat"`` (pixel labels ``labels/*.jpg.mat``) or ``"csv"`` (``landmarks.csv`` scaled back by each
            image's width and height).

    Returns:
        One dict per image in ``filenames.csv`` order: ``{"id": name, "image": path, "landmarks": (68, 2) px,
        "angles": (3,) deg from angles.csv, "size_wh": (W, H)}``.

    Raises:
        AnnotationError: missing files or row counts that disagree.
    """
    root = Path(root)
    if source not in ("mat", "csv"):
        raise AnnotationError(f"AASCE label source must be 'mat' or 'csv', got {source!r}")
    names = read_aasce_filenames(root)
    angles = read_aasce_angles(root)
    if len(angles) != len(names):
        raise AnnotationError(f"angles.csv has {len(angles)} rows but filenames.csv {len(names)}")
    norm = read_aasce_landmarks_csv(root) if source == "csv" else None
    if norm is not None and len(norm) != len(names):
        raise AnnotationError(f"landmarks.csv has {len(norm)} rows but filenames.csv {len(names)}")
    items = []
    for i, name in enumerate(names):
        img = root / "images" / name
        wh = image_size_wh(img)
        if norm is not None:
            pts = norm[i] * np.asarray(wh, dtype=np.float64)
        else:
            pts = read_aasce_mat(root / "labels" / f"{name}.mat")
        items.append({"id": name, "image": str(img), "landmarks": pts, "angles": angles[i], "size_wh": wh})
    return items
