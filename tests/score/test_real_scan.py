"""The real-scan path end to end: a healthy volunteer's whole head, exactly as a Siemens scanner
exported it (sample_data/real/siemens_t1_2d_sag_hfs), scored with the bundled, calibrated model: brain extraction,
bias correction and registration in, every map back on the scanner's own grid.

The scan was used neither to train nor to calibrate the model."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
REAL = ROOT / "sample_data" / "real" / "siemens_t1_2d_sag_hfs"


def test_real_whole_head_scan_goes_through_the_front_end_and_back_onto_its_own_grid(tmp_path):
    from medidiff.io.discover import discover
    from medidiff.batch.run import score_folder

    assert json.loads((ROOT / "models" / "brain_t1_4mm" / "model.json").read_text())["preprocess"]["space"] == "template"
    out = tmp_path / "out"
    score_folder(ROOT / "models" / "brain_t1_4mm", REAL, out, dicom_outputs=True, progress=False, log=lambda m: None)
    (scan_dir,) = [p for p in (out / "scans").iterdir() if p.is_dir()]
    res = json.loads((scan_dir / "result.json").read_text())
    assert res["status"] == "ok", res.get("error")
    # The score and flag are not asserted: the bundled model, trained on warps of one template
    # brain, flags real healthy heads (README, model card); this test guards the real-scan path.
    assert res["score"] is not None and res["flag"] is not None
    qc = res["qc"]
    assert qc["brain_method"] == "deepbet" and 1100 < qc["brain_volume_ml"] < 1900
    assert qc["registration_similarity"] > 0.6 and qc["brain_inside_grid"] > 0.99
    # every map on the scanner's own grid; nothing outside the brain
    vol = discover(REAL).scans[0].load()
    amap, brain = nib.load(scan_dir / "anomaly_map.nii.gz"), nib.load(scan_dir / "brain_mask.nii.gz")
    for img in (amap, brain, nib.load(scan_dir / "mask.nii.gz")):
        assert img.shape == vol.shape and np.allclose(img.affine, vol.affine, atol=1e-4)
    a, b = np.asarray(amap.dataobj), np.asarray(brain.dataobj) > 0
    assert np.all(a[~b] == 0) and 0.1 < b.mean() < 0.5
    assert (scan_dir / "seg.dcm").is_file() and (scan_dir / "pmap.dcm").is_file()
    # scores.csv shows the QC numbers next to the score
    header = (out / "scores.csv").read_text().splitlines()[0].split(",")
    assert {"brain_volume_ml", "registration_similarity", "brain_inside_grid"} <= set(header)


def test_real_healthy_test_heads_score_below_the_scan_threshold(tmp_path):
    """Two real healthy heads of the real cohort's *test* role (IXI, never trained, calibrated or
    tuned on) are scored with the quick-start model and its shipped calibration: not flagged."""
    import pandas as pd

    from medidiff.batch.run import score_folder

    ixi = ROOT / "sample_data" / "real" / "ixi_hh"
    out = tmp_path / "out"
    score_folder(ROOT / "models" / "brain_t1_4mm", ixi, out, dicom_outputs=False, progress=False, log=lambda m: None)
    run = json.loads((out / "run.json").read_text())
    assert run["calibration"]["valid"], run["calibration"].get("invalid_reason")
    threshold = run["calibration"]["scan_threshold"]
    scores = pd.read_csv(out / "scores.csv")
    assert len(scores) == 2 and (scores.status == "ok").all()
    for row in scores.itertuples():
        assert row.score < threshold, f"{row.scan_id}: {row.score:.0f} mm³ against a scan threshold of {threshold:.0f}"
        assert not bool(row.flag)
