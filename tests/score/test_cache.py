"""First-pass cache: a settings search reuses reconstructions, never across settings that change them."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from medidiff.score.cache import active_cache, first_pass_cache
from medidiff.score.config import load_score_config
from medidiff.score.pipeline import Scorer
from medidiff.model.store import load_model
from medidiff.volume import Volume

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
from train_helpers import blob_volume  # noqa: E402

BASE = ["score.n_draws=2", "score.precision=fp32"]


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    return load_model(tiny_model_dir)


def _scorer(loaded, *extra):
    return Scorer(loaded, load_score_config(None, BASE + list(extra)))


def test_post_processing_knobs_reuse_the_reconstruction_and_match_an_uncached_run(loaded):
    vol = blob_volume(0)
    uncached = _scorer(loaded, "score.structural_weight=0.5").first_pass(vol)
    with first_pass_cache() as cache:
        _scorer(loaded).first_pass(vol)
        cached = _scorer(loaded, "score.structural_weight=0.5", "score.smoothing_size=5").first_pass(vol)
        again = _scorer(loaded, "score.structural_weight=0.5").first_pass(vol)
    assert (cache.misses, cache.hits) == (2, 4)  # front end + reconstruction, each computed once
    np.testing.assert_array_equal(again.raw, uncached.raw)  # same map as without the cache
    np.testing.assert_array_equal(again.recon, uncached.recon)
    assert not np.array_equal(cached.raw, again.raw)  # the smoothing knob still acts
    assert active_cache() is None  # off again after the block


@pytest.mark.parametrize("change", ["score.t_fractions=[0.3]", "score.steps=2", "score.n_draws=1",
                                    "score.seed=3"])
def test_reconstruction_settings_are_never_shared(loaded, change):
    vol = blob_volume(0)
    with first_pass_cache() as cache:
        first = _scorer(loaded).first_pass(vol)
        other = _scorer(loaded, change).first_pass(vol)
    assert (cache.misses, cache.hits) == (3, 1)  # the front end is shared, the reconstruction is not
    assert not np.array_equal(first.recon, other.recon)


def test_another_scan_or_another_geometry_is_a_miss(loaded):
    vol = blob_volume(0)
    shifted = vol.affine.copy()
    shifted[0, 3] += 3.0
    moved = Volume(vol.array.copy(), shifted)
    with first_pass_cache() as cache:
        for v in (vol, blob_volume(1), moved):
            _scorer(loaded).first_pass(v)
    assert (cache.misses, cache.hits) == (6, 0)


def test_a_z_scored_t_ensemble_reuses_the_single_t_reconstructions(loaded):
    vol = blob_volume(0)
    ensemble = ["score.t_fractions=[0.1,0.3]", "score.t_combine=zscore"]
    uncached = _scorer(loaded, *ensemble).first_pass(vol)
    with first_pass_cache() as cache:
        _scorer(loaded, "score.t_fractions=[0.1]").first_pass(vol)
        _scorer(loaded, "score.t_fractions=[0.3]").first_pass(vol)
        cached = _scorer(loaded, *ensemble).first_pass(vol)
    assert (cache.misses, cache.hits) == (3, 4)
    assert cached.raw.shape[0] == 2
    np.testing.assert_array_equal(cached.raw, uncached.raw)


def test_baselines_share_the_front_end_and_match_an_uncached_run(loaded):
    """A benchmark registers each scan once for medidiff and every baseline."""
    from medidiff.baselines import make_baseline

    vol = blob_volume(0)
    hyper = make_baseline("intensity-hyper", preprocess=loaded.preprocess_config)
    hypo = make_baseline("intensity-hypo", preprocess=loaded.preprocess_config)
    uncached = hyper.model_map(vol)
    with first_pass_cache() as cache:
        _scorer(loaded).first_pass(vol)
        cached = hyper.model_map(vol)
        hypo.model_map(vol)
    assert (cache.misses, cache.hits) == (2, 2)  # medidiff's front end and reconstruction; both baselines reuse
    np.testing.assert_array_equal(cached.raw, uncached.raw)
    np.testing.assert_array_equal(cached.pre.image, uncached.pre.image)
