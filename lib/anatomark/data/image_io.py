"""Read 2D X-rays with their pixel spacing.

Every reader returns an :class:`XrayImage` whose ``array`` is ``(H, W)`` float32 (rows = y, cols = x) and
whose ``spacing`` is ``(sx, sy)`` in mm per pixel. Landmark coordinates everywhere in anatomark are
``(x, y)`` pixel indices with the origin at the centre of the top-left pixel.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from anatomark.errors import ImageReadError
from anatomark.paths import atomic_write

RASTER_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
DICOM_EXTENSIONS = (".dcm", ".dicom")
NIFTI_EXTENSIONS = (".nii", ".nii.gz")
NRRD_EXTENSIONS = (".nrrd", ".nhdr")
SUPPORTED_EXTENSIONS = RASTER_EXTENSIONS + DICOM_EXTENSIONS + NIFTI_EXTENSIONS + NRRD_EXTENSIONS

#: Refuse images larger than this many pixels (a 20000 x 20000 upload would need GBs of RAM).
MAX_PIXELS = int(os.environ.get("ANATOMARK_MAX_PIXELS", 100_000_000))


@dataclass
class XrayImage:
    """A 2D X-ray.

    Attributes:
        array: ``(H, W)`` float32 intensities (gray; 8-bit RGB is converted to luma, other colour data averaged).
        spacing: ``(sx, sy)`` mm per pixel along x (columns) and y (rows).
        spacing_source: where the spacing came from: ``override``, ``file``, ``default`` or ``none``
            (``none`` means 1.0 was assumed and mm values are really pixels).
        origin: ``(x, y)`` position of the top-left pixel centre in LPS mm (0, 0 for raster files).
        path: source file, if any.
        meta: reader-specific details (bit depth, modality ...).
    """

    array: np.ndarray
    spacing: tuple[float, float] = (1.0, 1.0)
    spacing_source: str = "none"
    origin: tuple[float, float] = (0.0, 0.0)
    path: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        """``(H, W)``."""
        return tuple(self.array.shape)  # type: ignore[return-value]

    @property
    def size_wh(self) -> tuple[int, int]:
        return int(self.array.shape[1]), int(self.array.shape[0])


def image_extension(path: str | Path) -> str:
    name = str(path).lower()
    for ext in (".nii.gz",):
        if name.endswith(ext):
            return ext
    return Path(name).suffix


def load_image(
    path: str | Path,
    spacing: float | tuple[float, float] | None = None,
    default_spacing: tuple[float, float] | None = None,
) -> XrayImage:
    """Load a 2D X-ray and its pixel spacing.

    Args:
        path: PNG/JPG/BMP/TIFF (8- or 16-bit, gray or RGB), DICOM, NIfTI or NRRD file.
        spacing: override ``(sx, sy)`` mm/px (or one number for both); wins over the file.
        default_spacing: used when neither ``spacing`` nor the file gives one (e.g. the landmark set's).

    Returns:
        The image with ``array`` of shape ``(H, W)``.

    Raises:
        ImageReadError: missing, unreadable, truncated, 3D or unsupported file.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"Image file not found: {path}")
    ext = image_extension(path)
    if ext not in SUPPORTED_EXTENSIONS:
        raise ImageReadError(
            f"Unsupported image type {ext or '(no extension)'!r} for {path.name}; "
            f"use one of {', '.join(SUPPORTED_EXTENSIONS)}"
        )
    try:
        if ext in RASTER_EXTENSIONS:
            img = _read_raster(path)
        elif ext in DICOM_EXTENSIONS:
            img = _read_dicom(path)
        elif ext in NIFTI_EXTENSIONS:
            img = _read_nifti(path)
        else:
            img = _read_nrrd(path)
    except ImageReadError:
        raise
    except _decompression_bomb_errors() as e:
        raise ImageReadError(
            f"Image {path.name} has more pixels than the {MAX_PIXELS} px limit (ANATOMARK_MAX_PIXELS) or looks like "
            f"a decompression bomb ({e}); downscale it first"
        ) from e
    except MemoryError as e:
        raise ImageReadError(f"Image {path.name} is too large to load") from e
    except Exception as e:  # noqa: BLE001 - third-party readers raise anything on corrupt input
        detail = str(e).replace(str(path), path.name)[:200]  # never echo server paths
        raise ImageReadError(
            f"Cannot read image {path.name}: the file is corrupt or truncated, or not a {ext} file ({detail}); "
            "export the X-ray again (PNG, JPEG, TIFF, DICOM, NIfTI or NRRD) and resend it"
        ) from e
    img.path = str(path)
    arr = img.array
    if arr.ndim != 2:
        raise ImageReadError(f"Image {path.name} has shape {arr.shape}; anatomark needs a single 2D X-ray")
    if arr.shape[0] < 8 or arr.shape[1] < 8:
        raise ImageReadError(f"Image {path.name} is only {arr.shape[1]}x{arr.shape[0]} px; too small for an X-ray")
    if not np.isfinite(arr).all():
        raise ImageReadError(f"Image {path.name} contains NaN or infinite values")
    if spacing is not None:
        sp = (float(spacing), float(spacing)) if np.isscalar(spacing) else tuple(float(s) for s in spacing)
        img.spacing, img.spacing_source = sp, "override"  # type: ignore[assignment]
    elif img.spacing_source != "file" and default_spacing is not None:
        img.spacing, img.spacing_source = (float(default_spacing[0]), float(default_spacing[1])), "default"
    if not all(s > 0 for s in img.spacing):
        raise ImageReadError(f"Image {path.name} has a non-positive pixel spacing {img.spacing}")
    return img


