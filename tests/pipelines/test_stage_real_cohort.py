"""pipelines/stage_real_cohort.py: a split file of 'real' heads (made from the shipped template with known
poses, one of them a DICOM series) staged into the labels.csv layout, deterministic and reusable."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from frontend_factory import scan_from_template, template_to_scan
from medidiff.io import discover, write_nifti
from pipeline_scripts import load_pipeline

ROOT = Path(__file__).resolve().parents[2]
SPLIT_COLUMNS = ["subject", "role", "source", "path", "age", "sex", "site", "scanner", "licence"]
PLAN = [("s-train-0", "train"), ("s-train-1", "train"), ("s-calib-0", "calib"), ("s-calib-1", "calib"),
        ("s-calib-2", "calib"), ("s-val-0", "val"), ("s-test-0", "test"), ("s-test-1", "test")]


def tiny_template_model(folder: Path) -> Path:
    import torch

    from medidiff.model.config import load_config
    from medidiff.model.network import build_network
    from medidiff.model.store import save_model

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


def _write_dicom_head(vol, folder: Path) -> None:
    """The volume (LPS-stored, axis-aligned) as an axial DICOM series on the same grid."""
    from dicom_factory import regular_positions, write_series

    s = float(vol.spacing[0])
    origin = np.diag([-1.0, -1.0, 1.0]) @ vol.affine[:3, 3]  # RAS -> LPS
    iop = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    stored = np.clip(np.round(vol.array), -32768, 32767).astype(np.int16)
    write_series(folder, stored, regular_positions(origin, iop, s, stored.shape[2]), iop, (s, s))


def make_fake_cohort(root: Path, plan=PLAN, cross_dicom: bool = True, spacing: float = 3.0) -> tuple[Path, Path, Path]:
    """(cohort, real_scans, split.csv): template heads in varied poses and orientations; the cross-scanner
    head is a DICOM series under real_scans."""
    cohort, real = root / "cohort", root / "real_scans"
    rows = []
    for i, (subject, role) in enumerate(plan):
        pose = template_to_scan(rot_deg=(2 * (i % 6) - 5, 3 - i % 5, 4 * (i % 5) - 8), shift_mm=(i % 5 - 4, 2 * (i % 4) - 6, i % 3),
                                scale=0.88 + 0.015 * (i % 5))  # brains of 1,300-1,700 ml
        path = f"heads/{subject}_T1.nii.gz"
        write_nifti(scan_from_template(pose, spacing=spacing, orientation=("LPS", "PSR", "RAS")[i % 3], units=800 + 30 * i),
                    cohort / path)
        rows.append(dict(subject=subject, role=role, source="cohort", path=path, age=str(30 + i), sex="F",
                         site="site A", scanner="scanner A", licence="test"))
    if cross_dicom:
        vol = scan_from_template(template_to_scan(rot_deg=(0, 0, 0), shift_mm=(3, -2, 5), scale=0.93), spacing=spacing,
                                 orientation="LPS", units=1500)
        _write_dicom_head(vol, real / "other_vendor_t1")
        rows.append(dict(subject="other vendor/1", role="cross_scanner", source="real", path="other_vendor_t1",
                         age="", sex="", site="site B", scanner="scanner B", licence="test"))
    split = root / "split.csv"
    with open(split, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=SPLIT_COLUMNS)
        w.writeheader()
        w.writerows(rows)
    return cohort, real, split


@pytest.fixture(scope="module")
def staged(tmp_path_factory):
    root = tmp_path_factory.mktemp("real_cohort")
    cohort, real, split = make_fake_cohort(root)
    model = tiny_template_model(root / "model")
    stage = load_pipeline("stage_real_cohort")
    labels = stage.main(["--cohort", str(cohort), "--real-scans", str(real), "--split", str(split), "--model", str(model),
                         "--out", str(root / "out"), "--copies", "2", "--seed", "5"], log=lambda m: None)
    return root, cohort, real, split, model, labels


def test_staged_layout_labels_and_grids(staged):
    root, cohort, real, split, model, labels = staged
    df = pd.read_csv(labels, keep_default_na=False)
    data = labels.parent
    assert list(df.columns[:5]) == ["scan_id", "split", "path", "label", "mask_path"] and "subject" in df.columns
    by_split = df.groupby("split")
    assert by_split.size().to_dict() == {"train": 2, "calib": 3, "val": 3, "test": 6, "cross": 3}
    assert by_split.label.sum().to_dict() == {"train": 0, "calib": 0, "val": 2, "test": 4, "cross": 2}
    # one untouched head per subject in val/test/cross; train/calib heads as they are, no mask
    for subj, g in df[df.split.isin(["val", "test", "cross"])].groupby("subject"):
        assert (g.label == 0).sum() == 1 and (g.label == 1).sum() == 2, subj
        assert g.brain_mask_path.nunique() == 1
    assert (df[df.split.isin(["train", "calib"])].mask_path == "").all()
    # no subject in two splits
    assert df.groupby("subject").split.nunique().max() == 1
    lesions = json.loads((data / "lesions.json").read_text())
    kinds = set()
    for r in df.itertuples():
        img = nib.load(data / r.path)
        src_id = r.subject
        if r.split == "cross":
            ref = discover(real / "other_vendor_t1").scans[0].load()
            src_shape, src_aff, src = ref.shape, ref.affine, ref.array
        else:
            s = nib.load(cohort / f"heads/{src_id}_T1.nii.gz")
            src_shape, src_aff, src = s.shape, s.affine, np.asarray(s.dataobj)
        assert img.shape == src_shape and np.allclose(img.affine, src_aff, atol=1e-4), r.scan_id
        arr = np.asarray(img.dataobj)
        if r.mask_path:
            mask = np.asarray(nib.load(data / r.mask_path).dataobj) > 0
            brain = np.asarray(nib.load(data / r.brain_mask_path).dataobj) > 0
            assert mask.shape == img.shape and (mask.any() == bool(r.label)) and (r.lesion_volume_mm3 > 0) == bool(r.label)
            assert not (mask & ~brain).any(), "lesions lie inside the front end's brain"
            if r.label:
                assert len(lesions[r.scan_id]) == r.n_anomalies >= 1
                kinds |= {d["kind"] for d in lesions[r.scan_id]}
                assert not np.allclose(arr, src)
            else:
                assert np.allclose(arr, src, atol=1e-3), "the untouched copy is the head as read"
        else:
            assert np.allclose(arr, src, atol=1e-3)
    assert set(df[df.label == 1].anomaly_types.str.split(";").sum()) == kinds and len(kinds) >= 2
    st = json.loads((data / "staging.json").read_text())
    assert st["params"]["seed"] == 5 and st["params"]["copies"] == 2 and st["subjects"]["other vendor/1"]["format"] == "dicom"


def test_staging_is_deterministic_and_reusable(staged, tmp_path):
    root, cohort, real, split, model, labels = staged
    stage = load_pipeline("stage_real_cohort")
    args = ["--cohort", str(cohort), "--real-scans", str(real), "--split", str(split), "--model", str(model),
            "--copies", "2", "--seed", "5", "--roles", "val,test"]
    again = stage.main(args + ["--out", str(tmp_path / "again")], log=lambda m: None)
    a = pd.read_csv(labels, keep_default_na=False).set_index("scan_id")
    b = pd.read_csv(again, keep_default_na=False).set_index("scan_id")
    assert set(b.index) <= set(a.index) and len(b) == 9
    for sid in b.index:
        assert a.loc[sid].to_dict() == b.loc[sid].to_dict()
        for col in ("path", "mask_path"):
            x = np.asarray(nib.load(labels.parent / a.loc[sid, col]).dataobj)
            y = np.asarray(nib.load(again.parent / b.loc[sid, col]).dataobj)
            assert np.array_equal(x, y), (sid, col)
    # another seed: other lesions
    other = stage.main(args + ["--out", str(tmp_path / "other"), "--seed", "6"], log=lambda m: None)
    c = pd.read_csv(other, keep_default_na=False).set_index("scan_id")
    assert c.lesion_volume_mm3.tolist() != b.lesion_volume_mm3.tolist()
    # --reuse keeps every staged subject; other settings are refused
    logs: list[str] = []
    stage.main(args + ["--out", str(tmp_path / "again"), "--reuse"], log=logs.append)
    assert sum("reused" in m for m in logs) == 3
    with pytest.raises(SystemExit):
        stage.main(args + ["--out", str(tmp_path / "again"), "--reuse", "--copies", "3"], log=lambda m: None)


def test_limit_subjects_per_role():
    stage = load_pipeline("stage_real_cohort")
    assert stage.parse_limit("3") == 3 and stage.parse_limit(None) is None
    assert stage.parse_limit("train=2,calib=2,test=1") == {"train": 2, "calib": 2, "test": 1}
    import argparse

    with pytest.raises(argparse.ArgumentTypeError):
        stage.parse_limit("tests=1")
