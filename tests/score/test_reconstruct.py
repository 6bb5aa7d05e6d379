"""Partial-noising reconstruction: DDIM arithmetic, batching, evaluation counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medidiff.model.diffusion import add_noise, predict_x0
from medidiff.model.noise import make_noise
from medidiff.score.config import ScoreConfig
from medidiff.score.maps import NormStats, scan_score
from medidiff.score.reconstruct import FIRST_PASS, Reconstructor, ddim_timesteps, draw_generator
from medidiff.model.store import load_model


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    return load_model(tiny_model_dir)


def _image(seed=0):
    return np.random.default_rng(seed).random((16, 16, 16)).astype(np.float32)


def test_ddim_timesteps():
    assert ddim_timesteps(150, 1) == [150]
    assert ddim_timesteps(150, 3) == [150, 100, 50]


def test_single_step_equals_x0_prediction(loaded):
    cfg = ScoreConfig(t_fractions=(0.2,), steps=1, n_draws=1, precision="fp32", seed=7)
    rec = Reconstructor(loaded, cfg).reconstruct(_image())
    # recompute by hand with the same generator (draw 0 of the first pass, seed 7)
    gen = draw_generator(7, FIRST_PASS, 0)
    x0 = torch.from_numpy(_image())[None, None]
    sched = loaded.scheduler_factory("ddim")
    noise = make_noise(loaded.config.diffusion.noise, tuple(x0.shape), gen, "cpu")
    t = torch.tensor([200])
    x_t = add_noise(sched, x0, noise, t)
    with torch.no_grad():
        out = loaded.network(x_t, timesteps=t)
    expected = predict_x0(out, x_t, t, sched)[0, 0].numpy()
    np.testing.assert_allclose(rec.mean, expected, atol=1e-5)
    assert rec.n_evals == 1


@pytest.mark.parametrize("steps,levels,draws", [(1, (0.1,), 3), (4, (0.1, 0.3), 2)])
def test_batch_size_never_changes_the_map(loaded, steps, levels, draws):
    maps = {}
    for bs in (1, 3, 8):
        cfg = ScoreConfig(t_fractions=levels, steps=steps, n_draws=draws, batch_size=bs, precision="fp32")
        rec = Reconstructor(loaded, cfg).reconstruct(_image())
        assert rec.n_evals == steps * len(levels) * draws
        maps[bs] = rec.mean
    # every draw has its own generator: batching changes speed, never results
    np.testing.assert_allclose(maps[1], maps[8], atol=1e-5)
    np.testing.assert_allclose(maps[3], maps[8], atol=1e-5)
    # ...and the draws really differ from each other (otherwise the check above proves nothing)
    one = Reconstructor(loaded, ScoreConfig(t_fractions=levels, steps=steps, n_draws=1, precision="fp32"))
    assert not np.allclose(one.reconstruct(_image()).mean, maps[8], atol=1e-3)
    assert ScoreConfig(batch_size=1).hash() == ScoreConfig(batch_size=8).hash()


def test_training_noise_parameters_are_used_and_hashed(loaded):
    import copy

    cfg = ScoreConfig(t_fractions=(0.3,), steps=1, n_draws=1, precision="fp32")
    results, hashes = [], []
    for factor in (2, 8):
        other = copy.copy(loaded)
        other.config = copy.deepcopy(loaded.config)
        other.config.diffusion.noise = "coarse"
        other.config.diffusion.noise_params = {"factor": factor}
        rec = Reconstructor(other, cfg)
        assert rec.runtime_settings()["noise_params"] == {"factor": factor}
        results.append(rec.reconstruct(_image()).mean)
        hashes.append(cfg.hash(rec.runtime_settings()))
    assert not np.allclose(results[0], results[1], atol=1e-3)
    assert hashes[0] != hashes[1]


def test_precision_is_hashed_as_resolved(loaded):
    from medidiff.runtime import resolve_precision

    auto = Reconstructor(loaded, ScoreConfig(precision="auto")).runtime_settings()
    assert auto["precision"] == resolve_precision("auto", loaded.device) and auto["device"] == "cpu"
    # the same "auto" setting resolved differently (a bf16 CPU vs an fp32 one, or CUDA) is another setting
    cfg = ScoreConfig(precision="auto")
    assert cfg.hash(dict(auto, precision="bf16")) != cfg.hash(dict(auto, precision="fp32"))
    assert cfg.hash(dict(auto, device="cuda")) != cfg.hash(dict(auto, device="cpu"))


def test_auto_precision_follows_the_calibration(loaded):
    """A model calibrated in fp32 (a CPU without bf16) is scored in fp32 on a bf16 CPU too, so its
    thresholds stay valid; an explicit precision wins; a precision this device lacks is not forced."""
    from medidiff.runtime import cpu_bf16_supported, resolve_precision
    from medidiff.score.pipeline import Scorer

    assert Reconstructor(loaded, ScoreConfig(), calibrated_precision="fp32").precision == "fp32"
    assert Reconstructor(loaded, ScoreConfig(), calibrated_precision="fp16").precision == resolve_precision(
        "auto", loaded.device)  # fp16 needs CUDA
    expected_bf16 = "bf16" if cpu_bf16_supported() else "fp32"
    assert Reconstructor(loaded, ScoreConfig(), calibrated_precision="bf16").precision == expected_bf16
    if cpu_bf16_supported():
        assert Reconstructor(loaded, ScoreConfig(precision="bf16"), calibrated_precision="fp32").precision == "bf16"

    class FakeCalibration:  # only what Scorer reads at construction
        runtime = {"precision": "fp32"}
        refine_stats = refine_voxel_threshold = None
        voxel_threshold = scan_threshold = None

    scorer = Scorer(loaded, ScoreConfig(), FakeCalibration())
    assert scorer.runtime_settings()["precision"] == "fp32"
    assert scorer.settings_hash() == ScoreConfig().hash(dict(scorer.runtime_settings(), precision="fp32"))


def test_low_t_reconstruction_stays_close(loaded):
    cfg = ScoreConfig(t_fractions=(0.01,), steps=1, n_draws=2, precision="fp32")
    img = _image()
    rec = Reconstructor(loaded, cfg).reconstruct(img)
    hi = Reconstructor(loaded, ScoreConfig(t_fractions=(0.6,), steps=1, n_draws=2, precision="fp32")).reconstruct(img)
    # barely-noised input reconstructs closer than heavily noised input, even for an untrained net
    assert np.abs(rec.mean - img).mean() < np.abs(hi.mean - img).mean()


def test_inpainting_keeps_known_voxels(loaded):
    cfg = ScoreConfig(t_fractions=(0.2,), steps=3, n_draws=1, precision="fp32")
    img = _image()
    hole = np.zeros_like(img, dtype=bool)
    hole[4:10, 4:10, 4:10] = True
    rec = Reconstructor(loaded, cfg).reconstruct(img, inpaint_mask=hole, steps=3)
    np.testing.assert_allclose(rec.mean[~hole], img[~hole], atol=1e-6)
    assert not np.allclose(rec.mean[hole], img[hole])


def test_scan_scores():
    amap = np.zeros((10, 10, 10), np.float32)
    amap[0, 0, :5] = [1, 2, 3, 4, 5]
    mask = np.ones_like(amap, bool)
    assert scan_score(amap, mask, ScoreConfig(score="topk_mean", topk_fraction=0.002), 1.0) == pytest.approx(4.5)
    assert scan_score(amap, mask, ScoreConfig(score="supra_volume"), 8.0, voxel_threshold=2.5) == pytest.approx(24.0)
    assert scan_score(amap, mask, ScoreConfig(score="percentile", percentile=100), 1.0) == pytest.approx(5.0)
    # no calibrated threshold: supra_volume falls back to the top-k mean
    assert scan_score(amap, mask, ScoreConfig(score="supra_volume", topk_fraction=0.002), 8.0) == pytest.approx(4.5)


def test_norm_stats_from_sums_matches_numpy():
    rng = np.random.default_rng(0)
    maps = rng.random((5, 6, 6, 6))
    s1, s2 = maps.sum(0), (maps ** 2).sum(0)
    cnt = np.full((6, 6, 6), 5.0)
    st = NormStats.from_sums(s1, s2, cnt, maps.sum(), (maps ** 2).sum(), maps.size, smooth_vox=0)
    np.testing.assert_allclose(st.mean, maps.mean(0), atol=1e-6)
    np.testing.assert_allclose(st.std, np.maximum(maps.std(0), 0.5 * maps.std()), atol=1e-6)


def test_structural_term_sees_texture_change_with_same_mean():
    from medidiff.score.maps import structural_dissimilarity

    rng = np.random.default_rng(0)
    recon = (0.5 + rng.normal(0, 0.01, (24, 24, 24))).astype(np.float32)
    image = recon.copy()
    inside = np.zeros(image.shape, bool)
    inside[8:16, 8:16, 8:16] = True
    # same mean, different texture: a ±0.05 checkerboard replaces the patch
    checker = (np.indices(image.shape).sum(0) % 2 * 2 - 1) * 0.05
    image[inside] = 0.5 + checker[inside]
    dis = structural_dissimilarity(image, recon, np.full(3, 1.0))
    far = np.ones(image.shape, bool)
    far[4:20, 4:20, 4:20] = False
    assert dis[inside].mean() > 5 * dis[far].mean()
    assert np.allclose(structural_dissimilarity(recon, recon, np.full(3, 1.0)), 0.0, atol=1e-6)
