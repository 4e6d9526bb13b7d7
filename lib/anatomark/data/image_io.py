"""Read 2D X-rays with their pixel spacing.

Every reader returns an :class:`XrayImage` whose ``array`` is ``(H, W)`` float32 (rows = y, cols = x) and
whose ``spacing`` is ``(sx, sy)`` in mm per pixel. Landmark coordinates everywhere in anatomark are
``(x, y)`` pixel indices with the origin at the centre of the top-left pixel.

Raster files are read as viewers show them: an EXIF ``Orientation`` tag (a JPEG stored sideways by a phone or a
scanner) is applied, so ``array`` and every point are in the upright frame (``XrayImage.exif_orientation`` keeps the
tag). Compressed DICOM (JPEG, JPEG Lossless, JPEG-LS, JPEG 2000) is decoded through pydicom's handlers; anatomark's
requirements install ``pylibjpeg`` with ``pylibjpeg-libjpeg`` and ``pylibjpeg-openjpeg`` for them.
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

#: ``XrayImage.spacing_source`` values that do not come from the file itself.
NON_FILE_SPACING_SOURCES = ("override", "default", "none")

#: Refuse images larger than this many pixels (a 20000 x 20000 upload would need GBs of RAM).
MAX_PIXELS = int(os.environ.get("ANATOMARK_MAX_PIXELS", 100_000_000))


@dataclass
class XrayImage:
    """A 2D X-ray.

    Attributes:
        array: ``(H, W)`` float32 intensities (gray; 8-bit RGB is converted to luma, other colour data averaged).
        spacing: ``(sx, sy)`` mm per pixel along x (columns) and y (rows).
        spacing_source: where the spacing came from: ``override``, ``default``, ``none`` (1.0 was assumed and mm
            values are really pixels), ``file``, or for DICOM a more precise file source:
            ``ImagerPixelSpacing/EstimatedRadiographicMagnificationFactor`` (detector spacing divided by the
            magnification factor, when the file has no PixelSpacing) or ``PixelSpacing (one value, isotropic)``
            (a non-standard one-value PixelSpacing, used for both axes; likewise a one-value ImagerPixelSpacing).
            :attr:`spacing_from_file` tells file sources from the others.
        origin: ``(x, y)`` position of the top-left pixel centre in LPS mm (0, 0 for raster files).
        path: source file, if any.
        meta: reader-specific details (bit depth, modality ...).
        exif_orientation: the EXIF ``Orientation`` tag (1..8) of a raster file, already applied to ``array``
            (``array`` is what viewers show; 1 = stored upright); ``None`` when the file has no valid tag.
    """

    array: np.ndarray
    spacing: tuple[float, float] = (1.0, 1.0)
    spacing_source: str = "none"
    origin: tuple[float, float] = (0.0, 0.0)
    path: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    exif_orientation: int | None = None

    @property
    def spacing_from_file(self) -> bool:
        """Whether :attr:`spacing` was read from the file (not overridden, defaulted or assumed)."""
        return self.spacing_source not in NON_FILE_SPACING_SOURCES

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
        path: PNG/JPG/BMP/TIFF (8- or 16-bit, gray or RGB; EXIF orientation applied), DICOM (uncompressed, RLE,
            JPEG, JPEG Lossless, JPEG-LS or JPEG 2000), NIfTI or NRRD file.
        spacing: override ``(sx, sy)`` mm/px (or one number for both); wins over the file.
        default_spacing: used when neither ``spacing`` nor the file gives one (e.g. the landmark set's).

    Returns:
        The image with ``array`` of shape ``(H, W)``.

    Raises:
        ImageReadError: missing, unreadable, truncated, 3D or unsupported file, or a compressed DICOM whose
            decoder is not installed (the message names the transfer syntax and the package).
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
    elif not img.spacing_from_file and default_spacing is not None:
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


#: EXIF/TIFF tag 0x0112.
_EXIF_ORIENTATION_TAG = 274
#: EXIF Orientation -> the transpose that shows the stored pixels upright (the table of PIL.ImageOps.exif_transpose).
_EXIF_TRANSPOSE = {
    2: "FLIP_LEFT_RIGHT",
    3: "ROTATE_180",
    4: "FLIP_TOP_BOTTOM",
    5: "TRANSPOSE",
    6: "ROTATE_270",
    7: "TRANSVERSE",
    8: "ROTATE_90",
}


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
            orientation = _exif_orientation(im)
            if orientation in _EXIF_TRANSPOSE:  # the pixels as viewers show them
                im = im.transpose(getattr(Image.Transpose, _EXIF_TRANSPOSE[orientation]))
            if mode in ("P", "PA", "1", "LA", "CMYK", "YCbCr", "HSV", "LAB"):
                im = im.convert("RGB") if mode not in ("1", "LA") else im.convert("L")
            if im.mode in ("RGB", "RGBA"):
                im = im.convert("L")  # ITU-R 601 luma in C (fast); exact for gray stored as R=G=B
            arr = np.asarray(im)
    bits = 16 if arr.dtype in (np.uint16, np.int32) and arr.max(initial=0) > 255 else 8
    if arr.ndim == 3:
        arr = arr[..., :3].astype(np.float32).mean(axis=-1)  # RGB(A) -> gray; alpha dropped
    return XrayImage(arr.astype(np.float32), meta={"mode": mode, "bits": bits}, exif_orientation=orientation)


def _exif_orientation(im: Any) -> int | None:
    """The EXIF ``Orientation`` (1..8) of an open PIL image; ``None`` when absent or not a valid value."""
    try:
        value = im.getexif().get(_EXIF_ORIENTATION_TAG)
    except Exception:  # noqa: BLE001 - a broken EXIF block is ignored, as viewers do
        return None
    if isinstance(value, (tuple, list)) and len(value) == 1:
        value = value[0]
    try:
        value = int(value)
    except (TypeError, ValueError):
        return None
    return value if 1 <= value <= 8 else None


#: Compressed transfer syntaxes pydicom<3 decodes through an optional package -> what to ``pip install``.
_LIBJPEG = "pylibjpeg pylibjpeg-libjpeg"
_OPENJPEG = "pylibjpeg pylibjpeg-openjpeg"
DICOM_DECODER_PACKAGES = {
    "1.2.840.10008.1.2.4.50": _LIBJPEG,  # JPEG Baseline (Pillow decodes it too)
    "1.2.840.10008.1.2.4.51": _LIBJPEG,  # JPEG Extended (12-bit)
    "1.2.840.10008.1.2.4.57": _LIBJPEG,  # JPEG Lossless, process 14
    "1.2.840.10008.1.2.4.70": _LIBJPEG,  # JPEG Lossless, process 14, selection value 1
    "1.2.840.10008.1.2.4.80": _LIBJPEG,  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81": _LIBJPEG,  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90": _OPENJPEG,  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91": _OPENJPEG,  # JPEG 2000
    "1.2.840.10008.1.2.5": "pylibjpeg pylibjpeg-rle",  # RLE Lossless (pydicom's numpy handler decodes it anyway)
}
_UNCOMPRESSED_SYNTAXES = (
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian
)
#: Transfer syntaxes newer than pydicom<3's dictionary (named in error messages).
_NEWER_SYNTAX_NAMES = {
    "1.2.840.10008.1.2.4.110": "JPEG XL Lossless",
    "1.2.840.10008.1.2.4.111": "JPEG XL JPEG Recompression",
    "1.2.840.10008.1.2.4.112": "JPEG XL",
    "1.2.840.10008.1.2.4.201": "High-Throughput JPEG 2000 Image Compression (Lossless Only)",
    "1.2.840.10008.1.2.4.202": "High-Throughput JPEG 2000 with RPCL Options Image Compression (Lossless Only)",
    "1.2.840.10008.1.2.4.203": "High-Throughput JPEG 2000 Image Compression",
}
_MAGNIFICATION_SOURCE = "ImagerPixelSpacing/EstimatedRadiographicMagnificationFactor"
_ONE_VALUE = " (one value, isotropic)"


def _read_dicom(path: Path) -> XrayImage:
    import pydicom

    ds = pydicom.dcmread(str(path))
    if "PixelData" not in ds:
        raise ImageReadError(f"DICOM file {path.name} holds no pixel data (or is truncated before its end)")
    rows, cols = int(ds.Rows), int(ds.Columns)
    _check_size(cols, rows, path.name)
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ImageReadError(
            f"DICOM file {path.name} has {frames} frames; anatomark reads single 2D X-rays. Send one frame "
            "(a single radiograph), not a multi-frame series or volume"
        )
    syntax = _require_decoder(ds, path.name)
    if syntax is not None:
        _check_codestream_end(ds, syntax, path.name)
    try:
        arr = ds.pixel_array.astype(np.float32)
    except (MemoryError, ImageReadError):
        raise
    except Exception as e:  # noqa: BLE001 - decoders raise anything on corrupt data
        if syntax is None:
            raise
        detail = str(e).replace(str(path), path.name)[:200]
        raise ImageReadError(
            f"Cannot decode the {syntax} pixel data of DICOM file {path.name}: the file is corrupt or truncated "
            f"({detail}); export the X-ray again and resend it"
        ) from e
    if arr.ndim == 3:  # colour secondary capture
        arr = arr[..., :3].mean(axis=-1)
    slope = float(getattr(ds, "RescaleSlope", 1) or 1)
    intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
    arr = arr * slope + intercept
    if str(getattr(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        arr = arr.max() + arr.min() - arr  # display convention: bone bright
    spacing, source, spacing_meta = _dicom_spacing(ds)
    origin = (0.0, 0.0)
    ipp = getattr(ds, "ImagePositionPatient", None)
    if ipp is not None and len(ipp) >= 2:
        origin = (float(ipp[0]), float(ipp[1]))
    meta = {"modality": str(getattr(ds, "Modality", "")), "bits": int(getattr(ds, "BitsStored", 0) or 0)}
    meta.update(spacing_meta)
    if syntax is not None:
        meta["transfer_syntax"] = syntax
    return XrayImage(arr, spacing=spacing, spacing_source=source, origin=origin, meta=meta)


def _require_decoder(ds: Any, name: str) -> str | None:
    """Check that a pydicom handler can decode a compressed dataset's pixel data.

    Returns:
        ``None`` for uncompressed pixel data, else the transfer syntax as ``"<name> (<UID>)"``.

    Raises:
        ImageReadError: no installed decoder supports the transfer syntax; the message names it and what to install.
    """
    import pydicom
    from pydicom import config

    uid = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if uid is None or str(uid) in _UNCOMPRESSED_SYNTAXES:
        return None
    uid = pydicom.uid.UID(str(uid))
    name_of_uid = uid.name if uid.name != str(uid) else _NEWER_SYNTAX_NAMES.get(str(uid))
    syntax = f"{name_of_uid} ({uid})" if name_of_uid else f"transfer syntax {uid}"
    for handler in config.pixel_data_handlers:
        try:
            if handler.supports_transfer_syntax(uid) and handler.is_available():
                return syntax
        except Exception:  # noqa: BLE001, S112 - a broken optional handler is one that is not installed
            continue
    package = DICOM_DECODER_PACKAGES.get(str(uid))
    if package is not None:
        raise ImageReadError(
            f"DICOM file {name} is compressed as {syntax} and no decoder for it is installed: "
            f"`pip install {package}` (in anatomark's requirements.txt; python-gdcm works too) and send it again, "
            "or send the image uncompressed"
        )
    raise ImageReadError(
        f"DICOM file {name} is compressed as {syntax}, which pydicom {pydicom.__version__} cannot decode with any "
        "package: convert it to an uncompressed (or JPEG Lossless / JPEG 2000) transfer syntax first, e.g. with "
        "`gdcmconv --raw` or dcmtk's `dcmdjpeg`, and send it again"
    )


def _check_codestream_end(ds: Any, syntax: str, name: str) -> None:
    """Refuse a JPEG / JPEG-LS / JPEG 2000 frame without its end marker: libjpeg decodes a cut stream silently."""
    from pydicom.encaps import generate_pixel_data_frame

    if str(ds.file_meta.TransferSyntaxUID) not in DICOM_DECODER_PACKAGES or "RLE" in syntax:
        return
    try:
        frame = next(generate_pixel_data_frame(ds.PixelData, 1))
    except Exception as e:  # noqa: BLE001 - pydicom raises anything on a broken encapsulation
        raise ImageReadError(
            f"DICOM file {name}: the encapsulated {syntax} pixel data is corrupt or truncated ({str(e)[:200]}); "
            "export the X-ray again and resend it"
        ) from e
    if b"\xff\xd9" not in bytes(frame[-16:]):  # EOI (JPEG, JPEG-LS) and EOC (JPEG 2000) are both FFD9
        raise ImageReadError(
            f"DICOM file {name}: the {syntax} image stream has no end marker, so the image is truncated; "
            "export the X-ray again and resend it"
        )


def _dicom_spacing_values(ds: Any, tag: str) -> tuple[float, ...] | None:
    """A spacing tag's positive finite values: ``(row, column)``, ``(value,)`` for one value, ``None`` if unusable."""
    from pydicom.multival import MultiValue

    raw = getattr(ds, tag, None)
    if raw is None or raw == "":
        return None
    items = list(raw) if isinstance(raw, (list, tuple, MultiValue)) else [raw]
    try:
        vals = tuple(float(v) for v in items)
    except (TypeError, ValueError):
        return None
    if len(vals) not in (1, 2) or not all(np.isfinite(v) and v > 0 for v in vals):
        return None
    return vals


