"""DICOM reading: spacing tags (magnification factor, one-value PixelSpacing) and compressed transfer syntaxes.

Compressed files are real: JPEG Lossless is encoded by :func:`encode_jpeg_lossless` below (ITU-T T.81 process 14,
written here because no installed package encodes it) and decoded by pylibjpeg-libjpeg; JPEG 2000 is encoded and
decoded by pylibjpeg-openjpeg.
"""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import UID, ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLosslessSV1, JPEGLSLossless, generate_uid

from anatomark.data import image_io
from anatomark.data.image_io import load_image
from anatomark.errors import ImageReadError

HTJ2K_LOSSLESS = UID("1.2.840.10008.1.2.4.201")  # High-Throughput JPEG 2000: pydicom 2 has no decoder for it


@pytest.fixture
def gradient():
    """(H=40, W=30) 12-bit image whose value encodes the position: 100 * row + col."""
    yy, xx = np.mgrid[0:40, 0:30]
    return (100 * yy + xx).astype(np.uint16)


def write_dx(path, pixels, syntax=ExplicitVRLittleEndian, frame=None, bits_stored=12, **tags):
    """Write a DX file of ``pixels`` (uint16); ``frame`` is the compressed codestream for a compressed ``syntax``."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # DX
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.is_little_endian, ds.is_implicit_VR = True, False
    ds.Modality, ds.Rows, ds.Columns = "DX", pixels.shape[0], pixels.shape[1]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits_stored, bits_stored - 1, 0
    for k, v in tags.items():
        setattr(ds, k, v)
    if frame is None:
        ds.PixelData = pixels.astype("<u2").tobytes()
    else:
        ds.PixelData = encapsulate([frame])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
    ds.save_as(str(path), write_like_original=False)
    return path


# ---------------------------------------------------------------- spacing
def test_magnification_factor_applied_to_imager_pixel_spacing(tmp_path, gradient):
    p = write_dx(
        tmp_path / "m.dcm", gradient, ImagerPixelSpacing=[0.15, 0.12], EstimatedRadiographicMagnificationFactor=1.1
    )
    img = load_image(p, default_spacing=(1.0, 1.0))
    assert img.spacing == pytest.approx((0.12 / 1.1, 0.15 / 1.1))
    assert img.spacing_source == "ImagerPixelSpacing/EstimatedRadiographicMagnificationFactor"
    assert img.spacing_from_file and img.meta["magnification_factor"] == pytest.approx(1.1)


def test_pixel_spacing_wins_over_magnified_imager_spacing(tmp_path, gradient):
    p = write_dx(
        tmp_path / "p.dcm",
        gradient,
        PixelSpacing=[0.1, 0.09],
        ImagerPixelSpacing=[0.15, 0.12],
        EstimatedRadiographicMagnificationFactor=1.1,
    )
    img = load_image(p)
    assert img.spacing == pytest.approx((0.09, 0.1)) and img.spacing_source == "file"


@pytest.mark.parametrize("factor", ["0", "-1.2"])
def test_invalid_magnification_factor_ignored(tmp_path, gradient, factor):
    p = write_dx(
        tmp_path / "f.dcm", gradient, ImagerPixelSpacing=[0.15, 0.12], EstimatedRadiographicMagnificationFactor=factor
    )
    img = load_image(p)
    assert img.spacing == pytest.approx((0.12, 0.15)) and img.spacing_source == "file"


def test_one_value_pixel_spacing_beside_imager_pixel_spacing(tmp_path, gradient):
    p = write_dx(tmp_path / "o.dcm", gradient, PixelSpacing="0.1", ImagerPixelSpacing=[0.15, 0.12])
    img = load_image(p)
    assert img.spacing == pytest.approx((0.12, 0.15)) and img.spacing_source == "file"
    assert img.array[39, 29] == 3929
    p = write_dx(
        tmp_path / "om.dcm",
        gradient,
        PixelSpacing="0.1",
        ImagerPixelSpacing=[0.15, 0.12],
        EstimatedRadiographicMagnificationFactor=1.2,
    )
    assert load_image(p).spacing == pytest.approx((0.1, 0.125))


def test_one_value_pixel_spacing_alone_is_isotropic(tmp_path, gradient):
    img = load_image(write_dx(tmp_path / "i.dcm", gradient, PixelSpacing="0.1"), default_spacing=(0.5, 0.5))
    assert img.spacing == pytest.approx((0.1, 0.1))
    assert img.spacing_source == "PixelSpacing (one value, isotropic)" and img.spacing_from_file


def test_no_spacing_tags_falls_back_to_default(tmp_path, gradient):
    img = load_image(write_dx(tmp_path / "n.dcm", gradient), default_spacing=(0.5, 0.5))
    assert img.spacing == (0.5, 0.5) and img.spacing_source == "default" and not img.spacing_from_file


# ---------------------------------------------------------------- compressed pixel data
def encode_jpeg_lossless(arr: np.ndarray, precision: int) -> bytes:
    """JPEG Lossless (T.81 process 14, selection value 1: left neighbour), one component, one 5-bit Huffman table."""
    a = arr.astype(np.int64)
    pred = np.empty_like(a)
    pred[0, 0] = 1 << (precision - 1)
    pred[0, 1:] = a[0, :-1]  # first row: left
    pred[1:, 0] = a[:-1, 0]  # first column: above
    pred[1:, 1:] = a[1:, :-1]  # elsewhere: left (predictor 1)
    diff = (a - pred + 32768) % 65536 - 32768  # modulo 2**16 (H.1.2.1)
    bits = []
    for d in diff.ravel().tolist():
        ssss = 16 if d == -32768 else abs(d).bit_length()
        bits.append(format(ssss, "05b"))  # symbol s has the 5-bit code s
        if 0 < ssss < 16:
            bits.append(format(d if d > 0 else d + (1 << ssss) - 1, f"0{ssss}b"))
    stream = "".join(bits)
    stream += "1" * (-len(stream) % 8)  # pad with 1-bits
    data = bytearray()
    for i in range(0, len(stream), 8):
        byte = int(stream[i : i + 8], 2)
        data.append(byte)
        if byte == 0xFF:
            data.append(0x00)  # byte stuffing
    h, w = arr.shape

    def seg(marker: int, payload: bytes) -> bytes:
        return bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload

    sof3 = bytes([precision]) + h.to_bytes(2, "big") + w.to_bytes(2, "big") + bytes([1, 1, 0x11, 0])
    dht = bytes([0x00]) + bytes([0, 0, 0, 0, 17] + [0] * 11) + bytes(range(17))
    sos = bytes([1, 1, 0x00, 1, 0, 0])  # Ns, Cs1, Td/Ta, Ss = predictor 1, Se, Ah/Al
    return b"\xff\xd8" + seg(0xC3, sof3) + seg(0xC4, dht) + seg(0xDA, sos) + bytes(data) + b"\xff\xd9"


@pytest.mark.parametrize("bits_stored", [12, 16])
def test_jpeg_lossless_decoded(tmp_path, gradient, bits_stored):
    pixels = gradient if bits_stored == 12 else (gradient.astype(np.uint32) * 16 + 7).astype(np.uint16)
    pixels = pixels.copy()
    pixels[5, 5] = 0  # large jumps both ways exercise the high difference categories
    pixels[5, 6] = (1 << bits_stored) - 1
    frame = encode_jpeg_lossless(pixels, bits_stored)
    p = write_dx(tmp_path / "jl.dcm", pixels, JPEGLosslessSV1, frame, bits_stored, PixelSpacing=[0.1, 0.1])
    img = load_image(p)
    np.testing.assert_array_equal(img.array, pixels.astype(np.float32))
    assert img.meta["transfer_syntax"].startswith("JPEG Lossless") and img.spacing == pytest.approx((0.1, 0.1))


def j2k_gradient() -> np.ndarray:
    """(H=48, W=40) 12-bit: OpenJPEG's 6 default resolution levels need 32+ px both ways."""
    yy, xx = np.mgrid[0:48, 0:40]
    return (40 * yy + xx + 2000 * ((yy // 8 + xx // 8) % 2)).astype(np.uint16)


def test_jpeg2000_lossless_decoded(tmp_path):
    import openjpeg

    pixels = j2k_gradient()
    frame = openjpeg.encode(pixels, bits_stored=12, photometric_interpretation=2, use_mct=False)  # 2 = gray
    p = write_dx(tmp_path / "j2k.dcm", pixels, JPEG2000Lossless, frame, 12, ImagerPixelSpacing=[0.15, 0.12])
    img = load_image(p)
    np.testing.assert_array_equal(img.array, pixels.astype(np.float32))
    assert "JPEG 2000" in img.meta["transfer_syntax"] and img.spacing == pytest.approx((0.12, 0.15))


def test_corrupt_or_cut_compressed_data_named(tmp_path):
    import openjpeg

    pixels = j2k_gradient()
    j2k = openjpeg.encode(pixels, bits_stored=12, photometric_interpretation=2, use_mct=False)
    p = write_dx(tmp_path / "bad.dcm", pixels, JPEG2000Lossless, j2k[:40] + b"\0" * 8 + j2k[48:])
    with pytest.raises(ImageReadError, match=r"Cannot decode the JPEG 2000.*bad\.dcm.*corrupt or truncated"):
        load_image(p)
    jl = encode_jpeg_lossless(pixels, 12)  # libjpeg would decode a cut stream to made-up pixels without an error
    p = write_dx(tmp_path / "cut.dcm", pixels, JPEGLosslessSV1, jl[: len(jl) // 2])
    with pytest.raises(ImageReadError, match=r"cut\.dcm: the JPEG Lossless.*no end marker.*truncated"):
        load_image(p)
    data = p.read_bytes()
    (tmp_path / "short.dcm").write_bytes(data[: len(data) - 40])  # file cut inside the pixel data
    with pytest.warns(UserWarning, match="End of file"), pytest.raises(ImageReadError, match="truncated"):
        load_image(tmp_path / "short.dcm")


def write_with_syntax_unknown_to_pydicom(path, pixels, frame, uid: str):
    """Write with JPEG 2000 Lossless, then put ``uid`` (which pydicom 2 refuses to write) in the file meta."""
    import struct

    data = write_dx(path, pixels, JPEG2000Lossless, frame).read_bytes()
    old = str(JPEG2000Lossless).encode()
    new = uid.encode() + b"\0" * (len(uid) % 2)
    i = data.index(old)
    assert struct.unpack("<H", data[i - 2 : i])[0] == len(old)
    data = data[: i - 2] + struct.pack("<H", len(new)) + new + data[i + len(old) :]
    group_length = struct.unpack("<I", data[140:144])[0]  # (0002,0000) UL right after the preamble and 'DICM'
    path.write_bytes(data[:140] + struct.pack("<I", group_length + len(new) - len(old)) + data[144:])
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == uid
    return path


def test_syntax_without_any_decoder_is_named(tmp_path):
    """HTJ2K is a real transfer syntax that pydicom 2 cannot decode with any package (nothing faked)."""
    import openjpeg

    pixels = j2k_gradient()
    frame = openjpeg.encode(pixels, bits_stored=12, photometric_interpretation=2, use_mct=False)
    p = write_with_syntax_unknown_to_pydicom(tmp_path / "ht.dcm", pixels, frame, HTJ2K_LOSSLESS)
    with pytest.raises(ImageReadError) as e:
        load_image(p)
    msg = str(e.value)
    assert "High-Throughput JPEG 2000 Image Compression (Lossless Only) (1.2.840.10008.1.2.4.201)" in msg
    assert "convert it" in msg and "gdcmconv" in msg and "corrupt" not in msg


def test_missing_decoder_names_syntax_and_package(tmp_path, gradient, monkeypatch):
    """A JPEG-LS file read with only pydicom's built-in handlers (as before pylibjpeg was installed).

    No JPEG-LS encoder is installed, so the frame is a placeholder: the decoder check comes before any decoding.
    """
    from pydicom import config
    from pydicom.pixel_data_handlers import numpy_handler, rle_handler

    monkeypatch.setattr(config, "pixel_data_handlers", [numpy_handler, rle_handler])
    p = write_dx(tmp_path / "ls.dcm", gradient, JPEGLSLossless, b"\xff\xd8\xff\xf7" + b"\0" * 32 + b"\xff\xd9")
    with pytest.raises(ImageReadError) as e:
        load_image(p)
    msg = str(e.value)
    assert "JPEG-LS Lossless" in msg and "1.2.840.10008.1.2.4.80" in msg
    assert "pip install pylibjpeg pylibjpeg-libjpeg" in msg and "corrupt" not in msg


def test_every_named_decoder_is_installed():
    """The packages the error messages name are importable here (requirements.txt installs them)."""
    import importlib

    modules = {"pylibjpeg": "pylibjpeg", "pylibjpeg-libjpeg": "libjpeg", "pylibjpeg-openjpeg": "openjpeg"}
    for package in {p for v in image_io.DICOM_DECODER_PACKAGES.values() for p in v.split()} & set(modules):
        importlib.import_module(modules[package])
    from pydicom.pixel_data_handlers import pylibjpeg_handler

    assert pylibjpeg_handler.is_available()
    for uid in (JPEGLosslessSV1, JPEGLSLossless, JPEG2000Lossless):
        assert pylibjpeg_handler.supports_transfer_syntax(uid) and str(uid) in image_io.DICOM_DECODER_PACKAGES


def test_uncompressed_still_reads(tmp_path, gradient):
    img = load_image(write_dx(tmp_path / "u.dcm", gradient, PixelSpacing=[0.1, 0.1]))
    np.testing.assert_array_equal(img.array, gradient.astype(np.float32))
    assert (
        "transfer_syntax" not in img.meta and pydicom.dcmread(img.path).file_meta.TransferSyntaxUID.is_transfer_syntax
    )