def _decompression_bomb_errors() -> tuple[type[BaseException], ...]:
    from PIL import Image

    return (Image.DecompressionBombError, Image.DecompressionBombWarning)


def _check_size(w: int, h: int, name: str) -> None:
    if w * h > MAX_PIXELS:
        raise ImageReadError(
            f"Image {name} is {w}x{h} px, more than the {MAX_PIXELS} px limit (ANATOMARK_MAX_PIXELS); downscale it first"
        )


def _read_raster(path: Path) -> XrayImage:
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as im:
            _check_size(im.width, im.height, path.name)
            im.load()
            mode = im.mode
            if getattr(im, "n_frames", 1) > 1:
                raise ImageReadError(f"Image {path.name} has {im.n_frames} frames; anatomark needs a single 2D X-ray")
            if mode in ("P", "PA", "1", "LA", "CMYK", "YCbCr", "HSV", "LAB"):
                im = im.convert("RGB") if mode not in ("1", "LA") else im.convert("L")
            if im.mode in ("RGB", "RGBA"):
                im = im.convert("L")  # ITU-R 601 luma in C (fast); exact for gray stored as R=G=B
            arr = np.asarray(im)
    bits = 16 if arr.dtype in (np.uint16, np.int32) and arr.max(initial=0) > 255 else 8
    if arr.ndim == 3:
        arr = arr[..., :3].astype(np.float32).mean(axis=-1)  # RGB(A) -> gray; alpha dropped
    return XrayImage(arr.astype(np.float32), meta={"mode": mode, "bits": bits})