def _dicom_spacing(ds: Any) -> tuple[tuple[float, float], str, dict[str, Any]]:
    """``(sx, sy)`` mm/px, its ``spacing_source`` and notes for ``meta``, from a DICOM dataset.

    ``PixelSpacing`` (spacing in the patient) wins. Without a two-value one, ``ImagerPixelSpacing`` (at the detector)
    is divided by ``EstimatedRadiographicMagnificationFactor`` when the file gives a valid factor. A one-value
    ``PixelSpacing`` (not valid DICOM, but written by some exporters) is used for both axes when nothing better exists.
    """
    pixel = _dicom_spacing_values(ds, "PixelSpacing")
    imager = _dicom_spacing_values(ds, "ImagerPixelSpacing")
    if pixel is not None and len(pixel) == 2:
        return (pixel[1], pixel[0]), "file", {"spacing_tag": "PixelSpacing"}  # DICOM gives (row, column) spacing
    if imager is not None:
        row, col = imager if len(imager) == 2 else (imager[0], imager[0])
        meta: dict[str, Any] = {"spacing_tag": "ImagerPixelSpacing"}
        source = "file" if len(imager) == 2 else "ImagerPixelSpacing" + _ONE_VALUE
        factor = _dicom_spacing_values(ds, "EstimatedRadiographicMagnificationFactor")
        if factor is not None and len(factor) == 1:
            meta["magnification_factor"] = factor[0]
            source = _MAGNIFICATION_SOURCE + ("" if len(imager) == 2 else _ONE_VALUE)
            row, col = row / factor[0], col / factor[0]
        return (col, row), source, meta
    if pixel is not None:
        return (pixel[0], pixel[0]), "PixelSpacing" + _ONE_VALUE, {"spacing_tag": "PixelSpacing"}
    return (1.0, 1.0), "none", {}


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


