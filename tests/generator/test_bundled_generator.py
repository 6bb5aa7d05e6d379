"""The shipped latent-diffusion generator (models/generator, trained on the real IXI train role, conditioned
on age and sex): it loads through the hash checks, samples brains in MNI template space, on the template's
brain, of the training data's size, and its condition changes samples deterministically per seed."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nibabel.processing import resample_from_to

from medidiff.frontend import template_grid_affine
from medidiff.frontend.template import load_template
from medidiff.generator.sampler import LatentSampler
from medidiff.generator.store import load_generator
from medidiff.model.sampler_config import SamplerConfig
from medidiff.synthesis.quality import foreground
from medidiff.synthesis.run import SynthOptions, synthesize_run

GENERATOR = Path(__file__).resolve().parents[2] / "models" / "generator"


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    out = tmp_path_factory.mktemp("bundled_gen") / "synth"
    opts = SynthOptions(n=2, base_seed=11, quality=False, sampler=SamplerConfig(batch_size=2))
    summary = synthesize_run(GENERATOR, out, opts, device="cpu", progress=False, log=lambda m: None)
    assert summary.n_generated == 2
    return [nib.load(str(out / "images" / f"synth_{i:05d}.nii.gz")) for i in range(2)]


def test_samples_are_on_the_template_grid(samples):
    meta = json.loads((GENERATOR / "model.json").read_text())
    grid = tuple(meta["preprocess"]["grid"])
    for img in samples:
        assert img.shape == grid == (40, 48, 40)
        np.testing.assert_allclose(img.affine, template_grid_affine((4.0, 4.0, 4.0), grid), atol=1e-4)


def test_samples_are_brains_where_the_template_brain_is(samples):
    meta = json.loads((GENERATOR / "model.json").read_text())
    real_fraction = meta["training_data"]["foreground_fraction_median"]
    tpl = load_template()
    brain = nib.Nifti1Image(tpl.brain.astype(np.float32), tpl.affine)
    first = samples[0]
    tpl_brain = np.asarray(resample_from_to(brain, (first.shape, first.affine), order=1).dataobj) > 0.5
    volumes = [np.asarray(img.dataobj, dtype=np.float32) for img in samples]
    for vol in volumes:
        fg = foreground(vol)
        assert abs(fg.mean() - real_fraction) < 0.25 * real_fraction  # brain size of the training scans
        dice = 2 * (fg & tpl_brain).sum() / (fg.sum() + tpl_brain.sum())
        assert dice > 0.8  # a brain in the template's place, not a blob or noise
    assert not np.allclose(volumes[0], volumes[1], atol=1e-3)  # two seeds, two brains


def test_shipped_generator_is_conditioned_on_age_and_sex():
    meta = json.loads((GENERATOR / "model.json").read_text())
    assert meta["config"]["latent"]["conditioning"] == ["age", "sex"]
    assert meta["training_data"]["count"] == 12  # the train role of configs/real_cohort_split.csv
    assert (GENERATOR / "LICENSE-IXI.txt").is_file()  # CC BY-SA 3.0 attribution travels with the weights


def test_shipped_generator_condition_changes_samples_deterministically_per_seed():
    # few Euler steps: the check is about the condition path, not sample quality, and stays fast on CPU
    sampler = LatentSampler(load_generator(GENERATOR), SamplerConfig(steps=3, precision="fp32"))
    old_woman = sampler.sample([21], conditions={"age": 72, "sex": "F"})
    again = sampler.sample([21], conditions={"age": 72, "sex": "F"})
    younger_man = sampler.sample([21], conditions={"age": 55, "sex": "M"})
    unconditional = sampler.sample([21])
    np.testing.assert_array_equal(old_woman, again)  # same seed, same condition: the same volume
    assert np.abs(old_woman - younger_man).max() > 1e-3
    assert np.abs(old_woman - unconditional).max() > 1e-3
