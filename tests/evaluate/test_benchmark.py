"""pipelines/benchmark.py --quick end to end: tiny random model, tiny MNI-derived cohort."""

from __future__ import annotations

import csv
import os
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medidiff.lesions import insert_anomaly
from pipeline_scripts import load_pipeline



def _load_benchmark():
    return load_pipeline("benchmark")


def _cohort(root: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    plan = {"train": (2, 0), "calib": (2, 0), "val": (1, 1), "test": (2, 2)}
    for split, (n_h, n_a) in plan.items():
        (root / split / "masks").mkdir(parents=True, exist_ok=True)
        for label, n in ((0, n_h), (1, n_a)):
            for i in range(n):
                sid = f"{split}_{'a' if label else 'h'}{i:02d}"
                arr = data * rng.uniform(0.9, 1.1)
                arr = np.where(arr > 0, arr + rng.normal(0, 0.02 * arr.max(), arr.shape), 0)
                mask = np.zeros(arr.shape, np.uint8)
                kind = ""
                if label:
                    kind = ("hyper", "hypo")[i % 2]
                    arr, mask, _ = insert_anomaly(arr, (8.0,) * 3, kind, rng, diameter_mm=(20, 26), contrast=(0.8, 1.0))
                nib.save(nib.Nifti1Image(arr.astype(np.float32), affine), root / split / f"{sid}.nii.gz")
                mpath = ""
                if split in ("val", "test"):
                    mpath = f"{split}/masks/{sid}_mask.nii.gz"
                    nib.save(nib.Nifti1Image(mask, affine), root / mpath)
                rows.append({"scan_id": sid, "split": split, "path": f"{split}/{sid}.nii.gz", "label": label,
                             "mask_path": mpath, "anomaly_types": kind, "lesion_volume_mm3": float(mask.sum() * 512)})
    with open(root / "labels.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return root


def test_benchmark_quick_end_to_end(tiny_model_dir, mni_small, tmp_path):
    bench = _load_benchmark()
    data, affine = mni_small
    cohort = _cohort(tmp_path / "data", data, affine)
    out, md = tmp_path / "bench", tmp_path / "BENCH.md"
    before = sorted(p.name for p in Path(tiny_model_dir).iterdir())
    res = bench.main(["--model", str(tiny_model_dir), "--data", str(cohort), "--out", str(out), "--bench-md", str(md),
                      "--quick", "--set", "score.batch_size=4", "--baselines",
                      "intensity-hyper,normative", "--n-boot", "50",
                      "--no-plots", "--variant", "smooth5:score.smoothing_size=5"],
                     log=lambda m: None)
    # the model folder is never modified (calibration happens in copies)
    assert sorted(p.name for p in Path(tiny_model_dir).iterdir()) == before
    assert {r["t"] for r in res["val_grid"]} == {0.1, 0.25} and res["chosen"]["score"] in ("topk_mean", "percentile")
    # (the autoencoder's training + layout is covered in tests/baselines; here it would only add minutes)
    assert set(res["methods"]) == {"medidiff", "intensity-hyper", "normative"}
    for name, m in res["methods"].items():
        assert m["row"]["n_missing"] == 0 and m["row"]["n_failed"] == 0, name
        assert m["row"]["voxel_ap"] is not None and m["row"]["sample_auroc"] is not None, name
    # symmetric: every baseline had its score type chosen on val and the same leave-one-out calibration
    for name in ("intensity-hyper", "normative"):
        assert res["methods"][name]["score"] in ("topk_mean", "percentile")
        assert {r["score"] for r in res["baseline_choices"][name]["val"]} == {"topk_mean", "percentile"}
        brun = json.loads((out / "baselines" / name / "test" / "run.json").read_text())
        assert brun["calibration"]["n_scans"] == 2 and "achieved_scan_fpr_ci95" in brun["calibration"]
        assert brun["score_config"]["score"] == res["methods"][name]["score"]
    # test labels never used before evaluation: the medidiff test run was scored once, with the val choice
    run = json.loads((out / "runs" / "test_medidiff" / "run.json").read_text())
    # a --variant is tried on val; it and the score types reuse their t* x K reconstructions
    assert any(r.get("variant", "").endswith("smooth5") and "score.smoothing_size=5" in r["overrides"]
               for r in res["val_grid"])
    assert res["first_pass_cache"]["hits"] > res["first_pass_cache"]["misses"] > 0
    ensemble = [r for r in res["val_grid"] if r.get("variant", "").endswith("tens")]
    assert len(ensemble) == 1 and "score.t_combine=zscore" in ensemble[0]["overrides"]
    if "tens" in res["chosen"]["variant"]:
        assert run["score_config"]["t_fractions"] == [0.1, 0.25] and run["score_config"]["t_combine"] == "zscore"
    else:
        assert run["score_config"]["t_fractions"] == [res["chosen"]["t"]]
    text = md.read_text()
    for needle in ("| medidiff |", "| intensity-hyper |", "same post-processor", "Verdict", "best baseline", "t*", "CPU:", "--quick",
                   "Quick smoke run"):
        assert needle in text, needle
    assert (out / "runs" / "test_medidiff" / "evaluation" / "metrics.json").is_file()
    rec = json.loads((out / "runs" / "test_medidiff" / "evaluation" / "metrics.json").read_text())["reconstruction"]
    assert rec["available"] and rec["n_scans"] == 2


    # --reuse: an interrupted benchmark continues; medidiff runs with matching calibrations are not redone
    logs = []
    again = bench.main(["--model", str(tiny_model_dir), "--data", str(cohort), "--out", str(out), "--bench-md", str(md),
                        "--quick", "--set", "score.batch_size=4", "--baselines", "intensity-hyper", "--n-boot", "50",
                        "--no-plots", "--reuse", "--variant", "smooth5:score.smoothing_size=5"], log=logs.append)
    assert sum("calibration reused" in m for m in logs) == len(res["val_grid"]) + len(res["val_score_types"]) + 1 - sum(
        1 for r in res["val_score_types"] if not r["overrides"])
    assert again["methods"]["medidiff"]["row"] == res["methods"]["medidiff"]["row"]


def test_benchmark_given_settings_against_a_reference_model(tiny_model_dir, mni_small, tmp_path):
    """--no-val-search scores test with the settings as given (no val run at all) and
    --reference-model scores the same test scans with the same settings, paired against medidiff."""
    bench = _load_benchmark()
    data, affine = mni_small
    cohort = _cohort(tmp_path / "data", data, affine)
    out, md = tmp_path / "bench", tmp_path / "BENCH.md"
    given = ["score.batch_size=4", "score.t_fractions=[0.25]", "score.steps=1", "score.score=percentile"]
    res = bench.main(["--model", str(tiny_model_dir), "--data", str(cohort), "--out", str(out), "--bench-md", str(md),
                      "--quick", "--no-val-search", "--reference-model", str(tiny_model_dir), "--baselines", "",
                      "--n-boot", "50", "--no-plots"] + [x for o in given for x in ("--set", o)], log=lambda m: None)
    assert res["val_grid"] == [] and res["val_score_types"] == []
    assert not any(p.name.startswith("val_") for p in (out / "runs").iterdir())
    assert res["chosen"] == {"t": 0.25, "k": 1, "variant": "given", "score": "percentile", "min_component_mm3": 0.0}
    ref_name = f"reference ({Path(tiny_model_dir).name})"
    assert set(res["methods"]) == {"medidiff", ref_name}
    for tag in ("test_medidiff", "test_reference"):
        cfg = json.loads((out / "runs" / tag / "run.json").read_text())["score_config"]
        assert cfg["t_fractions"] == [0.25] and cfg["score"] == "percentile", tag
    # the same weights, settings and seeds: the reference reproduces medidiff scan for scan
    assert res["methods"][ref_name]["row"]["sample_auroc"] == res["methods"]["medidiff"]["row"]["sample_auroc"]
    diff = res["paired"][ref_name]["sample_auroc"]
    assert diff["ci_low"] <= 0 <= diff["ci_high"]
    text = md.read_text()
    assert "Settings given" in text and f"| {ref_name} |" in text
    # --reuse keeps a calibration only for the weights it was made for (one --out, another --model)
    settings = load_pipeline("benchmark_settings")
    assert settings.reusable_calibration(out / "models" / "test_medidiff", given, Path(tiny_model_dir)) is not None
    other = tmp_path / "other_model"
    other.mkdir()
    meta = json.loads((Path(tiny_model_dir) / "model.json").read_text())
    (other / "model.json").write_text(json.dumps({**meta, "model_hash": "sha256:" + "0" * 64}))
    assert settings.reusable_calibration(out / "models" / "test_medidiff", given, other) is None
    # --reference-set: the reference is scored with its own settings (e.g. the ones it ships with)
    res = bench.main(["--model", str(tiny_model_dir), "--data", str(cohort), "--out", str(tmp_path / "b2"),
                      "--bench-md", str(md), "--quick", "--no-val-search", "--reference-model", str(tiny_model_dir),
                      "--reference-set", "score.score=topk_mean", "--baselines", "intensity-hyper", "--n-boot", "50",
                      "--no-plots"] + [x for o in given for x in ("--set", o)], log=lambda m: None)
    ref_cfg = json.loads((tmp_path / "b2" / "runs" / "test_reference" / "run.json").read_text())["score_config"]
    assert ref_cfg["score"] == "topk_mean" and ref_cfg["t_fractions"] == [0.25]
    assert res["reference_overrides"] == given + ["score.score=topk_mean"]
    assert "scored with its own settings" in md.read_text()
    # the given settings were medidiff's; a baseline still chooses its own score type on val
    choice = res["baseline_choices"]["intensity-hyper"]
    assert [r["score"] for r in choice["val"]] == ["topk_mean", "percentile"]
    assert choice["score"] in ("topk_mean", "percentile") and res["methods"]["intensity-hyper"]["score"] == choice["score"]
    assert (tmp_path / "b2" / "baselines" / "intensity-hyper" / f"val_{choice['score']}").is_dir()
    # --val-only with variants: the given settings and each variant side by side on val, test untouched
    logs: list[str] = []
    res = bench.main(["--model", str(tiny_model_dir), "--data", str(cohort), "--out", str(tmp_path / "b3"),
                      "--bench-md", str(tmp_path / "never.md"), "--quick", "--no-val-search", "--val-only",
                      "--variant", "one draw:score.n_draws=1", "--n-boot", "50", "--no-plots"]
                     + [x for o in given for x in ("--set", o)], log=logs.append)
    assert [r["variant"] for r in res["val_grid"]] == ["given", "one draw"]
    assert res["val_grid"][1]["overrides"] == given + ["score.n_draws=1"]
    assert res["chosen"]["variant"] == "given" and res["final_overrides"] == given
    runs = sorted(p.name for p in (tmp_path / "b3" / "runs").iterdir())
    assert runs[0] == "val_given_given" and runs[1].startswith("val_given_one_draw-") and len(runs) == 2
    assert not (tmp_path / "never.md").exists()
    assert json.loads((tmp_path / "b3" / "benchmark_val.json").read_text())["val_grid"][0]["variant"] == "given"
    assert any(line.startswith("| 0.25 ✔ | 1 | given |") for line in logs)


def test_benchmark_refuses_a_limit_too_small_to_calibrate(tiny_model_dir, tmp_path):
    import pytest

    bench = _load_benchmark()
    with pytest.raises(SystemExit):
        bench.main(["--model", str(tiny_model_dir), "--out", str(tmp_path / "b"), "--limit", "1"])


_WATCHED: dict[str, object] = {}


def _audit(event, args):
    """Records every attempt to open a file under a watched folder (even one that fails or is caught)."""
    if event != "open" or not _WATCHED.get("prefixes") or not args or not isinstance(args[0], (str, bytes, Path)):
        return
    path = os.fsdecode(args[0])
    if any(os.path.abspath(path).startswith(p) for p in _WATCHED["prefixes"]):
        _WATCHED["opened"].append(path)


def test_nothing_before_the_final_step_can_read_test_ground_truth(tiny_model_dir, mni_small, tmp_path, monkeypatch):
    """Test labels are unparseable until benchmark.py calls its single held-out reader, read_test_labels,
    and every open of a file in the test masks' folder is recorded (an audit hook sees opens even when
    the data is never used). A benchmark that parsed a test label or opened a test mask before the final
    step fails here; one that scored anything after reading them, too."""
    import sys

    from medidiff.evaluate.labels import LabelsError, read_labels

    bench = _load_benchmark()
    data, affine = mni_small
    cohort = _cohort(tmp_path / "data", data, affine)
    labels = cohort / "labels.csv"
    true_text = labels.read_text()
    masks = cohort / "test" / "masks"
    rows = list(csv.DictReader(true_text.splitlines()))
    for r in rows:
        if r["split"] == "test":
            r["label"] = "SEALED"  # read_labels refuses it: any parse of a test row fails the run
    with open(labels, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with pytest.raises(LabelsError):
        read_labels(labels)  # the seal holds
    assert read_labels(labels, splits=("val",))  # val stays readable
    out = tmp_path / "bench"
    gate: dict[str, object] = {}
    real_reader = bench.read_test_labels

    def final_step_reader(path, splits):
        assert "opened" not in gate, "read_test_labels called twice"
        gate["opened"] = list(_WATCHED["opened"])
        gate["runs"] = sorted(str(p.parent) for p in out.glob("**/run.json"))
        _WATCHED["prefixes"] = []
        labels.write_text(true_text)
        return real_reader(path, splits)

    _WATCHED.update(prefixes=[os.path.abspath(masks), os.path.realpath(masks)], opened=[])
    if not _WATCHED.get("hooked"):
        sys.addaudithook(_audit)
        _WATCHED["hooked"] = True
    monkeypatch.setattr(bench, "read_test_labels", final_step_reader)
    try:
        res = bench.main(["--model", str(tiny_model_dir), "--data", str(cohort), "--out", str(out), "--bench-md", "none",
                          "--quick", "--set", "score.batch_size=4", "--baselines", "intensity-hyper", "--n-boot", "50",
                          "--no-plots", "--chance-draws", "20"], log=lambda m: None)
    finally:
        _WATCHED["prefixes"] = []
    assert gate.get("opened") == [], f"test masks opened before the final step: {gate.get('opened')}"
    # every scoring run (val search, test, baselines) existed before the gate opened; none started after
    assert gate["runs"] == sorted(str(p.parent) for p in out.glob("**/run.json"))
    assert any("test" in r for r in gate["runs"]) and any("val" in r for r in gate["runs"])
    ro = res["protocol"]["read_once"]
    assert ro["splits"] == ["test"] and ro["test_scans"] == 4 and ro["test_lesioned"] == 2
    assert res["methods"]["medidiff"]["row"]["voxel_ap"] is not None
    assert res["methods"]["medidiff"]["row"]["lesion_chance"] is not None


def test_benchmark_writes_and_uses_the_models_method(tiny_model_dir, mni_small, tmp_path):
    """--write-method stores the settings chosen on val as method.json before test is scored (and
    --calibrate-model calibrates exactly them); --use-method scores with the stored method, no search;
    --calibrate-model is refused when the stored method is not what was benchmarked."""
    import shutil

    from medidiff.score.calibration import Calibration
    from medidiff.score.config import ScoreConfig
    from medidiff.score.method import load_method

    bench = _load_benchmark()
    data, affine = mni_small
    cohort = _cohort(tmp_path / "data", data, affine)
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    common = ["--data", str(cohort), "--bench-md", "none", "--quick", "--t-grid", "0.25", "--no-refine",
              "--set", "score.batch_size=4", "--baselines", "", "--n-boot", "50", "--no-plots", "--chance-draws", "0"]
    res = bench.main(["--model", str(model), "--out", str(tmp_path / "b1"), "--write-method", "--calibrate-model"]
                     + common, log=lambda m: None)
    final = res["protocol"]["chosen_on_val"]["final_config"]
    method = load_method(model)
    assert method is not None and method.score_config == final and "val split" in method.provenance["chosen_on"]
    test_run = tmp_path / "b1" / "runs" / "test_medidiff" / "run.json"
    assert (model / "method.json").stat().st_mtime <= test_run.stat().st_mtime
    cal = Calibration.load(model)
    assert ScoreConfig.from_dict(cal.score_config).to_dict() == final
    # the stored method, used as given: no val search, the copies score with it
    res2 = bench.main(["--model", str(model), "--out", str(tmp_path / "b2"), "--use-method"] + common,
                      log=lambda m: None)
    assert res2["val_grid"] == [] and res2["protocol"]["chosen_on_val"]["final_config"] == final
    assert res2["protocol"]["chosen_on_val"]["method_json"]["method_hash"] == method.settings_hash()
    run = json.loads((tmp_path / "b2" / "runs" / "test_medidiff" / "run.json").read_text())
    assert ScoreConfig.from_dict(run["score_config"]).to_dict() == final
    # other settings than the stored method: calibrating the model folder with them is refused
    with pytest.raises(SystemExit):
        bench.main(["--model", str(model), "--out", str(tmp_path / "b3"), "--no-val-search", "--calibrate-model",
                    "--set", "score.t_fractions=[0.1]"] + common, log=lambda m: None)
    assert ScoreConfig.from_dict(Calibration.load(model).score_config).to_dict() == final
    # --val-only --write-method: the method is chosen and stored without touching test
    model2 = tmp_path / "model2"
    shutil.copytree(tiny_model_dir, model2)
    res4 = bench.main(["--model", str(model2), "--out", str(tmp_path / "b4"), "--val-only", "--write-method"] + common,
                      log=lambda m: None)
    assert load_method(model2).score_config == bench.benchmarked_config(model2, res4["final_overrides"], False).to_dict()
    assert not (tmp_path / "b4" / "runs" / "test_medidiff").exists() and res4["method_json"]["written"]
