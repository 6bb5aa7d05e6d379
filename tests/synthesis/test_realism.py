"""Realism against held-out real heads: the memorisation check against the real-vs-real
nearest-neighbour distribution, the age-trend check, and pipelines/benchmark_synthesis_realism.py
end to end on a tiny cohort with a tiny conditioned generator."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medidiff.synthesis.quality import age_trend, atrophy_measures, memorization_vs_real
from pipeline_scripts import load_pipeline

ROOT = Path(__file__).resolve().parents[2]


def _subjects(n: int, seed: int) -> list[np.ndarray]:
    """Blob 'heads' that share a layout and differ by smooth subject-specific texture."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    base = np.zeros((16, 16, 16), np.float32)
    base[3:13, 3:13, 3:13] = 0.8
    return [base + 0.2 * ndimage.gaussian_filter(rng.standard_normal(base.shape), 1.5).astype(np.float32)
            for _ in range(n)]


def test_memorisation_flags_copies_of_training_subjects_only():
    train, heldout = _subjects(8, 0), _subjects(6, 1)
    copy = train[3] + 0.01 * np.random.default_rng(5).standard_normal(train[3].shape).astype(np.float32)
    # held-out real heads passed as "samples" are, by construction, never closer than the closest real head
    rep = memorization_vs_real(heldout + [copy], [f"s{i}" for i in range(6)] + ["copy"], train,
                               [f"t{i}" for i in range(8)], heldout, [f"h{i}" for i in range(6)])
    assert rep["flagged"] == ["copy"]
    per = {p["sample"]: p for p in rep["per_sample"]}
    assert per["copy"]["nearest_train"] == "t3" and per["copy"]["ncc"] > 0.8 and per["copy"]["percentile"] == 100.0
    assert rep["heldout_nn"]["n"] == 6 and rep["train_nn"]["n"] == 8
    assert rep["limit_max_heldout_nn"] == pytest.approx(rep["heldout_nn"]["max"])
    assert rep["heldout_nn"]["max"] < 0.9  # distinct subjects are far from each other
    fresh = memorization_vs_real(_subjects(3, 2), ["a", "b", "c"], train, [f"t{i}" for i in range(8)], heldout,
                                 [f"h{i}" for i in range(6)])
    assert all(p["flagged"] == (p["ncc"] > fresh["limit_max_heldout_nn"]) for p in fresh["per_sample"])
    assert "note" in memorization_vs_real(heldout, ["a"] * 6, train[:2], ["t0", "t1"], heldout, ["h"] * 6)


def test_age_trend_sees_a_planted_atrophy_and_not_its_absence():
    from scipy import ndimage

    rng = np.random.default_rng(0)
    ages = np.linspace(30, 80, 12)

    def head(age, rng):
        img = np.zeros((24, 24, 24), np.float32)
        img[4:20, 4:20, 4:20] = 0.8
        r = 1 + int(round((age - 30) / 12))  # ventricles grow with age
        img[12 - r:12 + r, 12 - r:12 + r, 12 - r:12 + r] = 0.2
        return img + 0.02 * ndimage.gaussian_filter(rng.standard_normal(img.shape), 1).astype(np.float32)

    real = [head(a, rng) for a in ages]
    fgs = [np.zeros(r.shape, bool) for r in real]
    for f in fgs:
        f[4:20, 4:20, 4:20] = True
    m = atrophy_measures(real[-1], fgs[-1])
    assert m["central_csf_fraction"] > atrophy_measures(real[0], fgs[0])["central_csf_fraction"]
    good = age_trend([head(a, rng) for a in ages], ages, real, fgs, ages, n_boot=200)
    assert good["central_csf_fraction"]["condition_shows"] is True
    assert good["central_csf_fraction"]["real"]["slope_per_decade"] > 0
    flat = age_trend([head(55, rng) for _ in ages], ages, real, fgs, ages, n_boot=200)
    assert flat["central_csf_fraction"]["condition_shows"] is False


