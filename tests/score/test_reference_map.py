"""The shipped 4 mm model scores one lesioned sample_data scan exactly as it did when the reference
was stored (tests/score/make_reference_map.py): a guard for refactors of the front end, the
preprocessing (geometry, masks, intensity), the reconstruction and the post-processing, any of
which would move these maps.

Tolerances: scoring this scan twice, in one process and in fresh ones, with 1 and 2 threads, gave
bit-identical arrays (max difference 0.0). The model-grid arrays (float32) are compared with
atol 1e-4, room only for last-bit differences of another CPU's kernels; the source-grid map is
stored in float16, so it gets that format's rounding on top (rtol 1e-3, half an ulp is 4.9e-4)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_reference_map import MODEL, REFERENCE, score_reference_scan  # noqa: E402

MODEL_GRID_ATOL = 1e-4
SOURCE_GRID_RTOL = 1e-3


@pytest.fixture(scope="module")
def reference():
    with np.load(REFERENCE) as stored:
        return {k: stored[k] for k in stored.files}


@pytest.fixture(scope="module")
def fresh():
    return score_reference_scan()


def test_model_folder_is_the_one_the_reference_was_made_with(reference):
    meta = json.loads((MODEL / "model.json").read_text())
    cal = json.loads((MODEL / "calibration.json").read_text())
    assert meta["model_hash"] == str(reference["model_hash"])
    assert cal["model_hash"] == str(reference["model_hash"])
    assert cal["score_config_hash"] == str(reference["calibration_hash"])


def test_scoring_settings_and_weights_are_unchanged(reference, fresh):
    assert fresh["model_hash"] == str(reference["model_hash"])
    assert fresh["settings_hash"] == str(reference["settings_hash"])


def test_model_grid_input_and_map_match_the_reference(reference, fresh):
    np.testing.assert_allclose(fresh["model_input"], reference["model_input"], rtol=0, atol=MODEL_GRID_ATOL)
    np.testing.assert_allclose(fresh["model_grid_map"], reference["model_grid_map"], rtol=0, atol=MODEL_GRID_ATOL)


def test_source_grid_map_and_score_match_the_reference(reference, fresh):
    stored = reference["anomaly_map"].astype(np.float32)
    assert fresh["anomaly_map"].shape == stored.shape
    np.testing.assert_allclose(fresh["anomaly_map"], stored, rtol=SOURCE_GRID_RTOL, atol=MODEL_GRID_ATOL)
    assert float(fresh["score"]) == pytest.approx(float(reference["score"]), rel=1e-4)
