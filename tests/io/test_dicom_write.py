"""Round-trip geometry of the DICOM series writer, checked with an independent
reconstruction from the raw tags (sort along the slice normal, build the LPS
affine from IOP/IPP/PixelSpacing) — not with medidiff's own reader."""

from __future__ import annotations

import shutil
import subprocess

import nibabel as nib
import numpy as np
import pydicom
import pytest

from medidiff.io.dicom_write import rescale_for, write_dicom_series
from medidiff.volume import LPS_TO_RAS, Volume


def _reconstruct(paths):
    dss = [pydicom.dcmread(p) for p in paths]
    iop = np.array(dss[0].ImageOrientationPatient, dtype=float)
    row_dir, col_dir = iop[:3], iop[3:]
    normal = np.cross(row_dir, col_dir)
    dss.sort(key=lambda d: float(np.dot(normal, np.array(d.ImagePositionPatient, float))))
    dr, dc = (float(v) for v in dss[0].PixelSpacing)
    ipp0 = np.array(dss[0].ImagePositionPatient, float)
    step = (np.array(dss[-1].ImagePositionPatient, float) - ipp0) / (len(dss) - 1)
    a = np.eye(4)
    a[:3, 0], a[:3, 1], a[:3, 2], a[:3, 3] = row_dir * dc, col_dir * dr, step, ipp0
    arr = np.stack([d.pixel_array.T * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in dss], -1)
    return arr, LPS_TO_RAS @ a, dss


def _assert_same_grid(vol, arr, aff):
    """Equal up to a reversal of the slice axis (reader sorts along the normal)."""
    flip = np.eye(4)
    flip[2, 2], flip[2, 3] = -1, vol.shape[2] - 1
    if np.allclose(aff, vol.affine, atol=1e-4):
        np.testing.assert_allclose(arr, vol.array, atol=_tol(vol.array))
    else:
        np.testing.assert_allclose(aff, vol.affine @ flip, atol=1e-4)
        np.testing.assert_allclose(arr, vol.array[:, :, ::-1], atol=_tol(vol.array))


def _tol(a):
    return float(np.abs(a).max()) / 32767.0 + 1e-6


def _rotation(axis, deg):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    t = np.deg2rad(deg)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * k @ k


def _affine(lin, origin):
    a = np.eye(4)
    a[:3, :3], a[:3, 3] = lin, origin
    return a