def _tiny_cohort(root: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    """Files + a split CSV in the format of configs/real_cohort_split.csv."""
    rng = np.random.default_rng(0)
    rows = []
    roles = ["train"] * 4 + ["calib"] * 4 + ["test"] * 2 + ["val"] * 2
    for i, role in enumerate(roles):
        arr = np.roll(data, (i % 3) - 1, axis=i % 3) * rng.uniform(0.9, 1.1)
        name = f"sub-{i:02d}.nii.gz"
        (root / "cohort").mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(arr.astype(np.float32), affine), str(root / "cohort" / name))
        rows.append({"subject": f"sub-{i:02d}", "role": role, "source": "cohort", "path": name,
                     "age": f"{40 + 3 * i}", "sex": "F" if i % 2 else "M", "site": "x", "scanner": "y",
                     "licence": "test"})
    with open(root / "split.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return root


@pytest.fixture(scope="module")
def cohort_and_generator(tmp_path_factory, mni_small):
    data, affine = mni_small
    root = _tiny_cohort(tmp_path_factory.mktemp("realism"), data, affine)
    gen = root / "gen"
    train = load_pipeline("train_generator")
    assert train.main(["--config", str(ROOT / "configs" / "generator_tiny.yaml"), "--cohort", str(root / "cohort"),
                       "--split-csv", str(root / "split.csv"), "--out", str(gen), "--threads", "1",
                       "--set", "latent.conditioning=[age, sex]", "--scan-cache", str(root / "cache")]) == 0
    meta = json.loads((gen / "model.json").read_text())
    assert sorted(meta["training_data"]["scan_ids"]) == [f"sub-{i:02d}" for i in range(4)]  # the train role only
    assert meta["conditioning"]["n_with_age"] == 4 and meta["conditioning"]["age_max"] == 49.0
    return root, gen


def test_realism_benchmark_end_to_end(cohort_and_generator):
    root, gen = cohort_and_generator
    bench = load_pipeline("benchmark_synthesis_realism")
    res = bench.main(["--model", str(gen), "--label", "tiny", "--cohort", str(root / "cohort"), "--split-csv",
                      str(root / "split.csv"), "--out", str(root / "realism"), "--cache", str(root / "cache"),
                      "--n-boot", "50"], log=lambda m: None)
    r = res["results"][0]
    assert r["reference_subjects"] == [f"sub-{i:02d}" for i in range(4, 10)]  # calib + test, never train
    assert r["n_samples"] == 6 and r["conditioning"] == ["age", "sex"]
    mem = r["memorization"]
    assert mem["n_train"] == 4 and mem["n_heldout"] == 6 and len(mem["per_sample"]) == 6
    measures = {row["measure"] for row in r["comparison"]}
    assert {"brain fraction of the grid (mean)", "MMD² (RBF, 2x pooled)", "feature Fréchet distance",
            "samples flagged as memorised"} <= measures
    assert "age_trend" in r and r["age_trend"]["n_samples"] == 6
    side = json.loads((root / "realism" / "tiny" / "samples" / "samples" / "synth_00000.json").read_text())
    assert side["condition"] == {"age": 52.0, "sex": "M"}  # sample 0 at the first reference head's age and sex
    md = (root / "realism" / "realism.md").read_text()
    assert "| measure | tiny | real vs real | target |" in md and "nearest-training-subject" in md


def test_preprocess_cache_keeps_results_and_refusals(mni_small, tmp_path, monkeypatch):
    from medidiff.generator.config import load_generator_config
    from medidiff.train import scan_cache as cache_mod

    data, affine = mni_small
    nib.save(nib.Nifti1Image(data, affine), str(tmp_path / "head.nii.gz"))
    pcfg = load_generator_config(ROOT / "configs" / "generator_tiny.yaml").preprocess
    first = cache_mod.preprocess_cached(tmp_path / "head.nii.gz", pcfg, tmp_path / "c")
    calls = []
    import medidiff.preprocess as pre_mod

    real = pre_mod.preprocess

    def counting(vol, cfg):
        calls.append(1)
        if vol.array.max() == 0:
            raise ValueError("empty scan")
        return real(vol, cfg)

    monkeypatch.setattr(pre_mod, "preprocess", counting)
    again = cache_mod.preprocess_cached(tmp_path / "head.nii.gz", pcfg, tmp_path / "c")
    assert not calls and np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    nib.save(nib.Nifti1Image(np.zeros_like(data), affine), str(tmp_path / "empty.nii.gz"))
    for _ in range(2):
        with pytest.raises(ValueError, match="empty scan"):
            cache_mod.preprocess_cached(tmp_path / "empty.nii.gz", pcfg, tmp_path / "c")
    assert len(calls) == 1  # the refusal is remembered: the front end ran once
