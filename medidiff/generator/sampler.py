"""Sampling a latent-diffusion generator: per-sample seeded noise in latent space, the latent
U-Net's reverse process, then the autoencoder's decoder.

* ``rflow`` models: MONAI ``RFlowScheduler`` Euler steps, exactly the loop of MONAI's
  ``LatentDiffusionInferer.sample`` (a test checks that both give the same volume), with a
  progress callback. Deterministic given the initial noise.
* ``ddpm`` models: the project's shared DDIM step (``medidiff.model.diffusion.ddim_step``) on the
  latent, eta 0 (``ddim``) or 1 (``ddpm``), no clipping in latent space.

Decoded volumes are clamped to ``clip_x0`` (default [0, 2] model units for MRI): model units
are non-negative (background exactly 0), so negative decoder ringing is removed there.
Every sample has its own CPU ``torch.Generator``: sample i does not depend on its batch mates.

Conditioned generators (``latent.conditioning``, :mod:`medidiff.generator.conditioning`) take
one condition per sample (``{"age": 70, "sex": "F"}``, any subset; none = unconditional) and a
classifier-free guidance scale (default ``latent.guidance``). The initial noise depends on the
seed only, so one seed under two conditions shows what the condition changes.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, Sequence

import numpy as np
import torch

from ..model.config import DiffusionConfig
from ..model.diffusion import build_scheduler, ddim_step, predict_eps, predict_x0
from ..model.sampler_config import SamplerConfig, sampling_timesteps
from .store import LoadedGenerator


def latent_sampler_config(cfg: SamplerConfig, loaded: LoadedGenerator) -> SamplerConfig:
    """Resolve the user's sampler settings for this generator; refuse what it cannot do."""
    kind = loaded.config.latent.scheduler
    name = cfg.sampler
    if name == "auto":
        name = "rflow" if kind == "rflow" else "ddim"
    allowed = ("rflow",) if kind == "rflow" else ("ddim", "ddpm")
    if name not in allowed:
        raise ValueError(f"--sampler {name} does not fit this generator (trained with latent.scheduler={kind}); "
                         f"use one of {allowed}")
    steps = int(cfg.steps or loaded.config.latent.default_steps)
    modality, T = loaded.config.preprocess.modality, loaded.config.latent.num_train_timesteps
    if name == "rflow":
        if cfg.eta not in (None, 0, 0.0):
            raise ValueError("--eta does not apply to rectified-flow sampling (deterministic Euler steps)")
        # RFlowScheduler spaces its steps linearly in t; validate the rest like a deterministic DDIM
        resolved = replace(cfg, sampler="ddim", steps=steps, eta=0.0, spacing="linear").resolved(modality, T)
        resolved.sampler = "rflow"
        return resolved
    return replace(cfg, sampler=name, steps=steps).resolved(modality, T)


def ddpm_latent_scheduler(latent_cfg):
    return build_scheduler(DiffusionConfig(num_train_timesteps=int(latent_cfg.num_train_timesteps),
                                           schedule="scaled_linear_beta", beta_start=latent_cfg.beta_start,
                                           beta_end=latent_cfg.beta_end, prediction_type="epsilon"), "ddpm")


def rflow_scheduler(latent_cfg):
    from monai.networks.schedulers import RFlowScheduler

    return RFlowScheduler(num_train_timesteps=int(latent_cfg.num_train_timesteps), use_discrete_timesteps=False,
                          sample_method="uniform")


