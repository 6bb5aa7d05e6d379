"""The scoring method lives in the model folder (method.json), apart from any calibration:
calibrate starts from it and says what differs; settings hash canonically (5 == 5.0) while the
shipped calibrations' stored hashes stay valid."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from medidiff.cli import app
from medidiff.score.calibration import Calibration, check_calibration
from medidiff.score.config import ScoreConfig, load_score_config, stored_hash_forms
from medidiff.score.method import METHOD_FILE, MethodError, load_method, method_diff, write_method

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ("brain_t1_4mm", "brain_t1_2mm")
runner = CliRunner()


def test_write_and_load_method_round_trip(tmp_path):
    cfg = ScoreConfig(t_fractions=(0.2, 0.3), t_combine="zscore", smoothing_size=5, n_draws=2)
    path = write_method(tmp_path, cfg, {"chosen_on": "val split"}, model_hash="sha256:abc")
    assert path == tmp_path / METHOD_FILE and not list(tmp_path.glob(".*tmp*"))
    m = load_method(tmp_path)
    assert m.config == cfg and m.model_hash == "sha256:abc"
    assert m.provenance["chosen_on"] == "val split" and len(m.provenance["date"]) == 10  # ISO date added
    assert m.score_config["smoothing_size"] == 5.0  # canonical numbers on disk
    assert load_method(tmp_path / "nowhere") is None
    with pytest.raises(MethodError, match="chosen_on"):
        write_method(tmp_path, cfg, {"date": "2026-01-01"})


@pytest.mark.parametrize("text, why", [
    ("{not json", "not readable JSON"),
    ('{"format": "other"}', "not a medidiff method file"),
    ('{"format": "medidiff-method", "format_version": 1, "score_config": {"t_star": 0.1}}', "unknown score option"),
    ('{"format": "medidiff-method", "format_version": 9, "score_config": {}}', "method format 9"),
])
def test_broken_method_file_is_refused_in_one_line(tmp_path, text, why):
    (tmp_path / METHOD_FILE).write_text(text)
    with pytest.raises(MethodError, match=why) as info:
        load_method(tmp_path)
    msg = str(info.value)
    assert "\n" not in msg and str(tmp_path / METHOD_FILE) in msg and "delete it" in msg


def test_numbers_hash_canonically():
    """5 and 5.0 are one setting: --set smoothing_size=5 against a calibration that stored 5.0 was a mismatch."""
    for key, a, b in (("smoothing_size", 5, 5.0), ("min_component_mm3", 0, 0.0), ("min_component_mm3", 64, 64.0),
                      ("steps", 2, 2.0), ("erode_mm", 3, 3.0)):
        assert ScoreConfig(**{key: a}).hash({"precision": "bf16"}) == ScoreConfig(**{key: b}).hash({"precision": "bf16"})
    assert load_score_config(None, ["score.smoothing_size=5"]).hash() == \
        load_score_config(None, ["score.smoothing_size=5.0"]).hash()
    assert ScoreConfig(smoothing_size=5).hash() != ScoreConfig(smoothing_size=3).hash()
    with pytest.raises(ValueError, match="steps must be a whole number"):
        ScoreConfig(steps=1.5)
    with pytest.raises(ValueError, match="smoothing_size must be a number"):
        ScoreConfig(smoothing_size="5")


# The two calibrations shipped before numbers were canonical, as stored (git: 111f9f4 and 3ce3f0f):
# brain_t1_2mm stored smoothing_size 5 and min_component_mm3 0 (ints), brain_t1_4mm (then models/sample) 3.0 and 0.0.
_2MM = {"t_fractions": [0.2, 0.3], "t_combine": "zscore", "steps": 1, "n_draws": 2, "batch_size": 8, "noise": None,
        "precision": "auto", "seed": 0, "window_overlap": None, "structural_weight": 0.5, "ssim_sigma_mm": 6.0,
        "smoothing": "median", "smoothing_size": 5, "erode_mm": 3.0, "normalization": "voxelwise",
        "score": "largest_cluster", "min_component_mm3": 0, "topk_fraction": 0.005, "percentile": 99.9,
        "refine": False, "refine_t_fraction": 0.1, "refine_dilate_mm": 4.0, "voxel_fpr": 0.001, "scan_fpr": 0.05}
_4MM = dict(_2MM, t_fractions=[0.1], n_draws=4, smoothing_size=3.0, min_component_mm3=0.0)
del _4MM["t_combine"], _4MM["window_overlap"]
_RUNTIME = {"precision": "bf16", "device": "cpu", "noise": "gaussian", "noise_params": {}}
STORED = [("brain_t1_2mm", _2MM, "4174be2e8063d274"), ("brain_t1_4mm", _4MM, "a0b541fd8cd349ab")]


@pytest.mark.parametrize("name, stored, stored_hash", STORED)
def test_calibrations_stored_before_canonical_numbers_stay_valid(name, stored, stored_hash, tmp_path):
    """Numbers hash canonically now (5 == 5.0), yet a calibration that stored either form still matches
    its settings: loading it refuses nothing, and scoring with those settings (written either way) is valid."""
    assert stored_hash in stored_hash_forms(stored, _RUNTIME)
    from medidiff.score.calibration import calibrate_maps
    from medidiff.score.postprocess import PostProcessor
    from medidiff.score.postprocess import ModelGridMap

    cfg = ScoreConfig.from_dict(stored)
    shape = ((len(cfg.t_fractions),) if cfg.t_combine == "zscore" else ()) + (6, 6, 6)
    region = np.ones((6, 6, 6), bool)
    maps = [ModelGridMap(pre=None, raw=np.random.default_rng(i).random(shape).astype(np.float32), region=region)
            for i in range(3)]
    cal = calibrate_maps(maps, ["a", "b", "c"], PostProcessor(cfg, (2, 2, 2)), model_hash="m", runtime=_RUNTIME)
    cal.score_config, cal.score_config_hash = dict(stored), stored_hash  # exactly as shipped
    cal.save(tmp_path)
    loaded = Calibration.load(tmp_path)
    method = ScoreConfig.from_dict(stored)
    assert check_calibration(loaded, method, _RUNTIME).valid
    for written in (5, 5.0, 3, 3.0):  # a harmless --set written the other way is the same setting
        cfg = load_score_config(None, [f"score.smoothing_size={written}"], base=stored)
        assert check_calibration(loaded, cfg, _RUNTIME).valid == (float(written) == float(stored["smoothing_size"]))
    check = check_calibration(loaded, method, dict(_RUNTIME, precision="fp32"))
    assert not check.valid and 'precision: calibrated "bf16", now "fp32"' in check.reason


@pytest.mark.parametrize("model", SHIPPED)
def test_shipped_models_carry_their_method(model):
    """Every shipped model folder has a method.json; a calibration it ships is hash-consistent and was made
    with that method (a folder whose weights are being replaced may ship no calibration yet)."""
    folder = ROOT / "models" / model
    method = load_method(folder)
    assert method is not None, f"{folder} has no {METHOD_FILE}"
    assert method.provenance["chosen_on"] and method.provenance["date"]
    if not (folder / "calibration.json").is_file():
        return
    raw = json.loads((folder / "calibration.json").read_text())
    assert raw["score_config_hash"] in stored_hash_forms(raw["score_config"], raw["runtime"])
    cal = Calibration.load(folder)
    assert method_diff(method.score_config, cal.score_config) == [], "the shipped calibration is not of the method"
    assert check_calibration(cal, method.config, cal.runtime).valid


def test_edited_calibration_hash_is_refused(tmp_path):
    from medidiff.score.calibration import CalibrationError, calibrate_maps
    from medidiff.score.postprocess import ModelGridMap, PostProcessor

    region = np.ones((6, 6, 6), bool)
    maps = [ModelGridMap(pre=None, raw=np.random.default_rng(i).random((6, 6, 6)).astype(np.float32), region=region)
            for i in range(3)]
    calibrate_maps(maps, ["a", "b", "c"], PostProcessor(ScoreConfig(structural_weight=0.5), (2, 2, 2)),
                   model_hash="m", runtime=_RUNTIME).save(tmp_path)
    d = json.loads((tmp_path / "calibration.json").read_text())
    d["score_config"]["structural_weight"] = 0.0  # thresholds no longer belong to these settings
    (tmp_path / "calibration.json").write_text(json.dumps(d))
    with pytest.raises(CalibrationError, match="does not match the settings stored with it"):
        Calibration.load(tmp_path)


def _healthy(folder: Path, data, affine, n=3):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for i in range(n):
        vol = data * rng.uniform(0.9, 1.1) + rng.normal(0, 10, data.shape)
        nib.save(nib.Nifti1Image(vol.astype(np.int16), affine), folder / f"h{i}.nii.gz")
    return folder


def test_bare_calibrate_keeps_the_method_and_set_is_explicit(tiny_model_dir, mni_small, tmp_path):
    """The issue's defect: a bare `calibrate` built its settings from the defaults, not from the method."""
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    for name in ("calibration.json", "calibration.safetensors"):
        (model / name).unlink(missing_ok=True)
    method_cfg = ScoreConfig(n_draws=2, batch_size=4, structural_weight=0.5, smoothing_size=5, score="topk_mean",
                             scan_fpr=0.2)
    write_method(model, method_cfg, {"chosen_on": "a test's val split"})
    healthy = _healthy(tmp_path / "healthy", *mni_small)
    res = runner.invoke(app, ["calibrate", "--model", str(model), "--healthy", str(healthy), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "settings: the model's method" in res.output and "differ" not in res.output
    cal = Calibration.load(model)
    assert method_diff(method_cfg.to_dict(), cal.score_config) == []
    assert cal.score_config_hash == method_cfg.hash(cal.runtime)
    # an explicit change is printed, with what scoring needs to match it
    res = runner.invoke(app, ["calibrate", "--model", str(model), "--healthy", str(healthy), "--no-progress",
                              "--set", "score.smoothing_size=3", "--set", "score.voxel_fpr=0.01"])
    assert res.exit_code == 0, res.output
    assert "settings differ from the model's method" in res.output
    assert "smoothing_size: method 5.0, now 3.0" in res.output and "voxel_fpr: method 0.001, now 0.01" in res.output
    assert "--set score.smoothing_size=3.0 --set score.voxel_fpr=0.01" in res.output
    # ...and scoring, which reads the method, does not apply that calibration unless the same --set is given
    from medidiff.batch.scorer import load_scorer

    logs = []
    scorer = load_scorer(model, log=logs.append)
    assert scorer.calibration is None and not scorer.calibration_check.valid
    assert "smoothing_size: calibrated 3.0, now 5.0" in scorer.calibration_check.reason
    scorer = load_scorer(model, overrides=("score.smoothing_size=3", "score.voxel_fpr=0.01"), log=logs.append)
    assert scorer.calibration is not None and scorer.calibration_check.valid
    assert any("settings differ from the model's method" in m for m in logs)


def test_folder_without_method_falls_back_and_says_so(tiny_model_dir, tmp_path):
    from medidiff.batch.scorer import load_scorer

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    for name in ("calibration.json", "calibration.safetensors", METHOD_FILE):
        (model / name).unlink(missing_ok=True)
    logs = []
    scorer = load_scorer(model, log=logs.append)
    assert scorer.cfg == ScoreConfig() and scorer.method is None
    assert len(logs) == 1 and "no method.json and no calibration: scoring with the default settings" in logs[0]
