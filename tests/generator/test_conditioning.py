"""Age/sex conditioning of the latent generator, its warm start from an unconditional one, and the
patch-adversarial autoencoder term: on a 16³ tiny generator trained for a few steps on CPU."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medidiff.generator.conditioning import (canonical, condition_vector, drop_conditions, load_widened,
                                             parse_condition_args, with_channels)
from medidiff.generator.config import load_generator_config
from medidiff.generator.sampler import LatentSampler
from medidiff.generator.store import build_latent_unet, load_generator
from medidiff.generator.train import train_generator
from medidiff.model.sampler_config import SamplerConfig

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "generator_tiny.yaml"
COND = ["latent.conditioning=[age, sex]", "train_latent.max_steps=6"]
AGES = {"sub-00": 25.0, "sub-01": 45.0, "sub-02": 65.0, "sub-03": 80.0}
SEXES = {"sub-00": "F", "sub-01": "M", "sub-02": "F", "sub-03": "M"}


@pytest.fixture(scope="module")
def scans(tmp_path_factory, mni_small):
    data, affine = mni_small
    d = tmp_path_factory.mktemp("cond_scans")
    for i in range(4):
        arr = np.roll(data, i - 2, axis=i % 3) * (1 + 0.1 * i)
        nib.save(nib.Nifti1Image(arr.astype(np.float32), affine), str(d / f"sub-{i:02d}.nii.gz"))
    return d


def _conditions():
    return {k: {"age": AGES[k], "sex": SEXES[k]} for k in AGES}


@pytest.fixture(scope="module")
def unconditional(scans, tmp_path_factory):
    out = tmp_path_factory.mktemp("uncond") / "run"
    train_generator(load_generator_config(TINY), scans, out, log_fn=lambda m: None)
    return out


@pytest.fixture(scope="module")
def conditioned(scans, unconditional, tmp_path_factory):
    """Conditioned on age and sex, warm-started from the unconditional run."""
    out = tmp_path_factory.mktemp("cond") / "run"
    report = train_generator(load_generator_config(TINY, COND), scans, out, conditions=_conditions(),
                             init_from=unconditional, log_fn=lambda m: None)
    assert report["finished"]
    return out


def test_condition_parsing_and_channels():
    assert parse_condition_args(["age=70", "sex=f"]) == {"age": 70.0, "sex": "F"}
    assert parse_condition_args(["age=70,sex=Male"]) == {"age": 70.0, "sex": "M"}
    for bad, msg in ((["age=old"], "not a number"), (["age=200"], "outside"), (["sex=X"], "F or M"),
                     (["height=1"], "unknown condition"), (["age"], "NAME=VALUE"), (["age=1", "age=2"], "twice")):
        with pytest.raises(ValueError, match=msg):
            parse_condition_args(bad)
    assert canonical({"age": None, "sex": ""}) == {}
    lcfg = load_generator_config(TINY, COND).latent
    np.testing.assert_allclose(condition_vector({"age": 75, "sex": "F"}, lcfg), [1.0, 1.0, 1.0, 1.0])
    np.testing.assert_allclose(condition_vector({"sex": "M"}, lcfg), [0.0, 0.0, -1.0, 1.0])
    np.testing.assert_allclose(condition_vector(None, lcfg), [0.0] * 4)  # unconditional = all zero
    x = torch.zeros(2, 2, 4, 4, 4)
    c = torch.tensor([[1.0, 1.0, -1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    xc = with_channels(x, c)
    assert xc.shape == (2, 6, 4, 4, 4) and float(xc[0, 2].min()) == 1.0 and float(xc[0, 4].max()) == -1.0
    # dropout: deterministic per generator seed; p=0 keeps everything; dropped pairs are whole (value and flag)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    big = torch.ones(200, 4)
    d1, d2 = drop_conditions(big, 0.3, g1), drop_conditions(big, 0.3, g2)
    assert torch.equal(d1, d2) and torch.equal(drop_conditions(big, 0.0, g1), big)
    assert torch.equal(d1[:, 0], d1[:, 1]) and torch.equal(d1[:, 2], d1[:, 3])
    assert 0.2 < float((d1.sum(1) == 0).float().mean()) < 0.5  # all dropped: p + (1-p) p^2 ~ 0.36


def test_widened_unet_starts_exactly_where_the_unconditional_one_stood():
    torch.manual_seed(0)
    base = load_generator_config(TINY)
    cond = load_generator_config(TINY, COND)
    u0 = build_latent_unet(base.latent, base.autoencoder.latent_channels)
    with torch.no_grad():
        for p in u0.parameters():
            p.add_(0.05 * torch.randn_like(p))  # MONAI zero-inits the output conv: make the output depend on x
    u1 = build_latent_unet(cond.latent, cond.autoencoder.latent_channels)
    widened = load_widened(u1, u0.state_dict())
    assert widened and all("conv_in" in k for k in widened)
    x, t = torch.randn(2, 2, 4, 4, 4), torch.tensor([500.0, 500.0])
    c = torch.tensor([[1.0, 1.0, -1.0, 1.0], [-2.0, 1.0, 1.0, 1.0]])
    with torch.no_grad():
        torch.testing.assert_close(u1(with_channels(x, c), timesteps=t), u0(x, timesteps=t))


def test_conditioning_changes_samples_deterministically_per_seed(conditioned):
    g = load_generator(conditioned)
    s = LatentSampler(g, SamplerConfig(precision="fp32"))
    old_f = s.sample([5, 6], conditions={"age": 80, "sex": "F"})
    again = s.sample([5, 6], conditions={"age": 80, "sex": "F"})
    young_m = s.sample([5, 6], conditions={"age": 25, "sex": "M"})
    uncond = s.sample([5, 6])
    np.testing.assert_array_equal(old_f, again)  # same seed, same condition: the same volume
    assert np.abs(old_f - young_m).max() > 1e-4 and np.abs(old_f - uncond).max() > 1e-4
    # one condition per sample: sample i does not depend on its batch mates' conditions
    mixed = s.sample([5, 6], conditions=[{"age": 80, "sex": "F"}, {"age": 25, "sex": "M"}])
    np.testing.assert_allclose(mixed[0], old_f[0], atol=2e-4)
    np.testing.assert_allclose(mixed[1], young_m[1], atol=2e-4)
    # classifier-free guidance: 1 = conditional prediction alone; another scale changes a conditioned sample
    # but never an unconditional one
    s2 = LatentSampler(g, SamplerConfig(precision="fp32"), guidance=3.0)
    assert np.abs(s2.sample([5], conditions={"age": 80, "sex": "F"})[0] - old_f[0]).max() > 1e-5
    np.testing.assert_allclose(s2.sample([5])[0], uncond[0], atol=2e-4)  # batch of 1 vs 2: kernel rounding
    meta = json.loads((conditioned / "model.json").read_text())
    assert meta["config"]["latent"]["conditioning"] == ["age", "sex"]
    assert meta["conditioning"]["age_min"] == 25.0 and meta["conditioning"]["sex_counts"] == {"F": 2, "M": 2}
    assert meta["init_from"]["model_hash"].startswith("sha256:")


def test_unconditional_generator_refuses_a_condition(unconditional):
    s = LatentSampler(load_generator(unconditional))
    with pytest.raises(ValueError, match="not conditioned on age"):
        s.sample([0], conditions={"age": 60})
    assert s.sample([0]).shape == (1, 16, 16, 16)


def test_conditioned_training_needs_conditions(scans, tmp_path):
    with pytest.raises(ValueError, match="no training scan has a condition"):
        train_generator(load_generator_config(TINY, COND), scans, tmp_path / "run", log_fn=lambda m: None)


def test_synthesize_cli_condition(conditioned, unconditional, tmp_path):
    from typer.testing import CliRunner

    from medidiff.cli import app

    runner = CliRunner()
    out = tmp_path / "syn"
    base = ["synthesize", "--model", str(conditioned), "--n", "2", "--out", str(out), "--no-progress", "--no-quality"]
    res = runner.invoke(app, base + ["--condition", "age=70", "--condition", "sex=F"])
    assert res.exit_code == 0, res.output
    side = json.loads((out / "samples" / "synth_00001.json").read_text())
    assert side["condition"] == {"age": 70.0, "sex": "F"} and side["guidance"] == 1.0
    assert "age=70;sex=F" in (out / "manifest.csv").read_text()
    res = runner.invoke(app, base + ["--condition", "age=40"])  # same folder, another condition: refused
    assert res.exit_code != 0 and "condition: age=70;sex=F -> age=40" in res.output
    res = runner.invoke(app, ["synthesize", "--model", str(unconditional), "--n", "1", "--out", str(tmp_path / "u"),
                              "--no-progress", "--no-quality", "--condition", "sex=M"])
    assert res.exit_code != 0 and "not conditioned on sex" in res.output


def test_adversarial_autoencoder_resumes_exactly(scans, tmp_path):
    sets = ["train_autoencoder.adv_weight=0.05", "train_autoencoder.adv_start=1", "train_autoencoder.max_steps=4",
            "train_latent.max_steps=1"]
    cfg = load_generator_config(TINY, sets)
    ref = tmp_path / "ref"
    report = train_generator(cfg, scans, ref, log_fn=lambda m: None)
    hist = report["autoencoder"]["history"]
    assert "d_loss" not in hist[0] and all("d_loss" in h and "g_adv" in h for h in hist[1:])
    assert all(np.isfinite(h["loss"]) for h in hist)
    out = tmp_path / "split"
    train_generator(cfg, scans, out, max_new_steps=2, log_fn=lambda m: None)
    assert (out / "autoencoder" / "discriminator" / "train_state.json").is_file()
    train_generator(cfg, scans, out, resume=True, log_fn=lambda m: None)
    from safetensors.torch import load_file
    a, b = load_file(str(ref / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
