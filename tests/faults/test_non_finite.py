"""NaN/Inf voxels are named: inside an image they are refused in one line (file, reason, what to do),
never scored as zeros that fail later as "registration failed"; padding at the border is set to 0
with a warning, and a later failure of such a scan names it."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from faults.kit import blob
from medidiff.io.content import check_content
from medidiff.io.errors import ScanError
from medidiff.io.nifti import read_nifti
from medidiff.volume import Provenance, Volume


def _save(path, data):
    nib.save(nib.Nifti1Image(data.astype(np.float32), np.diag([2.0, 2.0, 2.0, 1.0])), str(path))
    return path


def test_nan_inside_the_image_is_refused_by_name(tmp_path):
    data = blob((30, 30, 30), value=600.0)
    data[12:16, 12:16, 12:16] = np.nan  # 64 voxels inside the head: 0.2 % of the image
    data[20, 20, 20] = np.inf
    path = _save(tmp_path / "holes.nii.gz", data)
    with pytest.raises(ScanError) as info:
        read_nifti(path)
    msg = str(info.value)
    assert msg.startswith(str(path)) and "\n" not in msg
    assert "65 voxels" in msg and "NaN/Inf" in msg and "inside the image" in msg and "re-export" in msg


def test_nan_padding_is_zeroed_with_a_warning(tmp_path):
    data = blob((30, 30, 30), value=600.0)
    data[:3] = np.nan  # slabs at the border, as tools that write NaN outside the head do
    data[:, -2:] = np.nan
    vol = read_nifti(_save(tmp_path / "padded.nii.gz", data))
    assert np.isfinite(vol.array).all() and (vol.array[:3] == 0).all()
    assert any("NaN/Inf" in w and "border" in w for w in vol.provenance.warnings)
    mostly = np.full((10, 10, 10), np.nan, np.float32)
    mostly[0, 0, 0] = 1.0
    with pytest.raises(ScanError, match="no usable intensities"):
        read_nifti(_save(tmp_path / "nan.nii.gz", mostly))


def test_any_reader_non_finite_volume_is_refused_by_content_check():
    arr = blob((12, 12, 12))
    arr[5, 5, 5] = np.nan
    with pytest.raises(ScanError, match="1 voxels .* NaN/Inf"):
        check_content(Volume(arr, np.eye(4), Provenance(source_paths=["/data/x.dcm"])))


def test_scoring_names_the_nans(tiny_model_dir, tmp_path):
    from medidiff.batch.run import score_folder

    src = tmp_path / "in"
    src.mkdir()
    data = blob((24, 24, 24), value=600.0)
    data[10:13, 10:13, 10:13] = np.nan
    _save(src / "holes.nii.gz", data)
    score_folder(tiny_model_dir, src, tmp_path / "out", overrides=("score.n_draws=1",), progress=False,
                 log=lambda m: None)
    res = json.loads(next((tmp_path / "out" / "scans").glob("*/result.json")).read_text())
    assert res["status"] == "failed" and "NaN/Inf" in res["error"] and "registration" not in res["error"]
