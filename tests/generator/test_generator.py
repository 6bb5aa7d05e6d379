"""Latent-diffusion generator on tiny data: a 16³ grid, a 4x-per-axis AutoencoderKL, a one-level
latent U-Net; a few real training steps, save/load, reproducible sampling, synthesize."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medidiff.generator.config import load_generator_config
from medidiff.generator.sampler import LatentSampler
from medidiff.generator.store import load_generator, save_generator, build_autoencoder, build_latent_unet
from medidiff.generator.train import train_generator
from medidiff.model.sampler_config import SamplerConfig
from medidiff.model.folder import CheckpointError, model_kind

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "generator_tiny.yaml"


@pytest.fixture(scope="module")
def scans(tmp_path_factory, mni_small):
    data, affine = mni_small
    d = tmp_path_factory.mktemp("gen_scans")
    for i in range(4):
        arr = np.roll(data, i - 2, axis=i % 3) * (1 + 0.1 * i)
        nib.save(nib.Nifti1Image(arr.astype(np.float32), affine), str(d / f"sub-{i:02d}.nii.gz"))
    return d


@pytest.fixture(scope="module")
def trained(scans, tmp_path_factory):
    out = tmp_path_factory.mktemp("gen_run") / "run"
    report = train_generator(load_generator_config(TINY), scans, out, log_fn=lambda m: None)
    return out, report


def test_training_runs_both_stages_and_records_cost(trained):
    out, report = trained
    assert report["finished"] and report["autoencoder"]["steps"] == 4 and report["latent"]["steps"] == 4
    meta = json.loads((out / "model.json").read_text())
    assert meta["kind"] == "latent_diffusion" and meta["latent_shape"] == [2, 4, 4, 4]
    assert meta["training"]["cpu_seconds_total"] > 0 and len(meta["training"]["latent"]["loss_curve"]) == 4
    assert (out / "loss_curve.png").stat().st_size > 1000 and model_kind(out) == "latent_diffusion"
    # 4 scans + 1 augmented copy each were encoded; the scaled latents have unit std
    from safetensors.torch import load_file
    lat = load_file(str(out / "latent" / "latents.safetensors"))["latents"]
    assert lat.shape == (8, 2, 4, 4, 4) and abs(float(lat.std()) - 1) < 1e-3


def test_resume_is_bit_exact(trained, scans, tmp_path):
    ref, _ = trained
    out = tmp_path / "split"
    cfg = load_generator_config(TINY)
    first = train_generator(cfg, scans, out, max_new_steps=3, log_fn=lambda m: None)
    assert first["stopped"] == "step_budget" and first["latent"] is None
    with pytest.raises(ValueError, match="--resume"):
        train_generator(cfg, scans, out, log_fn=lambda m: None)
    second = train_generator(cfg, scans, out, resume=True, max_new_steps=3, log_fn=lambda m: None)
    assert second["autoencoder"]["steps"] == 4 and second["latent"]["steps"] == 2
    train_generator(cfg, scans, out, resume=True, log_fn=lambda m: None)
    from safetensors.torch import load_file
    a, b = load_file(str(ref / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # (the header's key order may vary)
    changed = load_generator_config(TINY, ["latent.num_res_blocks=2"])
    with pytest.raises(CheckpointError, match="latent stage"):
        train_generator(changed, scans, out, resume=True, log_fn=lambda m: None)


def test_sigterm_stops_at_a_step_boundary_saves_and_resumes_exactly(trained, scans, tmp_path):
    """A batch scheduler's pre-emption (SIGTERM) mid-stage: the step finishes, the state is saved,
    and --resume ends with the same weights as an uninterrupted run."""
    import os
    import signal

    ref, _ = trained
    before = signal.getsignal(signal.SIGTERM)
    sent = []

    def log(msg):
        if not sent and msg.startswith("autoencoder step"):
            sent.append(msg)
            os.kill(os.getpid(), signal.SIGTERM)

    cfg = load_generator_config(TINY)
    out = tmp_path / "run"
    report = train_generator(cfg, scans, out, log_fn=log)
    assert sent and report["stopped"] == "signal" and report["latent"] is None
    assert report["autoencoder"]["steps"] < 4 and signal.getsignal(signal.SIGTERM) == before
    train_generator(cfg, scans, out, resume=True, log_fn=lambda m: None)
    from safetensors.torch import load_file
    a, b = load_file(str(ref / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_sampling_is_reproducible_per_seed(trained):
    g = load_generator(trained[0])
    s = LatentSampler(g, SamplerConfig(sampler="auto"))
    assert s.cfg.sampler == "rflow" and s.cfg.steps == 4
    a = s.sample([7, 8])
    b = s.sample([8])
    assert a.shape == (2, 16, 16, 16) and a.dtype == np.float32
    np.testing.assert_allclose(a[1], b[0], atol=1e-4)
    assert np.abs(a[0] - a[1]).max() > 1e-3  # different seeds, different volumes
    assert a.min() >= 0.0  # clamped to model units


def test_rflow_loop_matches_monai_latent_inferer(trained):
    from monai.inferers import LatentDiffusionInferer

    from medidiff.generator.sampler import rflow_scheduler

    g = load_generator(trained[0])
    s = LatentSampler(g, SamplerConfig(sampler="rflow", precision="fp32", clip_x0=()))
    noise = s.initial_noise([3, 4])
    ours = s.decode(s.sample_latents(noise, [3, 4]))
    sched = rflow_scheduler(g.config.latent)
    sched.set_timesteps(4)
    inferer = LatentDiffusionInferer(sched, scale_factor=g.scale_factor)
    with torch.no_grad():
        theirs = inferer.sample(input_noise=noise, autoencoder_model=g.autoencoder, diffusion_model=g.unet,
                                scheduler=sched, verbose=False)
    np.testing.assert_allclose(ours, theirs[:, 0].numpy(), atol=1e-5)


def test_sampler_refuses_what_the_model_cannot_do(trained):
    g = load_generator(trained[0])
    with pytest.raises(ValueError, match="does not fit this generator"):
        LatentSampler(g, SamplerConfig(sampler="ddpm"))


def test_load_checks_hash_refuses_pickle_and_edited_json(trained, tmp_path):
    bad = tmp_path / "tampered"
    shutil.copytree(trained[0], bad)
    w = bad / "model.safetensors"
    raw = bytearray(w.read_bytes())
    raw[-10] ^= 0xFF
    w.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="does not match model.json"):
        load_generator(bad)

    pick = tmp_path / "pickled"
    shutil.copytree(trained[0], pick)
    torch.save({"x": torch.zeros(2)}, pick / "model.safetensors")
    meta = json.loads((pick / "model.json").read_text())
    from medidiff.model.folder import sha256_file
    meta["model_hash"] = sha256_file(pick / "model.safetensors")
    (pick / "model.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="pickle"):
        load_generator(pick)

    edited = tmp_path / "edited"
    shutil.copytree(trained[0], edited)
    meta = json.loads((edited / "model.json").read_text())
    meta["scale_factor"] = 1.0
    (edited / "model.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="scale_factor"):
        load_generator(edited)


@pytest.fixture(scope="module")
def template_generator(tmp_path_factory):
    """An untrained ddpm-kind generator whose grid is the template-space box (random weights)."""
    cfg = load_generator_config(TINY, ["preprocess.space=template", "preprocess.intensity=wm_median",
                                       "preprocess.frontend={brain: skull_stripped, bias: none, registration: none}",
                                       "latent.scheduler=ddpm"])
    torch.manual_seed(0)
    ae, unet = build_autoencoder(cfg.autoencoder), build_latent_unet(cfg.latent, cfg.autoencoder.latent_channels)
    with torch.no_grad():
        for p in list(ae.parameters()) + list(unet.parameters()):
            if p.ndim > 1 and not p.any():
                p.normal_(0.0, 0.02)  # MONAI zero-inits output convs: make outputs depend on inputs
    out = tmp_path_factory.mktemp("tpl_gen")
    save_generator(out, cfg, ae.state_dict(), unet.state_dict(), 1.0, {"training": {"note": "random"}})
    return out


def test_synthesize_writes_template_space_samples(template_generator, tmp_path):
    from medidiff.frontend import template_grid_affine
    from medidiff.synthesis.run import SynthOptions, synthesize_run

    opts = SynthOptions(n=2, sampler=SamplerConfig(steps=3, batch_size=2), dicom=True, with_anomalies=True,
                        anomaly_fraction=0.5)
    summary = synthesize_run(template_generator, tmp_path / "out", opts, device="cpu", progress=False,
                             log=lambda m: None)
    assert summary.n_generated == 2
    run = json.loads((tmp_path / "out" / "manifest.json").read_text())["run"]
    assert run["model_kind"] == "latent_diffusion" and run["sampler"] == "ddim" and run["space"] == "template"
    img = nib.load(str(tmp_path / "out" / "images" / "synth_00000.nii.gz"))
    assert img.shape == (16, 16, 16)
    np.testing.assert_allclose(img.affine, template_grid_affine((4.0, 4.0, 4.0), (16, 16, 16)), atol=1e-4)
    assert (tmp_path / "out" / "labels.csv").is_file() and (tmp_path / "out" / "dicom" / "synth_00000").is_dir()
    # a re-run keeps both; --index 1 alone regenerates the same volume
    again = synthesize_run(template_generator, tmp_path / "out", opts, device="cpu", progress=False, log=lambda m: None)
    assert again.n_existing == 2 and again.n_generated == 0
    one = SynthOptions(indices=[1], sampler=SamplerConfig(steps=3), quality=False)
    synthesize_run(template_generator, tmp_path / "one", one, device="cpu", progress=False, log=lambda m: None)
    a = nib.load(str(tmp_path / "out" / "clean" / "synth_00001.nii.gz")).get_fdata()
    b = nib.load(str(tmp_path / "one" / "images" / "synth_00001.nii.gz")).get_fdata()
    np.testing.assert_allclose(a, b, atol=1e-4)


def test_synthesize_quality_report_has_real_vs_real_references(trained, scans, tmp_path):
    from medidiff.synthesis.run import SynthOptions, synthesize_run

    opts = SynthOptions(n=3, sampler=SamplerConfig(batch_size=3), reference=scans, train_data=scans)
    summary = synthesize_run(trained[0], tmp_path / "q", opts, device="cpu", progress=False, log=lambda m: None)
    rvr = summary.quality["reference"]["real_vs_real"]
    assert rvr["n_per_side"] == 2
    for key in ("mmd2_rbf_pooled2", "feature_frechet", "intensity_wasserstein_fg"):
        assert set(rvr[key]) >= {"samples_vs_real", "real_vs_real"}
    measures = {r["measure"] for r in summary.quality["comparison"]}
    assert {"brain fraction of the grid (mean)", "feature Fréchet distance", "MMD² (RBF, 2x pooled)",
            "MS-SSIM among scans (mean)", "samples flagged as memorised"} <= measures
    assert all(isinstance(r["met"], bool) and r["real"] is not None for r in summary.quality["comparison"])


def test_resume_accepts_a_front_end_setting_added_since_at_its_default(trained, scans, tmp_path):
    """A run checkpointed before a new front-end option existed resumes: at its default the option
    changes nothing. A real change of the preprocessing still refuses."""
    cfg = load_generator_config(TINY)
    out = tmp_path / "run"
    train_generator(cfg, scans, out, max_new_steps=2, log_fn=lambda m: None)
    meta_path = out / "autoencoder" / "train_state.json"
    meta = json.loads(meta_path.read_text())
    meta["fingerprint"]["preprocess"]["frontend"] = None if meta["fingerprint"]["preprocess"].get("frontend") is None \
        else {k: v for k, v in meta["fingerprint"]["preprocess"]["frontend"].items() if k != "deformable_spacing_mm"}
    meta["fingerprint"]["preprocess"].pop("antialias")  # as if written before this option existed
    meta_path.write_text(json.dumps(meta))
    report = train_generator(cfg, scans, out, resume=True, max_new_steps=1, log_fn=lambda m: None)
    assert report["autoencoder"]["steps"] == 3
    meta = json.loads(meta_path.read_text())
    meta["fingerprint"]["preprocess"]["spacing"] = [2.0, 2.0, 2.0]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="autoencoder stage"):
        train_generator(cfg, scans, out, resume=True, max_new_steps=1, log_fn=lambda m: None)
