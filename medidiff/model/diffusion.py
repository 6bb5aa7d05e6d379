"""Noise schedules (MONAI DDPM/DDIM schedulers) and the closed-form helpers used
by training and scoring: ``add_noise``, ``predict_x0``, ``predict_eps``,
``training_target``. Schedule arithmetic is done in float64 from the
scheduler's ``alphas_cumprod`` and cast to the sample's dtype at the end, so
helpers are safe under autocast and never mutate the scheduler.

Note: MONAI schedulers default to ``clip_sample=True`` (x0 clamped to [-1, 1]);
medidiff's images are ~[0, 1] with an UNclipped bright tail, so clipping is off.
"""

from __future__ import annotations

import torch

from .config import DiffusionConfig


def build_scheduler(cfg: DiffusionConfig, kind: str = "ddpm"):
    """A fresh MONAI scheduler (``kind``: ``ddpm`` | ``ddim``) for this config."""
    from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

    if cfg.schedule == "cosine":
        sargs = {"s": float(cfg.cosine_s)}
    else:
        sargs = {"beta_start": float(cfg.beta_start), "beta_end": float(cfg.beta_end)}
    common = dict(num_train_timesteps=int(cfg.num_train_timesteps), schedule=cfg.schedule,
                  prediction_type=cfg.prediction_type, clip_sample=False, **sargs)
    if kind == "ddpm":
        return DDPMScheduler(**common)
    if kind == "ddim":
        return DDIMScheduler(**common)
    raise ValueError(f"unknown scheduler kind {kind!r} (ddpm | ddim)")


class SchedulerFactory:
    """Callable returning a new scheduler; kept in :class:`LoadedModel`."""

    def __init__(self, cfg: DiffusionConfig):
        self.cfg = cfg

    def __call__(self, kind: str = "ddim"):
        return build_scheduler(self.cfg, kind)

    @property
    def prediction_type(self) -> str:
        return self.cfg.prediction_type

    @property
    def num_train_timesteps(self) -> int:
        return int(self.cfg.num_train_timesteps)


def _coeffs(scheduler, t: torch.Tensor | int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    acp = scheduler.alphas_cumprod.detach().to("cpu", torch.float64)
    t = torch.as_tensor(t, dtype=torch.long).reshape(-1).cpu()
    a = acp[t]
    sa, s1a = a.sqrt(), (1 - a).sqrt()
    shape = (-1,) + (1,) * (like.ndim - 1)
    dt = like.dtype if like.is_floating_point() else torch.float32
    return sa.to(like.device, dt).reshape(shape), s1a.to(like.device, dt).reshape(shape)


def add_noise(scheduler, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
    """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise (t per batch item or scalar)."""
    sa, s1a = _coeffs(scheduler, t, x0)
    return sa * x0 + s1a * noise


def training_target(scheduler, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor | int,
                    prediction_type: str | None = None) -> torch.Tensor:
    pt = prediction_type or scheduler.prediction_type
    if pt == "epsilon":
        return noise
    if pt == "v_prediction":
        sa, s1a = _coeffs(scheduler, t, x0)
        return sa * noise - s1a * x0
    if pt == "sample":
        return x0
    raise ValueError(f"unsupported prediction type {pt!r}")


def predict_x0(model_out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor | int, scheduler,
               prediction_type: str | None = None) -> torch.Tensor:
    """Clean-image estimate from the network output at step t (epsilon, v_prediction or sample)."""
    pt = prediction_type or scheduler.prediction_type
    model_out = model_out.to(x_t.dtype)
    if pt == "sample":
        return model_out
    sa, s1a = _coeffs(scheduler, t, x_t)
    if pt == "epsilon":
        return (x_t - s1a * model_out) / sa
    if pt == "v_prediction":
        return sa * x_t - s1a * model_out
    raise ValueError(f"unsupported prediction type {pt!r}")


def predict_eps(model_out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor | int, scheduler,
                prediction_type: str | None = None) -> torch.Tensor:
    pt = prediction_type or scheduler.prediction_type
    model_out = model_out.to(x_t.dtype)
    if pt == "epsilon":
        return model_out
    sa, s1a = _coeffs(scheduler, t, x_t)
    if pt == "v_prediction":
        return s1a * x_t + sa * model_out
    if pt == "sample":
        return (x_t - sa * model_out) / s1a
    raise ValueError(f"unsupported prediction type {pt!r}")


def ddim_step(x0: torch.Tensor, eps: torch.Tensor, abar_t, abar_next, eta: float = 0.0,
              noise_fn=None) -> torch.Tensor:
    """One generalised DDIM update (Song et al. 2021, eq. 12), shared by reconstruction and sampling:

        x_s = sqrt(abar_s) x0 + sqrt(1 - abar_s - sigma^2) eps + sigma z
        sigma = eta * sqrt((1 - abar_s) / (1 - abar_t)) * sqrt(1 - abar_t / abar_s)

    ``abar_t``/``abar_next`` are floats or per-item sequences (abar_next = 1 for the
    final step, which returns x0). eta = 0 is deterministic DDIM, eta = 1 the
    ancestral DDPM posterior. ``noise_fn()`` supplies z and is called only when
    some sigma > 0, so deterministic runs never consume random numbers."""
    a_t = torch.as_tensor(abar_t, dtype=torch.float64).reshape(-1)
    a_s = torch.as_tensor(abar_next, dtype=torch.float64).reshape(-1)
    sigma = eta * ((1 - a_s) / (1 - a_t).clamp_min(1e-12)).sqrt() * (1 - a_t / a_s).clamp_min(0.0).sqrt()
    direction = (1 - a_s - sigma ** 2).clamp_min(0.0).sqrt()
    shape = (-1,) + (1,) * (x0.ndim - 1)

    def cast(v: torch.Tensor) -> torch.Tensor:
        return v.to(x0.device, x0.dtype).reshape(shape)

    x = cast(a_s.sqrt()) * x0 + cast(direction) * eps
    if noise_fn is not None and bool((sigma > 0).any()):
        x = x + cast(sigma) * noise_fn()
    return x
