"""The sample-data builder on its tiny configuration (3 scans at 4 mm)."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

pytest.importorskip("nilearn")

_SCRIPT = Path(__file__).resolve().parents[2] / "pipelines" / "make_sample_data.py"
_spec = importlib.util.spec_from_file_location("make_sample_data", _SCRIPT)
msd = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(msd)


def _build(out, seed):
    msd.build(out, seed, small=True, log=lambda *_: None)
    with open(out / "labels.csv") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("sample")
    return out, _build(out, 0)


def test_labels_and_masks_consistent(built):
    out, rows = built
    assert {"scan_id", "split", "path", "label", "mask_path", "anomaly_types", "lesion_volume_mm3"} <= set(rows[0])
    assert len(rows) == 3 and len({r["scan_id"] for r in rows}) == 3
    for r in rows:
        img = nib.load(out / r["path"])
        assert img.get_data_dtype() == np.int16
        data = np.asarray(img.dataobj)
        assert np.allclose(np.linalg.norm(img.affine[:3, :3], axis=0), 4.0)
        assert data.max() > 0 and (data == 0).mean() > 0.3  # zero background
        if r["split"] in ("val", "test"):
            m_img = nib.load(out / r["mask_path"])
            assert m_img.shape == img.shape
            np.testing.assert_allclose(m_img.affine, img.affine)
            assert m_img.get_data_dtype() == np.uint8
            m = np.asarray(m_img.dataobj)
            assert set(np.unique(m)) <= {0, 1}
            if r["label"] == "1":
                assert m.sum() > 0 and r["anomaly_types"]
                assert float(r["lesion_volume_mm3"]) == pytest.approx(m.sum() * 64.0)
                assert (data[m > 0] > 0).all(), "lesion outside the head"
            else:
                assert m.sum() == 0 and r["anomaly_types"] == "" and float(r["lesion_volume_mm3"]) == 0
        else:
            assert r["label"] == "0" and r["mask_path"] == ""


def test_non_ras_scans_show_the_same_anatomy(built):
    out, rows = built
    by = {r["scan_id"]: r for r in rows}
    assert by["test_a00"]["orientation"] == "LPS" and by["test_h00"]["orientation"].endswith("oblique")
    # Same world anatomy: the brain's world-space centroid is where the RAS scan has it.
    cents = []
    for sid in ("train_h00", "test_h00", "test_a00"):
        img = nib.load(out / by[sid]["path"])
        ijk = np.argwhere(np.asarray(img.dataobj) > 0).mean(0)
        cents.append(nib.affines.apply_affine(img.affine, ijk))
    assert np.abs(np.array(cents) - cents[0]).max() < 8.0  # random warps move it a few mm at most


def test_dicom_copy_and_its_mask(built):
    out, _ = built
    with open(out / "test_dicom.csv") as fh:
        (row,) = list(csv.DictReader(fh))
    files = sorted((out / row["dicom_dir"]).iterdir())
    assert not any(f.suffix for f in files) and not any(f.name.startswith("IM") for f in files)
    dss = [pydicom.dcmread(f) for f in files]
    mask = nib.load(out / row["mask_path"])
    assert len(dss) == mask.shape[2] == int(row["n_slices"])
    assert (dss[0].Columns, dss[0].Rows) == mask.shape[:2]
    # The DICOM stack and its mask share the grid: check slice positions against the mask affine.
    lps = np.diag([-1, -1, 1, 1.0]) @ mask.affine
    ipps = {tuple(np.round(np.array(d.ImagePositionPatient, float), 3)) for d in dss}
    want = {tuple(np.round(lps[:3, 3] + k * lps[:3, 2], 3)) for k in range(mask.shape[2])}
    assert ipps == want
    # The sagittal copy really is sagittal: slice normal along the patient's left-right axis.
    iop = np.array(dss[0].ImageOrientationPatient, float)
    assert abs(np.cross(iop[:3], iop[3:])[0]) > 0.99


def test_deterministic_by_seed(built, tmp_path):
    out, rows = built
    rows2 = _build(tmp_path / "again", 0)
    assert rows2 == rows
    assert (out / "labels.csv").read_bytes() == (tmp_path / "again" / "labels.csv").read_bytes()
    for r in rows:
        a = np.asarray(nib.load(out / r["path"]).dataobj)
        b = np.asarray(nib.load(tmp_path / "again" / r["path"]).dataobj)
        np.testing.assert_array_equal(a, b)
    for sub in ("test_dicom", "masks"):
        d1 = {p.relative_to(out): p.read_bytes() for p in (out / sub).rglob("*") if p.is_file()}
        d2 = {p.relative_to(tmp_path / "again"): p.read_bytes()
              for p in (tmp_path / "again" / sub).rglob("*") if p.is_file()}
        assert d1 == d2 and d1


def test_different_seed_differs(built, tmp_path):
    out, rows = built
    _build(tmp_path / "other", 1)
    a = np.asarray(nib.load(out / rows[0]["path"]).dataobj)
    b = np.asarray(nib.load(tmp_path / "other" / rows[0]["path"]).dataobj)
    assert a.shape != b.shape or not np.array_equal(a, b)
