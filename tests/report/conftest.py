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
    from medidiff.train.checkpoint import save_model

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
    from medidiff.score.batch import score_folder
    from medidiff.score.calibration import calibrate_model

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
