"""Hostile or mismatched model folders: refused with a clear message, never executed."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from faults.kit import blob, save_nifti, write_dicom_series
from medidiff.cli import app
from medidiff.model.folder import CheckpointError, sha256_file
from medidiff.model.store import load_model

runner = CliRunner()


class _Payload:
    """Unpickling this creates the marker file: proof that a pickle was executed."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _copy(model_dir: Path, dst: Path) -> Path:
    shutil.copytree(model_dir, dst)
    return dst


def _rehash(model: Path) -> None:
    """What an attacker controlling the folder does: make model.json's hash match the file."""
    meta = json.loads((model / "model.json").read_text())
    meta["model_hash"] = sha256_file(model / "model.safetensors")
    (model / "model.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("kind", ["pickle-protocol-2", "pickle-protocol-0", "torch.save"])
def test_pickle_checkpoint_is_refused_without_executing(tiny_model_dir, tmp_path, kind):
    model = _copy(tiny_model_dir, tmp_path / "model")
    marker = tmp_path / "PWNED"
    payload = _Payload(marker)
    wfile = model / "model.safetensors"
    if kind == "torch.save":
        torch.save({"w": payload}, wfile)
    else:
        wfile.write_bytes(pickle.dumps(payload, protocol=int(kind[-1])))
    _rehash(model)
    with pytest.raises(CheckpointError, match="safetensors"):
        load_model(model)
    assert not marker.exists()
    res = runner.invoke(app, ["score", "--model", str(model), "--input", str(tmp_path), "--out", str(tmp_path / "o"),
                              "--no-progress", "--no-report"])
    assert res.exit_code == 2 and "never unpickles" in res.output and "Traceback" not in res.output
    assert not marker.exists()


def test_pickle_only_folder_is_refused(tmp_path):
    (tmp_path / "m").mkdir()
    torch.save({"w": _Payload(tmp_path / "PWNED")}, tmp_path / "m" / "model.pt")
    with pytest.raises(CheckpointError, match="pickle"):
        load_model(tmp_path / "m")
    assert not (tmp_path / "PWNED").exists()


def test_hash_mismatch_is_refused(tiny_model_dir, tmp_path):
    model = _copy(tiny_model_dir, tmp_path / "model")
    data = bytearray((model / "model.safetensors").read_bytes())
    data[-10] ^= 0xFF  # one flipped bit in the weights
    (model / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match model.json"):
        load_model(model)
    save_nifti(tmp_path / "in" / "a.nii.gz", blob((18, 18, 18)))
    res = runner.invoke(app, ["score", "--model", str(model), "--input", str(tmp_path / "in"), "--out",
                              str(tmp_path / "o"), "--no-progress", "--no-report"])
    assert res.exit_code == 2 and "refusing to load" in res.output
    assert len(res.output.strip().splitlines()) == 1, res.output


@pytest.mark.parametrize("key,value,expect", [
    (("preprocess", "grid"), [24, 24, 24], "preprocess.grid"),
    (("preprocess", "modality"), "ct", "preprocess.modality"),
    (("model", "channels"), [8, 32], "model.channels"),
])
def test_model_json_edited_for_another_grid_or_modality(tiny_model_dir, tmp_path, key, value, expect):
    model = _copy(tiny_model_dir, tmp_path / "model")
    meta = json.loads((model / "model.json").read_text())
    meta["config"][key[0]][key[1]] = value
    if key[0] == "preprocess":
        meta["preprocess"][key[1]] = value
    (model / "model.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=expect) as err:
        load_model(model)
    assert "another grid/modality" in str(err.value)


def test_ct_scan_given_to_mri_model_fails_with_modality_message(tiny_model_dir, tmp_path):
    write_dicom_series(tmp_path / "in" / "ct", modality="CT")
    save_nifti(tmp_path / "in" / "mr.nii.gz", blob((18, 18, 18)))
    res = runner.invoke(app, ["score", "--model", str(tiny_model_dir), "--input", str(tmp_path / "in"), "--out",
                              str(tmp_path / "o"), "--no-progress", "--no-report", "--set", "score.n_draws=1"])
    assert res.exit_code == 1, res.output
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["n_scored"] == 1 and summary["n_failed"] == 1
    err = summary["failures"][0]["error"]
    assert "modality CT" in err and "trained on MRI" in err and str(tmp_path / "in" / "ct") in err


def _ct_head(shape=(20, 20, 20), seed=0) -> np.ndarray:
    """A CT-like head in Hounsfield units: air -1000 around, soft tissue ~40, a bone shell ~1000."""
    rng = np.random.default_rng(seed)
    zz = np.indices(shape).astype(np.float32)
    r = np.sqrt(((zz - (np.array(shape)[:, None, None, None] - 1) / 2) ** 2).sum(0))
    ct = np.full(shape, -1000.0, np.float32)
    ct[r < 8] = 1000.0
    ct[r < 7] = 40.0
    return ct + rng.normal(0, 5, shape).astype(np.float32)


def test_ct_nifti_given_to_mri_model_fails_with_modality_message(tiny_model_dir, tmp_path):
    save_nifti(tmp_path / "in" / "ct_head.nii.gz", _ct_head())
    save_nifti(tmp_path / "in" / "mr.nii.gz", blob((18, 18, 18)))
    res = runner.invoke(app, ["score", "--model", str(tiny_model_dir), "--input", str(tmp_path / "in"), "--out",
                              str(tmp_path / "o"), "--no-progress", "--no-report", "--set", "score.n_draws=1"])
    assert res.exit_code == 1, res.output
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["n_scored"] == 1 and summary["n_failed"] == 1
    err = summary["failures"][0]["error"]
    assert "ct_head.nii.gz" in err and "looks like CT" in err and "near -1000" in err and "trained on MRI" in err


def test_modality_hints_from_intensities_and_header():
    from medidiff.io.modality import check_modality, intensity_hint
    from medidiff.io.errors import ScanError
    from medidiff.volume import Provenance, Volume

    assert intensity_hint(_ct_head())[0] == "ct"
    mr = blob((18, 18, 18))
    assert intensity_hint(mr)[0] == "mri"
    # MRI with small negative interpolation ringing is still MRI, not "unknown"
    assert intensity_hint(mr - 0.01 * mr.max() * (np.indices(mr.shape).sum(0) % 2))[0] == "mri"
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    with pytest.raises(ScanError, match="looks like MRI"):  # an MRI NIfTI given to a CT model
        check_modality(Volume(mr, affine, Provenance(source_paths=["mr.nii"])), "ct")
    check_modality(Volume(_ct_head(), affine, Provenance(source_paths=["ct.nii"])), "ct")
    # a header describing MR echo times decides an ambiguous intensity range
    odd = np.linspace(-500, 500, 18 ** 3, dtype=np.float32).reshape(18, 18, 18)
    assert intensity_hint(odd)[0] is None
    with pytest.raises(ScanError, match="echo/repetition"):
        check_modality(Volume(odd, affine, Provenance(source_paths=["x.nii"], series_description="TE=30;TR=2000")),
                       "ct")
