"""Measure the QC ranges of models/brain_t1_4mm's 20 calibration heads (the `calib` role of
configs/real_cohort_split.csv, found in the real cohort folder beside the repository) through the
model's own front end and write tests/report/data/brain_t1_4mm_calib_qc_ranges.json.

The report reads ``run.json["calibration"]["qc_ranges"]``; until calibration stores them
(medidiff.score.qc_ranges.qc_ranges), the report's real-scan test puts these measured
values there, exactly as the calibration would. Re-run after the front end or the
calibration scans change::

    OMP_NUM_THREADS=1 .venv/bin/python tests/report/make_calib_qc_ranges.py [COHORT_DIR]
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = Path(__file__).resolve().parent / "data" / "brain_t1_4mm_calib_qc_ranges.json"


def main() -> None:
    sys.path.insert(0, str(ROOT / "pipelines"))
    from real_split import read_split, scan_paths

    from medidiff.io.discover import discover
    from medidiff.preprocess import preprocess_template
    from medidiff.score.qc_ranges import qc_ranges, voxel_size_max_mm
    from medidiff.model.store import load_model

    model = ROOT / "models" / "brain_t1_4mm"
    loaded = load_model(model)
    cal = json.loads((model / "calibration.json").read_text())
    t0 = time.perf_counter()
    qcs = []
    cohort = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared" / "cohort"
    heads = scan_paths(read_split(), ["calib"], cohort, None)
    assert len(heads) == cal["n_scans"], (len(heads), cal["n_scans"])
    for head in heads:
        vol = discover(Path(head["abspath"])).scans[0].load()
        pre = preprocess_template(vol, loaded.preprocess_config)
        qcs.append(dict(pre.qc, voxel_size_max_mm=voxel_size_max_mm(vol.affine)))
    ranges = qc_ranges(qcs)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"model_hash": loaded.model_hash, "scans": "the calib role of configs/real_cohort_split.csv "
                               "(models/brain_t1_4mm's calibration heads)", "qc_ranges": ranges}, indent=2) + "\n")
    print(f"{len(qcs)} scans in {time.perf_counter() - t0:.0f} s → {OUT}")


if __name__ == "__main__":
    main()
