"""A small real scoring run for the report tests: NIfTI stored RAS and LPS, a
reconstruction, one broken file (failed scan) and a DICOM series with patient
identifiers (also in its folder name)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from dicom_factory import regular_positions, write_series
from volume_factory import reorient

ROOT = Path(__file__).resolve().parents[2]

FAST = ("score.n_draws=2", "score.batch_size=4")
PATIENT_NAME = "Zyxwort^Quintessa"
PATIENT_ID = "PID-84731-QX"
PHI_FOLDER = "Zyxwort_Quintessa_PHIDIR"


def _input_dependent_model(folder: Path) -> Path:
    """The tiny config with *all* weights random. MONAI zero-initialises the last conv
    of every block and the output conv, so a freshly built network predicts noise 0
    for every input and its anomaly maps do not depend on the scan at all; the
    report tests need maps (and scores) that differ between scans."""
    import torch

    from medidiff.model.config import load_config
    from medidiff.model.network import build_network
    from medidiff.model.store import save_model

    torch.manual_seed(1)
    cfg = load_config(ROOT / "configs" / "tiny.yaml")
    net = build_network(cfg.model)
    state = {}
    for k, v in net.state_dict().items():
        v = v.detach().clone()
        if v.ndim > 1 and not v.any():
            v.normal_(0, 0.5 / float(np.sqrt(v[0].numel())))
        state[k] = v
    save_model(folder, state, cfg, metadata={"training": {"steps": 0, "note": "random weights for report tests"}})
    return folder


@pytest.fixture(scope="session")
def phi():
    """The identifiers written into the DICOM series of ``scored_run``."""
    return {"name": PATIENT_NAME, "id": PATIENT_ID, "folder": PHI_FOLDER}


@pytest.fixture(scope="session")
def scored_run(mni_small, tmp_path_factory):
    from medidiff.batch.run import score_folder
    from medidiff.batch.calibrate import calibrate_model

    root = tmp_path_factory.mktemp("report_run")
    model = _input_dependent_model(root / "model")
    data, affine = mni_small
    # mni_small is already in scanner-like units (×1000): scaling again would overflow int16
    rng = np.random.default_rng(0)
    for i in range(2):
        noisy = (data + rng.normal(0, 20, data.shape)).astype(np.int16)
        for kind in ("RAS", "LPS"):
            d, a = reorient(noisy, affine, kind)
            (root / "healthy").mkdir(exist_ok=True)
            nib.save(nib.Nifti1Image(d, a), root / "healthy" / f"h{i}_{kind}.nii.gz")
    calibrate_model(model, root / "healthy", overrides=FAST + ("score.scan_fpr=0.3", "score.voxel_fpr=0.01"),
                    progress=False, log=lambda m: None)

    inp = root / "in"
    inp.mkdir()
    lesion = data + rng.normal(0, 20, data.shape)
    c = np.array(data.shape) // 2 + np.array([3, 2, 2])
    lesion[c[0] - 2:c[0] + 2, c[1] - 2:c[1] + 2, c[2] - 2:c[2] + 2] += 0.6 * data.max()
    lesion = lesion.astype(np.int16)
    for kind in ("RAS", "LPS"):
        d, a = reorient(lesion, affine, kind)
        nib.save(nib.Nifti1Image(d, a), inp / f"lesion_{kind}.nii.gz")
    good = (inp / "lesion_RAS.nii.gz").read_bytes()
    (inp / "broken.nii.gz").write_bytes(good[: len(good) // 2])
    stored = np.clip(data * 1.05 + rng.normal(0, 20, data.shape), 0, None).astype(np.int16)
    iop = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    pos = regular_positions((-90.0, 120.0, -70.0), iop, 8.0, stored.shape[2])
    write_series(inp / PHI_FOLDER, stored, pos, iop, (8.0, 8.0), patient_id=PATIENT_ID, patient_name=PATIENT_NAME)

    out = root / "out"
    summary = score_folder(model, inp, out, overrides=(), write_reconstruction=True, progress=False,
                           log=lambda m: None)
    assert summary.n_scored == 3 and summary.n_failed == 1, summary.failures
    return out


# --------------------------------------------------------------------------------------------
# a real run: the bundled template-space model on a real head, a lesioned scan and a QC failure

REAL_HEAD = ROOT / "sample_data" / "real" / "siemens_t1_2d_sag_hfs"
LESIONED = "test_a07"  # one hyperintense lesion of 7.6 cm³ (sample_data/lesions.json)
QC_RANGES = Path(__file__).resolve().parent / "data" / "brain_t1_4mm_calib_qc_ranges.json"


@pytest.fixture(scope="session")
def real_run(tmp_path_factory):
    """models/brain_t1_4mm scores (1) a healthy volunteer's whole head exactly as a Siemens scanner
    wrote it (4.8 mm sagittal DICOM; the model flags it), (2) a lesioned sample_data test scan
    with its ground truth, (3) a skull-stripped head whose header voxels are 0.6× too small, so
    the front end's brain-volume check fails it. run.json gets the calibration scans' QC ranges
    (measured by make_calib_qc_ranges.py) where the scorer does not yet store them.

    Returns (output folder, labels CSV, the lesioned scan's id)."""
    import json
    import shutil

    from medidiff.batch.run import score_folder

    model = ROOT / "models" / "brain_t1_4mm"
    if not (REAL_HEAD.is_dir() and (model / "calibration.json").is_file()):
        pytest.skip("sample_data/real or models/brain_t1_4mm missing")
    root = tmp_path_factory.mktemp("real_run")
    inp = root / "in"
    inp.mkdir()
    shutil.copytree(REAL_HEAD, inp / "siemens_head")
    shutil.copy(ROOT / "sample_data" / "test" / f"{LESIONED}.nii.gz", inp / f"{LESIONED}.nii.gz")
    img = nib.load(ROOT / "sample_data" / "test" / "test_h03.nii.gz")
    small = img.affine.copy()
    small[:3, :3] *= 0.6  # brain volume × 0.22: below the plausible adult range
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj), small, img.header), inp / "small_header_head.nii.gz")
    out = root / "out"
    summary = score_folder(model, inp, out, write_reconstruction=True, progress=False, log=lambda m: None)
    assert summary.n_scored == 2 and summary.n_failed == 1, summary.failures
    run = json.loads((out / "run.json").read_text())
    if not (run.get("calibration") or {}).get("qc_ranges"):
        measured = json.loads(QC_RANGES.read_text())
        assert measured["model_hash"] == run["model_hash"], "re-run tests/report/make_calib_qc_ranges.py"
        run["calibration"]["qc_ranges"] = measured["qc_ranges"]
        (out / "run.json").write_text(json.dumps(run, indent=2))
    labels = root / "labels.csv"
    mask = ROOT / "sample_data" / "masks" / "test" / f"{LESIONED}_mask.nii.gz"
    labels.write_text(f"scan_id,label,mask_path\n{LESIONED},1,{mask}\n")
    return out, labels, LESIONED