def _read_dicom(path: Path) -> XrayImage:
    import pydicom

    ds = pydicom.dcmread(str(path))
    if "PixelData" not in ds:
        raise ImageReadError(f"DICOM file {path.name} holds no pixel data")
    rows, cols = int(ds.Rows), int(ds.Columns)
    _check_size(cols, rows, path.name)
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ImageReadError(
            f"DICOM file {path.name} has {frames} frames; anatomark reads single 2D X-rays. Send one frame "
            "(a single radiograph), not a multi-frame series or volume"
        )
    arr = ds.pixel_array.astype(np.float32)
    if arr.ndim == 3:  # colour secondary capture
        arr = arr[..., :3].mean(axis=-1)
    slope = float(getattr(ds, "RescaleSlope", 1) or 1)
    intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
    arr = arr * slope + intercept
    if str(getattr(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        arr = arr.max() + arr.min() - arr  # display convention: bone bright
    spacing, source = (1.0, 1.0), "none"
    for tag in ("PixelSpacing", "ImagerPixelSpacing"):
        val = getattr(ds, tag, None)
        if val is not None and len(val) == 2 and float(val[0]) > 0 and float(val[1]) > 0:
            spacing, source = (float(val[1]), float(val[0])), "file"  # DICOM gives (row, column) spacing
            break
    origin = (0.0, 0.0)
    ipp = getattr(ds, "ImagePositionPatient", None)
    if ipp is not None and len(ipp) >= 2:
        origin = (float(ipp[0]), float(ipp[1]))
    meta = {"modality": str(getattr(ds, "Modality", "")), "bits": int(getattr(ds, "BitsStored", 0) or 0)}
    return XrayImage(arr, spacing=spacing, spacing_source=source, origin=origin, meta=meta)


def _check_2d_shape(shape: tuple[int, ...], name: str) -> None:
    """Refuse a 3D volume from its header, before its voxels are read (the test mirrors :func:`_squeeze_2d`)."""
    dims = [int(s) for s in shape]
    if len(dims) == 3 and dims[2] in (3, 4) and dims[0] > 8 and dims[1] > 8:
        return  # RGB(A) stored as a vector dimension
    while len(dims) > 2 and dims[-1] == 1:
        dims.pop()
    if len(dims) != 2:
        raise ImageReadError(
            f"Image {name} is a volume of shape {tuple(shape)}; anatomark reads single 2D X-rays. Send one 2D image "
            "(a radiograph, or one slice exported as 2D), not a CT/MR volume or a series"
        )


def _squeeze_2d(data: np.ndarray, name: str) -> np.ndarray:
    data = np.asarray(data)
    if data.ndim == 3 and data.shape[2] in (3, 4) and data.shape[0] > 8 and data.shape[1] > 8:
        data = data[..., :3].mean(axis=-1)  # RGB stored as a vector dimension
    while data.ndim > 2 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 2:
        raise ImageReadError(f"Image {name} has shape {data.shape}; anatomark needs a single 2D X-ray")
    return data


def _read_nifti(path: Path) -> XrayImage:
    import nibabel as nib

    nii = nib.load(str(path))
    _check_2d_shape(nii.shape, path.name)
    _check_size(int(nii.shape[0]), int(nii.shape[1]) if len(nii.shape) > 1 else 1, path.name)
    data = _squeeze_2d(np.asanyarray(nii.dataobj), path.name)  # indexed [i (x), j (y)]
    zooms = nii.header.get_zooms()
    spacing = (float(zooms[0]), float(zooms[1]))
    source = "file" if spacing != (1.0, 1.0) else "none"
    return XrayImage(data.T.astype(np.float32), spacing=spacing, spacing_source=source, meta={"format": "nifti"})


def _read_nrrd(path: Path) -> XrayImage:
    import nrrd

    header = nrrd.read_header(str(path))
    sizes = [int(s) for s in header.get("sizes", [])]
    spatial = sizes[1:] if len(sizes) >= 3 and sizes[0] in (3, 4) else sizes  # drop a leading vector (RGB) axis
    _check_2d_shape(tuple(spatial), path.name)
    if len(spatial) >= 2:
        _check_size(spatial[0], spatial[1], path.name)
    data, header = nrrd.read(str(path))  # index order 'F': data[x, y]
    data = _squeeze_2d(data, path.name)
    spacing, source = (1.0, 1.0), "none"
    dirs = header.get("space directions")
    if dirs is not None:
        norms = []
        for d in dirs:
            v = np.asarray(d, dtype=np.float64) if d is not None else None
            if v is not None and v.size and np.all(np.isfinite(v)):
                norms.append(float(np.linalg.norm(v)))
        if len(norms) >= 2:
            spacing, source = (norms[0], norms[1]), "file"
    elif "spacings" in header:
        sp = np.asarray(header["spacings"], dtype=np.float64)
        if sp.size >= 2 and np.all(np.isfinite(sp[:2])):
            spacing, source = (float(sp[0]), float(sp[1])), "file"
    return XrayImage(data.T.astype(np.float32), spacing=spacing, spacing_source=source, meta={"format": "nrrd"})


def save_png(array: np.ndarray, path: str | Path) -> Path:
    """Write a ``(H, W)`` label map or 8-bit image as PNG, atomically (never a half-written file).

    Values up to 255 are stored as 8-bit, larger as 16-bit.
    """
    from PIL import Image

    path = Path(path)
    arr = np.asarray(array)
    if arr.ndim == 2:
        arr = arr.astype(np.uint16 if arr.max(initial=0) > 255 else np.uint8)
    else:
        arr = arr.astype(np.uint8)
    with atomic_write(path) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")
    return path