def _nifti_vector_image(shape: tuple[int, ...]) -> bool:
    """A 2D vector (RGB/RGBA) NIfTI as ITK writes one (3D Slicer saving a colour JPG): ``(W, H, 1, 1, C)``."""
    dims = [int(s) for s in shape]
    return len(dims) == 5 and dims[2] == dims[3] == 1 and dims[4] in (3, 4) and dims[0] > 8 and dims[1] > 8


def _read_nifti(path: Path) -> XrayImage:
    import nibabel as nib

    nii = nib.load(str(path))
    if _nifti_vector_image(nii.shape):
        _check_size(int(nii.shape[0]), int(nii.shape[1]), path.name)
        rgb = np.asanyarray(nii.dataobj)[:, :, 0, 0, :3]  # [x, y, channel]; alpha dropped
        if rgb.dtype == np.uint8:  # as raster files: ITU-R 601 luma, rounded like Pillow's convert("L")
            r, g, b = (rgb[..., c].astype(np.uint32) for c in range(3))
            data = ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.float32)
        else:
            data = rgb.astype(np.float32).mean(axis=-1)
    else:
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


# ---------------------------------------------------------------- EXIF frames
#: EXIF Orientation -> the one whose transform undoes it (2, 3, 4, 5 and 7 undo themselves).
_EXIF_INVERSE = {1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 8, 7: 7, 8: 6}