RNG = np.random.default_rng(0)
CASES = {
    "ras": _affine(np.diag([1.0, 1.2, 2.5]), [-10.0, 20.0, 5.0]),
    "lps": _affine(np.diag([-0.9, -0.9, 3.0]), [40.0, 30.0, -20.0]),
    "permuted_sagittal": _affine(np.array([[0, 0, 2.0], [1.5, 0, 0], [0, 1.5, 0]]), [1.0, 2.0, 3.0]),
    "oblique": _affine(_rotation([1, 2, 0.5], 23.0) @ np.diag([1.1, 0.8, 2.0]), [-50.0, 12.5, 7.0]),
    "oblique_left_handed": _affine(_rotation([0.3, -1, 1], 41.0) @ np.diag([1.0, 1.0, -2.0]), [5.0, 5.0, 5.0]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_geometry_round_trip(tmp_path, name):
    data = RNG.uniform(0, 1000, size=(7, 5, 4)).astype(np.float32)
    vol = Volume(data, CASES[name])
    paths = write_dicom_series(vol, tmp_path / name, rng_or_seed=1)
    assert len(paths) == 4
    arr, aff, dss = _reconstruct(paths)
    _assert_same_grid(vol, arr, aff)
    d = dss[0]
    assert (d.Rows, d.Columns) == (5, 7)
    sp = vol.spacing
    np.testing.assert_allclose([float(v) for v in d.PixelSpacing], [sp[1], sp[0]], rtol=1e-6)
    normal = np.cross(np.array(d.ImageOrientationPatient[:3], float), np.array(d.ImageOrientationPatient[3:], float))
    gap = abs(float(np.dot((LPS_TO_RAS @ vol.affine)[:3, 2], normal)))
    assert float(d.SpacingBetweenSlices) == pytest.approx(gap, rel=1e-6)
    assert float(d.SliceThickness) == pytest.approx(gap, rel=1e-6)


def test_tags_uids_and_derived(tmp_path):
    vol = Volume(np.zeros((4, 4, 3), np.float32) + np.arange(3), np.eye(4))
    p1 = write_dicom_series(vol, tmp_path / "a", modality="CT", derived=True, series_description="recon")
    p2 = write_dicom_series(vol, tmp_path / "b")
    d1 = [pydicom.dcmread(p) for p in p1]
    d2 = pydicom.dcmread(p2[0])
    assert [p.name for p in p2] == ["IM0001", "IM0002", "IM0003"]
    assert d1[0].SOPClassUID == "1.2.840.10008.5.1.4.1.1.2" and d1[0].Modality == "CT"
    assert d2.SOPClassUID == "1.2.840.10008.5.1.4.1.1.4" and d2.Modality == "MR"
    assert list(d1[0].ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert list(d2.ImageType)[:2] == ["ORIGINAL", "PRIMARY"]
    assert "synthetic" in d1[0].SeriesDescription.lower()
    assert len({d.SOPInstanceUID for d in d1}) == 3
    assert len({d.SeriesInstanceUID for d in d1}) == 1
    assert d1[0].SeriesInstanceUID != d2.SeriesInstanceUID
    assert d1[0].StudyInstanceUID != d2.StudyInstanceUID
    assert [d.InstanceNumber for d in d1] == [1, 2, 3]
    assert d2.PatientID == "ANON" and str(d2.PatientName) == "Anonymous^Sample"
    assert d1[0].pixel_array.dtype == np.int16


def test_given_uids_are_used_and_seed_is_reproducible(tmp_path):
    vol = Volume(RNG.normal(size=(6, 6, 8)).astype(np.float32), np.diag([2.0, 2.0, 2.0, 1.0]))
    pa = write_dicom_series(vol, tmp_path / "a", study_uid="1.2.3.4", series_uid="1.2.3.4.5",
                            rng_or_seed=7, file_names="random")
    pb = write_dicom_series(vol, tmp_path / "b", study_uid="1.2.3.4", series_uid="1.2.3.4.5",
                            rng_or_seed=7, file_names="random")
    assert [p.name for p in pa] == [p.name for p in pb]
    assert [p.name for p in pa] != sorted(p.name for p in pa)  # shuffled-looking
    assert all(len(p.name) == 8 and "." not in p.name for p in pa)
    assert [p.read_bytes() for p in pa] == [p.read_bytes() for p in pb]
    d = pydicom.dcmread(pa[0])
    assert d.StudyInstanceUID == "1.2.3.4" and d.SeriesInstanceUID == "1.2.3.4.5"
    pc = write_dicom_series(vol, tmp_path / "c", rng_or_seed=8)
    assert pydicom.dcmread(pc[0]).SOPInstanceUID != d.SOPInstanceUID


@pytest.mark.parametrize("data, exact", [
    (np.array([-1024.0, 0.0, 3071.0]), True),            # CT HU: stored losslessly
    (np.array([0.0, 0.5, 12345.678]), False),             # MR float, non-negative
    (np.array([-3.5e-3, 0.0, 7.25e-3]), False),           # tiny signed values
    (np.array([1e6, 2e6, 5e6]), False),                   # beyond int16 range
])
def test_rescale_covers_range(data, exact):
    slope, intercept = rescale_for(data)
    stored = np.round((data - intercept) / slope)
    assert stored.min() >= -32768 and stored.max() <= 32767
    back = stored * slope + intercept
    if exact:
        assert (slope, intercept) == (1.0, 0.0)
        np.testing.assert_array_equal(back, data)
    else:
        np.testing.assert_allclose(back, data, atol=(data.max() - min(data.min(), 0)) / 32000)
    if data.min() >= 0:
        assert stored.min() >= 0  # zero background stays zero, no negative stored values


def test_rle_compression_round_trips(tmp_path):
    data = np.zeros((16, 12, 3), np.float32)
    data[4:10, 3:9] = RNG.uniform(0, 500, size=(6, 6, 3)).round()
    vol = Volume(data, CASES["oblique"])
    paths = write_dicom_series(vol, tmp_path / "a", compression="rle", rng_or_seed=5)
    again = write_dicom_series(vol, tmp_path / "b", compression="rle", rng_or_seed=5)
    assert [p.read_bytes() for p in paths] == [p.read_bytes() for p in again]
    d = pydicom.dcmread(paths[0])
    assert d.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.5"
    assert d.file_meta.MediaStorageSOPInstanceUID == d.SOPInstanceUID
    arr, aff, _ = _reconstruct(paths)
    _assert_same_grid(vol, arr, aff)


def test_rejects_non_orthogonal_in_plane_axes(tmp_path):
    aff = np.eye(4)
    aff[0, 1] = 0.5
    with pytest.raises(ValueError, match="orthogonal"):
        write_dicom_series(Volume(np.zeros((3, 3, 2), np.float32), aff), tmp_path)


@pytest.mark.skipif(shutil.which("dcm2niix") is None, reason="dcm2niix not installed")
def test_dcm2niix_agrees_on_oblique_geometry(tmp_path):
    data = RNG.uniform(0, 1000, size=(12, 10, 6)).astype(np.float32)
    vol = Volume(data, CASES["oblique"])
    write_dicom_series(vol, tmp_path / "dcm", rng_or_seed=3)
    out = tmp_path / "nii"
    out.mkdir()
    subprocess.run(["dcm2niix", "-z", "n", "-f", "x", "-o", str(out), str(tmp_path / "dcm")],
                   check=True, capture_output=True, timeout=60)
    img = nib.load(str(out / "x.nii"))
    # dcm2niix may flip/permute axes: compare the world positions of all voxel centres.
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in img.shape[:3]], indexing="ij"), -1).reshape(-1, 3)
    world = nib.affines.apply_affine(img.affine, ijk)
    src_ijk = np.rint(nib.affines.apply_affine(np.linalg.inv(vol.affine), world)).astype(int)
    assert np.abs(nib.affines.apply_affine(np.linalg.inv(vol.affine), world) - src_ijk).max() < 1e-2
    got = np.asarray(img.dataobj, dtype=np.float64).reshape(-1)
    want = data[tuple(src_ijk.T)]
    np.testing.assert_allclose(got, want, atol=1.0)
