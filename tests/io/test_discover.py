"""Discovery over a messy folder: every file accounted for once, walk never stops."""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
from dicom_factory import build_messy_folder, regular_positions, write_series

from medidiff.io.discover import discover

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def test_messy_folder_accounts_for_every_file(tmp_path):
    root = build_messy_folder(tmp_path / "in")
    found = discover(root)
    ids = sorted(s.scan_id for s in found.scans)
    assert len(ids) == 2 and "lps" in ids
    dicom = next(s for s in found.scans if s.format == "dicom")
    assert dicom.shape == (8, 8, 4)
    reasons = {os.path.basename(s.path): s.reason for s in found.skipped}
    assert "4D" in reasons["fourd.nii.gz"]
    assert "not a volume" in reasons["flat.nii"] or "2D" in reasons["flat.nii"]
    assert ".txt" in reasons["notes.txt"] and ".png" in reasons["image.png"]
    assert "empty" in reasons["zero"]
    assert "not a DICOM" in reasons["random.dcm"]
    assert "symlink" in reasons["loop"] and "broken symlink" in reasons["dangling"]
    listed = [os.path.basename(p) for s in found.scans for p in s.paths] + [os.path.basename(s.path) for s in found.skipped]
    assert len(listed) == len(set(listed)) == 13  # each file reported once


def test_single_file_and_missing_path(tmp_path):
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4)), tmp_path / "one.nii")
    found = discover(tmp_path / "one.nii")
    assert [s.scan_id for s in found.scans] == ["one"]
    missing = discover(tmp_path / "nope")
    assert not missing.scans and "does not exist" in missing.skipped[0].reason


def test_scan_ids_are_safe_and_unique(tmp_path):
    bad = tmp_path / "we ird" / "..évil;rm -rf"
    bad.mkdir(parents=True)
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4)), bad / "x.nii")
    write_series(tmp_path / "s1", np.ones((4, 4, 3), np.int16), regular_positions((0, 0, 0), AXIAL, 1.0, 3), AXIAL,
                 (1.0, 1.0), patient_id="../../etc/passwd", patient_name="$(rm -rf /)")
    found = discover(tmp_path)
    for s in found.scans:
        assert all(c.isalnum() or c in "._-" for c in s.scan_id), s.scan_id
        assert ".." not in s.scan_id and not s.scan_id.startswith(".")
    dicom = next(s for s in found.scans if s.format == "dicom")
    assert "etc" not in dicom.scan_id and "rm" not in dicom.scan_id  # id from the UID, never patient text
    assert len({s.scan_id for s in found.scans}) == 2
