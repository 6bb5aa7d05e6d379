"""Synthetic scans from a trained medidiff model (``medidiff synthesize``).

* :mod:`.sampler` — DDPM / DDIM sampling from noise with per-sample seeds and temperature.
* :mod:`.run` — writing NIfTI / DICOM, optional labelled anomalies, manifest, resume.
* :mod:`.quality` — diversity (MS-SSIM), distance to real scans (MMD, histograms), memorization (NCC).
"""

from .sampler import DEFAULT_STEPS, SAMPLERS, Sampler, SamplerConfig, sampling_timesteps

__all__ = ["DEFAULT_STEPS", "SAMPLERS", "Sampler", "SamplerConfig", "sampling_timesteps"]