class LatentSampler:
    """Same interface as :class:`medidiff.synthesis.sampler.Sampler`: ``cfg`` and ``sample(seeds)``;
    plus ``conditions`` (one per seed, or one for all) and ``guidance``."""

    def __init__(self, loaded: LoadedGenerator, cfg: SamplerConfig | None = None, guidance: float | None = None):
        self.loaded = loaded
        self.cfg = latent_sampler_config(cfg or SamplerConfig(sampler="auto"), loaded)
        self.latent_shape = tuple(loaded.config.latent_shape)
        self.T = int(loaded.config.latent.num_train_timesteps)
        self.guidance = float(loaded.config.latent.guidance if guidance is None else guidance)
        if not self.guidance >= 0:
            raise ValueError(f"guidance must be >= 0, got {guidance}")

    @property
    def conditioning(self) -> tuple[str, ...]:
        return tuple(self.loaded.config.latent.conditioning)

    def condition_tensor(self, conditions, n: int) -> torch.Tensor | None:
        """(n, K) condition channels, or None for an unconditional generator (refuses a condition)."""
        from .conditioning import check_supported, condition_batch

        if conditions is None or isinstance(conditions, dict):
            conditions = [conditions] * n
        conditions = list(conditions)
        if len(conditions) != n:
            raise ValueError(f"{len(conditions)} conditions for {n} samples")
        if not self.conditioning:
            for c in conditions:
                check_supported(c, self.loaded.config.latent)  # raises for any key
            return None
        return condition_batch(conditions, self.loaded.config.latent)

    def _velocity(self, x: torch.Tensor, t_vec: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """The U-Net's prediction, with classifier-free guidance when a condition is set and guidance != 1."""
        from ..runtime import autocast
        from .conditioning import with_channels

        dev = self.loaded.device
        unet = self.loaded.unet
        if cond is None:
            with autocast(dev, self.cfg.precision):
                return unet(x, timesteps=t_vec).float()
        cond = cond.to(dev)
        with autocast(dev, self.cfg.precision):
            out = unet(with_channels(x, cond), timesteps=t_vec).float()
        if self.guidance != 1.0 and bool((cond != 0).any()):
            with autocast(dev, self.cfg.precision):
                unc = unet(with_channels(x, torch.zeros_like(cond)), timesteps=t_vec).float()
            has = (cond != 0).any(dim=1).float()[:, None, None, None, None]  # unconditioned items: no mixing
            out = unc + (1.0 + has * (self.guidance - 1.0)) * (out - unc)
        return out

    def initial_noise(self, seeds: Sequence[int]) -> torch.Tensor:
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
        z = torch.stack([torch.randn(self.latent_shape, generator=g) for g in gens])
        return float(self.cfg.temperature) * z

    @torch.no_grad()
    def sample_latents(self, noise: torch.Tensor, seeds: Sequence[int],
                       on_step: Callable[[int], None] | None = None, conditions=None) -> torch.Tensor:
        dev = self.loaded.device
        x = noise.to(dev)
        cond = self.condition_tensor(conditions, len(seeds))
        if self.cfg.sampler == "rflow":
            sched = rflow_scheduler(self.loaded.config.latent)
            sched.set_timesteps(int(self.cfg.steps), device="cpu")
            ts = sched.timesteps
            nexts = torch.cat((ts[1:], torch.tensor([0], dtype=ts.dtype)))
            for i, (t, t_next) in enumerate(zip(ts, nexts)):
                v = self._velocity(x, torch.Tensor((t,)).to(dev), cond)
                x, _ = sched.step(v, t, x, t_next)
                if on_step is not None:
                    on_step(i + 1)
            return x
        sched = ddpm_latent_scheduler(self.loaded.config.latent)
        acp = sched.alphas_cumprod.detach().to("cpu", torch.float64)
        ts = sampling_timesteps(self.T, int(self.cfg.steps), self.cfg.spacing)
        gens = [torch.Generator().manual_seed(int(s) + 1_000_003) for s in seeds]  # stochastic stream of eta > 0
        tau = float(self.cfg.temperature)
        for i, t in enumerate(ts):
            t_vec = torch.full((x.shape[0],), int(t), dtype=torch.long)
            out = self._velocity(x, t_vec.to(dev), cond)
            x0 = predict_x0(out, x, t_vec, sched, "epsilon")
            eps = predict_eps(out, x, t_vec, sched, "epsilon")
            a_s = float(acp[ts[i + 1]]) if i + 1 < len(ts) else 1.0
            x = ddim_step(x0, eps, float(acp[t]), a_s, float(self.cfg.eta), noise_fn=lambda: tau * torch.stack(
                [torch.randn(self.latent_shape, generator=g) for g in gens]).to(dev))
            if on_step is not None:
                on_step(i + 1)
        return x

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> np.ndarray:
        from ..runtime import autocast

        with autocast(self.loaded.device, self.cfg.precision):
            img = self.loaded.autoencoder.decode_stage_2_outputs(latents / self.loaded.scale_factor).float()
        if self.cfg.clip_x0:
            img = img.clamp(*self.cfg.clip_x0)
        return img[:, 0].cpu().numpy().astype(np.float32)

    def sample(self, seeds: Sequence[int], on_step: Callable[[int], None] | None = None,
               conditions=None) -> np.ndarray:
        """Volumes for ``seeds``: array (B, D, H, W) float32 on the model grid, model units.
        ``conditions``: None (unconditional), one dict for all, or one dict (or None) per seed."""
        return self.decode(self.sample_latents(self.initial_noise(seeds), seeds, on_step, conditions))
