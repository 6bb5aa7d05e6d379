"""Regenerate tests/score/data/reference_map_val_a01.npz: the anomaly maps the shipped 4 mm model
(models/brain_t1_4mm) gives sample_data/val/val_a01.nii.gz, scored exactly as a batch run scores it.

Run from the repository root only when a change of the maps is intended (new weights, calibration or
method), never to make tests/score/test_reference_map.py pass after a refactor:

    python tests/score/make_reference_map.py
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "brain_t1_4mm"
SCAN = ROOT / "sample_data" / "val" / "val_a01.nii.gz"  # a ring and a hyperintense lesion, 21 cm³
REFERENCE = Path(__file__).resolve().parent / "data" / "reference_map_val_a01.npz"


def score_reference_scan() -> dict[str, object]:
    """The maps and identifiers the reference stores: the source-grid anomaly map, the model-grid
    normalised map and the model-grid input (front end + preprocessing), the scan score, the
    model's weights hash and the scoring settings hash."""
    from medidiff.io.nifti import read_nifti
    from medidiff.batch.scorer import load_scorer

    scorer = load_scorer(MODEL, log=lambda m: None)
    result = scorer.score_volume(read_nifti(SCAN), keep_model_grid=True)
    return {
        "anomaly_map": np.asarray(result.anomaly_map, dtype=np.float32),
        "model_grid_map": np.asarray(result.model_grid.amap, dtype=np.float32),
        "model_input": np.asarray(result.model_grid.pre.image, dtype=np.float32),
        "score": np.float64(result.score),
        "model_hash": scorer.loaded.model_hash,
        "settings_hash": scorer.settings_hash(),
        "calibration_hash": json.loads((MODEL / "calibration.json").read_text())["score_config_hash"],
    }


def main() -> None:
    ref = score_reference_scan()
    REFERENCE.parent.mkdir(parents=True, exist_ok=True)
    # the source-grid map (81x99x86) in float16 keeps the file at ~0.5 MB; the model-grid arrays stay float32
    ref["anomaly_map"] = np.asarray(ref["anomaly_map"]).astype(np.float16)
    np.savez_compressed(REFERENCE, **{k: np.asarray(v) for k, v in ref.items()})
    print(f"{REFERENCE}: {REFERENCE.stat().st_size / 1e3:.0f} kB, score {float(ref['score']):.1f}")


if __name__ == "__main__":
    main()
