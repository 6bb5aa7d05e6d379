"""pipelines/benchmark_real_anatomy.py end to end on a fake real cohort (template heads in known poses, a
DICOM head among the other-scanner ones) and a tiny template-space model: staging, benchmark.py on the
staged folder with subject-level CIs, lesion chance levels, the cross split and its site calibration,
and BENCHMARKS.md generated from the JSON."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pandas as pd

from pipeline_scripts import load_pipeline


def _factory():
    spec = importlib.util.spec_from_file_location("_stage_factory",
                                                  Path(__file__).with_name("test_stage_real_cohort.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


PLAN = [("s-train-0", "train"), ("s-train-1", "train"), ("s-calib-0", "calib"), ("s-calib-1", "calib"),
        ("s-calib-2", "calib"), ("s-val-0", "val"), ("s-val-1", "val"), ("s-test-0", "test"), ("s-test-1", "test"),
        ("s-test-2", "test"), ("s-cross-0", "cross_scanner"), ("s-cross-1", "cross_scanner")]


def test_real_anatomy_benchmark_end_to_end(tmp_path):
    f = _factory()
    cohort, real, split = f.make_fake_cohort(tmp_path, plan=PLAN, spacing=4.0)
    model = f.tiny_template_model(tmp_path / "model")
    from medidiff.batch.calibrate import calibrate_model

    calibrate_model(model, cohort / "heads", overrides=("score.n_draws=1",), progress=False, log=lambda m: None)
    drv = load_pipeline("benchmark_real_anatomy")
    out, md = tmp_path / "out", tmp_path / "BENCH.md"
    logs: list[str] = []
    real_res = drv.main(["--cohort", str(cohort), "--real-scans", str(real), "--split", str(split), "--model", str(model),
                         "--out", str(out), "--copies", "1", "--bench-md", str(md), "--quick", "--t-grid", "0.25", "--set", "score.n_draws=1",
                         "--baselines", "normative", "--n-boot", "50", "--no-plots", "--chance-draws", "20",
                         "--no-refine"], log=logs.append)
    res = real_res["benchmark"]
    labels = pd.read_csv(out / "stage" / "data" / "labels.csv", keep_default_na=False)
    assert labels.groupby("split").subject.nunique().to_dict() == {"train": 2, "calib": 3, "val": 2, "test": 3,
                                                                   "cross": 3}
    # subject-level CIs: three test subjects, each with its untouched head and one lesioned copy
    assert res["resampled"] == "subjects" and res["data_info"]["has_subjects"] and res["foreground"] == "brain"
    pv = res["paired"]["normative"]
    assert pv["sample_auroc"]["n_groups"] == 3 and pv["sample_auroc"]["n"] == 6
    assert pv["voxel_ap"]["resampled"] == "subjects" and pv["voxel_ap"]["ci_low"] <= pv["voxel_ap"]["ci_high"]
    for name in ("medidiff", "normative"):
        row, ci = res["methods"][name]["row"], res["methods"][name]["ci"]
        assert row["n_healthy"] == 3 and row["n_lesioned"] == 3 and ci["resampled"] == "subjects"
        assert row["lesion_chance"] is not None and 0 <= row["lesion_chance"] <= 1
        assert ci["voxel_ap"][0] <= ci["voxel_ap"][1]
    # the other-scanner split: scored with the same calibration, evaluated in the final step, site calibration
    cross = res["held_out"]["cross"]["methods"]
    assert set(cross) == {"medidiff", "normative"} and cross["medidiff"]["row"]["n_healthy"] == 3
    site = res["site_calibration"]
    assert site["split"] == "cross" and site["n_heads"] == 3 and site["site_leave_one_out"]["n"] == 3
    assert all(r["site_n_calibration"] == 2 and len(r["site_lesioned"]) == 1 for r in site["per_subject"])
    assert site["shipped"]["n"] == 3
    # what was chosen on what, and what was read once
    ro = res["protocol"]["read_once"]
    assert ro["splits"] == ["test", "cross"] and ro["test_subjects"] == 3 and ro["test_lesioned"] == 3
    assert res["protocol"]["chosen_on_val"]["baselines"]["normative"] in ("topk_mean", "percentile")
    # BENCHMARKS.md comes from the JSON alone
    markdown = load_pipeline("benchmark_markdown")
    saved = json.loads((out / "real_anatomy.json").read_text())
    assert md.read_text() == markdown.render_benchmarks_md(saved, None)
    text = md.read_text()
    for needle in ("## Main table — Real anatomy", "| medidiff |", "| normative |", "chance level",
                   "best baseline of this table (normative)", "Held-out split `cross`", "Site calibration",
                   "read **once**", "benchmark_real_anatomy.py", "bootstrap over subjects"):
        assert needle in text, needle
    # the template-warp run as the secondary table, below the main one
    both = markdown.render_benchmarks_md(saved, {**res, "data_info": {**res["data_info"], "has_subjects": False},
                                                 "data": "sample_data"})
    assert both.index("## Main table") < both.index("## Secondary table — Template warps")
