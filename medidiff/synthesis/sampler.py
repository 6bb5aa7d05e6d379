"""Sampling healthy-looking volumes from noise with a trained medidiff model.

One generalised DDIM update covers both samplers (Song et al. 2021, eq. 12):

    x_s = sqrt(abar_s) x0_hat + sqrt(1 - abar_s - sigma^2) eps_hat + sigma z
    sigma = eta * sqrt((1 - abar_s) / (1 - abar_t)) * sqrt(1 - abar_t / abar_s)

* ``ddim``: eta = 0 (deterministic given the initial noise), default 50 steps.
* ``ddpm``: eta = 1, which is exactly the ancestral DDPM posterior q(x_s | x_t, x0)
  on the (possibly respaced, Nichol & Dhariwal 2021) timestep subsequence;
  with ``steps == num_train_timesteps`` it is the original 1000-step sampler.

Timestep spacing: :func:`medidiff.model.sampler_config.sampling_timesteps`.

Temperature ``tau`` scales the initial noise x_T and every stochastic noise
draw z (tau < 1: smoother, more "average" anatomy, less diversity; tau = 1:
the model's distribution). With ``ddim`` only the initial noise is scaled.

Noise kind is the model's training noise (``diffusion.noise``: gaussian,
simplex or coarse) so x_T looks like what the network saw at t = T-1.

x0 estimates are clipped to ``clip_x0`` (default: [0, 2] for MRI whose model
units are x / p99.5 with an unclipped bright tail; [0, 1] for CT windows) and
eps is recomputed from the clipped x0 so the update stays consistent.

Reproducibility: every sample has its own seed and its own CPU
``torch.Generator``; the noise of a sample never depends on which other
samples share its batch, so index i regenerated alone equals index i of a
batch run (up to float reassociation in batched kernels, ~1e-6).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from ..model.diffusion import ddim_step, predict_eps, predict_x0
from ..model.noise import per_item_noise
from ..model.sampler_config import SamplerConfig, sampling_timesteps


class Sampler:
    """Generate model-grid volumes (float32, model units) from per-sample seeds."""

    def __init__(self, loaded, cfg: SamplerConfig | None = None):
        self.loaded = loaded
        self.net = loaded.network
        self.device = loaded.device
        self.factory = loaded.scheduler_factory
        self.T = int(self.factory.num_train_timesteps)
        self.prediction_type = self.factory.prediction_type
        dcfg = loaded.config.diffusion
        self.noise_kind = dcfg.noise
        self.noise_params = dict(getattr(dcfg, "noise_params", {}) or {})
        self.cfg = (cfg or SamplerConfig()).resolved(loaded.preprocess_config.modality, self.T)
        self.scheduler = self.factory("ddim")  # only its alphas_cumprod are used
        self.acp = self.scheduler.alphas_cumprod.detach().to("cpu", torch.float64)
        self.grid = tuple(int(g) for g in loaded.preprocess_config.grid)
        self.in_channels = 1

    @property
    def timesteps(self) -> list[int]:
        return sampling_timesteps(self.T, int(self.cfg.steps), self.cfg.spacing)

    @torch.no_grad()
    def sample(self, seeds: Sequence[int], on_step: Callable[[int], None] | None = None) -> np.ndarray:
        """Volumes for ``seeds`` (one per seed, in one batch): array (B, D, H, W) float32."""
        from ..runtime import autocast

        cfg = self.cfg
        b = len(seeds)
        shape = (b, self.in_channels, *self.grid)
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
        tau = float(cfg.temperature)
        x = tau * per_item_noise(self.noise_kind, shape, gens, self.device, **self.noise_params)
        ts = self.timesteps
        clip = cfg.clip_x0
        eta = float(cfg.eta)
        for i, t in enumerate(ts):
            t_vec = torch.full((b,), int(t), dtype=torch.long)
            with autocast(self.device, cfg.precision):
                out = self.net(x, timesteps=t_vec.to(self.device))
            out = out.float()
            x0 = predict_x0(out, x, t_vec, self.scheduler, self.prediction_type)
            if clip:
                x0 = x0.clamp(clip[0], clip[1])
            a_t = float(self.acp[t])
            # eps consistent with the (clipped) x0 estimate
            eps = (x - (a_t ** 0.5) * x0) / max(1.0 - a_t, 1e-12) ** 0.5 if clip else \
                predict_eps(out, x, t_vec, self.scheduler, self.prediction_type)
            # abar at t = -1 is 1: the final update returns the last x0 estimate
            a_s = float(self.acp[ts[i + 1]]) if i + 1 < len(ts) else 1.0
            x = ddim_step(x0, eps, a_t, a_s, eta, noise_fn=lambda: tau * per_item_noise(
                self.noise_kind, shape, gens, self.device, **self.noise_params))
            if on_step is not None:
                on_step(i + 1)
        return x[:, 0].float().cpu().numpy().astype(np.float32)
