"""pipelines/benchmark_synthesis_usefulness.py end to end: a tiny trained latent generator, a tiny
MNI-derived cohort; the normative baseline trained on real and on synthetic volumes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medidiff.lesions import insert_anomaly
from pipeline_scripts import load_pipeline

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str):
    return load_pipeline(name)


def _cohort(root: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for split, (n_h, n_a) in {"train": (3, 0), "calib": (2, 0), "val": (2, 2), "test": (1, 1)}.items():
        (root / split / "masks").mkdir(parents=True, exist_ok=True)
        for label, n in ((0, n_h), (1, n_a)):
            for i in range(n):
                sid = f"{split}_{'a' if label else 'h'}{i:02d}"
                arr = np.roll(data, i - 1, axis=i % 3) * rng.uniform(0.9, 1.1)
                mask = np.zeros(arr.shape, np.uint8)
                if label:
                    arr, mask, _ = insert_anomaly(arr, (8.0,) * 3, "hyper", rng, diameter_mm=(20, 26), contrast=(0.8, 1.0))
                nib.save(nib.Nifti1Image(arr.astype(np.float32), affine), root / split / f"{sid}.nii.gz")
                mpath = ""
                if split in ("val", "test"):
                    mpath = f"{split}/masks/{sid}_mask.nii.gz"
                    nib.save(nib.Nifti1Image(mask, affine), root / mpath)
                rows.append({"scan_id": sid, "split": split, "path": f"{split}/{sid}.nii.gz", "label": label,
                             "mask_path": mpath, "anomaly_types": "hyper" if label else "",
                             "lesion_volume_mm3": float(mask.sum() * 512)})
    with open(root / "labels.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return root


def test_train_on_synthetic_test_on_real(mni_small, tmp_path):
    data, affine = mni_small
    cohort = _cohort(tmp_path / "data", data, affine)
    gen = tmp_path / "gen"
    train = _load("train_generator")
    assert train.main(["--config", str(ROOT / "configs" / "generator_tiny.yaml"), "--data", str(cohort / "labels.csv"),
                       "--out", str(gen), "--threads", "1"]) == 0
    assert json.loads((gen / "training.json").read_text())["finished"]
    bench = _load("benchmark_synthesis_usefulness")
    res = bench.main(["--generator", str(gen), "--data", str(cohort), "--out", str(tmp_path / "useful"),
                      "--n-boot", "20"], log=lambda m: None)
    assert res["real"]["n_train"] == 3 and res["synthetic"]["n_train"] == 3
    assert res["real"]["n_offered"] == 3 and res["synthetic"]["n_offered"] == 3
    for arm in ("real", "synthetic"):
        assert res[arm]["sample_auroc"] is not None and res[arm]["voxel_ap"] is not None
        run = json.loads((tmp_path / "useful" / ("real" if arm == "real" else "synthetic_trained") / "run.json").read_text())
        assert run["calibration"]["n_scans"] == 2  # both arms calibrated on the same real calib scans
    assert res["auroc_ratio"] == pytest.approx(res["synthetic"]["sample_auroc"] / res["real"]["sample_auroc"])
    assert json.loads((tmp_path / "useful" / "usefulness.json").read_text())["target_ratio"] == 0.9
    # a synthetic folder with inserted anomalies is refused as a healthy training set
    from medidiff.synthesis.run import SynthOptions, synthesize_run
    from medidiff.model.sampler_config import SamplerConfig

    bad = tmp_path / "labelled"
    synthesize_run(gen, bad, SynthOptions(n=2, with_anomalies=True, anomaly_fraction=1.0, quality=False,
                                          sampler=SamplerConfig(steps=2)), device="cpu", progress=False,
                   log=lambda m: None)
    with pytest.raises(SystemExit, match="anomalies"):
        bench.main(["--synthetic", str(bad), "--data", str(cohort), "--out", str(tmp_path / "u2")], log=lambda m: None)


def _real_split(root: Path, data: np.ndarray, affine: np.ndarray) -> tuple[Path, Path, Path]:
    """A tiny cohort with a split file (train 4 heads with age/sex) and a staged val split in the
    layout of pipelines/stage_real_cohort.py (per subject: one untouched and two lesioned copies)."""
    rng = np.random.default_rng(1)
    (root / "cohort").mkdir(parents=True)
    rows = []
    for i in range(4):
        arr = np.roll(data, i - 1, axis=i % 3) * rng.uniform(0.9, 1.1)
        nib.save(nib.Nifti1Image(arr.astype(np.float32), affine), root / "cohort" / f"tr{i}.nii.gz")
        rows.append({"subject": f"tr{i}", "role": "train", "source": "cohort", "path": f"tr{i}.nii.gz",
                     "age": f"{50 + 5 * i}", "sex": "FM"[i % 2], "site": "s", "scanner": "x", "licence": "test"})
    with open(root / "split.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    staged = root / "staged"
    (staged / "val").mkdir(parents=True)
    lab = []
    for s in range(3):
        head = np.roll(data, s, axis=2) * rng.uniform(0.9, 1.1)
        for k in range(3):
            arr, label = head, 0
            if k:
                arr, _, _ = insert_anomaly(head, (8.0,) * 3, "hyper", rng, diameter_mm=(20, 26), contrast=(0.8, 1.0))
                label = 1
            sid = f"va{s}_v{k}"
            nib.save(nib.Nifti1Image(np.asarray(arr, np.float32), affine), staged / "val" / f"{sid}.nii.gz")
            lab.append({"scan_id": sid, "split": "val", "path": f"val/{sid}.nii.gz", "label": label, "subject": f"va{s}"})
    with open(staged / "labels.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(lab[0]))
        w.writeheader()
        w.writerows(lab)
    return root / "cohort", root / "split.csv", staged / "labels.csv"


def test_real_split_usefulness_a_and_b_with_subject_paired_cis(mni_small, tmp_path):
    data, affine = mni_small
    cohort, split, labels = _real_split(tmp_path, data, affine)
    gen = tmp_path / "gen"
    train = _load("train_generator")
    assert train.main(["--config", str(ROOT / "configs" / "generator_tiny.yaml"), "--cohort", str(cohort),
                       "--split-csv", str(split), "--out", str(gen), "--threads", "1",
                       "--set", "latent.conditioning=[age, sex]", "--scan-cache", str(tmp_path / "cache")]) == 0
    bench = _load("benchmark_synthesis_usefulness")
    res = bench.main(["--cohort", str(cohort), "--split-csv", str(split), "--staged", str(labels), "--generator",
                      str(gen), "--out", str(tmp_path / "useful"), "--cache", str(tmp_path / "cache"),
                      "--mix-n", "2,6", "--n-boot", "50"], log=lambda m: None)
    arms = {r["arm"]: r for r in res["arms"]}
    assert list(arms) == ["real", "synthetic", "real+2", "real+6"]
    assert (arms["real"]["n_real"], arms["real"]["n_synthetic"]) == (4, 0)
    assert (arms["synthetic"]["n_real"], arms["synthetic"]["n_synthetic"]) == (0, 4)
    assert (arms["real+6"]["n_real"], arms["real+6"]["n_synthetic"]) == (4, 6)
    assert res["n_eval_scans"] == 9 and res["n_eval_lesioned"] == 6 and res["n_eval_subjects"] == 3
    for r in res["arms"]:
        assert 0.0 <= r["sample_auroc"] <= 1.0
    for name in ("synthetic", "real+2", "real+6"):
        d = arms[name]["vs_real"]
        assert d["resampled"] == "groups (subjects)" and d["n_groups"] == 3
        assert d["diff"] == pytest.approx(arms[name]["sample_auroc"] - arms["real"]["sample_auroc"])
    assert res["a"]["auroc_ratio"] == pytest.approx(arms["synthetic"]["sample_auroc"] / arms["real"]["sample_auroc"])
    assert set(res["b"]) == {"real+2", "real+6"}
    # synthetic heads were drawn at the train subjects' ages and sexes, cycled
    side = json.loads((tmp_path / "useful" / "synthetic" / "samples" / "synth_00005.json").read_text())
    assert side["condition"] == {"age": 55.0, "sex": "M"}
    assert "(a) synthetic / real AUROC" in (tmp_path / "useful" / "usefulness.md").read_text()
