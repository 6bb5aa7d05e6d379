"""Compressed DICOM with the default (permissively licensed) decoders, and the one-line error
that names the file, the transfer syntax and what to install when a decoder is missing.

Measured with pydicom's test files: the default install (pydicom RLE, pylibjpeg-openjpeg,
python-gdcm, pyjpegls, Pillow) decodes RLE, JPEG-LS lossless and near-lossless, JPEG 2000
lossless and lossy, 8-bit JPEG baseline and JPEG Lossless (process 14 and SV1). Only 12-bit
JPEG Extended needs the GPL-3.0 pylibjpeg-libjpeg (`medidiff[jpeg-12bit]`)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_factory import pydicom_test_dir
from pydicom.pixels import get_decoder
from pydicom.uid import (JPEG2000Lossless, JPEGExtended12Bit, JPEGLosslessSV1, MRImageStorage,
                         generate_uid)

from medidiff.io.discover import discover
from medidiff.io.errors import ScanError

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def _series(folder: Path, source: Path, n: int = 3) -> Path:
    """n copies of one compressed slice as an axial MR series (pixels untouched)."""
    folder.mkdir(parents=True)
    uid = generate_uid()
    for k in range(n):
        ds = pydicom.dcmread(source)
        ds.Modality = "MR"
        ds.SOPClassUID = MRImageStorage
        ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
        ds.SeriesInstanceUID = uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.ImageOrientationPatient = list(AXIAL)
        ds.ImagePositionPatient = [0, 0, 4.0 * k]
        ds.PixelSpacing = ds.get("PixelSpacing") or [1.0, 1.0]
        ds.SliceThickness = 4.0
        ds.save_as(folder / f"IM{k}")
    return folder


def _only_plugins(monkeypatch, uid, keep: set[str]) -> None:
    """Make pydicom's decoder for `uid` see only the plugins in `keep` (restored after the test)."""
    decoder = get_decoder(uid)
    monkeypatch.setattr(decoder, "_available", {k: v for k, v in decoder._available.items() if k in keep})


def _jpeg_lossless_sv1(path: Path) -> Path:
    """MR_small as JPEG Lossless SV1 (1.2.840.10008.1.2.4.70), encoded by GDCM."""
    gdcm = pytest.importorskip("gdcm", reason="python-gdcm (a default dependency) is not installed")
    reader = gdcm.ImageReader()
    reader.SetFileName(str(pydicom_test_dir() / "MR_small.dcm"))
    assert reader.Read()
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
    change.SetInput(reader.GetImage())
    assert change.Change()
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(path))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    assert writer.Write()
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == JPEGLosslessSV1
    return path


def test_jpeg_lossless_decodes_without_the_gpl_decoder(tmp_path, monkeypatch):
    """JPEG Lossless SV1 (the usual lossless syntax of PACS exports) decodes bit-exactly with the
    permissive decoders alone, even where the GPL one happens to be installed."""
    src = _jpeg_lossless_sv1(tmp_path / "sv1.dcm")
    _only_plugins(monkeypatch, JPEGLosslessSV1, {"gdcm"})
    (ref,) = discover(_series(tmp_path / "series", src)).scans
    vol = ref.load()
    expected = pydicom.dcmread(pydicom_test_dir() / "MR_small.dcm").pixel_array.T.astype(np.float32)
    for k in range(3):
        np.testing.assert_array_equal(vol.array[:, :, k], expected)


def test_missing_decoder_is_one_line_with_file_syntax_and_install(tmp_path, monkeypatch):
    folder = _series(tmp_path / "j2k", pydicom_test_dir() / "MR_small_jp2klossless.dcm")
    (ref,) = discover(folder).scans
    _only_plugins(monkeypatch, JPEG2000Lossless, set())
    with pytest.raises(ScanError) as err:
        ref.load()
    msg = str(err.value)
    assert "\n" not in msg
    assert str(folder) in msg and msg.split(":")[0].startswith(str(folder / "IM"))
    assert "JPEG 2000" in msg and str(JPEG2000Lossless) in msg
    assert "pip install python-gdcm pylibjpeg-openjpeg" in msg


def test_12bit_jpeg_extended_names_the_gpl_extra(tmp_path, monkeypatch):
    folder = _series(tmp_path / "ext12", pydicom_test_dir() / "JPGExtended.dcm")
    (ref,) = discover(folder).scans
    _only_plugins(monkeypatch, JPEGExtended12Bit, {"gdcm", "pillow"})  # the default install
    with pytest.raises(ScanError) as err:
        ref.load()
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(str(folder / "IM"))
    assert "12-bit" in msg and "JPEG Extended" in msg and str(JPEGExtended12Bit) in msg
    assert "pip install 'medidiff[jpeg-12bit]'" in msg and "GPL-3.0" in msg


@pytest.mark.skipif(importlib.util.find_spec("libjpeg") is None,
                    reason="12-bit JPEG Extended needs the optional GPL-3.0 extra medidiff[jpeg-12bit]")
def test_12bit_jpeg_extended_decodes_with_the_extra(tmp_path):
    src = pydicom_test_dir() / "JPGExtended.dcm"
    (ref,) = discover(_series(tmp_path / "ext12", src)).scans
    vol = ref.load()
    np.testing.assert_array_equal(vol.array[:, :, 0], pydicom.dcmread(src).pixel_array.T.astype(np.float32))
