"""Baselines on real MNI anatomy: intensity thresholding finds a bright blob, the
normative model is ~0 on its own training scans, the autoencoder trains and writes
maps on the source grid — all through the same output layout as `medidiff score`."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from volume_factory import reorient

from medidiff.baselines import load_preprocess_config, make_baseline, run_baseline
from medidiff.baselines.autoencoder import AutoencoderBaseline
from medidiff.baselines.normative import NormativeBaseline
from medidiff.evaluate import EvalOptions, evaluate_run
from medidiff.evaluate.metrics import auroc, average_precision
from medidiff.preprocess import preprocess
from medidiff.preprocess_config import PreprocessConfig
from medidiff.lesions import insert_anomaly
from medidiff.volume import Volume

# 8 mm model grid covering the MNI head (192 x 224 x 192 mm)
PCFG = PreprocessConfig(spacing=(8.0, 8.0, 8.0), grid=(24, 28, 24))


@pytest.fixture(scope="module")
def mni_4mm():
    from nilearn.datasets import load_mni152_template
    from scipy import ndimage

    img = load_mni152_template(resolution=2)
    data = np.asarray(img.get_fdata(), dtype=np.float32)
    small = ndimage.zoom(ndimage.gaussian_filter(data, 0.7), 0.5, order=1)
    affine = img.affine.copy()
    affine[:3, :3] *= 2.0
    return small.astype(np.float32), affine


def _cohort(folder, data, affine, n, seed, kinds=("RAS",)):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        kind = kinds[i % len(kinds)]
        d, a = reorient(data * rng.uniform(0.9, 1.1), affine, kind)
        noisy = np.where(d > 0, d + rng.normal(0, 0.02 * d.max(), d.shape), 0)
        nib.save(nib.Nifti1Image(noisy.astype(np.float32), a), folder / f"s{seed}_{i}_{kind}.nii.gz")
    return folder


def test_intensity_baseline_finds_bright_blob(mni_4mm):
    data, affine = mni_4mm
    out, m, _ = insert_anomaly(data, (4.0, 4.0, 4.0), "hyper", np.random.default_rng(0), diameter_mm=(20, 24),
                               contrast=(1.5, 2.0))
    amap, region = make_baseline("intensity-hyper").map(Volume(out, affine))
    assert amap.shape == data.shape and region.any()
    y = m[region] > 0
    assert y.sum() > 20
    assert auroc(y, amap[region]) > 0.9
    assert average_precision(y, amap[region]) > 0.5
    assert np.median(amap[m > 0]) > np.percentile(amap[region & (m == 0)], 99)
    # the hypo variant does not see a bright blob
    hypo, _ = make_baseline("intensity", variant="hypo").map(Volume(out, affine))
    assert auroc(y, hypo[region]) < 0.6


def test_normative_zmap_near_zero_on_training_scans(mni_small, tmp_path):
    data, affine = mni_small
    train = _cohort(tmp_path / "train", data, affine, 4, seed=1, kinds=("RAS", "LPS"))
    nm = NormativeBaseline(PCFG)
    nm.fit(train, log=lambda m: None)
    assert nm.n_train == 4
    from medidiff.io.discover import discover

    zs, regions = [], []
    for ref in discover(train).scans:
        pre = preprocess(ref.load(), PCFG)
        z, region = nm.zmap(pre, signed=True)
        assert region.sum() > 100
        assert abs(float(z[region].mean())) < 0.5
        assert float(np.abs(z[region]).mean()) < 1.2  # in-sample |z| is bounded by sqrt(n-1)
        zs.append(z)
        regions.append(region & pre.foreground)
    common = np.logical_and.reduce(regions)
    # where every training scan is in the brain, the training z-maps average to exactly 0
    np.testing.assert_allclose(np.mean(zs, axis=0)[common], 0.0, atol=1e-4)
    # a bright blob stands out in |z|, on the source grid
    vol = Volume(data, affine)
    # (a blob bigger than ~0.5% of the brain shifts the p99.5 intensity normalisation of the whole scan;
    # with this cohort's tiny voxel std that swamps everything — keep it small and moderately bright)
    out, m, _ = insert_anomaly(data, vol.spacing, "hyper", np.random.default_rng(2), diameter_mm=(20, 24),
                               contrast=(0.8, 1.0))
    amap, region = nm.map(Volume(out, affine))
    assert amap.shape == data.shape
    y = m[region] > 0
    assert y.sum() > 5 and auroc(y, amap[region]) > 0.9
    nm.save(tmp_path / "state")
    again = NormativeBaseline.load(tmp_path / "state")
    np.testing.assert_array_equal(again.mean, nm.mean)


def test_autoencoder_trains_and_writes_score_layout(mni_small, tmp_path):
    data, affine = mni_small
    train = _cohort(tmp_path / "train", data, affine, 3, seed=3)
    calib = _cohort(tmp_path / "calib", data, affine, 2, seed=4)
    inp = _cohort(tmp_path / "input", data, affine, 2, seed=5, kinds=("LPS", "permuted"))
    ae = AutoencoderBaseline(PCFG, channels=(8, 16), latent=4, max_steps=4, minutes=None, batch_size=2)
    summary = run_baseline(ae, train=train, calib=calib, input=inp, out=tmp_path / "out", voxel_fpr=0.01,
                           scan_fpr=0.2, log=lambda m: None)
    assert summary["n_scored"] == 2 and summary["n_failed"] == 0
    out = tmp_path / "out"
    assert ae.history["steps"] == 4
    assert (out / "baseline" / "autoencoder.safetensors").is_file()
    for src in sorted(inp.glob("*.nii.gz")):
        sid = src.name[: -len(".nii.gz")]
        s = nib.load(str(src))
        for name, dtype in (("anomaly_map", np.float32), ("mask", np.uint8)):
            img = nib.load(str(out / "scans" / sid / f"{name}.nii.gz"))
            assert img.shape == s.shape and img.get_data_dtype() == dtype
            np.testing.assert_allclose(img.affine, s.affine, atol=1e-5)
        res = json.loads((out / "scans" / sid / "result.json").read_text())
        assert res["status"] == "ok" and isinstance(res["flag"], bool) and res["score"] > 0
    df = pd.read_csv(out / "scores.csv")
    assert list(df.columns)[:6] == ["scan_id", "source_path", "format", "score", "percentile", "flag"]
    run = json.loads((out / "run.json").read_text())
    assert run["method"] == "baseline:autoencoder" and run["calibration"]["voxel_threshold"] > 0
    # reload the saved weights: same maps
    again = AutoencoderBaseline.load(out / "baseline")
    vol = Volume(data, affine)
    np.testing.assert_allclose(again.map(vol)[0], ae.map(vol)[0], atol=1e-5)


def test_intensity_run_is_evaluable(mni_small, tmp_path):
    """Baseline output → `evaluate` unchanged (labels with masks)."""
    data, affine = mni_small
    calib = _cohort(tmp_path / "calib", data, affine, 3, seed=6)
    inp = tmp_path / "input"
    inp.mkdir()
    rows = []
    rng = np.random.default_rng(7)
    for i in range(4):
        arr = data * rng.uniform(0.9, 1.1)
        m = np.zeros(data.shape, np.uint8)
        if i >= 2:
            arr, m, _ = insert_anomaly(arr, (8.0,) * 3, "hyper", rng, diameter_mm=(24, 30), contrast=(1.5, 2.0))
        sid = f"x{i}"
        nib.save(nib.Nifti1Image(arr.astype(np.float32), affine), inp / f"{sid}.nii.gz")
        nib.save(nib.Nifti1Image(m, affine), tmp_path / f"{sid}_mask.nii.gz")
        rows.append({"scan_id": sid, "path": f"input/{sid}.nii.gz", "label": int(i >= 2),
                     "mask_path": f"{sid}_mask.nii.gz", "anomaly_types": "hyper" if i >= 2 else ""})
    pd.DataFrame(rows).to_csv(tmp_path / "labels.csv", index=False)
    run_baseline(make_baseline("intensity-hyper"), calib=calib, input=inp, out=tmp_path / "out",
                 voxel_fpr=0.01, log=lambda m: None)
    rep = evaluate_run(tmp_path / "out", tmp_path / "labels.csv", opts=EvalOptions(n_boot=50, plots=False),
                       log=lambda m: None)
    assert rep["n_evaluated"] == 4 and not rep["missing"]
    assert rep["method"] == "baseline:intensity-hyper"
    assert rep["voxel"]["available"] and rep["voxel"]["auroc"] > 0.8
    assert rep["voxel"]["calibrated_dice"] is not None


def test_preprocess_config_defaults_to_brain_t1_4mm_yaml():
    import yaml

    from volume_factory import ROOT

    expected = PreprocessConfig.from_dict(yaml.safe_load((ROOT / "configs" / "brain_t1_4mm.yaml").read_text())["preprocess"])
    assert load_preprocess_config(None) == expected
