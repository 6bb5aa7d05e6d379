"""Synthetic scans from a trained medidiff model (``medidiff synthesize``): a pixel model or a
latent-diffusion generator (:mod:`medidiff.generator`, which sits below this package).

* :mod:`.sampler` — DDPM / DDIM sampling of a pixel model from noise with per-sample seeds and
  temperature (settings: :mod:`medidiff.model.sampler_config`).
* :mod:`.run` — writing NIfTI / DICOM, optional labelled anomalies, manifest, resume.
* :mod:`.quality` — diversity (MS-SSIM), distance to real scans (MMD, histograms), memorization (NCC).
"""

from ..model.sampler_config import DEFAULT_STEPS, SAMPLERS, SamplerConfig, sampling_timesteps
from .sampler import Sampler

__all__ = ["DEFAULT_STEPS", "SAMPLERS", "Sampler", "SamplerConfig", "sampling_timesteps"]
