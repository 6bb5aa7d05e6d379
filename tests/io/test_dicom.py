"""DICOM series reading: grouping, slice order, geometry, rescale, refusals."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_factory import (expected_affine_ras, oblique_iop, pydicom_test_dir, regular_positions,
                           write_series)
from pydicom.uid import generate_uid

from medidiff.io import dicom as dcm
from medidiff.io.discover import discover

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)


def _stored(shape=(12, 10, 6), seed=0):
    return np.random.default_rng(seed).integers(-500, 2000, size=shape).astype(np.int16)


@pytest.mark.parametrize("iop", [AXIAL, SAGITTAL, CORONAL, oblique_iop()], ids=["axial", "sagittal", "coronal", "oblique"])
def test_series_geometry_and_shuffled_order(tmp_path, iop):
    stored = _stored()
    n = stored.shape[2]
    origin = (-30.5, 12.25, 40.0)
    ps = (0.8, 1.1)  # row spacing, column spacing
    pos = regular_positions(origin, iop, 2.5, n)
    rng = np.random.default_rng(1)
    names = [f"{generate_uid()[-12:]}" for _ in range(n)]  # no extension, random order
    perm = rng.permutation(n)
    folder = tmp_path / "series"
    write_series(folder, stored[:, :, perm], [pos[i] for i in perm], iop, ps, names=names,
                 slopes=[0.5] * n, intercepts=[-100.0] * n)
    found = discover(tmp_path)
    assert not found.skipped, found.skipped
    (ref,) = found.scans
    vol = ref.load()
    normal = np.cross(iop[:3], iop[3:])
    expected = expected_affine_ras(iop, pos[0], ps, 2.5 * normal)
    np.testing.assert_allclose(vol.affine, expected, atol=1e-5)
    np.testing.assert_allclose(vol.array, stored * 0.5 - 100.0, atol=1e-4)
    np.testing.assert_allclose(vol.spacing, (1.1, 0.8, 2.5), atol=1e-5)
    assert vol.provenance.original_dtype == "int16"
    assert vol.provenance.format == "dicom"
    # every voxel's world position agrees with the slice header it came from
    for k, path in enumerate(vol.provenance.source_paths):
        ds = pydicom.dcmread(path)
        ipp_ras = np.array([-1, -1, 1]) * np.array(ds.ImagePositionPatient, float)
        np.testing.assert_allclose(vol.voxel_to_world([0, 0, k])[0], ipp_ras, atol=1e-5)


def test_per_slice_rescale(tmp_path):
    stored = _stored((8, 8, 4))
    pos = regular_positions((0, 0, 0), AXIAL, 3.0, 4)
    slopes, intercepts = [1.0, 2.0, 0.5, 1.5], [0.0, -10.0, 5.0, -1024.0]
    write_series(tmp_path / "s", stored, pos, AXIAL, (1.0, 1.0), slopes=slopes, intercepts=intercepts)
    vol = discover(tmp_path).scans[0].load()
    for k in range(4):
        np.testing.assert_allclose(vol.array[:, :, k], stored[:, :, k] * slopes[k] + intercepts[k], atol=1e-3)


def test_gantry_tilt_gives_exact_sheared_affine(tmp_path):
    stored = _stored((8, 8, 5))
    shift = (0.0, 0.6, 0.0)  # origins slide along y as slices advance: tilted gantry
    pos = regular_positions((0, 0, 0), AXIAL, 2.0, 5, tilt_shift=shift)
    write_series(tmp_path / "s", stored, pos, AXIAL, (0.7, 0.7), modality="CT")
    (ref,) = discover(tmp_path).scans
    vol = ref.load()
    expected = expected_affine_ras(AXIAL, pos[0], (0.7, 0.7), np.array([0.0, 0.6, 2.0]))
    np.testing.assert_allclose(vol.affine, expected, atol=1e-5)
    assert any("gantry tilt" in w for w in ref.warnings)


@pytest.mark.parametrize("kind,reason", [
    ("missing", "missing slice"),
    ("duplicate", "duplicate slice position"),
    ("irregular", "irregular slice spacing"),
    ("two", "only 2 slice"),
])
def test_bad_stacks_are_refused_with_reason(tmp_path, kind, reason):
    pos = regular_positions((0, 0, 0), AXIAL, 2.0, 6)
    if kind == "missing":
        pos = pos[:3] + pos[4:]
    elif kind == "duplicate":
        pos = pos[:3] + [pos[2]] + pos[4:]
    elif kind == "irregular":
        pos = [p + np.array([0, 0, 0.7 * (i % 2)]) for i, p in enumerate(pos)]
    elif kind == "two":
        pos = pos[:2]
    write_series(tmp_path / "s", _stored((6, 6, len(pos))), pos, AXIAL, (1.0, 1.0))
    found = discover(tmp_path)
    assert not found.scans
    assert len(found.skipped) == len(pos)  # every file reported once
    assert all(reason in s.reason for s in found.skipped), found.skipped


def test_one_uid_two_orientations_split(tmp_path):
    uid, study = generate_uid(), generate_uid()
    write_series(tmp_path / "a", _stored((6, 6, 4)), regular_positions((0, 0, 0), AXIAL, 2.0, 4), AXIAL,
                 (1.0, 1.0), series_uid=uid, study_uid=study, names=[f"a{i}" for i in range(4)])
    write_series(tmp_path / "a", _stored((6, 6, 3)), regular_positions((0, 0, 0), SAGITTAL, 3.0, 3), SAGITTAL,
                 (1.0, 1.0), series_uid=uid, study_uid=study, names=[f"b{i}" for i in range(3)])
    found = discover(tmp_path)
    assert sorted(s.shape[2] for s in found.scans) == [3, 4]
    assert len({s.scan_id for s in found.scans}) == 2


def test_enhanced_multiframe_matches_single_frame(tmp_path):
    hd = pytest.importorskip("highdicom")
    stored = _stored((10, 8, 5))
    iop = oblique_iop(8, -15)
    pos = regular_positions((5, -3, 20), iop, 1.5, 5)
    paths = write_series(tmp_path / "single", stored, pos, iop, (0.9, 0.9), slopes=[1.0] * 5, intercepts=[0.0] * 5)
    single = discover(tmp_path / "single").scans[0].load()
    datasets = [pydicom.dcmread(p) for p in paths]
    for ds in datasets:
        ds.Manufacturer, ds.ManufacturerModelName, ds.SoftwareVersions = "x", "y", "z"
        ds.StudyDate, ds.StudyTime, ds.SeriesDate, ds.SeriesTime = "20260101", "120000", "20260101", "120000"
        ds.AcquisitionDate = ds.ContentDate = "20260101"
        ds.AcquisitionTime = ds.ContentTime = "120000"
        ds.ReferringPhysicianName = ""
        ds.AccessionNumber = ""
        ds.StudyID = "1"
        ds.PatientBirthDate, ds.PatientSex = "", "O"
        ds.FrameOfReferenceUID = datasets[0].FrameOfReferenceUID
        ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions, ds.MRAcquisitionType = "GR", "NONE", "", "3D"
        ds.EchoTime, ds.RepetitionTime, ds.EchoTrainLength, ds.MagneticFieldStrength = 5, 10, 1, 3
        ds.FlipAngle = 15
        ds.PositionReferenceIndicator = ""
    enh = hd.legacy.LegacyConvertedEnhancedMRImage(
        legacy_datasets=datasets, series_instance_uid=generate_uid(), series_number=9,
        sop_instance_uid=generate_uid(), instance_number=1)
    (tmp_path / "enh").mkdir()
    enh.save_as(tmp_path / "enh" / "multiframe")
    (ref,) = discover(tmp_path / "enh").scans
    assert ref.format == "dicom-enhanced"
    vol = ref.load()
    np.testing.assert_allclose(vol.affine, single.affine, atol=1e-5)
    np.testing.assert_allclose(vol.array, single.array, atol=1e-4)


def test_compressed_series_decode(tmp_path):
    """A 3-slice series built from pydicom's JPEG 2000 lossless and JPEG-LS lossless
    files (header edited, compressed pixels untouched) decodes to the same pixels
    as the uncompressed original."""
    src = pydicom_test_dir()
    ref_pixels = pydicom.dcmread(src / "MR_small.dcm").pixel_array
    for name in ("MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_RLE.dcm"):
        folder = tmp_path / name
        folder.mkdir()
        uid = generate_uid()
        for k in range(3):
            ds = pydicom.dcmread(src / name)
            ds.SeriesInstanceUID = uid
            ds.SOPInstanceUID = generate_uid()
            ds.ImageOrientationPatient = list(AXIAL)
            ds.ImagePositionPatient = [0, 0, 4.0 * k]
            ds.save_as(folder / f"IM{k}")
        (ref,) = discover(folder).scans
        vol = ref.load()
        for k in range(3):
            np.testing.assert_array_equal(vol.array[:, :, k], ref_pixels.T.astype(np.float32))


def test_pydicom_dicomdirtests_account(tmp_path):
    root = pydicom_test_dir() / "dicomdirtests"
    found = discover(root)
    by_id = {s.scan_id: s for s in found.scans}
    assert len(found.scans) == 1  # only CT5N is a regular >=3-slice stack
    ct5 = next(iter(by_id.values()))
    assert ct5.shape == (16, 16, 5)
    np.testing.assert_allclose(ct5.spacing[2], 2.5, atol=1e-4)
    reasons = {str(p.path).split("dicomdirtests/")[1]: p.reason for p in found.skipped}
    assert "2D projection" in reasons["77654033/CR1/6154"]
    assert "localizer" in reasons["98892001/CT2N/6293"]
    assert "missing slice" in reasons["77654033/CT2/17106"]  # the series with a large gap
    assert "only 1 slice" in reasons["98892003/MR700/4467"]  # localizers in varying orientations
    assert "DICOMDIR" in reasons["DICOMDIR"]
    # every file in the tree is accounted for exactly once
    all_files = {str(p) for p in root.rglob("*") if p.is_file()}
    listed = [p for s in found.scans for p in s.paths] + [s.path for s in found.skipped]
    assert sorted(listed) == sorted(all_files)


def test_truncated_and_fake_dicom(tmp_path):
    src = pydicom_test_dir()
    shutil.copy(src / "MR_truncated.dcm", tmp_path / "truncated.dcm")
    data = (src / "CT_small.dcm").read_bytes()
    (tmp_path / "cut").write_bytes(data[: len(data) // 2])
    (tmp_path / "fake.dcm").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 300)
    (tmp_path / "empty").write_bytes(b"")
    found = discover(tmp_path)
    assert not found.scans
    reasons = {p.path.rsplit("/", 1)[1]: p.reason for p in found.skipped}
    assert "truncated" in reasons["truncated.dcm"] or "pixel data" in reasons["truncated.dcm"]
    assert "truncated" in reasons["cut"] or "pixel data" in reasons["cut"]
    assert "not a DICOM file" in reasons["fake.dcm"]
    assert "empty" in reasons["empty"]


def test_non_volume_objects_skipped(tmp_path):
    src = pydicom_test_dir()
    for name in ("rtstruct.dcm", "rtdose.dcm", "rtplan.dcm", "test-SR.dcm", "liver_1frame.dcm", "CT_small.dcm"):
        shutil.copy(src / name, tmp_path / name)
    found = discover(tmp_path)
    assert not found.scans
    reasons = {p.path.rsplit("/", 1)[1]: p.reason for p in found.skipped}
    assert "RT structure set" in reasons["rtstruct.dcm"]
    assert "RT plan" in reasons["rtplan.dcm"]
    assert "structured report" in reasons["test-SR.dcm"]
    assert "segmentation" in reasons["liver_1frame.dcm"]
    assert "only 1 slice" in reasons["CT_small.dcm"]
    assert "RT dose" in reasons["rtdose.dcm"]


def _complete_series(folder, n=6):
    stored = _stored((10, 8, n))
    iop = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    pos = regular_positions((0.0, 0.0, 0.0), iop, 2.0, n)
    uid, study = generate_uid(), generate_uid()
    paths = write_series(folder, stored, pos, iop, (1.0, 1.0), series_uid=uid, study_uid=study)
    return paths, uid, study, iop, pos


def test_non_image_objects_sharing_the_series_uid_do_not_make_it_incomplete(tmp_path):
    paths, uid, study, iop, pos = _complete_series(tmp_path / "s")
    raw = pydicom.dcmread(paths[0])
    raw.SOPClassUID = raw.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.66"  # Raw Data Storage
    del raw.PixelData
    raw.save_as(tmp_path / "s" / "rawdata", enforce_file_format=True)
    pixelless = pydicom.dcmread(paths[1])  # an image header without plane geometry or pixels (e.g. a report)
    for tag in ("PixelData", "ImagePositionPatient", "ImageOrientationPatient"):
        delattr(pixelless, tag)
    pixelless.SOPInstanceUID = generate_uid()
    pixelless.save_as(tmp_path / "s" / "nopixels", enforce_file_format=True)
    found = discover(tmp_path)
    (ref,) = found.scans
    assert ref.shape == (10, 8, 6) and not ref.warnings, ref.warnings
    reasons = {Path(s.path).name: s.reason for s in found.skipped}
    assert "raw data object" in reasons["rawdata"] and "pixel data" in reasons["nopixels"]
    # a truncated end slice of the same series still warns (the warning is not switched off)
    end = pydicom.dcmread(paths[-1])
    end.ImagePositionPatient = [f"{v:.6f}" for v in pos[-1] + 2.0 * np.array([0, 0, 1.0])]
    end.SOPInstanceUID = generate_uid()
    end.save_as(tmp_path / "s" / "end", enforce_file_format=True)
    data = (tmp_path / "s" / "end").read_bytes()
    (tmp_path / "s" / "end").write_bytes(data[:-40])
    (ref,) = discover(tmp_path).scans
    assert any("incomplete series" in w for w in ref.warnings)


def test_siemens_mosaic_is_refused_with_the_conversion_to_use(tmp_path):
    stored = _stored((12, 12, 3))
    iop = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    same = [np.zeros(3)] * 3  # every mosaic file of a run has the same position
    write_series(tmp_path / "m", stored, same, iop, (1.0, 1.0), image_type=("ORIGINAL", "PRIMARY", "M", "MOSAIC"))
    found = discover(tmp_path)
    assert not found.scans
    assert {s.reason for s in found.skipped} == {dcm.MOSAIC_REASON}
    assert "Siemens mosaic" in dcm.MOSAIC_REASON and "dcm2niix" in dcm.MOSAIC_REASON
    from medidiff.io.discover import group_skipped

    assert len(group_skipped(found.skipped)) == 1  # one line for the series, not one per file


def _four_d(folder, n_t=2, n_z=4):
    stored = _stored((10, 8, n_z))
    iop = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    pos = regular_positions((0.0, 0.0, 0.0), iop, 2.0, n_z)
    uid, study = generate_uid(), generate_uid()
    paths = []
    for t in range(n_t):
        ps = write_series(folder, stored + t, pos, iop, (1.0, 1.0), series_uid=uid, study_uid=study,
                          names=[f"t{t}_z{k}" for k in range(n_z)])
        for p in ps:
            ds = pydicom.dcmread(p)
            ds.TemporalPositionIdentifier = t + 1
            ds.AcquisitionNumber = t + 1
            ds.save_as(p, enforce_file_format=True)
        paths += ps
    return paths


def test_classic_and_enhanced_4d_get_the_same_answer(tmp_path):
    hd = pytest.importorskip("highdicom")
    paths = _four_d(tmp_path / "classic")
    found = discover(tmp_path / "classic")
    assert not found.scans
    classic = {s.reason for s in found.skipped}
    assert len(classic) == 1
    (reason,) = classic
    assert "4D series: 2 volumes of 4 slices" in reason and "TemporalPositionIdentifier" in reason
    assert "dcm2niix" in reason
    # the same run as one enhanced (legacy-converted) multi-frame object
    datasets = [pydicom.dcmread(p) for p in paths]
    for ds in datasets:
        ds.Manufacturer, ds.ManufacturerModelName, ds.SoftwareVersions = "x", "y", "z"
        ds.StudyDate, ds.StudyTime, ds.SeriesDate, ds.SeriesTime = "20260101", "120000", "20260101", "120000"
        ds.AcquisitionDate = ds.ContentDate = "20260101"
        ds.AcquisitionTime = ds.ContentTime = "120000"
        ds.ReferringPhysicianName, ds.AccessionNumber, ds.StudyID = "", "", "1"
        ds.PatientBirthDate, ds.PatientSex = "", "O"
        ds.FrameOfReferenceUID = datasets[0].FrameOfReferenceUID
        ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions, ds.MRAcquisitionType = "GR", "NONE", "", "3D"
        ds.EchoTime, ds.RepetitionTime, ds.EchoTrainLength, ds.MagneticFieldStrength = 5, 10, 1, 3
        ds.FlipAngle = 15
        ds.PositionReferenceIndicator = ""
    enh = hd.legacy.LegacyConvertedEnhancedMRImage(
        legacy_datasets=datasets, series_instance_uid=generate_uid(), series_number=9,
        sop_instance_uid=generate_uid(), instance_number=1)
    (tmp_path / "enh").mkdir()
    enh.save_as(tmp_path / "enh" / "multiframe")
    found = discover(tmp_path / "enh")
    assert not found.scans
    (skip,) = found.skipped
    assert "4D enhanced object: 2 volumes of 4 slices" in skip.reason and "dcm2niix" in skip.reason