def exif_stored_size_wh(size_wh: tuple[int, int], orientation: int | None) -> tuple[int, int]:
    """``(W, H)`` of the pixels as stored in the file, from the upright ``size_wh`` (5..8 swap the axes)."""
    w, h = int(size_wh[0]), int(size_wh[1])
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def exif_to_stored(points: np.ndarray, orientation: int | None, size_wh: tuple[int, int]) -> np.ndarray:
    """Map ``(N, 2)`` (x, y) points of the upright image (what :func:`load_image` returns) to the stored pixels.

    For tools that ignore EXIF (ITK, hence 3D Slicer, shows a JPEG as stored).

    Args:
        points: ``(N, 2)`` pixel coordinates in the upright image (NaN rows stay NaN).
        orientation: ``XrayImage.exif_orientation`` (``None`` or 1: nothing to do).
        size_wh: the upright image's ``(W, H)`` (``XrayImage.size_wh``).

    Returns:
        ``(N, 2)`` float64 points in the stored frame.
    """
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if orientation in (None, 1):
        return p.copy()
    ws, hs = exif_stored_size_wh(size_wh, orientation)
    x, y = p[:, 0], p[:, 1]
    xs, ys = {
        2: (ws - 1 - x, y),
        3: (ws - 1 - x, hs - 1 - y),
        4: (x, hs - 1 - y),
        5: (y, x),
        6: (y, hs - 1 - x),
        7: (ws - 1 - y, hs - 1 - x),
        8: (ws - 1 - y, x),
    }[int(orientation)]
    return np.stack([xs, ys], axis=1)


def exif_from_stored(points: np.ndarray, orientation: int | None, size_wh: tuple[int, int]) -> np.ndarray:
    """Inverse of :func:`exif_to_stored`: stored-frame points -> upright points (``size_wh``: upright ``(W, H)``)."""
    if orientation in (None, 1):
        return np.asarray(points, dtype=np.float64).reshape(-1, 2).copy()
    return exif_to_stored(points, _EXIF_INVERSE[int(orientation)], exif_stored_size_wh(size_wh, orientation))


def exif_stored_array(array: np.ndarray, orientation: int | None) -> np.ndarray:
    """An upright ``(H, W)`` array (e.g. a label map) in the file's stored pixel order (inverse of the reader)."""
    a = np.asarray(array)
    if orientation in (None, 1):
        return a
    undo = {
        2: lambda m: m[:, ::-1],
        3: lambda m: m[::-1, ::-1],
        4: lambda m: m[::-1, :],
        5: lambda m: m.T,
        6: lambda m: np.rot90(m, 1),
        7: lambda m: m.T[::-1, ::-1],
        8: lambda m: np.rot90(m, -1),
    }[int(orientation)]
    return np.ascontiguousarray(undo(a))


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
