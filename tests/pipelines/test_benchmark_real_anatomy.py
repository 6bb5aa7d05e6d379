"""pipelines/benchmark_real_anatomy.py end to end: 'real' heads made from the shipped template with
a known pose, a tiny template-space model, the normative baseline; metrics on the scans' own grids."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from frontend_factory import scan_from_template, template_to_scan
from medidiff.io import write_nifti
from pipeline_scripts import load_pipeline

ROOT = Path(__file__).resolve().parents[2]


def _load():
    return load_pipeline("benchmark_real_anatomy")


def _tiny_template_model(folder: Path) -> Path:
    import torch

    from medidiff.model.config import load_config
    from medidiff.model.network import build_network
    from medidiff.train.checkpoint import save_model

    torch.manual_seed(0)
    cfg = load_config(ROOT / "configs" / "tiny.yaml", ["preprocess.space=template", "preprocess.intensity=wm_median",
                                                       "preprocess.spacing=[12,12,12]", "preprocess.grid=[16,16,16]",
                                                       "preprocess.frontend.bias=none"])
    net = build_network(cfg.model)
    with torch.no_grad():
        for p in net.parameters():
            if p.ndim > 1 and not p.any():
                p.normal_(0.0, 0.02)
    save_model(folder, {k: v.detach().clone() for k, v in net.state_dict().items()}, cfg, metadata={})
    return folder


def test_real_anatomy_benchmark_end_to_end(tmp_path):
    bench = _load()
    poses = [template_to_scan(), template_to_scan(rot_deg=(-5, 3, -8), shift_mm=(-6, 4, 0), scale=0.9)]
    real = tmp_path / "real"
    for i, pose in enumerate(poses):
        write_nifti(scan_from_template(pose, orientation=("LPS", "PSR")[i], name=f"head{i}.nii.gz"), real / f"head{i}.nii.gz")
    data = tmp_path / "data"  # the training/calibration cohort of the baselines
    for split, n in (("train", 3), ("calib", 3)):
        for j in range(n):
            vol = scan_from_template(template_to_scan(shift_mm=(j, -j, 2 * j), scale=0.95 + 0.02 * j))
            write_nifti(vol, data / split / f"{split}{j}.nii.gz")
    model = _tiny_template_model(tmp_path / "model")
    from medidiff.score.calibration import calibrate_model

    calibrate_model(model, data / "calib", overrides=("score.n_draws=1", "score.scan_fpr=0.34", "score.voxel_fpr=0.01"),
                    progress=False, log=lambda m: None)
    out = tmp_path / "out"
    res = bench.main(["--real", str(real), "--model", str(model), "--data", str(data), "--out", str(out),
                      "--copies", "2", "--baselines", "normative", "--n-boot", "200"], log=lambda m: None)

    labels = pd.read_csv(out / "data" / "labels.csv")
    assert len(labels) == 6 and labels.label.sum() == 4
    for r in labels.itertuples():  # every copy and mask on its source scan's exact grid; lesions only in copies
        src = nib.load(real / f"head{int(r.scan_id[4:6])}.nii.gz")
        img, mask = nib.load(out / "data" / r.path), nib.load(out / "data" / r.mask_path)
        assert img.shape == mask.shape == src.shape and np.allclose(img.affine, src.affine)
        assert (np.asarray(mask.dataobj).sum() > 0) == bool(r.label)
        assert (r.lesion_volume_mm3 > 0) == bool(r.label)
    assert set(res["methods"]) == {"medidiff", "normative"}
    for m in res["methods"].values():
        assert 0.0 <= m["voxel_ap"] <= 1.0 and m["n_scans"] == 6 and m["n_lesioned"] == 4
    pv = res["paired"]["normative"]["voxel_ap"]
    assert pv["ci_low"] <= pv["diff"] <= pv["ci_high"] and pv["n"] == 6
    diff = res["methods"]["medidiff"]["voxel_ap"] - res["methods"]["normative"]["voxel_ap"]
    assert abs(diff - pv["diff"]) < 1e-9
    saved = json.loads((out / "real_anatomy.json").read_text())
    assert saved["paired"]["normative"]["voxel_ap"]["diff"] == pv["diff"]
    assert "| normative |" in (out / "real_anatomy.md").read_text()
