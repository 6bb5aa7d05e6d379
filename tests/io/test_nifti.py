"""NIfTI reading/writing keeps every orientation's geometry exactly."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medidiff.io.atomic import atomic_path
from medidiff.io.errors import ScanError
from medidiff.io.nifti import read_nifti, write_nifti
from medidiff.volume import Volume

NIB_DATA = Path(nib.__file__).parent / "tests" / "data"


def _rotation(ax, ay, az):
    ax, ay, az = np.radians([ax, ay, az])
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


AFFINES = {
    "RAS": np.array([[1.2, 0, 0, -40.0], [0, 1.0, 0, -50.5], [0, 0, 2.0, -30.0], [0, 0, 0, 1]]),
    "LPS": np.array([[-1.2, 0, 0, 40.0], [0, -1.0, 0, 50.5], [0, 0, 2.0, -30.0], [0, 0, 0, 1]]),
    "permuted": np.array([[0, 0, 1.5, -20.0], [1.1, 0, 0, -30.0], [0, -0.9, 0, 25.0], [0, 0, 0, 1]]),
    "oblique": np.vstack([np.hstack([_rotation(10, -7, 25) @ np.diag([1.3, 0.9, 2.2]), [[5.0], [-7.0], [11.0]]]),
                          [0, 0, 0, 1]]),
}


@pytest.mark.parametrize("name", list(AFFINES))
def test_roundtrip_geometry_and_float_map(tmp_path, name):
    affine = AFFINES[name]
    data = np.random.default_rng(0).integers(0, 3000, size=(9, 11, 7)).astype(np.int16)
    src = tmp_path / f"scan_{name}.nii.gz"
    img = nib.Nifti1Image(data, affine)
    img.header.set_data_dtype(np.int16)
    nib.save(img, src)
    vol = read_nifti(src)
    assert vol.shape == data.shape
    np.testing.assert_allclose(vol.affine, affine, atol=1e-5)
    assert vol.provenance.original_dtype == "int16"
    assert vol.orientation == "".join(nib.aff2axcodes(affine))
    assert vol.is_oblique == (name == "oblique")
    # a fractional map on the scan's grid survives exactly (no int16 quantization)
    amap = np.random.default_rng(1).random(data.shape).astype(np.float32) * 0.37
    out = write_nifti(amap, tmp_path / "maps" / "map.nii.gz", like=vol)
    back = nib.load(out)
    assert back.shape == vol.shape
    np.testing.assert_allclose(back.affine, affine, atol=1e-5)
    assert back.get_data_dtype() == np.float32
    np.testing.assert_array_equal(np.asarray(back.dataobj), amap)


def test_sheared_affine_written_to_sform(tmp_path):
    affine = np.array([[1.0, 0, 0, 0], [0, 1.0, 0.4, 0], [0, 0, 2.0, 0], [0, 0, 0, 1]])
    vol = Volume(np.ones((4, 5, 6)), affine)
    out = write_nifti(vol, tmp_path / "tilt.nii")
    back = nib.load(out)
    np.testing.assert_allclose(back.affine, affine, atol=1e-6)
    assert int(back.header["sform_code"]) == 1 and int(back.header["qform_code"]) == 0


def test_nibabel_anatomical():
    vol = read_nifti(NIB_DATA / "anatomical.nii")
    assert vol.shape == (33, 41, 25)
    assert vol.orientation == "LAS"
    np.testing.assert_allclose(vol.spacing, (2.0, 2.0, 2.0), atol=1e-5)


def test_4d_refused_naming_file():
    with pytest.raises(ScanError, match=r"example4d\.nii\.gz: 4D image"):
        read_nifti(NIB_DATA / "example4d.nii.gz")


def test_huge_header_refused_before_allocation(tmp_path):
    img = nib.Nifti1Image(np.zeros((2, 2, 2), np.int16), np.eye(4))
    path = tmp_path / "huge.nii"
    nib.save(img, path)
    raw = bytearray(path.read_bytes())
    dims = np.array([3, 4000, 4000, 4000, 1, 1, 1, 1], dtype="<i2")
    raw[40:56] = dims.tobytes()
    path.write_bytes(bytes(raw))
    with pytest.raises(ScanError, match="over the limit"):
        read_nifti(path)


def test_broken_gzip_and_nan(tmp_path):
    good = tmp_path / "good.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((20, 20, 20)).astype(np.float32), np.eye(4)), good)
    blob = good.read_bytes()
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ScanError, match="broken.nii.gz"):
        read_nifti(broken)
    arr = np.ones((5, 5, 5), np.float32)
    arr[0, 0, :2] = np.nan
    nib.save(nib.Nifti1Image(arr, np.eye(4)), tmp_path / "nan.nii")
    vol = read_nifti(tmp_path / "nan.nii")
    assert np.isfinite(vol.array).all() and vol.provenance.warnings
    nib.save(nib.Nifti1Image(np.full((5, 5, 5), np.inf, np.float32), np.eye(4)), tmp_path / "inf.nii")
    with pytest.raises(ScanError, match="NaN/Inf"):
        read_nifti(tmp_path / "inf.nii")


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    final = tmp_path / "out.nii.gz"
    final.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(final) as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("crash mid-write")
    assert final.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.nii.gz"]


def test_write_shape_mismatch_refused(tmp_path):
    vol = Volume(np.zeros((4, 4, 4)), np.eye(4))
    with pytest.raises(ValueError, match="differs"):
        write_nifti(np.zeros((4, 4, 5)), tmp_path / "m.nii.gz", like=vol)
